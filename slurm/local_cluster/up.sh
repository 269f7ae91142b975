#!/usr/bin/env bash
# Brings up a single-node SLURM cluster on localhost from Debian's packages, without systemd:
# munged (as the munge user), MariaDB + slurmdbd (so sacct works), slurmctld and slurmd -N localhost.
#
#     sudo bash slurm/local_cluster/up.sh      # idempotent: a running cluster is left as it is
#     sinfo && sbatch --wrap hostname && sacct
#     sudo bash slurm/local_cluster/down.sh    # stops every daemon this script started (--purge: and its state)
#
# For CI and for trying the SLURM path on one machine; never on a machine that already has a real SLURM
# configuration (refused: /etc/slurm/slurm.conf must be absent or written by this script).
# Environment: PIC_SLURM_CRED_EXPIRE (seconds a requeued job waits before it may restart; SLURM's default is
# 120, ours 10 so that a requeue in a test takes seconds, not minutes), PIC_SLURM_NO_DBD=1 (skip MariaDB and
# slurmdbd: no accounting, sacct fails; submitit then only warns and pic_bench polls with time-outs).
set -euo pipefail
MARK="# written by pic_bench slurm/local_cluster/up.sh"
ETC=/etc/slurm
STATE=/var/spool/pic_bench_slurm
LOG=/var/log/pic_bench_slurm
RUN=/run/pic_bench_slurm
CLUSTER=picbench
CRED_EXPIRE=${PIC_SLURM_CRED_EXPIRE:-10}
NO_DBD=${PIC_SLURM_NO_DBD:-0}
export DEBIAN_FRONTEND=noninteractive

say() { echo "[local_cluster] $*" >&2; }
die() { say "error: $*"; exit 1; }
# alive PIDFILE [NAME]: the pid in PIDFILE runs, is not a zombie (a container's init may never reap a killed
# daemon) and, since a stale pid file may name a reused pid, is that daemon
alive() {
  local pid
  [[ -f $1 ]] && pid=$(cat "$1") && [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/stat ]] || return 1
  [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
  [[ -z ${2:-} || $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]
}
wait_for() {  # wait_for SECONDS WHAT CMD...: polls CMD until it succeeds or the time is up
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || { say "timed out after ${limit}s waiting for $what"; return 1; }
    sleep 0.5
  done
}
# down.sh stops exactly the daemons listed here, in reverse order, by the pid in their pid file
started() { grep -qx "$1 $2" "$RUN/started" 2>/dev/null || echo "$1 $2" >> "$RUN/started"; }
show_log() { [[ -f $1 ]] && { say "last lines of $1:"; tail -n 20 "$1" >&2; }; return 0; }

[[ $(id -u) == 0 ]] || die "run as root (it writes /etc/slurm and starts daemons)"
if [[ -f $ETC/slurm.conf ]] && ! grep -qF "$MARK" "$ETC/slurm.conf"; then
  die "$ETC/slurm.conf exists and was not written by this script: refusing to touch a real cluster's configuration"
fi

# ---- packages (apt starts no daemons in a container without systemd; we start them below)
pkgs=(slurm-wlm munge)
[[ $NO_DBD == 1 ]] || pkgs+=(slurmdbd mariadb-server)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

mkdir -p "$STATE/ctld" "$STATE/d" "$LOG" "$RUN" "$ETC"

# ---- munge: key owned by munge, mode 0400; munged runs as the munge user
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  say "creating /etc/munge/munge.key"
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! alive /run/munge/munged.pid munged; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged --force  # --force: a killed munged may have left its socket behind
  started munged /run/munge/munged.pid
fi
wait_for 15 "munged" bash -c 'munge -n | unmunge' || { show_log /var/log/munge/munged.log; exit 1; }

# ---- configuration (rewritten on every call; the node's size is measured here)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MB=$((MEM_MB > 2048 ? MEM_MB - 1024 : MEM_MB))
DEF_MEM=$((REAL_MB / CPUS < 2048 ? REAL_MB / CPUS : 2048))
ACCOUNTING="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none"
[[ $NO_DBD == 1 ]] && ACCOUNTING="AccountingStorageType=accounting_storage/none"
cat > "$ETC/slurm.conf" <<EOF
$MARK
# A single-node cluster on localhost for tests and trials. Notes for SLURM 22.05:
# - the node is called localhost (slurmd -N localhost), which avoids hostname resolution trouble;
# - DefMemPerCPU: without it one job takes all memory and jobs run one at a time;
# - AuthInfo=cred_expire: also how long a requeued job waits before it may start again (default 120 s);
# - PreemptParameters= is a fatal unknown key in 22.05, so it is not set.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
$ACCOUNTING
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
chmod 0644 "$ETC/slurm.conf"

# ---- MariaDB + slurmdbd (accounting: sacct, and submitit's job states)
if [[ $NO_DBD != 1 ]]; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    say "initialising MariaDB's data folder"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  if ! alive /run/mysqld/mysqld.pid mariadbd; then
    say "starting MariaDB"
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --pid-file=/run/mysqld/mysqld.pid \
      --socket=/run/mysqld/mysqld.sock >"$LOG/mariadb.log" 2>&1 < /dev/null &
    started mariadbd /run/mysqld/mysqld.pid
  fi
  wait_for 60 "MariaDB" mariadb-admin --socket=/run/mysqld/mysqld.sock ping || { show_log "$LOG/mariadb.log"; exit 1; }
  cat > "$ETC/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=root
StorageLoc=pic_bench_slurm_acct
EOF
  chmod 0600 "$ETC/slurmdbd.conf"
  if ! alive "$RUN/slurmdbd.pid" slurmdbd; then
    say "starting slurmdbd"
    /usr/sbin/slurmdbd
    started slurmdbd "$RUN/slurmdbd.pid"
  fi
  wait_for 60 "slurmdbd" sacctmgr -n list cluster || { show_log "$LOG/slurmdbd.log"; exit 1; }
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
fi

# ---- slurmctld and slurmd
if ! alive "$RUN/slurmctld.pid" slurmctld; then
  say "starting slurmctld"
  /usr/sbin/slurmctld
  started slurmctld "$RUN/slurmctld.pid"
else
  scontrol reconfigure >/dev/null 2>&1 || true
fi
wait_for 30 "slurmctld" scontrol ping || { show_log "$LOG/slurmctld.log"; exit 1; }
if ! alive "$RUN/slurmd.pid" slurmd; then
  say "starting slurmd"
  /usr/sbin/slurmd -N localhost
  started slurmd "$RUN/slurmd.pid"
fi
node_ready() { sinfo -h -N -n localhost -o %T | grep -qE '^(idle|mixed|allocated|completing)'; }
if ! wait_for 30 "the node to register" node_ready; then
  scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
  wait_for 15 "the node to become idle" node_ready || { show_log "$LOG/slurmd.log"; show_log "$LOG/slurmctld.log"; exit 1; }
fi
say "up: $(sinfo -h -o '%P %a %D %T %c cpus %m MB')$([[ $NO_DBD == 1 ]] && echo ', no accounting' || echo ', accounting on')"

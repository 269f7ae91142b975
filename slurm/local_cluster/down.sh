#!/usr/bin/env bash
# Tears down the cluster that up.sh brought up: cancels its jobs, then stops, in reverse order, exactly the
# daemons up.sh recorded as started (by the pid in their pid file). Idempotent: nothing running, nothing done.
#
#     sudo bash slurm/local_cluster/down.sh           # keeps state (accounting database, logs)
#     sudo bash slurm/local_cluster/down.sh --purge   # also removes the state, logs and the config it wrote
set -uo pipefail
MARK="# written by pic_bench slurm/local_cluster/up.sh"
STATE=/var/spool/pic_bench_slurm
LOG=/var/log/pic_bench_slurm
RUN=/run/pic_bench_slurm
say() { echo "[local_cluster] $*" >&2; }
# alive PIDFILE [NAME]: the pid in PIDFILE runs, is not a zombie (a container's init may never reap a killed
# daemon) and, since a stale pid file may name a reused pid, is that daemon
alive() {
  local pid
  [[ -f $1 ]] && pid=$(cat "$1") && [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/stat ]] || return 1
  [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
  [[ -z ${2:-} || $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]
}

stop() {  # stop NAME PIDFILE: TERM, wait up to 20 s, then KILL
  local name=$1 pidfile=$2 pid
  alive "$pidfile" "$name" || return 0  # not running, or the pid now belongs to another process
  pid=$(cat "$pidfile")
  say "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  say "$name did not stop in 20 s: killing it"
  kill -KILL "$pid" 2>/dev/null
  return 0
}

if [[ -f /etc/slurm/slurm.conf ]] && grep -qF "$MARK" /etc/slurm/slurm.conf && alive "$RUN/slurmctld.pid" slurmctld; then
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u)
  if [[ -n $jobs ]]; then
    say "cancelling $(echo "$jobs" | wc -l) job(s)"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null
    for _ in $(seq 60); do [[ -z $(timeout 10 squeue -h -o %A 2>/dev/null) ]] && break; sleep 0.5; done
  fi
fi

if [[ -f $RUN/started ]]; then
  tac "$RUN/started" | while read -r name pidfile; do stop "$name" "$pidfile"; done
  rm -f "$RUN/started"
fi

if [[ ${1:-} == --purge ]]; then
  say "removing $STATE, $LOG and the configuration files up.sh wrote"
  rm -rf "$STATE" "$LOG"
  for f in /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf; do
    [[ -f $f ]] && grep -qF "$MARK" "$f" && rm -f "$f"
  done
fi
say "down"

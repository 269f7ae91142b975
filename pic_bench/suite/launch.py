"""Submits an ablation to SLURM as one job array through submitit: one array task per sweep cell x seed.

    python -m pic_bench.run ablations/negatives_k.yaml paper --executor slurm                  # slurm/cluster.yaml
    python -m pic_bench.run ablations/negatives_k.yaml paper --executor slurm --slurm time_min=240 partition=gpu
    python -m pic_bench.status negatives_k                                                        # what landed

Cluster resources live in ``slurm/cluster.yaml`` (strictly checked: an unknown key, a partition that ``sinfo``
does not list, or a time limit too short for one checkpoint interval is refused before anything is submitted)
and on the command line, never in ablation files. Submission prints the array id and returns; ``--wait``
blocks with a progress bar. Running the same command again skips tasks whose row exists and tasks still queued
from an earlier submission, and resubmits the missing or failed ones.

Preemption and time limits: each array task is a submitit ``Checkpointable``. SLURM sends SIGUSR2
``signal_delay_s`` before the time limit (and ``scancel --signal=USR2`` does the same); submitit calls
``ArrayTask.checkpoint``, which asks the training loop to stop at the next step boundary (the loop runs in a
worker thread, so the checkpoint is never taken mid-step), waits for it to save, and submitit requeues the job;
the requeued job resumes from the checkpoint. A plain ``scontrol requeue`` or a partition preemption may send
only SIGTERM: periodic checkpoints (``checkpoint_every`` steps) bound what is lost then.

Only SLURM's own time-limit signal counts against ``max_requeues``: a USR2 that comes earlier than
``time_min x 60 - signal_delay_s - SIGNAL_SLACK_S`` into the segment is a preemption (submitit alone calls every
USR2 of a job shorter than 50 minutes a time-out); a USR2 that arrives while the first is being handled is
ignored. An sbatch refusal is one ``error:`` line with sbatch's words, recorded per task in
``results/slurm/<ablation>.refused.jsonl`` (never in the manifest of submissions), so ``status`` tells an array
sbatch refused (an evaluation array after its training array went in, say) from a task never submitted; ``status``
shows why a job ended from its log ("timed-out too many times", the exception line).
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import yaml

from ..config import ConfigError, apply, read_yaml_mapping
from ..data.sources import DatasetError
from .tasks import Task, dedupe, resume, run_task

STARTUP_S = 60  # a job segment's start-up (scheduling, imports, data, resume) before its first step
SIGNAL_SLACK_S = 90  # SLURM may send the time-limit signal up to 60 s before signal_delay_s; a USR2 earlier than
# (time limit - signal_delay_s - this) is a preemption (scancel --signal=USR2), not a time-out


@dataclass(frozen=True)
class ClusterConfig:
    partition: str = ""  # SLURM partition ("" = the cluster's default); checked against sinfo
    account: str = ""  # --account ("" = your default)
    qos: str = ""  # --qos ("" = none)
    nodes: int = 1  # nodes per task; data-parallel ranks = nodes x tasks_per_node
    tasks_per_node: int = 1  # data-parallel ranks per node (one per GPU)
    gpus_per_node: int = 0  # GPUs per node
    cpus_per_task: int = 1  # CPU cores per rank
    mem_gb: float = 4  # memory per node, GB
    time_min: int = 60  # time limit of one job segment, minutes (a requeued job gets a fresh one)
    signal_delay_s: int = 90  # SIGUSR2 this long before the time limit: checkpoint and requeue
    max_requeues: int = 5  # time-outs and preemptions a task may go through before it gives up
    checkpoint_every: int = 200  # periodic checkpoint every this many steps for every task (0: run.checkpoint_every)
    step_s: float = 0.0  # expected seconds per step here, for the time-limit check (0 = from landed rows)
    array_parallelism: int = 64  # array tasks running at once
    folder: str = "slurm/logs"  # submitit's pickles and logs (one sub-folder per job array)
    setup: list = field(default_factory=list)  # shell lines run before each task (module load, venv activate)
    extra_sbatch: dict = field(default_factory=dict)  # more sbatch flags, e.g. {constraint: a100, exclude: node7}
    eval_task: bool = True  # evaluate each PIC cell in its own array task, started when its training task succeeds
    eval: dict = field(default_factory=dict)  # resources of evaluation tasks (RESOURCE_KEYS; default: training's)
    baseline: dict = field(default_factory=dict)  # resources of baseline tasks (default: one rank, <= one GPU)
    group_timeout_min: float = 30.0  # the process group's timeout (rendezvous and every collective), minutes

    @property
    def ranks(self) -> int:
        return self.nodes * self.tasks_per_node

    def for_stage(self, stage: str) -> "ClusterConfig":
        """The resources of one kind of array task: "train" (and "all": training then evaluation in one task),
        "eval" (training's, then the ``eval`` section) or "baseline" (one rank on one node with at most one GPU,
        then the ``baseline`` section: a baseline trains nothing, and only rank 0 of a task computes it)."""
        if stage == "eval":
            return dataclasses.replace(self, **self.eval)
        if stage == "baseline":
            return dataclasses.replace(self, **{"nodes": 1, "tasks_per_node": 1,
                                                "gpus_per_node": min(self.gpus_per_node, 1), **self.baseline})
        return self


# the keys an ``eval:`` or ``baseline:`` section of the cluster file may set
RESOURCE_KEYS = ("partition", "account", "qos", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task",
                 "mem_gb", "time_min", "extra_sbatch")


def _coerce(key: str, value: Any, typ: Any, where: str) -> Any:
    if typ in ("bool", bool):
        ok = isinstance(value, bool)
    elif typ in ("int", int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ in ("float", float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif typ in ("str", str):
        value = "" if value is None else value
        ok = isinstance(value, str)
    elif typ in ("list", list):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif typ in ("dict", dict):
        value = value or {}
        ok = isinstance(value, dict)
    else:  # pragma: no cover
        raise ConfigError(f"{where}: key '{key}' has an unsupported type {typ}")
    if not ok:
        raise ConfigError(f"{where}: key '{key}' expects {getattr(typ, '__name__', typ)}, got {value!r}")
    return value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['time_min=30', 'partition=gpu'] -> {'time_min': 30, 'partition': 'gpu'} (YAML scalars)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--slurm: '{item}' is not key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v) if v != "" else ""
    return out


def load_cluster(path: str | Path | None, overrides: dict[str, Any] | None = None,
                 origins: dict[str, str] | None = None) -> ClusterConfig:
    """The cluster file (strict: unknown key or wrong type = error naming the key and file), then overrides.

    ``origins``, when given, is filled with where each set key came from (the file or the command line), so a
    later refusal of a value names the place the user wrote it."""
    cc = ClusterConfig()
    fields = {f.name: f.type for f in dataclasses.fields(ClusterConfig)}
    layers = []
    if path is not None:
        path = Path(path)
        raw = read_yaml_mapping(path, f"cluster file not found: {path} (copy slurm/cluster.yaml and edit it)",
                                "must be a mapping of cluster settings")
        layers.append((str(path), raw))
    layers.append(("command line (--slurm)", overrides or {}))
    for where, raw in layers:
        for key, value in raw.items():
            if key not in fields:
                raise ConfigError(f"{where}: unknown cluster key '{key}' (known: {sorted(fields)})")
            value = _coerce(key, value, fields[key], where)
            if key in ("eval", "baseline"):
                value = {**getattr(cc, key), **_section(key, value, fields, where)}
            cc = dataclasses.replace(cc, **{key: value})
            if origins is not None:
                origins[key] = where
    for stage in ("train", "eval", "baseline"):
        _check_ranges(cc.for_stage(stage), "cluster" if stage == "train" else f"cluster ({stage} tasks)")
    return cc


def _section(name: str, raw: dict, fields: dict[str, Any], where: str) -> dict[str, Any]:
    """An ``eval:`` / ``baseline:`` section: resource keys only, each of its field's type."""
    out = {}
    for key, value in raw.items():
        if key not in RESOURCE_KEYS:
            raise ConfigError(f"{where}: '{name}.{key}' is not a resource key (an {name} section may set: "
                              f"{', '.join(RESOURCE_KEYS)})")
        out[key] = _coerce(f"{name}.{key}", value, fields[key], where)
    return out


def _check_ranges(cc: ClusterConfig, what: str) -> None:
    for key in ("nodes", "tasks_per_node", "cpus_per_task", "time_min", "array_parallelism"):
        if getattr(cc, key) < 1:
            raise ConfigError(f"{what}: '{key}' must be >= 1, got {getattr(cc, key)}")
    for key in ("gpus_per_node", "signal_delay_s", "max_requeues", "checkpoint_every"):
        if getattr(cc, key) < 0:
            raise ConfigError(f"{what}: '{key}' must be >= 0, got {getattr(cc, key)}")
    if not 0 < cc.group_timeout_min < 7 * 24 * 60:  # NaN and inf too: a timedelta of inf minutes overflows
        raise ConfigError(f"{what}: 'group_timeout_min' must be > 0 and under a week (minutes), got "
                          f"{cc.group_timeout_min}")
    if cc.mem_gb <= 0 or cc.step_s < 0:
        raise ConfigError(f"{what}: need mem_gb > 0 and step_s >= 0, got {cc.mem_gb}, {cc.step_s}")


def sbatch_params(cc: ClusterConfig, job_name: str, **overrides: Any) -> dict[str, Any]:
    """submitit's ``update_parameters`` for one array or job with these resources (``overrides`` win)."""
    params: dict[str, Any] = dict(
        job_name=job_name, time=cc.time_min, nodes=cc.nodes, ntasks_per_node=cc.tasks_per_node,
        cpus_per_task=cc.cpus_per_task, mem=f"{int(cc.mem_gb * 1024)}MB", signal_delay_s=cc.signal_delay_s,
        array_parallelism=cc.array_parallelism, setup=list(cc.setup), additional_parameters=dict(cc.extra_sbatch))
    for key in ("partition", "account", "qos"):
        if getattr(cc, key):
            params[key] = getattr(cc, key)
    if cc.gpus_per_node:
        params["gpus_per_node"] = cc.gpus_per_node
    params.update(overrides)
    return params


def describe_resources(cc: ClusterConfig) -> str:
    """'2 nodes x 4 tasks, 4 GPUs/node, 8 CPUs/task, 200 GB/node, 720 min' (for the dry run and messages)."""
    return (f"{cc.nodes} node{'s' if cc.nodes > 1 else ''} x {cc.tasks_per_node} task"
            f"{'s' if cc.tasks_per_node > 1 else ''}, {cc.gpus_per_node} GPU/node, {cc.cpus_per_task} CPU/task, "
            f"{cc.mem_gb:g} GB/node, {cc.time_min} min" + (f", partition {cc.partition}" if cc.partition else ""))


def plan_resources(cc: ClusterConfig, task: Task, results_dir: Path | None = None) -> str:
    """What a task would be submitted as, with its resources (for the dry run); with ``results_dir``, a task
    that trains also gets its budget: segments, checkpoint count and bytes, host memory (``plan.budget``)."""
    stage = stage_of(task, cc)
    if stage in ("train", "all") and results_dir is not None:
        from .plan import describe_budget

        b, src = task_budget(cc, task, results_dir)
        return f"{plan_resources(cc, task)}; its training: {describe_budget(b, src)}"
    if stage == "train":
        return (f"SLURM train task ({describe_resources(cc.for_stage('train'))}), then its eval task "
                f"({describe_resources(cc.for_stage('eval'))})")
    if stage == "eval":
        return f"SLURM eval task only, trained already ({describe_resources(cc.for_stage('eval'))})"
    return f"SLURM {stage} task ({describe_resources(cc.for_stage('train' if stage == 'all' else stage))})"


def eval_device(cc: ClusterConfig, task: Task) -> str | None:
    """The device a task's evaluation runs on under these settings: "cuda" when its array task has GPUs and the
    config does not pin the CPU, else None (the config decides)."""
    stage = stage_of(task, cc)
    gpus = cc.for_stage({"train": "eval", "all": "train"}.get(stage, stage)).gpus_per_node
    return "cuda" if gpus and task.cfg.run.device != "cpu" else None


def stage_of(task: Task, cc: ClusterConfig) -> str:
    """The kind of array task a task runs as under these cluster settings: train, eval, all or baseline."""
    if task.kind != "pic":
        return "baseline"
    if not cc.eval_task:
        return "all"
    return "eval" if task.trained() else "train"


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def partitions() -> list[str]:
    """Partitions that ``sinfo`` lists (the default one marked with a trailing '*' removed)."""
    if shutil.which("sinfo") is None:
        raise ConfigError("sinfo not found: --executor slurm needs SLURM's client commands "
                          "(on one machine: sudo bash slurm/local_cluster/up.sh)")
    try:
        r = _run(["sinfo", "-h", "-o", "%P"])
    except subprocess.TimeoutExpired:
        raise ConfigError("sinfo did not answer in 30 s: is slurmctld reachable?") from None
    if r.returncode != 0:
        raise ConfigError(f"sinfo failed (is the cluster up?): {r.stderr.strip()}")
    return [p.strip().rstrip("*") for p in r.stdout.split() if p.strip()]


def landed_step_s(results_dir: Path, ablation: str, preset: str) -> float | None:
    """Median step time (s) of this ablation's landed rows at this preset, or None."""
    from ..report.results import read_rows

    rows, _ = read_rows(results_dir, ablation)
    ms = [r["metrics"].get("step_ms_median") for r in rows
          if r.get("preset") == preset and r.get("status") == "ok" and r.get("kind", "pic") == "pic"]
    ms = [m for m in ms if isinstance(m, (int, float)) and m == m]
    return statistics.median(ms) / 1000 if ms else None


def checkpoint_every(task: Task, cc: ClusterConfig) -> int:
    # the cluster's interval wins: it is checked against the cluster's time limit (run.checkpoint_every is on, 200,
    # by default, so it cannot mean "unset")
    return cc.checkpoint_every or task.cfg.run.checkpoint_every


def validate(cc: ClusterConfig, tasks: list[Task], results_dir: Path, where: str = "cluster",
             origins: dict[str, str] | None = None) -> None:
    """Refuses, before anything is submitted: a partition sinfo does not list; a time limit that leaves no
    time to train or cannot hold one checkpoint interval (step time from ``step_s``, the landed rows or the
    preset's assumption: ``step_time``); a training task its resources cannot carry (``check_budget``: too few
    segments, too little host memory, a large checkpoint written every few seconds).
    Each refusal names where its value came from (``origins``: key -> file or command line; else ``where``)."""
    origins = origins or {}
    known = partitions()
    for stage, section in (("train", "partition"), ("eval", "eval"), ("baseline", "baseline")):
        part = cc.for_stage(stage).partition
        if part and part not in known:
            what = "" if stage == "train" else f" (the {stage} tasks' partition)"
            raise ConfigError(f"{origins.get(section, where)}: partition '{part}'{what} does not exist on this "
                              f"cluster (sinfo lists: {', '.join(known) or 'none'})")
    where = origins.get("time_min", where)
    usable = cc.time_min * 60 - cc.signal_delay_s - STARTUP_S
    if usable <= 0:
        raise ConfigError(
            f"{where}: time_min={cc.time_min} is too short: the checkpoint signal comes signal_delay_s="
            f"{cc.signal_delay_s} s before the limit and a job needs about {STARTUP_S} s to start, which leaves "
            f"{usable} s to train")
    for ablation, preset in sorted({(t.ablation, t.preset) for t in tasks if t.kind == "pic"}):
        step_s, src = step_time(cc, results_dir, ablation, preset)
        if not step_s:
            continue
        every = max(checkpoint_every(t, cc) for t in tasks if (t.ablation, t.preset) == (ablation, preset))
        need = every * step_s
        if every and need > usable:
            raise ConfigError(
                f"{where}: time_min={cc.time_min} is too short for one checkpoint interval: {every} steps x "
                f"{step_s:.3g} s/step ({src}) = {need:.0f} s, but a job segment has {usable} s to train "
                f"(time_min x 60 - signal_delay_s - {STARTUP_S} s start-up); raise time_min or lower "
                f"checkpoint_every")
    check_budget(cc, tasks, results_dir, where, origins)


def step_time(cc: ClusterConfig, results_dir: Path, ablation: str, preset: str) -> tuple[float | None, str]:
    """(seconds per step, where it came from): the cluster's ``step_s``, else the median of the landed rows of
    this ablation and preset, else ``plan.ASSUMED_STEP_S`` for the preset (None when there is none)."""
    from .plan import ASSUMED_STEP_S

    if cc.step_s:
        return cc.step_s, "step_s"
    landed = landed_step_s(results_dir, ablation, preset)
    if landed:
        return landed, f"the median step time of {ablation}'s landed {preset} rows"
    if preset in ASSUMED_STEP_S:
        return ASSUMED_STEP_S[preset], f"assumed for the {preset} preset, not measured; set step_s to override"
    return None, f"no step_s and no landed {preset} rows"


def task_budget(cc: ClusterConfig, task: Task, results_dir: Path) -> tuple[dict[str, Any], str]:
    """``plan.budget`` of a task's training under these settings (its training resources), with the step time's
    source."""
    from . import plan
    from .tasks import data_sizes

    train = cc.for_stage("train")
    N, _, channels = data_sizes(task.cfg)
    step_s, src = step_time(cc, Path(results_dir), task.ablation, task.preset)
    segment_s = train.time_min * 60 - train.signal_delay_s - STARTUP_S
    b = plan.budget(task.cfg, N, channels, step_s, checkpoint_every(task, cc), segment_s, cc.max_requeues + 1,
                    train.tasks_per_node, train.gpus_per_node > 0 and task.cfg.run.device != "cpu")
    return b, src


def check_budget(cc: ClusterConfig, tasks: list[Task], results_dir: Path, where: str = "cluster",
                 origins: dict[str, str] | None = None) -> None:
    """Refuses a training task its resources cannot carry (the estimates and assumptions: ``plan``'s section
    "what a training task asks"): a run longer than (max_requeues + 1) segments, host memory below what the node's
    ranks need, a large checkpoint written more often than every ``plan.MIN_CHECKPOINT_S`` seconds."""
    from .plan import MIN_CHECKPOINT_S, SMALL_CHECKPOINT_BYTES, fmt_bytes, fmt_seconds

    origins = origins or {}
    seen = set()
    for t in tasks:
        if t.kind != "pic" or stage_of(t, cc) not in ("train", "all"):
            continue
        key = (t.ablation, t.preset, t.cfg.data, t.cfg.model, t.cfg.pic.storage, t.cfg.optim,
               t.cfg.run.checkpoint_every, t.cfg.run.checkpoint_minutes, t.cfg.run.device)
        if key in seen:
            continue
        seen.add(key)
        b, src = task_budget(cc, t, results_dir)
        what = f"{t.ablation} at the {t.preset} preset"
        need = b["host_bytes"] / 2**30
        if need > cc.mem_gb:
            raise ConfigError(
                f"{origins.get('mem_gb', where)}: mem_gb={cc.mem_gb:g} is below what {what} needs on a node: "
                f"{cc.tasks_per_node} rank(s) x (torch, CUDA's host side, {t.cfg.data.workers} loader worker(s), "
                f"the {fmt_bytes(b['checkpoint_bytes'])} training state) + rank 0's copy while saving = "
                f"{need:.1f} GiB (estimate, see pic_bench/suite/plan.py); raise mem_gb")
        if not b["step_s"]:
            continue
        if b["segments"] is not None and b["segments"] > b["max_segments"]:
            raise ConfigError(
                f"{origins.get('time_min', origins.get('max_requeues', where))}: time_min={cc.time_min} and "
                f"max_requeues={cc.max_requeues} cannot carry {what}: {b['steps']} steps x {b['step_s']:.3g} "
                f"s/step ({src}) = {fmt_seconds(b['run_s'])} needs {b['segments']} job segments, but a task "
                f"gets at most (max_requeues + 1) = {b['max_segments']}; raise time_min or max_requeues")
        if b["interval_s"] is not None and b["interval_s"] < MIN_CHECKPOINT_S and \
                b["checkpoint_bytes"] > SMALL_CHECKPOINT_BYTES:
            every = checkpoint_every(t, cc)
            key_name = "checkpoint_every" if cc.checkpoint_every else "run.checkpoint_every"
            at_least = math.ceil(MIN_CHECKPOINT_S / b["step_s"])
            raise ConfigError(
                f"{origins.get('checkpoint_every', where) if cc.checkpoint_every else 'the run config'}: "
                f"{key_name}={every} writes {what}'s {fmt_bytes(b['checkpoint_bytes'])} checkpoint every "
                f"{b['interval_s']:.0f} s ({every} steps x {b['step_s']:.3g} s/step, {src}), about "
                f"{b['checkpoints']} times; write one at most every {MIN_CHECKPOINT_S} s: set checkpoint_every "
                f">= {at_least}")


# ---- what runs inside an array task

class ArrayTask(submitit.helpers.Checkpointable):
    """The callable submitit pickles for each array task (see ``checkpoint`` for the preemption path)."""

    def __init__(self, signal_delay_s: int = 90, group_timeout_min: float = 30.0):
        self.signal_delay_s = signal_delay_s
        self.group_timeout_min = group_timeout_min  # the process group's (cluster key group_timeout_min)
        self.requeue_wait_s = signal_delay_s + 60  # how long a stopped task waits to be ended by the requeue
        self._stop: threading.Event | None = None
        self._worker: threading.Thread | None = None
        self._signalled = False  # a USR2 is being handled: checkpoint, requeue, exit

    def take_over_signal(self) -> bool:
        """Wraps submitit's USR2 handler of this job (when there is one): a second USR2 while the first is being
        handled is ignored, and the time-out / preemption decision is ours (see ``timed_out``).

        submitit calls a USR2 a time-out once the job has run min(80 %, limit - 10 min) of its time limit, which
        for a limit under 50 minutes is from the first second: every manual ``scancel --signal=USR2`` then
        counted against ``max_requeues``; and a USR2 arriving while the first requeue is under way ran the
        requeue twice and failed the job for good. Returns whether a handler was wrapped."""
        handler = signal.getsignal(signal.SIGUSR2)
        owner = getattr(handler, "__self__", None)
        if owner is None or not hasattr(owner, "has_timed_out") or getattr(handler, "__name__", "") == "once":
            return False
        limit_s = int(getattr(owner._delayed, "_timeout_min", 0)) * 60
        start = getattr(owner, "_start_time", time.time())

        def has_timed_out() -> bool:
            ran = time.time() - start
            out = timed_out(ran, limit_s, self.signal_delay_s)
            print(f"USR2 after {ran:.0f} s of a {limit_s} s time limit: "
                  + ("the time limit (counts against max_requeues)" if out else
                     "a preemption (does not count against max_requeues)"), file=sys.stderr, flush=True)
            return out

        owner.has_timed_out = has_timed_out

        def once(signum, frame):
            if self._signalled:
                print("USR2 again while stopping for a requeue: ignored", file=sys.stderr, flush=True)
                return
            self._signalled = True
            handler(signum, frame)

        signal.signal(signal.SIGUSR2, once)
        return True

    def __getstate__(self) -> dict:
        return {"signal_delay_s": self.signal_delay_s, "group_timeout_min": self.group_timeout_min}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __call__(self, task: Task) -> dict[str, Any] | None:
        from ..pic import distributed
        from ..pic.train import Preempted

        if threading.current_thread() is threading.main_thread():
            self.take_over_signal()
        if task.kind == "pic" and task.stage != "eval":  # an evaluation task's training probed its data
            probe_before_group(task)
        ctx = distributed.init_from_env(task.cfg.run.device, timeout_min=self.group_timeout_min,
                                        deterministic=task.cfg.run.deterministic)
        try:
            # a requeue that raced the row, or a resubmission; decided by rank 0 for all ranks (collective)
            if ctx.agree(ctx.is_main and task.done()):
                return {"name": task.name, "status": "ok", "skipped": True}
            # an evaluation without a trained cell: rank 0 writes the failed row and raises; the others stop here
            if task.stage == "eval" and ctx.agree(ctx.is_main and not task.trained()) and not ctx.is_main:
                return None
            self._stop = threading.Event()
            out: dict[str, Any] = {}

            def work() -> None:
                try:
                    out["row"] = run_task(task, self._stop.is_set) if ctx.is_main else follow(task, self._stop.is_set)
                except BaseException as e:  # noqa: BLE001 - handed to the main thread
                    out["error"] = e

            self._worker = threading.Thread(target=work, name=f"pic_bench {task.name}", daemon=True)
            self._worker.start()
            while self._worker.is_alive():
                self._worker.join(timeout=1.0)  # short joins: the main thread stays free for SLURM's signals
            error = out.get("error")
            if isinstance(error, Preempted):
                # submitit's signal handler is requeuing this job and exits the process (rank 0); other ranks
                # stopped with it and wait to be ended by the requeue
                time.sleep(self.requeue_wait_s)
                raise RuntimeError(f"stopped for a requeue that did not come within {self.requeue_wait_s} s")
            if error is not None:
                raise error
            row = out.get("row")  # a training task returns {"status": "trained", ...}: no row
            return None if row is None else {"name": task.name, "status": row["status"], "stage": task.stage,
                                             "metrics": row.get("metrics", {})}
        finally:
            distributed.shutdown()

    def checkpoint(self, task: Task) -> Any:
        """Called by submitit on SIGUSR2 (time limit or preemption), in the main thread: the training loop
        stops at the next step boundary and saves its checkpoint; then submitit requeues the same task."""
        from submitit.helpers import DelayedSubmission

        if self._stop is not None:
            self._stop.set()
        if self._worker is not None:
            # bounded: if the task is evaluating, it resumes from its last checkpoint (or skips if its row lands)
            self._worker.join(timeout=max(5, self.signal_delay_s - 15))
        return DelayedSubmission(ArrayTask(self.signal_delay_s, self.group_timeout_min), task)


def probe_before_group(task: Task) -> None:
    """Every rank of a multi-rank task decodes its shard of the task's images (``probe.probe_shard``, cached beside
    the folder's listing) before the process group exists: rank 0's probe in ``run_task`` then reads the result,
    and no rank waits in a collective (under the group's timeout) while another decodes a whole dataset. A
    requeued segment finds the result cached and decodes nothing. A failure here (missing data) is left for
    ``run_task`` to record in the task's row."""
    from ..data.probe import probe_shard
    from ..data.sources import load_source
    from ..pic import distributed

    found = distributed.env_rank_world()
    if found is None or found[2] == 1:
        return  # one rank: run_task probes (and caches) with nobody waiting
    try:
        probe_shard(load_source(task.cfg.data, task.cfg.run.seed), found[0], found[2])
    except Exception as e:  # noqa: BLE001 - recorded by run_task, which meets the same error
        print(f"warning: the probe of rank {found[0]} before the process group failed ({type(e).__name__}: {e})",
              file=sys.stderr)


def timed_out(ran_s: float, limit_s: float, signal_delay_s: float) -> bool:
    """Whether a USR2 after ``ran_s`` seconds of a ``limit_s`` job is SLURM's time-limit signal (sent
    ``signal_delay_s`` before the limit, up to a minute early) rather than a preemption."""
    return limit_s > 0 and ran_s >= limit_s - signal_delay_s - SIGNAL_SLACK_S


def follow(task: Task, should_stop) -> None:
    """A rank other than 0: trains in step with rank 0 (resuming from the same checkpoint), evaluates its share
    (not in a training-only task); rank 0 writes the row. A baseline is rank 0's alone: nothing to follow."""
    from ..pic.train import Trainer

    if task.kind != "pic":
        return None
    # rank 0 moves an unreadable one aside (never an evaluation task's final checkpoint)
    trainer = resume(Trainer(task.cfg), task.checkpoint, move=False, final=task.stage == "eval")
    trainer.train(should_stop=should_stop, checkpoint=task.checkpoint)  # saving is a no-op off rank 0
    if task.stage == "train":
        return None
    from ..eval.evaluate import Progress, evaluate_run  # evaluation is sharded over the ranks: this one embeds its slice

    progress = Progress(task.checkpoint.with_name(task.checkpoint.stem + "-eval.pt"), dist=trainer.dist)
    evaluate_run(trainer, progress)
    progress.clear()
    return None


# ---- submission, manifests, waiting

def manifest_file(results_dir: Path, ablation: str) -> Path:
    return Path(results_dir) / "slurm" / f"{ablation}.jsonl"


def task_key(task: Task) -> list:
    """``task.key`` as a JSON list, for the manifest (the same tuple as the row key of the task's row)."""
    return list(task.key)


def read_manifest(results_dir: Path, ablation: str, stage: str = "final") -> dict[tuple, dict[str, Any]]:
    """The latest submission of every task key of an ablation: of the job that ends with the task's row
    (``stage="final"``: an evaluation, a baseline, or a task that trains and evaluates) or of its training job
    (``stage="train"``). Entries written before stages existed are final."""
    path = manifest_file(results_dir, ablation)
    latest: dict[tuple, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (e.get("stage") == "train") == (stage == "train"):
                latest[tuple(e["key"])] = e
    return latest


def refusals_file(results_dir: Path, ablation: str) -> Path:
    return Path(results_dir) / "slurm" / f"{ablation}.refused.jsonl"


def record_refusal(tasks: list[Task], stage: str, said: str, results_dir: Path) -> None:
    """One line per task of an array sbatch refused: its key, stage, sbatch's words and the time."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    by_file: dict[Path, list[str]] = {}
    for t in tasks:
        by_file.setdefault(refusals_file(results_dir, t.ablation), []).append(json.dumps(
            {"key": task_key(t), "name": t.name, "cell": t.cell, "stage": stage, "refused": said, "time": now}))
    for path, lines in by_file.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))


def read_refusals(results_dir: Path, ablation: str) -> dict[tuple, dict[str, Any]]:
    """The latest refusal of every task key of an ablation ({"stage", "refused", "time", ...})."""
    path = refusals_file(results_dir, ablation)
    latest: dict[tuple, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                e = json.loads(line)
                latest[tuple(e["key"])] = e
            except (ValueError, KeyError, TypeError):
                continue
    return latest


def never_starts(state: tuple[str, str]) -> bool:
    """A pending job whose dependency can no longer be met (its training task failed or was cancelled)."""
    return state[0] == "PENDING" and "DependencyNeverSatisfied" in state[1]


class SbatchRefused(RuntimeError):
    """sbatch refused a job array; the message is sbatch's words in one line."""


def _submit_array(tasks: list[Task], cc: ClusterConfig, stage: str, results_dir: Path, followed: dict[str, Any],
                  cluster_path: str | Path | None, dependency: str | None = None) -> list[Any]:
    """One job array of ``tasks`` with these resources; appends one manifest entry per task (with its stage and
    dependency) and, except for training-only arrays, the jobs to ``followed``. Raises ``SbatchRefused``."""
    ex = submitit.SlurmExecutor(folder=Path(cc.folder) / "%j", max_num_timeout=cc.max_requeues)
    params = sbatch_params(cc, f"pic_{tasks[0].ablation}" + ("" if stage == "all" else f"_{stage}"))
    if dependency:
        # a dependency that can never be met (failed training) cancels the waiting job where the cluster allows
        params["additional_parameters"] = {**params["additional_parameters"], "dependency": dependency,
                                           "kill_on_invalid_dep": "yes"}
    ex.update_parameters(**params)
    try:
        jobs = ex.map_array(ArrayTask(cc.signal_delay_s, cc.group_timeout_min), tasks)
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError, OSError) as e:
        # sbatch's own words (memory beyond any node, an unknown flag, ...), one line; nothing more is queued
        said = "; ".join(line.strip().removeprefix("sbatch: error: ").strip()
                         for line in str(e).strip().splitlines() if line.strip()) or type(e).__name__
        try:
            record_refusal(tasks, stage, said, results_dir)  # for status: refused, not "never submitted"
        except OSError:
            pass  # the error line below still says it
        raise SbatchRefused(f"sbatch refused the {stage} job array ({len(tasks)} task(s); settings from "
                            f"{cluster_path or 'the defaults'} and --slurm): {said}") from None
    array_id = jobs[0].job_id.split("_")[0]
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for t, j in zip(tasks, jobs):
        path = manifest_file(results_dir, t.ablation)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"key": task_key(t), "name": t.name, "cell": t.cell, "stage": stage, "job_id": j.job_id,
                 "array_id": array_id, "folder": str(Path(cc.folder) / array_id), "stdout": str(j.paths.stdout),
                 "stderr": str(j.paths.stderr), "curve": str(t.curve), "submitted": now,
                 "resources": describe_resources(cc)}
        if dependency:
            entry["dependency"] = dependency
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        if stage != "train":
            followed[t.name] = j
    after = f", each after its training task ({dependency})" if dependency else ""
    print(f"submitted {len(jobs)} {stage} task(s) as job array {array_id} ({describe_resources(cc)}{after}; "
          f"logs: {Path(cc.folder) / array_id})")
    return jobs


def queue_states(job_ids: list[str] | None = None) -> dict[str, tuple[str, str]]:
    """{array job id '123_4' or job id: (state, reason)} for jobs that squeue still lists."""
    try:
        r = _run(["squeue", "-h", "-r", "-o", "%i|%T|%r"], timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {p[0]: (p[1], p[2]) for p in _pipe_rows(r.stdout, 3)}


def _pipe_rows(text: str, ncols: int) -> list[list[str]]:
    """Lines of '|'-separated squeue / sacct output that have exactly ncols fields."""
    return [p for p in (line.strip().split("|") for line in text.splitlines()) if len(p) == ncols]


def accounting_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, exit code)} from sacct (empty when accounting is off or slow)."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        r = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(arrays), "-o", "JobID,State,ExitCode"], timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {p[0]: (p[1].split()[0], p[2]) for p in _pipe_rows(r.stdout, 3) if p[1].split()}


ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
          "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT"}


def submit(tasks: list[Task], cluster_path: str | Path | None, wait: bool = False,
           results_dir: Path = Path("results"), overrides: dict[str, Any] | list[str] | None = None,
           poll_s: float = 10.0, quiet: bool = False) -> int:
    """Validates the cluster settings, then submits every task without a row as one job array.

    Returns 0 (with ``wait``: 0 when every task landed an ok row, 1 otherwise); 2 for bad cluster settings.
    """
    results_dir = Path(results_dir)
    try:
        tasks = dedupe(tasks)  # one array task per key: duplicates would share a checkpoint and race for one row
    except DatasetError as e:  # a task's identity needs its data's index, read here before submitting
        print(f"error: {e} (the data must be readable where the job array is submitted)", file=sys.stderr)
        return 2
    try:
        if isinstance(overrides, list):
            overrides = parse_overrides(overrides)
        origins: dict[str, str] = {}
        cc = load_cluster(cluster_path, overrides, origins)
        validate(cc, tasks, results_dir, where=str(cluster_path or "cluster"), origins=origins)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    skipped_done, skipped_queued = 0, []
    followed: dict[str, Any] = {}  # task name -> submitit job that ends with its row, for --wait
    prereq: dict[str, Any] = {}  # task name -> its training job, for --wait (an evaluation waiting on it)
    queue = queue_states()
    manifests: dict[str, dict] = {}
    trains: list[Task] = []  # training tasks to submit (stage train, or all when eval_task is off)
    evals_after: list[Task] = []  # their evaluations, one per training task, in the same order (aftercorr)
    evals_ready: list[Task] = []  # evaluations of cells trained already (no dependency)
    evals_waiting: dict[str, list[Task]] = {}  # evaluations of cells whose training is queued from before
    baselines: list[Task] = []
    dead: list[str] = []  # evaluation jobs whose training failed: never to start, cancelled and resubmitted
    for t in tasks:
        if t.done():
            skipped_done += 1
            continue
        m = manifests.setdefault(t.ablation, read_manifest(results_dir, t.ablation))
        prev = m.get(tuple(task_key(t)))
        active = prev is not None and prev["job_id"] in queue and queue[prev["job_id"]][0] in ACTIVE
        if active and never_starts(queue[prev["job_id"]]):
            dead.append(prev["job_id"])
            active = False
        if active:
            skipped_queued.append(prev["job_id"])
            followed[t.name] = submitit.SlurmJob(folder=Path(cc.folder) / "%j", job_id=prev["job_id"])
            continue
        stage = stage_of(t, cc)
        if stage == "baseline":
            baselines.append(t)
        elif stage == "eval":
            evals_ready.append(t.at("eval"))
        else:
            trained_by = read_manifest(results_dir, t.ablation, stage="train").get(tuple(task_key(t)))
            if stage == "train" and trained_by and trained_by["job_id"] in queue and \
                    queue[trained_by["job_id"]][0] in ACTIVE:
                evals_waiting.setdefault(trained_by["job_id"], []).append(t.at("eval"))
                prereq[t.name] = submitit.SlurmJob(folder=Path(cc.folder) / "%j", job_id=trained_by["job_id"])
            else:
                trains.append(t.at(stage))
                if stage == "train":
                    evals_after.append(t.at("eval"))
    if dead:
        _run(["scancel", *dead])
        print(f"cancelled {len(dead)} evaluation job(s) whose training failed (SLURM: dependency never "
              f"satisfied): {', '.join(dead)}; resubmitting training and evaluation", file=sys.stderr)
    if skipped_done:
        print(f"skipping {skipped_done} task(s) whose row already exists", file=sys.stderr)
    if skipped_queued:
        print(f"skipping {len(skipped_queued)} task(s) still queued or running: {', '.join(skipped_queued)}",
              file=sys.stderr)
    if not (trains or evals_ready or evals_waiting or baselines):
        print("nothing to submit")
    else:
        try:
            submitted = 0
            if trains:
                trains = [t if not cc.checkpoint_every else  # run.* is outside the config hash: the cell is unchanged
                          dataclasses.replace(t, cfg=apply(t.cfg, {"run.checkpoint_every": cc.checkpoint_every},
                                                           "cluster")) for t in trains]
                stage = trains[0].stage
                jobs = _submit_array(trains, cc.for_stage("train"), stage, results_dir, followed, cluster_path)
                submitted += len(jobs)
                for t, j in zip(trains, jobs):
                    prereq[t.name] = j
                if evals_after:  # task i of the evaluation array starts when task i of this one succeeds
                    # (submitit submits a single task as a plain job, which aftercorr does not pair with)
                    one = "_" not in jobs[0].job_id
                    after = f"afterok:{jobs[0].job_id}" if one else f"aftercorr:{jobs[0].job_id.split('_')[0]}"
                    submitted += len(_submit_array(evals_after, cc.for_stage("eval"), "eval", results_dir, followed,
                                                   cluster_path, dependency=after))
            if evals_ready:
                submitted += len(_submit_array(evals_ready, cc.for_stage("eval"), "eval", results_dir, followed,
                                               cluster_path))
            for job_id, waiting in sorted(evals_waiting.items()):
                submitted += len(_submit_array(waiting, cc.for_stage("eval"), "eval", results_dir, followed,
                                               cluster_path, dependency=f"afterok:{job_id}"))
            if baselines:
                submitted += len(_submit_array(baselines, cc.for_stage("baseline"), "baseline", results_dir,
                                               followed, cluster_path))
        except SbatchRefused as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"follow with: python -m pic_bench.status {tasks[0].ablation}")
    if not wait:
        return 0
    code = wait_for(tasks, followed, poll_s=poll_s, quiet=quiet, prerequisites=prereq)
    from ..report.tables import build_table

    for results, abl, preset in sorted({(t.results_dir, t.ablation, t.preset) for t in tasks}):
        print(build_table(abl, Path(results), preset=preset, write=True))
    return code


def wait_for(tasks: list[Task], jobs: dict[str, Any], poll_s: float = 10.0, quiet: bool = False,
             grace_s: float = 60.0, prerequisites: dict[str, Any] | None = None) -> int:
    """Blocks until every task has a row or its job ended without one; a progress bar counts landed rows.

    Rows are the truth (submitit's job states lag sacct by seconds); a job that SLURM reports finished with no
    row after ``grace_s`` is counted as failed, so a job killed without a result never blocks forever. So is an
    evaluation whose training job (``prerequisites``: task name -> job) ended without training the cell: SLURM
    keeps such a job pending, or cancels it, but it never runs.
    """
    prerequisites = prerequisites or {}
    from tqdm import tqdm

    from ..report.results import read_rows, row_key

    bar = tqdm(total=len(tasks), desc="tasks with a row", disable=quiet, file=sys.stderr)
    ended_at: dict[str, float] = {}
    while True:
        landed, failed = set(), set()
        for results_dir, abl in {(t.results_dir, t.ablation) for t in tasks}:
            rows, _ = read_rows(Path(results_dir), abl)
            for r in rows:
                (landed if r["status"] == "ok" else failed).add(row_key(r))
        n_ok, lost = 0, 0
        for t in tasks:
            k = tuple(task_key(t))
            if k in landed:
                n_ok += 1
                continue
            j = jobs.get(t.name)
            if j is None:  # neither landed nor followed (its row vanished meanwhile): nothing to wait for
                lost += 1
                continue
            try:
                finished = j.done()
                pre = prerequisites.get(t.name)
                if not finished and pre is not None and not t.trained() and pre.done():
                    finished = True  # its training ended without training the cell: this job never starts
            except Exception:  # noqa: BLE001 - accounting hiccups: ask again next round
                finished = False
            if finished:
                ended_at.setdefault(t.name, time.time())
                if time.time() - ended_at[t.name] > grace_s or k in failed:
                    lost += 1
        bar.n = n_ok
        bar.set_postfix(failed=lost, refresh=False)
        bar.refresh()
        if n_ok + lost >= len(tasks):
            bar.close()
            print(f"{n_ok} task(s) ok, {lost} failed (details: python -m pic_bench.status {tasks[0].ablation})",
                  file=sys.stderr)
            return 0 if lost == 0 else 1
        time.sleep(poll_s)

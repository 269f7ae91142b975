"""What a task will cost before it runs: its steps, the images its evaluation embeds, the memory their features
need and, from the rows already landed, how long the evaluation will take. ``--dry-run`` prints it per task.

    python -m pic_bench.run ablations/negatives_k.yaml small --dry-run

Our interpretation, where a plan has to choose:

- steps are ``train.derive(cfg, N)["steps"]`` with N the source's training images (the listing cache for a
  folder, nothing decoded); the baselines train nothing (steps None).
- the evaluation embeds every training image and every image of the evaluation split once (kNN and the probe
  read the same features), and keeps those features in ``eval.feature_dtype`` on the device it runs on:
  images x feature dim x bytes per value. The feature dim is the backbone's (``model.feature_dim``: arch, width
  and ``model.pool``); for the raw-pixel baseline it is the pixel vector ``evaluate.pixels_fn`` builds
  (``eval.pixels_size``, or ``data.image_size`` when 0, squared x channels). ``linear_sgd`` reads the images
  again after that but keeps no more than the kNN features.
- the regime figures (``train.derive_regime``: sweeps of the data by the window, share of training images never
  trained on, share of samples that are a first visit, when first visits end, mean revisit distance in units of
  D) are computed from the scheduler alone, as the run's row records them. The official sampler is sequential
  (every window reshuffles all N): past ``REGIME_PLAN_WINDOWS`` windows its figures are left to the run's row
  (about 0.07 s a window at ImageNet size) rather than slowing the dry run down.
- the evaluation time is the median ``metrics.eval_wall_s`` per embedded image over the ok rows of the same
  ablation, preset and kind (a raw-pixel baseline costs nothing like a ResNet), times this task's images; with no
  such row it is unknown (None), never a guessed constant. The rows may come from another machine: the line says
  how many rows it is from.
"""
from __future__ import annotations

import functools
import math
import statistics
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..eval.evaluate import feature_dtype, pixels_fn
from ..pic.model import feature_dim
from ..report.results import read_rows, rows_file
from .tasks import Task, data_sizes


REGIME_PLAN_WINDOWS = 256  # official sampler: windows the dry run streams at most for the regime figures


def plan_regime(cfg: Config, N: int) -> dict[str, float] | None:
    """The run's regime figures, or None for an official sampler too long to stream in a dry run."""
    from ..pic.train import derive, derive_regime

    d = derive(cfg, N)
    if cfg.pic.scheduler == "official" and d["steps"] * cfg.optim.batch_size > REGIME_PLAN_WINDOWS * d["window_len"]:
        return None
    return derive_regime(cfg, N)


def fmt_regime(r: dict[str, float] | None) -> str:
    """'regime: 5.00 sweeps, never visited 0.0%, first visits 2.5% of samples, the last at 18.4% of training, revisit
    8.35 D'."""
    if r is None:
        return "regime: in the row (official sampler: too long to stream in a dry run)"
    return (f"regime: {r['sweeps']:.2f} sweeps, never visited {100 * r['never_visited']:.1f}%, first visits "
            f"{100 * r['first_visit_share']:.1f}% of samples, the last at {100 * r['first_visits_end']:.1f}% of training, "
            f"revisit {r['revisit_distance_D']:.2f} D")


def plan_device(cfg: Config) -> torch.device:
    """Where the task's evaluation will keep its features, without asking the launcher for a rank: the CPU for
    run.device=cpu (or auto without a GPU here), CUDA otherwise."""
    if cfg.run.device == "cpu" or (cfg.run.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def row_eval_images(row: dict[str, Any], cfg: Config, test: int) -> int | None:
    """The images a landed row's evaluation embedded: its N plus its evaluation split, which is this task's
    ``test`` images when the row evaluated on the same split of the same dataset (None otherwise: not comparable)."""
    d = (row.get("config") or {}).get("data") or {}
    N = (row.get("data") or {}).get("N") or (row.get("derived") or {}).get("N")
    if not N:
        return None
    same = (d.get("dataset"), d.get("test_size"), d.get("eval_split")) == (
        cfg.data.dataset, cfg.data.test_size, cfg.data.eval_split)
    if not same:
        return None
    return N + (N if cfg.data.eval_split == "train" else test)


# a network built per task (on the meta device) cost ~5 ms: 50 s of a 10,000-task dry run for a handful of models
_feature_dim = functools.lru_cache(maxsize=None)(feature_dim)

# rows file -> (its stat signature, {(preset, kind, dataset, test size, split, test images): (median s, rows)})
_RATES: dict[str, tuple[tuple, dict[tuple, tuple[float | None, int]]]] = {}


def eval_rate(results_dir: Path, ablation: str, preset: str, kind: str, cfg: Config, test: int
              ) -> tuple[float | None, int]:
    """(median evaluation seconds per image, how many rows it is from) of the landed ok rows of ``preset`` and
    ``kind`` comparable with ``cfg`` (``row_eval_images``); (None, 0) without any. The rows file is read once per
    change, and each answer computed once per data setting: a plan of 10,000 tasks against 10,000 rows read every
    row for every task (10^8 rows) before."""
    path = rows_file(results_dir, ablation)
    try:
        st = path.stat()
    except OSError:
        return None, 0
    sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    name = str(path.resolve())
    if name not in _RATES or _RATES[name][0] != sig:
        timed = []  # (preset, kind, eval seconds, what row_eval_images reads of the row) of the ok rows timed
        for row in read_rows(results_dir, ablation)[0]:
            wall = (row.get("metrics") or {}).get("eval_wall_s")
            if row["status"] == "ok" and wall:
                timed.append((row["preset"], row.get("kind", "pic"), wall, {
                    "config": {"data": row["config"].get("data")}, "data": row.get("data"),
                    "derived": {"N": (row.get("derived") or {}).get("N")}}))
        _RATES[name] = (sig, {"timed": timed})
    cache = _RATES[name][1]
    key = (preset, kind, cfg.data.dataset, cfg.data.test_size, cfg.data.eval_split, test)
    if key not in cache:
        per_image = []
        for row_preset, row_kind, wall, row in cache["timed"]:
            if row_preset != preset or row_kind != kind:
                continue
            n = row_eval_images(row, cfg, test)
            if n:
                per_image.append(wall / n)
        cache[key] = (statistics.median(per_image) if per_image else None, len(per_image))
    return cache[key]


def plan(task: Task, results_dir: str | Path, device: str | torch.device | None = None) -> dict[str, Any]:
    """The plan of one task (see the module docstring).

    Returns:
        {"kind", "N", "steps" (None for a baseline), "eval_images" (train + evaluation split), "feature_dim",
        "feature_dtype", "eval_feature_bytes", "eval_seconds" (None without landed rows), "eval_rows" (how many
        rows the estimate is from), "regime" (``plan_regime``; None for a baseline)}.
    """
    from ..pic.train import derive

    cfg = task.cfg
    N, test, channels = data_sizes(cfg)
    device = torch.device(device) if device is not None else plan_device(cfg)
    dtype = feature_dtype(cfg.eval.feature_dtype, device)
    if task.kind == "baseline_pixels":
        dim = pixels_fn(cfg.data.image_size, cfg.eval.pixels_size)[1] * channels  # (side x side) per channel
    else:
        dim = _feature_dim(cfg.model, channels)
    images = N + test
    rate, rows = eval_rate(Path(results_dir), task.ablation, task.preset, task.kind, cfg, test)
    return {
        "kind": task.kind, "N": N, "steps": derive(cfg, N)["steps"] if task.kind == "pic" else None,
        "eval_images": images, "feature_dim": dim, "feature_dtype": str(dtype).removeprefix("torch."),
        "eval_feature_bytes": images * dim * dtype.itemsize,
        "eval_seconds": rate * images if rate is not None else None, "eval_rows": rows,
        "regime": plan_regime(cfg, N) if task.kind == "pic" else None,
    }


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
    if s >= 60:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{s:.1f} s"


def describe(task: Task, results_dir: str | Path, resources: str | None = None,
             device: str | torch.device | None = None) -> str:
    """One line of plan for a task: kind, steps, the regime figures (training tasks), evaluation images, feature memory, evaluation time and (when
    given, e.g. "1 node x 4 tasks x 4 GPUs, 720 min" from the SLURM side) the resources it runs on."""
    p = plan(task, results_dir, device)
    steps = f"{p['steps']} steps (N={p['N']})" if p["steps"] is not None else f"no training (N={p['N']})"
    if p["eval_seconds"] is None:
        when = "eval time unknown (no landed rows at this preset)"
    else:
        when = f"eval ~{fmt_seconds(p['eval_seconds'])} (median per image of {p['eval_rows']} landed row(s))"
    images = f"eval {p['N']} + {p['eval_images'] - p['N']} images"  # training set + evaluation split
    memory = f"features {fmt_bytes(p['eval_feature_bytes'])} ({p['feature_dim']}-d {p['feature_dtype']})"
    parts = [p["kind"], steps, images, memory, when]
    if p["kind"] == "pic":
        parts.insert(2, fmt_regime(p["regime"]))
    if resources:
        parts.append(f"on {resources}")
    return ", ".join(parts)


# ---- what a training task asks of its cluster resources (``launch.validate`` refuses what cannot carry it)
#
# Estimates, stated here so a refusal can say what it assumed (none measured on a GPU: no GPU was lent to the
# session that wrote them; override the step time with ``--slurm step_s=...``):
# - step time when neither the cluster's ``step_s`` nor landed rows give one: ``ASSUMED_STEP_S`` per preset. The
#   paper preset's 0.1 s is ResNet-50 at 64 images per GPU in bf16 on an A100/H100 (about 2,500 images/s over
#   4 GPUs) with the loader keeping up; other presets have no assumption (their checks wait for landed rows).
# - host memory of one rank: the process with torch imported (``RANK_BASE_GIB``, 0.5 GiB measured on the CPU),
#   CUDA's host side when the task has GPUs (``CUDA_HOST_GIB``), the training state built on the host first (the
#   checkpoint's tensors: w and u at N x d, the network and its momentum), and ``WORKER_GIB`` per loader worker;
#   rank 0 holds one more host copy of the state while it writes a checkpoint.
# - a checkpoint larger than ``SMALL_CHECKPOINT_BYTES`` may be written at most every ``MIN_CHECKPOINT_S``.
ASSUMED_STEP_S = {"paper": 0.1}
RANK_BASE_GIB = 0.5
CUDA_HOST_GIB = 1.0
WORKER_GIB = 0.25
MIN_CHECKPOINT_S = 180
SMALL_CHECKPOINT_BYTES = 64 * 2**20


@functools.lru_cache(maxsize=None)
def _model_bytes(model_cfg, channels: int) -> tuple[int, int]:
    """(parameter bytes, buffer bytes) of a config's network, built on the meta device (no memory)."""
    from ..pic.model import PICModel

    with torch.device("meta"):
        m = PICModel(model_cfg, channels)
    params = sum(p.numel() * p.element_size() for p in m.parameters())
    buffers = sum(b.numel() * b.element_size() for b in m.buffers())
    return params, buffers


def checkpoint_bytes(cfg: Config, N: int, channels: int) -> int:
    """Bytes of one training checkpoint: the network's parameters and buffers, SGD's momentum (one buffer per
    parameter), and w and u (N x d each, in ``pic.storage``). RNG states, meters and the scheduler's position are
    small beside them and left out."""
    params, buffers = _model_bytes(cfg.model, channels)
    d = cfg.model.dim if cfg.model.head != "none" else feature_dim(cfg.model, channels)
    per_value = 4 if cfg.pic.storage == "float32" else 2
    return 2 * params + buffers + 2 * N * d * per_value


def host_bytes_per_node(cfg: Config, N: int, channels: int, tasks_per_node: int, gpus: bool) -> int:
    """Host memory the ranks of one node need (the estimate above): tasks_per_node x one rank's, plus rank 0's
    copy of the state while it saves."""
    state = checkpoint_bytes(cfg, N, channels)
    rank = (RANK_BASE_GIB + (CUDA_HOST_GIB if gpus else 0.0) + WORKER_GIB * cfg.data.workers) * 2**30 + state
    return int(tasks_per_node * rank + state)


def budget(cfg: Config, N: int, channels: int, step_s: float | None, every: int, segment_s: float,
           max_segments: int, tasks_per_node: int, gpus: bool) -> dict[str, Any]:
    """What one training task asks of its resources.

    Args:
        step_s: seconds per step (None: unknown; then the times, segments and checkpoint count are None).
        every: the periodic checkpoint interval in steps (0 = none; ``run.checkpoint_minutes`` still applies).
        segment_s: seconds of training one job segment has (time limit - signal delay - start-up).
        max_segments: max_requeues + 1.
    Returns:
        {"steps", "step_s", "run_s", "segments", "max_segments", "interval_s" (seconds between checkpoints),
        "checkpoints" (periodic and timed ones plus one per requeue), "checkpoint_bytes", "written_bytes",
        "host_bytes" (per node)}.
    """
    from ..pic.train import derive

    steps = derive(cfg, N)["steps"]
    out: dict[str, Any] = {"steps": steps, "step_s": step_s, "run_s": None, "segments": None,
                           "max_segments": max_segments, "interval_s": None, "checkpoints": None,
                           "checkpoint_bytes": checkpoint_bytes(cfg, N, channels),
                           "host_bytes": host_bytes_per_node(cfg, N, channels, tasks_per_node, gpus)}
    if step_s:
        run_s = steps * step_s
        segments = max(1, math.ceil(run_s / segment_s)) if segment_s > 0 else None
        intervals = [s for s in (every * step_s if every else 0, cfg.run.checkpoint_minutes * 60) if s > 0]
        interval = min(intervals) if intervals else None
        periodic = int(run_s // interval) if interval else 0
        out.update(run_s=run_s, segments=segments, interval_s=interval,
                   checkpoints=periodic + ((segments or 1) - 1))
        out["written_bytes"] = out["checkpoints"] * out["checkpoint_bytes"]
    return out


def describe_budget(b: dict[str, Any], step_src: str) -> str:
    """'1000912 steps x 0.1 s/step (assumed ...) = 27 h 48 min: 3 segment(s) of at most 6, 58 checkpoint(s) x
    1.4 GiB = 83.0 GiB written, host memory 21.0 GiB/node' (one line of the dry run)."""
    host = f"host memory {fmt_bytes(b['host_bytes'])}/node (estimate)"
    if not b["step_s"]:
        return (f"{b['steps']} steps, step time unknown ({step_src}): segments and checkpoint count unknown, "
                f"checkpoint {fmt_bytes(b['checkpoint_bytes'])}, {host}")
    return (f"{b['steps']} steps x {b['step_s']:.3g} s/step ({step_src}) = {fmt_seconds(b['run_s'])}: "
            f"{b['segments']} segment(s) of at most {b['max_segments']}, {b['checkpoints']} checkpoint(s) x "
            f"{fmt_bytes(b['checkpoint_bytes'])} = {fmt_bytes(b['written_bytes'])} written, {host}")

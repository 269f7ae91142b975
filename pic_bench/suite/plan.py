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

import statistics
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..eval.evaluate import feature_dtype, pixels_fn
from ..pic.model import feature_dim
from ..report.results import read_rows
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
    """'regime: 5.00 sweeps, never visited 0.0%, first visits 2.5% of samples, done by 18.4% of training, revisit
    8.35 D'."""
    if r is None:
        return "regime: in the row (official sampler: too long to stream in a dry run)"
    return (f"regime: {r['sweeps']:.2f} sweeps, never visited {100 * r['never_visited']:.1f}%, first visits "
            f"{100 * r['first_visit_share']:.1f}% of samples, done by {100 * r['first_visits_end']:.1f}% of training, "
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
        dim = feature_dim(cfg.model, channels)
    images = N + test
    per_image = []
    for row in read_rows(Path(results_dir), task.ablation)[0]:
        wall = (row.get("metrics") or {}).get("eval_wall_s")
        if row["status"] != "ok" or row["preset"] != task.preset or row.get("kind", "pic") != task.kind or not wall:
            continue
        n = row_eval_images(row, cfg, test)
        if n:
            per_image.append(wall / n)
    return {
        "kind": task.kind, "N": N, "steps": derive(cfg, N)["steps"] if task.kind == "pic" else None,
        "eval_images": images, "feature_dim": dim, "feature_dtype": str(dtype).removeprefix("torch."),
        "eval_feature_bytes": images * dim * dtype.itemsize,
        "eval_seconds": statistics.median(per_image) * images if per_image else None, "eval_rows": len(per_image),
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

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
- the evaluation time is the median ``metrics.eval_wall_s`` per embedded image over the ok rows of the same
  ablation, preset and kind (a raw-pixel baseline costs nothing like a ResNet), times this task's images; with no
  such row it is unknown (None), never a guessed constant. The rows may come from another machine: the line says
  how many rows it is from.
"""
from __future__ import annotations

import functools
import statistics
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..eval.evaluate import feature_dtype, pixels_fn
from ..pic.model import feature_dim
from ..report.results import read_rows, rows_file
from .tasks import Task, data_sizes


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
        rows the estimate is from)}.
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
    """One line of plan for a task: kind, steps, evaluation images, feature memory, evaluation time and (when
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
    if resources:
        parts.append(f"on {resources}")
    return ", ".join(parts)

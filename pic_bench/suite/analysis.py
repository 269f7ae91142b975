"""Analysis ablations: measurements that need no training, one result row per cell, then their table and plots.

    python -m pic_bench.run ablations/visit_distance.yaml small     # revisit distances, any N (ImageNet's too)
    python -m pic_bench.run ablations/scaling.yaml small            # head / whole-step time and memory vs N

``pic_bench.run`` hands ablation files with ``kind: analysis`` to ``run`` here; the file's name picks the
analysis (``visit_distance*`` or ``scaling*``).

- **visit_distance**: the stream of instance indices that a scheduler produces for ``optim.epochs * N`` samples,
  and the distance (in samples) between every two consecutive visits of the same instance. Rows hold
  quantiles, the share of revisits within 2D, and a log-binned histogram for the plot.
- **scaling**: the classification head's step (gather the candidate rows of w, cosine logits, cross-entropy,
  backward to z and the rows, the momentum-SGD update of w and u) and a whole training step (the backbone's
  forward/backward and optimizer step on random inputs, then the head), timed and their peak memory measured at
  every N of a grid up to ``data.num_instances``. Each cell of the file is an arm (full softmax, recent-K with or
  without the correction). The head is measured by ``pic_bench.bench.scaling.head_point`` (the kernels issue's
  benchmark: interleaved rounds, peak memory beyond w and u, the matmul floor) where that module exists, else by
  the minimal measurement here; the whole step always runs ``Trainer.train_step`` at the ablation's preset.
  Rows: kind ``scaling``, cell = the arm + ``data.num_instances`` = N, status ``ok`` or ``skipped`` (error says
  why), metrics head_ms_median, head_ms_p90, step_ms_median, step_ms_p90, head_peak_mib, step_peak_mib (MiB from
  before w and u exist), state_mib, peak_mem_kind, head_path; ``pic_bench.tables`` renders and plots them.
"""
from __future__ import annotations

import gc
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import Ablation, Config, apply, config_hash
from ..bench.memory import PeakMemory
from ..report.results import append_row, has_row, make_row
from ..report.timing import measure as measured
from ..data.window import Schedule, make_schedule

IMAGENET_1K_TRAIN = 1_281_167


def run(abl: Ablation, preset: str, cli: dict[str, Any], results_dir: Path) -> int:
    """Runs every cell x seed of an analysis ablation that has no ok row yet, then writes its table.

    A point that raises is written as a failed row (the table lists it) and the others still run; the return
    code is then 1.
    """
    if abl.name.startswith("visit_distance"):
        measure = visit_cell
    elif abl.name.startswith("scaling"):
        measure = scaling_cells
    else:
        print(f"error: {abl.path}: no analysis is named '{abl.name}' (visit_distance* | scaling*)", file=sys.stderr)
        return 2
    failed = 0
    for seed in abl.seeds:
        for cell, cfg in abl.resolve(preset, cli):
            cfg = apply(cfg, {"run.seed": seed}, "seeds")
            for point_cell, point_cfg, kind, fn in measure(cell, cfg):
                if has_row(results_dir, abl.name, kind, preset, config_hash(point_cfg), seed):
                    print(f"{abl.name}: {point_cell} seed {seed}: row exists, skipped", file=sys.stderr)
                    continue
                try:
                    status, metrics, derived, device, error = fn()
                except Exception as e:  # noqa: BLE001 - recorded, and the other points still run
                    status, metrics, derived, device = "failed", {}, {}, point_cfg.run.device
                    error = f"{type(e).__name__}: {e}"
                    failed += 1
                row = make_row(abl.name, preset, point_cell, point_cfg, status, metrics, derived, device,
                               error=error, kind=kind)
                append_row(row, results_dir)
                print(f"{abl.name}: {point_cell} seed {seed}: {status} "
                      + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                                  if isinstance(v, float) and k in SUMMARY_KEYS), file=sys.stderr)
    from ..report.tables import build_table

    print(build_table(Path(abl.path), results_dir, preset=preset, write=True))  # the file: its default cell
    return 1 if failed else 0


SUMMARY_KEYS = ("median", "share_within_2D", "head_ms_median", "step_ms_median", "head_peak_mib")


# ---------------------------------------------------------------------------------------------- visit distance
def revisit_distances(schedule: Schedule, samples: int) -> np.ndarray:
    """Distances between consecutive visits of the same instance over the first ``samples`` stream positions.

    Walks the stream window by window: a window holds distinct instances (true of all three schedulers), so each
    window is one vectorised step with no repeats inside it. Returns (revisits,) int64, in stream order of the
    second visit. Equals ``window.visit_distances(schedule.positions(0, samples), N)``.
    """
    last = np.full(schedule.N, -1, dtype=np.int64)  # (N,) position of each instance's latest visit
    out = []
    pos, t = 0, 0
    while pos < samples:
        w = schedule.window(t)[: samples - pos]  # (L,) instance indices, distinct
        p = pos + np.arange(len(w), dtype=np.int64)
        prev = last[w]
        seen = prev >= 0
        out.append(p[seen] - prev[seen])
        last[w] = p
        pos += len(w)
        t += 1
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


def expected_median(scheduler: str, N: int, D: int, S: int) -> float:
    """Median revisit distance by our derivation (not from the paper), nan where it has no simple form.

    epoch: a visit at position i of one epoch and j of the next are N - i + j apart, i, j uniform: triangular on
    (0, 2N) with median N. sliding (D < N, S <= D/2, N >= D + S): an instance sits in D/S consecutive windows,
    so a share 1 - S/D of its revisits are D - i + j apart (triangular on (0, 2D)) and the rest come after the
    window has wrapped (> 2D); the overall median is then D (1 + x) with x = 1 - sqrt(2 - 1 / (1 - S/D)).
    """
    if scheduler == "epoch" or (scheduler == "sliding" and D >= N):
        return float(N)
    if scheduler == "sliding" and 2 * S <= D and N >= D + S:
        return D * (2.0 - math.sqrt(2.0 - 1.0 / (1.0 - S / D)))
    return float("nan")


def histogram(d: np.ndarray, bins_per_decade: int = 20) -> tuple[list[int], list[int]]:
    """Log-spaced integer bin edges from 1 to past the largest distance, and the revisit counts in each bin."""
    top = max(int(d.max()) + 1, 2) if len(d) else 2
    edges = np.unique(np.round(np.logspace(0, math.log10(top) + 1e-9, int(math.log10(top) * bins_per_decade) + 2))
                      .astype(np.int64))
    edges[-1] = max(edges[-1], top)
    counts, _ = np.histogram(d, bins=edges)
    return edges.tolist(), counts.tolist()


def visit_distance_metrics(cfg: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, derived) of one scheduler setting: N = data.num_instances, optim.epochs * N samples."""
    p = cfg.pic
    N = cfg.data.num_instances
    if N <= 0:
        raise ValueError("visit_distance needs data.num_instances > 0 (the N to simulate; ImageNet-1K: 1281167)")
    samples = int(round(cfg.optim.epochs * N))
    schedule = make_schedule(p.scheduler, N, p.D, p.S, cfg.run.seed, p.official_shuffle)
    t0 = time.perf_counter()
    d = revisit_distances(schedule, samples)
    D = min(p.D, N)
    q = np.percentile(d, [10, 25, 50, 75, 90, 99]) if len(d) else [float("nan")] * 6
    edges, counts = histogram(d)
    metrics = {
        "revisits": int(len(d)), "p10": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]),
        "p90": float(q[4]), "p99": float(q[5]), "mean": float(d.mean()) if len(d) else float("nan"),
        "max": int(d.max()) if len(d) else 0, "median_over_D": float(q[2]) / D, "median_over_N": float(q[2]) / N,
        "share_within_2D": float((d <= 2 * D).mean()) if len(d) else float("nan"),
        "expected_median": expected_median(p.scheduler, N, D, p.S), "wall_s": time.perf_counter() - t0,
    }
    derived = {"N": N, "D": D, "S": p.S, "samples": samples, "hist_edges": edges, "hist_counts": counts}
    return metrics, derived


def visit_cell(cell: dict[str, Any], cfg: Config):
    """One point per cell: the scheduler named by the cell's config."""
    def fn():
        metrics, derived = visit_distance_metrics(cfg)
        return "ok", metrics, derived, "cpu", None

    yield cell, cfg, "visit_distance", fn


# --------------------------------------------------------------------------------------------------- scaling
def n_grid(cap: int, start: int = 10_000) -> list[int]:
    """Powers of ten from ``start`` below ``cap``, ImageNet-1K's N when below it, and ``cap`` itself."""
    grid = {cap}
    n = start
    while n < cap:
        grid.add(n)
        n *= 10
    if IMAGENET_1K_TRAIN < cap:
        grid.add(IMAGENET_1K_TRAIN)
    return sorted(grid)


def scaling_cells(cell: dict[str, Any], cfg: Config):
    """One point per N of the grid up to data.num_instances, for the arm (K, correction) this cell names."""
    from ..pic.train import resolve_device

    cap = cfg.data.num_instances
    if cap <= 0:
        raise ValueError("scaling needs data.num_instances > 0: the largest N to measure")
    for N in n_grid(cap):
        point_cfg = apply(cfg, {"data.num_instances": N}, "scaling grid")
        point_cell = {**cell, "data.num_instances": N}

        def fn(point_cfg=point_cfg, N=N):
            device = resolve_device(point_cfg.run.device)
            if point_cfg.run.threads:
                torch.set_num_threads(point_cfg.run.threads)
            need, have = memory_needed(point_cfg, N), memory_available(device)
            head_impl = "pic_bench.bench.scaling.head_point" if bench_head_point() else "pic_bench.analysis"
            derived = {"N": N, "K_effective": N if point_cfg.pic.K == 0 else min(point_cfg.pic.K, N),
                       "B": point_cfg.optim.batch_size, "d": point_cfg.model.dim, "estimated_mib": need / 2**20,
                       "available_mib": have / 2**20,
                       "implementation": f"head: {head_impl}; whole step: pic_bench.analysis (Trainer.train_step)"}
            if need > 0.7 * have:
                return ("skipped", {}, derived, device,
                        f"needs about {need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB available")
            try:
                with measured(device) as segment:  # whether its times are the code's (report.timing)
                    metrics = measure_point(point_cfg, N, device)
                return "ok", metrics, {**derived, "timing": {"segments": [segment]}}, device, None
            except (MemoryError, torch.cuda.OutOfMemoryError) as e:  # the benchmark's finer estimate, or a real OOM
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                return "skipped", {}, derived, device, f"out of memory: {str(e).splitlines()[0]}"

        yield point_cell, point_cfg, "scaling", fn


def memory_needed(cfg: Config, N: int) -> float:
    """Bytes a head step needs, by our estimate: w, u and their dense gradient (N, d), logits and their
    gradient (B, K) twice over, the gathered rows and their gradient (K, d)."""
    B, d = cfg.optim.batch_size, cfg.model.dim
    K = N if cfg.pic.K == 0 else min(cfg.pic.K, N)
    dense = cfg.pic.K == 0 or not cfg.pic.correction
    el = 4
    return el * (2 * N * d + (N * d if dense else 0) + 4 * B * K + 2 * K * d)


def memory_available(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        text = Path("/proc/meminfo").read_text()
        return float(re.search(r"MemAvailable:\s+(\d+)", text).group(1)) * 1024
    except (OSError, AttributeError):
        return float("inf")


def _time(step: Callable[[], None], device: torch.device, warmup: int = 2, min_repeats: int = 3,
          max_repeats: int = 20, budget_s: float = 8.0) -> list[float]:
    """Milliseconds per call of ``step`` (device synchronised), after up to ``warmup`` calls (one when a call
    takes more than a tenth of the budget); stops after ``budget_s`` once ``min_repeats`` calls are timed."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        t0 = time.perf_counter()
        step()
        sync()
        if time.perf_counter() - t0 > budget_s / 10:
            break
    out: list[float] = []
    start = time.perf_counter()
    while len(out) < max_repeats and (len(out) < min_repeats or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        step()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def measure_point(cfg: Config, N: int, device: torch.device) -> dict[str, Any]:
    """Step time and peak memory of the head and of a whole training step at N instances.

    Head: ``pic_bench.bench.scaling.head_point`` where it exists, else ``_measure_head``: the classifier's part
    of ``Trainer.train_step`` on a random z (B, d) standing in for the network: recent negatives select U, then
    the head path the trainer runs (``pic_bench.pic.head.head_step`` when
    ``pic.fast_head`` is on and that module exists; else the plain ``loss.pic_loss`` + backward +
    ``update.update_rows``), updating rows U of w and u with the correction, all N rows without it.
    Whole step: ``Trainer.train_step`` itself on random images of the config's size (data loading excluded).
    Peak memory counts from before w and u are allocated, so it includes them (``state_mib``).
    """
    head_point = bench_head_point()
    head = _bench_head(head_point, cfg, N, device) if head_point else _measure_head(cfg, N, device)
    results = {**head, **_measure_step(cfg, N, device)}
    results["state_mib"] = 2 * N * cfg.model.dim * (4 if cfg.pic.storage == "float32" else 2) / 2**20
    results["images_per_s"] = cfg.optim.batch_size * 1000 / results["step_ms_median"]
    return results


def _timed(part: str, cfg: Config, device: torch.device, step: Callable[[], None], mem: PeakMemory
           ) -> dict[str, Any]:
    cap = cfg.optim.max_steps or 20  # optim.max_steps caps the timed steps per point (smoke)
    ms = _time(step, device, min_repeats=min(3, cap), max_repeats=cap, budget_s=5.0)
    return {f"{part}_ms_median": float(np.median(ms)), f"{part}_ms_p90": float(np.percentile(ms, 90)),
            f"{part}_repeats": len(ms), f"{part}_peak_mib": mem.peak_mib(), "peak_mem_kind": mem.kind}


def fast_head(cfg: Config):
    """``pic_bench.pic.head`` when the trainer would use it for this config, else None (the plain path)."""
    if not getattr(cfg.pic, "fast_head", False):
        return None
    try:
        from ..pic import head
    except ImportError:
        return None
    return head if hasattr(head, "head_step") else None


def bench_head_point():
    """``pic_bench.bench.scaling.head_point`` (issue 5's head benchmark) where it exists, else None."""
    try:
        from ..bench import scaling as bench_scaling
    except ImportError:
        return None
    return getattr(bench_scaling, "head_point", None)


def _bench_head(head_point, cfg: Config, N: int, device: torch.device) -> dict[str, Any]:
    """The head measured by the benchmark's ``head_point`` with this config's K, B, d, storage and head path
    (its own rows are translated to this analysis's metric names; its matmul floor is kept)."""
    p = cfg.pic
    arm = "full" if p.K == 0 else ("recent" if p.correction else "recent_no_correction")
    path = "fast" if fast_head(cfg) else "plain"
    storage = torch.float32 if p.storage == "float32" else torch.bfloat16
    rounds = cfg.optim.max_steps or 5
    (r,) = head_point(arm, N, p.K, storage, (path,), rounds, device, B=cfg.optim.batch_size, d=cfg.model.dim)
    if r["status"] != "ok":
        raise MemoryError(r.get("why", "skipped by the benchmark"))
    return {"head_ms_median": r["ms_median"], "head_ms_p90": r["ms_p90"], "head_repeats": r["rounds"],
            "head_peak_mib": r["state_mib"] + r["peak_extra_mib"], "peak_mem_kind": r["peak_kind"],
            "head_floor_ms_median": r["floor_ms_median"], "head_ratio_to_floor": r["ratio_to_floor"],
            "head_path": f"pic_bench.bench.scaling.head_point, {path} path"}


def _measure_head(cfg: Config, N: int, device: torch.device) -> dict[str, Any]:
    from ..pic.loss import pic_loss
    from ..pic.negatives import RecentNegatives
    from ..pic.train import seed_everything
    from ..pic.update import update_rows

    p, o = cfg.pic, cfg.optim
    B, d = o.batch_size, cfg.model.dim if cfg.model.head != "none" else None
    if d is None:
        raise ValueError("scaling needs a projection head (model.head mlp or linear) to know d")
    lr, cosine, fast = o.base_lr * B / 256, p.softmax == "cosine", fast_head(cfg)
    seed_everything(cfg.run.seed)
    schedule = make_schedule(p.scheduler, N, p.D, p.S, cfg.run.seed, p.official_shuffle)
    mem = PeakMemory(device)
    mem.start()
    dtype = torch.float32 if p.storage == "float32" else torch.bfloat16
    w = (torch.randn(N, d, device=device) * p.w_init_std).to(dtype)  # (N, d)
    u = torch.zeros_like(w)  # (N, d)
    negatives = RecentNegatives(N, p.K, device, p.recent)
    negatives.refill(schedule, max(p.K, B))  # a full ring, as in the middle of training
    position = [max(p.K, B)]
    ws = fast.Workspace() if fast else None

    def step() -> None:
        index = torch.from_numpy(schedule.positions(position[0], B)).to(device)  # (B,)
        position[0] += B
        z = torch.randn(B, d, device=device, requires_grad=True)  # (B, d)
        U, target = negatives.select(index)  # (|U|,), (B,)
        if fast:  # the loss, its gradient to z and the update of w, u in one call
            fast.head_step(z.detach(), w, u, U, target, p.tau, lr, o.momentum, o.weight_decay, p.correction,
                           cosine, ws)
            return
        w_U = (w if U.numel() == N else w.index_select(0, U)).detach().float().requires_grad_()  # (|U|, d)
        pic_loss(z, w_U, target, p.tau, cosine).backward()
        update_rows(w, u, U, w_U.grad, lr, o.momentum, o.weight_decay, p.correction)

    out = _timed("head", cfg, device, step, mem)
    out["head_path"] = "pic_bench.head.head_step" if fast else "plain: loss.pic_loss + update.update_rows"
    return out


class _Unloaded:
    """N training instances whose images are never loaded: the whole step is fed random images."""

    def __init__(self, n: int):
        self.labels = np.broadcast_to(np.int64(0), (n,))  # (n,) without n int64s of memory
        self.files = None

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int):
        raise RuntimeError("the scaling analysis never loads images")


def _measure_step(cfg: Config, N: int, device: torch.device) -> dict[str, Any]:
    from ..data import Batch
    from ..data.sources import Source
    from ..pic.train import Trainer

    channels = 1 if cfg.data.dataset in ("fashion_mnist", "digits") else 3
    source = Source("scaling", _Unloaded(N), _Unloaded(1), channels, (0.5,) * channels, (0.25,) * channels,
                    f"unloaded-{N}")
    cfg = apply(cfg, {"data.loader": "torchvision", "data.workers": 0}, "scaling (no images are loaded)")
    mem = PeakMemory(device)
    mem.start()
    trainer = Trainer(cfg, source)  # allocates w and u (N, d) like a real run
    B, size = cfg.optim.batch_size, cfg.data.image_size
    views = [torch.randn(B, channels, size, size, device=device) for _ in range(cfg.data.views)]  # (B, C, H, W)
    small = [torch.randn(B, channels, cfg.data.small_size, cfg.data.small_size, device=device)
             for _ in range(cfg.data.small_views)]
    position = [max(cfg.pic.K, B)]
    trainer.negatives.refill(trainer.schedule, position[0])

    def step() -> None:
        index = torch.from_numpy(trainer.schedule.positions(position[0], B)).to(device)  # (B,)
        position[0] += B
        trainer.train_step(Batch(views, index, trainer.step, small))  # trainer.step stays 0: lr is irrelevant

    return _timed("step", cfg, device, step, mem)

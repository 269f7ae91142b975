"""Scaling of the classification head: step time and peak memory against N and K, fast head against the plain
path, full softmax against recent-K, with the step's own matmuls timed alongside as the floor.

    python -m pic_bench.bench.scaling                  # the whole sweep on this machine (2-core CPU: ~15 min)
    python -m pic_bench.bench.scaling --quick          # a few points (~4 min)
    python -m pic_bench.bench.scaling --only targets   # just the issue's CPU targets at N = 1,281,167
    python -m pic_bench.bench.scaling --plot-only      # rebuild the plots from the rows
    python -m pic_bench.bench.scaling --machine-id     # the id that names result files on this machine

Writes ``results/bench/scaling-<machine>.jsonl`` (one JSON line per point, appended, each with a run id, the
machine's load average and provenance), ``scaling-<machine>-N.png`` (time and memory against N, drawn by
``pic_bench.report.plots.scaling_plot``, the tables' plotting) and ``scaling-<machine>-K.png`` (time against K and the
ratio to the matmul floor). Sections:

- ``head``: one head step (gather w[U], cosine logits, cross-entropy, gradients to z and the rows, momentum-SGD
  update of w and u) on a random z, for the arms full softmax (U = all N, dense update), recent-K with the
  correction, recent-K with a dense update; paths ``fast`` (``pic_bench.pic.head.head_step``) and ``plain``
  (``head_step_reference``: ``loss.pic_loss`` + autograd + ``update.update_rows``), float32 or bfloat16 storage.
  The floor is the step's three B x K x d matmuls alone. The ring's ``select`` is timed beside it.
- ``train_step``: ``Trainer.train_step`` with the small preset's backbone on random 28 px images (no loading),
  the fast and the plain head alternating on the same trainer.
- ``targets``: at N = 1,281,167, B = 256, d = 128, K = 65536: full and recent-K steps and the floor side by side.

Timing: the variants of one point run in alternation, ``rounds`` times each after a warm-up, and medians are
taken per variant, so a change in load (these cores are shared) hits every variant alike; ratios are between
such side-by-side medians. Peak memory is measured beyond the stored w and u (and the model), per variant, in its
own pass before the timed rounds: CUDA max allocated, or on a CPU the peak RSS reset through /proc/self/clear_refs.
Points that would not fit in memory are written as skipped rows that say why.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..pic import head
from ..pic.negatives import RecentNegatives
from ..report.results import device_name, provenance
from ..report.timing import measure, warn_if_contended

IMAGENET_1K = 1_281_167
IMAGENET_22K = 14_197_122
B_DEFAULT, D_DEFAULT, K_DEFAULT = 256, 128, 65536


# ---------------------------------------------------------------------------------------------------- machine
def machine_id(device: torch.device | str = "cpu") -> str:
    """File-name-safe hardware + version key: 'cpu2-amd-epyc_torch-2.14.1' or 'nvidia-h100-80gb-hbm3_torch-...'."""
    device = torch.device(device)
    name = device_name(device)
    if device.type == "cpu":
        model = name.split(":", 1)[1].rsplit(" x", 1)[0] if ":" in name else "cpu"
        hw = f"cpu{os.cpu_count()}-{model}"
    else:
        hw = name
    hw = re.sub(r"[^a-z0-9]+", "-", hw.lower()).strip("-")
    return f"{hw}_torch-{torch.__version__.split('+')[0]}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def available_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    m = re.search(r"MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text())
    return float(m.group(1)) * 1024 if m else float("inf")


# ------------------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One head step's inputs: z (B, d), w and u (N, d) storage, U (K,) sorted distinct rows, target (B,)."""

    z: torch.Tensor
    w: torch.Tensor
    u: torch.Tensor
    U: torch.Tensor
    target: torch.Tensor
    tau: float = 0.2
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4


def make_case(N: int, K: int, B: int = B_DEFAULT, d: int = D_DEFAULT, storage: torch.dtype = torch.float32,
              device: torch.device | str = "cpu", seed: int = 0) -> Case:
    """K = 0 or K >= N: the full softmax (U = all N rows). Else U is a random sorted K-subset: the sliding
    window's recent instances are scattered over the dataset. w is filled uniformly (normal_ would dominate the
    set-up at N = 10^7 and the values do not change the timing); every page of w and u is touched."""
    device = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.empty(N, d, dtype=storage, device=device).uniform_(-0.01, 0.01)
    u = torch.zeros(N, d, dtype=storage, device=device)
    if K == 0 or K >= N:
        U = torch.arange(N, device=device)
    else:
        U = torch.randperm(N, generator=g)[:K].sort().values.to(device)
    target = torch.randperm(U.numel(), generator=g)[:B].to(device)  # B distinct instances of U
    z = torch.randn(B, d, generator=g).to(device)
    return Case(z, w, u, U, target)


def fast_step(c: Case, correction: bool, ws: head.Workspace) -> Callable[[], None]:
    def run() -> None:
        head.head_step(c.z, c.w, c.u, c.U, c.target, c.tau, c.lr, c.momentum, c.weight_decay, correction, True, ws)
    return run


def plain_step(c: Case, correction: bool) -> Callable[[], None]:
    def run() -> None:
        head.head_step_reference(c.z, c.w, c.u, c.U, c.target, c.tau, c.lr, c.momentum, c.weight_decay, correction)
    return run


def matmul_floor(B: int, K: int, d: int, device: torch.device) -> Callable[[], None]:
    """The step's own three B x K x d matmuls with its layouts and output buffers: S = zt wn^T, then G wn (to z)
    and G^T zt (to the rows). No head step can take less time than these."""
    zt = torch.randn(B, d, device=device)
    wn = torch.randn(K, d, device=device)
    S = torch.randn(B, K, device=device)
    dwn = torch.empty(K, d, device=device)

    def run() -> None:
        torch.mm(zt, wn.t(), out=S)
        torch.mm(S, wn)
        torch.mm(S.t(), zt, out=dwn)
    return run


def interleaved(fns: dict[str, Callable[[], None]], rounds: int, device: torch.device, warmup: int = 1
                ) -> dict[str, list[float]]:
    """Milliseconds per call of each function, ``rounds`` calls each in alternation (device synchronised)."""
    for _ in range(warmup):
        for f in fns.values():
            f()
            sync(device)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            out[k].append((time.perf_counter() - t0) * 1e3)
    return out


def peak_extra_mib(fn: Callable[[], None], device: torch.device, calls: int = 2) -> tuple[float, str]:
    """Peak memory of ``calls`` calls beyond what is live before them (MiB) and how it was measured."""
    from .memory import PeakMemory

    mem = PeakMemory(device)
    mem.start()
    for _ in range(calls):
        fn()
    sync(device)
    return mem.peak_mib(), mem.kind


# -------------------------------------------------------------------------------------------------- memory plan
def bytes_needed(arm: str, path: str, N: int, K: int, B: int, d: int, storage_bytes: int) -> float:
    """Our estimate of what one variant needs: w and u, plus its scratch (generous for the plain path)."""
    K = N if K == 0 or K >= N else K
    state = 2 * N * d * storage_bytes
    if path == "fast":
        extra = 4 * (B * K + 6 * K * d) + (4 * N * d if arm == "full" and storage_bytes != 4 else 0)
    else:
        extra = 4 * (4 * B * K + 6 * K * d) + (4 * N * d if arm == "recent_no_correction" else 0)
    return float(state + extra)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------- points
ARMS = {"full": (0, False), "recent": (None, True), "recent_no_correction": (None, False)}  # (K, correction)


def head_point(arm: str, N: int, K: int, storage: torch.dtype, paths: tuple[str, ...], rounds: int,
               device: torch.device, B: int = B_DEFAULT, d: int = D_DEFAULT) -> list[dict[str, Any]]:
    """One N (and K) of one arm: each path's peak memory, then the paths, the floor and the ring, interleaved."""
    K_arm, correction = ARMS[arm]
    K = K if K_arm is None else K_arm
    sb = 4 if storage == torch.float32 else 2
    base = {"section": "head", "arm": arm, "N": N, "K": K, "B": B, "d": d, "storage": str(storage)[6:],
            "correction": correction, "state_mib": 2 * N * d * sb / 2**20}
    need = max(bytes_needed(arm, p, N, K, B, d, sb) for p in paths)
    have = available_bytes(device)
    if need > 0.7 * have:
        return [{**base, "path": p, "status": "skipped",
                 "why": f"needs about {need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB available"} for p in paths]
    c = make_case(N, K, B, d, storage, device)
    K_eff = c.U.numel()
    fns: dict[str, Callable[[], None]] = {}
    ws = head.Workspace()
    if "fast" in paths:
        fns["fast"] = fast_step(c, correction, ws)
    if "plain" in paths:
        fns["plain"] = plain_step(c, correction)
    peaks = {k: peak_extra_mib(f, device) for k, f in fns.items()}  # fast first: its workspace is counted
    fns["floor"] = matmul_floor(B, K_eff, d, device)
    if K_eff < N:  # the ring's select at this N and K (what the trainer does before the head)
        ring = RecentNegatives(N, K_eff, device)
        ring.push(c.U[torch.randperm(K_eff)])
        fns["ring"] = lambda: ring.select(c.U[:B])
    load0 = os.getloadavg()[0]
    with measure(device) as seg:
        ms = interleaved(fns, rounds, device)
    warn_if_contended(seg, f"scaling N={N} K={K}")
    rows = []
    for p in paths:
        rows.append({**base, "path": p, "status": "ok", "K_eff": K_eff, **_stats(ms[p]),
                     "peak_extra_mib": peaks[p][0], "peak_kind": peaks[p][1],
                     "floor_ms_median": float(np.median(ms["floor"])),
                     "ratio_to_floor": float(np.median(ms[p]) / np.median(ms["floor"])),
                     "ring_ms_median": float(np.median(ms["ring"])) if "ring" in ms else None,
                     "loadavg": [load0, os.getloadavg()[0]], "timing": seg})
    del c, ws, fns
    _free(device)
    return rows


def _stats(ms: list[float]) -> dict[str, Any]:
    return {"ms_median": float(np.median(ms)), "ms_p90": float(np.percentile(ms, 90)), "ms_min": float(min(ms)),
            "rounds": len(ms), "ms_all": [round(x, 3) for x in ms]}


class _NoImages:
    """N instances whose images are never loaded: the whole step is fed random images."""

    files = None

    def __init__(self, n: int):
        self.labels = np.broadcast_to(np.int64(0), (n,))  # (n,) without n int64s of memory

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int):
        raise RuntimeError("the scaling benchmark never loads images")


def train_point(arm: str, N: int, K: int, storage: torch.dtype, rounds: int, device: torch.device,
                paths: tuple[str, ...] = ("fast", "plain")) -> list[dict[str, Any]]:
    """``Trainer.train_step`` with a small backbone (small_cnn width 32 + MLP head 512-128, 28 px grey images,
    B = 256) on N instances; the fast and plain heads alternate on one trainer (same state: the two paths
    compute the same step)."""
    from ..config import apply, build
    from ..data import Batch
    from ..data.sources import Source
    from ..pic.train import Trainer

    K_arm, correction = ARMS[arm]
    K = K if K_arm is None else K_arm
    sb = 4 if storage == torch.float32 else 2
    # The backbone and batch are pinned here (the small preset may change). The paper's window (D = 131072,
    # S = 16384): with D < K the last K visits would hold only about D distinct instances, far fewer than K.
    cfg = apply(build("small"), {"pic.K": K, "pic.correction": correction, "pic.storage": str(storage)[6:],
                                 "pic.D": 131072, "pic.S": 16384, "optim.batch_size": B_DEFAULT,
                                 "model.arch": "small_cnn", "model.width": 32, "model.head": "mlp",
                                 "model.head_hidden": 512, "model.dim": D_DEFAULT, "data.image_size": 28,
                                 "data.views": 1, "data.small_views": 0, "run.device": device.type,
                                 "data.loader": "torchvision", "run.threads": torch.get_num_threads()},
                "scaling benchmark")
    B = cfg.optim.batch_size
    base = {"section": "train_step", "arm": arm, "N": N, "K": K, "B": B, "d": D_DEFAULT,
            "storage": str(storage)[6:], "correction": correction, "state_mib": 2 * N * D_DEFAULT * sb / 2**20,
            "backbone": f"{cfg.model.arch} width {cfg.model.width}, {cfg.data.image_size} px"}
    # Trainer's set-up holds two float32 (N, d) tensors while it draws w; then the step's needs; plus the model.
    need = max(2 * N * D_DEFAULT * 4, max(bytes_needed(arm, p, N, K, B, D_DEFAULT, sb) for p in paths)) + 2**30
    have = available_bytes(device)
    if need > 0.7 * have:
        return [{**base, "path": p, "status": "skipped",
                 "why": f"needs about {need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB available"} for p in paths]
    source = Source("scaling", _NoImages(N), _NoImages(1), 1, (0.5,), (0.25,), f"unloaded-{N}")
    trainer = Trainer(cfg, source)
    views = [torch.randn(B, 1, cfg.data.image_size, cfg.data.image_size, device=device)]
    position = [max(cfg.pic.K, B)]
    trainer.negatives.refill(trainer.schedule, position[0])
    configs = {p: apply(cfg, {"pic.fast_head": p == "fast"}, "scaling benchmark") for p in paths}

    def step(p: str) -> Callable[[], None]:
        def run() -> None:
            trainer.cfg = configs[p]  # the only difference between the variants: which head path runs
            index = torch.from_numpy(np.ascontiguousarray(trainer.schedule.positions(position[0], B))).to(device)
            position[0] += B
            trainer.train_step(Batch(views, index, 0))
        return run

    fns = {p: step(p) for p in paths}
    peaks = {p: peak_extra_mib(f, device) for p, f in fns.items()}
    load0 = os.getloadavg()[0]
    with measure(device) as seg:
        ms = interleaved(fns, rounds, device)
    warn_if_contended(seg, f"scaling N={N} K={K}")
    start = position[0] - max(K, B)  # |U| at the last step: the distinct instances of the last K visits
    K_eff = len(np.unique(trainer.schedule.positions(start, max(K, B)))) if K else N
    rows = [{**base, "path": p, "status": "ok", "K_eff": K_eff, **_stats(ms[p]),
             "peak_extra_mib": peaks[p][0], "peak_kind": peaks[p][1], "loadavg": [load0, os.getloadavg()[0]],
             "timing": seg} for p in paths]
    del trainer, fns
    _free(device)
    return rows


def targets(rounds: int, device: torch.device, N: int = IMAGENET_1K, K: int = K_DEFAULT) -> dict[str, Any]:
    """The issue's CPU targets, side by side: recent-K (correction) at least 20x faster than the full softmax at
    N = 1,281,167, and within 1.5x of its own matmuls. The full and recent cases share w and u."""
    B, d = B_DEFAULT, D_DEFAULT
    full = make_case(N, 0, B, d, torch.float32, device)
    g = torch.Generator().manual_seed(1)
    U = torch.randperm(N, generator=g)[:K].sort().values.to(device)
    recent = Case(full.z, full.w, full.u, U, torch.randperm(K, generator=g)[:B].to(device))
    ws_full, ws_recent = head.Workspace(), head.Workspace()
    fns = {"recent_fast": fast_step(recent, True, ws_recent), "recent_plain": plain_step(recent, True),
           "floor": matmul_floor(B, K, d, device),
           "full_fast": fast_step(full, False, ws_full), "full_plain": plain_step(full, False)}
    load0 = os.getloadavg()[0]
    with measure(device) as seg:
        ms = interleaved(fns, rounds, device)
    warn_if_contended(seg, f"scaling N={N} K={K}")
    med = {k: float(np.median(v)) for k, v in ms.items()}
    row = {"section": "targets", "status": "ok", "N": N, "K": K, "B": B, "d": d, "storage": "float32",
           "ms_median": med, "ms_all": {k: [round(x, 3) for x in v] for k, v in ms.items()}, "rounds": rounds,
           "full_plain_over_recent_fast": med["full_plain"] / med["recent_fast"],
           "full_fast_over_recent_fast": med["full_fast"] / med["recent_fast"],
           "full_plain_over_recent_plain": med["full_plain"] / med["recent_plain"],
           "recent_fast_over_floor": med["recent_fast"] / med["floor"],
           "recent_plain_over_floor": med["recent_plain"] / med["floor"],
           "recent_plain_over_recent_fast": med["recent_plain"] / med["recent_fast"],
           "loadavg": [load0, os.getloadavg()[0]], "timing": seg}
    row["target_20x_met"] = row["full_fast_over_recent_fast"] >= 20 and row["full_plain_over_recent_fast"] >= 20
    row["target_1p5x_floor_met"] = row["recent_fast_over_floor"] <= 1.5
    del full, recent, ws_full, ws_recent, fns
    _free(device)
    return row


# -------------------------------------------------------------------------------------------------------- sweeps
def plan(device: torch.device, quick: bool) -> list[tuple[str, dict[str, Any]]]:
    """(section, keyword arguments) of every point, in order: the grid goes as far as memory might allow; the
    memory check skips (and records) what does not fit."""
    fp32, bf16 = torch.float32, torch.bfloat16
    if device.type == "cuda":
        grid = [10_000, 100_000, 1_000_000, IMAGENET_1K, IMAGENET_22K, 50_000_000, 100_000_000]
        full_cap, dense_cap, Ks = IMAGENET_22K, IMAGENET_22K, [4096, 16384, 65536, 262144, 1048576]
        r_fast, r_full = 50, 10
    else:
        grid = [10_000, 100_000, 1_000_000, IMAGENET_1K, 10_000_000, 20_000_000, 100_000_000]
        full_cap, dense_cap, Ks = IMAGENET_1K, IMAGENET_1K, [4096, 16384, 65536, 262144]
        r_fast, r_full = 7, 3
    if quick:
        grid = [n for n in grid if n in (10_000, 100_000, IMAGENET_1K)]
        Ks, r_fast, r_full = [4096, 65536], max(3, r_fast // 2), max(2, r_full // 2)
    pts: list[tuple[str, dict[str, Any]]] = []
    for N in grid:
        pts.append(("head", dict(arm="recent", N=N, K=K_DEFAULT, storage=fp32, paths=("fast", "plain"),
                                 rounds=r_fast)))
        pts.append(("head", dict(arm="recent", N=N, K=K_DEFAULT, storage=bf16,
                                 paths=("fast", "plain") if N <= IMAGENET_1K else ("fast",), rounds=r_fast)))
        if N <= dense_cap:
            pts.append(("head", dict(arm="recent_no_correction", N=N, K=K_DEFAULT, storage=fp32,
                                     paths=("fast", "plain"), rounds=r_fast if N < 1_000_000 else r_full)))
        if N <= full_cap:
            pts.append(("head", dict(arm="full", N=N, K=0, storage=fp32, paths=("fast", "plain"),
                                     rounds=r_fast if N < 1_000_000 else r_full)))
    for K in Ks:
        pts.append(("head_K", dict(arm="recent", N=IMAGENET_1K, K=K, storage=fp32, paths=("fast", "plain"),
                                   rounds=r_fast)))
    for N in grid:
        if N <= 10_000_000 or device.type == "cuda":
            pts.append(("train_step", dict(arm="recent", N=N, K=K_DEFAULT, storage=fp32, rounds=max(3, r_fast // 2))))
        if N <= full_cap and not quick:
            pts.append(("train_step", dict(arm="full", N=N, K=0, storage=fp32, rounds=r_full,
                                           paths=("fast",) if N >= 1_000_000 else ("fast", "plain"))))
    pts.append(("targets", dict(rounds=r_full + 2)))
    return pts


def run_point(section: str, kw: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    if section in ("head", "head_K"):
        rows = head_point(device=device, **kw)
        for r in rows:
            r["section"] = section
        return rows
    if section == "train_step":
        return train_point(device=device, **kw)
    return [targets(device=device, **kw)]


def describe(row: dict[str, Any]) -> str:
    if row["section"] == "targets":
        m = row["ms_median"]
        return (f"targets N={row['N']:,} K={row['K']}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in m.items())
                + f" | full/recent(fast) {row['full_fast_over_recent_fast']:.1f}x, full(plain)/recent(fast) "
                f"{row['full_plain_over_recent_fast']:.1f}x, recent(fast)/floor {row['recent_fast_over_floor']:.2f}")
    head_ = f"{row['section']:10s} {row['arm']:21s} {row['path']:5s} {row['storage']:8s} N={row['N']:>11,} K={row['K']:>7}"
    if row["status"] != "ok":
        return f"{head_} skipped: {row['why']}"
    floor = f" floor {row['floor_ms_median']:.1f} ms (x{row['ratio_to_floor']:.2f})" if "floor_ms_median" in row else ""
    return (f"{head_} {row['ms_median']:9.1f} ms (p90 {row['ms_p90']:.1f}){floor} "
            f"peak +{row['peak_extra_mib']:.0f} MiB  load {row['loadavg'][0]:.1f}")


# --------------------------------------------------------------------------------------------------------- plots
def _latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest row per point, at the thread count of the newest head row (earlier runs stay in the file)."""
    heads = [r for r in rows if r.get("section") == "head"]
    if not heads:
        return []
    threads = heads[-1].get("threads")
    out: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("threads") == threads:
            out[(r["section"], r.get("arm"), r.get("path"), r.get("storage"), r.get("N"), r.get("K"))] = r
    return list(out.values())


def plot(rows: list[dict[str, Any]], out_dir: Path, machine: str) -> list[Path]:
    """Time and memory against N through ``pic_bench.report.plots.scaling_plot``; time against K with the floor here."""
    from ..report import plots  # matplotlib (Agg)
    import matplotlib.pyplot as plt

    rows = [r for r in _latest(rows) if r.get("status") == "ok"]
    written = []
    label = {"full": "full softmax, dense update", "recent": f"recent K={K_DEFAULT}, correction",
             "recent_no_correction": f"recent K={K_DEFAULT}, dense update"}
    points: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r["section"] not in ("head", "train_step"):
            continue
        if r["storage"] != "float32" or (r["path"] == "plain" and r["arm"] == "recent_no_correction"):
            continue  # in the rows, not drawn: the plot keeps to the float32 arms the issue compares
        arm = f"{label[r['arm']]}, {r['path']}"
        p = points.setdefault((arm, r["N"]), {"arm": arm, "N": r["N"], "state_mib": r["state_mib"],
                                              "head_ms_median": np.nan, "step_ms_median": np.nan,
                                              "head_peak_mib": np.nan, "step_peak_mib": np.nan})
        part = "head" if r["section"] == "head" else "step"
        p[f"{part}_ms_median"] = r["ms_median"]
        p[f"{part}_peak_mib"] = r["state_mib"] + r["peak_extra_mib"]  # the tables' convention: w, u included
    if points:
        path = out_dir / f"scaling-{machine}-N.png"
        plots.scaling_plot(f"PIC head scaling, B={B_DEFAULT}, d={D_DEFAULT} ({machine})", list(points.values()),
                           path)
        written.append(path)
    ks = [r for r in rows if r["section"] == "head_K"]
    if ks:
        fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(11, 4.2))
        for path_, style in (("fast", "-o"), ("plain", "-s")):
            rs = sorted((r for r in ks if r["path"] == path_), key=lambda r: r["K"])
            ax_t.plot([r["K"] for r in rs], [r["ms_median"] for r in rs], style, label=f"{path_} head step")
            ax_r.plot([r["K"] for r in rs], [r["ratio_to_floor"] for r in rs], style, label=f"{path_} / floor")
        rs = sorted((r for r in ks if r["path"] == "fast"), key=lambda r: r["K"])
        ax_t.plot([r["K"] for r in rs], [r["floor_ms_median"] for r in rs], ":", color="0.4",
                  label="floor: the step's three B x K x d matmuls")
        ax_r.axhline(1.5, color="C3", lw=0.8, ls="--", label="target 1.5x")
        for ax, yl in ((ax_t, "step time (ms, median)"), (ax_r, "step time / matmul floor")):
            ax.set_xscale("log")
            ax.set_xlabel("K (recent instances in the softmax)")
            ax.set_ylabel(yl)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        ax_t.set_yscale("log")
        fig.suptitle(f"PIC head vs K at N={IMAGENET_1K:,}, B={B_DEFAULT}, d={D_DEFAULT}, correction ({machine})",
                     fontsize=9)
        path = out_dir / f"scaling-{machine}-K.png"
        fig.tight_layout()
        fig.savefig(path, **plots.SAVE)
        plt.close(fig)
        written.append(path)
    return written


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--out", default="results/bench", help="folder of the rows and plots")
    ap.add_argument("--quick", action="store_true", help="a few points, fewer rounds")
    ap.add_argument("--only", choices=["head", "head_K", "train_step", "targets"], action="append",
                    help="run only these sections (repeatable)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--plot-only", action="store_true", help="rebuild the plots from the rows and exit")
    ap.add_argument("--machine-id", action="store_true", help="print this machine's id and exit")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_id(device)
    if args.machine_id:
        print(machine)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / f"scaling-{machine}.jsonl"
    if not args.plot_only:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # the GPU figures are TF32 matmuls
        run_id = time.strftime("%Y%m%dT%H%M%S")
        prov = provenance(device)
        print(f"machine {machine}; {torch.get_num_threads()} torch threads; rows -> {rows_path}", flush=True)
        for section, kw in plan(device, args.quick):
            if args.only and section not in args.only:
                continue
            for row in run_point(section, kw, device):
                row.update(run_id=run_id, machine=machine, threads=torch.get_num_threads(),
                           quick=args.quick, **prov)
                with open(rows_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row, sort_keys=True, default=str) + "\n")
                print(describe(row), flush=True)
    for p in plot(read_rows(rows_path), out, machine):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

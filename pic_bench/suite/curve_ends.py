"""How a loss curve ends, with the window's position held fixed (issue 19).

    python -m pic_bench.suite.curve_ends results/rows/weight_correction.jsonl --preset scale --cell pic.K=128

The sliding window passes over one fixed permutation of the data (``pic_bench.data.window.SlidingWindow``), so the
windows at step t and at step t + P, P one sweep in steps (``steps / sweeps``: N D / (S B) for the sliding window,
N / B for the others), hold the same images. A curve whose loss depends on which images are in the window then
repeats with period P, and comparing its last line with one a few hundred steps earlier mixes that cycle with how
training ends. For each ``ok`` pic row of the preset (and cell, if given) whose loss curve is found beside the
rows (``<rows>/../../curves/<ablation>/``), this prints:

- **tail**: the loss at the last step minus the loss at the logged step nearest ``(1 - tail) x steps`` (default
  tail 0.056: step 6,250 against 5,900 at the scale preset, the comparison results/README.md quoted first);
- **same window**: the mean, over the tail's logged steps t, of loss(t) - loss(t - P) (the curve read linearly
  between its lines): the end of training against the same window positions one sweep earlier. It reads as the
  end only where training spans several sweeps; with two or fewer it compares the end with early training;
- **last sweep**: the mean loss over the last P steps minus the mean over the P steps before;
- **cycle** and **half**: the correlations at lag P and at lag P / 2 of the curve minus its centred moving mean over
  one sweep (a moving mean over exactly one period removes a cycle of that period, so what is left is the cycle,
  noise and what of the trend bends within a sweep), over steps from P on (the first sweep's steep fall left out).
  A curve that repeats each sweep has cycle well above 0 and half below 0; a slow bend left by the moving mean
  gives both above 0, noise both near 0. NaN where one sweep spans fewer than 10 curve lines.

A curve line's loss is the mean over the steps since the previous line (``suite.tasks.CurveWriter``), so every
figure is one of those means. Nothing is trained; everything comes from the row and its curve.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

from ..config import ConfigError, parse_cli_overrides
from ..data.window import make_schedule, sweeps
from ..report.results import curve_file, scan_rows

FIGURES = ("tail", "same_window", "last_sweep", "cycle", "half")
MIN_LINES = 10  # the fewest curve lines one sweep must span for "cycle" and "half"


def end_figures(steps: np.ndarray, loss: np.ndarray, period: float, tail: float = 0.056) -> dict[str, float]:
    """The four figures of the module docstring for one curve: ``steps`` (increasing, the last is the run's last
    step) and ``loss`` its lines, ``period`` one sweep in steps. A figure the curve is too short for is NaN."""
    st = np.asarray(steps, dtype=np.float64)
    y = np.asarray(loss, dtype=np.float64)
    if st.ndim != 1 or st.shape != y.shape or len(st) < 2 or not (np.diff(st) > 0).all():
        raise ValueError("need increasing steps and one loss per step")
    if not period > 0:
        raise ValueError(f"period must be positive, got {period}")
    last = st[-1]
    start = int(np.argmin(np.abs(st - (1.0 - tail) * last)))
    out = {"tail_from": float(st[start]), "tail": float(y[-1] - y[start])}

    ts = st[start + 1:]
    ok = ts - period >= st[0]
    out["same_window"] = (float(np.mean(y[start + 1:][ok] - np.interp(ts[ok] - period, st, y)))
                          if ok.any() and ok.all() else math.nan)

    if last - 2 * period >= st[0]:
        end = st > last - period
        before = (st > last - 2 * period) & ~end
        out["last_sweep"] = float(y[end].mean() - y[before].mean()) if before.any() else math.nan
    else:
        out["last_sweep"] = math.nan

    # cycle, half: residual from a centred one-period moving mean, on a grid of every step; lag-P and lag-P/2
    # correlations
    out["cycle"] = out["half"] = math.nan
    if period < MIN_LINES * float(np.median(np.diff(st))):
        return out
    grid = np.arange(math.ceil(st[0]), math.floor(last) + 1, dtype=np.float64)
    yy = np.interp(grid, st, y)
    w = max(1, int(round(period)))
    csum = np.concatenate([[0.0], np.cumsum(yy)])
    half = w // 2
    centre = np.arange(half, len(grid) - (w - half) + 1)  # moving mean over [i - half, i - half + w)
    resid = np.full(len(grid), np.nan)
    resid[centre] = yy[centre] - (csum[centre - half + w] - csum[centre - half]) / w
    for name, lag in (("cycle", w), ("half", w // 2)):
        at = st[(st >= period) & (st + lag <= last)]
        a = resid[(at - grid[0]).astype(np.int64)]
        b = resid[(at + lag - grid[0]).astype(np.int64)]
        keep = ~np.isnan(a) & ~np.isnan(b)
        if keep.sum() >= 3 and a[keep].std() > 0 and b[keep].std() > 0:
            out[name] = float(np.corrcoef(a[keep], b[keep])[0, 1])
    return out


def end_figures_reference(steps, loss, period: float, tail: float = 0.056) -> dict[str, float]:
    """``end_figures`` as plain loops over the lines (slow; for the tests)."""
    st, y = [float(s) for s in steps], [float(v) for v in loss]
    last = st[-1]

    def at(t: float) -> float:  # the curve read linearly between its lines
        for i in range(1, len(st)):
            if st[i - 1] <= t <= st[i]:
                return y[i - 1] + (y[i] - y[i - 1]) * (t - st[i - 1]) / (st[i] - st[i - 1])
        raise ValueError(t)

    start = min(range(len(st)), key=lambda i: (abs(st[i] - (1.0 - tail) * last), i))
    out = {"tail_from": st[start], "tail": y[-1] - y[start]}
    diffs = [y[i] - at(st[i] - period) for i in range(start + 1, len(st)) if st[i] - period >= st[0]]
    out["same_window"] = sum(diffs) / len(diffs) if diffs and len(diffs) == len(st) - start - 1 else math.nan
    end = [y[i] for i in range(len(st)) if st[i] > last - period]
    before = [y[i] for i in range(len(st)) if last - 2 * period < st[i] <= last - period]
    out["last_sweep"] = (sum(end) / len(end) - sum(before) / len(before)
                         if before and last - 2 * period >= st[0] else math.nan)
    out["cycle"] = out["half"] = math.nan
    if period < MIN_LINES * statistics.median(b - a for a, b in zip(st, st[1:])):
        return out
    w = max(1, int(round(period)))
    half = w // 2
    lo, hi = math.ceil(st[0]), math.floor(last)

    def resid(t: int) -> float:
        if t - half < lo or t - half + w - 1 > hi:
            return math.nan
        return at(t) - sum(at(s) for s in range(t - half, t - half + w)) / w

    for name, lag in (("cycle", w), ("half", w // 2)):
        pairs = [(resid(int(t)), resid(int(t) + lag)) for t in st if t >= period and t + lag <= last]
        pairs = [(p, q) for p, q in pairs if not (math.isnan(p) or math.isnan(q))]
        if len(pairs) >= 3:
            out[name] = float(np.corrcoef(np.array(pairs).T)[0, 1])
    return out


def sweep_steps(row: dict) -> float:
    """One sweep of the data by the row's scheduler, in steps (``data.window.sweeps``)."""
    cfg, d = row["config"], row["derived"]
    p, B = cfg["pic"], cfg["optim"]["batch_size"]
    N, steps = d["N"], d["steps"]
    schedule = make_schedule(p["scheduler"], N, min(p["D"], N), p["S"], cfg["run"]["seed"], p["official_shuffle"])
    return steps / sweeps(schedule, steps * B)


def runs(rows: Path, preset: str, cell: dict) -> list[dict]:
    """The ``ok`` pic rows of ``rows`` at ``preset`` whose cell has every key = value of ``cell``, seed order."""
    found = [r for _, r, problem in scan_rows(rows)
             if problem is None and r["kind"] == "pic" and r["status"] == "ok" and r["preset"] == preset
             and all(k in r["cell"] and r["cell"][k] == v for k, v in cell.items())]
    if not found:
        raise SystemExit(f"{rows}: no ok pic row at preset {preset} with cell {cell}")
    return sorted(found, key=lambda r: (json.dumps(r["cell"], sort_keys=True), r["seed"]))


def curve_of(rows: Path, row: dict) -> Path | None:
    """The row's loss curve (its run's, for a row shared from another ablation), under the rows' results folder."""
    return curve_file(rows.parent.parent, row)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pic_bench.suite.curve_ends", description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", type=Path, help="an ablation's rows file, e.g. results/rows/weight_correction.jsonl")
    ap.add_argument("--preset", default="scale")
    ap.add_argument("--cell", nargs="+", default=[], help="keep rows whose cell has these key=value, e.g. pic.K=128")
    ap.add_argument("--tail", type=float, default=0.056, help="the tail as a fraction of training (default 0.056)")
    a = ap.parse_args(argv)
    if not 0 < a.tail < 1:
        raise SystemExit(f"--tail must be in (0, 1), got {a.tail}")
    if not a.rows.is_file():
        raise SystemExit(f"{a.rows}: no such rows file")
    try:
        cell = parse_cli_overrides(a.cell)
    except ConfigError as e:
        raise SystemExit(f"--cell: {e}") from None
    print(f"# {a.rows} preset {a.preset}: loss-curve ends (python -m pic_bench.suite.curve_ends)")
    print("cell | seed | steps | sweep (steps) | final lr ratio | tail from | tail | same window | last sweep | "
          "cycle | half | curve")
    for row in runs(a.rows, a.preset, cell):
        path, period = curve_of(a.rows, row), sweep_steps(row)
        head = (f"{json.dumps(row['cell'], sort_keys=True)} | {row['seed']} | {row['derived']['steps']} | "
                f"{period:.1f} | {row['config']['optim'].get('final_lr_ratio', 0.0)}")
        if path is None:
            print(f"{head} | n/a | n/a | n/a | n/a | n/a | n/a | no curve found")
            continue
        lines = [json.loads(s) for s in path.read_text().splitlines() if s.strip()]
        f = end_figures(np.array([c["step"] for c in lines]), np.array([c["loss"] for c in lines]),
                        period, a.tail)
        vals = " | ".join("n/a" if math.isnan(f[k]) else f"{f[k]:+.3f}" for k in FIGURES)
        print(f"{head} | {f['tail_from']:.0f} | {vals} | {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

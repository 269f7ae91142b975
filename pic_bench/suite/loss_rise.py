"""Why a loss curve rises at its end: the learning rate a row was pushed away at, against the one it is pulled back at.

    python -m pic_bench.suite.loss_rise results/rows/negatives_k.jsonl --preset scale --cell pic.K=0 --seed 0

With all N rows of w as negatives, the row of every image that is absent from the stream is pushed away from the
batch's features on every step (by its softmax probability times that step's learning rate); only its image's
visits pull it back. For each logged step t of a run's loss curve this takes the step's batch, finds for each sample
the latest *return* of its image (a visit more than 2 D samples after the previous one: it left the window and came
back) and reports, median over the batch,

    push / pull = (sum of the learning rate over the absence before that return) / (sum of it from the return to t),

beside the curve's loss and learning rate. Everything comes from the row (its config, seed and derived steps) and
the scheduler; nothing is trained. It is a reading, not a proof: a ratio that grows while the loss rises is
consistent with "images that come back late cannot pull their rows back" and says nothing more. The test of that
reading is a run where absent rows do not move (recent K with the correction on), whose curve then must not rise.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..config import ConfigError, parse_cli_overrides
from ..data.window import make_schedule
from ..pic.train import lr_schedule
from ..report.results import curve_file, scan_rows


def latest_returns(order: np.ndarray, long_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """For every position p of ``order`` (instance ids): ``gap[p]``, the samples since that instance's previous visit
    (-1 at a first visit), and ``ret[p]``, the latest position <= p at which the same instance came back after more
    than ``long_gap`` samples away (-1 if it has not yet). Vectorised; ``latest_returns_reference`` is the loop."""
    n = len(order)
    pos = np.arange(n)
    srt = np.argsort(order, kind="stable")  # positions grouped by instance, in stream order within a group
    same = np.r_[False, order[srt][1:] == order[srt][:-1]]  # a position whose instance was seen before
    gap = np.full(n, -1, dtype=np.int64)
    gap[srt[same]] = srt[same] - srt[:-1][same[1:]]
    is_ret = gap > long_gap
    group = np.cumsum(~same)  # 1, 2, ...: the instance group of each sorted position
    big = n + 1
    key = np.where(is_ret[srt], srt, -1) + group * big  # a running max within a group never crosses groups
    run = np.maximum.accumulate(key) - group * big
    ret = np.empty(n, dtype=np.int64)
    ret[srt] = np.where(run >= 0, run, -1)
    assert (ret <= pos).all()
    return gap, ret


def latest_returns_reference(order: np.ndarray, long_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """``latest_returns`` as a plain loop over the stream."""
    prev, latest = {}, {}
    gap = np.full(len(order), -1, dtype=np.int64)
    ret = np.full(len(order), -1, dtype=np.int64)
    for p, i in enumerate(order.tolist()):
        if i in prev:
            gap[p] = p - prev[i]
            if gap[p] > long_gap:
                latest[i] = p
        prev[i] = p
        ret[p] = latest.get(i, -1)
    return gap, ret


def push_pull(order: np.ndarray, batch: int, lr: np.ndarray, long_gap: int, at_steps) -> list[dict]:
    """The median push / pull ratio over the batch of each step in ``at_steps`` (1-based, as the curve counts:
    step t trains on positions (t - 1) B .. t B - 1 at learning rate lr[t - 1]); samples whose image has not
    returned yet are left out, and ``returned`` says what share of the batch is counted."""
    gap, ret = latest_returns(order, long_gap)
    csum = np.concatenate([[0.0], np.cumsum(lr)])  # csum[t] = sum of lr over steps 1..t
    out = []
    for t in at_steps:
        r = ret[(t - 1) * batch:t * batch]
        r = r[r >= 0]
        if not len(r):
            out.append({"step": t, "returned": 0.0, "push_pull": None, "absence_steps": None})
            continue
        back = r // batch + 1  # the step of the return
        left = (r - gap[r]) // batch + 1  # the step of the visit before the absence
        push = csum[back - 1] - csum[left]  # lr summed over the steps strictly between the two visits
        pull = csum[t] - csum[back - 1]  # from the return's step to t, both included
        out.append({"step": t, "returned": len(r) / batch, "push_pull": float(np.median(push / pull)),
                    "absence_steps": float(np.mean(back - left))})
    return out


def find_row(rows: Path, preset: str, cell: dict, seed: int) -> dict:
    """The one ``ok`` pic row of ``rows`` with this preset, cell and seed (valid rows only, as the tables read
    them: ``report.results.scan_rows``); an error naming what is there."""
    found = [r for _, r, problem in scan_rows(rows)
             if problem is None and r["kind"] == "pic" and r["status"] == "ok" and r["preset"] == preset]
    match = [r for r in found if r["seed"] == seed and r["cell"] == cell]
    if len(match) != 1:
        cells = sorted({json.dumps(r["cell"], sort_keys=True) for r in found})
        raise SystemExit(f"{rows}: {len(match)} ok pic rows with preset {preset}, cell {cell}, seed {seed}; "
                         f"its cells at that preset: {', '.join(cells) or 'none'}")
    return match[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pic_bench.suite.loss_rise", description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", type=Path, help="an ablation's rows file, e.g. results/rows/negatives_k.jsonl")
    ap.add_argument("--preset", default="scale")
    ap.add_argument("--cell", nargs="+", default=[], help="the row's cell as key=value, e.g. pic.K=0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--last", type=int, default=700, help="steps before the end to report (every 50th)")
    a = ap.parse_args(argv)
    try:
        cell = parse_cli_overrides(a.cell)
    except ConfigError as e:
        raise SystemExit(f"--cell: {e}") from None
    row = find_row(a.rows, a.preset, cell, a.seed)
    cfg, d = row["config"], row["derived"]
    p, B = cfg["pic"], cfg["optim"]["batch_size"]
    N, steps = d["N"], d["steps"]
    D = min(p["D"], N)
    schedule = make_schedule(p["scheduler"], N, D, p["S"], cfg["run"]["seed"], p["official_shuffle"])
    order = schedule.positions(0, steps * B)
    lr = lr_schedule(d["lr"], steps, d["warmup_steps"], cfg["optim"].get("final_lr_ratio", 0.0))
    curve = curve_file(a.rows.parent.parent, row)
    curves = [curve] if curve else []
    loss = {}
    if curves:
        loss = {c["step"]: c["loss"] for c in map(json.loads, curves[0].read_text().splitlines()) if c}
    at = [t for t in range(max(50, steps - a.last), steps + 1) if t % 50 == 0 or t == steps]
    print(f"# {a.rows} preset {a.preset} cell {row['cell']} seed {a.seed}: N = {N}, D = {D}, S = {p['S']}, "
          f"B = {B}, {steps} steps, K = {p['K']} ({'all N' if p['K'] == 0 else p['recent']}); curve: "
          f"{curves[0] if curves else 'none found'}")
    print("step | loss | lr | batch share returned | median push / pull | mean absence (steps)")
    for r in push_pull(order, B, lr, 2 * D, at):
        pp = "n/a" if r["push_pull"] is None else f"{r['push_pull']:.1f}"
        ab = "n/a" if r["absence_steps"] is None else f"{r['absence_steps']:.0f}"
        ls = f"{loss[r['step']]:.2f}" if r["step"] in loss else "n/a"
        print(f"{r['step']} | {ls} | {lr[r['step'] - 1]:.5f} | {r['returned']:.2f} | {pp} | {ab}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

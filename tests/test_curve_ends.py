"""pic_bench.suite.curve_ends: how a loss curve ends with the window's position held fixed (issue 19).

    python -m pytest tests/test_curve_ends.py -q
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from pic_bench.suite.curve_ends import end_figures, end_figures_reference, main, sweep_steps

REPO = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"<!-- from:(.*?)-->(.*?)<!-- /from -->", re.S)  # as tests/test_prose_numbers.py reads them


def curve(period=1250, every=50, last=6250, slope=-1e-5, amp=0.1, phase=0.0, noise=0.0, seed=0):
    st = np.arange(every, last + 1, every)
    rng = np.random.default_rng(seed)
    y = 3.0 + slope * st + amp * np.sin(2 * np.pi * st / period + phase) + noise * rng.standard_normal(len(st))
    return st, y


def test_a_falling_curve_with_a_sweep_cycle_rises_in_its_tail_but_falls_against_the_same_window():
    # the cycle is at its low point 350 steps before the end and rising to the end, the trend falls
    st, y = curve(phase=np.pi / 2 - 2 * np.pi * 5900 / 1250 - np.pi)
    f = end_figures(st, y, 1250.0)
    assert f["tail_from"] == 5900
    assert f["tail"] > 0.1  # the naive comparison calls it a rise
    assert f["same_window"] == pytest.approx(-1e-5 * 1250, abs=1e-9)  # exactly the trend over one sweep
    assert f["last_sweep"] == pytest.approx(-1e-5 * 1250, abs=1e-9)  # a whole period of the cycle sums to 0
    assert f["cycle"] > 0.99 and f["half"] < -0.99


def test_a_curve_that_rises_at_its_end_is_seen_by_every_figure_and_has_no_cycle():
    st, y = curve(amp=0.0, noise=0.01, seed=3)
    y = y + np.clip(st - 5950, 0, None) * 1e-3  # +0.3 over the last 300 steps
    f = end_figures(st, y, 1250.0)
    assert f["tail"] > 0.25 and f["same_window"] > 0.1 and f["last_sweep"] > 0.03
    assert abs(f["cycle"]) < 0.5 and abs(f["half"]) < 0.5


def test_noise_alone_has_no_cycle():
    st, y = curve(amp=0.0, noise=0.05, seed=1)
    f = end_figures(st, y, 1250.0)
    assert abs(f["cycle"]) < 0.4 and abs(f["half"]) < 0.4


def test_a_slow_bend_is_not_a_cycle():
    st = np.arange(50, 6251, 50)
    y = 3.0 + 1e-7 * (st - 3000.0) ** 2 + 0.01 * np.random.default_rng(2).standard_normal(len(st))
    f = end_figures(st, y, 1250.0)  # a parabola: the moving mean leaves a constant, then noise
    assert not math.isnan(f["cycle"]) and not (f["cycle"] > 0.3 and f["half"] < -0.3)


def test_a_sweep_spanning_few_curve_lines_gets_no_cycle():
    st, y = curve(period=156.25)
    f = end_figures(st, y, 156.25)  # about 3 lines a sweep: the epoch order's, logged every 50 steps
    assert math.isnan(f["cycle"]) and math.isnan(f["half"]) and not math.isnan(f["same_window"])


@pytest.mark.parametrize("seed", range(6))
def test_end_figures_equal_the_plain_loops_on_random_curves(seed):
    rng = np.random.default_rng(seed)
    every = int(rng.integers(5, 15))
    st = np.arange(every, every * int(rng.integers(60, 120)) + 1, every)
    period = float(rng.uniform(8, 0.4 * st[-1]))
    y = rng.normal(2.0, 0.5, len(st)) + np.sin(2 * np.pi * st / period)
    tail = float(rng.uniform(0.02, 0.3))
    fast, ref = end_figures(st, y, period, tail), end_figures_reference(st, y, period, tail)
    assert fast.keys() == ref.keys()
    for k in fast:
        assert (math.isnan(fast[k]) and math.isnan(ref[k])) or fast[k] == pytest.approx(ref[k], abs=1e-9), k


def test_a_curve_shorter_than_two_sweeps_gives_nan_not_a_number_from_nowhere():
    st, y = curve(last=2000)
    f = end_figures(st, y, 1250.0)
    assert math.isnan(f["last_sweep"]) and not math.isnan(f["same_window"])
    f = end_figures(st, y, 5000.0)
    assert math.isnan(f["same_window"]) and math.isnan(f["last_sweep"]) and math.isnan(f["cycle"])


def test_bad_curves_are_refused():
    with pytest.raises(ValueError, match="increasing"):
        end_figures(np.array([50, 50, 100]), np.array([1.0, 2.0, 3.0]), 10.0)
    with pytest.raises(ValueError, match="period"):
        end_figures(np.array([50, 100]), np.array([1.0, 2.0]), 0.0)


def test_main_reads_the_committed_scale_rows_and_their_curves(capsys):
    rows = REPO / "results" / "rows" / "weight_correction.jsonl"
    assert main([str(rows), "--preset", "scale", "--cell", "pic.K=128", "pic.correction=true"]) == 0
    lines = [s for s in capsys.readouterr().out.splitlines() if s.startswith("{")]
    assert len(lines) == 3  # three seeds
    for line in lines:
        cells = [c.strip() for c in line.split("|")]
        assert cells[3] == "1250.0"  # 40 epochs = 5 sweeps of 6,250 steps
        path = REPO / cells[-1] if not Path(cells[-1]).is_absolute() else Path(cells[-1])
        loss = {c["step"]: c["loss"] for c in map(json.loads, path.read_text().splitlines())}
        assert cells[6] == f"{loss[6250] - loss[5900]:+.3f}"  # the tail is the curve's own two lines


def test_a_missing_rows_file_or_cell_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no such rows file"):
        main([str(tmp_path / "nothing.jsonl")])
    with pytest.raises(SystemExit, match="pic.K.: 7"):
        main([str(REPO / "results" / "rows" / "negatives_k.jsonl"), "--cell", "pic.K=7"])


def test_sweep_steps_follow_the_scheduler():
    row = {"config": {"pic": {"scheduler": "sliding", "D": 1024, "S": 128, "official_shuffle": True},
                      "optim": {"batch_size": 64}, "run": {"seed": 0}},
           "derived": {"N": 10000, "steps": 6250}}
    assert sweep_steps(row) == pytest.approx(1250.0)
    row["config"]["pic"]["scheduler"] = "epoch"
    assert sweep_steps(row) == pytest.approx(10000 / 64)


def quoted_blocks():
    """results/README.md's from-blocks whose source is this module: (source, text)."""
    text = (REPO / "results" / "README.md").read_text()
    return [(src.strip(), body) for src, body in BLOCK.findall(text) if "pic_bench.suite.curve_ends" in src]


def test_results_readme_quotes_curve_end_figures():
    assert quoted_blocks(), "results/README.md has no block sourced from python -m pic_bench.suite.curve_ends"


@pytest.mark.parametrize("source,body", quoted_blocks(), ids=lambda v: v[:60] if isinstance(v, str) else "")
def test_every_figure_the_prose_quotes_from_curve_ends_is_one_it_prints(source, body, capsys):
    """Each two-decimal number in a block sourced from the module is a figure (rounded, sign dropped) of a run in
    the rows files the source names: prose about how the curves end cannot drift from the curves."""
    rows = re.findall(r"(results/\S*rows/\w+\.jsonl)", source)
    assert rows, f"the block's source names no rows file: {source}"
    printed = set()
    for r in rows:
        assert (REPO / r).is_file(), r
        main([str(REPO / r), "--preset", "scale"])
        for line in capsys.readouterr().out.splitlines():
            if line.startswith("{"):
                cells = [c.strip() for c in line.split("|")]
                printed |= {f"{abs(float(c)):.2f}" for c in cells[6:11] if c != "n/a"}
    quoted = re.findall(r"(?<![\w.])[+\-\u2212]?(\d+\.\d\d)(?!\d)", body)
    assert quoted, f"no number in the block sourced from {source}"
    missing = sorted(set(q for q in quoted if q not in printed))
    assert not missing, f"{missing} quoted from {source} but no run there has such a figure"

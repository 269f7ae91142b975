"""pic_bench.suite.loss_rise: the push / pull reading of the all-N loss rise (issue 19), from rows and schedules.

    python -m pytest tests/test_loss_rise.py -q
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pic_bench.data.window import make_schedule
from pic_bench.suite.loss_rise import latest_returns, latest_returns_reference, main, push_pull

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("trial", range(5))
def test_latest_returns_equal_the_loop_on_fresh_random_streams(trial):
    rng = np.random.default_rng()
    n, N = int(rng.integers(1, 3000)), int(rng.integers(1, 300))
    order = rng.integers(0, N, n)
    long_gap = int(rng.integers(0, 2 * N))
    got, ref = latest_returns(order, long_gap), latest_returns_reference(order, long_gap)
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])


def test_latest_returns_equal_the_loop_on_a_sliding_window_stream_with_returns():
    order = make_schedule("sliding", 500, 64, 8, 3).positions(0, 500 * 64 // 8 * 3)  # 3 sweeps
    gap, ret = latest_returns(order, 128)
    ref = latest_returns_reference(order, 128)
    assert np.array_equal(gap, ref[0]) and np.array_equal(ret, ref[1]) and (ret >= 0).mean() > 0.5


def test_push_pull_by_hand():
    # B = 2; instance 0 at positions 0 and 6 (a return after 6 > 4 samples), step 4 holds positions 6, 7
    order = np.array([0, 1, 2, 3, 1, 2, 0, 1])
    lr = np.array([1.0, 2.0, 3.0, 4.0])
    (r,) = push_pull(order, 2, lr, 4, [4])
    # instance 0 left at step 1, came back at step 4: pushed over steps 2, 3 (2 + 3), pulled at step 4 (4)
    # instance 1: positions 1, 4, 7, gaps 3 and 3, never a return: left out
    assert r["returned"] == 0.5 and r["push_pull"] == pytest.approx(5 / 4) and r["absence_steps"] == 3
    (none,) = push_pull(order, 2, lr, 4, [1])
    assert none["returned"] == 0.0 and none["push_pull"] is None


def test_the_command_reads_a_row_and_its_curve_and_names_what_is_missing(tmp_path, capsys):
    rows, curves = tmp_path / "rows", tmp_path / "curves" / "abl"
    rows.mkdir()
    curves.mkdir(parents=True)
    # a valid committed row (the tool reads rows as the tables do), made small: N = 200, D = 32, 100 steps
    row = json.loads(next(line for line in (REPO / "results" / "rows" / "negatives_k.jsonl").read_text().splitlines()
                          if '"preset": "scale"' in line))
    row.update({"ablation": "abl", "seed": 0, "cell": {"pic.K": 0}, "config_hash": "abc"})
    row["derived"].update({"N": 200, "steps": 100, "lr": 0.1, "warmup_steps": 5})
    row["config"]["pic"].update({"D": 32, "S": 8, "K": 0, "scheduler": "sliding"})
    row["config"]["optim"]["batch_size"] = 16
    row["config"]["run"]["seed"] = 0
    (rows / "abl.jsonl").write_text(json.dumps(row) + "\n")
    (curves / "pic-scale-abc-dig-s0.jsonl").write_text(json.dumps({"step": 100, "loss": 4.25, "lr": 0.0}) + "\n")
    assert main([str(rows / "abl.jsonl"), "--cell", "pic.K=0", "--last", "60"]) == 0
    out = capsys.readouterr().out
    assert "pic-scale-abc-dig-s0.jsonl" in out and "\n100 | 4.25 | " in out and "\n50 | n/a |" in out
    with pytest.raises(SystemExit, match=r"0 ok pic rows with preset scale, cell \{'pic.K': 512\}.*\{\"pic.K\": 0\}"):
        main([str(rows / "abl.jsonl"), "--cell", "pic.K=512"])

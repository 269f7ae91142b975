"""The regime figures of a training stream (issue 19): the fast computation equals a plain per-sample loop for every
scheduler, the issue's table is reproduced at the small and paper presets, the dry run prints them and every
training row records them.

    nice -n 10 python3 -m pytest tests/test_regime.py -q
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from pic_bench.config import build
from pic_bench.data.window import (REGIME_KEYS, EpochOrder, OfficialWindow, SlidingWindow, regime, regime_reference,
                                   returns_after_leaving)
from pic_bench.pic.train import derive, derive_regime
from pic_bench.suite import plan as plan_mod
from pic_bench.suite.tasks import Task


def schedules(rng):
    N = int(rng.integers(40, 400))
    D = int(rng.integers(8, N + 60))  # D > N is clipped to N by the schedulers
    S = int(rng.integers(1, min(D, N) + 1))
    seed = int(rng.integers(0, 2**31))
    return N, D, S, [SlidingWindow(N, D, S, seed), EpochOrder(N, seed), OfficialWindow(N, D, S, seed, True),
                     OfficialWindow(N, D, S, seed, False)]


def test_regime_equals_a_plain_loop_for_every_scheduler_on_fresh_random_streams():
    rng = np.random.default_rng()
    for _ in range(12):
        N, D, S, scheds = schedules(rng)
        for s in scheds:
            samples = int(rng.integers(1, 12 * N))
            got = regime(s, samples)
            assert set(got) == set(REGIME_KEYS)
            fresh = (SlidingWindow(N, D, S, s.seed) if s.kind == "sliding" else EpochOrder(N, s.seed)
                     if s.kind == "epoch" else OfficialWindow(N, D, S, s.seed, s.shuffle))
            ref = regime_reference(fresh.positions(0, samples), N, s.D if s.kind != "epoch" else N)
            for k, v in ref.items():
                assert (math.isnan(v) and math.isnan(got[k])) or got[k] == pytest.approx(v, rel=1e-12, abs=1e-12), \
                    (s.kind, N, D, S, samples, k)


def test_sweeps_are_epochs_times_S_over_D_for_the_sliding_window_and_epochs_otherwise():
    assert regime(SlidingWindow(1000, 100, 25, 0), 4000)["sweeps"] == pytest.approx(4 * 25 / 100)
    assert regime(EpochOrder(1000, 0), 4000)["sweeps"] == pytest.approx(4.0)
    assert regime(OfficialWindow(1000, 100, 25, 0), 4000)["sweeps"] == pytest.approx(4.0)


def test_the_issues_table_small_and_paper():
    small = derive_regime(build("small"), 10000)  # 5 epochs: 0.63 sweeps, 28.5% never trained, 14.3% first visits
    assert small["sweeps"] == pytest.approx(0.6256, abs=1e-3)
    assert small["never_visited"] == pytest.approx(0.285, abs=0.005)
    assert small["first_visit_share"] == pytest.approx(0.143, abs=0.001)
    assert small["first_visits_end"] > 0.95  # new images arrive to the last step
    paper = regime(SlidingWindow(1281167, 131072, 16384, 0), 200 * 1281167)  # ImageNet, computed in about a second
    assert paper["sweeps"] == 25 and paper["never_visited"] == 0
    assert paper["first_visit_share"] == pytest.approx(0.005)
    assert paper["first_visits_end"] < 0.04


def test_the_scale_preset_sweeps_the_data_at_least_five_times():
    cfg = build("scale")
    r = derive_regime(cfg, cfg.data.num_instances)
    assert r["sweeps"] >= 5 and r["never_visited"] == 0 and r["first_visits_end"] < 0.2


def test_returns_after_leaving_counts_exactly_like_a_plain_loop():
    rng = np.random.default_rng()
    for _ in range(6):
        N, D, S, scheds = schedules(rng)
        s = scheds[int(rng.integers(0, 4))]
        order = s.positions(0, int(rng.integers(1, 6 * N)))
        K = int(rng.integers(1, N))
        plain, prev = 0, {}
        for p, j in enumerate(order.tolist()):
            if j in prev and len(set(order[prev[j] + 1:p].tolist()) - {j}) >= K:
                plain += 1
            prev[j] = p
        assert returns_after_leaving(order, N, K) == plain


def test_the_dry_run_line_states_the_regime(tmp_path):
    cfg = build("smoke", {"run.device": "cpu"})
    line = plan_mod.describe(Task("planned", "smoke", {}, cfg, "pic", str(tmp_path)), tmp_path)
    r = derive_regime(cfg, 256)
    assert f"regime: {r['sweeps']:.2f} sweeps, never visited {100 * r['never_visited']:.1f}%" in line
    base = plan_mod.describe(Task("planned", "smoke", {}, cfg, "baseline_random", str(tmp_path)), tmp_path)
    assert "regime" not in base
    # an official sampler too long to stream in a dry run says where its figures are
    long = build("smoke", {"pic.scheduler": "official", "optim.epochs": 200, "run.device": "cpu"})
    assert plan_mod.plan_regime(long, 256) is None
    assert plan_mod.fmt_regime(None).startswith("regime: in the row")


def test_a_training_row_records_the_regime_of_its_stream(tmp_path):
    from pic_bench.report.results import read_rows
    from pic_bench.suite.run import main

    assert main(["ablations/negatives_k.yaml", "smoke", "--seeds", "0", "pic.K=128", "--results", str(tmp_path),
                 "--checkpoints", str(tmp_path / "ck"), "-q", "optim.max_steps=3", "eval.baselines=false"]) == 0
    row = next(r for r in read_rows(tmp_path, "negatives_k")[0] if r["kind"] == "pic")
    cfg = build("smoke", {"pic.K": 128, "optim.max_steps": 3})
    assert row["derived"]["regime"] == pytest.approx(derive_regime(cfg, row["derived"]["N"]), nan_ok=True)
    ref = regime_reference(SlidingWindow(256, 128, 32, 0).positions(0, 3 * 32), 256, 128)
    for k, v in ref.items():
        assert (math.isnan(v) and math.isnan(row["derived"]["regime"][k])) or row["derived"]["regime"][k] == \
            pytest.approx(v)


def test_window_returns_equal_a_plain_loop_and_the_scale_preset_has_them_where_small_has_none():
    from pic_bench.data.window import window_returns

    rng = np.random.default_rng()
    for _ in range(6):
        N, D, S, scheds = schedules(rng)
        for s in scheds:
            samples = int(rng.integers(1, 10 * N))
            order = s.positions(0, samples)
            prev, plain = {}, 0
            for p, j in enumerate(order.tolist()):
                if j in prev and p // s.L - prev[j] // s.L > 1:
                    plain += 1
                prev[j] = p
            assert window_returns(s, samples) == plain
    small, scale = build("small"), build("scale")
    for cfg, returns in ((small, False), (scale, True)):
        steps = derive(cfg, 10000)["steps"]
        got = window_returns(SlidingWindow(10000, cfg.pic.D, cfg.pic.S, 0), steps * cfg.optim.batch_size)
        assert (got > 10000) if returns else got == 0  # scale: every image leaves and returns, about 4 times

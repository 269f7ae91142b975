"""Recent negatives against plain references: pic.recent = instances (the K most recently visited distinct
instances) and positions (the distinct instances among the last K stream positions); K < B refused; |U| meters."""
import numpy as np
import pytest
import torch

from pic_bench.config import ConfigError, build, config_hash, with_added_keys
from pic_bench.pic.negatives import RecentNegatives
from pic_bench.pic.train import Preempted, Trainer
from pic_bench.data.window import SlidingWindow

CPU = torch.device("cpu")


class Stream:
    """A Schedule stand-in over a fixed array of instance ids (refill only needs ``positions``)."""

    def __init__(self, ids: np.ndarray):
        self.ids = np.asarray(ids, dtype=np.int64)

    def positions(self, start: int, count: int) -> np.ndarray:
        return self.ids[start:start + count]


def random_stream(rng: np.random.Generator, N: int, length: int) -> np.ndarray:
    """Overlapping windows of a small pool (repeats across windows) with bursts of one id (repeats in a batch)."""
    out, pos = [], 0
    while len(out) < length:
        window = rng.choice(N, size=min(N, int(rng.integers(3, 3 + N))), replace=False)
        if rng.random() < 0.3:
            window = np.concatenate([window, np.full(int(rng.integers(1, 5)), window[0])])
        out.extend(rng.permutation(window).tolist())
        pos += 1
    return np.asarray(out[:length], dtype=np.int64)


def recent_instances_reference(stream: np.ndarray, end: int, K: int) -> list[int]:
    """The K most recently visited distinct ids among positions [0, end), newest first (a plain loop)."""
    out: list[int] = []
    for j in stream[:end][::-1].tolist():
        if j not in out:
            out.append(j)
        if len(out) == K:
            break
    return out


def recent_positions_reference(stream: np.ndarray, end: int, K: int) -> set[int]:
    return set(stream[max(0, end - K):end].tolist())


def fresh_rng() -> tuple[int, np.random.Generator]:
    seed = int(np.random.SeedSequence().entropy % 2**31)
    return seed, np.random.default_rng(seed)


@pytest.mark.parametrize("N,K,B", [(30, 8, 8), (30, 12, 4), (60, 20, 6), (25, 40, 5), (200, 64, 16)])
def test_instances_are_exactly_the_K_most_recent_distinct_ones(N, K, B):
    seed, rng = fresh_rng()
    stream = random_stream(rng, N, 40 * B)
    neg = RecentNegatives(N, K, CPU, "instances")
    for step in range(40):
        end = (step + 1) * B
        index = torch.from_numpy(stream[step * B:end])
        U, target = neg.select(index)
        expect = recent_instances_reference(stream, end, K)
        distinct_seen = len(set(stream[:end].tolist()))
        assert U.numel() == min(K, distinct_seen), (seed, step)
        assert set(U.tolist()) == set(expect), (seed, step)
        assert torch.equal(U, U.sort().values) and U.unique().numel() == U.numel(), (seed, step)
        assert torch.equal(U[target], index), (seed, step)  # every positive inside U, at its target
        assert neg.ring.tolist()[:len(expect)] == expect, (seed, step)  # the ring is newest first


@pytest.mark.parametrize("N,K,B", [(30, 8, 4), (60, 16, 8), (200, 64, 16)])
def test_positions_are_the_distinct_ids_of_the_last_K_positions(N, K, B):
    seed, rng = fresh_rng()
    stream = random_stream(rng, N, 30 * B)
    neg = RecentNegatives(N, K, CPU, "positions")
    for step in range(30):
        end = (step + 1) * B
        index = torch.from_numpy(stream[step * B:end])
        U, target = neg.select(index)
        assert set(U.tolist()) == recent_positions_reference(stream, end, K), (seed, step)
        assert torch.equal(U[target], index), (seed, step)


@pytest.mark.parametrize("recent", ["instances", "positions"])
@pytest.mark.parametrize("stop", [0, 1, 3, 17])
def test_refill_equals_an_uninterrupted_ring(recent, stop):
    seed, rng = fresh_rng()
    N, K, B = 50, 16, 4
    stream = random_stream(rng, N, 30 * B)
    a = RecentNegatives(N, K, CPU, recent)
    for step in range(stop):
        a.select(torch.from_numpy(stream[step * B:(step + 1) * B]))
    b = RecentNegatives(N, K, CPU, recent)
    b.refill(Stream(stream), stop * B)
    assert torch.equal(a.ring, b.ring) and a.count == b.count, seed
    for step in range(stop, stop + 8):
        idx = torch.from_numpy(stream[step * B:(step + 1) * B])
        (Ua, ta), (Ub, tb) = a.select(idx), b.select(idx)
        assert torch.equal(Ua, Ub) and torch.equal(ta, tb), (seed, step)


def test_instances_refill_on_the_sliding_window_after_many_windows():
    N, D, S, K, B = 300, 64, 16, 96, 8
    sched = SlidingWindow(N, D, S, seed=3)
    a = RecentNegatives(N, K, CPU, "instances")
    for step in range(120):
        a.select(torch.from_numpy(sched.batch(step, B)))
    b = RecentNegatives(N, K, CPU, "instances")
    b.refill(sched, 120 * B)
    assert torch.equal(a.ring, b.ring) and torch.equal(a.ring_t, b.ring_t) and a.n == b.n == K


def test_instances_hold_K_where_positions_hold_fewer_on_overlapping_windows():
    # The finding: at K = 2D the last K positions hold far fewer than K distinct instances.
    N, D, S, B = 2000, 128, 16, 16
    K = 2 * D
    sched = SlidingWindow(N, D, S, seed=0)
    inst, pos = RecentNegatives(N, K, CPU, "instances"), RecentNegatives(N, K, CPU, "positions")
    for step in range(200):
        index = torch.from_numpy(sched.batch(step, B))
        Ui, _ = inst.select(index)
        Up, _ = pos.select(index)
    assert Ui.numel() == K and Up.numel() < 0.8 * K


@pytest.mark.parametrize("recent", ["instances", "positions"])
def test_K_smaller_than_the_batch_is_refused(recent):
    neg = RecentNegatives(100, 4, CPU, recent)
    with pytest.raises(ValueError, match=r"K=4 .*B=8"):
        neg.select(torch.tensor([10, 20, 30, 40, 50, 60, 70, 80]))


def test_unknown_recent_is_refused():
    with pytest.raises(ValueError, match="recent"):
        RecentNegatives(10, 4, CPU, "visits")


def test_a_trainer_refuses_K_smaller_than_the_batch():
    cfg = build("smoke", {"pic.K": 16})  # smoke batch B = 32; build() does not validate
    with pytest.raises(ConfigError, match=r"pic\.K=16.*B=32"):
        Trainer(cfg)


@pytest.mark.parametrize("recent", ["instances", "positions"])
def test_U_meters_are_mean_min_max_of_U_per_step(recent):
    seed, rng = fresh_rng()
    N, K, B = 40, 12, 4
    stream = random_stream(rng, N, 25 * B)
    neg = RecentNegatives(N, K, CPU, recent)
    sizes = [neg.select(torch.from_numpy(stream[s * B:(s + 1) * B]))[0].numel() for s in range(25)]
    assert neg.U_summary() == {"U_mean": sum(sizes) / 25, "U_min": min(sizes), "U_max": max(sizes)}, seed
    full = RecentNegatives(N, 0, CPU, recent)
    full.select(torch.arange(B))
    assert full.U_summary() == {"U_mean": N, "U_min": N, "U_max": N}


def test_a_run_records_U_and_resume_keeps_the_U_meters(tmp_path):
    cfg = build("smoke", {"optim.max_steps": 6, "run.deterministic": True})
    ref = Trainer(cfg).train()
    assert ref["U_min"] >= 1 and ref["U_max"] <= cfg.pic.K and ref["U_min"] <= ref["U_mean"] <= ref["U_max"]
    t = Trainer(cfg)
    calls = iter(range(100))
    with pytest.raises(Preempted):
        t.train(should_stop=lambda: next(calls) == 3, checkpoint=tmp_path / "c.pt")
    t2 = Trainer(cfg)
    t2.load(tmp_path / "c.pt")
    m = t2.train(checkpoint=tmp_path / "c.pt")
    assert {k: m[k] for k in ("U_mean", "U_min", "U_max")} == {k: ref[k] for k in ("U_mean", "U_min", "U_max")}


def test_pic_recent_positions_keeps_the_hash_of_rows_written_before_the_key():
    old = build("small")
    assert with_added_keys({"pic": {}})["pic"]["recent"] == "positions"
    positions = build("small", {"pic.recent": "positions"})
    instances = build("small", {"pic.recent": "instances"})
    assert old.pic.recent == "instances"  # the paper's reading is the default
    assert config_hash(positions) != config_hash(instances)
    import dataclasses
    import hashlib
    import json
    d = dataclasses.asdict(positions)
    from pic_bench.config import ADDED_KEYS

    for dotted in ADDED_KEYS:  # what the hash was computed from before these keys existed
        section, name = dotted.split(".")
        d[section].pop(name)
    d["run"] = {k: v for k, v in d["run"].items() if k in ("deterministic",)}
    d["data"] = {k: v for k, v in d["data"].items() if k not in ("workers", "root")}
    assert config_hash(positions) == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

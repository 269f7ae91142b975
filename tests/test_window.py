import numpy as np
import pytest

from pic_bench.data.window import EpochOrder, OfficialWindow, SlidingWindow, make_schedule, visit_distances

N, D, S = 2000, 400, 100


def test_each_sliding_window_holds_D_distinct_instances():
    s = SlidingWindow(N, D, S, seed=3)
    for t in range(0, 3 * N // S):
        w = s.window(t)
        assert len(w) == D and len(np.unique(w)) == D
        assert set(w.tolist()) == set(s.members(t).tolist())


def test_consecutive_windows_overlap_by_D_minus_S():
    s = SlidingWindow(N, D, S, seed=4)
    for t in range(0, 2 * N // S):
        a, b = set(s.window(t).tolist()), set(s.window(t + 1).tolist())
        assert len(a & b) == D - S


def test_every_instance_is_visited_within_one_pass_of_the_window():
    s = SlidingWindow(N, D, S, seed=5)
    seen = set()
    for t in range(int(np.ceil(N / S))):
        seen |= set(s.window(t).tolist())
    assert seen == set(range(N))


def test_visit_order_inside_a_window_is_shuffled_and_seeded():
    a, b, c = SlidingWindow(N, D, S, 1), SlidingWindow(N, D, S, 1), SlidingWindow(N, D, S, 2)
    assert np.array_equal(a.window(7), b.window(7))
    assert not np.array_equal(a.window(7), c.window(7))
    assert not np.array_equal(np.sort(a.window(7)), a.window(7))


def test_revisit_distance_is_about_D_for_sliding_and_about_N_for_epochs():
    total = 30 * N
    sl = visit_distances(SlidingWindow(N, D, S, 0).positions(0, total), N)
    ep = visit_distances(EpochOrder(N, 0).positions(0, total), N)
    assert 0.7 * D < np.median(sl) < 1.3 * D
    assert 0.7 * N < np.median(ep) < 1.3 * N
    # An image stays in D / S consecutive windows, then leaves for about (N - D) / S windows: a fraction
    # 1 - S / D of its revisits come within about D samples (7/8 at the paper's D / S = 8), the rest after ~N.
    assert abs(np.mean(sl < 2 * D) - (1 - S / D)) < 0.03
    assert np.median(sl[sl >= 2 * D]) > 0.7 * (N - D)


def test_positions_are_random_access_and_cross_windows():
    s = SlidingWindow(N, D, S, 9)
    stream = np.concatenate([s.window(t) for t in range(5)])
    for start, count in [(0, 37), (D - 5, 20), (3 * D + 11, 2 * D - 30)]:
        assert np.array_equal(s.positions(start, count), stream[start:start + count])
    B = 64
    assert np.array_equal(s.batch(6, B), stream[6 * B:7 * B])


def test_epoch_order_visits_every_instance_once_per_epoch():
    e = EpochOrder(N, 0)
    for t in range(3):
        assert np.array_equal(np.sort(e.window(t)), np.arange(N))
    assert not np.array_equal(e.window(0), e.window(1))


def _official_reference(N, D, S, shuffle, windows, rng):
    """The official sampler's __iter__, step by step, on a seeded generator (a second, literal reading)."""
    indices = np.arange(N)
    rng.shuffle(indices)
    start = 0
    out = []
    for _ in range(windows):
        if shuffle and start + D > D:
            rng.shuffle(indices)
        idx = np.mod(np.arange(D) + start, D)
        w = indices[idx]
        rng.shuffle(w)
        start = (start + S) % D
        out.append(w.copy())
    return out


@pytest.mark.parametrize("shuffle", [False, True])
def test_official_scheduler_reproduces_the_official_sampler(shuffle):
    o = OfficialWindow(N, D, S, seed=11, shuffle_per_epoch=shuffle)
    ref = _official_reference(N, D, S, shuffle, 12, np.random.default_rng([11, 0x0FF1]))
    for t in range(12):
        assert np.array_equal(o.window(t), ref[t])
    # random access backwards replays the same windows
    assert np.array_equal(o.window(2), ref[2])


def test_official_scheduler_without_shuffle_never_slides():
    o = OfficialWindow(N, D, S, seed=0, shuffle_per_epoch=False)
    first = set(o.window(0).tolist())
    for t in range(1, 3 * N // S):
        assert set(o.window(t).tolist()) == first  # always the same D images
    seen = set()
    for t in range(3 * N // S):
        seen |= set(o.window(t).tolist())
    assert len(seen) == D < N


def test_official_scheduler_with_shuffle_draws_fresh_subsets():
    o = OfficialWindow(N, D, S, seed=0, shuffle_per_epoch=True)
    a, b = set(o.window(0).tolist()), set(o.window(1).tolist())
    # start index 0 -> S: the list was reshuffled, so window 1 is a fresh random subset (overlap ~ D*D/N)
    assert len(a & b) < 2 * D * D / N
    # when the start index wraps back to 0 (every D/S windows) there is no reshuffle: same set as before
    k = D // S
    assert set(o.window(k).tolist()) == set(o.window(k - 1).tolist())


def test_make_schedule_rejects_unknown():
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_schedule("nope", N, D, S, 0)


# ---- the official scheduler keeps its state: no replay from window 0 (issue 11 item 6)

class _Counting:
    """A numpy Generator that counts its permutation draws (shuffle / permutation calls and the items drawn)."""

    def __init__(self, g: np.random.Generator, log: list):
        self._g, self._log = g, log

    def shuffle(self, x):
        self._log.append(len(x))
        self._g.shuffle(x)

    def permutation(self, x):
        self._log.append(x if isinstance(x, int) else len(x))
        return self._g.permutation(x)

    def __getattr__(self, name):
        return getattr(self._g, name)


@pytest.fixture
def draws(monkeypatch):
    """Counts every permutation draw of every scheduler made while the fixture is active."""
    from pic_bench.data import window

    log: list = []
    real = window._rng
    monkeypatch.setattr(window, "_rng", lambda *key: _Counting(real(*key), log))
    return log


def _first_batch_draws(log, schedule, t, B=32):
    del log[:]
    schedule.batch(t * schedule.L // B, B)
    return len(log), sum(log)


def test_official_first_batch_after_a_look_ahead_costs_what_the_sliding_windows_does(draws):
    """A loader builds a segment's file list from window 60 on (a look-ahead), then asks for its first batch:
    the official scheduler used to replay windows 0..60 (122 shuffles of N), the sliding window draws nothing."""
    sliding, official = SlidingWindow(N, D, S, 3), OfficialWindow(N, D, S, 3)
    for sched in (sliding, official):
        sched.positions(60 * D, 8 * D)  # the segment's look-ahead: windows 60..67
    calls, _ = _first_batch_draws(draws, official, 60)
    assert calls <= _first_batch_draws(draws, sliding, 60)[0] + 2, draws


def test_official_first_batch_after_a_resume_costs_about_what_the_sliding_windows_does(draws):
    """A requeued segment: a fresh process loads the scheduler state from the checkpoint, refills the
    recent-negatives ring (looks back K positions) and asks for its first batch at window 60."""
    K, B = D // 2, 32
    start = 60 * D + 3 * B
    ref = OfficialWindow(N, D, S, 3)
    want = ref.positions(start - K, K + 4 * B)
    sd = ref.state_dict(start - K)
    fresh = OfficialWindow(N, D, S, 3)
    sliding = SlidingWindow(N, D, S, 3)
    del draws[:]
    fresh.load_state_dict(sd)
    got = fresh.positions(start - K, K + 4 * B)
    official_draws = list(draws)
    del draws[:]
    sliding.positions(start - K, K + 4 * B)
    assert np.array_equal(got, want)
    # at most the windows it covers (two here), each one reshuffle of N plus one of D, against one of D each
    # for the sliding window: O(n + window), where replaying from window 0 made 122 draws of up to N
    assert len(official_draws) <= 2 * len(draws) + 2, (official_draws, draws)


def test_official_state_dict_round_trip_is_bit_exact_with_the_official_sampler():
    ref = _official_reference(N, D, S, True, 30, np.random.default_rng([11, 0x0FF1]))
    a = OfficialWindow(N, D, S, seed=11)
    for t in range(20):
        a.window(t)
    b = OfficialWindow(N, D, S, seed=11)
    b.load_state_dict(a.state_dict(17 * D + 5))
    for t in list(range(17, 30)) + [3, 18, 0, 29]:  # forward, then backward (before the saved state too)
        assert np.array_equal(b.window(t), ref[t]), t
    # looking back inside the kept windows does not replay
    c = OfficialWindow(N, D, S, seed=11)
    c.positions(25 * D, 3 * D)
    assert np.array_equal(c.window(25), ref[25]) and c.replays == 0


def test_state_dict_refuses_another_schedulers_state():
    a = OfficialWindow(N, D, S, seed=1)
    with pytest.raises(ValueError, match="seed"):
        OfficialWindow(N, D, S, seed=2).load_state_dict(a.state_dict(0))
    with pytest.raises(ValueError, match="official"):
        SlidingWindow(N, D, S, 1).load_state_dict(a.state_dict(0))
    s = SlidingWindow(N, D, S, 1)
    s2 = SlidingWindow(N, D, S, 1)
    s2.load_state_dict(s.state_dict(5 * D))  # stateless schedulers: a check of the settings only
    assert np.array_equal(s2.window(5), s.window(5))


def test_a_resumed_run_on_the_official_scheduler_does_not_replay_from_window_0(tmp_path, draws):
    """The checkpoint holds the scheduler's state: the resumed trainer's ring refill and first batch draw the
    one or two windows they cover, not windows 0..t again, and the run ends as an uninterrupted one."""
    from pic_bench.config import build
    from pic_bench.pic.train import Preempted, Trainer

    # positions: the ring's refill reads exactly the last K positions (instances walks back in chunks of at least
    # 1024 positions, the whole of this tiny stream; at paper scale a chunk is 2K, one window)
    c = build("smoke", {"pic.scheduler": "official", "optim.epochs": 10, "optim.max_steps": 30,
                        "run.deterministic": True, "pic.recent": "positions"})
    full = Trainer(c)
    full.train()
    t = Trainer(c)
    with pytest.raises(Preempted):
        t.train(should_stop=lambda: t.step == 24, checkpoint=tmp_path / "ck.pt")  # window 6 of 128 positions
    resumed = Trainer(c)
    del draws[:]
    resumed.load(tmp_path / "ck.pt")
    next(resumed.loader.iterate(resumed.step, resumed.step + 1))
    assert len(draws) <= 2 * 2 + 1, draws  # windows 5 (the ring's K = 64 positions) and 6; 13 from window 0
    resumed.train()
    assert resumed.meters.losses == full.meters.losses

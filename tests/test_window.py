import numpy as np
import pytest

from pic_bench.window import EpochOrder, OfficialWindow, SlidingWindow, make_schedule, visit_distances

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

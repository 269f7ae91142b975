import pytest
import torch

from pic_bench.pic.loss import pic_logits, pic_loss, pic_loss_reference
from pic_bench.pic.negatives import RecentNegatives
from pic_bench.pic.update import update_reference, update_rows
from pic_bench.data.window import EpochOrder, SlidingWindow


def _fresh(B=6, K=9, d=5, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    z = torch.randn(B, d, generator=g)
    w = torch.randn(K, d, generator=g)
    t = torch.randint(0, K, (B,), generator=g)
    return z, w, t


@pytest.mark.parametrize("cosine", [True, False])
def test_loss_equals_reference_on_fresh_inputs(cosine):
    for _ in range(5):
        z, w, t = _fresh()
        assert torch.allclose(pic_loss(z, w, t, 0.2, cosine).double(), pic_loss_reference(z, w, t, 0.2, cosine),
                              rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cosine", [True, False])
def test_loss_gradients_equal_reference(cosine):
    z, w, t = _fresh()
    z1, w1 = z.clone().requires_grad_(), w.clone().requires_grad_()
    pic_loss(z1, w1, t, 0.3, cosine).backward()
    z2, w2 = z.double().requires_grad_(), w.double().requires_grad_()
    pic_loss_reference(z2, w2, t, 0.3, cosine).backward()
    assert torch.allclose(z1.grad.double(), z2.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(w1.grad.double(), w2.grad, rtol=1e-4, atol=1e-6)


def test_cosine_logits_are_bounded_by_one_over_tau_and_use_z_i():
    z, w, _ = _fresh(B=4, K=7)
    s = pic_logits(z * 100, w * 0.01, tau=0.5)
    assert s.abs().max() <= 2.0 + 1e-5
    # row i depends only on z_i (the denominator uses z_i, not z_j)
    z2 = z.clone()
    z2[1] += 3
    s2 = pic_logits(z2, w, 0.5)
    assert torch.equal(pic_logits(z, w, 0.5)[[0, 2, 3]], s2[[0, 2, 3]])


def _update_case(N=12, K=5, d=4):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    w, u = torch.randn(N, d, generator=g), torch.randn(N, d, generator=g)
    U = torch.randperm(N, generator=g)[:K].sort().values
    gU = torch.randn(K, d, generator=g)
    return w, u, U, gU


@pytest.mark.parametrize("correction", [True, False])
def test_update_equals_reference(correction):
    for _ in range(5):
        w, u, U, gU = _update_case()
        w_ref, u_ref = update_reference(w, u, U, gU, 0.3, 0.9, 1e-2, correction)
        update_rows(w, u, U, gU, 0.3, 0.9, 1e-2, correction)
        assert torch.allclose(w.double(), w_ref, atol=1e-6) and torch.allclose(u.double(), u_ref, atol=1e-6)


def test_correction_leaves_unsampled_rows_exactly_alone_and_plain_sgd_moves_them():
    w, u, U, gU = _update_case()
    others = torch.ones(w.shape[0], dtype=torch.bool)
    others[U] = False
    w1, u1 = w.clone(), u.clone()
    update_rows(w1, u1, U, gU, 0.3, 0.9, 1e-2, correction=True)
    assert torch.equal(w1[others], w[others]) and torch.equal(u1[others], u[others])
    w2, u2 = w.clone(), u.clone()
    update_rows(w2, u2, U, gU, 0.3, 0.9, 1e-2, correction=False)
    assert not torch.equal(w2[others], w[others])  # momentum and weight decay move rows with zero gradient
    # sampled rows get the same update either way
    assert torch.allclose(w1[U], w2[U], atol=1e-6) and torch.allclose(u1[U], u2[U], atol=1e-6)


def test_update_with_all_rows_is_the_same_with_and_without_correction():
    w, u, _, _ = _update_case(N=8, K=8)
    U, gU = torch.arange(8), torch.randn(8, w.shape[1])
    a = (w.clone(), u.clone())
    b = (w.clone(), u.clone())
    update_rows(*a, U, gU, 0.1, 0.9, 1e-3, True)
    update_rows(*b, U, gU, 0.1, 0.9, 1e-3, False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bfloat16_storage_update_is_close_to_reference():
    w, u, U, gU = _update_case(N=64, K=16, d=8)
    w_ref, u_ref = update_reference(w.bfloat16().float(), u.bfloat16().float(), U, gU, 0.1, 0.9, 1e-4, True)
    wb, ub = w.bfloat16(), u.bfloat16()
    update_rows(wb, ub, U, gU, 0.1, 0.9, 1e-4, True)
    assert wb.dtype == torch.bfloat16
    assert torch.allclose(wb.double(), w_ref, rtol=2e-2, atol=2e-2)
    assert torch.allclose(ub.double(), u_ref, rtol=2e-2, atol=2e-2)


def test_recent_positions_hold_the_last_K_visits_and_targets_point_at_the_batch():
    N, K, B = 50, 16, 4
    sched = SlidingWindow(N, 20, 5, seed=1)
    neg = RecentNegatives(N, K, torch.device("cpu"), "positions")
    for step in range(30):
        index = torch.from_numpy(sched.batch(step, B))
        U, target = neg.select(index)
        end = (step + 1) * B
        expect = sched.positions(max(0, end - K), min(K, end))
        assert torch.equal(U, torch.unique(torch.from_numpy(expect)))
        assert torch.equal(U[target], index)


def test_recent_positions_refill_matches_an_uninterrupted_ring():
    N, K, B = 40, 12, 4
    sched = SlidingWindow(N, 16, 4, seed=2)
    a = RecentNegatives(N, K, torch.device("cpu"), "positions")
    for step in range(7):
        a.select(torch.from_numpy(sched.batch(step, B)))
    b = RecentNegatives(N, K, torch.device("cpu"), "positions")
    b.refill(sched, 7 * B)
    assert torch.equal(a.ring, b.ring) and a.count == b.count
    idx = torch.from_numpy(sched.batch(7, B))
    Ua, ta = a.select(idx)
    Ub, tb = b.select(idx)
    assert torch.equal(Ua, Ub) and torch.equal(ta, tb)


@pytest.mark.parametrize("recent", ["instances", "positions"])
def test_with_K_equal_N_at_the_end_of_an_epoch_the_sampled_path_equals_the_full_one(recent):
    N, B, d = 32, 8, 6
    sched = EpochOrder(N, seed=0)
    sampled = RecentNegatives(N, N, torch.device("cpu"), recent)
    full = RecentNegatives(N, 0, torch.device("cpu"))
    for step in range(N // B - 1):
        sampled.select(torch.from_numpy(sched.batch(step, B)))
    idx = torch.from_numpy(sched.batch(N // B - 1, B))  # the last batch of the epoch: the ring holds all N
    Us, ts = sampled.select(idx)
    Uf, tf = full.select(idx)
    assert torch.equal(Us, Uf) and torch.equal(ts, tf)
    g = torch.Generator().manual_seed(5)
    z, w = torch.randn(B, d, generator=g), torch.randn(N, d, generator=g)
    assert torch.equal(pic_loss(z, w[Us], ts, 0.2), pic_loss(z, w, tf, 0.2))

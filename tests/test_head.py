"""The fast head (pic_bench.pic.head) against the plain path (loss.pic_loss + autograd + update.update_rows) and the
float64 references, on fresh random inputs (the seed is in every failure message).

Every scratch buffer the fast path takes is filled with NaN first (``NaNWorkspace``), so an output element the
fast path forgets to write, or a stale value it reads, shows up as a NaN, and ``check`` never lets a NaN pass.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from pic_bench.pic import head
from pic_bench.config import apply, build
from pic_bench.pic.loss import pic_loss, pic_loss_reference
from pic_bench.pic.negatives import RecentNegatives
from pic_bench.pic.train import Trainer
from pic_bench.pic.update import update_reference, update_rows

BF16_ULP = 2.0 ** -7  # one bfloat16 ulp, relative (8 significant bits)


class NaNWorkspace(head.Workspace):
    """Hands out every buffer filled with NaN (integer buffers with -1)."""

    def get(self, name, shape, dtype, device):
        buf = super().get(name, shape, dtype, device)
        return buf.fill_(float("nan") if dtype.is_floating_point else -1)


def fresh_seed() -> int:
    return torch.seed() % 2**31


def check(actual, expected, rtol, what, seed, atol=0.0):
    """Finite, same shape, and max |actual - expected| <= rtol * max |expected| + atol (normwise)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert torch.isfinite(expected).all(), f"{what}: reference not finite (seed {seed})"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values (seed {seed})"
    err = (actual - expected).abs().max().item()
    bound = rtol * expected.abs().max().item() + atol
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g} (seed {seed})"


def check_bf16(actual, expected, what, seed, ulps=1):
    """Elementwise within ``ulps`` bfloat16 ulps of expected (both are computed in float32 and rounded once),
    plus float32 noise (1e-6 of the largest element) for elements that come out of a cancellation."""
    a, e = actual.double(), expected.double()
    assert torch.isfinite(a).all(), f"{what}: non-finite values (seed {seed})"
    bad = (a - e).abs() > ulps * BF16_ULP * e.abs() + 1e-6 * e.abs().max()
    assert not bad.any(), f"{what}: {int(bad.sum())} elements off by more than {ulps} ulp (seed {seed})"


def case(N=300, K=60, B=16, d=32, storage=torch.float32, seed=None, full=False):
    seed = fresh_seed() if seed is None else seed
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, d, generator=g)
    w = (torch.randn(N, d, generator=g) * 0.5).to(storage)
    u = (torch.randn(N, d, generator=g) * 0.1).to(storage)
    U = torch.arange(N) if full else torch.randperm(N, generator=g)[:K].sort().values
    target = torch.randint(0, U.numel(), (B,), generator=g)
    return seed, z, w, u, U, target


def autograd64(z, w_U, target, tau, cosine):
    """Loss and gradients to z and w_U by float64 autograd through the plain loss."""
    z64, w64 = z.double().requires_grad_(), w_U.double().requires_grad_()
    loss = pic_loss(z64, w64, target, tau, cosine)
    loss.backward()
    return loss.detach(), z64.grad, w64.grad


# ---- loss and gradients -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cosine", [True, False])
def test_loss_and_gradients_match_float64_autograd(cosine):
    for _ in range(3):
        seed, z, w, _, U, target = case()
        ws = NaNWorkspace()
        rows = head.gather(w, U, cosine, ws)
        loss, grad_z, dwn = head.loss_and_grads(z, rows, target, 0.2, cosine, ws)
        g_U = head.w_gradient(rows, dwn)
        ref_loss, ref_gz, ref_gw = autograd64(z, w[U], target, 0.2, cosine)
        check(loss, ref_loss, 1e-6, "loss", seed)
        check(grad_z, ref_gz, 1e-5, "grad z", seed)
        check(g_U, ref_gw, 1e-5, "grad w_U", seed)


@pytest.mark.parametrize("cosine", [True, False])
def test_loss_equals_the_term_by_term_reference(cosine):
    seed, z, w, _, U, target = case(N=40, K=20, B=5, d=6)
    loss, _, _ = head.loss_and_grads(z, head.gather(w, U, cosine), target, 0.3, cosine)
    check(loss, pic_loss_reference(z, w[U], target, 0.3, cosine), 1e-6, "loss", seed)


def test_scale_scales_gradients_and_w_grad_false_skips_w():
    seed, z, w, _, U, target = case()
    rows = head.gather(w, U, True)
    loss1, gz1, dwn1 = head.loss_and_grads(z, rows, target, 0.2, True)
    dwn1 = dwn1.clone()
    loss2, gz2, dwn2 = head.loss_and_grads(z, rows, target, 0.2, True, w_grad=False, scale=0.25)
    assert dwn2 is None
    assert loss1.item() == loss2.item()  # the loss is never scaled
    check(gz2, 0.25 * gz1, 1e-6, "scaled grad z", seed)


def test_zero_and_tiny_rows_follow_F_normalize():
    # ||x|| <= eps: F.normalize divides by eps and its gradient skips the projection; a zero z row likewise.
    seed, z, w, _, U, target = case(N=50, K=20, B=6, d=8)
    w[U[0]] = 0.0
    w[U[1]] = 1e-14
    z[2] = 0.0
    rows = head.gather(w, U, True, NaNWorkspace())
    loss, grad_z, dwn = head.loss_and_grads(z, rows, target, 0.2, True)
    ref_loss, ref_gz, ref_gw = autograd64(z, w[U], target, 0.2, True)
    check(loss, ref_loss, 1e-6, "loss", seed)
    check(grad_z, ref_gz, 1e-5, "grad z", seed)
    g = head.w_gradient(rows, dwn)
    for r in range(3):  # rows of very different scales: compare each on its own scale
        check(g[r], ref_gw[r], 1e-5, f"grad w row {r}", seed)
    check(g[3:], ref_gw[3:], 1e-5, "grad w other rows", seed)


@pytest.mark.parametrize("cosine", [True, False])
def test_an_underflowing_positive_keeps_the_exact_loss(cosine):
    seed, z, w, _, U, target = case(N=60, K=30, B=8, d=8)
    if cosine:  # tau = 0.01 and each z opposite to its own row: the positive's logit is -100, others up to +100
        tau = 0.01
        z = -w[U[target]].float() + 0.01 * z
    else:  # logit gaps of thousands
        tau = 1.0
        z, w = z * 30, w.float() * 30
    rows = head.gather(w, U, cosine)
    loss, grad_z, dwn = head.loss_and_grads(z, rows, target, tau, cosine)
    ref_loss, ref_gz, ref_gw = autograd64(z, w[U], target, tau, cosine)
    assert ref_loss.item() > 100  # exp(-100) underflows float32: the case does exercise the recomputed rows
    check(loss, ref_loss, 1e-6, "loss", seed)
    # float32 logits of size L carry an absolute error of about eps L, and so do the probabilities' exponents: with
    # the plain softmax's logits in the thousands a fixed 1e-5 failed about 1% of fresh seeds (worst of 2,000
    # seeds: 0.1 eps L relative). The bound is eps L, floored at 1e-5 (the cosine case's logits stay at 1 / tau).
    L = 0.0 if cosine else (z.double() @ w[U].double().T).abs().max().item()
    rtol = max(1e-5, torch.finfo(torch.float32).eps * L)
    check(grad_z, ref_gz, rtol, "grad z", seed)
    check(head.w_gradient(rows, dwn), ref_gw, rtol, "grad w", seed)


def test_views_loss_is_the_mean_over_views_and_small_views_do_not_train_w():
    seed, z, w, _, U, target = case()
    g = torch.Generator().manual_seed(seed + 1)
    zs = [z, torch.randn(z.shape, generator=g), torch.randn(z.shape, generator=g)]  # 2 large views, 1 small
    rows = head.gather(w, U, True, NaNWorkspace())
    loss, grads, dwn = head.views_loss_and_grads(zs, 2, rows, target, 0.2, True, NaNWorkspace())
    z64 = [x.double().requires_grad_() for x in zs]
    w64 = w[U].double().requires_grad_()
    ref = torch.stack([pic_loss(z64[0], w64, target, 0.2), pic_loss(z64[1], w64, target, 0.2),
                       pic_loss(z64[2], w64.detach(), target, 0.2)]).mean()
    ref.backward()
    check(loss, ref, 1e-6, "loss", seed)
    for i in range(3):
        check(grads[i], z64[i].grad, 1e-5, f"grad z view {i}", seed)
    check(head.w_gradient(rows, dwn), w64.grad, 1e-5, "grad w_U", seed)


# ---- update -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("correction", [True, False])
def test_update_matches_float64_reference_float32(correction):
    for _ in range(3):
        seed, z, w, u, U, target = case()
        ws = NaNWorkspace()
        rows = head.gather(w, U, True, ws)
        _, _, dwn = head.loss_and_grads(z, rows, target, 0.2, True, ws)
        g_U = head.w_gradient(rows, dwn)
        w_ref, u_ref = update_reference(w, u, U, g_U, 0.5, 0.9, 1e-2, correction)
        w0, u0 = w.clone(), u.clone()
        head.update(w, u, rows, dwn, 0.5, 0.9, 1e-2, correction, ws)
        check(w, w_ref, 1e-6, "w", seed)
        check(u, u_ref, 1e-6, "u", seed)
        out = torch.ones(w.shape[0], dtype=torch.bool)
        out[U] = False
        if correction:  # rows outside U are left exactly as they were
            assert torch.equal(w[out], w0[out]) and torch.equal(u[out], u0[out]), seed
        else:  # plain SGD moves them through momentum and weight decay
            assert not torch.equal(u[out], u0[out]), seed


@pytest.mark.parametrize("correction", [True, False])
def test_update_bfloat16_storage_is_one_rounding_of_the_float32_update(correction):
    seed, z, w, u, U, target = case(storage=torch.bfloat16)
    ws = NaNWorkspace()
    rows = head.gather(w, U, True, ws)
    _, _, dwn = head.loss_and_grads(z, rows, target, 0.2, True, ws)
    g_U = head.w_gradient(rows, dwn)
    w_ref, u_ref = update_reference(w, u, U, g_U, 0.5, 0.9, 1e-2, correction)  # float64 from the bf16 values
    w_plain, u_plain = w.clone(), u.clone()
    update_rows(w_plain, u_plain, U, g_U, 0.5, 0.9, 1e-2, correction)
    head.update(w, u, rows, dwn, 0.5, 0.9, 1e-2, correction, ws)
    assert w.dtype == u.dtype == torch.bfloat16
    check_bf16(w, w_ref, "w vs float64", seed)
    check_bf16(u, u_ref, "u vs float64", seed)
    check_bf16(w, w_plain.double(), "w vs update_rows", seed)
    check_bf16(u, u_plain.double(), "u vs update_rows", seed)


def test_dense_bfloat16_update_crosses_chunks(monkeypatch):
    monkeypatch.setattr(head, "DENSE_CHUNK_ROWS", 64)  # 300 rows in 5 chunks, U rows spread over them
    seed, z, w, u, U, target = case(storage=torch.bfloat16)
    rows = head.gather(w, U, True)
    _, _, dwn = head.loss_and_grads(z, rows, target, 0.2, True)
    w_ref, u_ref = update_reference(w, u, U, head.w_gradient(rows, dwn), 0.5, 0.9, 1e-2, False)
    head.update(w, u, rows, dwn, 0.5, 0.9, 1e-2, False, NaNWorkspace())
    check_bf16(w, w_ref, "w", seed)
    check_bf16(u, u_ref, "u", seed)


# ---- the whole head step against the plain path -----------------------------------------------------------------

MODES = {"full": dict(full=True, correction=False), "recent": dict(full=False, correction=True),
         "recent_no_correction": dict(full=False, correction=False)}


@pytest.mark.parametrize("cosine", [True, False])
@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("mode", list(MODES))
def test_head_step_equals_plain_path(mode, storage, cosine):
    m = MODES[mode]
    seed, z, w, u, U, target = case(storage=storage, full=m["full"])
    w2, u2 = w.clone(), u.clone()
    loss, grad_z = head.head_step(z, w, u, U, target, 0.2, 0.5, 0.9, 1e-2, m["correction"], cosine, NaNWorkspace())
    ref_loss, ref_gz = head.head_step_reference(z, w2, u2, U, target, 0.2, 0.5, 0.9, 1e-2, m["correction"], cosine)
    check(loss, ref_loss, 1e-6, "loss", seed)
    check(grad_z, ref_gz, 1e-5, "grad z", seed)
    if storage == torch.float32:
        check(w, w2, 1e-6, "w", seed)
        check(u, u2, 1e-6, "u", seed)
    else:
        check_bf16(w, w2.double(), "w", seed)
        check_bf16(u, u2.double(), "u", seed)


@pytest.mark.parametrize("correction", [True, False])
def test_steps_with_the_recent_ring_equal_plain_steps(correction):
    # Several steps through the ring (|U| grows, then holds K): the workspace is reused across sizes.
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    N, K, B, d = 200, 64, 16, 16
    w = torch.randn(N, d, generator=g)
    u = torch.zeros(N, d)
    w2, u2 = w.clone(), u.clone()
    ring, ring2 = RecentNegatives(N, K, torch.device("cpu")), RecentNegatives(N, K, torch.device("cpu"))
    stream = torch.randperm(N, generator=g)
    ws = NaNWorkspace()
    for step in range(8):
        index = stream[(step * B) % N: (step * B) % N + B]
        z = torch.randn(B, d, generator=g)
        U, target = ring.select(index)
        U2, target2 = ring2.select(index)
        loss, gz = head.head_step(z, w, u, U, target, 0.2, 0.5, 0.9, 1e-3, correction, True, ws)
        ref_loss, ref_gz = head.head_step_reference(z, w2, u2, U2, target2, 0.2, 0.5, 0.9, 1e-3, correction, True)
        check(loss, ref_loss, 1e-6, f"loss step {step}", seed)
        check(gz, ref_gz, 1e-5, f"grad z step {step}", seed)
    check(w, w2, 1e-5, "w after 8 steps", seed)
    check(u, u2, 1e-5, "u after 8 steps", seed)


@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_recent_K_equal_N_is_the_full_step(storage):
    # Once the last K = N visits cover every instance, U is all rows and the correction changes nothing.
    seed, z, w, u, _, _ = case(N=96, B=16, storage=storage)
    ring = RecentNegatives(96, 96, torch.device("cpu"))
    order = torch.randperm(96, generator=torch.Generator().manual_seed(seed))
    ring.push(order[:80])
    index = order[80:]  # the batch (B = 16) completes an epoch: the last 96 visits are every instance
    U, target = ring.select(index)
    assert torch.equal(U, torch.arange(96)) and torch.equal(target, index)
    results = []
    for U_, corr in ((U, True), (U, False), (torch.arange(96), False)):
        w_, u_ = w.clone(), u.clone()
        loss, gz = head.head_step(z, w_, u_, U_, target, 0.2, 0.5, 0.9, 1e-2, corr, True, NaNWorkspace())
        results.append((loss, gz, w_, u_))
    for other in results[1:]:
        for a, b, what in zip(results[0], other, ("loss", "grad z", "w", "u")):
            assert torch.equal(a, b), (what, seed)


def test_workspace_reuses_and_grows():
    ws = head.Workspace()
    a = ws.get("x", (10, 4), torch.float32, torch.device("cpu"))
    b = ws.get("x", (5, 4), torch.float32, torch.device("cpu"))
    assert a.data_ptr() == b.data_ptr() and ws.nbytes() == 40 * 4
    c = ws.get("x", (11, 4), torch.float32, torch.device("cpu"))
    assert c.shape == (11, 4) and ws.nbytes() == 80 * 4  # grown geometrically
    assert ws.get("x", (1, 4), torch.bfloat16, torch.device("cpu")).dtype == torch.bfloat16


# ---- the trainer with and without pic.fast_head -----------------------------------------------------------------

TRAINER_CASES = {
    "recent_K": {"pic.K": 64},
    "full_no_correction": {"pic.K": 0, "pic.correction": False},
    "multi_view_small_crops": {"pic.K": 64, "data.views": 2, "data.small_views": 1, "data.small_size": 4,
                               "data.crop_min": 0.1, "data.small_crop_max": 0.5},
    "bfloat16_plain_softmax": {"pic.K": 64, "pic.storage": "bfloat16", "pic.softmax": "plain"},
}


@pytest.mark.parametrize("name", list(TRAINER_CASES))
def test_trainer_fast_head_equals_plain_path(name):
    cfg = apply(build("smoke"), {**TRAINER_CASES[name], "optim.max_steps": 4, "run.deterministic": True}, "t")
    fast, plain = Trainer(apply(cfg, {"pic.fast_head": True}, "t")), Trainer(apply(cfg, {"pic.fast_head": False}, "t"))
    fast.head_ws = NaNWorkspace()
    it = fast.loader.iterate(0, 4)
    for step in range(4):
        batch = next(it)
        lf, lp = fast.train_step(batch), plain.train_step(batch)
        assert lf == pytest.approx(lp, rel=1e-5), (name, step)
        fast.step += 1
        plain.step += 1
    if cfg.pic.storage == "float32":
        check(fast.w, plain.w, 1e-5, "w", name)
        check(fast.u, plain.u, 1e-5, "u", name)
    else:
        check_bf16(fast.w, plain.w.double(), "w", name, ulps=2)
        check_bf16(fast.u, plain.u.double(), "u", name, ulps=2)
    for pf, pp in zip(fast.model.parameters(), plain.model.parameters()):
        check(pf, pp, 1e-4, "backbone parameter", name, atol=1e-6)


def test_head_loss_goes_down_in_20_steps():
    # The head alone: each instance has a fixed feature (plus noise each visit); w must learn to tell them apart.
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    N, K, B, d = 512, 256, 64, 32
    feats = torch.randn(N, d, generator=g)
    w = torch.randn(N, d, generator=g) * 0.01
    u = torch.zeros(N, d)
    ring = RecentNegatives(N, K, torch.device("cpu"))
    stream = torch.cat([torch.randperm(N, generator=g) for _ in range(3)])
    ws, losses = head.Workspace(), []
    for step in range(20):
        index = stream[step * B:(step + 1) * B]
        z = feats[index] + 0.1 * torch.randn(B, d, generator=g)
        U, target = ring.select(index)
        loss, _ = head.head_step(z, w, u, U, target, 0.2, 2.0, 0.9, 1e-4, True, True, ws)
        losses.append(loss.item())
    assert all(map(torch.isfinite, torch.tensor(losses))), seed
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, (first, last, seed)


# ---- Triton kernels: on the CPU through Triton's interpreter, on a GPU for real ---------------------------------

TRITON_SCRIPT = r"""
import json, torch
from pic_bench.pic import head
out = {}
for storage in (torch.float32, torch.bfloat16):
    for cosine in (True, False):
        g = torch.Generator().manual_seed(SEED)
        N, K, B, d = 300, 61, 12, 24   # K not a multiple of the kernel's row block, d not a power of two
        z = torch.randn(B, d, generator=g)
        w = (torch.randn(N, d, generator=g) * 0.5).to(storage)
        w[7] = 0
        u = (torch.randn(N, d, generator=g) * 0.1).to(storage)
        U = torch.cat([torch.tensor([7]), torch.randperm(N - 8, generator=g)[:K - 1] + 8]).sort().values
        t = torch.randint(0, K, (B,), generator=g)
        res = []
        for tri in (True, False):
            w_, u_ = w.clone(), u.clone()
            loss, gz = head.head_step(z, w_, u_, U, t, 0.2, 0.5, 0.9, 1e-2, True, cosine, triton=tri)
            res.append((loss, gz, w_.double(), u_.double()))
        (l1, g1, w1, u1), (l2, g2, w2, u2) = res
        def err(a, b):  # elementwise, in units of one rounding of the storage type (plus float32 noise)
            ulp = 2.0 ** -7 if storage == torch.bfloat16 else 2.0 ** -23
            return ((a - b).abs() / (ulp * b.abs() + 1e-6 * b.abs().max())).max().item()
        key = f"{str(storage)[6:]}-{'cosine' if cosine else 'plain'}"
        out[key] = {"finite": bool(torch.isfinite(w1).all() and torch.isfinite(u1).all()),
                    "loss": abs(l1 - l2).item() / abs(l2).item(),
                    "grad_z": ((g1 - g2).abs().max() / g2.abs().max()).item(),
                    "w": err(w1, w2), "u": err(u1, u2),
                    "untouched": bool(torch.equal(w1[8:][~torch.isin(torch.arange(8, N), U)],
                                                  w.double()[8:][~torch.isin(torch.arange(8, N), U)]))}
print("RESULT" + json.dumps(out))
"""


def test_triton_kernels_match_the_eager_path_under_the_interpreter():
    pytest.importorskip("triton", reason="Triton is not installed (it ships with CUDA builds of torch)")
    seed = fresh_seed()
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", TRITON_SCRIPT.replace("SEED", str(seed))], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert set(res) == {"float32-cosine", "float32-plain", "bfloat16-cosine", "bfloat16-plain"}
    for key, r in res.items():
        assert r["finite"] and r["untouched"], (key, r, seed)
        # The fused normalisation sums in another order: logits move by float32 ulps, nothing more.
        assert r["loss"] <= 1e-6 and r["grad_z"] <= 1e-5, (key, r, seed)
        assert r["w"] <= 1.0 and r["u"] <= 1.0, (key, r, seed)  # within one rounding (+ float32 noise)


@pytest.mark.gpu
@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("mode", list(MODES))
def test_gpu_head_step_equals_plain_path(mode, storage):
    m = MODES[mode]
    seed, z, w, u, U, target = case(N=5000, K=1024, B=64, d=128, storage=storage, full=m["full"])
    dev = torch.device("cuda")
    z, w, u, U, target = z.to(dev), w.to(dev), u.to(dev), U.to(dev), target.to(dev)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # compare in float32; TF32 is for speed
    try:
        w2, u2 = w.clone(), u.clone()
        loss, gz = head.head_step(z, w, u, U, target, 0.2, 0.5, 0.9, 1e-2, m["correction"], True, NaNWorkspace())
        ref_loss, ref_gz = head.head_step_reference(z, w2, u2, U, target, 0.2, 0.5, 0.9, 1e-2, m["correction"])
        torch.cuda.synchronize()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    check(loss, ref_loss, 1e-5, "loss", seed)
    check(gz, ref_gz, 1e-4, "grad z", seed)
    if storage == torch.float32:
        check(w, w2, 1e-5, "w", seed)
        check(u, u2, 1e-5, "u", seed)
    else:
        check_bf16(w.cpu(), w2.cpu().double(), "w", seed, ulps=2)
        check_bf16(u.cpu(), u2.cpu().double(), "u", seed, ulps=2)


@pytest.mark.gpu
def test_gpu_triton_and_eager_paths_agree_at_paper_shapes():
    seed, z, w, u, U, target = case(N=200_000, K=65536, B=256, d=128)
    dev = torch.device("cuda")
    z, w, u, U, target = z.to(dev), w.to(dev), u.to(dev), U.to(dev), target.to(dev)
    w2, u2 = w.clone(), u.clone()
    l1, g1 = head.head_step(z, w, u, U, target, 0.2, 0.5, 0.9, 1e-4, True, True, NaNWorkspace(), triton=True)
    l2, g2 = head.head_step(z, w2, u2, U, target, 0.2, 0.5, 0.9, 1e-4, True, True, NaNWorkspace(), triton=False)
    torch.cuda.synchronize()
    check(l1, l2, 1e-6, "loss", seed)
    check(w, w2, 1e-5, "w", seed)
    check(u, u2, 1e-5, "u", seed)


def rne_vs_truncation_inputs(K: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 values (K, d) between two bfloat16 neighbours, and the mask of those whose round-to-nearest-even
    differs from truncation: low 16 bits above one half (0x8001..0xFFFF), exactly one half (0x8000: a tie, which
    RNE rounds to the even neighbour) or below one half (0x0001..0x7FFF, where both agree)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(K, d, generator=g).to(torch.bfloat16).float().view(torch.int32)  # low 16 bits are zero
    kind = torch.randint(0, 3, (K, d), generator=g)
    low = torch.where(kind == 0, torch.randint(0x8001, 0x10000, (K, d), generator=g),
                      torch.where(kind == 1, torch.full((K, d), 0x8000), torch.randint(1, 0x8000, (K, d), generator=g)))
    x = (base | low.to(torch.int32)).view(torch.float32)
    odd = (base >> 16) & 1 == 1
    differs = (kind == 0) | ((kind == 1) & odd)
    return x, differs


def truncate_bf16(x: torch.Tensor) -> torch.Tensor:
    return (x.view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)  # exact: low bits are zero


def test_rne_inputs_tell_rounding_from_truncation():
    # The inputs the GPU test below relies on: torch's .to(bfloat16) (RNE) and truncation disagree exactly where
    # the mask says, and the mask covers a large share of the elements.
    seed = fresh_seed()
    x, differs = rne_vs_truncation_inputs(64, 128, seed)
    rne, trunc = x.to(torch.bfloat16), truncate_bf16(x)
    ne = rne.view(torch.int16) != trunc.view(torch.int16)
    assert torch.equal(ne, differs), seed
    assert differs.float().mean() > 0.4, seed


@pytest.mark.gpu
def test_gpu_triton_bfloat16_stores_round_to_nearest_even():
    # The interpreter truncates when it stores float32 as bfloat16 while eager torch rounds to nearest even, and the
    # 1-ulp tolerance elsewhere accepts both: here the stored bits must equal torch's .to(bfloat16) exactly.
    # lr = 1, momentum = 0, wd = 0 and w = 0 make the kernel's float32 results exactly u = g and w = -g.
    pytest.importorskip("triton", reason="Triton is not installed (it ships with CUDA builds of torch)")
    from pic_bench.pic import head_triton

    seed = fresh_seed()
    N, K, d = 512, 256, 128
    g_f32, differs = rne_vs_truncation_inputs(K, d, seed)
    dev = torch.device("cuda")
    U = torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:K].sort().values.to(dev)
    w = torch.zeros(N, d, dtype=torch.bfloat16, device=dev)
    u = torch.zeros(N, d, dtype=torch.bfloat16, device=dev)
    dwn = g_f32.to(dev).contiguous()
    head_triton.update_rows(w, u, U, dwn, dwn, None, None, 1.0, 0.0, 0.0)
    torch.cuda.synchronize()
    got_u, got_w = u[U].cpu().view(torch.int16), w[U].cpu().view(torch.int16)
    want_u, want_w = g_f32.to(torch.bfloat16).view(torch.int16), (-g_f32).to(torch.bfloat16).view(torch.int16)
    trunc_u = truncate_bf16(g_f32).view(torch.int16)
    assert torch.equal(got_u, want_u) and torch.equal(got_w, want_w), (
        f"bfloat16 stores are not round-to-nearest-even: {int((got_u != want_u).sum())} of {K * d} u elements differ"
        f", {int((got_u == trunc_u)[differs].sum())} of the {int(differs.sum())} that tell RNE from truncation "
        f"match truncation (seed {seed})")

"""Benchmarks of the head: the loss forward + backward, the update, and the whole head step; fast path
(``pic_bench.pic.head``) against the plain path (``loss.pic_loss`` + autograd + ``update.update_rows``); full softmax
against recent-K, with and without the correction; float32 and bfloat16 storage for the whole step.

Fixed shapes: CPU (default) B = 256, d = 128, N = 2^15, K = 2^12, small enough that a --benchmark-disable run
of the whole file takes seconds; GPU (marker ``gpu``) N = 1,281,167 and 14,197,122, K = 65536. The device is
synchronised inside every timed function. Each benchmark checks once that what it computed is finite.

Splitting the step into "loss" and "update" is not the same for both paths: the fast path applies the row
normalisation's backward inside its update, the plain path inside autograd; so the fast loss benchmark adds it
explicitly (``w_gradient``), and the whole step is the comparison that is the same on both sides.
"""
import pytest
import torch

from pic_bench.pic import head
from pic_bench.bench.scaling import make_case, sync
from pic_bench.pic.loss import pic_loss
from pic_bench.pic.update import update_rows

CPU = dict(N=1 << 15, K=1 << 12, B=256, d=128)
GPU_N = [1_281_167, 14_197_122]
GPU_K = 65536
ROUNDS = 5
ARMS = {"full": (0, False), "recent": (None, True), "recent_no_correction": (None, False)}  # (K, correction)


def _case(arm, storage=torch.float32, device="cpu", N=CPU["N"], K=CPU["K"]):
    K_arm, correction = ARMS[arm]
    return make_case(N, K if K_arm is None else K_arm, CPU["B"], CPU["d"], storage, device), correction


def _finite(*ts):
    for t in ts:
        assert torch.isfinite(t).all()


def _run(benchmark, fn, setup=None, rounds=ROUNDS):
    return benchmark.pedantic(fn, setup=setup, rounds=rounds, warmup_rounds=1, iterations=1)


# ---- the loss forward + backward (gradients to z and to w[U]) ---------------------------------------------------

def loss_fast(c, ws):
    def run():
        rows = head.gather(c.w, c.U, True, ws)
        loss, grad_z, dwn = head.loss_and_grads(c.z, rows, c.target, c.tau, True, ws)
        g_U = head.w_gradient(rows, dwn, inplace=True)
        sync(c.w.device)
        return loss, grad_z, g_U
    return run


def loss_plain(c):
    def run():
        w_U = (c.w if c.U.numel() == c.w.shape[0] else c.w.index_select(0, c.U)).detach().float().requires_grad_()
        z = c.z.detach().requires_grad_()
        loss = pic_loss(z, w_U, c.target, c.tau)
        loss.backward()
        sync(c.w.device)
        return loss.detach(), z.grad, w_U.grad
    return run


@pytest.mark.parametrize("path", ["fast", "plain"])
@pytest.mark.parametrize("arm", ["full", "recent"])
def test_loss_forward_backward(benchmark, arm, path):
    benchmark.group = f"loss fwd+bwd, {arm}"
    c, _ = _case(arm)
    out = _run(benchmark, loss_fast(c, head.Workspace()) if path == "fast" else loss_plain(c))
    _finite(*out)


# ---- the update of w and u ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["fast", "plain"])
@pytest.mark.parametrize("arm", list(ARMS))
def test_update(benchmark, arm, path):
    benchmark.group = f"update, {arm}"
    c, correction = _case(arm)
    ws = head.Workspace()

    def setup_fast():  # this step's rows and gradient, not timed
        rows = head.gather(c.w, c.U, True, ws)
        _, _, dwn = head.loss_and_grads(c.z, rows, c.target, c.tau, True, ws)
        return (rows, dwn), {}

    def setup_plain():
        _, _, g_U = loss_plain(c)()
        return (g_U,), {}

    def fast(rows, dwn):
        head.update(c.w, c.u, rows, dwn, c.lr, c.momentum, c.weight_decay, correction, ws)
        sync(c.w.device)

    def plain(g_U):
        update_rows(c.w, c.u, c.U, g_U, c.lr, c.momentum, c.weight_decay, correction)
        sync(c.w.device)

    u0 = c.u.clone()
    _run(benchmark, fast if path == "fast" else plain, setup_fast if path == "fast" else setup_plain)
    _finite(c.w, c.u)
    assert not torch.equal(c.u, u0)  # the update did run


# ---- the whole head step ----------------------------------------------------------------------------------------

def step_fn(c, correction, path, ws):
    def run():
        if path == "fast":
            out = head.head_step(c.z, c.w, c.u, c.U, c.target, c.tau, c.lr, c.momentum, c.weight_decay, correction,
                                 True, ws)
        else:
            out = head.head_step_reference(c.z, c.w, c.u, c.U, c.target, c.tau, c.lr, c.momentum, c.weight_decay,
                                           correction)
        sync(c.w.device)
        return out
    return run


@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("path", ["fast", "plain"])
@pytest.mark.parametrize("arm", list(ARMS))
def test_head_step(benchmark, arm, path, storage):
    benchmark.group = f"head step, {arm}, {str(storage)[6:]}"
    c, correction = _case(arm, storage)
    loss, grad_z = _run(benchmark, step_fn(c, correction, path, head.Workspace()))
    _finite(loss, grad_z, c.w.float(), c.u.float())


# At ImageNet-22K's N the plain full/dense steps need tens of GiB of autograd buffers: fast path only there.
GPU_CASES = [(N, arm, path) for N in GPU_N for arm in ARMS for path in ("fast", "plain")
             if N == GPU_N[0] or arm == "recent" or path == "fast"]


@pytest.mark.gpu
@pytest.mark.parametrize("N,arm,path", GPU_CASES)
def test_head_step_gpu(benchmark, N, arm, path):
    torch.backends.cuda.matmul.allow_tf32 = True  # the reference figures are TF32 matmuls
    benchmark.group = f"gpu head step N={N}, {arm}"
    c, correction = _case(arm, device="cuda", N=N, K=GPU_K)
    loss, grad_z = _run(benchmark, step_fn(c, correction, path, head.Workspace()), rounds=50)
    _finite(loss, grad_z)

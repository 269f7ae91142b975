"""SyncBatchNorm (issue 18, item 5): the fused cross-rank BatchNorm ``DataParallel`` uses equals the one-process
``nn.BatchNorm2d`` (forward, input / weight / bias gradients, running statistics) on fresh random inputs, in one
process and split over 2 gloo ranks, and stays close to ``nn.BatchNorm2d``'s cost: aten ops per layer (forward +
backward) and bytes saved for backward, against the plain reference ``GlobalBatchNorm``.

torch's own ``nn.SyncBatchNorm`` refuses CPU tensors ("expected input tensor to be on GPU"), hence the fused
equivalent; on CPU stand-ins the op and byte counts are those a GPU would run too (the same aten calls).
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from ranks import free_port, init_gloo, run_ranks

from pic_bench.pic import distributed


def fresh_input(seed: int, shape=(16, 6, 5, 5)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # a large common offset: E[x^2] - E[x]^2 loses digits there, Chan's merge does not
    return torch.randn(shape, generator=g) * (0.1 + torch.rand(shape[1], generator=g)).view(1, -1, 1, 1) * 3 \
        + 50 * torch.randn(shape[1], generator=g).view(1, -1, 1, 1)


def run_bn(layer: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor, steps: int = 2) -> dict:
    out = {}
    for _ in range(steps):  # two steps: the running statistics are updated from the previous ones
        layer.zero_grad()
        xr = x.clone().requires_grad_()
        y = layer(xr)
        y.backward(dy)
    out = {"y": y.detach(), "dx": xr.grad, "rm": layer.running_mean.clone(), "rv": layer.running_var.clone()}
    if layer.affine:
        out.update(dw=layer.weight.grad.clone(), db=layer.bias.grad.clone())
    return out


@pytest.mark.parametrize("momentum, affine", [(0.1, True), (None, True), (0.3, False)])
def test_sync_batchnorm_equals_batchnorm_in_one_process_on_fresh_inputs(momentum, affine):
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    x = fresh_input(seed)
    dy = torch.randn_like(x)
    ref = torch.nn.BatchNorm2d(6, momentum=momentum, affine=affine)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 2)
            ref.bias.normal_()
    sync = distributed.SyncBatchNorm.convert(torch.nn.Sequential(torch.nn.BatchNorm2d(6, momentum=momentum,
                                                                                     affine=affine)))[0]
    sync.load_state_dict(ref.state_dict())
    a, b = run_bn(sync, x, dy), run_bn(ref, x, dy)
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4, msg=lambda m: f"{k} (seed {seed}): {m}")
    assert int(sync.num_batches_tracked) == int(ref.num_batches_tracked) == 2
    sync.eval(), ref.eval()
    torch.testing.assert_close(sync(x), ref(x))


def test_sync_batchnorm_takes_bf16_input_with_float32_statistics():
    x = fresh_input(1).bfloat16()
    sync, ref = distributed.SyncBatchNorm(6), torch.nn.BatchNorm2d(6)
    xr = x.clone().requires_grad_()
    y = sync(xr)
    y.float().pow(2).sum().backward()
    assert y.dtype == torch.bfloat16 and xr.grad.dtype == torch.bfloat16 and sync.running_mean.dtype == torch.float32
    torch.testing.assert_close(y.float(), ref(x.float()), rtol=0.02, atol=0.05)
    torch.testing.assert_close(sync.running_var, ref.running_var, rtol=1e-3, atol=1e-3)


class OpCounter(TorchDispatchMode):
    """Counts aten calls, and those with an output of at least ``size`` elements (a pass over the activations)."""

    def __init__(self, size: int):
        super().__init__()
        self.size, self.ops, self.big = size, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        outs = out if isinstance(out, (tuple, list)) else [out]
        self.big += any(isinstance(o, torch.Tensor) and o.numel() >= self.size for o in outs)
        return out


def cost(layer: torch.nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    """(aten ops in forward + backward, of them those with an output as large as x, bytes saved for backward
    beyond x itself)."""
    saved: dict[int, int] = {}
    x = x.clone().requires_grad_()

    def pack(t):
        if t.data_ptr() != x.data_ptr():
            saved[t.data_ptr()] = t.numel() * t.element_size()
        return t

    counter = OpCounter(x.numel())
    with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).backward(torch.ones_like(x))
    return counter.ops, counter.big, sum(saved.values())


def test_sync_batchnorm_cost_is_near_batchnorm2d_and_far_below_the_reference(capsys, monkeypatch):
    x = torch.randn(64, 32, 8, 8)
    ops_bn, big_bn, bytes_bn = cost(torch.nn.BatchNorm2d(32), x)
    ops_sync, big_sync, bytes_sync = cost(distributed.SyncBatchNorm(32), x)
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: None)  # one rank: the reference's clones stay
    ops_ref, big_ref, bytes_ref = cost(distributed.GlobalBatchNorm(32), x)
    with capsys.disabled():
        print(f"\naten ops (full-size outputs), bytes saved beyond the input, per layer, x {tuple(x.shape)}: "
              f"BatchNorm2d {ops_bn} ({big_bn}), {bytes_bn}; SyncBatchNorm {ops_sync} ({big_sync}), {bytes_sync}; "
              f"GlobalBatchNorm {ops_ref} ({big_ref}), {bytes_ref}")
    per_value = bytes_sync / x.numel()
    assert per_value < 0.1  # nothing of x's size saved beyond x (nn.BatchNorm2d saves x, mean, invstd too)
    assert bytes_ref / x.numel() >= 8  # the reference keeps float copies of x: the 10 bytes per element
    # ops that write an x-sized tensor: BatchNorm2d's forward and backward (+ the test's dy and x.grad's detach);
    # ours adds one, the input gradient's two elementwise kernels (a * dy - b * x + c)
    assert big_sync <= big_bn + 1 and big_ref > 3 * big_sync
    assert ops_sync < ops_ref / 2


def _worker(rank: int, world: int, port: int, outs: list, seed: int) -> None:
    out = str(outs[rank])  # this rank's file
    init_gloo(rank, world, port)
    try:
        x = fresh_input(seed, (12, 4, 3, 3))
        dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1))
        rows = [(0, 5), (5, 12)][rank]  # unequal shares: the counts take part in the merge
        res = {}
        for name, cls in (("sync", distributed.SyncBatchNorm), ("global", distributed.GlobalBatchNorm)):
            layer = cls(4)
            with torch.no_grad():
                layer.weight.copy_(torch.linspace(0.5, 2, 4))
                layer.bias.copy_(torch.linspace(-1, 1, 4))
            res[name] = run_bn(layer, x[rows[0]:rows[1]], dy[rows[0]:rows[1]])
        torch.save(res, out)
    finally:
        dist.destroy_process_group()


def test_sync_batchnorm_over_two_gloo_ranks_equals_batchnorm_on_the_whole_batch(tmp_path):
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    outs = [tmp_path / f"r{r}.pt" for r in range(2)]
    run_ranks(_worker, 2, free_port(), outs, seed, timeout=120)
    got = [torch.load(o) for o in outs]
    x = fresh_input(seed, (12, 4, 3, 3))
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1))
    ref = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        ref.weight.copy_(torch.linspace(0.5, 2, 4))
        ref.bias.copy_(torch.linspace(-1, 1, 4))
    want = run_bn(ref, x, dy)
    # the plain reference's E[x^2] - E[x]^2 loses digits at the inputs' offset of ~50 (seen: 4e-2 relative on y),
    # Chan's merge does not: 1e-4 for the fused layer, 1e-1 for the reference
    for name, tol in (("sync", 1e-4), ("global", 1e-1)):
        for k in ("y", "dx"):
            torch.testing.assert_close(torch.cat([got[0][name][k], got[1][name][k]]), want[k], rtol=tol, atol=tol,
                                       msg=lambda m: f"{name} {k} (seed {seed}): {m}")
        for k in ("rm", "rv"):
            for r in range(2):
                torch.testing.assert_close(got[r][name][k], want[k], rtol=tol, atol=tol)
        for k in ("dw", "db"):  # each rank's share; their sum is the one-process gradient (averaged by W later)
            torch.testing.assert_close(got[0][name][k] + got[1][name][k], want[k], rtol=tol, atol=tol)

"""No per-step host sync on any loader or arm (issue 18, item 6), shown on the CPU with stand-ins:

- batches come through the real DALI CPU loader and ``Batch.to("cuda")`` runs with a recorder in place of the
  copy (torch.Tensor.to / pin_memory / is_pinned patched: no GPU here): every tensor is copied from page-locked
  memory, asynchronously; the index's host copy stays with the batch;
- the steps then run (K > 0, both ``pic.recent`` arms, the plain softmax too) under a dispatch recorder of the aten
  calls that make a GPU wait for the host to learn a value (``.item()``/``bool()``, nonzero, unique,
  masked_select); none may appear;
- each sync-free piece equals its plain reference on fresh random inputs: ``unique_known`` against torch.unique,
  the positions ring against the torch.unique ring, the plain head's loss against ``loss.pic_loss``.

On a GPU, tests/test_gpu.py's sync test runs the same steps with torch.cuda.set_sync_debug_mode.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pic_bench.config import build
from pic_bench.data import Batch
from pic_bench.pic import head
from pic_bench.pic.loss import pic_loss
from pic_bench.pic.negatives import RecentNegatives, unique_known

SYNCS = {"_local_scalar_dense", "is_nonzero", "nonzero", "_unique2", "unique_dim", "unique_consecutive",
         "masked_select", "item"}


class SyncRecorder(TorchDispatchMode):
    """The aten calls among ``SYNCS`` made while active (each one waits for the device on a GPU)."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNCS:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()).item())


def test_unique_known_equals_torch_unique_on_fresh_inputs():
    s = seed()
    g = torch.Generator().manual_seed(s)
    for M, hi in ((1, 3), (64, 10), (500, 400), (2048, 100000)):
        x = torch.randint(0, hi, (M,), generator=g)
        U_ref, inv_ref = torch.unique(x, sorted=True, return_inverse=True)
        with SyncRecorder() as rec:
            U, inv = unique_known(x, int(U_ref.numel()))
        assert rec.seen == [], (s, rec.seen)
        assert torch.equal(U, U_ref) and torch.equal(inv, inv_ref), (s, M)


def reference_positions(N: int, K: int, stream: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ring as every row before issue 18 ran it: the last K stream positions, torch.unique."""
    ring, count, out = torch.full((K,), -1, dtype=torch.long), 0, []
    for index in stream:
        B = index.numel()
        take = index[-K:] if B > K else index
        first = count + B - take.numel()
        ring[(first + torch.arange(take.numel())) % K] = take
        count += B
        valid = ring if count >= K else ring[:count]
        U, inv = torch.unique(valid, sorted=True, return_inverse=True)
        if B == K:
            out.append((U, torch.searchsorted(U, index)))
        else:
            out.append((U, inv[(count - B + torch.arange(B)) % K]))
    return out


@pytest.mark.parametrize("N, K, B", [(50, 16, 8), (300, 64, 16), (1000, 256, 32), (40, 32, 32)])
def test_positions_ring_equals_the_torch_unique_ring_without_a_sync(N, K, B):
    s = seed()
    g = torch.Generator().manual_seed(s)
    # overlapping windows: ids repeat inside and across batches, as the sliding scheduler's stream does
    stream = [(i * B // 2 + torch.randint(0, 40, (B,), generator=g)) % N for i in range(40)]
    want = reference_positions(N, K, stream)
    ring = RecentNegatives(N, K, torch.device("cpu"), "positions")
    for step, (index, (U_ref, t_ref)) in enumerate(zip(stream, want)):
        device_index = index.clone()  # stands for the device copy: the ring must never read it on the host
        with SyncRecorder() as rec:
            U, target = ring.select(device_index, host_index=index)
        assert rec.seen == [], (s, step, rec.seen)
        assert torch.equal(U, U_ref) and torch.equal(target, t_ref), (s, step)
        assert torch.equal(U[target], index)
    assert ring.U_sum == sum(int(u.numel()) for u, _ in want)


def test_plain_head_loss_equals_pic_loss_without_a_sync():
    s = seed()
    g = torch.Generator().manual_seed(s)
    B, K, d = 16, 300, 8
    z = torch.randn(B, d, generator=g) * 30  # plain logits in the thousands: some positives underflow
    w = torch.randn(K, d, generator=g) * 30
    target = torch.randint(0, K, (B,), generator=g)
    U = torch.arange(K)
    rows = head.gather(w, U, cosine=False)
    with SyncRecorder() as rec:
        loss, grad_z, _ = head.loss_and_grads(z, rows, target, 0.2, cosine=False)
    assert rec.seen == [], (s, rec.seen)
    ref = pic_loss(z, w, target, 0.2, cosine=False)
    assert torch.isfinite(loss) and torch.allclose(loss, ref, rtol=1e-5), (s, float(loss), float(ref))
    p_t = torch.softmax(z @ w.t(), 1).gather(1, target.view(B, 1))
    assert bool((p_t < head.TINY_P).any()), s  # the underflow case was exercised


class Moved:
    """Stand-ins for a CUDA copy on a machine without one: pinning marks a clone; a copy to cuda is recorded
    (source pinned?, non_blocking?) and returns the tensor unchanged."""

    def __init__(self, monkeypatch):
        self.copies: list[tuple[bool, bool]] = []
        real_to = torch.Tensor.to

        def pin_memory(t, *a, **k):
            c = t.clone()
            c._stand_in_pinned = True
            return c

        def is_pinned(t, *a, **k):
            return getattr(t, "_stand_in_pinned", False)

        def to(t, *args, **kwargs):
            dev = args[0] if args else kwargs.get("device")
            if isinstance(dev, (str, torch.device)) and torch.device(dev).type == "cuda":
                self.copies.append((is_pinned(t), bool(kwargs.get("non_blocking", False))))
                return t
            return real_to(t, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
        monkeypatch.setattr(torch.Tensor, "is_pinned", is_pinned)
        monkeypatch.setattr(torch.Tensor, "to", to)


@pytest.mark.parametrize("recent", ["instances", "positions"])
@pytest.mark.parametrize("softmax", ["cosine", "plain"])
def test_dali_batches_reach_the_device_and_train_without_a_host_sync(recent, softmax, monkeypatch):
    pytest.importorskip("nvidia.dali", reason="the DALI loader needs nvidia-dali")
    from pic_bench.pic.train import Trainer

    cfg = build("smoke", {"data.loader": "dali", "data.workers": 1, "optim.max_steps": 12, "pic.K": 64,
                          "pic.recent": recent, "pic.softmax": softmax, "optim.epochs": 2})
    t = Trainer(cfg)
    assert t.loader.name.startswith("dali") and t.negatives.K == 64
    batches = list(t.loader.iterate(0, 12))
    moved = Moved(monkeypatch)
    on_device = [b.to(torch.device("cuda", 0)) for b in batches]
    monkeypatch.undo()
    n_tensors = sum(1 + len(b.views) + len(b.small_views) for b in batches)
    assert len(moved.copies) == n_tensors and moved.copies == [(True, True)] * n_tensors, moved.copies
    for b, d in zip(batches, on_device):
        assert d.host_index is not None and torch.equal(d.host_index, b.index) and d.host_index.device.type == "cpu"
    for b in batches[:4]:  # the ring fills, the positions ring's |U| varies
        t.train_step(b.to("cpu"))
        t.step += 1
    with SyncRecorder() as rec:
        for b in on_device[4:]:
            t.train_step(b)
            t.step += 1
    assert rec.seen == [], sorted(set(rec.seen))

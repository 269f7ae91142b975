"""Data-parallel training: 2 CPU processes (gloo) with the global batch split in two match one process with the
same global batch, stop together on a preemption request, and resume from rank 0's checkpoint.

Tolerance, after 8 steps: every step's loss within 1e-5 relative; every parameter, buffer, w and u within
1e-4 of the tensor's largest magnitude (elementwise relative error is meaningless for entries near zero, such
as momentum entries that nearly cancelled). The two runs do the same arithmetic except for the order of sums
(gradient all-reduce, BatchNorm statistics over ranks), so they differ only by float rounding.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pic_bench import distributed
from pic_bench.config import build
from pic_bench.train import Preempted, Trainer

LOSS_RTOL, TENSOR_TOL = 1e-5, 1e-4
STEPS = 8


def cfg(**extra):
    return build("smoke", {"run.deterministic": True, "optim.max_steps": STEPS, "optim.epochs": 2, **extra})


def snapshot(t: Trainer) -> dict:
    return {"losses": list(t.meters.losses), "w": t.w.clone(), "u": t.u.clone(), "step": t.step,
            "model": {k: v.clone() for k, v in t.model.state_dict().items()},
            "ring": t.negatives.ring.clone(), "count": t.negatives.count}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ctx = distributed.current()
        assert isinstance(ctx, distributed.DataParallel) and ctx.rank == rank
        # GlobalBatchNorm on this rank's half equals BatchNorm on the whole batch (forward, input grad, stats)
        torch.manual_seed(0)
        x = torch.randn(8, 3, 4, 4) * 3 + 1
        ref = torch.nn.BatchNorm2d(3)
        gbn = distributed.GlobalBatchNorm.convert(torch.nn.Sequential(torch.nn.BatchNorm2d(3)))[0]
        xr = x.clone().requires_grad_()
        y_ref = ref(xr)
        y_ref.pow(2).sum().backward()
        lo, hi = ctx.shard(8)
        xl = x[lo:hi].clone().requires_grad_()
        yl = gbn(xl)
        yl.pow(2).sum().backward()
        bn = {"y": yl.detach(), "y_ref": y_ref.detach()[lo:hi], "g": xl.grad, "g_ref": xr.grad[lo:hi],
              "rm": gbn.running_mean, "rm_ref": ref.running_mean, "rv": gbn.running_var, "rv_ref": ref.running_var}

        # an uninterrupted 2-rank run
        t = Trainer(cfg())
        t.train()
        full = snapshot(t)
        # a 2-rank run where only rank 0 is asked to stop (as with submitit's signal), then resumed
        ckpt = os.path.join(os.path.dirname(out), "dist.pt")
        t = Trainer(cfg())
        calls = [0]

        def stop() -> bool:
            calls[0] += 1
            return rank == 0 and calls[0] == 4

        try:
            t.train(should_stop=stop, checkpoint=ckpt)
            preempted_at = None
        except Preempted:
            preempted_at = t.step
        dist.barrier()
        ckpt_written = os.path.exists(ckpt)
        t = Trainer(cfg())
        t.load(ckpt)
        t.train()
        resumed = snapshot(t)
        # the plain (reference) head path, which the default fast head replaces
        t = Trainer(cfg(**{"pic.fast_head": False}))
        t.train()
        torch.save({"full": full, "plain": snapshot(t), "resumed": resumed, "preempted_at": preempted_at, "bn": bn,
                    "ckpt_written": ckpt_written}, out)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    outs = [d / f"rank{r}.pt" for r in range(2)]
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(outs[r]))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    two = [torch.load(o, weights_only=False) for o in outs]
    one = Trainer(cfg())
    one.train()
    plain = Trainer(cfg(**{"pic.fast_head": False}))
    plain.train()
    return two, {"full": snapshot(one), "plain": snapshot(plain)}


def assert_close(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] == STEPS
    torch.testing.assert_close(torch.tensor(a["losses"]), torch.tensor(b["losses"]), rtol=LOSS_RTOL, atol=0)
    tensors = {"w": (a["w"], b["w"]), "u": (a["u"], b["u"]),
               **{k: (a["model"][k], b["model"][k]) for k in b["model"] if b["model"][k].is_floating_point()}}
    for k, (x, y) in tensors.items():
        scale = float(y.abs().max())
        err = float((x.double() - y.double()).abs().max())
        assert err <= TENSOR_TOL * scale, f"{k}: max difference {err:.3g} > {TENSOR_TOL} x {scale:.3g}"
    for k in b["model"]:
        if not b["model"][k].is_floating_point():
            assert torch.equal(a["model"][k], b["model"][k]), k  # num_batches_tracked
    assert torch.equal(a["ring"], b["ring"]) and a["count"] == b["count"]  # every global index entered the ring


def test_global_batchnorm_equals_batchnorm_on_the_whole_batch(runs):
    two, _ = runs
    for r in two:
        bn = r["bn"]
        for k in ("y", "g", "rm", "rv"):
            torch.testing.assert_close(bn[k], bn[k + "_ref"], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("path", ["full", "plain"], ids=["fast-head", "plain-head"])
def test_two_ranks_match_one_process_with_the_same_global_batch(runs, path):
    two, one = runs
    for r in two:
        assert_close(r[path], one[path])


@pytest.mark.parametrize("path", ["full", "plain"], ids=["fast-head", "plain-head"])
def test_ranks_hold_identical_replicas(runs, path):
    two, _ = runs
    a, b = two[0][path], two[1][path]
    assert a["losses"] == b["losses"]
    assert torch.equal(a["w"], b["w"]) and torch.equal(a["u"], b["u"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_a_stop_on_rank_0_stops_every_rank_and_resumes(runs):
    two, one = runs
    assert [r["preempted_at"] for r in two] == [3, 3]  # rank 1 was never asked, it stopped at the same step
    assert two[0]["ckpt_written"]
    for r in two:
        assert_close(r["resumed"], one["full"])
        assert r["resumed"]["losses"] == r["full"]["losses"]  # resume is bit-exact in the 2-rank run too


def test_batch_that_does_not_split_is_refused():
    class Fake(distributed.DataParallel):
        def __init__(self):
            self.rank, self.world, self.is_main = 1, 3, False

    with pytest.raises(ValueError, match="multiple of 3"):
        Fake().shard(32)
    assert Fake().shard(33) == (11, 22)
    assert distributed.Single().shard(32) == (0, 32)

"""GPU-only checks of the training loop (marked ``gpu``: skipped without CUDA; slurm/gpu_checks.sh runs them).

- 2 GPUs with NCCL (one rank per GPU, each on its own device) against 1 GPU with the same global batch: every
  step's loss within 1e-4 relative, every tensor within 1e-3 of its largest magnitude (the order of sums
  differs, and cuDNN's kernels are not bitwise reproducible across batch sizes).
- A CUDA resume (run.deterministic=true, so cuDNN and cuBLAS pick reproducible kernels) ends bit-identical to an
  uninterrupted run: every loss, w, u and every parameter equal.
- The step loop's only device syncs are at log steps (torch.cuda.set_sync_debug_mode reports every sync), with
  batches through the loader (torchvision and DALI), K > 0, both pic.recent arms and the plain softmax.
- bf16 autocast trains on the GPU, with channels_last.
"""
from __future__ import annotations

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; before CUDA starts

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from ranks import free_port, run_ranks  # noqa: E402

from pic_bench.config import build  # noqa: E402
from pic_bench.pic.train import Preempted, Trainer  # noqa: E402

pytestmark = pytest.mark.gpu
STEPS = 8


def cfg(**extra):
    return build("smoke", {"run.device": "cuda", "optim.max_steps": STEPS, "optim.epochs": 2, **extra})


def snapshot(t: Trainer) -> dict:
    return {"losses": list(t.meters.losses), "w": t.w.cpu(), "u": t.u.cpu(), "device": str(t.device),
            "model": {k: v.cpu() for k, v in t.model.state_dict().items()},
            "param_devices": sorted({str(p.device) for p in t.model.parameters()})}


def _rank(rank: int, world: int, port: int, outs: list) -> None:
    from pic_bench.pic import distributed

    out = outs[rank]
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    ctx = distributed.init_from_env("cuda")
    try:
        assert isinstance(ctx, distributed.DataParallel) and ctx.device == torch.device("cuda", rank)
        t = Trainer(cfg())
        t.train()
        torch.save(snapshot(t), out)
    finally:
        distributed.shutdown()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_with_nccl_match_one_gpu(tmp_path):
    outs = [str(tmp_path / f"r{r}.pt") for r in range(2)]
    run_ranks(_rank, 2, free_port(), outs, timeout=600)
    two = [torch.load(o, weights_only=False) for o in outs]
    assert [r["device"] for r in two] == ["cuda:0", "cuda:1"]
    assert [r["param_devices"] for r in two] == [["cuda:0"], ["cuda:1"]]
    one = Trainer(cfg())
    one.train()
    ref = snapshot(one)
    for r in two:
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(ref["losses"]), rtol=1e-4, atol=0)
        for k, (a, b) in {"w": (r["w"], ref["w"]), "u": (r["u"], ref["u"]),
                          **{k: (r["model"][k], ref["model"][k]) for k in ref["model"]
                             if ref["model"][k].is_floating_point()}}.items():
            err = float((a.double() - b.double()).abs().max())
            assert err <= 1e-3 * float(b.abs().max()), k
    assert torch.equal(two[0]["w"], two[1]["w"])  # replicas stay identical


def test_cuda_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    c = cfg(**{"run.deterministic": True})
    ref = Trainer(c)
    ref.train()
    calls = [0]

    def stop() -> bool:
        calls[0] += 1
        return calls[0] == 4

    t = Trainer(c)
    with pytest.raises(Preempted):
        t.train(should_stop=stop, checkpoint=tmp_path / "c.pt")
    t = Trainer(c)
    t.load(tmp_path / "c.pt")  # map_location = the GPU: RNG states must still restore
    assert t.step == 3
    t.train()
    assert t.meters.losses == ref.meters.losses
    assert torch.equal(t.w, ref.w) and torch.equal(t.u, ref.u)
    for k, v in ref.model.state_dict().items():
        assert torch.equal(t.model.state_dict()[k], v), k


@pytest.mark.parametrize("loader", ["torchvision", "dali"])
@pytest.mark.parametrize("recent, softmax", [("instances", "cosine"), ("positions", "cosine"),
                                             ("instances", "plain")])
def test_step_loop_syncs_with_the_gpu_only_at_log_steps(loader, recent, softmax):
    """Batches come through the loader (Batch.to in the loop), K > 0, both pic.recent arms and the plain head."""
    if loader == "dali":
        pytest.importorskip("nvidia.dali", reason="the DALI loader needs nvidia-dali")
    t = Trainer(cfg(**{"optim.max_steps": 20, "optim.epochs": 10.0, "pic.K": 64, "pic.recent": recent,
                       "pic.softmax": softmax, "run.log_every": 10, "data.loader": loader}))
    syncs: list[int] = []

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            syncs.append(t.step)

    with warnings.catch_warnings():  # restores warnings.showwarning on exit
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")  # every synchronising CUDA call warns
        try:
            t.train()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # steps 0 and 1: the instances ring counts its ids until it first fills (K = 64 = 2 batches); then log steps
    assert t.step == 20 and set(syncs) <= {0, 1, 10, 20}, sorted(set(syncs))
    assert not set(syncs) & set(range(2, 10)) and not set(syncs) & set(range(11, 20)), sorted(set(syncs))


def test_bf16_trains_on_the_gpu_with_channels_last():
    t = Trainer(cfg(**{"run.precision": "bf16", "optim.max_steps": 20, "optim.epochs": 10.0, "pic.K": 0,
                       "data.aug": "weak", "optim.base_lr": 0.5}))
    assert t.derived["precision"] == "bf16" and t.device == torch.device("cuda", 0)
    conv = next(p for p in t.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    m = t.train()
    losses = t.meters.losses
    assert all(np.isfinite(losses)) and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert m["peak_mem_kind"] == "cuda_max_allocated" and m["peak_mem_mib_ranks"] == [m["peak_mem_mib"]]

"""Data-parallel PIC across processes (ranks) with torch.distributed: gloo on CPU, NCCL on GPU.

    python -m pic_bench.run ablations/negatives_k.yaml paper --executor slurm \\
        --slurm tasks_per_node=4 gpus_per_node=4        # one rank per GPU, initialised from SLURM (submitit)

The principle: a W-rank run is the one-process algorithm with the same global batch B = W * b, only with the
loading and the backbone split by rows of the batch. Concretely:

- **Data: sharded.** Each rank's loader (``build_loader(..., shard=(rank, world))``) reads, decodes and augments
  only its rows ``[r*b, (r+1)*b)`` of each global batch (``data.shard_rows``; B must be a multiple of W), with the
  random draws those rows get in one process (torchvision: per-image seeds from run seed, step and row; batched
  and DALI: the whole global batch's draws, sliced), so the union of the slices, in rank order, is the
  single-process batch bit for bit and the loading work is split W ways like the backbone's. The batch still
  carries all B instance indices and names its slice (``Batch.rows``). ``data.on_bad_image=skip`` is refused with
  several ranks: a rank dropping an image would make its slice disagree with the others' view of the batch.
- **Instance classifier: replicated.** Every rank holds all of w and u (N, d). The recent-negatives ring is fed
  the *global* batch's indices (all B of them), so U and every target are the same on every rank. Each rank's
  loss is the mean over its rows; the gradients of the backbone and of w_U are all-reduced and divided by W,
  which is the gradient of the global-batch mean loss. Every rank then applies the same optimizer step and the
  same sparse update of w[U], u[U] (correction) from the same inputs, so the replicas stay identical without
  ever sending w: the traffic per step is the backbone's gradients plus |U| x d for w_U (K = 65536, d = 128:
  32 MiB in float32). Sharding w by instance would cut memory at N in the millions; at ImageNet's 1.28 M x 128
  floats (0.6 GiB for w and u) replication is simpler and exact.
- **BatchNorm** uses the global batch's statistics (``SyncBatchNorm``: per-rank count, mean and M2 merged with
  Chan's rule, a fused backward), so the function computed equals the one-process one; torch's SyncBatchNorm is
  GPU-only (it refuses CPU tensors), this works on both. ``GlobalBatchNorm`` (sums of x and x^2 all-reduced with
  autograd) is its plain reference.
- **Agreement, at log steps only.** The losses since the last read, the stop request (preemption) and rank 0's
  "a timed checkpoint is due" travel in one all-reduce every ``run.log_every`` steps (and at checkpoint steps
  and the end), never per step: a per-step read would stall the GPU's queue. Every rank therefore stops, fails
  or saves at the same step; a stop request is honoured within ``log_every`` steps (SLURM's signal comes
  ``signal_delay_s`` = 90 s early, so keep ``log_every`` x step time well under that at paper scale). Only
  rank 0 writes checkpoints (the others wait at a barrier for the write only) and result rows; every rank
  resumes from the same checkpoint.
- **Devices.** Each rank's device is resolved once, ``local_device``: ``cuda:<local rank>`` from SLURM's
  ``SLURM_LOCALID`` or torchrun's ``LOCAL_RANK`` (``cuda:0`` when the cluster binds one GPU per task, so every
  rank sees one; refused when SLURM gave the node fewer GPUs than ranks), and handed to every consumer (model, w
  and u, loader, this layer, the evaluation: ``current(device)`` or the trainer's ``dist``, never ``current()``
  alone under NCCL); nothing reads CUDA's current device, which is per thread (training runs in a worker thread).
  Agreement on Python values (``same``) is a digest all-reduced on this device, not ``all_gather_object``.
- **Launch.** ``init_from_env``: inside a submitit SLURM task SLURM's variables win over inherited ``RANK`` /
  ``WORLD_SIZE`` / ``MASTER_ADDR`` (``export_slurm_env`` replaces them, naming them); the group gets an explicit
  timeout (``GROUP_TIMEOUT_MIN``, the cluster key ``group_timeout_min``); a deterministic run exports
  ``CUBLAS_WORKSPACE_CONFIG`` first (``deterministic_cuda_env``). Work that one rank would do while the others
  wait in a collective (the probe of every image) runs before the group exists, split over the ranks.

A 2-process CPU run matches a 1-process run with the same global batch within float rounding, since only the
order of sums differs (all-reduce, BatchNorm over ranks). tests/test_distributed.py allows, after 8 steps, 1e-5
relative on every step's loss and 1e-4 of each tensor's largest magnitude on every parameter, buffer, w and u;
tests/test_slurm.py checks a 2-rank SLURM array task's final loss within 1e-5 relative after 32 steps.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import pickle
import sys
from typing import Any, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class Single:
    """One process: every call is a no-op, so ``train.py`` has one code path."""

    rank, world = 0, 1
    is_main = True

    def __init__(self, device: torch.device | None = None):
        self.device = torch.device("cpu") if device is None else torch.device(device)

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's rows [lo, hi) of a global batch of n."""
        return 0, n

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def mean(self, value: float) -> float:
        return value

    def agree(self, flag: bool) -> bool:
        return flag

    def read(self, losses: list[torch.Tensor], flags: list[bool]) -> tuple[list[float], list[bool]]:
        """The host sync of a log step: this rank's pending per-step losses (0-d device tensors) as floats,
        averaged over ranks, and each flag True when it is True on any rank, in one collective."""
        return torch.stack(losses).double().tolist() if losses else [], list(flags)

    def barrier(self) -> None:
        return None

    def gather_floats(self, value: float) -> list[float]:
        """[value of rank 0, value of rank 1, ...]."""
        return [value]

    def same(self, obj: Any) -> bool:
        """Whether every rank holds an equal ``obj`` (anything picklable), by a digest on this rank's device."""
        return True

    def average_gradients(self, tensors: Iterable[torch.Tensor]) -> None:
        return None


class DataParallel(Single):
    """W ranks of one process group (``torch.distributed`` already initialised)."""

    def __init__(self, device: torch.device | None = None):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        if dist.get_backend() == "nccl" and (device is None or torch.device(device).type != "cuda"):
            raise RuntimeError("an NCCL process group needs this rank's CUDA device (distributed.local_device)")
        self.device = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")

    def shard(self, n: int) -> tuple[int, int]:
        if n % self.world:
            raise ValueError(f"the global batch ({n} images) does not split over {self.world} ranks: "
                             f"set optim.batch_size to a multiple of {self.world} (and data.on_bad_image=error)")
        b = n // self.world
        return self.rank * b, (self.rank + 1) * b

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = SyncBatchNorm.convert(model)
        with torch.no_grad():  # seeded alike already; the broadcast makes it a guarantee
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, src=0)
        return model

    def mean(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world

    def agree(self, flag: bool) -> bool:
        """True on every rank if it is True on any (a stop request reaches rank 0 only)."""
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t)

    def read(self, losses: list[torch.Tensor], flags: list[bool]) -> tuple[list[float], list[bool]]:
        # float64 sums, as one float per step was all-reduced before; flags ride along as 0/1 counts
        local = torch.stack(losses).double() if losses else torch.zeros(0, dtype=torch.float64, device=self.device)
        t = torch.cat([local.to(self.device), torch.tensor([float(f) for f in flags], dtype=torch.float64,
                                                           device=self.device)])
        dist.all_reduce(t)
        values = t.tolist()
        n = len(losses)
        return [v / self.world for v in values[:n]], [v > 0 for v in values[n:]]

    def barrier(self) -> None:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def gather_floats(self, value: float) -> list[float]:
        out = [torch.zeros(1, dtype=torch.float64, device=self.device) for _ in range(self.world)]
        dist.all_gather(out, torch.tensor([value], dtype=torch.float64, device=self.device))
        return [float(t) for t in out]

    def same(self, obj: Any) -> bool:
        # a 62-bit digest travels as int64 on this rank's device (all_gather_object would use CUDA's current
        # device, which is per thread); equal when its min and max over ranks agree
        h = int.from_bytes(hashlib.sha256(pickle.dumps(obj)).digest()[:8], "little") >> 2
        t = torch.tensor([h, -h], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t[0]) == -int(t[1])

    def average_gradients(self, tensors: Iterable[torch.Tensor]) -> None:
        """grad <- mean over ranks, for every tensor that has one: one flat all-reduce (a single bucket)."""
        grads = [t.grad for t in tensors if t.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def current(device: torch.device | None = None) -> Single:
    """The running process group as a ``DataParallel``, or ``Single`` when there is none (or only one rank);
    ``device`` is this rank's, from ``local_device``."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DataParallel(device)
    return Single(device)


def local_device(name: str = "auto") -> torch.device:
    """This rank's device, resolved once from ``run.device`` and the launcher: ``cuda:<local rank>``.

    auto: CUDA when there is one, else the CPU; cuda: CUDA or an error. A local rank without a GPU of its own
    is an error (two ranks on one GPU make NCCL fail with "Duplicate GPU", or silently halve the speed)."""
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if name == "cuda":
            raise RuntimeError("run.device=cuda but no CUDA device is available")
        return torch.device("cpu")
    found = env_rank_world()
    local = found[1] if found else 0
    n = torch.cuda.device_count()
    if local >= n and n == 1 and not _shares_one_gpu():
        # per-task binding (``--gpus-per-task=1``, ``--gpu-bind``, cgroups): each rank sees its own GPU as cuda:0
        return torch.device("cuda", 0)
    if local >= n:
        raise RuntimeError(
            f"rank {found[0] if found else 0} (local rank {local}) has no GPU of its own: this node shows {n} "
            f"GPU(s) (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); run at most one "
            f"rank per GPU (tasks_per_node <= gpus_per_node)")
    return torch.device("cuda", local)


def _local_tasks() -> int | None:
    """Ranks on this node, from SLURM (``SLURM_NTASKS_PER_NODE``, or this node's entry of
    ``SLURM_TASKS_PER_NODE`` such as ``4(x2)``) or torchrun (``LOCAL_WORLD_SIZE``); None when unknown."""
    e = os.environ
    for key in ("SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "LOCAL_WORLD_SIZE"):
        if e.get(key):
            try:
                return int(e[key].split(",")[0].split("(")[0])
            except ValueError:
                continue
    return None


def _shares_one_gpu() -> bool:
    """With one visible GPU and a local rank above 0: True when the ranks of this node provably share that GPU
    (SLURM gave the node fewer GPUs than ranks, or torchrun, which never binds a GPU per rank); False when each
    rank was given a GPU of its own (per-task binding)."""
    e = os.environ
    tasks = _local_tasks()
    if "SLURM_GPUS_ON_NODE" in e and tasks is not None:
        try:
            return int(e["SLURM_GPUS_ON_NODE"]) < tasks
        except ValueError:
            return False
    # torchrun starts every local rank with the same environment: one visible GPU is one shared GPU
    return "SLURM_PROCID" not in e and "LOCAL_RANK" in e


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the incoming gradients (every rank's output
    depends on every rank's input)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        g = g.clone()
        dist.all_reduce(g)
        return g


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """The plain reference of ``SyncBatchNorm`` (what ``DataParallel`` used before issue 18): BatchNorm whose
    training statistics are over the global batch (all ranks); eval uses running stats. About 25 times the aten
    ops of ``nn.BatchNorm2d`` and several float copies of its input saved for backward.

    Mean and (biased) variance come from all-reduced per-channel sums of x and x^2 and the row count, through
    a differentiable all-reduce, so gradients flow to every rank's rows as they would
    in one process. Running statistics are updated as ``nn.BatchNorm`` does (unbiased variance).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        dims = [0] + list(range(2, x.dim()))  # every axis but the channels
        n_local = x.numel() // x.shape[1]
        dtype = x.dtype
        x = x.float()  # statistics in float32 also under bf16 autocast (a no-op in float32)
        # the row count by a fill on the device: torch.tensor([...], device=cuda) would copy from the host and
        # wait, every BatchNorm layer of every forward
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_full((1,), float(n_local))])  # (2C + 1,)
        stats = _AllReduceSum.apply(stats)
        C = x.shape[1]
        n = stats[-1]
        mean = stats[:C] / n  # (C,)
        var = (stats[C:2 * C] / n - mean * mean).clamp_min(0)  # (C,) biased, as BatchNorm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        shape = [1, C] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(dtype)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replaces every BatchNorm{1,2,3}d in ``module`` by a GlobalBatchNorm holding the same tensors."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
            new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            new.load_state_dict(module.state_dict())
            new.train(module.training)
            return new.to(next(iter(module.state_dict().values())).device)
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child))
        return module

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")


def _gather_stats(local: torch.Tensor) -> torch.Tensor:
    """(W, *local.shape): every rank's ``local``, in rank order, in one collective; (1, ...) without a group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local[None]
    W = dist.get_world_size()
    out = local.new_empty(W * local.numel())  # flat: gloo wants (W * k,), NCCL takes it too
    (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(out, local.reshape(-1))
    return out.view(W, *local.shape)


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


class _SyncBatchNormFn(torch.autograd.Function):
    """Training-mode BatchNorm over all ranks' rows, fused: the statistics of each rank's rows (count, mean, M2)
    merged by Chan et al.'s pairwise rule, and a backward that all-reduces only the two per-channel sums BatchNorm's
    input gradient needs. Saves what ``nn.BatchNorm2d`` saves (the input, the weight, mean and 1/std per channel).

    The gradient returned for x is d(sum over ranks of each rank's loss)/dx, as the all-reduce with autograd of
    ``GlobalBatchNorm`` gives; the weight and bias get this rank's share, averaged over ranks with the others'
    gradients (``DataParallel.average_gradients``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        dims = [0] + list(range(2, x.dim()))  # every axis but the channels
        # statistics in float32 also under bf16 autocast (a temporary, not saved)
        var_r, mean_r = torch.var_mean(x if x.dtype == torch.float32 else x.float(), dims, correction=0)  # (C,)
        # (3, C): mean, biased variance and row count per channel; the count by a fill, no host copy
        local = torch.stack((mean_r, var_r, torch.full_like(mean_r, x.numel() // x.shape[1])))
        m_r, v_r, n_r = _gather_stats(local).unbind(1)  # (W, C) each
        n = n_r.sum(0)  # (C,)
        share = n_r / n  # (W, C)
        mean = (share * m_r).sum(0)  # (C,)
        d = m_r - mean  # (W, C)
        # Chan: M2 = sum_r M2_r + n_r (mean_r - mean)^2 with M2_r = n_r var_r; never E[x^2] - E[x]^2
        var = (share * torch.addcmul(v_r, d, d)).sum(0)  # (C,) biased
        if running_mean is not None:
            running_mean.lerp_(mean, momentum)
            running_var.lerp_(var * n / (n - 1), momentum)  # unbiased, as nn.BatchNorm keeps it
        invstd = (var + eps).rsqrt_()  # (C,)
        ctx.save_for_backward(x, weight, mean, invstd, n)
        ctx.eps = eps
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, invstd, n = ctx.saved_tensors
        C = x.shape[1]
        w = weight if weight is not None else torch.ones_like(mean)
        # this rank's sum(dy * xhat) and sum(dy) per channel, in one fused kernel, with the global mean and 1/std
        _, g_w, g_b = torch.ops.aten.native_batch_norm_backward(
            dy, x, w, None, None, mean, invstd, True, ctx.eps, [False, True, True])
        s_w, s_b = (_all_reduce_sum(torch.cat([g_w, g_b]).float()).view(2, C) / n).unbind(0)  # global means
        shape = [1, C] + [1] * (x.dim() - 2)
        a = w * invstd  # (C,)
        b = a * invstd * s_w  # (C,)
        c = torch.addcmul(b * mean, a, s_b, value=-1)  # (C,)
        # dx = w invstd (dy - mean(dy) - xhat mean(dy xhat)) = a dy - b x + c, means over the global batch
        dx = torch.addcmul(c.view(shape), x, b.view(shape), value=-1).addcmul_(dy, a.view(shape)).to(x.dtype)
        return (dx, g_w.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None,
                g_b.to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None,
                None, None, None, None)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are over the global batch (all ranks); eval uses running stats.

    The fused path ``DataParallel`` uses: torch's ``nn.SyncBatchNorm`` refuses CPU tensors (its kernels are CUDA
    only), this runs on gloo and NCCL alike. Per rank: ``var_mean`` of its rows, one all-gather of (mean, var,
    count) per channel merged with Chan's rule, ``F.batch_norm`` with the merged statistics; backward: one fused
    reduction, one all-reduce of 2C sums, two elementwise kernels. ``GlobalBatchNorm`` below is its plain reference
    (differentiable all-reduce of sums), kept for the tests that compare the two."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        m = self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if m is None:  # cumulative average: 1 / num_batches_tracked (a host value only in this rare mode)
                m = 1.0 / float(self.num_batches_tracked)
        rm, rv = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
        return _SyncBatchNormFn.apply(x, self.weight, self.bias, rm, rv, m, self.eps)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replaces every BatchNorm{1,2,3}d in ``module`` by one of this class holding the same tensors."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
            new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            new.load_state_dict(module.state_dict())
            new.train(module.training)
            return new.to(next(iter(module.state_dict().values())).device)
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child))
        return module

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")


def env_rank_world() -> tuple[int, int, int] | None:
    """(rank, local rank, world size) from torchrun's or SLURM's variables; None outside a multi-rank launch.

    In a submitit SLURM task, SLURM's own variables win: RANK / WORLD_SIZE / LOCAL_RANK inherited from the shell
    that submitted the job (say, inside a torchrun or another job) describe another launch."""
    e = os.environ
    in_slurm_task = e.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_PROCID" in e and "SLURM_NTASKS" in e
    if in_slurm_task:
        return int(e["SLURM_PROCID"]), int(e.get("SLURM_LOCALID", 0)), int(e["SLURM_NTASKS"])
    if "RANK" in e and "WORLD_SIZE" in e:
        return int(e["RANK"]), int(e.get("LOCAL_RANK", 0)), int(e["WORLD_SIZE"])
    if "SLURM_PROCID" in e and "SLURM_NTASKS" in e and "SLURM_STEP_ID" in e:
        return int(e["SLURM_PROCID"]), int(e.get("SLURM_LOCALID", 0)), int(e["SLURM_NTASKS"])
    return None


GROUP_TIMEOUT_MIN = 30.0  # default of ``init_from_env``'s timeout (minutes): NCCL's own 10 is too short at scale
LAUNCHER_VARS = ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def export_slurm_env() -> list[str]:
    """Exports the job's rendezvous variables (``TorchDistributedEnvironment``) in a multi-rank submitit SLURM
    task, replacing launcher variables inherited from the submitting shell. Returns the names replaced with a
    different value (a note on stderr names them). An inherited MASTER_PORT is kept: submitit itself honours it."""
    from submitit.helpers import TorchDistributedEnvironment

    before = {k: os.environ[k] for k in LAUNCHER_VARS if k in os.environ}
    # keeps every GPU visible and picks cuda:local_rank below (a rank may use the others' for nothing)
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    replaced = [k for k, v in before.items() if os.environ.get(k) != v]
    if replaced:
        print("note: replaced launcher variables inherited from the submitting shell with this job's own: "
              + ", ".join(f"{k}={before[k]} -> {os.environ[k]}" for k in replaced), file=sys.stderr)
    return replaced


def deterministic_cuda_env() -> None:
    """Exports what deterministic cuBLAS needs (``CUBLAS_WORKSPACE_CONFIG``), before CUDA initialises; a value
    already set to one of the two documented ones is kept."""
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"


def init_from_env(device: str = "auto", timeout_min: float = GROUP_TIMEOUT_MIN,
                  deterministic: bool = False) -> Single:
    """Initialises the process group from the launch environment and returns ``current()``.

    Inside a submitit SLURM job the master address and port come from ``submitit.helpers``'
    ``TorchDistributedEnvironment`` (first node of the job, a port derived from the job id; inherited launcher
    variables are replaced, ``export_slurm_env``); under torchrun from its variables. One rank means no process
    group. NCCL when CUDA is used, gloo otherwise; each rank takes the GPU of its local rank (or its only one, when
    the cluster binds one GPU per task). The group's ``timeout_min`` bounds the rendezvous and every collective
    (``run.deterministic``: ``deterministic_cuda_env`` first, before CUDA initialises).
    """
    if deterministic:
        deterministic_cuda_env()
    if dist.is_initialized():
        return current(local_device(device))
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        export_slurm_env()
    found = env_rank_world()
    if found is None or found[2] == 1:
        return Single()
    rank, _, world = found
    dev = local_device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.set_device(dev)  # for this (the main) thread; the Trainer sets it again in the one that trains
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    timeout = datetime.timedelta(minutes=timeout_min)
    if cuda:  # binds the NCCL communicator to this rank's GPU (no guess from the current device)
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=dev, timeout=timeout)
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
    return current(dev)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()



def join_all(procs, timeout_s: float) -> list[int]:
    """Wait for every started process against one deadline ``timeout_s`` from now (not ``timeout_s`` each, which
    is ``len(procs)`` times as long when all hang); kill and reap those still running then; their indices."""
    import time

    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [i for i, p in enumerate(procs) if p.is_alive()]
    for i in hung:
        procs[i].kill()
    for i in hung:
        procs[i].join(30)
    return hung

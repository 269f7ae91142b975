"""One PIC training run: config -> window order -> loader -> model -> pic loss -> backward -> weight update
-> meters -> result row.

    python -m pic_bench.run ablations/components.yaml small     # runs cells through this module

State lives in three places: the network (with its optimizer), the instance classifier (w and its momentum u)
and the scheduler position (the global step). All three, the RNG states and the meters go into a checkpoint;
the recent-negatives ring is rebuilt from the scheduler on resume.

On a GPU's terms (our reading of what the paper's official code, apex O1 on 4-8 GPUs, needs here):

- **One device per rank**, resolved once (``distributed.local_device``: ``cuda:<local rank>``) and handed to the
  model, w and u, the loader and the data-parallel layer; ``torch.cuda.set_device`` in the thread that trains.
- **No host sync inside the step loop** but every ``run.log_every`` steps (and at checkpoint steps and the
  end): each step's loss stays a device tensor until then; at a log step the pending losses are read (and
  averaged over ranks) in one go, checked for finiteness, appended to the curve and the progress line, and the
  ranks agree on a stop request and a timed checkpoint. A non-finite loss is therefore caught up to
  ``log_every`` steps late (the error names the first bad step). A stop request is honoured at once in one
  process and at the next log step with several. Step times on CUDA are the log window's wall time over its
  steps (no per-step synchronize); on the CPU each step is timed as before.
- **Precision** (``run.precision``): fp32 (TF32 off), tf32, or bf16 autocast around the backbone and projection
  head only; z is cast to float32 before the instance classifier, whose math stays float32 and whose storage
  is ``pic.storage``'s. channels_last and cudnn.benchmark (unless deterministic) on CUDA.
- **Checkpoints** every ``run.checkpoint_every`` steps and at the first log step ``run.checkpoint_minutes``
  after the last save, on a stop request, written by rank 0 while the others wait at a barrier for the write.
  RNG states are stored as bytes, so a checkpoint loads with any ``map_location``.
- **The curve**: one JSON line {"step", "loss", "lr", "wall_s"} per log step and at the end (loss: mean over
  the steps since the previous log step; lr: the last step's; wall_s: training time over every segment); a
  resumed run drops lines past its checkpoint and continues the file.
"""
from __future__ import annotations

import functools
import json
import math
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import distributed, head
from ..config import Config, ConfigError
from ..files import write_atomic, write_error
from ..data import Batch
from ..data.loaders import build_loader
from ..data.sources import Source, load_source
from .loss import pic_logits, pic_loss
from .model import PICModel
from .negatives import RecentNegatives
from .update import update_rows
from ..data.window import make_schedule, regime


class NonFiniteLoss(RuntimeError):
    pass


class Preempted(RuntimeError):
    """Raised after a checkpoint was saved because ``should_stop()`` asked the run to stop."""


def derive(cfg: Config, N: int) -> dict[str, Any]:
    """Values derived from the config and the dataset; recorded in rows, never written back into the config."""
    B = cfg.optim.batch_size
    steps = math.ceil(cfg.optim.epochs * N / B)
    if cfg.optim.max_steps:
        steps = min(steps, cfg.optim.max_steps)
    D = min(cfg.pic.D, N)
    return {
        "N": N, "steps": steps, "warmup_steps": int(round(cfg.optim.warmup_epochs * N / B)),
        "lr": cfg.optim.base_lr * B / 256, "window_len": N if cfg.pic.scheduler == "epoch" else D,
        "windows": math.ceil(steps * B / (N if cfg.pic.scheduler == "epoch" else D)),
        "K_effective": N if cfg.pic.K == 0 else min(cfg.pic.K, N),
    }


@functools.lru_cache(maxsize=64)
def _regime(kind: str, N: int, D: int, S: int, seed: int, shuffle: bool, samples: int) -> tuple:
    return tuple(regime(make_schedule(kind, N, D, S, seed, shuffle), samples).items())


def derive_regime(cfg: Config, N: int) -> dict[str, float]:
    """The regime figures of this run's stream (``data.window.regime``: sweeps, never-visited share, first-visit
    share, when first visits end, mean revisit distance in units of D), from the scheduler alone; recorded in the
    row as ``derived["regime"]`` (by ``suite.tasks.run_task``, on rank 0 only, not in the Trainer: the scaling
    benchmarks build Trainers at large N and measure their memory) and printed by the dry run. Computed on a fresh
    schedule of the run's seed, so the run's own schedule is left as it was."""
    p = cfg.pic
    samples = derive(cfg, N)["steps"] * cfg.optim.batch_size
    return dict(_regime(p.scheduler, N, p.D, p.S, cfg.run.seed, p.official_shuffle, samples))


def lr_schedule(base: float, steps: int, warmup: int, final_ratio: float = 0.0) -> np.ndarray:
    """Linear warm-up then cosine decay towards ``final_ratio * base`` (0: to 0, the official schedule), indexed by
    the global step (length ``steps``)."""
    warmup = min(warmup, steps)
    warm = np.linspace(base / max(warmup, 1), base, warmup) if warmup else np.empty(0)
    t = np.arange(steps - warmup)
    floor = final_ratio * base
    cos = floor + 0.5 * (base - floor) * (1 + np.cos(np.pi * t / max(steps - warmup, 1)))
    sched = np.concatenate([warm, cos])
    assert len(sched) == steps, (len(sched), steps)
    return sched


def resolve_device(name: str) -> torch.device:
    """This rank's device for ``run.device`` (``cuda:<local rank>`` under SLURM or torchrun)."""
    return distributed.local_device(name)


def set_precision(precision: str, device: torch.device, deterministic: bool) -> str:
    """Sets torch's global math flags for ``run.precision`` on ``device``; returns the precision that runs
    (on a CPU tf32 does not exist: fp32)."""
    if device.type != "cuda":
        return "bf16" if precision == "bf16" else "fp32"
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32  # torch's default is True: fp32 means fp32 here
    torch.backends.cudnn.benchmark = not deterministic
    return precision


def _rng_bytes(state: torch.Tensor) -> bytes:
    return state.numpy().tobytes()


def _rng_tensor(state: Any) -> torch.Tensor:
    """A CPU ByteTensor from a checkpoint's RNG state: bytes, or (older checkpoints) a tensor on any device."""
    if isinstance(state, (bytes, bytearray)):
        return torch.frombuffer(bytearray(state), dtype=torch.uint8)
    return state.to("cpu", torch.uint8)


def cuda_rng_state(saved: Any, device: torch.device) -> torch.Tensor:
    """This rank's CUDA generator state from a checkpoint: one state (bytes), or, from checkpoints that kept every
    visible GPU's (``get_rng_state_all``), the one of ``device``'s index, else the first."""
    if isinstance(saved, (list, tuple)):
        if not saved:
            raise ValueError("the checkpoint holds an empty list of CUDA RNG states")
        i = device.index or 0
        saved = saved[i] if i < len(saved) else saved[0]
    return _rng_tensor(saved)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def reset_peak_memory(device: torch.device) -> None:
    """Starts a fresh peak for this run: CUDA peak stats, or the process's VmHWM (Linux /proc/self/clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def dali_pool_mib(loader: Any) -> float | None:
    """DALI's own device memory (its pool is outside torch's allocator), where the loader reports it."""
    report = getattr(loader, "memory_mib", None)
    return report() if callable(report) else None


def peak_memory_mib(device: torch.device) -> float:
    """CUDA max allocated, or the process's peak RSS since ``reset_peak_memory`` (whole process, torch included)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB, since process start


@dataclass
class Meters:
    step_ms: list[float] = field(default_factory=list)  # compute time per step (batch ready -> update done)
    wait_ms: list[float] = field(default_factory=list)  # time waiting for the loader per step
    losses: list[float] = field(default_factory=list)
    skipped: int = 0
    wall_s: float = 0.0  # training wall time summed over every (resumed) segment

    def summary(self, B: int, warm: int = 5) -> dict[str, float]:
        t = np.asarray(self.step_ms[warm:] if len(self.step_ms) > warm else self.step_ms)
        w = np.asarray(self.wait_ms[warm:] if len(self.wait_ms) > warm else self.wait_ms)
        tail = self.losses[-max(1, len(self.losses) // 20):]
        per_step = (t + w) if len(t) == len(w) else t
        return {
            "step_ms_median": float(np.median(t)) if len(t) else float("nan"),
            "step_ms_p90": float(np.percentile(t, 90)) if len(t) else float("nan"),
            "data_wait_ms_median": float(np.median(w)) if len(w) else float("nan"),
            "images_per_s": float(B * 1000 / np.median(per_step)) if len(per_step) else float("nan"),
            "final_loss": float(np.mean(tail)) if tail else float("nan"),
            "skipped_images": self.skipped, "train_wall_s": self.wall_s,
        }


class Trainer:
    """Builds everything for one run; ``train()`` runs the flat step loop."""

    def __init__(self, cfg: Config, source: Source | None = None):
        self.cfg = cfg
        p, o = cfg.pic, cfg.optim
        if 0 < p.K < o.batch_size:  # config.validate checks ablation files; a Trainer can be built from any config
            raise ConfigError(f"pic.K={p.K} is smaller than the batch (optim.batch_size B={o.batch_size}); "
                              "the batch's own instances must all be among the K recent ones")
        # --- device, precision and seeds
        if cfg.run.deterministic:  # read by cuBLAS when CUDA initialises: before the first CUDA call
            distributed.deterministic_cuda_env()
        self.device = resolve_device(cfg.run.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # per thread: this is the thread that trains
        precision = set_precision(cfg.run.precision, self.device, cfg.run.deterministic)
        self.bf16 = precision == "bf16"
        self.channels_last = self.device.type == "cuda"
        self.clock = time.monotonic  # for checkpoint_minutes (a test replaces it)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        if cfg.run.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_everything(cfg.run.seed)
        # --- data: the source, the window order, the loader
        self.source = source or load_source(cfg.data, cfg.run.seed)
        self.N = self.source.N
        self.derived = derive(cfg, self.N)
        self.derived["precision"] = precision
        self.schedule = make_schedule(p.scheduler, self.N, p.D, p.S, cfg.run.seed, p.official_shuffle)
        ranks = distributed.current(self.device)  # each rank reads and decodes only its rows of the global batch
        self.loader = build_loader(cfg, self.source, self.schedule, shard=(ranks.rank, ranks.world),
                                   device=self.device)
        self.derived["loader"] = self.loader.name  # which loader ran, for the result row
        # --- model and its optimizer
        self.model = PICModel(cfg.model, self.source.channels).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # --- data parallel across ranks (a no-op in one process; how PIC is split: see distributed.py)
        self.dist = distributed.current(self.device)
        self.model = self.dist.prepare_model(self.model)
        self.derived["ranks"] = self.dist.world
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.derived["lr"], momentum=o.momentum,
                                   weight_decay=o.weight_decay)
        # --- the instance classifier: w and u live outside the optimizer, so the sparse update is explicit
        dtype = torch.float32 if p.storage == "float32" else torch.bfloat16
        g = torch.Generator(device="cpu").manual_seed(cfg.run.seed + 17)
        self.w = torch.randn(self.N, self.model.out_dim, generator=g).mul_(p.w_init_std).to(self.device, dtype)
        self.u = torch.zeros_like(self.w)
        self.negatives = RecentNegatives(self.N, p.K, self.device, p.recent)
        self.head_ws = head.Workspace()  # fast head's scratch buffers, reused every step (derived, not state)
        # --- schedule and meters
        self.lr = lr_schedule(self.derived["lr"], self.derived["steps"], self.derived["warmup_steps"],
                              cfg.optim.final_lr_ratio)
        self.step = 0
        self.meters = Meters()

    # ---- checkpoint: network + optimizer, classifier, scheduler position, RNG states, meters
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "data_digest": self.source.digest,  # what it trained on: a resume checks it
            "model": self.model.state_dict(), "opt": self.opt.state_dict(), "w": self.w, "u": self.u, "meters": self.meters.__dict__, "U_meters": self.negatives.U_meters(),
            # the scheduler's state from the ring's first position on (the official sampler is sequential)
            "schedule": self.schedule.state_dict(self.negatives.lookback(self.step * self.cfg.optim.batch_size)),
            # bytes, not tensors: torch.load(map_location=<cuda>) would move ByteTensors off the CPU, where
            # torch.set_rng_state refuses them
            "rng": {"torch": _rng_bytes(torch.get_rng_state()), "numpy": np.random.get_state(),
                    "python": random.getstate(),
                    # this rank's generator only: every rank sees its own GPU (or, bound per task, only it),
                    # and a process with fewer GPUs (the evaluation task) restores it all the same
                    "cuda": _rng_bytes(torch.cuda.get_rng_state(self.device))
                    if self.device.type == "cuda" else None},
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        # a checkpoint of other data would resume its weights onto other images (checked before anything is set)
        if sd.get("data_digest") not in (None, self.source.digest):
            raise DataMismatch(f"the checkpoint was trained on data with digest {sd['data_digest']}, but this run's "
                               f"data has digest {self.source.digest}; refusing to resume onto other images")
        self.step = int(sd["step"])
        self.model.load_state_dict(sd["model"])
        self.opt.load_state_dict(sd["opt"])
        self.w.copy_(sd["w"])
        self.u.copy_(sd["u"])
        self.meters = Meters(**sd["meters"])
        torch.set_rng_state(_rng_tensor(sd["rng"]["torch"]))
        np.random.set_state(sd["rng"]["numpy"])
        random.setstate(sd["rng"]["python"])
        if sd["rng"]["cuda"] is not None and self.device.type == "cuda":  # a CPU resume keeps its own
            torch.cuda.set_rng_state(cuda_rng_state(sd["rng"]["cuda"], self.device), self.device)
        if "schedule" in sd:  # checkpoints written before it was kept replay the official sampler from window 0
            self.schedule.load_state_dict(sd["schedule"])
        self.negatives.refill(self.schedule, self.step * self.cfg.optim.batch_size)
        if "U_meters" in sd:
            self.negatives.load_U_meters(sd["U_meters"])

    def save(self, path: Path) -> None:
        if not self.dist.is_main:  # ranks hold identical state; rank 0 writes it
            return
        path = Path(path)
        # atomic: a kill or a full disk mid-save leaves the previous checkpoint intact and no .tmp; a failed write
        # is a WriteError naming the file (not torch's "enforce fail at inline_container.cc")
        state = self.state_dict()
        write_atomic(path, lambda f: torch.save(state, f), tmp=path.with_suffix(".tmp"))

    def save_all(self, path: Path) -> None:
        """A collective save: rank 0 writes, the others wait for the write only (then all may read it)."""
        self.save(path)
        self.dist.barrier()

    def read(self, path: Path) -> dict[str, Any]:
        """The checkpoint's contents (what fails here means the file cannot be read: ``checkpoint``)."""
        return torch.load(path, map_location=self.device, weights_only=False)

    def load(self, path: Path, sd: dict[str, Any] | None = None) -> None:
        """Restores the checkpoint at ``path`` (``sd``: its contents, already ``read``)."""
        self.load_state_dict(self.read(path) if sd is None else sd)
        if self.dist.is_main:
            print(f"resuming from step {self.step} of {self.derived['steps']}: {path}", file=sys.stderr)

    def z(self, x: torch.Tensor) -> torch.Tensor:
        """The network's z (B, d) in float32 for the classifier; bf16 autocast inside for run.precision=bf16."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.bf16:
            return self.model(x)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            z = self.model(x)
        return z.float()

    # ---- one step, in the paper's order
    def train_step(self, batch: Batch) -> torch.Tensor:
        """One step; returns this rank's loss as a 0-d device tensor (read by ``train`` at log steps only)."""
        cfg, p = self.cfg, self.cfg.pic
        lr = float(self.lr[self.step])
        for group in self.opt.param_groups:
            group["lr"] = lr
        U, target = self.negatives.select(batch.index, batch.host_index)  # (|U|,), (B,)
        cosine = p.softmax == "cosine"
        lo, hi = batch.rows  # this rank's rows of the global batch: the loader decoded only these (views are hi - lo)
        # --- fast head (pic_bench.pic.head): same loss, gradients and update as the plain path below, computed in
        # closed form with one gather of w[U] (rows) that the update reuses. Small views do not train w.
        if p.fast_head:
            rows = head.gather(self.w, U, cosine, self.head_ws)
            zs = [self.z(x) for x in [*batch.views, *batch.small_views]]
            loss, grads_z, dwn = head.views_loss_and_grads(zs, len(batch.views), rows, target[lo:hi], p.tau,
                                                           cosine, self.head_ws)
            self.opt.zero_grad(set_to_none=True)
            torch.autograd.backward(zs, grads_z)
            rows.wn.grad = dwn  # dL/dwn, averaged over ranks with the backbone's gradients
            self.dist.average_gradients([*self.model.parameters(), rows.wn])
            self.opt.step()
            head.update(self.w, self.u, rows, dwn, lr, cfg.optim.momentum, cfg.optim.weight_decay, p.correction,
                        self.head_ws)
            return loss.detach()
        # --- plain path (the reference)
        w_U = (self.w if U.numel() == self.N else self.w.index_select(0, U)).detach().float().requires_grad_()
        losses = [pic_loss(self.z(x), w_U, target[lo:hi], p.tau, cosine) for x in batch.views]
        for x in batch.small_views:  # multi-crop small views train the network only (w detached, as official)
            losses.append(torch.nn.functional.cross_entropy(
                pic_logits(self.z(x), w_U.detach(), p.tau, cosine), target[lo:hi]))
        loss = torch.stack(losses).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients([*self.model.parameters(), w_U])  # -> gradient of the global-batch loss
        self.opt.step()
        update_rows(self.w, self.u, U, w_U.grad, lr, cfg.optim.momentum, cfg.optim.weight_decay, p.correction)
        return loss.detach()

    def train(self, should_stop: Callable[[], bool] = lambda: False, checkpoint: Path | None = None,
              progress: Callable[[int, int, float], None] | None = None,
              curve: Path | None = None) -> dict[str, Any]:
        """The step loop, from ``self.step`` to the last step; returns the meters' summary and the peak memory.

        ``should_stop`` is asked once per step (a stop saves ``checkpoint`` and raises ``Preempted``);
        ``progress(step, steps, loss)`` and ``curve`` (JSON lines) are fed at log steps.
        """
        steps = self.derived["steps"]
        r = self.cfg.run
        every, log_every, budget_s = r.checkpoint_every, r.log_every, r.checkpoint_minutes * 60
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.set_device(self.device)
        curve_out = _Curve(curve, self.step, r.tensorboard) if curve is not None else None
        start_wall = time.perf_counter()
        last_save = self.clock()
        pending: list[torch.Tensor] = []  # this rank's losses not read yet (device tensors)
        stop = False
        it = self.loader.iterate(self.step, steps)
        t_wait = window_t0 = time.perf_counter()
        window_wait_ms: list[float] = []

        def read(flags: list[bool]) -> list[bool]:
            """The host sync: pending losses -> meters (checked), and the flags agreed over ranks."""
            nonlocal pending
            values, agreed = self.dist.read(pending, flags)
            first = self.step - len(pending)  # the step index of values[0]
            if cuda:  # the window's wall time over its steps: the read above waited for the device
                n = len(window_wait_ms)
                busy = ((time.perf_counter() - window_t0) * 1e3 - sum(window_wait_ms)) / max(n, 1)
                self.meters.step_ms.extend([busy] * n)
                window_wait_ms.clear()
            pending = []
            for i, v in enumerate(values):
                if not math.isfinite(v):
                    self.meters.losses.extend(values[:i])
                    raise NonFiniteLoss(f"non-finite loss {v} at step {first + i} "
                                        f"(lr {float(self.lr[first + i]):.4g})")
            self.meters.losses.extend(values)
            return agreed

        def stop_here() -> None:
            nonlocal start_wall
            if checkpoint is not None:
                self.meters.wall_s += time.perf_counter() - start_wall
                start_wall = time.perf_counter()
                self.save_all(checkpoint)
            raise Preempted(f"stopped at step {self.step}")

        try:
            while self.step < steps:
                stop = stop or bool(should_stop())
                if stop and self.dist.world == 1:  # one process: nothing to agree on, stop at once
                    read([])
                    stop_here()
                batch = next(it).to(self.device)
                t0 = time.perf_counter()
                pending.append(self.train_step(batch))
                t1 = time.perf_counter()
                if cuda:
                    window_wait_ms.append((t0 - t_wait) * 1e3)
                else:  # a CPU step is done when train_step returns: time each one, as rows always did
                    self.meters.step_ms.append((t1 - t0) * 1e3)
                self.meters.wait_ms.append((t0 - t_wait) * 1e3)
                self.meters.skipped += batch.skipped
                self.step += 1
                at_log = self.step % log_every == 0 or self.step == steps
                at_every = bool(every) and checkpoint is not None and self.step % every == 0 and self.step < steps
                if at_log or at_every:
                    # rank 0's clock decides a timed checkpoint; the read makes every rank take it
                    due = (at_log and budget_s > 0 and checkpoint is not None and self.step < steps
                           and self.dist.is_main and self.clock() - last_save >= budget_s)
                    stop_any, due_any = read([stop, due])
                    if at_log:
                        self._log(progress, curve_out, steps, log_every, time.perf_counter() - start_wall)
                    if stop_any:
                        stop_here()
                    if at_every or due_any:
                        self.meters.wall_s += time.perf_counter() - start_wall
                        start_wall = time.perf_counter()
                        self.save_all(checkpoint)
                        last_save = self.clock()
                    window_t0 = time.perf_counter()
                t_wait = time.perf_counter()
        finally:
            close = getattr(it, "close", None)
            if close:
                close()
            if curve_out is not None:
                curve_out.close()
        self.meters.wall_s += time.perf_counter() - start_wall
        out: dict[str, Any] = {**self.meters.summary(self.cfg.optim.batch_size), **self.negatives.U_summary()}
        out.update(self.memory())
        return out

    def _log(self, progress, curve_out, steps: int, log_every: int, segment_s: float) -> None:
        """A log step: the mean loss since the previous log step to the curve, progress and the job's log."""
        prev = (self.step - 1) // log_every * log_every
        window = self.meters.losses[prev:self.step]
        loss = sum(window) / len(window)
        lr = float(self.lr[self.step - 1])
        wall = self.meters.wall_s + segment_s
        if curve_out is not None and self.dist.is_main:
            curve_out.write(self.step, loss, lr, wall)
        if progress:
            progress(self.step, steps, loss)
        elif self.dist.is_main:  # no progress bar (a SLURM task): the job's log shows where training is
            print(f"step {self.step}/{steps} loss {loss:.4f} lr {lr:.4g} ({wall:.0f} s)", file=sys.stderr,
                  flush=True)

    def memory(self) -> dict[str, Any]:
        """The training loop's peak memory (read at the end of training, before evaluation), per rank."""
        ranks = self.dist.gather_floats(peak_memory_mib(self.device))
        return {"peak_mem_mib": max(ranks), "peak_mem_mib_ranks": ranks,
                "peak_mem_kind": "cuda_max_allocated" if self.device.type == "cuda" else "cpu_peak_rss",
                "dali_pool_mib": dali_pool_mib(self.loader)}

class DataMismatch(RuntimeError):
    """A checkpoint's recorded data digest is not the data's: resuming would continue on other images."""



def _curve_step(line: str) -> float:
    """The step of a curve line; a line cut by a kill (or blank) counts as past every step, so it is dropped."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


class _Curve:
    """The loss curve file (JSON lines), continued on resume: lines past the resumed step are dropped first."""

    def __init__(self, path: Path, step: int, tensorboard: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            keep = [line for line in self.path.read_text().splitlines() if _curve_step(line) <= step]
            text = "".join(line + "\n" for line in keep).encode("utf-8")
            write_atomic(self.path, lambda f: f.write(text), tmp=self.path.with_suffix(".tmp"))
        try:
            self.f = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            err = write_error(self.path, e)
            if err is None:  # not the disk: a bug, as it was
                raise
            raise err from e
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # optional: the curve file is the record
                print(f"run.tensorboard: not written ({e})", file=sys.stderr)
            else:
                self.tb = SummaryWriter(str(self.path.with_suffix(".tb")), purge_step=step + 1)

    def write(self, step: int, loss: float, lr: float, wall_s: float) -> None:
        try:
            self.f.write(json.dumps({"step": step, "loss": loss, "lr": lr, "wall_s": round(wall_s, 3)}) + "\n")
            self.f.flush()
        except OSError as e:  # a full disk: the file named, not a bare "[Errno 28]"
            err = write_error(self.path, e)
            if err is None:  # not the disk: a bug, as it was
                raise
            raise err from e
        if self.tb is not None:
            self.tb.add_scalar("loss", loss, step)
            self.tb.add_scalar("lr", lr, step)

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()

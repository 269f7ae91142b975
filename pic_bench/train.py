"""One PIC training run: config -> window order -> loader -> model -> pic loss -> backward -> weight update
-> meters -> result row.

    python -m pic_bench.run ablations/components.yaml small     # runs cells through this module

State lives in three places: the network (with its optimizer), the instance classifier (w and its momentum u)
and the scheduler position (the global step). All three, the RNG states and the meters go into a checkpoint;
the recent-negatives ring is rebuilt from the scheduler on resume.
"""
from __future__ import annotations

import math
import os
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import distributed, head
from .config import Config, ConfigError
from .data import Batch
from .data.loaders import build_loader
from .data.sources import Source, load_source
from .evaluate import evaluate_model, evaluate_pixels
from .loss import pic_logits, pic_loss
from .model import PICModel
from .negatives import RecentNegatives
from .update import update_rows
from .window import make_schedule


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


def lr_schedule(base: float, steps: int, warmup: int) -> np.ndarray:
    """Linear warm-up then cosine decay to 0, indexed by the global step (length ``steps``)."""
    warmup = min(warmup, steps)
    warm = np.linspace(base / max(warmup, 1), base, warmup) if warmup else np.empty(0)
    t = np.arange(steps - warmup)
    cos = 0.5 * base * (1 + np.cos(np.pi * t / max(steps - warmup, 1)))
    sched = np.concatenate([warm, cos])
    assert len(sched) == steps, (len(sched), steps)
    return sched


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but no CUDA device is available")
    return torch.device(name)


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
        # --- device and seeds
        self.device = resolve_device(cfg.run.device)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        if cfg.run.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_everything(cfg.run.seed)
        # --- data: the source, the window order, the loader
        self.source = source or load_source(cfg.data, cfg.run.seed)
        self.N = self.source.N
        self.derived = derive(cfg, self.N)
        self.schedule = make_schedule(p.scheduler, self.N, p.D, p.S, cfg.run.seed, p.official_shuffle)
        self.loader = build_loader(cfg, self.source, self.schedule)
        self.derived["loader"] = self.loader.name  # which loader ran, for the result row
        # --- model and its optimizer
        self.model = PICModel(cfg.model, self.source.channels).to(self.device)
        # --- data parallel across ranks (a no-op in one process; how PIC is split: see distributed.py)
        self.dist = distributed.current()
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
        self.lr = lr_schedule(self.derived["lr"], self.derived["steps"], self.derived["warmup_steps"])
        self.step = 0
        self.meters = Meters()

    # ---- checkpoint: network + optimizer, classifier, scheduler position, RNG states, meters
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "model": self.model.state_dict(), "opt": self.opt.state_dict(),
            "w": self.w, "u": self.u, "meters": self.meters.__dict__, "U_meters": self.negatives.U_meters(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None},
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.step = int(sd["step"])
        self.model.load_state_dict(sd["model"])
        self.opt.load_state_dict(sd["opt"])
        self.w.copy_(sd["w"])
        self.u.copy_(sd["u"])
        self.meters = Meters(**sd["meters"])
        torch.set_rng_state(sd["rng"]["torch"])
        np.random.set_state(sd["rng"]["numpy"])
        random.setstate(sd["rng"]["python"])
        if sd["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state_all(sd["rng"]["cuda"])
        self.negatives.refill(self.schedule, self.step * self.cfg.optim.batch_size)
        if "U_meters" in sd:
            self.negatives.load_U_meters(sd["U_meters"])

    def save(self, path: Path) -> None:
        if not self.dist.is_main:  # ranks hold identical state; rank 0 writes it
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)  # atomic: a kill mid-save leaves the previous checkpoint intact

    def load(self, path: Path) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))

    # ---- one step, in the paper's order
    def train_step(self, batch: Batch) -> float:
        cfg, p = self.cfg, self.cfg.pic
        lr = float(self.lr[self.step])
        for group in self.opt.param_groups:
            group["lr"] = lr
        U, target = self.negatives.select(batch.index)  # (|U|,), (B,)
        cosine = p.softmax == "cosine"
        lo, hi = self.dist.shard(target.numel())  # this rank's rows of the global batch (all of them in one process)
        # --- fast head (pic_bench.head): same loss, gradients and update as the plain path below, computed in
        # closed form with one gather of w[U] (rows) that the update reuses. Small views do not train w.
        if p.fast_head:
            rows = head.gather(self.w, U, cosine, self.head_ws)
            zs = [self.model(x[lo:hi]) for x in [*batch.views, *batch.small_views]]
            loss, grads_z, dwn = head.views_loss_and_grads(zs, len(batch.views), rows, target[lo:hi], p.tau,
                                                           cosine, self.head_ws)
            value = self.dist.mean(float(loss))
            if not math.isfinite(value):
                raise NonFiniteLoss(f"non-finite loss {value} at step {self.step} (lr {lr:.4g})")
            self.opt.zero_grad(set_to_none=True)
            torch.autograd.backward(zs, grads_z)
            rows.wn.grad = dwn  # dL/dwn, averaged over ranks with the backbone's gradients
            self.dist.average_gradients([*self.model.parameters(), rows.wn])
            self.opt.step()
            head.update(self.w, self.u, rows, dwn, lr, cfg.optim.momentum, cfg.optim.weight_decay, p.correction,
                        self.head_ws)
            return value
        # --- plain path (the reference)
        w_U = (self.w if U.numel() == self.N else self.w.index_select(0, U)).detach().float().requires_grad_()
        losses = [pic_loss(self.model(x[lo:hi]), w_U, target[lo:hi], p.tau, cosine) for x in batch.views]
        for x in batch.small_views:  # multi-crop small views train the network only (w detached, as official)
            losses.append(torch.nn.functional.cross_entropy(
                pic_logits(self.model(x[lo:hi]), w_U.detach(), p.tau, cosine), target[lo:hi]))
        loss = torch.stack(losses).mean()
        value = self.dist.mean(float(loss.detach()))  # the global batch's loss, the same on every rank
        if not math.isfinite(value):
            raise NonFiniteLoss(f"non-finite loss {value} at step {self.step} (lr {lr:.4g})")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients([*self.model.parameters(), w_U])  # -> gradient of the global-batch loss
        self.opt.step()
        update_rows(self.w, self.u, U, w_U.grad, lr, cfg.optim.momentum, cfg.optim.weight_decay, p.correction)
        return value

    def train(self, should_stop: Callable[[], bool] = lambda: False, checkpoint: Path | None = None,
              progress: Callable[[int, int, float], None] | None = None) -> dict[str, float]:
        steps = self.derived["steps"]
        every = self.cfg.run.checkpoint_every
        start_wall = time.perf_counter()
        it = self.loader.iterate(self.step, steps)
        t_wait = time.perf_counter()
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        try:
            while self.step < steps:
                if self.dist.agree(should_stop()):  # every rank stops at the same step
                    if checkpoint is not None:
                        self.meters.wall_s += time.perf_counter() - start_wall
                        self.save(checkpoint)
                    raise Preempted(f"stopped at step {self.step}")
                batch = next(it).to(self.device)
                t0 = time.perf_counter()
                value = self.train_step(batch)
                sync()
                t1 = time.perf_counter()
                self.meters.step_ms.append((t1 - t0) * 1e3)
                self.meters.wait_ms.append((t0 - t_wait) * 1e3)
                self.meters.losses.append(value)
                self.meters.skipped += batch.skipped
                self.step += 1
                if progress:
                    progress(self.step, steps, value)
                if every and checkpoint is not None and self.step % every == 0 and self.step < steps:
                    self.meters.wall_s += time.perf_counter() - start_wall
                    start_wall = time.perf_counter()
                    self.save(checkpoint)
                t_wait = time.perf_counter()
        finally:
            close = getattr(it, "close", None)
            if close:
                close()
        self.meters.wall_s += time.perf_counter() - start_wall
        return {**self.meters.summary(self.cfg.optim.batch_size), **self.negatives.U_summary()}

    def evaluate(self) -> dict[str, float]:
        return evaluate_model(self.model, self.source, self.cfg.data.image_size, self.cfg.eval, self.device,
                              self.cfg.run.seed, self.cfg.data.on_bad_image)


def baseline_metrics(cfg: Config, kind: str, source: Source | None = None) -> tuple[dict[str, float], dict]:
    """The two baselines under the run's evaluation protocol: 'random' (untrained network) or 'pixels'."""
    source = source or load_source(cfg.data, cfg.run.seed)
    t0 = time.perf_counter()
    if kind == "pixels":
        m = evaluate_pixels(source, cfg.data.image_size, cfg.eval, cfg.run.seed, cfg.data.on_bad_image)
    else:
        device = resolve_device(cfg.run.device)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        seed_everything(cfg.run.seed)
        model = PICModel(cfg.model, source.channels).to(device)
        m = evaluate_model(model, source, cfg.data.image_size, cfg.eval, device, cfg.run.seed, cfg.data.on_bad_image)
    m["eval_wall_s"] = time.perf_counter() - t0
    return m, {"N": source.N, "index_digest": source.index_digest}

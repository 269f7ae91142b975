"""One task of an ablation (a sweep cell at one seed) and how it runs in this process.

``Task`` is what ``run.expand`` produces and what ``launch`` pickles into a SLURM array task; ``run_task`` trains
and evaluates one task and appends its row; ``run_local`` runs a list of tasks one after another. This module sits
below both ``run`` (the command line) and ``launch`` (SLURM), so neither has to import the other.
"""
from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import Config, config_hash
from .results import DEFAULT_RESULTS, append_row, has_row, make_row


@dataclass(frozen=True)
class Task:
    """One array task: a cell of an ablation at one seed (picklable, for submitit)."""

    ablation: str
    preset: str
    cell: dict[str, Any]
    cfg: Config
    kind: str = "pic"  # pic | baseline_random | baseline_pixels
    results_dir: str = str(DEFAULT_RESULTS)
    checkpoint_dir: str = "checkpoints"

    @property
    def name(self) -> str:
        return f"{self.ablation}/{self.kind}/{self.preset}/{config_hash(self.cfg)}/s{self.cfg.run.seed}"

    @property
    def checkpoint(self) -> Path:
        return Path(self.checkpoint_dir) / self.ablation / self.preset / f"{config_hash(self.cfg)}-s{self.cfg.run.seed}.pt"

    def done(self) -> bool:
        return has_row(Path(self.results_dir), self.ablation, self.kind, self.preset, config_hash(self.cfg),
                       self.cfg.run.seed)


def run_task(task: Task, should_stop: Callable[[], bool] = lambda: False,
             progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Runs one task in this process and appends its row (ok or failed). Returns the row.

    Resumes from the task's checkpoint if one exists; ``should_stop`` (preemption) saves one and raises
    ``train.Preempted``. A failure (non-finite loss, bad image, ...) writes a row marked failed and re-raises.
    """
    from .train import NonFiniteLoss, Preempted, Trainer, baseline_metrics

    cfg = task.cfg
    if task.kind != "pic":
        metrics, derived = baseline_metrics(cfg, task.kind.removeprefix("baseline_"))
        row = make_row(task.ablation, task.preset, task.cell, cfg, "ok", metrics, derived, cfg.run.device
                       if cfg.run.device != "auto" else "cpu", kind=task.kind)
        append_row(row, Path(task.results_dir))
        return row
    from .train import reset_peak_memory, resolve_device

    reset_peak_memory(resolve_device(cfg.run.device))
    trainer = Trainer(cfg)
    derived = {**trainer.derived, "index_digest": trainer.source.index_digest}
    ckpt = task.checkpoint
    if ckpt.is_file():
        trainer.load(ckpt)
        derived["resumed_from_step"] = trainer.step
    try:
        metrics = trainer.train(should_stop=should_stop, checkpoint=ckpt, progress=progress)
        t0 = time.perf_counter()
        metrics.update(trainer.evaluate())
        metrics["eval_wall_s"] = time.perf_counter() - t0
        from .train import peak_memory_mib

        metrics["peak_mem_mib"] = peak_memory_mib(trainer.device)
        metrics["peak_mem_kind"] = "cuda_max_allocated" if trainer.device.type == "cuda" else "cpu_peak_rss"
        row = make_row(task.ablation, task.preset, task.cell, cfg, "ok", metrics, derived, trainer.device)
    except Preempted:
        raise
    except NonFiniteLoss as e:
        trainer.save(ckpt.with_name(ckpt.stem + "-failed.pt"))
        row = make_row(task.ablation, task.preset, task.cell, cfg, "failed",
                       trainer.meters.summary(cfg.optim.batch_size), derived, trainer.device, error=str(e))
        append_row(row, Path(task.results_dir))
        raise
    except Exception as e:  # noqa: BLE001 - any failure is recorded before it propagates
        row = make_row(task.ablation, task.preset, task.cell, cfg, "failed", {}, derived, trainer.device,
                       error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
        append_row(row, Path(task.results_dir))
        raise
    append_row(row, Path(task.results_dir))
    if ckpt.is_file():
        ckpt.unlink()
    return row


def run_local(tasks: list[Task], quiet: bool = False) -> list[dict[str, Any]]:
    """Runs tasks one after another in this process, with a progress bar."""
    from tqdm import tqdm

    rows = []
    todo = [t for t in tasks if not t.done()]
    if len(todo) < len(tasks):
        print(f"skipping {len(tasks) - len(todo)} task(s) whose row already exists", file=sys.stderr)
    for i, task in enumerate(todo, 1):
        bar = tqdm(total=1, desc=f"[{i}/{len(todo)}] {task.kind} {task.cell or 'default'} s{task.cfg.run.seed}",
                   disable=quiet, leave=False, file=sys.stderr, mininterval=1.0)

        def progress(step, steps, loss, bar=bar):
            bar.total = steps
            bar.n = step
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.refresh() if step == steps or step % 10 == 0 else None

        try:
            rows.append(run_task(task, progress=progress))
        finally:
            bar.close()
        r = rows[-1]["metrics"]
        print(f"[{i}/{len(todo)}] {task.kind} {task.cell} seed {task.cfg.run.seed}: "
              + ", ".join(f"{k} {r[k]:.2f}" for k in ("knn_top1", "linear_top1", "step_ms_median") if k in r),
              file=sys.stderr)
    return rows

"""Runs an ablation: every sweep cell x seed, one result row each, then prints the regenerated table.

    python -m pic_bench.run ablations/negatives_k.yaml small            # 2-core CPU, Fashion-MNIST subset
    python -m pic_bench.run ablations/negatives_k.yaml smoke pic.K=128  # key=value overrides after the preset
    python -m pic_bench.run ablations/components.yaml paper --executor slurm --cluster slurm/cluster.yaml

Cells whose row already exists (same ablation, preset, config hash and seed, status ok) are skipped, so running
the same command again only runs what is missing or failed.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import PRESETS, Ablation, Config, ConfigError, apply, config_hash, load_ablation, parse_cli_overrides
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


def expand(abl: Ablation, preset: str, cli: dict[str, Any], results_dir: str, checkpoint_dir: str = "checkpoints",
           baselines: bool = True) -> list[Task]:
    """Every task of an ablation: cells x seeds, plus the baselines of the default cell (one per seed)."""
    tasks = []
    cells = abl.resolve(preset, cli)
    for seed in abl.seeds:
        for cell, cfg in cells:
            cfg = apply(cfg, {"run.seed": seed}, "seeds")
            tasks.append(Task(abl.name, preset, cell, cfg, "pic", results_dir, checkpoint_dir))
    if baselines and cells and cells[0][1].eval.baselines:
        default = next((c for c in cells if all(c[0].get(k) == v for k, v in abl.default_cell.items())), cells[0])
        for seed in abl.seeds:
            cfg = apply(default[1], {"run.seed": seed}, "seeds")
            for kind in ("baseline_random", "baseline_pixels"):
                if kind == "baseline_pixels" and seed != abl.seeds[0]:
                    continue  # raw pixels do not depend on the seed (the probe's init aside)
                tasks.append(Task(abl.name, preset, default[0], cfg, kind, results_dir, checkpoint_dir))
    return tasks


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
        metrics["eval_wall_s"] = time.perf_counter() - t0  # peak_mem_*: the training loop's, from train()
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pic_bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("ablation", help="ablation file, e.g. ablations/negatives_k.yaml")
    ap.add_argument("rest", nargs="*", help=f"[preset: {' | '.join(PRESETS)}] [key=value ...]")
    ap.add_argument("--results", default=str(DEFAULT_RESULTS), help="results folder (default: results)")
    ap.add_argument("--checkpoints", default="checkpoints", help="checkpoint folder (default: checkpoints)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds, replacing the file's seeds")
    ap.add_argument("--no-baselines", action="store_true", help="skip the random-network and raw-pixel rows")
    ap.add_argument("--executor", default="local", choices=["local", "slurm", "auto"],
                    help="local (in-process), slurm (submitit job array) or auto (slurm when sbatch is on PATH)")
    ap.add_argument("--cluster", default="slurm/cluster.yaml", help="cluster resources file for --executor slurm")
    ap.add_argument("--slurm", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="with slurm: override cluster-file keys, e.g. --slurm time_min=30 partition=gpu")
    ap.add_argument("--wait", action="store_true", help="with slurm: block until every task has finished")
    ap.add_argument("--dry-run", action="store_true", help="list the tasks and exit")
    ap.add_argument("-q", "--quiet", action="store_true")
    args, extra = ap.parse_known_args(argv)
    rest = list(args.rest) + extra
    preset = "small"
    if rest and "=" not in rest[0]:
        preset = rest.pop(0)
    try:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset '{preset}' (known: {list(PRESETS)})")
        abl = load_ablation(args.ablation).for_preset(preset)
        if args.seeds:
            import dataclasses

            abl = dataclasses.replace(abl, seeds=[int(s) for s in args.seeds.split(",")])
        cli = parse_cli_overrides(rest)
        tasks = expand(abl, preset, cli, args.results, args.checkpoints, baselines=not args.no_baselines)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if abl.kind == "analysis":
        from . import analysis

        return analysis.run(abl, preset, cli, Path(args.results))
    if args.dry_run:
        for t in tasks:
            print(t.name, t.cell, "done" if t.done() else "todo")
        return 0
    executor = args.executor
    if executor == "auto":
        import shutil

        executor = "slurm" if shutil.which("sbatch") else "local"
    if executor == "slurm":
        from . import launch

        return launch.submit(tasks, args.cluster, wait=args.wait, results_dir=Path(args.results),
                             overrides=args.slurm, quiet=args.quiet)
    run_local(tasks, quiet=args.quiet)
    from .tables import build_table

    print(build_table(abl.name, Path(args.results), preset=preset, write=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

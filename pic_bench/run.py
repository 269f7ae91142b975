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
from pathlib import Path
from typing import Any

from .config import PRESETS, Ablation, ConfigError, apply, load_ablation, parse_cli_overrides
from .results import DEFAULT_RESULTS
from .tasks import Task, run_local, run_task  # noqa: F401 - run_task re-exported for callers of run.run_task


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
    ap.add_argument("--fail-fast", action="store_true", help="local: stop at the first failed task")
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
    code = run_local(tasks, quiet=args.quiet, fail_fast=args.fail_fast)
    from .tables import build_table

    print(build_table(abl.name, Path(args.results), preset=preset, write=True))
    return code


if __name__ == "__main__":
    sys.exit(main())

"""Runs an ablation: every sweep cell x seed, one result row each, then prints the regenerated table.

    python -m pic_bench.run ablations/negatives_k.yaml scale            # the scale model: 2-core CPU, 5 sweeps
    python -m pic_bench.run ablations/negatives_k.yaml small            # the fast preset (5 epochs, 0.63 sweeps)
    python -m pic_bench.run ablations/negatives_k.yaml smoke pic.K=128  # only the cell K = 128
    python -m pic_bench.run ablations/negatives_k.yaml small pic.K=128,512 pic.tau=0.1 --results runs/mine
    python -m pic_bench.run ablations/components.yaml paper --executor slurm --cluster slurm/cluster.yaml

key=value overrides come after the preset. A key the ablation sweeps narrows the sweep to the given values (a
value outside it runs as its own cell, labelled with it; ``a,b`` gives several, Hydra's multirun spelling); any
other key applies to every cell. Seeds come from ``--seeds``, never ``run.seed=``. Everything is validated
(ranges, the data, the device, K against the preset's batch, counts and kNN k against the data, the
output folders) before
the first step or the first sbatch;
``--dry-run`` does only that and lists the tasks.

Cells whose row already exists (same ablation, preset, config hash and seed, status ok) are skipped, so running
the same command again only runs what is missing or failed. ``--results`` defaults to the committed rows, so a
fresh clone trains nothing and says so; run into a fresh folder (``--results runs/mine``) to reproduce them, and
the run ends by comparing its means with the committed ones (``pic_bench.report.compare``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from ..report import compare
from ..config import (PRESETS, Ablation, Config, ConfigError, apply, cell_label, check_output_dirs, config_hash,
                     load_ablation, parse_cli_overrides, parse_seeds, plain_sections)
from ..files import WriteError
from ..report.results import (DEFAULT_RESULTS, append_row, has_row, problem_notes, rows_file, share_sources,
                              shared_row)
from ..data.sources import DatasetError
from .tasks import Task, run_local, run_task  # noqa: F401 - run_task re-exported for callers of run.run_task


def expand(abl: Ablation, preset: str, cli: dict[str, Any], results_dir: str, checkpoint_dir: str = "checkpoints",
           baselines: bool = True) -> list[Task]:
    """Every task of an ablation: cells x seeds, plus the baselines of the default cell (one per seed).

    Command-line values of swept keys narrow the cells (``Ablation.narrowed``) and cells of one config run once
    (``Ablation.merged``), so every task's cell says what it runs."""
    tasks = []
    abl, cli = abl.narrowed(preset, cli)
    abl, _ = abl.merged(preset, cli)
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


SLURM_HELP = ("with slurm: cluster-file keys, e.g. --slurm time_min=30 partition=gpu. Only undotted keys go to "
              "the cluster; a dotted key=value (section.key=value, e.g. pic.K=128) after --slurm still goes to the "
              "config")


def split_slurm(items: list[str]) -> tuple[list[str], list[str]]:
    """--slurm's items -> (cluster items, config items): dotted keys and bare words are the experiment's."""
    cluster, config = [], []
    for item in items:
        key = item.split("=", 1)[0]
        (config if "=" not in item or "." in key else cluster).append(item)
    return cluster, config


# Training instances of the in-memory datasets, for the "same run" check (digits: 1797 images less 360 held out
# for testing, see data/sources.py; an image folder is not listed before the run, so it is not checked).
DATASET_TRAIN_SIZE = {"digits": 1437, "fashion_mnist": 60000}


def instances(cfg: Config) -> int | None:
    """N, the number of training instances the run will use, where it is known without reading the data."""
    n = cfg.data.num_instances
    if cfg.data.dataset == "synthetic":
        return n or 1024
    total = DATASET_TRAIN_SIZE.get(cfg.data.dataset)
    if total is None:
        return None
    return min(n, total) if n > 0 else total


def same_run_warnings(cells: list[tuple[dict[str, Any], Config]]) -> list[str]:
    """Cells that are different configs but the same run in effect: recent-K with K at least every sample the run
    draws (the ring never drops one), e.g. smoke's N = 256 for one epoch: K = 512 and K = 2048 hold the same set."""
    from ..pic.train import derive

    groups: dict[str, list[str]] = {}
    at: dict[str, int] = {}
    for cell, cfg in cells:
        N = instances(cfg)
        if N is None or cfg.pic.K == 0:
            continue
        samples = derive(cfg, N)["steps"] * cfg.optim.batch_size
        same = apply(cfg, {"pic.K": min(cfg.pic.K, samples)}, "same run")
        key = json.dumps(plain_sections(same), sort_keys=True)  # to_dict's content, without its deep copy
        groups.setdefault(key, []).append(f"'{cell_label(cell)}'")
        at[key] = N
    out = []
    for key, labels in groups.items():
        if len(labels) > 1:
            names = ", ".join(labels[:-1]) + " and " + labels[-1]
            out.append(f"cells {names} are the same run at N={at[key]} (each K is at least every sample the run "
                       "draws, so every instance seen so far is a negative)")
    return out


def check_device(cfg: Config, src: Callable[[str], str]) -> None:
    """run.device=cuda needs a GPU on this machine (ConfigError otherwise); not checked for SLURM jobs, whose GPU
    is on their node."""
    if cfg.run.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"{src('run.device')}: run.device=cuda but no CUDA GPU is available here "
                              "(torch.cuda.is_available() is False); use run.device=cpu or auto")


def check_data(cfg: Config, src: Callable[[str], str]) -> None:
    """The data exists and suits the loader, before any work (ConfigError otherwise).

    Nothing is read or written beyond listing a folder's top level: an image folder's file list is checked by
    the run itself."""
    import importlib.util

    d = cfg.data
    if d.loader == "batched" and d.dataset == "imagefolder":
        raise ConfigError(f"{src('data.loader')}: data.loader=batched needs an in-memory dataset (fashion_mnist, "
                          f"digits, synthetic), but data.dataset=imagefolder (from {src('data.dataset')}); use "
                          "data.loader=torchvision or dali for an image folder")
    if d.loader == "dali" and importlib.util.find_spec("nvidia.dali") is None:
        raise ConfigError(f"{src('data.loader')}: data.loader=dali but nvidia.dali is not installed "
                          "(pip install nvidia-dali-cuda120, or data.loader=torchvision)")
    if d.dataset == "imagefolder":
        layout = "an ImageNet-style folder with train/<class>/<image> and val/<class>/<image>"
        if not d.root:
            raise ConfigError(f"{src('data.dataset')}: data.dataset=imagefolder needs data.root=<folder>, {layout}; "
                              "data.root is not set (give it on the command line: data.root=/path/to/folder)")
        root = Path(d.root)
        if not root.is_dir():
            raise ConfigError(f"{src('data.root')}: data.root={d.root}: image folder not found (need {layout})")
        train = root / "train" if (root / "train").is_dir() else root
        if not any(e.is_dir() for e in os.scandir(train)):
            raise ConfigError(f"{src('data.root')}: data.root={d.root}: no class folders in {train} (need {layout})")
    elif d.dataset == "fashion_mnist":
        from ..data.sources import DatasetError, _find_fashion_mnist

        try:
            _find_fashion_mnist(d.root)
        except DatasetError as e:
            key = "data.root" if d.root else "data.dataset"
            raise ConfigError(f"{src(key)}: {key}={getattr(d, key.split('.')[1])}: {e}") from None
    elif d.dataset == "digits" and importlib.util.find_spec("sklearn") is None:
        raise ConfigError(f"{src('data.dataset')}: data.dataset=digits needs scikit-learn: pip install scikit-learn")


def check_outputs(results: str | Path, checkpoints: str | Path | None, ablation: str) -> None:
    """Every folder and file the run writes is writable (or creatable) before any work, in the dry run too
    (ConfigError naming the flag and the path): --results and its rows/, curves/, tables/, the ablation's rows
    file, and --checkpoints (None: not used, as by an analysis)."""
    results = Path(results)
    dirs = [("--results", results), *(("--results", results / sub) for sub in ("rows", "curves", "tables"))]
    if checkpoints is not None:
        dirs.append(("--checkpoints", Path(checkpoints)))
    check_output_dirs(*dirs)
    rows = rows_file(results, ablation)
    if rows.exists() and not (rows.is_file() and os.access(rows, os.W_OK)):
        raise ConfigError(f"--results {results}: {rows} is not a writable file (its rows are appended there)")


def check_data_sizes(cells: list[tuple[dict[str, Any], Config]], src_of: Callable[..., str]) -> None:
    """Counts the data must hold, from the data itself (as the task's identity reads it), refused rather than
    clamped in silence while the row records the asked-for value: data.num_instances at most the training images,
    data.test_size at most the evaluation split's images (unless the split is the training set), and eval.knn_k
    at most the kNN bank, the N training images the evaluation embeds."""
    from .tasks import data_sizes

    for cell, cfg in cells:
        N, test, _ = data_sizes(cfg)
        d = cfg.data
        if d.num_instances > N:  # a subset of n >= the images is all of them (sources._subset)
            raise ConfigError(f"{src_of('data.num_instances', cell)}: data.num_instances={d.num_instances} is more "
                              f"than the {N} training images of data.dataset={d.dataset}"
                              f"{' at ' + d.root if d.root else ''} (0 = all)")
        if d.test_size > test and not (d.dataset == "imagefolder" and d.eval_split == "train"):
            raise ConfigError(f"{src_of('data.test_size', cell)}: data.test_size={d.test_size} is more than the "
                              f"{test} images of the evaluation split of data.dataset={d.dataset}"
                              f"{' at ' + d.root if d.root else ''} (0 = all)")
        if cfg.eval.knn_k > N:
            raise ConfigError(f"{src_of('eval.knn_k', cell)}: eval.knn_k={cfg.eval.knn_k} must be at most the kNN "
                              f"bank, the N={N} training images of data.dataset={cfg.data.dataset}")


def analysis_points(abl: Ablation, preset: str, cli: dict[str, Any]):
    """(name, cell, kind, config) of every point an analysis ablation measures, without measuring it."""
    from . import analysis

    # The same dispatch as analysis.run, by the file's name.
    if abl.name.startswith("visit_distance"):
        measure = analysis.visit_cell
    elif abl.name.startswith("scaling"):
        measure = analysis.scaling_cells
    else:
        raise ConfigError(f"{abl.path}: no analysis is named '{abl.name}' (visit_distance* | scaling*)")
    for seed in abl.seeds:
        for cell, cfg in abl.resolve(preset, cli):
            cfg = apply(cfg, {"run.seed": seed}, "seeds")
            try:
                points = list(measure(cell, cfg))
            except ValueError as e:
                raise ConfigError(f"{abl.source('data.num_instances', preset, cell, cli)}: {e}") from None
            for point_cell, point_cfg, kind, _ in points:
                yield f"{abl.name}/{kind}/{preset}/{config_hash(point_cfg)}/s{seed}", point_cell, kind, point_cfg


def plumbing_note(cfg: Config) -> str:
    n = instances(cfg)
    images = f"{n} images" if n is not None else f"at most {cfg.data.num_instances} images"
    return (f"note: the smoke preset is a plumbing check ({images} at {cfg.data.image_size} px: numbers mean "
            "nothing); use scale (the scale model of the paper) or paper for results")


def dry_run_resources(tasks: list[Task], executor: str, cluster=None, results_dir=None) -> dict[str, str]:
    """Task name -> what it runs on, for the dry run's plan: this process's device with the local executor; with
    SLURM (``cluster``: a ``launch.ClusterConfig``) the array task(s) it would be submitted as and their
    resources, e.g. "SLURM train task (1 node x 4 tasks, 4 GPU/node, ...: its segments, checkpoint count and
    bytes), then eval task (...)"."""
    if executor != "local":
        if cluster is None:
            return {}
        from . import launch

        return {t.name: launch.plan_resources(cluster, t, results_dir) for t in tasks}
    from ..report.results import device_name
    from ..pic.train import resolve_device

    return {t.name: f"this process ({device_name(resolve_device(t.cfg.run.device))})" for t in tasks}


def share_note(src: dict[str, Any]) -> str:
    """What a shared task takes: the row of which ablation, cell and seed, run when and at which commit."""
    return (f"runs nothing; takes the row of {src['ablation']} cell {cell_label(src.get('cell') or {})} seed "
            f"{src['seed']} (the same experiment: its config differs at most in eval.baselines), run "
            f"{src.get('time', '?')} at {str(src.get('git_sha') or '?')[:8]}; --no-share runs it instead")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pic_bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("ablation", help="ablation file, e.g. ablations/negatives_k.yaml")
    ap.add_argument("rest", nargs="*", help=f"[preset: {' | '.join(PRESETS)}] [key=value ...]; a swept key narrows "
                                            "the sweep (pic.K=128, or pic.K=128,512 for several)")
    ap.add_argument("--results", default=str(DEFAULT_RESULTS),
                    help="results folder (default: results, the committed rows: cells with a row there are "
                         "skipped; use a fresh folder, e.g. --results runs/mine, to reproduce them)")
    ap.add_argument("--checkpoints", default="checkpoints", help="checkpoint folder (default: checkpoints)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds, replacing the file's seeds")
    ap.add_argument("--no-baselines", action="store_true", help="skip the random-network and raw-pixel rows")
    ap.add_argument("--no-share", action="store_true",
                    help="run every task, even one whose experiment another ablation's row under --results has "
                         "already run (by default that row is shared: same kind, preset, seed, data and a config "
                         "differing only in eval.baselines; the shared row says so in `shared_from`)")
    ap.add_argument("--executor", default="local", choices=["local", "slurm", "auto"],
                    help="local (in-process), slurm (submitit job array) or auto (slurm when sbatch is on PATH)")
    ap.add_argument("--cluster", default="slurm/cluster.yaml", help="cluster resources file for --executor slurm")
    ap.add_argument("--slurm", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help=SLURM_HELP)
    ap.add_argument("--wait", action="store_true", help="with slurm: block until every task has finished")
    ap.add_argument("--dry-run", action="store_true",
                    help="validate everything and list the tasks (done / todo / shared); runs and writes nothing")
    ap.add_argument("--fail-fast", action="store_true", help="local: stop at the first failed task")
    ap.add_argument("-q", "--quiet", action="store_true")
    args, extra = ap.parse_known_args(argv)
    slurm_items, config_items = split_slurm(args.slurm)
    rest = list(args.rest) + extra + config_items
    bare = [x for x in rest if "=" not in x]
    preset = bare[0] if bare else "small"
    if bare:
        rest.remove(preset)
    executor = args.executor
    if executor == "auto":
        import shutil

        executor = "slurm" if shutil.which("sbatch") else "local"
    try:
        if len(bare) > 1:
            raise ConfigError(f"command line: '{bare[1]}' is not key=value (the preset, '{preset}', comes first)")
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset '{preset}' (known: {list(PRESETS)})")
        abl = load_ablation(args.ablation).for_preset(preset)
        check_outputs(args.results, args.checkpoints if abl.kind == "train" else None, abl.name)
        if args.seeds is not None:
            abl = dataclasses.replace(abl, seeds=parse_seeds(args.seeds))
        abl, cli = abl.narrowed(preset, parse_cli_overrides(rest))
        abl, merged = abl.merged(preset, cli)
        for w in merged:
            print(f"warning: {w}", file=sys.stderr)
        # One validation before any work: ranges and cross-field checks of every cell (in resolve), then the
        # data and the device of every distinct setting.
        cells = abl.resolve(preset, cli)
        checked = set()
        for cell, cfg in cells:
            key = (cfg.data, cfg.run.device)
            if key not in checked:
                checked.add(key)
                src = (lambda k, cell=cell: abl.source(k, preset, cell, cli))
                if executor == "local":
                    check_device(cfg, src)
                if abl.kind == "train":  # analyses read no data
                    check_data(cfg, src)
        if abl.kind == "train":
            for w in same_run_warnings(cells):
                print(f"warning: {w}", file=sys.stderr)
            tasks = expand(abl, preset, cli, args.results, args.checkpoints, baselines=not args.no_baselines)
            for t in tasks:  # each task's identity names its data: read it now, not after the first step
                t.key
            for line in problem_notes(Path(args.results), abl.name, {t.key for t in tasks}):
                print(f"warning: {line}", file=sys.stderr)  # lines of the rows file that are not rows: named
            check_data_sizes(cells, lambda k, cell: abl.source(k, preset, cell, cli))
            shares = {} if args.no_share else share_sources(Path(args.results), tasks)
            listing = []
            if args.dry_run:
                from . import plan

                cluster = None
                if executor == "slurm":  # the cluster settings too, as submission would check them (sinfo, time)
                    from . import launch

                    cluster = launch.load_cluster(args.cluster, launch.parse_overrides(slurm_items))
                    launch.validate(cluster, tasks, Path(args.results), where=args.cluster)
                resources = dry_run_resources(tasks, executor, cluster, Path(args.results))
                # a SLURM task evaluates on its node: on a GPU there when its array asks for one
                devices = {t.name: launch.eval_device(cluster, t) for t in tasks} if cluster else {}
                listing = [(t.name, t.cell, "shared" if t.key in shares else t.done(),
                            share_note(shares[t.key]) if t.key in shares else
                            plan.describe(t, args.results, resources.get(t.name), devices.get(t.name)))
                           for t in tasks]
        else:
            results = Path(args.results)
            listing = [(name, cell, has_row(results, abl.name, kind, preset, config_hash(cfg), cfg.run.seed), None)
                       for name, cell, kind, cfg in analysis_points(abl, preset, cli)] if args.dry_run else []
    except (ConfigError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        if abl.kind == "train":
            from .data_note import data_lines

            for line in data_lines(tasks, args.results):
                print(line)
        for name, cell, done, described in listing:
            print(name, cell, done if isinstance(done, str) else "done" if done else "todo")
            if described:  # the plan on a line of its own: the task line stays "name cell done|todo|shared"
                print("   ", described)
        return 0
    smoke = preset == "smoke" and abl.kind == "train"
    if smoke:
        print(plumbing_note(cells[0][1]), file=sys.stderr)
    if abl.kind == "analysis":
        from . import analysis

        return analysis.run(abl, preset, cli, Path(args.results))
    try:
        for t in tasks:
            if t.key in shares and append_row(shared_row(shares[t.key], t), Path(args.results)):
                print(f"shared: {t.name} {t.cell or 'default'}: {share_note(shares[t.key])}", file=sys.stderr)
    except WriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if executor == "slurm":
        from . import launch

        return launch.submit(tasks, args.cluster, wait=args.wait, results_dir=Path(args.results),
                             overrides=slurm_items, quiet=args.quiet)
    if tasks and all(t.done() for t in tasks):
        print(f"nothing to train: every one of the {len(tasks)} task(s) already has a row in "
              f"{rows_file(Path(args.results), abl.name)}. To reproduce them, run the same command into a fresh "
              "folder, e.g. --results runs/mine; it ends by comparing your numbers with these.", file=sys.stderr)

    try:
        code = run_local(tasks, quiet=args.quiet, fail_fast=args.fail_fast)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from ..report.tables import build_table

    # the file itself, not its name: a file outside ablations/ still gives its default cell and Δ
    try:
        print(build_table(Path(abl.path), Path(args.results), preset=preset, write=True))
    except OSError as e:  # a full or read-only results folder: the rows are kept; the table is not written
        print(f"error: the table of {abl.name} could not be written: {e}", file=sys.stderr)
        return 1
    if Path(args.results).resolve() != Path(compare.COMMITTED).resolve():
        keys = {(t.kind, t.preset, config_hash(t.cfg), t.cfg.run.seed) for t in tasks}
        text = compare.report(abl.name, Path(args.results), keys)
        if text:
            print("\n" + text)
    if smoke:
        print(plumbing_note(cells[0][1]), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

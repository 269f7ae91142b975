"""Per-task state of an ablation submitted to SLURM, and its table rebuilt from the rows that have landed.

    python -m pic_bench.status negatives_k                      # or ablations/negatives_k.yaml
    python -m pic_bench.status ablations/negatives_k.yaml small pic.K=128  # what was submitted, as given to run:
                                                                # also lists that preset's tasks never submitted

States, from the most to the least certain source: ``done`` (an ok row landed), ``running`` / ``pending``
(squeue lists its job, with SLURM's reason), ``failed`` (a failed row, with its error, or a job that SLURM or
sacct reports ended without a row, with its state), ``lost`` (submitted, not queued, no row, no accounting),
``refused`` (sbatch refused its array, in sbatch's words; for an evaluation refused after its training array went
in, that training job), ``missing`` (never submitted, or only its training). A cell evaluated in its own task shows
its training job until training ends, then its evaluation job; an evaluation whose training failed is ``failed``
(it can never start). Failed tasks show their log path, only where the log exists, and the training job's log when
training wrote the failed row; running the submit command again resubmits the failed, lost, refused and missing
ones. A running task shows the latest step and loss of its loss curve.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from ..config import PRESETS, ConfigError, load_ablation, parse_cli_overrides
from .launch import ACTIVE, accounting_states, never_starts, queue_states, read_manifest, read_refusals
from ..data.sources import DatasetError
from ..report.results import DEFAULT_RESULTS, read_rows, row_key


_NOT_REQUEUED = re.compile(r"Job not requeued because: (.+?)\.?\s*$", re.M)
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)|error)\b:?.*$", re.M)


def log_reason(*logs: str | Path | None) -> str:
    """Why a job ended, in its log's words: submitit's "Job not requeued because: ..." (e.g. timed-out too many
    times), else the last exception or ``error:`` line; '' when the logs are missing or say nothing."""
    text = ""
    for log in logs:
        try:
            text += Path(log).read_text(errors="replace") + "\n" if log else ""
        except OSError:
            pass
    found = _NOT_REQUEUED.findall(text)
    if found:
        return found[-1].strip()
    found = _EXCEPTION.findall(text)
    return found[-1].strip()[:200] if found else ""


def latest_step(curve: str | Path | None) -> str:
    """'step N loss x' from the last complete line of a loss curve file ('' when there is none yet)."""
    from .tasks import read_curve

    lines = read_curve(Path(curve)) if curve else []
    if not lines:
        return ""
    last = lines[-1]
    return f"step {last.get('step')} loss {last.get('loss', float('nan')):.4f}"


STAGE_WORDS = {"eval": "evaluation", "train": "training", "all": "training", "baseline": "baseline"}


def row_job(row: dict[str, Any]) -> str | None:
    """The SLURM job that wrote a row, spelt as the manifest spells it ("<array>_<task>", or a plain job id)."""
    job, task = row.get("slurm_job_id"), row.get("slurm_array_task_id")
    if not job:
        return None
    return f"{job}_{task}" if task not in (None, "") else str(job)


def task_states(ablation: str, results_dir: Path, expected: dict[tuple, dict] | None = None,
                curves: dict[tuple, Path] | None = None) -> list[dict[str, Any]]:
    """One dict per task key (from submissions, rows and ``expected``: key -> cell): key, kind, preset, seed,
    cell, state, detail, log. ``curves`` (key -> curve file) adds a running task's latest step and loss."""
    expected = expected or {}
    curves = curves or {}
    rows, _ = read_rows(results_dir, ablation)
    manifest = read_manifest(results_dir, ablation)  # the job that ends with the row (evaluation, baseline, ...)
    trainings = read_manifest(results_dir, ablation, stage="train")  # a cell's training job, where it has one
    refusals = read_refusals(results_dir, ablation)  # arrays sbatch refused, per task: not "never submitted"
    ok = {row_key(r): r for r in rows if r["status"] == "ok"}
    failed: dict[tuple, dict] = {}
    for r in rows:
        if r["status"] != "ok":
            failed[row_key(r)] = r  # the latest failed row of a key
    keys = list(dict.fromkeys([*expected, *manifest, *ok, *failed, *refusals]))
    queue = queue_states() if manifest or trainings else {}
    acct = accounting_states([e["job_id"] for k, e in manifest.items() if k not in ok]) if manifest else {}
    out = []
    for key in keys:
        e = manifest.get(key, {})
        job = e.get("job_id")
        cell = (ok.get(key) or failed.get(key) or {}).get("cell", e.get("cell", expected.get(key, {})))
        s = {"key": key, "kind": key[1], "preset": key[2], "seed": key[4], "cell": cell, "job": job,
             "log": e.get("stderr"), "detail": ""}
        if key in ok:
            s["state"] = "done"
            r = ok[key]
            resumed = (r.get("derived") or {}).get("resumed_from_step")
            where = job or (f"{r['slurm_job_id']}_{r.get('slurm_array_task_id')}" if r.get("slurm_job_id") else "local")
            s["detail"] = f"job {where}" + (f", resumed from step {resumed}" if resumed else "")
        elif job and job in queue and queue[job][0] in ACTIVE and never_starts(queue[job]):
            tr = trainings.get(key, {})
            s["state"] = "failed"
            why = (failed[key].get("error") or "").strip().splitlines()[0][:200] if key in failed else \
                log_reason(tr.get("stderr"), tr.get("stdout"))
            s["detail"] = (f"training job {tr.get('job_id', '?')} ended without training the cell"
                           + (f": {why}" if why else "") + f"; evaluation job {job} can never start")
            s["log"] = tr.get("stderr") or s["log"]
        elif job and job in queue and queue[job][0] in ACTIVE:
            st, reason = queue[job]
            tr = trainings.get(key, {})
            tjob = tr.get("job_id")
            if e.get("stage") == "eval" and st == "PENDING" and tjob in queue and queue[tjob][0] in ACTIVE:
                st, reason = queue[tjob]  # the evaluation waits for this training job: show where training is
                s["detail"] = f"training: job {tjob} {st}"
                s["log"] = tr.get("stderr") or s["log"]
            else:
                s["detail"] = ("evaluation: " if e.get("stage") == "eval" else "") + f"job {job} {st}"
            s["state"] = "running" if st in ("RUNNING", "COMPLETING") else "pending"
            s["detail"] += f" ({reason})" if reason and reason != "None" else ""
            at = latest_step(curves.get(key) or e.get("curve"))
            s["detail"] += f", {at}" if at else ""
            if e.get("stage") == "eval" and s["detail"].startswith("training"):
                s["detail"] += f"; evaluation job {job} starts when it succeeds"
        elif key in refusals and refusals[key].get("time", "") >= e.get("submitted", "") and not (
                key in failed and failed[key].get("time", "") >= refusals[key].get("time", "")):
            rf, tr = refusals[key], trainings.get(key, {})
            stage = rf.get("stage")
            s["state"] = "refused"
            s["detail"] = f"sbatch refused its {STAGE_WORDS.get(stage, stage)} array: {rf.get('refused')}"
            tjob = tr.get("job_id")
            if stage == "eval" and tjob:
                st = queue[tjob][0] if tjob in queue else "not queued"
                s["detail"] += f"; its training job {tjob} was submitted ({st})"
            s["detail"] += "; running the same command again submits it"
            s["job"], s["log"] = (tjob, tr.get("stderr")) if stage == "eval" else (None, None)
        elif key in failed and (not e or failed[key].get("time", "") >= e.get("submitted", "")):
            s["state"] = "failed"
            s["detail"] = (failed[key].get("error") or "failed row").strip().splitlines()[0][:200]
            tr = trainings.get(key, {})
            if tr.get("job_id") and row_job(failed[key]) == tr["job_id"]:
                s["log"] = tr.get("stderr")  # the training job wrote the failed row: its log, not the evaluation's
        elif job and job in acct and acct[job][0] not in ACTIVE:
            s["state"] = "failed"
            why = log_reason(e.get("stderr"), e.get("stdout"))
            s["detail"] = f"job {job} ended {acct[job][0]} (exit {acct[job][1]})" + (
                f": {why}" if why else " without a row")
        elif job:
            s["state"] = "lost"
            why = log_reason(e.get("stderr"), e.get("stdout"))
            s["detail"] = f"job {job} is not queued and left no row" + (
                f"; its log says: {why}" if why else " (no accounting record)")
        elif key in trainings:
            tr = trainings[key]
            s["state"] = "missing"
            s["detail"] = (f"training job {tr.get('job_id')} was submitted, its evaluation never was; running the "
                           "same command again submits it")
            s["log"] = tr.get("stderr")
        else:
            s["state"] = "missing"
            s["detail"] = "never submitted"
        # only a log that exists: a job that never ran (cancelled, its dependency never met) wrote none; then the
        # training job's, where the cell had one
        s["log"] = next((p for p in (s["log"], trainings.get(key, {}).get("stderr")) if p and Path(p).is_file()),
                        None)
        out.append(s)
    return out


def format_states(states: list[dict[str, Any]]) -> str:
    lines = ["| preset | kind | cell | seed | state | detail | log |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in states:
        cell = ", ".join(f"{k}={v}" for k, v in s["cell"].items()) or "default"
        log = s["log"] if s["state"] in ("failed", "lost", "running", "refused", "missing") and s["log"] else ""
        lines.append(f"| {s['preset']} | {s['kind']} | {cell} | {s['seed']} | {s['state']} | {s['detail']} | {log} |")
    counts = Counter(s["state"] for s in states)
    lines.append("")
    lines.append(", ".join(f"{n} {st}" for st, n in sorted(counts.items())) or "no tasks")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pic_bench.status", description=__doc__.split("\n")[0])
    ap.add_argument("ablation", help="ablation file or name, e.g. negatives_k or ablations/negatives_k.yaml")
    ap.add_argument("rest", nargs="*", help=f"as given to run: [preset: {' | '.join(PRESETS)}] [key=value ...]")
    ap.add_argument("--results", default=str(DEFAULT_RESULTS))
    ap.add_argument("--preset", default=None, help="the preset (same as giving it after the ablation)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds, as given to run")
    ap.add_argument("--no-baselines", action="store_true", help="as given to run")
    ap.add_argument("--checkpoints", default="checkpoints", help="checkpoint folder the run used")
    args = ap.parse_args(argv)
    results = Path(args.results)
    path = Path(args.ablation)
    if not path.is_file() and (Path("ablations") / f"{args.ablation}.yaml").is_file():
        path = Path("ablations") / f"{args.ablation}.yaml"
    rest = list(args.rest)
    preset = args.preset
    if rest and "=" not in rest[0]:
        preset = rest.pop(0)
    if rest and preset is None:
        preset = "small"  # run's default preset, so the same command line names the same tasks
    expected, curves, notes = None, None, []
    try:
        abl = load_ablation(path) if path.is_file() else None
        name = abl.name if abl else args.ablation
        if preset:
            if preset not in PRESETS:
                raise ConfigError(f"command line: unknown preset '{preset}' (known: {list(PRESETS)})")
            if abl is None:
                raise ConfigError(f"a preset or overrides need an ablation file; '{args.ablation}' is not one")
            from .run import expand

            abl = abl.for_preset(preset)
            if args.seeds:
                import dataclasses

                try:
                    abl = dataclasses.replace(abl, seeds=[int(x) for x in args.seeds.split(",")])
                except ValueError:
                    raise ConfigError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
            tasks = expand(abl, preset, parse_cli_overrides(rest), str(results), args.checkpoints,
                           baselines=not args.no_baselines)
            expected = {t.key: t.cell for t in tasks}
            curves = {t.key: t.curve for t in tasks}
            from .data_note import data_lines

            notes = data_lines(tasks, results)
    except (ConfigError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    states = task_states(name, results, expected, curves)
    if preset:
        states = [s for s in states if s["preset"] == preset]
    if not states:
        print(f"no submissions or rows for '{name}'" + (f" at preset {preset}" if preset else "")
              + f" under {results}", file=sys.stderr)
        return 1
    print(f"# {name}: per-task state\n")
    for line in notes:  # the data these tasks are keyed on (with a preset: the tasks are known)
        print(line)
    if notes:
        print()
    print(format_states(states))
    print()
    from ..config import output_dir_problem
    from ..report.tables import build_table

    why = output_dir_problem(results / "tables")  # a read-only results folder still shows its status and table
    if why:
        print(f"warning: cannot write tables under {results / 'tables'}: {why}; the table is shown, not written",
              file=sys.stderr)
    print(build_table(abl if abl is not None else name, results, preset=preset, write=not why))  # Δ: its file
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-task state of an ablation submitted to SLURM, and its table rebuilt from the rows that have landed.

    python -m pic_bench.status negatives_k                      # or ablations/negatives_k.yaml
    python -m pic_bench.status ablations/negatives_k.yaml --preset small   # also lists tasks never submitted

States, from the most to the least certain source: ``done`` (an ok row landed), ``running`` / ``pending``
(squeue lists its job, with SLURM's reason), ``failed`` (a failed row, with its error, or a job that SLURM or
sacct reports ended without a row, with its state), ``lost`` (submitted, not queued, no row, no accounting),
``missing`` (never submitted). Failed tasks show their log path; running the submit command again resubmits
the failed, lost and missing ones.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .config import ConfigError, load_ablation
from .launch import ACTIVE, accounting_states, queue_states, read_manifest
from .results import DEFAULT_RESULTS, read_rows, row_key


def task_states(ablation: str, results_dir: Path, expected: dict[tuple, dict] | None = None
                ) -> list[dict[str, Any]]:
    """One dict per task key (from submissions, rows and ``expected``: key -> cell): key, cell, state, detail,
    log."""
    expected = expected or {}
    rows, _ = read_rows(results_dir, ablation)
    manifest = read_manifest(results_dir, ablation)
    ok = {row_key(r): r for r in rows if r["status"] == "ok"}
    failed: dict[tuple, dict] = {}
    for r in rows:
        if r["status"] != "ok":
            failed[row_key(r)] = r  # the latest failed row of a key
    keys = list(dict.fromkeys([*expected, *manifest, *ok, *failed]))
    queue = queue_states() if manifest else {}
    acct = accounting_states([e["job_id"] for k, e in manifest.items() if k not in ok]) if manifest else {}
    out = []
    for key in keys:
        e = manifest.get(key, {})
        job = e.get("job_id")
        cell = (ok.get(key) or failed.get(key) or {}).get("cell", e.get("cell", expected.get(key, {})))
        s = {"key": key, "kind": key[1], "seed": key[4], "cell": cell, "job": job, "log": e.get("stderr"),
             "detail": ""}
        if key in ok:
            s["state"] = "done"
            r = ok[key]
            resumed = (r.get("derived") or {}).get("resumed_from_step")
            where = job or (f"{r['slurm_job_id']}_{r.get('slurm_array_task_id')}" if r.get("slurm_job_id") else "local")
            s["detail"] = f"job {where}" + (f", resumed from step {resumed}" if resumed else "")
        elif job and job in queue and queue[job][0] in ACTIVE:
            st, reason = queue[job]
            s["state"] = "running" if st in ("RUNNING", "COMPLETING") else "pending"
            s["detail"] = f"job {job} {st}" + (f" ({reason})" if reason and reason != "None" else "")
        elif key in failed and (not e or failed[key].get("time", "") >= e.get("submitted", "")):
            s["state"] = "failed"
            s["detail"] = (failed[key].get("error") or "failed row").strip().splitlines()[0][:200]
        elif job and job in acct and acct[job][0] not in ACTIVE:
            s["state"] = "failed"
            s["detail"] = f"job {job} ended {acct[job][0]} (exit {acct[job][1]}) without a row"
        elif job:
            s["state"] = "lost"
            s["detail"] = f"job {job} is not queued and left no row (no accounting record)"
        else:
            s["state"] = "missing"
            s["detail"] = "never submitted"
        out.append(s)
    return out


def format_states(states: list[dict[str, Any]]) -> str:
    lines = ["| kind | cell | seed | state | detail | log |", "| --- | --- | --- | --- | --- | --- |"]
    for s in states:
        cell = ", ".join(f"{k}={v}" for k, v in s["cell"].items()) or "default"
        log = s["log"] if s["state"] in ("failed", "lost", "running") and s["log"] else ""
        lines.append(f"| {s['kind']} | {cell} | {s['seed']} | {s['state']} | {s['detail']} | {log} |")
    counts = Counter(s["state"] for s in states)
    lines.append("")
    lines.append(", ".join(f"{n} {st}" for st, n in sorted(counts.items())) or "no tasks")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pic_bench.status", description=__doc__.split("\n")[0])
    ap.add_argument("ablation", help="ablation file or name, e.g. negatives_k or ablations/negatives_k.yaml")
    ap.add_argument("--results", default=str(DEFAULT_RESULTS))
    ap.add_argument("--preset", default=None, help="with an ablation file: also list tasks never submitted")
    ap.add_argument("--checkpoints", default="checkpoints", help="checkpoint folder the run used")
    args = ap.parse_args(argv)
    results = Path(args.results)
    path = Path(args.ablation)
    if not path.is_file() and (Path("ablations") / f"{args.ablation}.yaml").is_file():
        path = Path("ablations") / f"{args.ablation}.yaml"
    expected = None
    try:
        abl = load_ablation(path) if path.is_file() else None
        name = abl.name if abl else args.ablation
        if args.preset:
            if abl is None:
                raise ConfigError(f"--preset needs an ablation file; '{args.ablation}' is not one")
            from .config import config_hash
            from .run import expand

            expected = {(t.ablation, t.kind, t.preset, config_hash(t.cfg), t.cfg.run.seed): t.cell
                        for t in expand(abl.for_preset(args.preset), args.preset, {}, str(results),
                                                 args.checkpoints)}
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    states = task_states(name, results, expected)
    if not states:
        print(f"no submissions or rows for '{name}' under {results}", file=sys.stderr)
        return 1
    print(f"# {name}: per-task state\n")
    print(format_states(states))
    print()
    from .tables import build_table

    print(build_table(abl if abl is not None else name, results, preset=args.preset, write=True))  # Δ: its file
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Our rows beside the committed ones: per cell and kind, our mean kNN / linear top-1 next to the committed mean.

    python -m pic_bench.run ablations/negatives_k.yaml small --results runs/mine   # ends with this comparison

A cell of ours is matched with committed rows by config hash + preset + kind, and by the data digest
(``row["data"]["digest"]``, else ``row["derived"]["index_digest"]``) when both rows record one: the same
experiment on the same images. The committed mean is over our seeds where it has them (else over its own; the
counts are shown), so a one-seed run compares with that seed. Only rows with status ok count.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import cell_label
from .results import read_rows

COMMITTED = Path(__file__).resolve().parents[2] / "results"  # the rows committed with the code
NOTE = ("same machine and library versions: bit-identical; another 2-core machine moved kNN by up to 0.2 "
        "(measured)")
METRICS = (("knn", "knn_top1"), ("linear", "linear_top1"))


@dataclass
class CellComparison:
    cell: dict[str, Any]
    kind: str
    preset: str
    config_hash: str
    n_ours: int
    n_committed: int
    knn: tuple[float, float]  # (our mean, committed mean); nan where a side has no value
    linear: tuple[float, float]


def digest(row: dict[str, Any]) -> str | None:
    data = row.get("data") if isinstance(row.get("data"), dict) else {}
    return data.get("digest") or (row.get("derived") or {}).get("index_digest")


def _mean(rows: list[dict[str, Any]], metric: str) -> float:
    values = [r["metrics"][metric] for r in rows if isinstance(r["metrics"].get(metric), (int, float))]
    return statistics.fmean(values) if values else float("nan")


def compare_rows(ours: list[dict[str, Any]], committed: list[dict[str, Any]]) -> list[CellComparison]:
    """One entry per (cell, kind) of ``ours`` that has committed rows of the same experiment, in our order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in ours:
        if r.get("status") == "ok":
            groups.setdefault((r["config_hash"], r["preset"], r.get("kind", "pic"), digest(r)), []).append(r)
    out = []
    for (chash, preset, kind, dig), mine in groups.items():
        # rows written before issue 21 recorded the digest of the instance list only (no data.digest_of): they
        # compare with ours when that list is ours (same selection; their content was never recorded)
        names = {(r.get("derived") or {}).get("index_digest") for r in mine} - {None}
        theirs = [r for r in committed if r.get("status") == "ok" and r["config_hash"] == chash
                  and r["preset"] == preset and r.get("kind", "pic") == kind
                  and (dig is None or digest(r) is None or digest(r) == dig
                       or (not (r.get("data") or {}).get("digest_of") and digest(r) in names))]
        if not theirs:
            continue
        seeds = {r["seed"] for r in mine}
        if any(r["seed"] in seeds for r in theirs):  # the same seeds where the committed rows have them
            theirs = [r for r in theirs if r["seed"] in seeds]
        means = {name: (_mean(mine, m), _mean(theirs, m)) for name, m in METRICS}
        out.append(CellComparison(mine[0].get("cell") or {}, kind, preset, chash, len(mine), len(theirs),
                                  means["knn"], means["linear"]))
    return out


def _num(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.2f}"


def _diff(pair: tuple[float, float]) -> str:
    d = pair[0] - pair[1]
    return "—" if math.isnan(d) else f"{d:+.2f}"


def format_comparison(lines: list[CellComparison]) -> str:
    out = ["| cell | kind | seeds ours / committed | kNN ours | kNN committed | Δ kNN | linear ours | "
           "linear committed | Δ linear |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in lines:
        out.append(f"| {cell_label(c.cell)} | {c.kind} | {c.n_ours} / {c.n_committed} | {_num(c.knn[0])} | "
                   f"{_num(c.knn[1])} | {_diff(c.knn)} | {_num(c.linear[0])} | {_num(c.linear[1])} | "
                   f"{_diff(c.linear)} |")
    return "\n".join(out)


def report(ablation: str, results_dir: Path, keys: set[tuple] | None = None, committed: Path | None = None
           ) -> str | None:
    """The comparison of this run's rows (those whose (kind, preset, config hash, seed) is in ``keys``, or all)
    with the committed rows, as markdown; None when the committed folder holds no row of the same cells."""
    committed = COMMITTED if committed is None else committed
    ours, _ = read_rows(Path(results_dir), ablation)
    if keys is not None:
        ours = [r for r in ours if (r.get("kind", "pic"), r["preset"], r["config_hash"], r["seed"]) in keys]
    theirs, _ = read_rows(Path(committed), ablation)
    lines = compare_rows(ours, theirs)
    if not lines:
        return None
    return (f"## This run against the committed rows ({committed})\n\n{format_comparison(lines)}\n\n"
            f"Expected spread: {NOTE}.")

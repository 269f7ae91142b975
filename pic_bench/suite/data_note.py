"""What data a dry run or ``status`` would train on: one line per distinct data setting with the digest that is its
cells' identity (issue 21), and "new data" when rows already under ``--results`` for the same folder (or the same
in-memory dataset) were written on other content.

    python -m pic_bench.run ablations/negatives_k.yaml smoke data.dataset=imagefolder data.root=A --dry-run
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..report.results import read_rows, row_digest
from .tasks import Task


def _where(data: dict[str, Any] | Any) -> tuple[str, str]:
    """(dataset, resolved root or '') of a data config or of a row's ``config["data"]``."""
    get = data.get if isinstance(data, dict) else (lambda k, d=None: getattr(data, k, d))
    root = get("root") or ""
    return str(get("dataset")), os.path.realpath(root) if root else ""


def data_lines(tasks: list[Task], results_dir: str | Path) -> list[str]:
    """One "data: ..." line per distinct data setting of ``tasks``; a second "new data: ..." line where content
    rows under ``results_dir`` for the same path record another digest."""
    seen: dict[tuple[str, str, str], None] = {}
    for t in tasks:
        seen.setdefault((*_where(t.cfg.data), t.digest), None)
    if not seen:
        return []
    rows, _ = read_rows(Path(results_dir))
    others: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        if (r.get("data") or {}).get("digest_of") != "content" or not isinstance(r.get("config"), dict):
            continue  # older rows digest file names only: their content is unknown
        others.setdefault(_where(r["config"].get("data") or {}), set()).add(str(row_digest(r)))
    lines = []
    for dataset, root, digest in seen:
        what = f"{dataset} at {root}" if root else dataset
        lines.append(f"data: {what}: content digest {digest[:16]} (names and bytes of the training images and "
                     f"the evaluation split)")
        differ = sorted(others.get((dataset, root), set()) - {digest})
        if differ:
            lines.append(f"new data: {what} differs from the rows already under {results_dir} for this path "
                         f"(their digest {', '.join(d[:16] for d in differ)}, now {digest[:16]}): its cells are new "
                         "and train again")
    return lines

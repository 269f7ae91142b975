"""Rows as a DataFrame (issue 20): ``pic_bench.report.load_rows`` on the committed rows and on bad lines.

    nice -n 10 python3 -m pytest tests/test_load_rows.py -q
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pic_bench.report import load_rows
from pic_bench.report.results import read_rows

REPO = Path(__file__).resolve().parent.parent


def test_the_committed_rows_load_flattened_one_line_per_row():
    rows, problems = read_rows(REPO / "results", "negatives_k")
    df = load_rows(REPO / "results", "negatives_k")
    assert len(df) == len(rows) > 0 and df.attrs["problems"] == [str(p) for p in problems]
    for col in ("ablation", "preset", "kind", "seed", "status", "config_hash", "git_sha", "device",
                "config.optim.base_lr", "config.pic.K", "cell.pic.K", "metrics.knn_top1", "metrics.step_ms_median",
                "derived.N", "data.digest", "machine.cpu_capability", "versions.torch"):
        assert col in df.columns, col
    assert list(df["seed"]) == [r["seed"] for r in rows]  # file order, nothing dropped
    assert list(df["config.optim.base_lr"]) == [r["config"]["optim"]["base_lr"] for r in rows]
    ok = df[(df["status"] == "ok") & (df["kind"] == "pic")]
    assert ok.groupby("cell.pic.K")["metrics.knn_top1"].count().min() >= 1
    every = load_rows(REPO / "results")  # no ablation: every rows file
    assert set(df["ablation"]) < set(every["ablation"])


def test_a_malformed_line_is_reported_not_dropped_silently(tmp_path):
    (tmp_path / "rows").mkdir()
    src = (REPO / "results" / "rows" / "components.jsonl").read_text().splitlines()
    (tmp_path / "rows" / "components.jsonl").write_text(src[0] + "\n" + '{"ablation": "components", "pres\n'
                                                        + json.dumps({"ablation": "components"}) + "\n" + src[1] + "\n")
    with pytest.warns(UserWarning) as caught:
        df = load_rows(tmp_path, "components")
    assert len(df) == 2
    problems = df.attrs["problems"]
    assert len(problems) == 2
    assert "components.jsonl:2: malformed JSON" in problems[0]
    assert ":3: missing field(s)" in problems[1]
    said = [str(w.message) for w in caught]
    assert any("components.jsonl:2:" in m for m in said) and any("components.jsonl:3:" in m for m in said)


def test_an_ablation_without_rows_is_an_empty_frame(tmp_path):
    df = load_rows(tmp_path, "nothing")
    assert len(df) == 0 and df.attrs["problems"] == []

"""Prose quotes only numbers its tables hold (issue 19): README.md and results/README.md against results/tables/*.md.

A result number in prose is a number with exactly two decimals (accuracy, a change, a standard deviation, an
interval's bound or half-width: the tables print these with two decimals) or a p-value (``p = 0.043``). Each must be
printed in a generated table (results/tables/*.md), or be the half-width of an interval a table prints ("+0.68 ±
0.67" for "[+0.01, +1.35]", within 0.01 for the rounding of the bounds). A number that comes from somewhere else
(a history rows file, a loss curve, a derivation the prose gives the command for) must sit in a block that names
its source, and the source must exist:

    <!-- from: results/rows/history/negatives_k-0f98409.jsonl -->
    ... the earlier machine's rows gave 80.25 ...
    <!-- /from -->

A source whose first word is a path (it has a "/") must exist; "commit <sha>" must name a commit of this repository;
anything else (a command in backticks, "a run on a second machine, issue 13, no rows kept") is read as it is: the
block says the number is not from a table and where it is from. Numbers with one decimal (step times, regime
percentages), integers, settings written `name = value` (t = 0.07), timing ratios (1.85x) and versions (2.14.1, Python 3.11) are not
result numbers and are not checked.

    python -m pytest tests/test_prose_numbers.py -q
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "results/README.md")

MINUS = str.maketrans({"\u2212": "-", "\u2013": "-"})
NUMBER = re.compile(r"(?<![\w.])(?<!= )(?<!Python )[+-]?(\d[\d,]*\.\d\d)(?![\d]|\.\d|x\b)")
P_VALUE = re.compile(r"\bp\s*[=<]\s*(0\.\d+)")
INTERVAL = re.compile(r"\[([+-]?\d+\.\d\d), ([+-]?\d+\.\d\d)\]")
BLOCK = re.compile(r"<!-- from:(.*?)-->(.*?)<!-- /from -->", re.S)
OPEN, CLOSE = "<!-- from:", "<!-- /from -->"


def table_numbers(tables_text: str) -> tuple[set[str], list[float]]:
    """Every number a table prints (signs dropped), and the half-widths of its intervals."""
    text = tables_text.translate(MINUS)
    printed = {m.replace(",", "") for m in re.findall(r"\d[\d,]*\.\d+", text)}
    halves = [(float(hi) - float(lo)) / 2 for lo, hi in INTERVAL.findall(text)]
    return printed, halves


def unsupported(doc: str, tables_text: str, repo: Path = REPO) -> list[str]:
    """The result numbers of `doc` that no table holds, and every badly formed or unsourced block, as messages."""
    printed, halves = table_numbers(tables_text)
    text = doc.translate(MINUS)
    problems = []
    for source, _ in BLOCK.findall(text):
        source = source.strip()
        if not source:
            problems.append("a '<!-- from: -->' block names no source")
            continue
        first = source.split()[0]
        if first == "commit" and len(source.split()) > 1:
            sha = source.split()[1].rstrip(",:;")
            ok = subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{sha}^{{commit}}"],
                                capture_output=True).returncode == 0
            if not ok:
                problems.append(f"block source {source!r}: no commit {sha} in this repository")
        elif "/" in first and not first.startswith("`") and not (repo / first.rstrip(":,")).exists():
            problems.append(f"block source {source!r}: no such file in the repository")
    outside = BLOCK.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    if OPEN in outside or CLOSE in outside:
        line = next(i for i, l in enumerate(outside.splitlines(), 1) if OPEN in l or CLOSE in l)
        problems.append(f"line {line}: a '<!-- from: ... -->' block is not closed, or a '<!-- /from -->' not opened")
    for lineno, line in enumerate(outside.splitlines(), 1):
        found = [m.group(1) for m in NUMBER.finditer(line)] + P_VALUE.findall(line)
        for number in found:
            bare = number.replace(",", "")
            if bare in printed:
                continue
            if any(abs(float(bare) - h) <= 0.0101 for h in halves):
                continue
            problems.append(f"line {lineno}: {number} is in no table under results/tables/ "
                            f"(nor an interval's half-width there)")
    return problems


def all_tables() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "results" / "tables").glob("*.md")))


@pytest.mark.parametrize("name", DOCS)
def test_prose_quotes_only_numbers_its_tables_hold(name):
    problems = unsupported((REPO / name).read_text(encoding="utf-8"), all_tables())
    assert not problems, f"{name}:\n" + "\n".join(problems)


TABLE = """| pic.K=512 | 81.83 ± 0.26 | +0.68 [+0.01, +1.35] p=0.048 (n=3) | 81.93, 81.53, 82.02 |"""


def test_a_number_no_table_holds_fails():
    assert unsupported("K = 512 gives kNN 81.83 ± 0.26, Δ +0.68 (p = 0.048)", TABLE) == []
    assert unsupported("seed 1: 81.53", TABLE) == []
    problems = unsupported("K = 512 gives kNN 81.84", TABLE)
    assert problems == ["line 1: 81.84 is in no table under results/tables/ (nor an interval's half-width there)"]
    assert len(unsupported("p = 0.049", TABLE)) == 1
    assert len(unsupported("\u22120.69 kNN", TABLE)) == 1


def test_a_half_width_of_a_printed_interval_passes_and_another_does_not():
    assert unsupported("+0.68 ± 0.67", TABLE) == []          # (1.35 - 0.01) / 2
    assert unsupported("+0.68 ± 0.66", TABLE) == []          # within the rounding of the bounds
    assert len(unsupported("+0.68 ± 0.62", TABLE)) == 1


def test_versions_integers_and_one_decimal_are_not_result_numbers():
    assert unsupported("torch 2.14.1, Python 3.11, 26.5 ms, 6,250 steps, 18.4%, kNN t = 0.07, 1.85x", TABLE) == []


def test_a_sourced_block_is_exempt_only_with_a_source_that_exists(tmp_path):
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "old.jsonl").write_text("{}\n")
    doc = "a\n<!-- from: rows/old.jsonl -->\nearlier rows: 80.25\n<!-- /from -->\nthen 81.84\n"
    assert unsupported(doc, TABLE, tmp_path) == [
        "line 5: 81.84 is in no table under results/tables/ (nor an interval's half-width there)"]
    missing = unsupported(doc.replace("old.jsonl", "gone.jsonl"), TABLE, tmp_path)
    assert missing[0].startswith("block source 'rows/gone.jsonl'")
    assert unsupported("<!-- from: commit 0000000 -->0.82<!-- /from -->", TABLE, REPO)[0].startswith(
        "block source 'commit 0000000'")
    assert unsupported("<!-- from: -->0.82<!-- /from -->", TABLE, tmp_path)[0].endswith("names no source")
    assert unsupported("<!-- from: `python -c 'print(0.82)'` -->0.82<!-- /from -->", TABLE, tmp_path) == []
    assert "not closed" in unsupported("<!-- from: rows/old.jsonl -->\n80.25\n", TABLE, tmp_path)[0]

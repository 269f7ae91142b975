"""Prose quotes only numbers its tables hold (issue 19): README.md and results/README.md against results/tables/*.md.

A result number in prose is a number with exactly two decimals (accuracy, a change, a standard deviation, an
interval's bound or half-width: the tables print these with two decimals) or a p-value (``p = 0.043``). Each must be
printed in a generated table (results/tables/*.md), or be the half-width of an interval a table prints ("+0.68 ±
0.67" for "[+0.01, +1.35]", within 0.01 for the rounding of the bounds). A number that comes from somewhere else
(a history rows file, a loss curve, a derivation the prose gives the command for) must sit in a block that names
its source, and the source must exist. A number is checked against the tables its unit (a markdown table row, a
list item with its continuation lines, a paragraph) names, as ``negatives_k.md`` or as a table cell listing
ablation names (``| components, official_readme |``); only a unit that names no table may take it from any:

    <!-- from: results/rows/history/negatives_k-0f98409.jsonl -->
    ... the earlier machine's rows gave 80.25 ...
    <!-- /from -->

A source whose first word is a path (it has a "/") must exist; "commit <sha>" must name a commit of this repository;
a source that names only generated tables (``results/diagnostics/lr_floor/tables/temperature.md``, no rows file,
curve or command) is checked: its block's numbers must be printed in those tables; anything else (a command in backticks, "a run on a second machine, issue 13, no rows kept") is read as it is: the
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


def held(number: str, printed: set[str], halves: list[float]) -> bool:
    """A number a table prints, or the half-width of one of its intervals (within the rounding of the bounds)."""
    bare = number.replace(",", "")
    return bare in printed or any(abs(float(bare) - h) <= 0.0101 for h in halves)


UNIT_START = re.compile(r"\s*(\||[-*] |#|\d+\. )")


def units(text: str) -> list[tuple[int, str]]:
    """The text cut where a reader's eye would cut it: each markdown table row, each list item (with its
    continuation lines) and each paragraph, as (first line number, text)."""
    out, start, buf = [], 0, []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or UNIT_START.match(line) or (buf and buf[-1].lstrip().startswith("|")):
            if buf:
                out.append((start, "\n".join(buf)))
            buf, start = ([line], lineno) if line.strip() else ([], 0)
        else:
            buf, start = buf + [line], start or lineno
    if buf:
        out.append((start, "\n".join(buf)))
    return out


def cited(unit: str, names) -> set[str]:
    """The tables a unit names: ``name.md`` anywhere, or a table cell that lists ablation names
    (``| components, official_readme |``)."""
    got = {n for n in names if re.search(rf"(?<![\w-]){re.escape(n)}\.md\b", unit)}
    for cell in unit.split("|")[1:-1]:
        words = [w.strip() for w in cell.split(",")]
        if words and all(w in names for w in words):
            got |= set(words)
    return got


def unsupported(doc: str, tables: dict[str, str] | str, repo: Path = REPO) -> list[str]:
    """The result numbers of `doc` that no table holds, and every badly formed or unsourced block, as messages.

    `tables` maps a table's name (its file's stem, e.g. ``negatives_k``) to its text. A number in a unit (a table
    row, a list item, a paragraph) that names tables (``negatives_k.md``, or a cell listing ablation names) must
    be in one of those; a number in a unit that names none, in any table."""
    if isinstance(tables, str):
        tables = {"table": tables}
    each = {name: table_numbers(t) for name, t in tables.items()}
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
    for source, body in BLOCK.findall(text):
        problems += _unsourced_in_tables(source.strip(), body, repo)
    outside = BLOCK.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    if OPEN in outside or CLOSE in outside:
        line = next(i for i, l in enumerate(outside.splitlines(), 1) if OPEN in l or CLOSE in l)
        problems.append(f"line {line}: a '<!-- from: ... -->' block is not closed, or a '<!-- /from -->' not opened")
    for first_line, unit in units(outside):
        names = sorted(cited(unit, each)) or sorted(each)
        printed = set().union(*(each[n][0] for n in names))
        halves = [h for n in names for h in each[n][1]]
        where = "in no table under results/tables/" if len(names) == len(each) else \
            (f"not in {names[0]}.md" if len(names) == 1 else "in none of " + ", ".join(f"{n}.md" for n in names))
        for offset, line in enumerate(unit.splitlines()):
            found = [m.group(1) for m in NUMBER.finditer(line)] + P_VALUE.findall(line)
            for number in found:
                if held(number, printed, halves):
                    continue
                problems.append(f"line {first_line + offset}: {number} is {where} "
                                f"(nor an interval's half-width there)")
    return problems


TABLE_FILE = re.compile(r"(?<![\w/])(results/\S*tables/\w+\.md)\b")


def _unsourced_in_tables(source: str, body: str, repo: Path) -> list[str]:
    """A block whose source names only generated tables (``results/.../tables/x.md``, no rows file, curve or
    command) quotes only numbers those tables print: its numbers are checked as a unit naming them would be. With
    "commit <sha>, its results/tables/x.md" the tables are read as that commit has them (``git show``)."""
    files = TABLE_FILE.findall(source)
    words = source.split()
    sha = words[1].rstrip(",:;") if len(words) > 1 and words[0] == "commit" else None
    rest = TABLE_FILE.sub("", source.replace(" ".join(words[:2]), "", 1) if sha else source)
    if not files or "/" in rest or "`" in rest:
        return []
    texts = []
    for f in files:
        if sha:
            got = subprocess.run(["git", "-C", str(repo), "show", f"{sha}:{f}"], capture_output=True, text=True)
            if got.returncode != 0:
                return [f"block source {source!r}: commit {sha} has no {f}"]
            texts.append(got.stdout)
        elif (repo / f).is_file():
            texts.append((repo / f).read_text(encoding="utf-8"))
        else:
            return []
    got = [table_numbers(t) for t in texts]
    printed = set().union(*(g[0] for g in got))
    halves = [h for g in got for h in g[1]]
    found = [m.group(1) for m in NUMBER.finditer(body)] + P_VALUE.findall(body)
    return [f"block sourced from {source!r}: {n} is in none of its tables (nor an interval's half-width there)"
            for n in found if not held(n, printed, halves)]


def all_tables() -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted((REPO / "results" / "tables").glob("*.md"))}


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


def test_a_block_sourced_only_from_tables_quotes_only_what_they_print(tmp_path):
    d = tmp_path / "results" / "diagnostics" / "x" / "tables"
    d.mkdir(parents=True)
    (d / "temperature.md").write_text(TABLE)
    src = "results/diagnostics/x/tables/temperature.md"
    assert unsupported(f"<!-- from: {src} -->kNN 81.83 ± 0.26, +0.68 ± 0.67<!-- /from -->", {}, tmp_path) == []
    assert unsupported(f"<!-- from: {src} -->kNN 81.84<!-- /from -->", {}, tmp_path) == [
        f"block sourced from '{src}': 81.84 is in none of its tables (nor an interval's half-width there)"]
    # a source that also names rows, a curve or a command is read as it is, as before
    (tmp_path / "r.jsonl").write_text("{}\n")
    assert unsupported(f"<!-- from: {src} and r/../r.jsonl -->kNN 81.84<!-- /from -->", {}, tmp_path) == []
    assert unsupported(f"<!-- from: {src} with `python -m x` -->kNN 81.84<!-- /from -->", {}, tmp_path) == []


def test_a_block_sourced_from_a_commits_tables_quotes_what_that_commit_printed():
    """e7ad888's negatives_k table (the scale rows with the rate to 0) printed all N's kNN 81.14 ± 0.35; the
    working tree's table is another's (the floor rows), so only the commit's table can hold the number."""
    src = "commit e7ad888, its results/tables/negatives_k.md"
    assert unsupported(f"<!-- from: {src} -->all N 81.14 ± 0.35, +0.68 (p = 0.048)<!-- /from -->", {}) == []
    assert unsupported(f"<!-- from: {src} -->all N 81.15<!-- /from -->", {}) == [
        f"block sourced from '{src}': 81.15 is in none of its tables (nor an interval's half-width there)"]
    gone = "commit e7ad888, its results/tables/nothing.md"
    assert unsupported(f"<!-- from: {gone} -->1.00<!-- /from -->", {}) == [
        f"block source '{gone}': commit e7ad888 has no results/tables/nothing.md"]


TABLES = {"negatives_k": TABLE, "components": "| pic.model.head=none | 77.74 ± 0.50 |"}


def test_a_unit_that_names_a_table_must_quote_that_table():
    assert unsupported("- in negatives_k.md K = 512 gives 81.83", TABLES) == []
    assert unsupported("- in components.md K = 512 gives 81.83", TABLES) == [
        "line 1: 81.83 is not in components.md (nor an interval's half-width there)"]
    # a list item's continuation lines belong to it; the next item, paragraph or table row starts afresh
    doc = "- components.md: no head\n  gives 81.83\n- and K = 512 gives 81.83\n\nno head 77.74\n"
    assert unsupported(doc, TABLES) == ["line 2: 81.83 is not in components.md (nor an interval's half-width there)"]
    rows = "| a claim | components, negatives_k | 77.74 and 81.83 |\n| another | components | 81.83 |\n"
    assert unsupported(rows, TABLES) == ["line 2: 81.83 is not in components.md (nor an interval's half-width there)"]
    assert unsupported("| x | components, nonsense | 81.83 |", TABLES) == []  # not a list of names: any table

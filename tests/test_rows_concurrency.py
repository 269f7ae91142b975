"""Rows are never lost, mangled or duplicated when many array tasks (processes) finish at once, and a requeued
task that writes its row again does not duplicate it."""
from __future__ import annotations

import json
import multiprocessing as mp

from ranks import run_procs

from pic_bench.report.results import append_row, read_rows, rows_file, row_key

WRITERS, KEYS = 8, 12


def fake_row(seed: int, writer: int, status: str = "ok") -> dict:
    return {"ablation": "concurrency", "preset": "smoke", "kind": "pic", "config_hash": "abc123", "seed": seed,
            "status": status, "metrics": {"writer": writer}, "config": {},
            "padding": "x" * 200_000}  # far above PIPE_BUF and a page: a torn write would show


def _writer(results: str, writer: int, barrier) -> None:
    for seed in range(KEYS):  # every writer writes every key, all at the same moment: the duplicates race
        barrier.wait()
        append_row(fake_row(seed, writer), results)


def test_concurrent_writers_neither_lose_mangle_nor_duplicate(tmp_path):
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(WRITERS)
    run_procs(_writer, [(str(tmp_path), w, barrier) for w in range(WRITERS)], timeout=120, method="fork")
    lines = rows_file(tmp_path, "concurrency").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line is whole JSON: nothing interleaved
    assert sorted(r["seed"] for r in rows) == list(range(KEYS))  # each key exactly once, none lost
    assert all(len(r["padding"]) == 200_000 for r in rows)
    good, problems = read_rows(tmp_path, "concurrency")
    assert len(good) == KEYS and problems == []


def test_requeued_task_does_not_duplicate_its_row_but_a_failed_one_is_retried(tmp_path):
    assert append_row(fake_row(0, 0, "failed"), tmp_path)
    assert append_row(fake_row(0, 1, "ok"), tmp_path)  # a failed row does not block the retry's ok row
    assert not append_row(fake_row(0, 2, "ok"), tmp_path)  # the requeued copy is dropped
    assert not append_row(fake_row(0, 3, "failed"), tmp_path)  # nor can a late failure follow an ok row
    rows, _ = read_rows(tmp_path, "concurrency")
    assert [(r["status"], r["metrics"]["writer"]) for r in rows] == [("failed", 0), ("ok", 1)]
    assert len({row_key(r) for r in rows}) == 1


def test_the_done_check_reads_a_rows_file_once_per_change_not_once_per_task(tmp_path, monkeypatch):
    from pic_bench.report import results

    for seed in range(50):
        assert append_row(fake_row(seed, 0), tmp_path)
    parsed = []
    real = json.loads

    def counting(text, *a, **kw):
        parsed.append(1)
        return real(text, *a, **kw)

    monkeypatch.setattr(results.json, "loads", counting)
    asked = [results.has_row(tmp_path, "concurrency", "pic", "smoke", "abc123", seed) for seed in range(100)]
    assert asked == [True] * 50 + [False] * 50
    assert len(parsed) == 50  # before: 100 tasks x 50 rows parsed
    append_row(fake_row(70, 0), tmp_path)  # a row lands: the next check sees it
    parsed.clear()
    assert results.has_row(tmp_path, "concurrency", "pic", "smoke", "abc123", 70)
    assert not results.has_row(tmp_path, "concurrency", "pic", "smoke", "abc123", 71)
    assert len(parsed) == 51


def test_ok_keys_is_the_plain_scan_of_the_valid_rows_on_random_files(tmp_path):
    """The done-check's cached index against its reference (read_rows, then the ok rows' keys), on fresh random
    files mixing ok and failed rows, unknown statuses, string seeds, other ablations' rows and broken lines."""
    import random

    from pic_bench.report import results

    rng = random.Random()
    path = rows_file(tmp_path, "concurrency")
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        lines = []
        for _ in range(rng.randint(0, 60)):
            row = {**fake_row(rng.randint(0, 9), 0, rng.choice(["ok", "ok", "failed", "OK", "skipped"])),
                   "padding": "", "config_hash": rng.choice(["a", "b"])}
            row[rng.choice(["seed", "ablation", "kind", "preset", "x"])] = rng.choice(
                [str(rng.randint(0, 9)), "other", rng.randint(0, 9), None, True])
            lines.append(rng.choice([json.dumps(row), json.dumps(row), json.dumps(row)[:30], "[1]", ""]))
        path.write_text("".join(line + "\n" for line in lines))
        results._DONE.clear()  # a rewrite of the same size within the clock's tick would look unchanged
        rows, problems = read_rows(tmp_path, "concurrency")
        assert results.ok_keys(tmp_path, "concurrency") == {row_key(r) for r in rows if r["status"] == "ok"}
        assert [(p.line, p.reason) for p in results.row_problems(tmp_path, "concurrency")] == \
               [(p.line, p.reason) for p in problems]

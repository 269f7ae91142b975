"""Tables and plots from result rows: byte-for-byte regeneration, statistics, bad input, reference numbers.

    nice -n 10 python -m pytest tests/test_tables.py -q
"""
from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from pic_bench import reference
from pic_bench.report import stats, tables
from pic_bench.report.stats import paired
from pic_bench.config import apply, build, config_hash, to_dict

REPO = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def make(ablation: str, cell: dict, seed: int, knn: float, lin: float, preset: str = "small",
         device: str = "cpu: test machine", kind: str = "pic", status: str = "ok", extra: dict | None = None,
         chash: str | None = None, metrics: dict | None = None, derived: dict | None = None) -> dict:
    """A result row as results.make_row writes it (config resolved from the preset and the cell)."""
    cfg = apply(build(preset, cell, extra or {}), {"run.seed": seed}, "test")
    m = {"knn_top1": knn, "linear_top1": lin, "step_ms_median": 50.0 + seed, "step_ms_p90": 60.0,
         "images_per_s": 5000.0, "peak_mem_mib": 900.0} if metrics is None else metrics
    return {"ablation": ablation, "preset": preset, "kind": kind, "cell": cell, "seed": seed, "status": status,
            "config_hash": chash or config_hash(cfg), "config": to_dict(cfg), "metrics": m, "error": None,
            "derived": {"N": 10000} if derived is None else derived, "device": device}


QUIET = {"wall_s": 10.0, "cpu_s": 19.0, "threads": 2, "cpus": 2, "load_start": 1.9, "load_end": 2.1, "gpu_util": None,
         "device": "cpu"}  # a timing segment that timing.contention trusts


def timed(*segments: dict) -> dict:
    return {"timing": {"segments": list(segments)}}


def line_starting(text: str, prefix: str) -> str:
    return next(x for x in text.splitlines() if x.startswith(prefix))


def write_rows(results: Path, name: str, rows: list[dict], extra_lines: list[str] = ()) -> Path:
    path = results / "rows" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows) + "".join(extra_lines))
    return path


def negatives_rows() -> list[dict]:
    """negatives_k-like rows: K = 0 is the default; per-seed values chosen for a hand computation."""
    rows = []
    default = {0: 78.0, 1: 81.0, 2: 82.0}
    k256 = {0: 80.0, 1: 82.0, 2: 85.0}  # differences 2, 1, 3: mean 2, sd 1
    k1024 = {0: 79.0, 1: 80.0, 2: 83.0}
    for s in range(3):
        rows.append(make("negatives_k", {"pic.K": 256}, s, k256[s], k256[s] - 10))
        rows.append(make("negatives_k", {"pic.K": 1024}, s, k1024[s], k1024[s] - 10))
        rows.append(make("negatives_k", {"pic.K": 0}, s, default[s], default[s] - 10))
        rows.append(make("negatives_k", {"pic.K": 0}, s, 70.0 + s, 60.0, kind="baseline_random",
                         metrics={"knn_top1": 70.0 + s, "linear_top1": 60.0}))
    return rows


# ------------------------------------------------------------------------------------------------- statistics
def test_paired_change_against_scipy_on_a_hand_made_example():
    from scipy import stats as sps

    a, b = [80.0, 82.0, 85.0], [78.0, 81.0, 82.0]
    # d = (2, 1, 3): mean 2, sample sd 1, t_{0.975, 2} = 4.302653, half-width 4.302653 / sqrt(3) = 2.48414
    c = paired(a, b)
    assert (c.delta, c.sd, c.n) == (2.0, 1.0, 3)
    assert c.half == pytest.approx(sps.t.ppf(0.975, 2) / math.sqrt(3), rel=1e-12)
    assert c.half == pytest.approx(2.48414, abs=1e-5)
    assert (c.lo, c.hi) == pytest.approx((2 - 2.48414, 2 + 2.48414), abs=1e-5)
    # p: the paired t-test, and the same from t = mean / (sd / sqrt(n)) on 2 degrees of freedom
    assert c.p == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-12)
    assert c.p == pytest.approx(2 * sps.t.sf(2 / (1 / math.sqrt(3)), 2), rel=1e-9)
    assert c.p == pytest.approx(0.07418, abs=1e-5)
    # the interval spans 0: not detected, and the largest effect it allows is its upper bound
    assert not c.detected and c.largest == pytest.approx(4.48414, abs=1e-5)
    assert stats.paired([3.0, 5.0, 6.0], [0.0, 1.0, 3.0]).detected  # d = 3, 4, 3
    # one pair: a change without an interval; no pair: nothing
    one = paired([1.0], [0.5])
    assert one.delta == 0.5 and not one.has_interval and math.isnan(one.p)
    assert paired([], []).n == 0


def test_the_80_percent_power_effect_against_a_direct_noncentral_t_computation():
    from scipy import stats as sps

    rng = np.random.default_rng(7)
    for n in (3, 5, 10):
        sd = float(rng.uniform(0.2, 3.0))
        e = stats.mde(sd, n)
        df, crit = n - 1, sps.t.ppf(0.975, n - 1)
        nc = e / (sd / math.sqrt(n))
        direct = sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc)  # power of the two-sided paired t-test
        assert direct == pytest.approx(0.8, abs=1e-6)
        smaller = (e * 0.95) / (sd / math.sqrt(n))
        assert sps.nct.sf(crit, df, smaller) + sps.nct.cdf(-crit, df, smaller) < 0.8
        # it is not the 95% half-width: about 1.3-1.4 times it at these n
        half = crit * sd / math.sqrt(n)
        assert 1.25 < e / half < 1.45
    assert stats.pooled_sd([1.0, 2.0], [3, 5]) == pytest.approx(math.sqrt((2 * 1 + 4 * 4) / 6))


def test_power_equals_its_integral_definition_on_random_inputs():
    rng = np.random.default_rng()
    for _ in range(40):
        n = int(rng.integers(2, 12))
        sd = float(rng.uniform(0.05, 3.0))
        effect = float(rng.uniform(0.0, 4.0)) * sd
        fast = stats.power(effect, sd, n)
        assert math.isfinite(fast)
        assert fast == pytest.approx(stats.power_by_integral(effect, sd, n), abs=1e-6), (effect, sd, n)


def test_the_80_percent_power_effect_at_two_pairs():
    # scipy's nct gives nan at df = 1 for noncentrality near 18, which two pairs need for 80% power: the scale
    # epochs table (two seeds of a cell landed) stopped with "function value ... is NaN" inside mde
    for sd in (0.05, 0.1, 0.2, 0.23, 0.5, 1.0, 2.0):
        e = stats.mde(sd, 2)
        assert math.isfinite(e)
        assert stats.power_by_integral(e, sd, 2) == pytest.approx(0.8, abs=1e-6)
        assert stats.power_by_integral(0.95 * e, sd, 2) < 0.8


def test_table_shows_the_hand_computed_change_against_the_default(tmp_path):
    write_rows(tmp_path, "negatives_k", negatives_rows())
    md = tables.build_table("negatives_k", tmp_path, write=True)
    line = line_starting(md, "| pic.K=256 |")
    assert "| 82.33 ± 2.52 |" in line  # mean and sd of 80, 82, 85
    assert "not detected: +2.00 [-0.48, +4.48] p=0.074, effect up to 4.48 (n=3)" in line  # the example above
    assert "80.00, 82.00, 85.00" in line  # the individual values, in seed order
    assert "| pic.K=0 (default) |" in md
    default = line_starting(md, "| pic.K=0 (default) |")
    assert "| — | — |" in default
    csv = (tmp_path / "tables" / "negatives_k.csv").read_text().splitlines()
    header = csv[0].split(",")
    row = dict(zip(header, next(x for x in csv if ",pic.K=256," in x).split(",")))
    assert float(row["delta_knn_top1"]) == 2.0 and float(row["ci_knn_top1"]) == pytest.approx(2.4841, abs=1e-4)
    assert float(row["p_knn_top1"]) == pytest.approx(0.0742, abs=1e-4)
    assert row["seeds"] == "0 1 2" and row["n"] == "3"


def test_partial_default_compares_each_cell_with_its_own_k(tmp_path):
    rows = []
    for s in range(3):
        rows += [make("weight_correction", {"pic.K": 256, "pic.correction": True}, s, 70.0 + s, 60.0),
                 make("weight_correction", {"pic.K": 256, "pic.correction": False}, s, 60.0 + s, 50.0),
                 make("weight_correction", {"pic.K": 4096, "pic.correction": True}, s, 90.0, 80.0),
                 make("weight_correction", {"pic.K": 4096, "pic.correction": False}, s, 89.0, 79.0)]
    write_rows(tmp_path, "weight_correction", rows)
    md = tables.build_table("weight_correction", tmp_path, write=False,
                            default_cell={"pic.correction": True})
    off256 = line_starting(md, "| pic.K=256, pic.correction=False |")
    off4096 = line_starting(md, "| pic.K=4096, pic.correction=False |")
    assert "-10.00 [-10.00, -10.00] p<0.001 (n=3)" in off256  # against K = 256 with the correction, not 4096
    assert "-1.00 [-1.00, -1.00] p<0.001 (n=3)" in off4096
    assert "change against the same cell with pic.correction=True" in md


# ---------------------------------------------------------------------------------------------- determinism
def test_same_rows_give_the_same_bytes_in_any_row_order(tmp_path):
    rows = negatives_rows()
    write_rows(tmp_path / "a", "negatives_k", rows)
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    write_rows(tmp_path / "b", "negatives_k", shuffled)
    assert tables.main(["--results", str(tmp_path / "a")]) == 0
    assert tables.main(["--results", str(tmp_path / "b")]) == 0
    first = {p.name: p.read_bytes() for p in (tmp_path / "a" / "tables").iterdir()}
    assert set(first) == {"negatives_k.md", "negatives_k.csv", "negatives_k.tex", "negatives_k_small.png"}
    assert first == {p.name: p.read_bytes() for p in (tmp_path / "b" / "tables").iterdir()}
    # Again into the same folder: nothing changes.
    assert tables.main(["--results", str(tmp_path / "a")]) == 0
    assert first == {p.name: p.read_bytes() for p in (tmp_path / "a" / "tables").iterdir()}
    assert first["negatives_k_small.png"].startswith(PNG)
    assert "![negatives_k, preset small](negatives_k_small.png)" in first["negatives_k.md"].decode()


def test_committed_tables_regenerate_byte_for_byte(tmp_path):
    """`python -m pic_bench.tables` rebuilds every committed table from the committed rows, byte for byte."""
    rows_dir, tables_dir = REPO / "results" / "rows", REPO / "results" / "tables"
    committed_rows = sorted(rows_dir.glob("*.jsonl")) if rows_dir.is_dir() else []
    committed = sorted(p for p in tables_dir.iterdir() if p.suffix in (".md", ".csv", ".tex")) \
        if tables_dir.is_dir() else []
    # Every table comes from rows, and every rows file has its table committed.
    assert {p.stem for p in committed} <= {p.stem for p in committed_rows}, "a committed table has no rows"
    assert {p.stem for p in committed_rows} <= {p.stem for p in committed if p.suffix == ".md"}, \
        "rows were committed without their table: run python -m pic_bench.tables"
    if not committed_rows:
        return
    shutil.copytree(rows_dir, tmp_path / "rows")
    assert tables.main(["--results", str(tmp_path)]) == 0
    for p in committed:
        regenerated = tmp_path / "tables" / p.name
        assert regenerated.is_file(), f"{p.name} is not regenerated"
        assert regenerated.read_bytes() == p.read_bytes(), f"{p.name} differs from its regeneration"
    for png in tables_dir.glob("*.png"):
        assert (tmp_path / "tables" / png.name).read_bytes().startswith(PNG), f"{png.name} is not regenerated"


# ------------------------------------------------------------------------------------------------ bad input
def test_malformed_and_truncated_rows_are_reported_by_file_and_line(tmp_path, capsys):
    good = [make("negatives_k", {"pic.K": 0}, s, 80.0 + s, 70.0) for s in range(3)]
    lines = [json.dumps(r, sort_keys=True) + "\n" for r in good]
    bad = json.dumps(make("negatives_k", {"pic.K": 256}, 0, 99.0, 99.0), sort_keys=True)
    path = tmp_path / "rows" / "negatives_k.jsonl"
    path.parent.mkdir(parents=True)
    # line 2: not JSON; line 4: a row without its metrics; line 6: a row cut off by a killed writer (no newline)
    path.write_text(lines[0] + "garbage\n" + lines[1] + '{"ablation": "negatives_k", "seed": 3}\n' + lines[2]
                    + bad[: len(bad) // 2])
    assert tables.main(["--results", str(tmp_path)]) == 0
    md = (tmp_path / "tables" / "negatives_k.md").read_text()
    assert "rows/negatives_k.jsonl:2: malformed JSON" in md
    assert "rows/negatives_k.jsonl:4: missing field(s)" in md
    assert "rows/negatives_k.jsonl:6: malformed JSON" in md
    err = capsys.readouterr().err
    assert "negatives_k.jsonl:2" in err and "negatives_k.jsonl:6" in err
    default = line_starting(md, "| pic.K=0 (default) | pic | 3 |")
    assert "81.00 ± 1.00" in default  # the three valid rows
    assert "pic.K=256" not in md.split("## Published reference")[0]  # the truncated row is not half-used


def test_a_row_of_another_ablation_appended_to_a_rows_file_is_a_problem_line_not_a_value(tmp_path, capsys):
    good = [make("negatives_k", {"pic.K": 0}, s, 80.0 + s, 70.0) for s in range(3)]
    stray = make("components", {"pic.K": 0}, 2, 1.0, 1.0)  # same cell and seed, another ablation's row
    write_rows(tmp_path, "negatives_k", good + [stray])
    md = tables.build_table("negatives_k", tmp_path, write=False)
    default = line_starting(md, "| pic.K=0 (default) | pic | 3 |")
    assert "81.00 ± 1.00" in default and "80.00, 81.00, 82.00" in default  # before: seed 2 read 1.00
    assert "more than one row" not in md
    assert "rows/negatives_k.jsonl:4: a row of ablation 'components'" in md
    assert "negatives_k.jsonl:4" in capsys.readouterr().err


@pytest.mark.parametrize("change, why", [
    ({"status": "OK"}, "status 'OK' is not one of ok, failed, skipped"),
    ({"seed": "2"}, "field 'seed' is \"2\", not an integer"),
    ({"seed": True}, "field 'seed' is true, not an integer"),
    ({"metrics": [1, 2]}, "field 'metrics' is [1, 2], not an object"),
    ({"cell": "pic.K=0"}, "field 'cell' is \"pic.K=0\", not an object or null"),
    ({"config_hash": None}, "field 'config_hash' is null, not a string"),
    ({"status": None}, "field 'status' is null, not a string"),
    ({"config": {"pic": 3}}, "field 'config' is not a config"),
    ({"metrics": None, "seed": None, "status": None}, "field"),
])
def test_a_line_that_is_not_a_valid_row_is_a_problem_line_and_stops_nothing(tmp_path, capsys, change, why):
    from pic_bench.suite.status import task_states

    good = [make("negatives_k", {"pic.K": 0}, s, 80.0 + s, 70.0) for s in range(3)]
    other = make("negatives_k", {"pic.K": 0}, 2, 11.0, 11.0)
    other.update(change)
    gone = {k: v for k, v in good[0].items() if k != "preset"}
    write_rows(tmp_path, "negatives_k", good + [other, gone], ["[1, 2]\n"])
    assert tables.main(["--results", str(tmp_path)]) == 0  # before: a TypeError, or the row silently used/lost
    md = (tmp_path / "tables" / "negatives_k.md").read_text()
    assert f"rows/negatives_k.jsonl:4: {why}" in md
    assert "rows/negatives_k.jsonl:5: missing field(s) ['preset']" in md
    assert "rows/negatives_k.jsonl:6: not a row (a JSON list" in md
    assert "80.00, 81.00, 82.00" in line_starting(md, "| pic.K=0 (default) | pic | 3 |")
    assert "11.00" not in md
    states = task_states("negatives_k", tmp_path)  # status reads the same rows
    assert sorted(s["seed"] for s in states) == [0, 1, 2] and {s["state"] for s in states} == {"done"}


def test_a_later_success_supersedes_the_failure_of_its_cell(tmp_path):
    from pic_bench.suite.status import task_states

    failed = make("negatives_k", {"pic.K": 0}, 1, 0.0, 0.0, status="failed", metrics={})
    failed["error"] = "OSError: [Errno 28] No space left on device"
    still = make("negatives_k", {"pic.K": 0}, 2, 0.0, 0.0, status="failed", metrics={})
    still["error"] = "non-finite loss"
    rows = [make("negatives_k", {"pic.K": 0}, 0, 80.0, 70.0), failed, still,
            make("negatives_k", {"pic.K": 0}, 1, 81.0, 70.0)]  # the rerun of seed 1, after space was freed
    write_rows(tmp_path, "negatives_k", rows)
    md = tables.build_table("negatives_k", tmp_path, write=False)
    assert "No space left" not in md  # before: listed under problems beside the successful row
    assert "seed 2: non-finite loss" in md  # a failure not followed by a success stays
    assert "| pic.K=0 (default) | pic | 2 | 80.50 ± 0.71 |" in md
    states = {s["seed"]: s["state"] for s in task_states("negatives_k", tmp_path)}
    assert states == {0: "done", 1: "done", 2: "failed"}


def test_mismatched_configs_for_one_cell_are_reported_not_averaged(tmp_path):
    rows = [make("negatives_k", {"pic.K": 256}, 0, 80.0, 70.0),
            make("negatives_k", {"pic.K": 256}, 1, 90.0, 75.0, extra={"pic.tau": 0.5}),  # same cell, other config
            make("negatives_k", {"pic.K": 256}, 2, 82.0, 71.0)]
    h_a, h_b = rows[0]["config_hash"], rows[1]["config_hash"]
    assert h_a != h_b and rows[2]["config_hash"] == h_a
    write_rows(tmp_path, "negatives_k", rows)
    md = tables.build_table("negatives_k", tmp_path, write=True)
    assert f"has rows with 2 different configs ({', '.join(sorted([h_a, h_b]))}): reported apart, not averaged" in md
    a = line_starting(md, f"| pic.K=256 [config {h_a}] |")
    b = line_starting(md, f"| pic.K=256 [config {h_b}] |")
    assert "| 2 | 81.00 ± 1.41 |" in a  # seeds 0 and 2 only
    assert "| 1 | 90.00 | 75.00 |" in b  # one seed: the value alone (n = 1 says why there is no spread)
    assert "84.00" not in md  # the mean of all three never appears


def test_no_change_against_a_default_that_ran_another_setting(tmp_path):
    """Rows of one cell left over from an earlier preset are not compared with the current default."""
    rows = [make("negatives_k", {"pic.K": 0}, s, 80.0, 70.0) for s in range(3)]
    rows += [make("negatives_k", {"pic.K": 256}, s, 82.0, 71.0) for s in range(3)]
    rows += [make("negatives_k", {"pic.K": 1024}, s, 90.0, 72.0, extra={"optim.epochs": 3}) for s in range(3)]
    write_rows(tmp_path, "negatives_k", rows)
    md = tables.build_table("negatives_k", tmp_path, write=False, default_cell={"pic.K": 0})
    assert "+2.00 [+2.00, +2.00] p<0.001 (n=3)" in line_starting(md, "| pic.K=256 |")
    assert "| — | — |" in line_starting(md, "| pic.K=1024 |")
    assert "'pic.K=1024' (preset small) differs from its default 'pic.K=0 (default)' beyond the cell's settings " \
           "(optim.epochs): no change against it is computed" in md
    assert tables.config_difference(rows[0]["config"], rows[3]["config"], {"pic.K"}) == []


def test_failed_runs_and_duplicate_seeds_are_listed(tmp_path):
    rows = [make("negatives_k", {"pic.K": 0}, 0, 80.0, 70.0), make("negatives_k", {"pic.K": 0}, 1, 81.0, 70.0),
            make("negatives_k", {"pic.K": 0}, 1, 83.0, 70.0)]
    failed = make("negatives_k", {"pic.K": 0}, 2, 0.0, 0.0, status="failed", metrics={})
    failed["error"] = "non-finite loss nan at step 12 (lr 0.4)\ntraceback"
    write_rows(tmp_path, "negatives_k", rows + [failed])
    md = tables.build_table("negatives_k", tmp_path, write=False)
    assert "failed run: cell 'pic.K=0' (pic, preset small) seed 2: non-finite loss nan at step 12 (lr 0.4)" in md
    assert "seed 1 has more than one row; the last is used" in md
    assert "| pic.K=0 (default) | pic | 2 | 81.50 ± 2.12 |" in md  # seeds 0 and 1 (the later row), not 2


def test_presets_and_devices_are_never_averaged_together(tmp_path):
    rows = [make("negatives_k", {"pic.K": 0}, s, 80.0, 70.0) for s in range(2)]
    rows += [make("negatives_k", {"pic.K": 0}, s, 60.0, 50.0, device="NVIDIA H100 80GB HBM3") for s in range(2)]
    rows += [make("negatives_k", {"pic.K": 0}, s, 40.0, 30.0, preset="smoke") for s in range(2)]
    write_rows(tmp_path, "negatives_k", rows)
    md = tables.build_table("negatives_k", tmp_path, write=True)
    assert "## preset `small` on cpu: test machine" in md
    assert "## preset `small` on NVIDIA H100 80GB HBM3" in md
    assert "## preset `smoke` on cpu: test machine" in md
    means = sorted(x.split("|")[4].strip() for x in md.splitlines() if x.startswith("| pic.K=0 (default) |"))
    assert means == ["40.00 ± 0.00", "60.00 ± 0.00", "80.00 ± 0.00"]
    # one plot per (preset, device) would need a numeric axis; one cell has none, so no plot and no link
    assert not list((tmp_path / "tables").glob("*.png")) and "![" not in md


# -------------------------------------------------------------------------------------------------- reference
def test_reference_data_is_in_the_project_with_its_source():
    refs = reference.load()
    pic = [r for r in refs if r.is_pic]
    assert [(r.epochs, r.top1) for r in pic] == [(200, 68.6), (400, 70.3), (1600, 70.8)]
    assert all("bl0/PIC" in r.source and r.backbone == "ResNet-50" for r in refs)
    shared = REPO.parent / "shared" / "reference" / "pic_official_readme.csv"
    if shared.is_file():  # the team's verified transcription: the project copy is byte-identical
        assert shared.read_bytes() == reference.CSV.read_bytes()


def test_reference_is_context_only_when_no_setting_matches(tmp_path):
    write_rows(tmp_path, "negatives_k", negatives_rows())
    md = tables.build_table("negatives_k", tmp_path, write=False)
    ref = md.split("## Published reference")[1]
    assert "listed for context only: no matching setting reproduced here" in ref
    assert "| PIC multi-crop (1x160 + 3x96) | 200 | 68.6 | 88.8 |" in ref
    assert "ours − reference" not in ref


def test_reference_is_shown_beside_a_cell_that_ran_its_setting(tmp_path):
    setting = {**reference.PIC_README_SETTING, "optim.epochs": 200, "eval.protocol": "linear_sgd"}
    rows = [make("epochs", {"optim.epochs": 200}, s, 55.0, 67.0 + s, preset="paper", extra=setting,
                 derived={"N": reference.IMAGENET_1K_TRAIN}) for s in range(3)]
    # the setting judged by the fast probe is not the published protocol: named, never put beside it
    rows += [make("epochs", {"optim.epochs": 1600}, s, 55.0, 71.0, preset="paper",
                  extra={**setting, "optim.epochs": 1600, "eval.protocol": "probe"},
                  derived={"N": reference.IMAGENET_1K_TRAIN}) for s in range(3)]
    # the same setting on a folder that is not ImageNet-1K's size must not match
    rows += [make("epochs", {"optim.epochs": 400}, s, 55.0, 60.0, preset="paper",
                  extra={**setting, "optim.epochs": 400}, derived={"N": 50000}) for s in range(3)]
    write_rows(tmp_path, "epochs", rows)
    md = tables.build_table("epochs", tmp_path, write=True, default_cell={"optim.epochs": 200})
    ref = md.split("## Published reference")[1]
    line = next(x for x in ref.splitlines() if "optim.epochs=200" in x)
    assert "| 68.00 ± 1.00 | 68.6 | -0.60 |" in line
    assert "optim.epochs=400" not in ref
    assert not any("optim.epochs=1600" in x and "70.8" in x for x in ref.splitlines())
    assert "evaluated by the fast probe" in ref and "optim.epochs=1600" in ref
    csv = (tmp_path / "tables" / "epochs.csv").read_text()
    assert ",68.6000,-0.6000" in csv
    assert reference.match(to_dict(build("small"))) is None


# --------------------------------------------------------------------------------------------------- plots
def test_accuracy_plot_follows_only_a_swept_numeric_axis(tmp_path):
    rows = []
    for s in range(2):
        for D, S in ((1024, 128), (1024, 512), (4096, 128)):
            rows.append(make("sliding_window", {"pic.D": D, "pic.S": S}, s, 80.0 + D / 1024, 70.0))
        for sched in ("sliding", "epoch", "official"):
            rows.append(make("sliding_window", {"pic.scheduler": sched}, s, 75.0, 65.0))
    write_rows(tmp_path, "sliding_window", rows)
    md = tables.build_table("sliding_window", tmp_path, write=True)
    png = tmp_path / "tables" / "sliding_window_small.png"
    assert png.read_bytes().startswith(PNG) and "(sliding_window_small.png)" in md
    from pic_bench.report.plots import varied_keys

    table, _ = tables.aggregate(rows, {"pic.scheduler": "sliding"})
    # D is set by some cells only (the schedulers leave it at the preset's): arms, not an axis to draw a line on
    x, series = varied_keys([t for t in table if t["kind"] == "pic"])
    assert x is None and set(series) == {"pic.D", "pic.S", "pic.scheduler"}
    # a grid that sets D in every cell is an axis
    grid, _ = tables.aggregate([r for r in rows if "pic.D" in r["cell"]], None)
    assert varied_keys(grid) == ("pic.D", ["pic.S"])


def test_analysis_tables_and_plots(tmp_path):
    from pic_bench.suite.analysis import visit_distance_metrics

    rows = []
    for sched in ("epoch", "sliding", "official"):
        cfg = build("small", {"data.num_instances": 2000, "pic.D": 400, "pic.S": 50, "optim.epochs": 8,
                              "pic.scheduler": sched})
        m, d = visit_distance_metrics(cfg)
        rows.append({**make("visit_distance", {"pic.scheduler": sched}, 0, 0, 0, kind="visit_distance",
                            extra={"data.num_instances": 2000, "pic.D": 400, "pic.S": 50, "optim.epochs": 8,
                                   "pic.scheduler": sched}, metrics=m, derived=d)})
    write_rows(tmp_path, "visit_distance", rows)
    scaling = []
    for cell, head in (({"pic.K": 0, "pic.correction": False}, 100.0), ({"pic.correction": True}, 4.0)):
        for N in (10_000, 100_000):
            m = {"head_ms_median": head * N / 10_000 if cell.get("pic.K") == 0 else head, "head_ms_p90": 1.0,
                 "step_ms_median": 50.0, "step_ms_p90": 60.0, "state_mib": 2 * N * 128 * 4 / 2**20,
                 "head_peak_mib": 10.0, "step_peak_mib": 20.0, "peak_mem_kind": "cpu_peak_rss"}
            scaling.append(make("scaling", {**cell, "data.num_instances": N}, 0, 0, 0, kind="scaling", metrics=m,
                                extra={**cell, "data.num_instances": N},
                                derived={"N": N, "K_effective": N if cell.get("pic.K") == 0 else 512, "B": 256,
                                         "d": 128, "implementation": "test", **timed(QUIET)}))
    skipped = make("scaling", {"pic.K": 0, "pic.correction": False, "data.num_instances": 10**8}, 0, 0, 0,
                   kind="scaling", status="skipped", metrics={}, derived={"N": 10**8},
                   extra={"pic.K": 0, "pic.correction": False, "data.num_instances": 10**8})
    skipped["error"] = "needs about 95.4 GiB, 70.0 GiB available"
    write_rows(tmp_path, "scaling", scaling + [skipped])
    assert tables.main(["--results", str(tmp_path)]) == 0
    out = tmp_path / "tables"
    assert (out / "visit_distance_small.png").read_bytes().startswith(PNG)
    assert (out / "scaling_small.png").read_bytes().startswith(PNG)
    visit = (out / "visit_distance.md").read_text()
    sliding = line_starting(visit, "| sliding | 2,000 | 400 | 50 |")
    share = float(sliding.split("|")[14])
    assert share >= 0.85  # 7 of 8 revisits within 2D at D / S = 8
    sc = (out / "scaling.md").read_text()
    full = line_starting(sc, "| full softmax (all N), dense update | 100,000 |")
    recent = line_starting(sc, f"| recent K={build('small').pic.K}, correction | 100,000 |")
    assert full.rstrip().endswith("| 1.0 |") and recent.rstrip().endswith("| 250.0 |")  # 1000 ms / 4 ms
    assert "N = 100,000,000: needs about 95.4 GiB, 70.0 GiB available" in sc
    assert (out / "scaling.csv").read_text().count("\n") == 5  # header + 4 measured points
    assert np.isfinite(float((out / "visit_distance.csv").read_text().splitlines()[1].split(",")[9]))


# ------------------------------------------------------------------------------ what a table keeps apart (issue 13)
def _with(row: dict, machine: dict | None = None, data: dict | None = None) -> dict:
    row = json.loads(json.dumps(row))
    if machine is not None:
        row["machine"] = machine
    if data is not None:
        row["data"] = data
    return row


def _pic_means(md: str, prefix: str) -> list[str]:
    return sorted(x.split("|")[4].strip() for x in md.splitlines() if x.startswith(prefix))


def test_cpu_capabilities_are_never_averaged_together(tmp_path):
    rows = [_with(make("negatives_k", {"pic.K": 0}, s, 80.0, 75.0), machine={"cpu_capability": "AVX2"})
            for s in range(2)]
    rows += [_with(make("negatives_k", {"pic.K": 0}, s, 60.0, 55.0), machine={"cpu_capability": "AVX512"})
             for s in range(2)]
    rows += [make("negatives_k", {"pic.K": 0}, s, 40.0, 30.0) for s in range(2)]  # older rows: no machine field
    # K = 256 only on the AVX512 machine: its change is against the AVX512 default, never the AVX2 one
    rows += [_with(make("negatives_k", {"pic.K": 256}, s, 61.0, 55.0), machine={"cpu_capability": "AVX512"})
             for s in range(2)]
    write_rows(tmp_path, "negatives_k", rows)
    md = tables.build_table("negatives_k", tmp_path, write=True, default_cell={"pic.K": 0})
    assert "CPU capability AVX2" in md and "CPU capability AVX512" in md and "CPU capability unrecorded" in md
    assert _pic_means(md, "| pic.K=0 (default) |") == ["40.00 ± 0.00", "60.00 ± 0.00", "80.00 ± 0.00"]
    head = md.split("## Published reference")[0]
    assert "70.00" not in head and "65.00" not in head  # the means of AVX2 and AVX512 rows never appear
    assert "+1.00 [+1.00, +1.00] p<0.001 (n=2)" in line_starting(md, "| pic.K=256 |")
    csv = (tmp_path / "tables" / "negatives_k.csv").read_text().splitlines()
    caps = {dict(zip(csv[0].split(","), x.split(",")))["cpu_capability"] for x in csv[1:]}
    assert caps == {"AVX2", "AVX512", "unrecorded"}


def test_dataset_digests_are_never_averaged_together(tmp_path):
    digest_a, digest_b = "a" * 64, "b" * 64
    old = [make("negatives_k", {"pic.K": 0}, s, 80.0, 70.0, derived={"N": 10000, "index_digest": digest_a})
           for s in range(2)]  # rows written before row["data"] existed
    new = [_with(make("negatives_k", {"pic.K": 0}, 2, 83.0, 70.0, derived={"N": 10000}),
                 data={"dataset": "fashion_mnist", "N": 10000, "image_size": 28, "digest": digest_a})]
    other = [_with(make("negatives_k", {"pic.K": 0}, s, 50.0, 40.0, derived={"N": 10000}),
                   data={"dataset": "fashion_mnist", "N": 10000, "image_size": 28, "digest": digest_b})
             for s in range(3)]
    write_rows(tmp_path, "negatives_k", old + new + other)
    md = tables.build_table("negatives_k", tmp_path, write=False, default_cell={"pic.K": 0})
    # the old rows' index_digest is the same data as the new row's data.digest: one group of three seeds
    assert _pic_means(md, "| pic.K=0 (default) |") == ["50.00 ± 0.00", "81.00 ± 1.73"]
    assert f"`{digest_a[:12]}`" in md and f"`{digest_b[:12]}`" in md


def test_each_section_names_its_data_preset_and_machine(tmp_path):
    rows = [_with(make("negatives_k", {"pic.K": 0}, s, 80.0, 70.0, derived={"N": 10000, "index_digest": "c" * 64}),
                  machine={"cpu_capability": "AVX2"}) for s in range(2)]
    write_rows(tmp_path, "negatives_k", rows)
    md = tables.build_table("negatives_k", tmp_path, write=False)
    head = md.split("## preset `small` on cpu: test machine, CPU capability AVX2")[1].split("| cell |")[0]
    assert "fashion_mnist" in head and "N = 10,000" in head and "28 px" in head and f"`{'c' * 12}`" in head
    assert "plumbing" not in md


def smoke_k_rows() -> list[dict]:
    """negatives_k at the smoke preset: N = 256, so K = 512 and K = 2048 both use all 256 instances."""
    rows = []
    for s in range(2):
        for K, knn in ((64, 30.0), (512, 40.0), (2048, 41.0)):
            rows.append(make("negatives_k", {"pic.K": K}, s, knn + s, 20.0, preset="smoke",
                             derived={"N": 256, "K_effective": min(K, 256)}))
    return rows


def test_the_smoke_section_says_it_is_a_plumbing_check(tmp_path):
    write_rows(tmp_path, "negatives_k", smoke_k_rows())
    md = tables.build_table("negatives_k", tmp_path, write=False, default_cell={"pic.K": 64})
    head = md.split("## preset `smoke`")[1].split("| cell |")[0]
    assert "plumbing check" in head and "256 images at 8 px" in head and "numbers mean nothing" in head


def test_cells_that_are_the_same_run_in_effect_are_flagged(tmp_path):
    write_rows(tmp_path, "negatives_k", smoke_k_rows())
    md = tables.build_table("negatives_k", tmp_path, write=False, default_cell={"pic.K": 64})
    assert line_starting(md, "| pic.K=512 ‡ |") and line_starting(md, "| pic.K=2048 ‡ |")
    assert "‡" not in line_starting(md, "| pic.K=64 (default) |")
    assert "‡ the same run in effect: pic.K=512, pic.K=2048 (K ≥ N = 256" in md


def test_cells_are_labelled_with_nominal_k_and_mean_u(tmp_path):
    rows = []
    for s in range(2):
        for K, u in ((512, 497.0 + s), (2048, 1150.0 + 4 * s)):
            m = {"knn_top1": 80.0, "linear_top1": 70.0, "U_mean": u, "U_min": 256.0, "U_max": u + 10}
            rows.append(make("negatives_k", {"pic.K": K}, s, 0, 0, metrics=m, derived={"N": 10000,
                                                                                        "K_effective": K}))
    write_rows(tmp_path, "negatives_k", rows)
    md = tables.build_table("negatives_k", tmp_path, write=True, default_cell={"pic.K": 512})
    # '|' escaped: inside a markdown table cell it would end the cell
    assert line_starting(md, "| pic.K=512 (default) · mean \\|U\\| 497.5 |")
    assert line_starting(md, "| pic.K=2048 · mean \\|U\\| 1,152.0 |")
    csv = (tmp_path / "tables" / "negatives_k.csv").read_text()
    assert ",1152.0000," in csv


def test_latex_prints_a_single_value_alone(tmp_path):
    rows = [make("components", {}, s, 80.0 + s, 70.0) for s in range(2)]
    rows.append(make("components", {}, 0, 96.5, 83.0, kind="baseline_pixels"))
    write_rows(tmp_path, "components", rows)
    tables.build_table("components", tmp_path, write=True, plots=False)
    tex = (tmp_path / "tables" / "components.tex").read_text()
    assert "n/a" not in tex
    assert "$96.50$ & $83.00$" in tex and r"$80.50 \pm 0.71$" in tex
    md = (tmp_path / "tables" / "components.md").read_text()
    assert "| baseline_pixels | 1 | 96.50 | 83.00 |" in md


# -------------------------------------------------------------------------------- tables for any ablation file
def outside_ablation(tmp_path: Path, name: str = "my_k") -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir(exist_ok=True)
    path = folder / "x.yaml"
    path.write_text(f"name: {name}\nsweep:\n  pic.K: [256, 1024, 0]\ndefault_cell: {{pic.K: 0}}\nseeds: [0, 1, 2]\n")
    return path


def test_tables_for_an_ablation_file_outside_ablations(tmp_path):
    path = outside_ablation(tmp_path)
    results = tmp_path / "res"
    write_rows(results, "my_k", [dict(r, ablation="my_k") for r in negatives_rows()])
    assert tables.main([str(path), "--results", str(results), "--no-plots"]) == 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.yaml"]  # nothing written beside the file
    md = (results / "tables" / "my_k.md").read_text()
    assert "not detected: +2.00 [-0.48, +4.48] p=0.074, effect up to 4.48 (n=3)" in line_starting(md, "| pic.K=256 |")
    assert "change against the default cell (pic.K=0)" in md
    assert "no default cell known" not in md and "(my_k.yaml)" not in md
    assert {p.name for p in (results / "tables").iterdir()} == {"my_k.md", "my_k.csv", "my_k.tex"}
    # build_table takes the loaded file as well as its path
    from pic_bench.config import load_ablation

    assert tables.build_table(load_ablation(path), results, write=False) == md


def test_without_an_ablation_file_the_table_says_so_plainly(tmp_path):
    write_rows(tmp_path, "lost_k", [dict(r, ablation="lost_k") for r in negatives_rows()])
    md = tables.build_table("lost_k", tmp_path, write=False)
    assert "no default cell known (no ablation file), so no change is computed, mean of" not in md
    assert "Δ: not computed: no ablation file named lost_k" in md


@pytest.mark.parametrize("arg", ["never_ran", "{tmp}/missing.yaml"])
def test_a_name_without_rows_or_a_missing_file_is_an_error(tmp_path, capsys, arg):
    write_rows(tmp_path, "negatives_k", negatives_rows())
    arg = arg.format(tmp=tmp_path)
    assert tables.main(["negatives_k", arg, "--results", str(tmp_path), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and ("never_ran" in err[0] or "missing.yaml" in err[0])
    assert not (tmp_path / "tables").exists()  # refused before anything is written


def test_an_ablation_file_that_names_no_rows_is_an_error(tmp_path, capsys):
    path = outside_ablation(tmp_path, "nobody")
    assert tables.main([str(path), "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nobody" in err and str(path) in err


def test_run_builds_the_table_of_the_ablation_it_ran(tmp_path, monkeypatch):
    from pic_bench.suite import run

    path = outside_ablation(tmp_path)
    seen = []
    monkeypatch.setattr(run, "run_local", lambda tasks, quiet=False, fail_fast=False: 0)
    monkeypatch.setattr(tables, "build_table", lambda abl, *a, **k: seen.append(abl) or "")
    assert run.main([str(path), "smoke", "--results", str(tmp_path / "res"), "--no-baselines", "-q"]) == 0
    (abl,) = seen
    assert Path(getattr(abl, "path", abl)) == path


def test_scaling_points_of_two_cpu_capabilities_are_kept_apart(tmp_path):
    rows = []
    for cap, head in (("AVX2", 8.0), ("AVX512", 4.0)):
        m = {"head_ms_median": head, "head_ms_p90": head, "step_ms_median": 50.0, "step_ms_p90": 60.0,
             "state_mib": 5.0, "head_peak_mib": 10.0, "step_peak_mib": 20.0, "peak_mem_kind": "cpu_peak_rss"}
        for cell in ({"pic.K": 0, "pic.correction": False}, {"pic.correction": True}):
            rows.append(_with(make("scaling", {**cell, "data.num_instances": 10_000}, 0, 0, 0, kind="scaling",
                                   metrics=m, extra={**cell, "data.num_instances": 10_000},
                                   derived={"N": 10_000, "K_effective": 512, "B": 256, "d": 128,
                                            **timed(QUIET)}),
                              machine={"cpu_capability": cap}))
    write_rows(tmp_path, "scaling", rows)
    md = tables.build_table("scaling", tmp_path, write=False, default_cell={"pic.K": 0, "pic.correction": False})
    assert md.count("## preset `small` on cpu: test machine, CPU capability") == 2
    # each speed-up is against its own machine's full softmax (8 / 8 and 4 / 4), never across them (8 / 4)
    assert all(x.rstrip().endswith("| 1.0 |") for x in md.splitlines() if x.startswith("| recent K="))


def test_status_builds_the_table_of_the_file_it_was_given(tmp_path, capsys):
    from pic_bench.suite import status

    path = outside_ablation(tmp_path)
    write_rows(tmp_path / "res", "my_k", [dict(r, ablation="my_k") for r in negatives_rows()])
    assert status.main([str(path), "--results", str(tmp_path / "res")]) == 0
    assert "not detected: +2.00 [-0.48, +4.48] p=0.074, effect up to 4.48 (n=3)" in \
        line_starting(capsys.readouterr().out, "| pic.K=256 |")


def test_each_preset_says_which_default_its_change_is_against(tmp_path):
    """epochs.yaml compares small cells with 5 epochs and paper cells with 200: each section says its own."""
    rows = [make("epochs", {"optim.epochs": e}, s, 70.0 + e / 10, 60.0) for e in (2, 5) for s in range(2)]
    rows += [make("epochs", {"optim.epochs": e}, s, 60.0 + e / 100, 50.0, preset="paper", derived={"N": 1000})
             for e in (200, 400) for s in range(2)]
    write_rows(tmp_path, "epochs", rows)
    md = tables.build_table(REPO / "ablations" / "epochs.yaml", tmp_path, write=False)
    assert "Δ: against each preset's own default cell, said in its sections." in md
    paper = md.split("## preset `paper`")[1].split("## preset")[0]
    small = md.split("## preset `small`")[1].split("## preset")[0]
    assert "change against the default cell (optim.epochs=200)" in paper and "optim.epochs=5)" not in paper
    assert "change against the default cell (optim.epochs=5)" in small
    assert "+2.00 [+2.00, +2.00] p<0.001 (n=2)" in line_starting(paper, "| optim.epochs=400 |")  # against 200, not 5
    only_paper = tables.build_table(REPO / "ablations" / "epochs.yaml", tmp_path, write=False, preset="paper")
    assert "Δ: change against the default cell (optim.epochs=200)" in only_paper.split("## preset")[0]


# ------------------------------------------------------------------------------------- timings (issue 20)
def test_step_times_taken_under_load_are_marked_and_quiet_ones_are_not(tmp_path):
    loaded = {**QUIET, "load_end": 6.0}
    rows = []
    for s in range(2):
        rows.append(make("negatives_k", {"pic.K": 0}, s, 80.0, 70.0, derived={"N": 10000, **timed(QUIET)}))
        rows.append(make("negatives_k", {"pic.K": 256}, s, 80.0, 70.0,
                         derived={"N": 10000, **timed(loaded if s == 1 else QUIET)}))
    rows.append(make("negatives_k", {"pic.K": 1024}, 0, 80.0, 70.0))  # no record
    write_rows(tmp_path, "negatives_k", rows)
    md = tables.build_table("negatives_k", tmp_path, write=True, default_cell={"pic.K": 0}, plots=False)
    assert "| 50.5 (60.0) |" in line_starting(md, "| pic.K=0 (default) |")  # quiet: unmarked
    assert "| 50.5† (60.0) |" in line_starting(md, "| pic.K=256 |")
    assert "| 50.0† (60.0) |" in line_starting(md, "| pic.K=1024 |")
    assert "† pic.K=256: step time measured under contention (seed 1: load 6.0 on 2 cores, 4.0 beyond the run's " \
           "own 2 threads); left out of any timing comparison." in md
    assert "† step time not recorded as trusted: pic.K=1024 ran before rows carried" in md
    import csv

    with open(tmp_path / "tables" / "negatives_k.csv", newline="") as f:
        got = {r["cell"]: r["step_time_untrusted"] for r in csv.DictReader(f)}
    assert got["pic.K=0"] == "" and got["pic.K=1024"] == "not recorded" and got["pic.K=256"].startswith("load 6.0")
    assert "dagger" in (tmp_path / "tables" / "negatives_k.tex").read_text()
    # all quiet: no mark and no footnote
    write_rows(tmp_path / "q", "negatives_k", rows[:2])
    md = tables.build_table("negatives_k", tmp_path / "q", write=False, default_cell={"pic.K": 0})
    assert "†" not in md


def test_a_contended_scaling_point_is_left_out_of_the_speed_up(tmp_path):
    rows = []
    for cell, head, seg in (({"pic.K": 0, "pic.correction": False}, 8.0, QUIET),
                            ({"pic.correction": True}, 4.0, {**QUIET, "cpu_s": 3.0}),
                            ({"pic.K": 64, "pic.correction": True}, 2.0, QUIET)):
        m = {"head_ms_median": head, "head_ms_p90": head, "step_ms_median": 50.0, "step_ms_p90": 60.0,
             "state_mib": 5.0, "head_peak_mib": 10.0, "step_peak_mib": 20.0, "peak_mem_kind": "cpu_peak_rss"}
        rows.append(make("scaling", {**cell, "data.num_instances": 10_000}, 0, 0, 0, kind="scaling", metrics=m,
                         extra={**cell, "data.num_instances": 10_000},
                         derived={"N": 10_000, "K_effective": 512, "B": 256, "d": 128, **timed(seg)}))
    write_rows(tmp_path, "scaling", rows)
    md = tables.build_table("scaling", tmp_path, write=False, default_cell={"pic.K": 0, "pic.correction": False})
    contended = line_starting(md, f"| recent K={build('small').pic.K}, correction |")
    assert "| 4.00† (4.00) |" in contended and contended.rstrip().endswith("| n/a |")
    assert line_starting(md, "| recent K=64, correction |").rstrip().endswith("| 4.0 |")  # 8 / 2, both quiet
    assert "† times not trusted, left out of the speed-up column (n/a): CPU time 0.30 x wall" in md


def test_each_change_says_whether_it_was_detected_and_each_section_its_detectable_effect(tmp_path):
    write_rows(tmp_path, "negatives_k", negatives_rows())
    md = tables.build_table("negatives_k", tmp_path, write=False, default_cell={"pic.K": 0})
    # K = 1024: d = (1, -1, 1): not detected, printed with the largest effect its interval allows
    c = paired([79.0, 80.0, 83.0], [78.0, 81.0, 82.0])
    assert f"not detected: +0.33 [{c.lo:+.2f}, {c.hi:+.2f}] p={c.p:.3f}, effect up to {c.largest:.2f} (n=3)" \
        in line_starting(md, "| pic.K=1024 |")
    sd = stats.pooled_sd([1.0, c.sd], [3, 3])  # K = 256 (sd 1) and K = 1024, pooled
    assert f"kNN {stats.mde(sd, 3):.2f}, linear {stats.mde(sd, 3):.2f} points at n = 3 seeds" in md
    assert "The 95% half-width is not this figure" in md


def test_regime_figures_are_stated_per_section_when_rows_have_them(tmp_path):
    rows = []
    for s, sweeps in ((0, 5.0), (1, 5.2)):
        regime = {"sweeps": sweeps, "never_visited": 0.0, "first_visit_share": 0.005, "first_visits_end": 0.17,
                  "revisit_distance_D": 1.07}
        rows.append(make("negatives_k", {"pic.K": 0}, s, 80.0, 70.0, derived={"N": 10000, "regime": regime}))
    write_rows(tmp_path, "negatives_k", rows)
    md = tables.build_table("negatives_k", tmp_path, write=False, default_cell={"pic.K": 0})
    assert ("regime: 5.0-5.2 sweeps, 0.0% never visited, 0.5% of samples first visits, first visits done by "
            "17.0% of training, mean revisit distance 1.07 D.") in md
    write_rows(tmp_path / "none", "negatives_k", [make("negatives_k", {"pic.K": 0}, 0, 80.0, 70.0)])
    assert "regime:" not in tables.build_table("negatives_k", tmp_path / "none", write=False)
def test_old_names_digests_and_new_content_digests_are_two_sections(tmp_path):
    """Issue 21: rows that digest the data's content and rows written before (the instance list's digest only)
    are shown apart, even when the hex digest happens to be the same string, and each section says which it is."""
    old = [make("negatives_k", {"pic.K": 256}, s, 80.0, 70.0, derived={"N": 10000, "index_digest": "a" * 64})
           for s in range(2)]
    new = []
    for s in range(2):
        r = make("negatives_k", {"pic.K": 256}, s, 60.0, 50.0, derived={"N": 10000, "index_digest": "a" * 64,
                                                                         "data_digest": "b" * 64})
        r["data"] = {"dataset": "fashion_mnist", "N": 10000, "image_size": 28, "digest": "b" * 64,
                     "digest_of": "content"}
        new.append(r)
    write_rows(tmp_path, "negatives_k", old + new)
    md = tables.build_table("negatives_k", tmp_path, preset="small", write=False, plots=False)
    assert "instance list digest `aaaaaaaaaaaa`" in md
    assert "content digest (train and evaluation images) `bbbbbbbbbbbb`" in md  # before: no such section
    assert md.count("| pic.K=256 |") >= 2  # one line per section: never averaged together


def test_a_table_names_its_ablation_file_relative_to_the_repository(tmp_path, monkeypatch):
    """components.yaml names no default_cell: its table says so, naming the file the same way whether the file is
    found by name or given as a path, and from whichever folder: the same rows give the same table bytes."""
    repo = Path(__file__).resolve().parent.parent
    (tmp_path / "res" / "rows").mkdir(parents=True)
    multi_crop = [line for line in (repo / "results" / "rows" / "components.jsonl").read_text().splitlines()
                  if '"data.small_views": 3' in line]  # no full-PIC row
    assert multi_crop
    (tmp_path / "res" / "rows" / "components.jsonl").write_text("\n".join(multi_crop) + "\n")
    monkeypatch.chdir(tmp_path)
    texts = {tables.build_table(a, tmp_path / "res", write=False)
             for a in ("components", repo / "ablations" / "components.yaml")}
    assert len(texts) == 1
    (text,) = texts
    assert "Δ: not computed: ablations/components.yaml names no default_cell." in text
    assert str(repo) not in text

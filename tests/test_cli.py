"""The command line: overrides of swept keys narrow the sweep, --slurm takes only cluster keys, --dry-run runs
nothing, and a first run that is a run (the plain word when nothing is left to train, the comparison with the
committed rows, the smoke preset's plumbing notice).

    PYTHONPATH=$PWD python -m pytest tests/test_cli.py -q -p no:cacheprovider --benchmark-disable
"""
from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

import pytest

from pic_bench.report import compare
from pic_bench.suite import run
from pic_bench.report.results import read_rows

REPO = Path(__file__).resolve().parent.parent
NEG_K = str(REPO / "ablations" / "negatives_k.yaml")
WEIGHT = str(REPO / "ablations" / "weight_correction.yaml")


def main(capsys, *argv) -> tuple[int, str, str]:
    rc = run.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def listed(out: str, kind: str = "pic") -> list[tuple[dict, str]]:
    """(cell, done|todo) of every task line of a dry run."""
    got = []
    for line in out.splitlines():
        name, _, rest = line.partition(" ")
        if f"/{kind}/" in name:
            cell, _, state = rest.rpartition(" ")
            got.append((ast.literal_eval(cell), state))
    return got


# negatives_k as it was before its positions arm (issue 13): K swept, the narrowing these tests are about
SWEPT_K = "name: negatives_k\nsweep: {pic.K: [128, 512, 2048, 0]}\ndefault_cell: {pic.K: 0}\nseeds: [0, 1, 2]\n"
SWEPT_K_FILE = Path(__file__).resolve().parent / "data" / "swept_k.yaml"


def swept_k(tmp_path: Path) -> Path:
    return write(tmp_path, SWEPT_K, "swept_k.yaml")


def write(tmp_path: Path, text: str, name: str = "abl.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


# ------------------------------------------------------------------------------------------------- overrides
def test_an_override_of_a_swept_key_narrows_the_sweep_to_that_cell(capsys):
    rc, out, err = main(capsys, NEG_K, "smoke", "pic.K=128", "--seeds", "0", "--dry-run")
    assert rc == 0, err
    assert [c for c, _ in listed(out)] == [{"pic.K": 128}]


def test_a_value_outside_the_sweep_runs_as_its_own_cell_labelled_with_it(capsys, tmp_path):
    rc, out, err = main(capsys, swept_k(tmp_path), "smoke", "pic.K=64", "--seeds", "0", "--no-baselines", "optim.max_steps=2",
                        "--results", tmp_path, "--checkpoints", tmp_path / "ck", "-q")
    assert rc == 0, err
    rows, problems = read_rows(tmp_path, "negatives_k")
    assert not problems and len(rows) == 1
    assert rows[0]["cell"] == {"pic.K": 64} and rows[0]["config"]["pic"]["K"] == 64


def test_the_multirun_spelling_runs_each_value(capsys):
    rc, out, err = main(capsys, NEG_K, "smoke", "pic.K=128,512", "--seeds", "0", "--dry-run")
    assert rc == 0, err
    assert [c for c, _ in listed(out)] == [{"pic.K": 128}, {"pic.K": 512}]


def test_narrowing_one_axis_of_a_product_keeps_the_other(capsys):
    rc, out, err = main(capsys, WEIGHT, "smoke", "pic.K=64", "--seeds", "0", "--dry-run")
    assert rc == 0, err
    assert [c for c, _ in listed(out)] == [{"pic.K": 64, "pic.correction": True},
                                           {"pic.K": 64, "pic.correction": False}]
    rc, out, err = main(capsys, WEIGHT, "smoke", "pic.correction=false", "--seeds", "0", "--dry-run")
    assert [c for c, _ in listed(out)] == [{"pic.K": 128, "pic.correction": False},
                                           {"pic.K": 512, "pic.correction": False}]


def test_labels_always_equal_what_ran():
    from pic_bench.config import load_ablation, parse_cli_overrides

    abl = load_ablation(WEIGHT).for_preset("smoke")
    for cli in (["pic.K=64"], ["pic.K=128,64"], ["pic.correction=false", "pic.tau=0.1"], ["pic.K=512"]):
        tasks = run.expand(abl, "smoke", parse_cli_overrides(cli), "results")
        assert tasks
        for t in tasks:
            for key, value in t.cell.items():
                section, name = key.split(".")
                assert getattr(getattr(t.cfg, section), name) == value, (cli, t.cell)
            assert t.cfg.pic.tau == (0.1 if "pic.tau=0.1" in cli else 0.2)


def test_an_override_of_a_key_that_is_not_swept_applies_to_every_cell(capsys):
    from pic_bench.config import load_ablation

    tasks = run.expand(load_ablation(SWEPT_K_FILE).for_preset("smoke"), "smoke", {"pic.tau": 0.1}, "results",
                       baselines=False)
    assert [t.cell for t in tasks if t.cfg.run.seed == 0] == [{"pic.K": k} for k in (128, 512, 2048, 0)]
    assert {t.cfg.pic.tau for t in tasks} == {0.1}


def test_cells_that_resolve_to_one_config_are_merged_with_a_warning(capsys, tmp_path):
    f = write(tmp_path, "name: dup\ncells: [{pic.K: 64}, {pic.tau: 0.2}, {pic.tau: 0.1}]\nseeds: [0]\n")
    rc, out, err = main(capsys, f, "smoke", "--dry-run", "--no-baselines")
    assert rc == 0, err
    assert [c for c, _ in listed(out)] == [{"pic.K": 64}, {"pic.tau": 0.1}]
    assert "warning:" in err and "'pic.K=64'" in err and "'pic.tau=0.2'" in err and "same config" in err


def test_run_seed_on_the_command_line_is_refused_in_favour_of_seeds(capsys):
    rc, out, err = main(capsys, NEG_K, "smoke", "run.seed=5", "--dry-run")
    assert rc == 2
    line = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "run.seed" in line[0] and "--seeds 5" in line[0]


def test_cells_that_are_the_same_run_in_effect_are_flagged(capsys, tmp_path):
    rc, out, err = main(capsys, swept_k(tmp_path), "smoke", "--seeds", "0", "--dry-run")
    assert rc == 0
    assert "cells 'pic.K=512' and 'pic.K=2048' are the same run at N=256" in err
    assert len(listed(out)) == 4  # flagged, not refused or merged
    rc, out, err = main(capsys, NEG_K, "small", "--seeds", "0", "--dry-run")
    assert "same run" not in err  # N = 10,000: every K differs


# ------------------------------------------------------------------------------------------------------ slurm
def test_config_overrides_after_slurm_still_go_to_the_config(capsys, monkeypatch):
    from pic_bench.suite import launch

    monkeypatch.setattr(launch, "partitions", lambda: ["debug"])  # the dry run asks sinfo; no cluster needed here
    rc, out, err = main(capsys, NEG_K, "smoke", "--executor", "slurm", "--slurm", "time_min=30", "pic.K=128",
                        "--seeds", "0", "--dry-run")
    assert rc == 0, err
    assert [c for c, _ in listed(out)] == [{"pic.K": 128}]


def test_slurm_help_says_which_keys_it_takes(capsys):
    with pytest.raises(SystemExit):
        run.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--slurm" in text and "dotted" in text


def test_cluster_keys_go_to_the_cluster(monkeypatch, tmp_path):
    from pic_bench.suite import launch

    seen = {}

    def fake_submit(tasks, cluster, **kw):
        seen.update(kw, n=len(tasks))
        return 0

    monkeypatch.setattr(launch, "submit", fake_submit)
    assert run.main([NEG_K, "smoke", "--executor", "slurm", "--slurm", "time_min=30", "pic.K=128", "partition=debug",
                     "--seeds", "0", "--no-baselines", "--results", str(tmp_path)]) == 0
    assert seen["overrides"] == ["time_min=30", "partition=debug"] and seen["n"] == 1


# ---------------------------------------------------------------------------------------------------- dry run
def test_a_dry_run_never_runs_anything(capsys, tmp_path):
    rc, out, err = main(capsys, REPO / "ablations" / "scaling.yaml", "smoke", "--seeds", "0", "--results", tmp_path,
                        "data.num_instances=3000", "--dry-run")
    assert rc == 0, err
    assert not (tmp_path / "rows").exists() and not (tmp_path / "tables").exists()
    assert [s for _, s in listed(out, "scaling")] == ["todo"] * 3


def test_a_dry_run_lists_done_and_todo(capsys, tmp_path):
    rc, *_ = main(capsys, NEG_K, "smoke", "pic.K=128", "--seeds", "0", "--no-baselines", "optim.max_steps=2",
                  "--results", tmp_path, "--checkpoints", tmp_path / "ck", "-q")
    assert rc == 0
    rc, out, err = main(capsys, NEG_K, "smoke", "pic.K=128,512", "--seeds", "0", "--no-baselines",
                        "optim.max_steps=2", "--results", tmp_path, "--dry-run")
    assert listed(out) == [({"pic.K": 128}, "done"), ({"pic.K": 512}, "todo")]


# ------------------------------------------------------------------------------------------- a first run that runs
def test_when_every_row_exists_say_so_and_how_to_reproduce(capsys, tmp_path):
    argv = (NEG_K, "smoke", "pic.K=128", "--seeds", "0", "--no-baselines", "optim.max_steps=2", "--results",
            tmp_path, "--checkpoints", tmp_path / "ck", "-q")
    assert main(capsys, *argv)[0] == 0
    rc, out, err = main(capsys, *argv)
    assert rc == 0
    text = " ".join((out + err).split())
    assert "nothing to train" in text and "--results runs/mine" in text and "fresh folder" in text


def test_a_run_into_a_fresh_folder_ends_with_the_committed_comparison(capsys, tmp_path, monkeypatch):
    committed, mine = tmp_path / "committed", tmp_path / "mine"
    argv = (NEG_K, "smoke", "pic.K=128", "--seeds", "0", "optim.max_steps=2", "-q", "--checkpoints", tmp_path / "ck")
    monkeypatch.setattr(compare, "COMMITTED", committed)
    assert main(capsys, *argv, "--results", committed)[0] == 0
    rc, out, err = main(capsys, *argv, "--results", mine)
    assert rc == 0, err
    text = out + err
    assert "committed" in text and "bit-identical" in text and "0.2 (measured)" in text
    table = [line for line in text.splitlines() if line.startswith("| pic.K=128 | pic | 1 / 1 |")]
    assert len(table) == 1 and "+0.00" in table[0], text  # same machine, same versions: bit-identical


def test_the_smoke_preset_says_it_is_a_plumbing_check(capsys, tmp_path):
    rc, out, err = main(capsys, NEG_K, "smoke", "pic.K=128", "--seeds", "0", "--no-baselines", "optim.max_steps=2",
                        "--results", tmp_path, "--checkpoints", tmp_path / "ck", "-q")
    assert rc == 0
    assert (out + err).count("plumbing check (256 images at 8 px: numbers mean nothing)") == 2


# --------------------------------------------------------------------------------------------------- compare
def row(kind, chash, seed, knn, lin, digest=None, preset="small", cell=None):
    r = {"ablation": "a", "preset": preset, "kind": kind, "config_hash": chash, "seed": seed, "status": "ok",
         "cell": cell or {"pic.K": 1}, "metrics": {"knn_top1": knn, "linear_top1": lin}, "derived": {},
         "config": {}}
    if digest:
        r["derived"]["index_digest"] = digest
    return r


def test_compare_puts_our_means_beside_the_committed_ones():
    ours = [row("pic", "h1", 0, 80.0, 85.0), row("pic", "h1", 1, 82.0, 87.0), row("baseline_random", "h1", 0, 70, 75)]
    theirs = [row("pic", "h1", 0, 80.5, 85.0), row("pic", "h1", 1, 80.5, 86.0), row("pic", "h2", 0, 1.0, 1.0)]
    lines = compare.compare_rows(ours, theirs)
    assert len(lines) == 1  # the baseline has no committed row; h2 is not ours
    (c,) = lines
    assert (c.kind, c.n_ours, c.n_committed) == ("pic", 2, 2)
    assert c.knn == pytest.approx((81.0, 80.5)) and c.linear == pytest.approx((86.0, 85.5))
    md = compare.format_comparison(lines)
    assert "| pic.K=1 | pic | 2 / 2 | 81.00 | 80.50 | +0.50 | 86.00 | 85.50 | +0.50 |" in md


def test_compare_matches_the_data_digest_when_both_rows_have_one():
    ours = [row("pic", "h1", 0, 80.0, 85.0, digest="d1")]
    assert compare.compare_rows(ours, [row("pic", "h1", 0, 70.0, 75.0, digest="d2")]) == []
    assert len(compare.compare_rows(ours, [row("pic", "h1", 0, 70.0, 75.0, digest="d1")])) == 1
    assert compare.compare_rows(ours, [row("pic", "h1", 0, 70.0, 75.0, preset="paper")]) == []
    with_data = row("pic", "h1", 0, 70.0, 75.0)
    with_data["data"] = {"digest": "d2"}
    assert compare.compare_rows(ours, [with_data]) == []


def test_committed_rows_compare_with_themselves():
    """The committed negatives_k rows against themselves: every difference is zero."""
    rows, _ = read_rows(compare.COMMITTED, "negatives_k")
    lines = compare.compare_rows(rows, rows)
    assert lines and all(abs(c.knn[0] - c.knn[1]) < 1e-9 for c in lines)
    json.dumps([c.__dict__ for c in lines])


def test_cells_that_differ_only_outside_the_hash_are_not_merged(capsys, tmp_path):
    """data.root and run.threads are left out of the config hash, but a sweep over them is two runs."""
    f = write(tmp_path, "name: thr\ncells: [{run.threads: 1}, {run.threads: 2}]\nseeds: [0]\n")
    rc, out, err = main(capsys, f, "smoke", "--dry-run", "--no-baselines")
    assert rc == 0, err
    assert [c for c, _ in listed(out)] == [{"run.threads": 1}, {"run.threads": 2}] and "same config" not in err


def test_a_slurm_dry_run_checks_the_cluster_settings_too(capsys, tmp_path, monkeypatch):
    from pic_bench.suite import launch

    monkeypatch.setattr(launch, "partitions", lambda: ["debug"])  # what sinfo lists, with or without a cluster up
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("time_min: 30\n")
    for item, must in (("time_limit=30", "unknown cluster key 'time_limit'"),
                       ("partition=no_such_partition", "partition 'no_such_partition' does not exist")):
        rc, out, err = main(capsys, NEG_K, "smoke", "--executor", "slurm", "--cluster", cluster, "--slurm", item,
                            "--dry-run")
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert rc == 2 and len(errors) == 1 and must in errors[0], err


def test_compare_uses_the_committed_rows_of_our_seeds_where_it_has_them():
    theirs = [row("pic", "h1", s, 80.0 + s, 85.0) for s in (0, 1, 2)]
    (c,) = compare.compare_rows([row("pic", "h1", 1, 81.0, 85.0)], theirs)
    assert c.n_committed == 1 and c.knn == pytest.approx((81.0, 81.0))
    (c,) = compare.compare_rows([row("pic", "h1", 7, 81.0, 85.0)], theirs)
    assert c.n_committed == 3 and c.knn == pytest.approx((81.0, 81.0))

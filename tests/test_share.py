"""One experiment, run once: a cell that another ablation's row has already run (the same kind, preset, seed, data
and a config differing only in eval.baselines, ``config.run_hash``) takes that row, marked ``shared_from``, instead
of training again; ``--no-share`` trains it."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pic_bench.config import PRESETS, apply, config_hash, from_dict, run_hash, with_added_keys
from pic_bench.report.results import curve_file, read_rows
from pic_bench.report.tables import build_table
from pic_bench.suite import run

REPO = Path(__file__).resolve().parent.parent
NEG_K = str(REPO / "ablations" / "negatives_k.yaml")
WEIGHT = str(REPO / "ablations" / "weight_correction.yaml")
FAST = ("--seeds", "0", "--no-baselines", "optim.max_steps=2", "-q")


def main(capsys, *argv) -> tuple[int, str, str]:
    rc = run.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def states(out: str) -> dict[str, str]:
    """ablation/kind -> done | todo | shared, of each task line of a dry run."""
    return {line.split("/")[0]: line.rsplit(" ", 1)[1] for line in out.splitlines() if "/pic/" in line}


def k128(tmp_path: Path, capsys) -> dict:
    """negatives_k's K = 128 cell, run for 2 steps; its row."""
    rc, _, err = main(capsys, NEG_K, "smoke", "pic.K=128", *FAST, "--results", tmp_path, "--checkpoints",
                      tmp_path / "ck")
    assert rc == 0, err
    (src,) = read_rows(tmp_path, "negatives_k")[0]
    return src


def test_run_hash_ignores_only_what_a_run_does_not_compute():
    cfg = apply(from_dict({}), PRESETS["smoke"], "the smoke preset")
    off = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, baselines=not cfg.eval.baselines))
    assert config_hash(off) != config_hash(cfg) and run_hash(off) == run_hash(cfg)
    other = dataclasses.replace(cfg, pic=dataclasses.replace(cfg.pic, tau=cfg.pic.tau / 2))
    assert run_hash(other) != run_hash(cfg)


def test_a_cell_another_ablation_ran_takes_its_row_instead_of_training(capsys, tmp_path):
    src = k128(tmp_path, capsys)
    argv = (WEIGHT, "smoke", "pic.K=128", "pic.correction=true", *FAST, "--results", tmp_path,
            "--checkpoints", tmp_path / "ck")
    rc, out, err = main(capsys, *argv, "--dry-run")
    assert rc == 0, err
    assert states(out) == {"weight_correction": "shared"}
    assert "takes the row of negatives_k" in out and not (tmp_path / "rows" / "weight_correction.jsonl").exists()

    rc, out, err = main(capsys, *argv)
    assert rc == 0, err
    assert "shared: weight_correction/pic/smoke/" in err
    (row,) = read_rows(tmp_path, "weight_correction")[0]
    assert not list((tmp_path / "ck").glob("weight_correction/**/*.pt"))  # nothing trained
    assert not (tmp_path / "curves" / "weight_correction").exists()
    assert row["metrics"] == src["metrics"] and row["derived"] == src["derived"]
    assert (row["git_sha"], row["time"], row["machine"]) == (src["git_sha"], src["time"], src["machine"])
    assert row["ablation"] == "weight_correction" and row["cell"] == {"pic.K": 128, "pic.correction": True}
    assert row["config"]["eval"]["baselines"] is False and src["config"]["eval"]["baselines"] is True
    assert row["config_hash"] != src["config_hash"]
    assert run_hash(from_dict(row["config"])) == run_hash(from_dict(src["config"]))
    shared = row["shared_from"]
    assert (shared["ablation"], shared["config_hash"], shared["cell"]) == ("negatives_k", src["config_hash"],
                                                                         {"pic.K": 128})
    assert shared["differs"] == {"eval.baselines": [False, True]}
    # its curve is the run's: curve_ends and loss_rise read it through curve_file
    assert curve_file(tmp_path, row) == curve_file(tmp_path, src) is not None
    assert curve_file(tmp_path, row).parent.name == "negatives_k"
    # done now: a second run shares nothing and trains nothing
    rc, out, err = main(capsys, *argv, "--dry-run")
    assert states(out) == {"weight_correction": "done"}
    # the table says which seeds are shared, and from where
    text = build_table(WEIGHT, tmp_path, write=False)
    assert "Shared runs" in text and "seed 0 from negatives_k" in text


def test_no_share_trains_it(capsys, tmp_path):
    k128(tmp_path, capsys)
    rc, out, err = main(capsys, WEIGHT, "smoke", "pic.K=128", "pic.correction=true", *FAST, "--no-share",
                        "--results", tmp_path, "--checkpoints", tmp_path / "ck")
    assert rc == 0, err
    (row,) = read_rows(tmp_path, "weight_correction")[0]
    assert "shared_from" not in row
    assert list((tmp_path / "curves" / "weight_correction").glob("*.jsonl"))


def test_only_the_same_experiment_is_shared(capsys, tmp_path):
    k128(tmp_path, capsys)
    for extra in (("pic.correction=false",), ("pic.correction=true", "pic.tau=0.1")):
        rc, out, err = main(capsys, WEIGHT, "smoke", "pic.K=128", *extra, *FAST, "--results", tmp_path, "--dry-run")
        assert rc == 0, err
        assert states(out) == {"weight_correction": "todo"}, extra
    rc, out, err = main(capsys, WEIGHT, "smoke", "pic.K=128", "pic.correction=true", *FAST[2:], "--seeds", "1",
                        "--results", tmp_path, "--dry-run")
    assert states(out) == {"weight_correction": "todo"}  # another seed
    rc, out, err = main(capsys, WEIGHT, "smoke", "pic.K=128", "pic.correction=true", *FAST,
                        "data.num_instances=200", "--results", tmp_path, "--dry-run")
    assert states(out) == {"weight_correction": "todo"}  # other data


def test_a_shared_row_is_never_shared_again(capsys, tmp_path):
    k128(tmp_path, capsys)
    assert main(capsys, WEIGHT, "smoke", "pic.K=128", "pic.correction=true", *FAST, "--results", tmp_path)[0] == 0
    (tmp_path / "rows" / "negatives_k.jsonl").rename(tmp_path / "negatives_k.jsonl")  # the run's own row gone
    other = tmp_path / "other.yaml"
    other.write_text("name: other\noverrides: {eval.baselines: false}\ncells:\n  - {pic.K: 128}\n"
                     "default_cell: {pic.K: 128}\nseeds: [0]\n")
    rc, out, err = main(capsys, other, "smoke", *FAST, "--results", tmp_path, "--dry-run")
    assert rc == 0, err
    assert states(out) == {"other": "todo"}  # weight_correction's row only took it: not a source
    rows = [json.loads(x) for x in (tmp_path / "rows" / "weight_correction.jsonl").read_text().splitlines()]
    assert rows[0]["shared_from"]["ablation"] == "negatives_k"


def test_committed_rows_of_one_experiment_agree_to_the_last_digit():
    """What sharing rests on: the committed rows that ran one experiment (one run hash) in several ablation files,
    on one kind of machine and the same data, have the same accuracies and final loss; eval.baselines changes
    nothing a run computes."""
    groups: dict[tuple, list[dict]] = {}
    history = [json.loads(line) for path in sorted((REPO / "results" / "rows" / "history").glob("*.jsonl"))
               for line in path.read_text().splitlines()]  # the scale rows with the rate to 0 ran before sharing
    for row in history:
        row["config"] = with_added_keys(row["config"])
    for row in read_rows(REPO / "results")[0] + history:
        if row.get("status") != "ok" or row.get("kind", "pic") != "pic" or row.get("shared_from"):
            continue
        key = (row["preset"], run_hash(from_dict(row["config"])), row["seed"], (row.get("data") or {}).get("digest"),
               (row.get("machine") or {}).get("cpu_model"))
        groups.setdefault(key, []).append(row)
    several = {k: rs for k, rs in groups.items() if len({r["ablation"] for r in rs}) > 1}
    assert len(several) >= 9  # history's scale default (6 files) and K = 128 (2) at 3 seeds, small pairs
    for key, rs in several.items():
        got = {tuple(r["metrics"].get(m) for m in ("knn_top1", "linear_top1", "final_loss")) for r in rs}
        assert len(got) == 1, (key, [(r["ablation"], r["metrics"].get("knn_top1")) for r in rs])


def test_the_shared_runs_line_names_a_baselines_kind():
    """A baseline row carries its ablation's default cell: without its kind, "default seed 0 from sliding_window"
    reads as the trained default's row."""
    from pic_bench.report.tables import shared_lines
    ts = [{"cell": "default", "kind": "pic", "shared": {0: "negatives_k", 1: "negatives_k"}},
          {"cell": "default", "kind": "baseline_pixels", "shared": {0: "sliding_window"}}]
    assert shared_lines(ts)[0].endswith(": default seeds 0, 1 from negatives_k; "
                                        "default (baseline_pixels) seed 0 from sliding_window.")

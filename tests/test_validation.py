"""One validation before any work: every refusal is one `error:` line naming key, value and source, exit 2.

    PYTHONPATH=$PWD python -m pytest tests/test_validation.py -q -p no:cacheprovider --benchmark-disable

Most cases go through ``--dry-run`` (which validates everything and trains nothing), so a check that is missing
makes the test fail fast instead of training; a few go through a real run to show ``run`` refuses before work.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from pic_bench.suite import run
from pic_bench.config import ConfigError, build, load_ablation, parse_cli_overrides, read_yaml_mapping, validate

REPO = Path(__file__).resolve().parent.parent
NEG_K = str(REPO / "ablations" / "negatives_k.yaml")


def main(capsys, *argv) -> tuple[int, str, str]:
    rc = run.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def refused(capsys, *argv, must: tuple[str, ...] = ()) -> str:
    rc, out, err = main(capsys, *argv)
    assert rc == 2, (rc, out, err)
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for m in must:
        assert m in lines[0], (m, lines[0])
    return lines[0]


def write(tmp_path: Path, text: str, name: str = "abl.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


# ------------------------------------------------------------------------------------------------------ ranges
RANGE_CASES = [
    ("model.dim=0", "model.dim"), ("model.width=0", "model.width"), ("model.head_hidden=0", "model.head_hidden"),
    ("data.image_size=0", "data.image_size"), ("data.num_instances=-5", "data.num_instances"),
    ("data.test_size=-1", "data.test_size"), ("data.small_views=-1", "data.small_views"),
    ("data.workers=-3", "data.workers"), ("eval.knn_k=0", "eval.knn_k"), ("eval.knn_t=0", "eval.knn_t"),
    ("eval.linear_epochs=0", "eval.linear_epochs"), ("optim.epochs=.inf", "optim.epochs"),
    ("optim.epochs=0", "optim.epochs"), ("optim.warmup_epochs=-1", "optim.warmup_epochs"),
    ("optim.warmup_epochs=nan", "optim.warmup_epochs"), ("optim.max_steps=-1", "optim.max_steps"),
    ("optim.batch_size=1", "optim.batch_size"), ("optim.base_lr=0", "optim.base_lr"),
    ("optim.base_lr=nan", "optim.base_lr"), ("optim.base_lr=-.inf", "optim.base_lr"),
    ("run.threads=-1", "run.threads"), ("run.log_every=0", "run.log_every"),
    ("run.checkpoint_every=-1", "run.checkpoint_every"), ("pic.tau=.nan", "pic.tau"),
]


@pytest.mark.parametrize("item, key", RANGE_CASES, ids=[c[0] for c in RANGE_CASES])
def test_every_range_is_checked_at_the_dry_run_naming_key_value_and_source(capsys, item, key):
    value = item.split("=", 1)[1]
    line = refused(capsys, NEG_K, "smoke", item, "--dry-run", "--seeds", "0")
    assert key in line and "command line" in line
    assert value.replace(".", "").lower() in line.lower(), line  # the value (0, -5, inf, -inf, nan)


def test_small_size_is_checked_only_when_small_views_are_on(capsys):
    refused(capsys, NEG_K, "smoke", "data.small_views=1", "data.small_size=0", "--dry-run",
            must=("data.small_size", "command line"))
    rc, _, err = main(capsys, NEG_K, "smoke", "data.small_size=0", "--dry-run")
    assert rc == 0, err


@pytest.mark.parametrize("items, must", [
    (("data.crop_min=0.5", "data.small_crop_max=0.3"), ("data.small_crop_max=0.3", "data.crop_min=0.5")),
    (("data.crop_min=0.3", "data.small_crop_max=0.3"), ("data.small_crop_max=0.3", "data.crop_min=0.3")),
    (("data.crop_min=0.2", "data.small_crop_max=1.5"), ("data.small_crop_max=1.5", "(0, 1]")),
    (("data.crop_min=0.2", "data.small_crop_max=0"), ("data.small_crop_max=0", "(0, 1]")),
])
def test_multi_crop_areas_must_leave_the_small_crops_a_range(capsys, items, must):
    """small crops take area [crop_min, small_crop_max] and large ones [small_crop_max, 1] (data/augment.py)."""
    refused(capsys, NEG_K, "smoke", "data.small_views=1", "data.small_size=4", *items, "--dry-run", "--seeds", "0",
            must=(*must, "command line"))
    rc, _, err = main(capsys, NEG_K, "smoke", *items, "--dry-run", "--seeds", "0")  # no small crops: unused
    assert rc == 0, err


def test_a_real_run_refuses_before_any_work(capsys, tmp_path):
    """Without --dry-run too: nothing trains and nothing is written."""
    refused(capsys, NEG_K, "smoke", "model.dim=0", "--seeds", "0", "--no-baselines", "optim.max_steps=2",
            "--results", tmp_path, "--checkpoints", tmp_path / "ck", "-q", must=("model.dim",))
    assert not (tmp_path / "rows").exists()


def test_a_bad_value_in_the_file_names_the_file(capsys, tmp_path):
    f = write(tmp_path, """\
        name: dims
        overrides: {eval.knn_k: 0}
        """)
    refused(capsys, f, "smoke", "--dry-run", must=("eval.knn_k", "abl.yaml"))


def test_validate_alone_names_key_and_value():
    cfg = build("smoke", {"model.dim": 0})
    with pytest.raises(ConfigError, match="model.dim=0"):
        validate(cfg)


# ------------------------------------------------------------------------------------------------ seeds, YAML
def test_bad_seeds_on_the_command_line(capsys):
    refused(capsys, NEG_K, "smoke", "--seeds", "a,b", "--dry-run", must=("--seeds", "a,b"))
    refused(capsys, NEG_K, "smoke", "--seeds", "-1", "--dry-run", must=("--seeds", "-1"))


def test_negative_and_empty_seeds_in_the_file(capsys, tmp_path):
    refused(capsys, write(tmp_path, "name: s\nseeds: [-1]\n"), "smoke", "--dry-run", must=("seeds", "-1", "abl.yaml"))
    refused(capsys, write(tmp_path, "name: s\nseeds: []\n"), "smoke", "--dry-run", must=("seeds", "abl.yaml"))
    refused(capsys, write(tmp_path, "name: s\npresets:\n  smoke: {seeds: []}\n"), "smoke", "--dry-run",
            must=("seeds", "abl.yaml"))


def test_bad_yaml_on_the_command_line(capsys):
    refused(capsys, NEG_K, "smoke", "pic.K=[1,", "--dry-run", must=("pic.K", "command line"))


# ------------------------------------------------------------------------------------------------------ device
def test_cuda_without_a_gpu_is_refused_at_validation(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused(capsys, NEG_K, "smoke", "run.device=cuda", "--dry-run", must=("run.device", "cuda", "command line"))


# -------------------------------------------------------------------------------------------------------- data
def image_folder(root: Path) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / split / c / f"{i}.png")
    return root


def test_batched_loader_with_an_image_folder_names_both(capsys, tmp_path):
    root = image_folder(tmp_path / "imgs")
    line = refused(capsys, NEG_K, "small", "data.dataset=imagefolder", f"data.root={root}", "--dry-run")
    assert "data.loader" in line and "batched" in line and "data.dataset" in line and "imagefolder" in line
    assert "preset 'small'" in line


def test_paper_preset_without_data_root_is_refused_before_anything(capsys, tmp_path):
    refused(capsys, NEG_K, "paper", "--seeds", "0", "--results", tmp_path, "-q",
            must=("preset 'paper'", "data.dataset=imagefolder", "data.root"))
    assert not (tmp_path / "rows").exists()


def test_an_image_folder_that_does_not_exist(capsys, tmp_path):
    refused(capsys, NEG_K, "smoke", "data.dataset=imagefolder", f"data.root={tmp_path / 'nowhere'}", "--dry-run",
            must=("data.root", "nowhere", "command line"))


def test_fashion_mnist_not_installed_says_how_to_install(capsys, tmp_path):
    line = refused(capsys, NEG_K, "small", f"data.root={tmp_path}", "--dry-run", must=("data.root",))
    assert "apt-get install dataset-fashion-mnist" in line


def test_a_dataset_error_at_run_time_is_an_error_line(capsys, tmp_path, monkeypatch):
    from pic_bench.pic import train
    from pic_bench.data.sources import DatasetError

    def broken(cfg):
        raise DatasetError("/data/x: the file list changed since instance indices were assigned")

    monkeypatch.setattr(train, "Trainer", broken)
    # after validation, a cell whose data breaks writes its failed row and the sweep goes on (issue 10): exit 1
    # with the failed tasks listed, the reason named, no traceback
    rc, out, err = main(capsys, NEG_K, "smoke", "--seeds", "0", "--no-baselines", "--results", tmp_path,
                        "--checkpoints", tmp_path / "ck", "-q")
    assert rc == 1 and "the file list changed" in err and "Traceback" not in err


def test_an_image_folder_passes_validation(capsys, tmp_path):
    root = image_folder(tmp_path / "imgs")
    rc, out, err = main(capsys, NEG_K, "smoke", "data.dataset=imagefolder", f"data.root={root}", "eval.knn_k=6",
                        "data.num_instances=0", "data.test_size=0", "--dry-run")  # 6 training images, 6 in val/
    assert rc == 0, err
    assert not (root / ".pic_bench_index.txt").exists()  # validation writes nothing into the data


# ------------------------------------------------------------------------------------------------ K vs batch
def test_k_is_checked_against_the_batch_of_the_preset_being_run_only(capsys, tmp_path):
    f = write(tmp_path, "name: tiny_k\nsweep: {pic.K: [64]}\nseeds: [0]\n")
    load_ablation(f)  # loads: the file is fine at smoke
    rc, out, err = main(capsys, f, "smoke", "--dry-run")
    assert rc == 0, err
    refused(capsys, f, "paper", "data.root=/tmp", "--dry-run",
            must=("pic.K=64", "optim.batch_size=256", "at preset 'paper'"))


def test_typos_still_fail_at_load_time_for_every_preset(capsys, tmp_path):
    f = write(tmp_path, "name: t\npresets:\n  paper: {pic.tua: 0.1}\n")
    refused(capsys, f, "smoke", "--dry-run", must=("pic.tua", "abl.yaml"))


# ------------------------------------------------------------------------------------ the ablation file itself
def test_an_empty_ablation_file_is_refused(capsys, tmp_path):
    refused(capsys, write(tmp_path, "# nothing here\n"), "smoke", "--dry-run", must=("abl.yaml", "empty"))


def test_duplicate_yaml_keys_are_refused_with_key_and_line(capsys, tmp_path):
    f = write(tmp_path, "name: d\nsweep:\n  pic.K: [128]\n  pic.K: [512]\n")
    line = refused(capsys, f, "smoke", "--dry-run", must=("abl.yaml", "pic.K", "duplicate"))
    assert "line 4" in line


def test_duplicate_keys_in_the_cluster_file_too(tmp_path):
    p = tmp_path / "cluster.yaml"
    p.write_text("time_min: 30\npartition: debug\ntime_min: 60\n")
    with pytest.raises(ConfigError, match=r"cluster\.yaml.*duplicate key 'time_min'.*line 3"):
        read_yaml_mapping(p, "missing", "not a mapping")


@pytest.mark.parametrize("text, must", [
    ("name: d\nsweep: {pic.K: [128, 0]}\ndefault_cell: {pic.KK: 0}\n", ("default_cell", "pic.KK")),
    ("name: d\nsweep: {pic.K: [128, 0]}\ndefault_cell: {pic.K: 512}\n", ("default_cell", "512")),
    ("name: d\nsweep: {pic.K: [128, 0]}\ndefault_cell: {pic.tau: 0.2}\n", ("default_cell", "pic.tau")),
], ids=["unknown-key", "not-a-cell", "not-a-swept-key"])
def test_a_default_cell_must_be_one_of_the_cells(capsys, tmp_path, text, must):
    refused(capsys, write(tmp_path, text), "smoke", "--dry-run", must=("abl.yaml",) + must)


def test_a_partial_default_cell_that_matches_cells_is_fine(tmp_path):
    load_ablation(write(tmp_path, "name: d\nsweep: {pic.K: [128, 512], pic.correction: [true, false]}\n"
                                  "default_cell: {pic.correction: true}\n"))


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", "x y", ""])
def test_a_name_that_could_escape_the_results_folder_is_refused(capsys, tmp_path, name):
    f = write(tmp_path, f"name: '{name}'\n")
    refused(capsys, f, "smoke", "--dry-run", "--results", tmp_path / "res", must=("abl.yaml", "name"))
    assert not (tmp_path / "res").exists() and not (tmp_path.parent / "escape").exists()


# --------------------------------------------------------------------------------------------------- numbers
def test_numbers_typed_as_researchers_type_them_on_the_command_line():
    from pic_bench.config import Config, apply

    o = parse_cli_overrides(["optim.base_lr=1e6", "pic.tau=3e-4", "eval.knn_t=1E-2"])
    cfg = apply(Config(), o, "command line")
    assert cfg.optim.base_lr == 1e6 and cfg.pic.tau == 3e-4 and cfg.eval.knn_t == 0.01
    with pytest.raises(ConfigError, match="pic.tau"):
        apply(Config(), {"pic.tau": "hot"}, "command line")  # a word is still not a number
    with pytest.raises(ConfigError, match="pic.K"):
        apply(Config(), {"pic.K": "1e3"}, "command line")  # nor an int


def test_numbers_typed_as_researchers_type_them_in_a_file(capsys, tmp_path):
    f = write(tmp_path, "name: lr\nsweep: {optim.base_lr: [1e-1, 3e-1]}\nseeds: [0]\n")
    cells = load_ablation(f).resolve("smoke")
    assert [c[1].optim.base_lr for c in cells] == [0.1, 0.3]
    rc, out, err = main(capsys, NEG_K, "smoke", "optim.base_lr=1e6", "--dry-run")
    assert rc == 0, err


def test_every_shipped_file_loads_and_validates_at_every_preset():
    from pic_bench.config import PRESETS

    for f in sorted((REPO / "ablations").glob("*.yaml")):
        abl = load_ablation(f)
        for p in PRESETS:
            for _, cfg in abl.for_preset(p).resolve(p):
                validate(cfg)
                assert math.isfinite(cfg.optim.epochs)


# ------------------------------------------------------------------------ issue 22: files, structure, names
@pytest.mark.parametrize("codec, named", [("utf-16", "UTF-16"), ("latin-1", "Latin-1")])
def test_an_ablation_file_not_in_utf8_is_one_error_line(capsys, tmp_path, codec, named):
    f = tmp_path / "abl.yaml"
    f.write_bytes("name: enc  # café\nseeds: [0]\n".encode(codec))
    refused(capsys, f, "smoke", "--dry-run", must=("abl.yaml", named))


def test_an_ablation_file_with_a_bom_and_merge_keys_runs_its_dry_run(capsys, tmp_path):
    f = tmp_path / "abl.yaml"
    f.write_bytes(b"\xef\xbb\xbf" + textwrap.dedent("""\
        name: merged
        cells:
          - &base {pic.K: 64, pic.tau: 0.1}
          - {<<: *base, pic.tau: 0.3}
        seeds: [0]
        """).encode())
    rc, out, err = main(capsys, f, "smoke", "--dry-run", "--no-baselines", "--results", tmp_path / "res")
    assert rc == 0, err
    assert out.count("todo") == 2 and "pic.tau': 0.3" in out


STRUCTURE_CASES = [
    ("cells: 'pic.K=64'\n", "cells"), ("cells: {pic.K: 64}\n", "cells"), ("cells: [64]\n", "cells[0]"),
    ("sweep: [pic.K, 64]\n", "sweep"), ("sweep: {pic.K: 64}\n", "sweep 'pic.K'"), ("overrides: [pic.K]\n", "overrides"),
    ("presets: [smoke]\n", "presets"), ("presets: {smoke: fast}\n", "presets.smoke"),
    ("presets:\n  smoke: {cells: 'x'}\n", "presets.smoke.cells"), ("default_cell: [pic.K]\n", "default_cell"),
    ("overrides:\n  optim: {base_lr: 1}\n  optim.base_lr: 2\n", "optim.base_lr"),
]


@pytest.mark.parametrize("text, key", STRUCTURE_CASES, ids=[c[0].strip() for c in STRUCTURE_CASES])
def test_every_structural_key_of_the_wrong_type_is_one_error_line(capsys, tmp_path, text, key):
    refused(capsys, write(tmp_path, "name: s\nseeds: [0]\n" + text), "smoke", "--dry-run", must=("abl.yaml", key))


@pytest.mark.parametrize("line", ["name:", "name: ''", "name: true", "name: .", "name: .hidden", "name: 12"])
def test_a_name_the_tables_would_refuse_is_refused_at_validation(capsys, tmp_path, line):
    res = tmp_path / "res"
    refused(capsys, write(tmp_path, line + "\nseeds: [0]\n"), "smoke", "--dry-run", "--results", res,
            must=("abl.yaml", "name"))
    refused(capsys, write(tmp_path, line + "\nseeds: [0]\n"), "smoke", "--no-baselines", "--results", res,
            "--checkpoints", tmp_path / "ck", "-q", must=("abl.yaml", "name"))
    assert not res.exists()


# ------------------------------------------------------------------------------------- issue 22: value ranges
RANGE_CASES_22 = [
    ("optim.momentum=1.5", "[0, 1)"), ("optim.momentum=-0.1", "[0, 1)"), ("optim.momentum=1", "[0, 1)"),
    ("eval.sgd_momentum=1", "[0, 1)"), ("optim.weight_decay=-0.0001", ">= 0"), ("eval.sgd_weight_decay=-1", ">= 0"),
    ("eval.linear_lr=0", "> 0"), ("eval.linear_lr=-1", "> 0"), ("eval.sgd_lr=-30", "> 0"),
    ("optim.warmup_epochs=1000", "optim.epochs=1.0"), ("eval.sgd_warmup_epochs=500", "eval.sgd_epochs=100"),
    ("pic.w_init_std=-0.01", "> 0"),
]


@pytest.mark.parametrize("item, why", RANGE_CASES_22, ids=[c[0] for c in RANGE_CASES_22])
def test_issue_22_ranges_are_checked_at_the_dry_run(capsys, item, why):
    line = refused(capsys, NEG_K, "smoke", item, "--dry-run", "--seeds", "0")
    assert item.replace("=1", "=1.0") in line or item in line, line
    assert "command line" in line and why in line


def test_a_warm_up_longer_than_the_run_in_the_file_names_the_file(capsys, tmp_path):
    f = write(tmp_path, "name: w\noverrides: {optim.warmup_epochs: 3}\nseeds: [0]\n")
    refused(capsys, f, "smoke", "--dry-run", must=("optim.warmup_epochs=3", "abl.yaml (overrides)", "preset 'smoke'"))


def test_knn_k_beyond_the_bank_is_refused_with_the_bank_size(capsys):
    line = refused(capsys, NEG_K, "smoke", "eval.knn_k=100000", "--dry-run", "--seeds", "0",
                   must=("eval.knn_k=100000", "command line", "N=256"))
    assert "digits" in line
    rc, _, err = main(capsys, NEG_K, "smoke", "eval.knn_k=256", "--dry-run", "--seeds", "0")
    assert rc == 0, err


@pytest.mark.parametrize("seed", [2**63, 2**64])
def test_a_seed_beyond_what_the_rngs_take_is_refused_at_the_dry_run(capsys, tmp_path, seed):
    refused(capsys, NEG_K, "smoke", "--seeds", seed, "--dry-run", must=("--seeds", str(seed), "2**63"))
    refused(capsys, write(tmp_path, f"name: s\nseeds: [0, {seed}]\n"), "smoke", "--dry-run",
            must=("abl.yaml", "seeds", str(seed)))


# ------------------------------------------------------------------------------------ issue 22: output paths
def read_only(monkeypatch, *folders: Path) -> None:
    """Stand-in for a read-only folder (chmod does not stop root; os.access is also what reports EROFS)."""
    import os

    real = os.access
    ro = {str(Path(f).resolve()) for f in folders}
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: (str(Path(p).resolve()) not in ro
                                                                  or not mode & os.W_OK) and real(p, mode, *a, **k))


@pytest.mark.parametrize("flag, how", [(f, h) for f in ("--results", "--checkpoints")
                                       for h in ("file", "read-only", "under-a-file", "rows-is-a-file")
                                       if (f, h) != ("--checkpoints", "rows-is-a-file")])  # rows/: --results only
def test_an_output_folder_that_cannot_be_written_fails_the_dry_run(capsys, tmp_path, monkeypatch, flag, how):
    target = tmp_path / "out"
    if how == "file":
        target.write_text("x")
    elif how == "read-only":
        target.mkdir()
        read_only(monkeypatch, target)
    elif how == "under-a-file":
        (tmp_path / "f").write_text("x")
        target = tmp_path / "f" / "out"
    else:
        (target / "rows").mkdir(parents=True)
        (target / "rows" / "negatives_k.jsonl").mkdir()  # the rows file, a folder
    other = "--checkpoints" if flag == "--results" else "--results"
    for dry in (("--dry-run",), ()):
        refused(capsys, NEG_K, "smoke", "--seeds", "0", "--no-baselines", "optim.max_steps=1", *dry,
                flag, target, other, tmp_path / "other", "-q", must=(flag, str(target)))
    assert not (tmp_path / "other").exists()


def test_output_folders_that_do_not_exist_yet_pass_and_are_not_created(capsys, tmp_path):
    rc, _, err = main(capsys, NEG_K, "smoke", "--seeds", "0", "--dry-run", "--results", tmp_path / "a" / "b",
                      "--checkpoints", tmp_path / "c" / "d")
    assert rc == 0, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_preflight_out_that_cannot_be_written_is_refused_before_any_check(capsys, tmp_path, monkeypatch):
    from pic_bench.suite import preflight

    def never(*a, **k):
        raise AssertionError("a check ran")

    monkeypatch.setattr(preflight, "run_checks", never)
    (tmp_path / "f").write_text("x")
    assert preflight.main(["--out", str(tmp_path / "f")]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "--out" in lines[0] and str(tmp_path / "f") in lines[0]
    (tmp_path / "ro").mkdir()
    read_only(monkeypatch, tmp_path / "ro")
    assert preflight.main(["--out", str(tmp_path / "ro")]) == 2
    assert "not writable" in capsys.readouterr().err


def results_with_rows(tmp_path: Path) -> Path:
    import shutil

    res = tmp_path / "res"
    (res / "rows").mkdir(parents=True)
    shutil.copy(REPO / "results" / "rows" / "negatives_k.jsonl", res / "rows")
    return res


def test_tables_on_a_read_only_results_folder_is_one_error_line(capsys, tmp_path, monkeypatch):
    from pic_bench.report import tables

    res = results_with_rows(tmp_path)
    (res / "tables").mkdir()
    read_only(monkeypatch, res / "tables")
    assert tables.main(["negatives_k", "--results", str(res), "--no-plots"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(res / "tables") in lines[0]
    assert not list((res / "tables").iterdir())


def test_status_on_a_read_only_results_folder_shows_status_and_says_it_cannot_write(capsys, tmp_path, monkeypatch):
    from pic_bench.suite import status

    res = results_with_rows(tmp_path)
    read_only(monkeypatch, res)
    assert status.main(["negatives_k", "--results", str(res)]) == 0
    cap = capsys.readouterr()
    assert "per-task state" in cap.out and "| done |" in cap.out
    assert "cannot write tables" in cap.err and str(res / "tables") in cap.err
    assert not (res / "tables").exists()


@pytest.mark.parametrize("item, must", [
    ("data.num_instances=100000", ("data.num_instances=100000", "1437 training images", "digits")),
    ("data.test_size=5000", ("data.test_size=5000", "360 images", "digits")),
])
def test_counts_beyond_the_data_are_refused_not_squeezed(capsys, item, must):
    """digits: 1437 training images, 360 held out (data/sources.py)."""
    refused(capsys, NEG_K, "smoke", item, "--dry-run", "--seeds", "0", must=(*must, "command line"))


def test_a_tiny_image_folder_at_smoke_names_the_count_to_change(capsys, tmp_path):
    root = image_folder(tmp_path / "imgs")
    refused(capsys, NEG_K, "smoke", "data.dataset=imagefolder", f"data.root={root}", "--dry-run",
            must=("data.num_instances=256", "preset 'smoke'", "6 training images", str(root)))
    refused(capsys, NEG_K, "smoke", "data.dataset=imagefolder", f"data.root={root}", "data.num_instances=0",
            "--dry-run", must=("data.test_size=200", "6 images"))
    rc, _, err = main(capsys, NEG_K, "smoke", "data.dataset=imagefolder", f"data.root={root}", "data.num_instances=0",
                      "data.eval_split=train", "eval.knn_k=6", "--dry-run")
    assert rc == 0, err  # evaluating on the training images: data.test_size plays no part

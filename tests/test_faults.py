"""Faults lose nothing: a half-written row line, a corrupt checkpoint, a failing cell in a sweep."""
import errno
import io
import json
import os
from pathlib import Path

import pytest
import torch

from pic_bench.config import apply, build
from pic_bench.report.results import append_row, read_rows, rows_file
from pic_bench.suite.run import main
from pic_bench.suite.tasks import Task, run_task


def quarantine_file(path: Path) -> Path:
    return path.with_name(path.name + ".quarantine")


def tiny(**kw):
    return apply(build("smoke"), {"optim.max_steps": 2, "eval.linear_epochs": 2, **kw}, "test")


def task(tmp_path, name="faults", **kw) -> Task:
    return Task(name, "smoke", {}, tiny(**kw), results_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "ck"))


def test_a_half_written_last_line_is_quarantined_before_the_next_row(tmp_path, capsys):
    first = task(tmp_path, **{"run.seed": 1})
    run_task(first)
    path = rows_file(tmp_path, "faults")
    good = path.read_bytes()
    half = b'{"ablation": "faults", "config_hash": "abc", "metr'
    with open(path, "ab") as f:
        f.write(half)  # a writer killed mid-line
    t = task(tmp_path)
    assert not t.done()
    run_task(t)
    rows, problems = read_rows(tmp_path, "faults")
    assert not problems and len(rows) == 2  # before: the row was glued onto the half line and unreadable
    assert t.done() and first.done()
    assert path.read_bytes().startswith(good)
    q = [json.loads(line) for line in quarantine_file(path).read_text().splitlines()]
    assert len(q) == 1 and q[0]["line"] == 2 and q[0]["text"] == half.decode() and q[0]["time"]
    err = capsys.readouterr().err
    assert "line 2 was cut off" in err and str(quarantine_file(path)) in err


def test_a_complete_last_line_without_its_newline_is_kept(tmp_path):
    path = rows_file(tmp_path, "faults")
    path.parent.mkdir(parents=True)
    row = {"ablation": "faults", "preset": "smoke", "kind": "pic", "config_hash": "x", "seed": 0, "status": "ok",
           "metrics": {}, "config": {}}
    path.write_text(json.dumps(row))
    assert append_row({**row, "seed": 1}, tmp_path)
    rows, problems = read_rows(tmp_path, "faults")
    assert not problems and [r["seed"] for r in rows] == [0, 1]
    assert not quarantine_file(path).exists()


def _truncated(path: Path) -> None:
    torch.save({"step": 3, "w": torch.randn(256, 64)}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("kind", ["zero_bytes", "truncated", "garbage"])
def test_a_corrupt_checkpoint_is_named_moved_aside_and_the_cell_restarts(tmp_path, capsys, kind):
    t = task(tmp_path)
    ckpt = t.checkpoint
    ckpt.parent.mkdir(parents=True)
    if kind == "zero_bytes":
        ckpt.write_bytes(b"")
    elif kind == "truncated":
        _truncated(ckpt)
    else:
        ckpt.write_bytes(b"\x80\x04not a checkpoint at all" * 10)
    broken = ckpt.read_bytes()
    row = run_task(t)  # before: a raw PytorchStreamReader / UnpicklingError / EOFError, on every later run
    assert row["status"] == "ok" and "resumed_from_step" not in row["derived"] and t.done()
    aside = ckpt.with_name(ckpt.name + ".corrupt-1")
    assert aside.read_bytes() == broken
    err = capsys.readouterr().err
    assert str(ckpt) in err and str(aside) in err and "restarts from step 0" in err
    # the restarted run is the uninterrupted one
    ref = run_task(task(tmp_path / "ref"))
    assert row["metrics"]["final_loss"] == ref["metrics"]["final_loss"]


def test_a_second_corrupt_checkpoint_does_not_overwrite_the_first(tmp_path):
    t = task(tmp_path)
    t.checkpoint.parent.mkdir(parents=True)
    t.checkpoint.with_name(t.checkpoint.name + ".corrupt-1").write_bytes(b"first")
    t.checkpoint.write_bytes(b"second")
    run_task(t)
    assert t.checkpoint.with_name(t.checkpoint.name + ".corrupt-1").read_bytes() == b"first"
    assert t.checkpoint.with_name(t.checkpoint.name + ".corrupt-2").read_bytes() == b"second"


SWEEP = """\
name: sweep_faults
overrides: {pic.softmax: plain, optim.max_steps: 3, eval.linear_epochs: 2}
seeds: [0]
sweep: {optim.base_lr: [1.0e+30, 0.3]}
"""


def _sweep(tmp_path, *flags):
    f = tmp_path / "sweep_faults.yaml"
    f.write_text(SWEEP)
    return main([str(f), "smoke", "--results", str(tmp_path), "--checkpoints", str(tmp_path / "ck"),
                 "--no-baselines", "-q", *flags])


def test_a_failed_cell_writes_its_row_and_the_sweep_goes_on_then_exits_1(tmp_path, capsys):
    assert _sweep(tmp_path) == 1  # before: the NonFiniteLoss propagated and the 0.3 cell never ran
    rows, _ = read_rows(tmp_path, "sweep_faults")
    assert sorted((r["cell"]["optim.base_lr"], r["status"]) for r in rows) == [(0.3, "ok"), (1e30, "failed")]
    err = capsys.readouterr().err
    assert "1 task(s) failed" in err and "non-finite loss" in err.split("1 task(s) failed")[1]
    assert (tmp_path / "tables" / "sweep_faults.md").is_file()  # the table is still rebuilt
    # again: the ok cell is skipped, the failed one retried (and fails again)
    assert _sweep(tmp_path) == 1
    assert "skipping 1 task(s)" in capsys.readouterr().err


def test_rows_that_are_not_valid_rows_never_stop_a_run_and_their_cell_says_why_it_runs_again(tmp_path, capsys):
    f = tmp_path / "sweep_faults.yaml"
    f.write_text(SWEEP)
    argv = [str(f), "smoke", "optim.base_lr=0.3", "--results", str(tmp_path), "--checkpoints", str(tmp_path / "ck"),
            "--no-baselines", "-q"]
    assert main(argv) == 0
    path = rows_file(tmp_path, "sweep_faults")
    (ok,) = [json.loads(line) for line in path.read_text().splitlines()]
    hand = [{**ok, "seed": "7"}, {**ok, "seed": 1}, {**ok, "status": "OK"}]  # edited and merged by hand
    path.write_text(json.dumps(hand[0]) + "\n" + json.dumps(hand[1]) + "\n" + json.dumps(hand[2]) + "\n")
    capsys.readouterr()
    assert main(argv + ["--dry-run"]) == 0  # before: TypeError: '<' not supported between 'int' and 'str'
    out, err = capsys.readouterr()
    assert out.count(" todo") == 1 and " done" not in out
    assert f"{path}:1: field 'seed' is \"7\", not an integer" in err
    assert f"{path}:3: status 'OK' is not one of ok, failed, skipped; its cell has no valid ok row, so it runs " \
           "again" in err
    assert main(argv) == 0  # trains the cell again and writes the table
    rows, problems = read_rows(tmp_path, "sweep_faults")
    assert [(r["seed"], r["status"]) for r in rows] == [(1, "ok"), (0, "ok")]
    assert [p.line for p in problems] == [1, 3]
    md = (tmp_path / "tables" / "sweep_faults.md").read_text()
    assert "sweep_faults.jsonl:1: field 'seed'" in md and "sweep_faults.jsonl:3: status 'OK'" in md


def test_fail_fast_stops_at_the_first_failed_cell(tmp_path, capsys):
    assert _sweep(tmp_path, "--fail-fast") == 1
    rows, _ = read_rows(tmp_path, "sweep_faults")
    assert [(r["cell"]["optim.base_lr"], r["status"]) for r in rows] == [(1e30, "failed")]
    assert "--fail-fast" in capsys.readouterr().err


def test_a_cell_whose_data_is_missing_writes_a_failed_row_and_the_others_run(tmp_path):
    from pic_bench.suite.tasks import run_local

    missing = task(tmp_path, **{"data.dataset": "imagefolder", "data.root": str(tmp_path / "nowhere")})
    object.__setattr__(missing, "digest", "0" * 64)  # the digest is known (from submission); the data is gone
    ok = task(tmp_path, **{"run.seed": 2})
    assert run_local([missing, ok], quiet=True) == 1
    rows, _ = read_rows(tmp_path, "faults")
    assert sorted(r["status"] for r in rows) == ["failed", "ok"]
    failed = next(r for r in rows if r["status"] == "failed")
    assert "image folder not found" in failed["error"] and failed["data"]["digest"] == "0" * 64


def image_folder(root: Path, n_train: int = 12, n_val: int = 6) -> Path:
    from pic_bench.data.sources import encode_jpeg, load_source

    src = load_source(build("smoke").data)
    for split, n, off in (("train", n_train, 0), ("val", n_val, 100)):
        for i in range(n):
            d = root / split / f"c{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"img{i:03d}.jpg").write_bytes(encode_jpeg(src.train.images[off + i].expand(3, -1, -1).contiguous()))
    return root


def folder_task(tmp_path, root, **kw) -> Task:
    return task(tmp_path, **{"data.dataset": "imagefolder", "data.root": str(root), "data.num_instances": 0,
                             "data.test_size": 0, "optim.batch_size": 4, "pic.K": 8, "pic.D": 8, "pic.S": 4,
                             "eval.knn_k": 3, **kw})


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_unreadable_image_is_found_before_training(tmp_path, monkeypatch, split):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "data")
    bad = sorted((root / split).rglob("*.jpg"))[2]
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG
    from pic_bench.data.sources import BadImageError
    from pic_bench.pic.train import Trainer

    def no_training(self, *a, **k):
        raise AssertionError("training started before the bad image was found")

    monkeypatch.setattr(Trainer, "train", no_training)
    t = folder_task(tmp_path, root)
    with pytest.raises(BadImageError, match=bad.name) as e:  # before: val/ failed only at evaluation
        run_task(t)
    assert f"found in {split}/ before training" in str(e.value) and "data.on_bad_image=skip" in str(e.value)
    rows, _ = read_rows(tmp_path, "faults")
    assert len(rows) == 1 and rows[0]["status"] == "failed" and bad.name in rows[0]["error"]


def test_with_skip_unreadable_validation_images_are_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "data")
    for bad in sorted((root / "val").rglob("*.jpg"))[1:3]:
        bad.write_bytes(b"not a jpeg")
    row = run_task(folder_task(tmp_path, root, **{"data.on_bad_image": "skip"}))
    assert row["status"] == "ok"
    assert row["metrics"]["eval_skipped_images"] == 2 and row["metrics"]["skipped_images"] == 2  # before: 0
    assert row["derived"]["bad_images"] == {"train": 0, "val": 2}
    base = Task("faults", "smoke", {}, folder_task(tmp_path, root, **{"data.on_bad_image": "skip"}).cfg,
                "baseline_pixels", str(tmp_path), str(tmp_path / "ck"))
    assert run_task(base)["metrics"]["skipped_images"] == 2


def test_the_probe_decodes_in_parallel_and_agrees_with_one_thread(tmp_path):
    from pic_bench.data import probe
    from pic_bench.data.sources import FolderSet, encode_jpeg

    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    files = []
    for i in range(300):
        p = tmp_path / f"{i:03d}.jpg"
        p.write_bytes(encode_jpeg(img) if i % 37 else b"broken")
        files.append(str(p))
    images = FolderSet(files, torch.zeros(300, dtype=torch.int64).numpy())
    parallel, serial = probe.unreadable(images, workers=4), probe.unreadable(images, workers=1)
    assert parallel == serial and [p for p, _ in serial] == [files[i] for i in range(0, 300, 37)]


def test_data_that_cannot_be_read_is_one_error_line_before_any_work(tmp_path, capsys):
    f = tmp_path / "nodata.yaml"
    f.write_text("name: nodata\nseeds: [0]\n")
    code = main([str(f), "smoke", "--results", str(tmp_path), "-q", "data.dataset=imagefolder",
                 f"data.root={tmp_path / 'nowhere'}"])  # before: a DatasetError traceback out of the first task
    assert code == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        line for line in err.splitlines() if "image folder not found" in line and str(tmp_path / "nowhere") in line]
    assert not (tmp_path / "rows").exists()


# --------------------------------------------------------------------------------------------- write failures
class _FullDisk(io.FileIO):
    """A file on a disk that fills after ``room`` bytes: the write that crosses it writes what fits, the next
    raises ENOSPC (as the kernel does), or another errno."""

    room = 0
    code = errno.ENOSPC

    def write(self, b):
        b = memoryview(b).cast("B")
        if _FullDisk.room <= 0:
            raise OSError(_FullDisk.code, os.strerror(_FullDisk.code))
        n = super().write(b[: _FullDisk.room])
        _FullDisk.room -= n
        return n


def _fill_disk_for(monkeypatch, module, suffix: str, room: int, code: int = errno.ENOSPC) -> None:
    """Files opened by ``module`` whose name ends with ``suffix`` are on a disk with ``room`` bytes left."""
    real = open
    _FullDisk.room, _FullDisk.code = room, code

    def fake(path, mode="r", *a, **kw):
        if str(path).endswith(suffix) and ("w" in mode or "a" in mode):
            raw = _FullDisk(path, mode.replace("b", ""))
            return raw if "b" in mode else io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8")
        return real(path, mode, *a, **kw)

    monkeypatch.setattr(module, "open", fake, raising=False)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EDQUOT])
def test_a_checkpoint_that_cannot_be_written_names_its_file_and_keeps_the_previous_one(tmp_path, monkeypatch,
                                                                                        code):
    from pic_bench import files
    from pic_bench.files import WriteError
    from pic_bench.pic.train import Trainer

    trainer = Trainer(tiny())
    ckpt = tmp_path / "ck" / "a.pt"
    trainer.save(ckpt)
    before = ckpt.read_bytes()
    trainer.step = 5  # a later state, whose save fails partway
    _fill_disk_for(monkeypatch, files, ".tmp", room=len(before) // 3, code=code)
    with pytest.raises(WriteError) as e:
        trainer.save(ckpt)
    msg = str(e.value)
    assert msg.startswith(f"cannot write {ckpt}: {os.strerror(code)} ({errno.errorcode[code]})")
    assert "inline_container" not in msg and e.value.errno == code  # before: torch's own words, no file
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["a.pt"]  # no .tmp left behind
    assert ckpt.read_bytes() == before
    monkeypatch.undo()
    Trainer(tiny()).load(ckpt)


def test_a_backbone_that_cannot_be_written_names_its_file_and_leaves_no_tmp(tmp_path, monkeypatch):
    from pic_bench import files
    from pic_bench.eval.backbone import load_backbone, save_backbone
    from pic_bench.files import WriteError
    from pic_bench.pic.train import Trainer

    t = Trainer(tiny())
    path = tmp_path / "b-backbone.pt"
    save_backbone(t.model, t.cfg.model, t.source.channels, path)
    before = path.read_bytes()
    _fill_disk_for(monkeypatch, files, ".tmp", room=100)
    with pytest.raises(WriteError, match=f"cannot write {path}: No space left on device"):
        save_backbone(t.model, t.cfg.model, t.source.channels, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b-backbone.pt"] and path.read_bytes() == before
    monkeypatch.undo()
    load_backbone(path)


def test_a_row_that_cannot_be_written_is_cut_back_and_names_the_rows_file(tmp_path, monkeypatch):
    from pic_bench.files import WriteError
    from pic_bench.report import results

    row = {"ablation": "faults", "preset": "smoke", "kind": "pic", "config_hash": "x", "seed": 0, "status": "ok",
           "metrics": {}, "config": {}}
    assert append_row(row, tmp_path)
    path = rows_file(tmp_path, "faults")
    before = path.read_bytes()
    _fill_disk_for(monkeypatch, results, ".jsonl", room=40)  # 40 bytes of the next row fit, then ENOSPC
    with pytest.raises(WriteError, match=f"cannot write {path}: No space left on device"):
        append_row({**row, "seed": 1, "padding": "x" * 1000}, tmp_path)
    assert path.read_bytes() == before  # before: a half row glued to the file
    monkeypatch.undo()
    assert append_row({**row, "seed": 1}, tmp_path)
    assert [r["seed"] for r in read_rows(tmp_path, "faults")[0]] == [0, 1]


def test_a_curve_that_cannot_be_written_names_its_file(tmp_path, monkeypatch):
    from pic_bench.files import WriteError
    from pic_bench.pic import train
    from pic_bench.suite import tasks

    trainer = train.Trainer(tiny())
    curve = tmp_path / "c.jsonl"
    for module, make in ((train, lambda: train._Curve(curve, 0)), (tasks, lambda: tasks.CurveWriter(curve, trainer))):
        writer = make()
        _fill_disk_for(monkeypatch, module, "c.jsonl", room=0)
        if module is train:
            writer.f = train.open(curve, "a")
            call = lambda: writer.write(1, 1.0, 0.1, 0.5)  # noqa: E731
        else:
            trainer.meters.losses[:] = [1.0]
            call = lambda: writer(1, 1, 1.0)  # noqa: E731
        with pytest.raises(WriteError, match=f"cannot write {curve}: No space left on device"):
            call()
        monkeypatch.undo()


def test_a_full_disk_in_a_run_is_one_error_line_and_a_later_success_supersedes_it(tmp_path, monkeypatch, capsys):
    from pic_bench import files
    from pic_bench.suite.status import task_states

    f = tmp_path / "sweep_faults.yaml"
    f.write_text(SWEEP)
    argv = [str(f), "smoke", "optim.base_lr=0.3", "--results", str(tmp_path), "--checkpoints", str(tmp_path / "ck"),
            "--no-baselines", "-q"]
    _fill_disk_for(monkeypatch, files, "-s0.tmp", room=1000)  # the checkpoint's .tmp (x-s0.pt -> x-s0.tmp)
    assert main(argv) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device (ENOSPC)" in errors[0]
    assert "cannot write " + str(tmp_path / "ck" / "sweep_faults" / "smoke") in errors[0]
    assert "inline_container" not in err and "Traceback" not in err
    assert not list((tmp_path / "ck").rglob("*.tmp"))
    (failed,) = read_rows(tmp_path, "sweep_faults")[0]
    assert failed["status"] == "failed" and failed["error"].startswith("WriteError: cannot write ")
    assert "inline_container" not in failed["error"]  # before: torch's internal message in the row
    monkeypatch.undo()  # space is freed
    assert main(argv) == 0
    md = (tmp_path / "tables" / "sweep_faults.md").read_text()
    assert "No space left" not in md and "failed run" not in md  # before: the old failure beside the success
    assert [s["state"] for s in task_states("sweep_faults", tmp_path)] == ["done"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (a real full disk: the kernel's ENOSPC, and EROFS once remounted read-only); skipped where
    this process may not mount one (not root, or no CAP_SYS_ADMIN)."""
    import shutil
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_real_full_disk_and_a_read_only_one_are_one_error_line_naming_the_file(tmp_path, tiny_disk, capsys):
    import subprocess

    f = tmp_path / "sweep_faults.yaml"
    f.write_text(SWEEP)
    argv = [str(f), "smoke", "optim.base_lr=0.3", "--results", str(tmp_path / "res"), "--checkpoints",
            str(tiny_disk), "--no-baselines", "-q"]
    assert main(argv) == 1  # the backbone fits in 64 KiB, the checkpoint does not
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot write {tiny_disk}" in errors[0] and "(ENOSPC)" in errors[0]
    assert "inline_container" not in err  # before: torch's "[enforce fail at inline_container.cc:672] ..."
    assert not list(tiny_disk.rglob("*.tmp"))  # before: the .tmp was left, filling the disk
    (failed,) = read_rows(tmp_path / "res", "sweep_faults")[0]
    assert failed["error"].startswith(f"WriteError: cannot write {tiny_disk}")
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    from pic_bench.files import WriteError

    row = {**failed, "seed": 9}
    with pytest.raises(WriteError, match=f"cannot write {tiny_disk / 'rows' / 'x.jsonl'}: Read-only file system"):
        append_row({**row, "ablation": "x"}, tiny_disk)
# ---- issue 21 / 22: images that are images but hostile
def test_a_16bit_png_decodes_like_pils_conversion_to_8_bits(tmp_path):
    import numpy as np
    from PIL import Image

    from pic_bench.data.sources import FolderSet

    rng = np.random.default_rng()
    grey16 = rng.integers(0, 65536, (9, 7), dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(grey16).save(p)
    with Image.open(p) as im:
        assert im.mode.startswith("I")
        want = np.asarray(im.convert("I").point(lambda v: v / 256).convert("RGB"))  # PIL's own 16 -> 8 bits
    got = FolderSet([str(p)], np.zeros(1)).load(0).permute(1, 2, 0).numpy()
    assert np.array_equal(got, want)  # before: clipped, almost all 255
    assert got.mean() < 200


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "CMYK", "1", "L"])
def test_other_modes_decode_as_pils_conversion_to_rgb(tmp_path, mode):
    import numpy as np
    from PIL import Image

    from pic_bench.data.sources import FolderSet

    rng = np.random.default_rng()
    im = Image.fromarray(rng.integers(0, 256, (6, 5, 4), dtype=np.uint8), "RGBA").convert(mode)
    p = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    im.save(p)
    with Image.open(p) as back:
        want = np.asarray(back.convert("RGB"))
    assert np.array_equal(FolderSet([str(p)], np.zeros(1)).load(0).permute(1, 2, 0).numpy(), want)


def test_a_decompression_bomb_is_skipped_and_counted_with_skip(tmp_path, monkeypatch):
    from PIL import Image

    from pic_bench.data.sources import BadImageError, FolderSet

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 64 x 64 image is past twice this: PIL refuses it
    root = image_folder(tmp_path / "data")
    bomb = sorted((root / "train").rglob("*.jpg"))[2]
    Image.new("RGB", (64, 64)).save(bomb, format="JPEG")
    with pytest.raises(BadImageError, match="DecompressionBombError"):  # before: not a BadImageError
        FolderSet([str(bomb)], [0]).load(0)
    row = run_task(folder_task(tmp_path, root, **{"data.on_bad_image": "skip", "data.eval_split": "train"}))
    assert row["status"] == "ok" and row["derived"]["bad_images"]["train"] == 1
    assert row["metrics"]["skipped_images"] >= 1


def test_a_dangling_symlink_is_an_error_line_before_work_or_skipped_and_counted(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "data")
    link = root / "train" / "c0" / "zz-gone.jpg"
    link.symlink_to(tmp_path / "nowhere.jpg")
    abl = tmp_path / "links.yaml"
    abl.write_text("name: links\nseeds: [0]\n")
    argv = [str(abl), "smoke", "--results", str(tmp_path / "res"), "--checkpoints", str(tmp_path / "ck"), "-q",
            "--no-baselines", "data.dataset=imagefolder", f"data.root={root}", "data.num_instances=0",
            "data.test_size=0", "optim.batch_size=4", "pic.K=8", "pic.D=8", "pic.S=4", "optim.max_steps=1",
            "eval.knn_k=3", "eval.linear_epochs=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: cannot read" in err and "zz-gone.jpg" in err and "data.on_bad_image=skip" in err
    assert not (tmp_path / "res" / "rows").exists()  # before: a failed row, after the run had started
    from pic_bench.suite import tasks as tasks_mod

    monkeypatch.setattr(tasks_mod, "_DATA", {})
    assert main([*argv, "data.on_bad_image=skip"]) == 0
    (row,) = read_rows(tmp_path / "res", "links")[0]
    assert row["status"] == "ok" and row["derived"]["bad_images"]["train"] == 1


def test_image_names_that_are_not_utf8_train_and_are_named_in_rows(tmp_path, monkeypatch, capsys):
    import os

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "data")
    good = sorted((root / "train").rglob("*.jpg"))[0]
    Path(os.fsdecode(os.fsencode(str(root / "train" / "c0")) + b"/\xff\xfe.jpg")).write_bytes(good.read_bytes())
    Path(os.fsdecode(os.fsencode(str(root / "train" / "c1")) + b"/\xfe-bad.jpg")).write_bytes(b"garbage")
    abl = tmp_path / "odd.yaml"
    abl.write_text("name: odd\nseeds: [0]\n")
    argv = [str(abl), "smoke", "--results", str(tmp_path / "res"), "--checkpoints", str(tmp_path / "ck"), "-q",
            "--no-baselines", "data.dataset=imagefolder", f"data.root={root}", "data.num_instances=0",
            "data.test_size=0", "optim.batch_size=4", "pic.K=8", "pic.D=8", "pic.S=4", "optim.max_steps=1",
            "eval.knn_k=3", "eval.linear_epochs=1"]
    assert main(argv) == 1  # before: UnicodeEncodeError (a traceback), here a failed row naming the file
    (failed,) = read_rows(tmp_path / "res", "odd")[0]
    assert "\\xfe-bad.jpg" in failed["error"]
    capsys.readouterr()
    from pic_bench.suite import tasks as tasks_mod

    monkeypatch.setattr(tasks_mod, "_DATA", {})
    assert main([*argv, "data.on_bad_image=skip"]) == 0
    ok = [r for r in read_rows(tmp_path / "res", "odd")[0] if r["status"] == "ok"]
    assert len(ok) == 1 and ok[0]["data"]["N"] == 14 and ok[0]["derived"]["bad_images"]["train"] == 1

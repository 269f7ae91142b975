"""Cell identity is the experiment: the data's digest is part of a row's key, of ``Task.done()``, of task names and
checkpoint paths; tasks with one key are submitted once."""
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("submitit")  # the launcher imports it; a bare GPU machine may not carry it

from pic_bench.suite import launch, tasks as tasks_mod
from pic_bench.config import apply, build, load_ablation
from pic_bench.data.sources import encode_jpeg, load_source
from pic_bench.report.results import read_rows, row_key
from pic_bench.suite.run import expand, main
from pic_bench.suite.tasks import Task


def write_folder(root: Path, n: int, prefix: str = "img") -> Path:
    src = load_source(build("smoke").data)
    for i in range(n):
        d = root / "train" / f"c{src.train.labels[i] % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{prefix}{i:03d}.jpg").write_bytes(encode_jpeg(src.train.images[i].expand(3, -1, -1).contiguous()))
    return root


def folder_ablation(tmp_path: Path) -> Path:
    f = tmp_path / "folders.yaml"
    f.write_text("name: folders\nseeds: [0]\nsweep: {pic.tau: [0.2]}\n")
    return f


def run_on(tmp_path: Path, abl: Path, root: Path) -> int:
    return main([str(abl), "smoke", "--results", str(tmp_path / "res"), "--checkpoints", str(tmp_path / "ck"),
                 "--no-baselines", "-q", "data.dataset=imagefolder", f"data.root={root}", "data.num_instances=0",
                 "data.test_size=0", "optim.batch_size=4", "pic.K=8", "pic.D=8", "pic.S=4", "optim.max_steps=2",
                 "eval.knn_k=3", "eval.linear_epochs=2", "data.eval_split=train"])


def test_another_image_folder_is_another_cell_and_the_same_folder_elsewhere_is_the_same(tmp_path, capsys,
                                                                                         monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    abl = folder_ablation(tmp_path)
    a = write_folder(tmp_path / "A", 12)
    b = write_folder(tmp_path / "B", 16, prefix="other")
    assert run_on(tmp_path, abl, a) == 0
    assert run_on(tmp_path, abl, b) == 0  # before: "skipping 1 task(s) whose row already exists"
    assert "skipping" not in capsys.readouterr().err
    rows, problems = read_rows(tmp_path / "res", "folders")
    assert not problems and len(rows) == 2
    assert rows[0]["config_hash"] == rows[1]["config_hash"]  # config_hash itself is unchanged: paths left out
    assert rows[0]["data"]["digest"] != rows[1]["data"]["digest"]
    assert [r["data"]["N"] for r in rows] == [12, 16]
    assert {tuple(sorted(r["data"])) for r in rows} == {("N", "dataset", "digest", "digest_of", "image_size")}
    assert rows[0]["data"]["dataset"] == "imagefolder" and rows[0]["data"]["image_size"] == 8
    # the key's digest is the content's (issue 21); the names-only index digest keeps its old meaning beside it
    assert rows[0]["data"]["digest"] == rows[0]["derived"]["data_digest"] != rows[0]["derived"]["index_digest"]
    assert rows[0]["data"]["digest_of"] == "content"
    # folder A copied elsewhere is the same data: its cell is done
    shutil.copytree(a, tmp_path / "A_moved")
    assert run_on(tmp_path, abl, tmp_path / "A_moved") == 0
    assert "skipping 1 task(s) whose row already exists" in capsys.readouterr().err
    assert len(read_rows(tmp_path / "res", "folders")[0]) == 2


def test_rows_without_a_data_field_read_their_digest_from_derived(tmp_path):
    cfg = apply(build("smoke"), {"optim.max_steps": 1}, "t")
    t = Task("legacy", "smoke", {}, cfg, results_dir=str(tmp_path))
    row = {"ablation": "legacy", "preset": "smoke", "kind": "pic", "config_hash": t.key[3], "seed": 0,
           "status": "ok", "metrics": {}, "config": {}, "derived": {"index_digest": t.digest}}
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "legacy.jsonl").write_text(json.dumps(row) + "\n")
    assert row_key(row) == t.key and t.done()
    other = Task("legacy", "smoke", {}, apply(cfg, {"data.num_instances": 128}, "t"), results_dir=str(tmp_path))
    assert not other.done()


def test_committed_rows_keep_their_meaning_beside_content_digests():
    """Rows written before issue 21 keep the digest they recorded (the instance list's, names only): each is the
    index digest of the task that wrote it, while a task now keys on its data's content, so old and new rows are
    two sections of a table, never one cell."""
    from pic_bench.data.sources import load_source as load
    abl = load_ablation("ablations/negatives_k.yaml").for_preset("small")
    ts = expand(abl, "small", {}, "results")
    rows, _ = read_rows(Path("results"), "negatives_k")
    src = load(ts[0].cfg.data)
    assert src.digest != src.index_digest
    old = [r for r in rows if r["preset"] == "small" and r.get("kind") == "pic" and r["status"] == "ok"]
    assert old and all(not (r.get("data") or {}).get("digest_of") for r in old)
    assert {row_key(r)[5] for r in old} == {src.index_digest}
    assert not any(t.done() for t in ts if t.kind == "pic")


def test_the_dataset_index_is_loaded_once_per_data_config_when_expanding(tmp_path, monkeypatch):
    import pic_bench.data.sources as sources

    calls = []
    real = sources.load_source
    monkeypatch.setattr(sources, "load_source", lambda cfg, seed=0: calls.append(cfg) or real(cfg, seed))
    monkeypatch.setattr(tasks_mod, "_DATA", {})
    f = tmp_path / "two.yaml"
    f.write_text("name: two\nseeds: [0, 1, 2]\nsweep: {pic.tau: [0.1, 0.2], data.num_instances: [128, 256]}\n")
    ts = expand(load_ablation(f).for_preset("smoke"), "smoke", {}, str(tmp_path))
    assert len(ts) >= 12 and not any(t.done() for t in ts)
    assert len(calls) == 2  # two data configs (N = 128, 256), whatever the seeds and the temperature
    assert len({t.digest for t in ts}) == 2


def test_the_checkpoint_path_and_name_hold_every_part_of_the_key(tmp_path):
    cfg = build("smoke")
    base = Task("x", "smoke", {}, cfg, results_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "ck"))
    variants = [base, Task("x", "smoke", {}, cfg, "baseline_random", str(tmp_path), str(tmp_path / "ck")),
                Task("x", "small", {}, cfg, results_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "ck")),
                Task("x", "smoke", {}, apply(cfg, {"run.seed": 1}, "t"), results_dir=str(tmp_path),
                     checkpoint_dir=str(tmp_path / "ck")),
                Task("x", "smoke", {}, apply(cfg, {"data.num_instances": 100}, "t"), results_dir=str(tmp_path),
                     checkpoint_dir=str(tmp_path / "ck"))]
    assert len({t.key for t in variants}) == 5
    assert len({t.checkpoint for t in variants}) == 5
    assert len({t.name for t in variants}) == 5
    # another dataset with an identical config hash (data.root is outside it) gets its own checkpoint
    other = Task("x", "smoke", {}, cfg, results_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "ck"))
    object.__setattr__(other, "digest", "f" * 64)
    assert other.key[3] == base.key[3] and other.checkpoint != base.checkpoint


class FakeJob:
    def __init__(self, i):
        self.job_id = f"77_{i}"
        self.paths = type("P", (), {"stdout": f"o{i}", "stderr": f"e{i}"})()


def test_tasks_with_one_key_are_submitted_once(tmp_path, monkeypatch, capsys):
    submitted = []

    class FakeExecutor:
        def __init__(self, **kw):
            pass

        def update_parameters(self, **kw):
            pass

        def map_array(self, fn, todo):
            submitted.extend(todo)
            return [FakeJob(i) for i in range(len(todo))]

    monkeypatch.setattr(launch.submitit, "SlurmExecutor", FakeExecutor)
    monkeypatch.setattr(launch, "validate", lambda *a, **k: None)
    monkeypatch.setattr(launch, "queue_states", lambda *a, **k: {})
    cfg = build("smoke")
    t = Task("dup", "smoke", {"pic.K": 128}, cfg, results_dir=str(tmp_path))
    same = Task("dup", "smoke", {"pic.K": 512}, cfg, results_dir=str(tmp_path))  # a cell resolving to one config
    other = Task("dup", "smoke", {}, apply(cfg, {"run.seed": 3}, "t"), results_dir=str(tmp_path))
    assert launch.submit([t, same, other], None, results_dir=tmp_path) == 0
    trainings = [s for s in submitted if s.stage == "train"]  # each followed by its evaluation task
    assert len(trainings) == 2 and len({s.key for s in trainings}) == 2
    assert sorted(s.key for s in submitted if s.stage == "eval") == sorted(s.key for s in trainings)
    assert "warning: 1 task(s) resolve to the same experiment" in capsys.readouterr().err
    manifest = launch.read_manifest(tmp_path, "dup")
    assert set(manifest) == {t.key, other.key}


# ---- the data's content is the identity (issue 21)
def png_folder(root: Path, seed: int, n_train: int = 8, n_val: int = 4, compress: int = 6) -> Path:
    """root/{train,val}/c<k>/<i>.png of random 8x8 pixels drawn from ``seed`` (lossless: a re-encoding changes
    the bytes, never the pixels)."""
    from PIL import Image
    import numpy as np

    g = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            p = root / split / f"c{i % 2}" / f"{i:03d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(g.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(p, compress_level=compress)
    return root


def digest_of(root: Path, monkeypatch, **kw) -> str:
    """The digest a task on folder ``root`` is keyed on, loaded afresh (the per-process cache emptied)."""
    monkeypatch.setattr(tasks_mod, "_DATA", {})
    cfg = apply(build("smoke"), {"data.dataset": "imagefolder", "data.root": str(root), "data.num_instances": 0,
                                 "data.test_size": 0, **kw}, "t")
    return Task("x", "smoke", {}, cfg, results_dir=str(root.parent / "res")).digest


def test_two_folders_with_the_same_names_and_other_pixels_are_two_cells(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    abl = folder_ablation(tmp_path)
    a = write_folder(tmp_path / "A", 12)
    b = tmp_path / "B"
    shutil.copytree(a, b)
    for i, f in enumerate(sorted((b / "train").rglob("*.jpg"))):  # same names, other images
        src = load_source(build("smoke").data)
        f.write_bytes(encode_jpeg(src.train.images[100 + i].expand(3, -1, -1).contiguous()))
    assert run_on(tmp_path, abl, a) == 0
    assert run_on(tmp_path, abl, b) == 0
    assert "skipping" not in capsys.readouterr().err  # before: B's cell was "done" with A's numbers
    rows, _ = read_rows(tmp_path / "res", "folders")
    assert len(rows) == 2 and rows[0]["data"]["digest"] != rows[1]["data"]["digest"]
    assert rows[0]["derived"]["index_digest"] == rows[1]["derived"]["index_digest"]  # the names are the same


def test_a_changed_image_in_val_only_is_a_new_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("PIC_BENCH_CACHE", str(tmp_path / "cache"))
    root = png_folder(tmp_path / "data", seed=0)
    before = digest_of(root, monkeypatch)
    assert digest_of(root, monkeypatch) == before  # stable
    png_folder(tmp_path / "other", seed=1)
    shutil.copyfile(tmp_path / "other" / "val" / "c1" / "001.png", root / "val" / "c1" / "001.png")
    assert digest_of(root, monkeypatch) != before
    # evaluating on train/ leaves val/ out of the identity
    assert digest_of(root, monkeypatch, **{"data.eval_split": "train"}) != digest_of(root, monkeypatch)


def test_a_reencoded_copy_is_another_cell_and_a_byte_copy_the_same(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("PIC_BENCH_CACHE", str(tmp_path / "cache"))
    root = png_folder(tmp_path / "data", seed=0)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(root, copy)
    assert digest_of(copy, monkeypatch) == digest_of(root, monkeypatch)  # same bytes at another path: same cell
    reenc = tmp_path / "reencoded"
    shutil.copytree(root, reenc)
    for f in reenc.rglob("*.png"):
        with Image.open(f) as im:
            im.load()
            im.save(f, compress_level=0)  # the same pixels, other bytes
    assert digest_of(reenc, monkeypatch) != digest_of(root, monkeypatch)


def test_in_memory_datasets_digest_their_test_split_too(monkeypatch):
    monkeypatch.setattr(tasks_mod, "_DATA", {})
    cfg = apply(build("smoke"), {"data.dataset": "digits", "data.num_instances": 100, "data.test_size": 50}, "t")
    other = apply(cfg, {"data.test_size": 60}, "t")
    a, b = load_source(cfg.data), load_source(other.data)
    assert a.index_digest == b.index_digest  # the training selection is the same
    assert tasks_mod.data_digest(cfg) != tasks_mod.data_digest(other)  # before: one digest for both
    assert a.digest == load_source(cfg.data).digest


def small_folder_cfg(root: Path):
    return apply(build("smoke"), {"data.dataset": "imagefolder", "data.root": str(root), "data.num_instances": 0,
                                  "data.test_size": 0, "optim.batch_size": 4, "pic.K": 8, "pic.D": 8, "pic.S": 4,
                                  "data.eval_split": "train"}, "t")


def test_a_resume_onto_other_images_is_refused_naming_both_digests(tmp_path, monkeypatch):
    from pic_bench.pic.train import Trainer

    monkeypatch.setenv("PIC_BENCH_CACHE", str(tmp_path / "cache"))
    a = png_folder(tmp_path / "A", seed=0, n_train=12)
    b = png_folder(tmp_path / "B", seed=1, n_train=12)
    ta = Trainer(small_folder_cfg(a))
    ckpt = tmp_path / "ck" / "x.pt"
    ta.save(ckpt)
    tb = Trainer(small_folder_cfg(b))
    with pytest.raises(Exception, match="refusing to resume") as e:  # before: resumed silently
        tasks_mod.resume(tb, ckpt)
    assert ta.source.digest in str(e.value) and tb.source.digest in str(e.value) and str(ckpt) in str(e.value)
    assert ckpt.is_file()  # a readable checkpoint of other data is kept, not moved aside
    assert tasks_mod.resume(Trainer(small_folder_cfg(a)), ckpt).step == 0  # its own data resumes


def test_the_dry_run_prints_the_digest_and_says_new_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    abl = folder_ablation(tmp_path)
    a = write_folder(tmp_path / "A", 12)
    assert run_on(tmp_path, abl, a) == 0
    digest = read_rows(tmp_path / "res", "folders")[0][0]["data"]["digest"]
    capsys.readouterr()
    argv = [str(abl), "smoke", "--results", str(tmp_path / "res"), "--no-baselines", "--dry-run",
            "data.dataset=imagefolder", f"data.root={a}", "data.num_instances=0", "data.test_size=0",
            "optim.batch_size=4", "pic.K=8", "pic.D=8", "pic.S=4", "optim.max_steps=2", "eval.knn_k=3",
            "eval.linear_epochs=2", "data.eval_split=train"]
    monkeypatch.setattr(tasks_mod, "_DATA", {})
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"content digest {digest[:16]}" in out and "new data" not in out and " done" in out
    f = sorted((a / "train").rglob("*.jpg"))[3]
    f.write_bytes(sorted((a / "train").rglob("*.jpg"))[4].read_bytes())  # replaced in place, same name
    monkeypatch.setattr(tasks_mod, "_DATA", {})
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "new data" in out and digest[:16] in out and " todo" in out
    from pic_bench.suite import status

    monkeypatch.setattr(tasks_mod, "_DATA", {})
    assert status.main([str(abl), "smoke", *argv[6:], "--results", str(tmp_path / "res"), "--no-baselines"]) == 0
    assert "new data" in capsys.readouterr().out


def test_committed_rows_still_compare_with_content_rows_of_the_same_instance_list():
    from pic_bench.report import compare

    def r(derived, data=None, knn=80.0):
        row = {"ablation": "a", "preset": "small", "kind": "pic", "config_hash": "h", "seed": 0, "status": "ok",
               "cell": {"pic.K": 1}, "metrics": {"knn_top1": knn, "linear_top1": knn}, "derived": derived,
               "config": {}}
        if data:
            row["data"] = data
        return row

    ours = [r({"index_digest": "i1", "data_digest": "c1"}, {"digest": "c1", "digest_of": "content"})]
    legacy = r({"index_digest": "i1"}, {"digest": "i1"}, knn=70.0)  # written before content digests
    assert len(compare.compare_rows(ours, [legacy])) == 1  # before: no comparison (c1 != i1)
    other_list = r({"index_digest": "i2"}, {"digest": "i2"})
    other_content = r({"index_digest": "i1", "data_digest": "c2"}, {"digest": "c2", "digest_of": "content"})
    assert compare.compare_rows(ours, [other_list]) == [] and compare.compare_rows(ours, [other_content]) == []


def test_a_killed_run_does_not_resume_onto_images_replaced_in_place(tmp_path, monkeypatch):
    """Issue 21's case: a run stopped mid-training, an image replaced in place with the same name, size and mtime;
    the rerun must not continue the checkpoint on the new images (the replacement changes the digest: another
    cell, another checkpoint; a checkpoint of the old data is refused, see above)."""
    import os

    from pic_bench.pic.train import Preempted

    monkeypatch.setenv("PIC_BENCH_CACHE", str(tmp_path / "cache"))
    root = png_folder(tmp_path / "data", seed=0, n_train=12, compress=0)  # stored: every file the same size
    cfg = apply(small_folder_cfg(root), {"optim.max_steps": 4, "eval.knn_k": 3, "eval.linear_epochs": 1}, "t")
    monkeypatch.setattr(tasks_mod, "_DATA", {})
    first = Task("kill", "smoke", {}, cfg, results_dir=str(tmp_path / "res"), checkpoint_dir=str(tmp_path / "ck"))
    calls = iter(range(100))
    with pytest.raises(Preempted):
        tasks_mod.run_task(first, should_stop=lambda: next(calls) == 2, echo=False)
    assert first.checkpoint.is_file()
    victim = sorted((root / "train").rglob("*.png"))[5]
    st = victim.stat()
    donor = sorted((png_folder(tmp_path / "other", seed=9, compress=0) / "train").rglob("*.png"))[5]
    assert donor.stat().st_size == st.st_size and donor.read_bytes() != victim.read_bytes()
    victim.write_bytes(donor.read_bytes())  # the same name and size, other pixels
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the mtime put back
    assert victim.stat().st_mtime_ns == st.st_mtime_ns
    monkeypatch.setattr(tasks_mod, "_DATA", {})
    again = Task("kill", "smoke", {}, cfg, results_dir=str(tmp_path / "res"), checkpoint_dir=str(tmp_path / "ck"))
    assert again.digest != first.digest  # before: the same digest, and the run resumed on the new images
    row = tasks_mod.run_task(again, echo=False)
    assert row["status"] == "ok" and "resumed_from_step" not in row["derived"]
    assert first.checkpoint.is_file()  # the old data's checkpoint is left alone

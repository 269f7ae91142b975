"""Files that used to block a cell for good (issue 22): a corrupt evaluation progress file (``<ckpt>-eval.pt``) or
trained marker (``<ckpt>-trained.json``) is named, moved aside (``.corrupt-<n>``, as a corrupt checkpoint is) and
that half of the cell runs again; a failure that wrote no row is not reported as one that did."""
import json

import pytest

from pic_bench.config import apply, build
from pic_bench.report.results import read_rows
from pic_bench.suite import tasks as T
from pic_bench.suite.tasks import Task, run_local, run_task


def tiny(**kw):
    return apply(build("smoke"), {"optim.max_steps": 2, "eval.linear_epochs": 2, **kw}, "test")


def task(tmp_path, **kw) -> Task:
    return Task("faults_files", "smoke", {}, tiny(**kw), results_dir=str(tmp_path),
                checkpoint_dir=str(tmp_path / "ck"))


def progress_file(t: Task):
    return t.checkpoint.with_name(t.checkpoint.stem + "-eval.pt")


@pytest.mark.parametrize("content", [b"", b"\x80\x04garbage" * 20, b"PK\x03\x04 cut zip"])
def test_a_corrupt_evaluation_progress_file_is_named_moved_aside_and_evaluation_reruns(tmp_path, capsys, content):
    t = task(tmp_path)
    assert run_task(t.at("train"))["status"] == "trained"
    progress_file(t).write_bytes(content)  # a progress file cut by a full disk, or garbage
    row = run_task(t.at("eval"))  # before: UnpicklingError / EOFError on every rerun, the file never named
    assert row["status"] == "ok" and t.done()
    aside = progress_file(t).with_name(progress_file(t).name + ".corrupt-1")
    assert aside.read_bytes() == content and not progress_file(t).exists()
    err = capsys.readouterr().err
    assert str(progress_file(t)) in err and str(aside) in err
    ref = run_task(task(tmp_path / "ref"))  # the rerun evaluation is the uninterrupted one
    assert row["metrics"]["knn_top1"] == ref["metrics"]["knn_top1"]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"step": 2}', "\udcff"])
def test_a_corrupt_trained_marker_is_named_moved_aside_and_training_reruns(tmp_path, capsys, content):
    t = task(tmp_path)
    assert run_task(t.at("train"))["status"] == "trained"
    t.trained_marker.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(T.NotTrained, match="moved to"):
        run_task(t.at("eval"))  # names the marker; before: "no ... -trained.json or no ...pt" while both exist
    aside = t.trained_marker.with_name(t.trained_marker.name + ".corrupt-1")
    assert aside.is_file() and not t.trained_marker.exists()
    assert str(t.trained_marker) in capsys.readouterr().err
    assert not t.trained()  # so the same command submits the training half again (before: only the evaluation)
    assert run_task(t.at("train"))["status"] == "trained"  # from the final checkpoint: no step is retrained
    assert json.loads(t.trained_marker.read_text())["metrics"]
    assert run_task(t.at("eval"))["status"] == "ok"


def test_a_corrupt_trained_marker_in_a_task_that_trains_and_evaluates(tmp_path):
    t = task(tmp_path)
    run_task(t.at("train"))
    t.trained_marker.write_text("{cut")
    assert run_task(t)["status"] == "ok"
    assert t.trained_marker.with_name(t.trained_marker.name + ".corrupt-1").is_file()


def test_the_sweep_summary_says_when_a_failure_wrote_no_row(tmp_path, monkeypatch, capsys):
    tasks = [task(tmp_path, **{"run.seed": s}) for s in (0, 1)]

    def fails(t, **kw):
        if t.cfg.run.seed == 0:
            raise RuntimeError("stopped before any row")  # nothing recorded
        e = RuntimeError("recorded")
        T._failed_row(t, {}, "cpu", e)
        raise e

    monkeypatch.setattr(T, "run_task", fails)
    assert run_local(tasks, quiet=True) == 1
    err = capsys.readouterr().err
    assert "each wrote a failed row" not in err and "1 wrote a failed row, 1 none" in err
    rows, _ = read_rows(tmp_path, "faults_files")
    assert [r["status"] for r in rows] == ["failed"]

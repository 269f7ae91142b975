"""A PIC cell trained in one task and evaluated in another (issue 12): the evaluation task writes the row the
one-task run writes, with the training process's figures; it refuses a cell whose training has not finished;
a baseline is computed by rank 0 alone (other ranks of its allocation must not train a network)."""
import json

import pytest

pytest.importorskip("submitit")  # the launcher imports it; a bare GPU machine may not carry it

from pic_bench.suite import launch
from pic_bench.config import apply, build
from pic_bench.report.results import read_rows
from pic_bench.suite.tasks import NotTrained, Task, run_task


def smoke(tmp_path, name="stages", **kw) -> Task:
    cfg = apply(build("smoke"), {"optim.max_steps": 6, "run.deterministic": True, **kw}, "test")
    return Task(name, "smoke", {}, cfg, results_dir=str(tmp_path / "results"), checkpoint_dir=str(tmp_path / "ck"))


def test_train_then_eval_tasks_write_the_row_of_one_task(tmp_path):
    want = run_task(smoke(tmp_path / "one"))
    task = smoke(tmp_path / "two")
    out = run_task(task.at("train"))
    assert out["status"] == "trained"
    assert not (tmp_path / "two" / "results" / "rows").exists()  # training writes no row
    assert task.trained() and task.checkpoint.is_file() and out["backbone"]
    marker = json.loads(task.trained_marker.read_text())
    assert marker["step"] == want["derived"]["steps"]
    row = run_task(task.at("eval"))
    for key in ("final_loss", "knn_top1", "linear_top1", "U_mean"):
        assert row["metrics"][key] == want["metrics"][key], key
    # what the training process measured, not the evaluation process (which loaded a finished checkpoint)
    for key in ("peak_mem_mib", "train_wall_s", "step_ms_median"):
        assert row["metrics"][key] == marker["metrics"][key], key
    assert row["derived"]["evaluated_after_training"] is True
    assert row["config_hash"] == want["config_hash"] and row["backbone"] == out["backbone"]
    # done with: checkpoint and marker removed, backbone kept
    assert not task.checkpoint.is_file() and not task.trained_marker.is_file()
    assert (tmp_path / "two" / "ck").rglob("*-backbone.pt")
    rows, _ = read_rows(tmp_path / "two" / "results", "stages")
    assert len(rows) == 1 and rows[0]["status"] == "ok"


def test_an_evaluation_task_of_an_untrained_cell_is_refused_with_a_failed_row(tmp_path):
    task = smoke(tmp_path)
    with pytest.raises(NotTrained, match="training has not finished"):
        run_task(task.at("eval"))
    rows, _ = read_rows(tmp_path / "results", "stages")
    assert [r["status"] for r in rows] == ["failed"] and "training has not finished" in rows[0]["error"]
    assert not task.checkpoint.is_file()  # nothing was trained by the evaluation


def test_a_training_task_resumed_after_a_kill_keeps_its_resume_in_the_row(tmp_path):
    from pic_bench.pic.train import Preempted

    task = smoke(tmp_path)
    calls = {"n": 0}

    def stop_at_3():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Preempted):
        run_task(task.at("train"), should_stop=stop_at_3)
    run_task(task.at("train"))
    row = run_task(task.at("eval"))
    assert row["derived"]["resumed_from_step"] == 3  # the training's resume, not the evaluation's load at step 6


def test_a_baseline_is_not_followed_by_other_ranks(tmp_path, monkeypatch):
    """Other ranks of a baseline task used to build a Trainer and train a PIC network (then hang in its
    collectives, since rank 0 computes the baseline alone): they must do nothing."""
    import pic_bench.pic.train as train

    def no_trainer(*a, **k):
        raise AssertionError("a rank of a baseline task built a Trainer")

    monkeypatch.setattr(train, "Trainer", no_trainer)
    base = smoke(tmp_path)
    for kind in ("baseline_random", "baseline_pixels"):
        assert launch.follow(Task(base.ablation, "smoke", {}, base.cfg, kind, base.results_dir,
                                  base.checkpoint_dir), lambda: False) is None

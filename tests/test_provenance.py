"""Provenance from the start of a run (issue 19): a row names the commit its run started on, and says when the
code changed before the row was written.

    nice -n 10 python3 -m pytest tests/test_provenance.py -q
"""
from __future__ import annotations

import pytest

from pic_bench.config import build
from pic_bench.report import results
from pic_bench.pic.train import Preempted
from pic_bench.suite.tasks import Task, run_task, start_file

A = {"git_sha": "a" * 40, "git_dirty": False}
B = {"git_sha": "b" * 40, "git_dirty": True}


class Repo:
    """A stand-in for ``results.git_state``: the commit checked out now, changed by the test while a task runs."""

    def __init__(self, state):
        self.state = dict(state)

    def __call__(self, cwd=None):
        return dict(self.state)


def cfg(**extra):
    return build("smoke", {"optim.max_steps": 6, "eval.linear_epochs": 2, "eval.baselines": False, **extra})


def test_a_commit_made_during_the_run_gives_a_row_naming_the_start_commit_and_saying_it_changed(tmp_path,
                                                                                                  monkeypatch):
    repo = Repo(A)
    monkeypatch.setattr(results, "git_state", repo)
    t = Task("prov", "smoke", {}, cfg(), results_dir=str(tmp_path / "res"), checkpoint_dir=str(tmp_path / "ck"))

    def commit_during_training(step, steps, loss):
        if step < steps:
            repo.state = dict(B)  # someone commits (and edits) while the run trains

    row = run_task(t, progress=commit_during_training, echo=False)
    assert row["git_sha"] == A["git_sha"] and row["git_dirty"] is False  # the start
    assert row["git_sha_end"] == B["git_sha"] and row["git_dirty_end"] is True
    assert row["provenance_changed"] == ["git_sha", "git_dirty"]
    assert results.read_rows(tmp_path / "res", "prov")[0][0]["git_sha"] == A["git_sha"]
    assert not start_file(t).exists()  # gone with the checkpoint


def test_an_unchanged_run_says_nothing_changed_and_versions_are_compared(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "git_state", Repo(A))
    t = Task("prov", "smoke", {}, cfg(), results_dir=str(tmp_path / "res"), checkpoint_dir=str(tmp_path / "ck"))
    row = run_task(t, echo=False)
    assert row["git_sha"] == row["git_sha_end"] == A["git_sha"] and row["provenance_changed"] == []
    real = results.versions()
    monkeypatch.setattr(results, "versions", lambda: {**real, "torch": "9.9"})
    start = {**A, "versions": real}
    prov = results.provenance("cpu", start)
    assert prov["versions"] == real and prov["provenance_changed"] == ["versions.torch"]


def test_a_resumed_run_names_the_commit_its_first_segment_started_on(tmp_path, monkeypatch):
    repo = Repo(A)
    monkeypatch.setattr(results, "git_state", repo)
    t = Task("prov", "smoke", {}, cfg(), results_dir=str(tmp_path / "res"), checkpoint_dir=str(tmp_path / "ck"))
    with pytest.raises(Preempted):
        run_task(t, should_stop=lambda: True, echo=False)
    assert start_file(t).is_file()
    repo.state = dict(B)  # the resumed job runs on another commit
    row = run_task(t, echo=False)
    assert row["git_sha"] == A["git_sha"] and row["git_sha_end"] == B["git_sha"]
    assert "git_sha" in row["provenance_changed"]
    # a fresh run of the same cell (no checkpoint left) starts afresh
    t2 = Task("prov2", "smoke", {}, cfg(), results_dir=str(tmp_path / "res"), checkpoint_dir=str(tmp_path / "ck"))
    assert run_task(t2, echo=False)["git_sha"] == B["git_sha"]


def test_an_evaluation_in_a_later_job_names_the_commit_its_training_started_on(tmp_path, monkeypatch):
    repo = Repo(A)
    monkeypatch.setattr(results, "git_state", repo)
    t = Task("prov", "smoke", {}, cfg(), results_dir=str(tmp_path / "res"), checkpoint_dir=str(tmp_path / "ck"))
    assert run_task(t.at("train"), echo=False)["status"] == "trained"
    repo.state = dict(B)  # the evaluation job runs after a commit
    row = run_task(t.at("eval"), echo=False)
    assert row["git_sha"] == A["git_sha"] and row["git_sha_end"] == B["git_sha"]
    assert row["provenance_changed"] == ["git_sha", "git_dirty"] and not start_file(t).exists()

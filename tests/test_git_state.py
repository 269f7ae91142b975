"""git_dirty says whether the code that ran differs from its commit: a run's own outputs do not count."""
import subprocess

from pic_bench.report.results import git_state


def git(d, *args):
    subprocess.run(["git", *args], cwd=d, check=True, capture_output=True)


def test_a_changed_rows_file_is_not_dirty_code_but_a_changed_source_is(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "pic_bench").mkdir()
    (tmp_path / "results" / "rows").mkdir(parents=True)
    (tmp_path / "pic_bench" / "train.py").write_text("x = 1\n")
    (tmp_path / "results" / "rows" / "a.jsonl").write_text("{}\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "results" / "rows" / "a.jsonl").write_text("{}\n{}\n")  # the sweep appended a row
    assert git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "pic_bench" / "train.py").write_text("x = 2\n")
    assert git_state(tmp_path)["git_dirty"] is True

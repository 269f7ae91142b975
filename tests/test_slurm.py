"""The SLURM path: cluster-file validation (refused before anything is submitted), the preemption path of an
array task in-process, and (marked ``slurm``) a tiny ablation run end to end as a real job array on a real
cluster: rows collected, a requeue that resumes from its checkpoint and ends with the numbers of an
uninterrupted run, and an idempotent resubmission that skips the finished cells.

The real-cluster tests skip only when ``sinfo`` cannot reach a cluster; CI brings one up first
(``slurm/local_cluster/up.sh`` in ``.ci/run``). They check rows, not job states (submitit's states lag sacct).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("submitit")  # the launcher imports it; a bare GPU machine may not carry it

from pic_bench.suite import launch, run, status
from pic_bench.config import ConfigError, load_ablation
from pic_bench.report.results import read_rows, row_key, rows_file

REPO = Path(__file__).resolve().parent.parent

ABLATION = """\
# A tiny ablation for the SLURM tests: two cells and the two baselines, one seed, smoke preset.
# Deterministic so that a requeued run can be compared float for float with an uninterrupted one.
name: slurm_ci
overrides: {run.deterministic: true, optim.epochs: 40}
sweep:
  pic.correction: [false, true]
default_cell: {pic.correction: true}
seeds: [0]
"""


def write_ablation(d: Path) -> Path:
    path = d / "slurm_ci.yaml"
    path.write_text(ABLATION)
    return path


def fake_bin(tmp_path: Path, monkeypatch, **scripts: str) -> Path:
    """Stand-in SLURM commands first on PATH: name -> shell body (``#!/bin/sh`` added)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


# ---- validation: refused before anything is submitted (fake sinfo / sbatch; no cluster needed)

@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sinfo that lists partitions debug (default) and gpu; sbatch that only records that it was called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "sbatch_called"
    (bin_dir / "sinfo").write_text("#!/bin/sh\nprintf 'debug*\\ngpu\\n'\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {marker}\necho 'Submitted batch job 1'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return marker


def submit_with(tmp_path, cluster_text: str | None, *slurm: str, capsys=None) -> tuple[int, str]:
    abl = write_ablation(tmp_path)
    cluster = tmp_path / "cluster.yaml"
    if cluster_text is not None:
        cluster.write_text(textwrap.dedent(cluster_text))
    argv = [str(abl), "smoke", "--executor", "slurm", "--cluster", str(cluster), "--results",
            str(tmp_path / "results"), "--checkpoints", str(tmp_path / "ck")]
    if slurm:
        argv += ["--slurm", *slurm]
    code = run.main(argv)
    if capsys is None:
        return code, ""
    cap = capsys.readouterr()
    return code, cap.err + cap.out


@pytest.mark.parametrize("text, overrides, expected", [
    ("partition: debug\ntime_limit: 30\n", (), r"cluster.yaml: unknown cluster key 'time_limit'"),
    ("partition: debug\ntime_min: soon\n", (), r"cluster.yaml: key 'time_min' expects int, got 'soon'"),
    ("partition: nosuch\n", (), r"partition 'nosuch' does not exist on this cluster \(sinfo lists: debug, gpu\)"),
    ("partition: debug\n", ("partition=gpu2",), r"partition 'gpu2' does not exist"),
    ("partition: debug\n", ("walltime=5",), r"command line \(--slurm\): unknown cluster key 'walltime'"),
    ("time_min: 1\nsignal_delay_s: 90\n", (), r"time_min=1 is too short: the checkpoint signal comes"),
    ("time_min: 10\nstep_s: 2\ncheckpoint_every: 500\n", (),
     r"time_min=10 is too short for one checkpoint interval: 500 steps x 2 s/step \(step_s\) = 1000 s, "
     r"but a job segment has 450 s"),
    ("eval: {walltime: 5}\n", (), r"cluster.yaml: 'eval.walltime' is not a resource key"),
    ("baseline: {mem_gb: lots}\n", (), r"cluster.yaml: key 'baseline.mem_gb' expects float, got 'lots'"),
    ("eval: {tasks_per_node: 0}\n", (), r"cluster \(eval tasks\): 'tasks_per_node' must be >= 1, got 0"),
    ("eval: {partition: nosuch}\n", (), r"partition 'nosuch' \(the eval tasks' partition\) does not exist"),
    ("eval_task: maybe\n", (), r"key 'eval_task' expects bool, got 'maybe'"),
], ids=["unknown-key", "wrong-type", "no-such-partition", "bad-override-partition", "unknown-override",
        "shorter-than-signal", "one-interval-does-not-fit", "eval-unknown-key", "baseline-wrong-type",
        "eval-zero-ranks", "eval-no-such-partition", "eval-task-not-bool"])
def test_bad_cluster_settings_are_refused_before_submitting(tmp_path, fake_slurm, capsys, text, overrides,
                                                            expected):
    import re

    code, err = submit_with(tmp_path, text, *overrides, capsys=capsys)
    assert code == 2
    assert re.search(expected, err), err
    assert not fake_slurm.exists()  # sbatch never ran
    assert not (tmp_path / "results" / "slurm").exists()  # nothing recorded as submitted


def test_time_limit_check_uses_the_step_time_of_landed_rows(tmp_path, fake_slurm, capsys):
    abl = load_ablation(write_ablation(tmp_path))
    tasks = run.expand(abl, "smoke", {}, str(tmp_path / "results"))
    path = rows_file(tmp_path / "results", "slurm_ci")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"ablation": "slurm_ci", "preset": "smoke", "kind": "pic", "status": "ok",
                                "config_hash": "x", "seed": 9, "metrics": {"step_ms_median": 3000.0},
                                "config": {}}) + "\n")
    cc = launch.load_cluster(None, {"time_min": 5, "checkpoint_every": 100})
    with pytest.raises(ConfigError, match=r"100 steps x 3 s/step \(the median step time of slurm_ci's landed "
                                          r"smoke rows\) = 300 s, but a job segment has 150 s"):
        launch.validate(cc, tasks, tmp_path / "results")
    # 120 s fits; the whole run (320 steps x 3 s) needs 7 segments of 150 s: max_requeues 6 (issue 18)
    launch.validate(dataclasses.replace(cc, checkpoint_every=40, max_requeues=6), tasks, tmp_path / "results")


def test_missing_cluster_file_and_missing_sinfo_are_named(tmp_path, monkeypatch, capsys):
    code, err = submit_with(tmp_path, None, capsys=capsys)
    assert code == 2 and "cluster file not found" in err and "cluster.yaml" in err
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo anywhere
    code, err = submit_with(tmp_path, "partition: debug\n", capsys=capsys)
    assert code == 2 and "sinfo not found" in err


def test_cluster_settings_in_an_ablation_file_are_refused(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(ABLATION + "slurm: {partition: gpu}\n")
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) \['slurm'\]"):
        load_ablation(path)
    path.write_text(ABLATION.replace("overrides: {", "overrides: {time_min: 30, "))
    with pytest.raises(ConfigError, match="unknown config key 'time_min'"):
        load_ablation(path)


@pytest.fixture
def recording_sbatch(tmp_path, monkeypatch):
    """sinfo listing debug and gpu; an sbatch that keeps every script (scripts/<n>.sh) and answers job ids
    4242, 4243, ...; squeue with what the test writes into squeue.txt; scancel that records its arguments."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (tmp_path / "squeue.txt").write_text("")
    fake_bin(tmp_path, monkeypatch, sinfo="printf 'debug*\\ngpu\\n'\n", squeue=f"cat {tmp_path / 'squeue.txt'}\n",
             scancel=f"echo \"$@\" >> {tmp_path / 'scancel.txt'}\n",
             sbatch=f"n=$(ls {scripts} | wc -l)\ncp \"$1\" {scripts}/$n.sh\necho \"Submitted batch job $((4242 + n))\"\n")
    return tmp_path


def scripts(d: Path) -> list[str]:
    return [(d / "scripts" / f"{i}.sh").read_text() for i in range(len(list((d / "scripts").iterdir())))]


BIG_CLUSTER = """\
    partition: gpu
    account: proj
    nodes: 2
    tasks_per_node: 4
    gpus_per_node: 4
    cpus_per_task: 8
    mem_gb: 200
    time_min: 720
    signal_delay_s: 120
    array_parallelism: 3
    setup: ["source .venv/bin/activate"]
    extra_sbatch: {constraint: a100}
    eval: {nodes: 1, tasks_per_node: 1, gpus_per_node: 1, time_min: 240}
    """


def test_training_evaluation_and_baselines_are_three_arrays_with_their_own_resources(recording_sbatch, capsys):
    """Resources, extra flags and setup lines reach every sbatch script; the two cells train in one array of
    two, their evaluations are an array of two started task by task when training succeeds (aftercorr), with
    the eval section's resources; the two baselines request one rank and one GPU."""
    tmp_path = recording_sbatch
    code, err = submit_with(tmp_path, BIG_CLUSTER, f"folder={tmp_path / 'logs'}", capsys=capsys)
    assert code == 0, err
    train, evaluation, baseline = scripts(tmp_path)
    for script in (train, evaluation, baseline):
        for flag in ("--partition=gpu", "--account=proj", "--cpus-per-task=8", "--mem=204800MB",
                     "--signal=USR2@120", "--array=0-1%2", "--constraint=a100"):
            assert f"#SBATCH {flag}\n" in script, flag
        assert "source .venv/bin/activate" in script and "submitit.core._submit" in script
    for flag in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--time=720"):
        assert f"#SBATCH {flag}\n" in train, flag
    for flag in ("--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=1", "--time=240",
                 "--dependency=aftercorr:4242", "--kill-on-invalid-dep=yes"):
        assert f"#SBATCH {flag}\n" in evaluation, flag
    for flag in ("--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=1", "--time=720"):
        assert f"#SBATCH {flag}\n" in baseline, flag
    assert "--dependency" not in train + baseline
    final = launch.read_manifest(tmp_path / "results", "slurm_ci")
    trains = launch.read_manifest(tmp_path / "results", "slurm_ci", stage="train")
    assert sorted(e["job_id"] for e in trains.values()) == ["4242_0", "4242_1"]
    assert sorted((e["stage"], e["job_id"]) for e in final.values()) == [
        ("baseline", "4244_0"), ("baseline", "4244_1"), ("eval", "4243_0"), ("eval", "4243_1")]
    for key, e in trains.items():  # evaluation task i belongs to training task i (aftercorr pairs them by index)
        assert final[key]["job_id"].split("_")[1] == e["job_id"].split("_")[1]
    assert "submitted 2 train task(s) as job array 4242" in err
    assert "submitted 2 eval task(s) as job array 4243" in err and "aftercorr:4242" in err


def test_a_trained_cell_gets_only_its_evaluation_and_a_dead_evaluation_is_resubmitted(recording_sbatch, capsys):
    """The same command again finishes what is missing: a cell whose training finished (trained marker and
    final checkpoint) is submitted as an evaluation without dependency; an evaluation left pending because its
    training failed (SLURM: DependencyNeverSatisfied) is cancelled, and its cell is trained and evaluated again."""
    tmp_path = recording_sbatch
    code, err = submit_with(tmp_path, BIG_CLUSTER, f"folder={tmp_path / 'logs'}", capsys=capsys)
    assert code == 0, err
    abl = load_ablation(tmp_path / "slurm_ci.yaml")
    tasks = [t for t in run.expand(abl, "smoke", {}, str(tmp_path / "results"), str(tmp_path / "ck"))
             if t.kind == "pic"]
    trained, untrained = tasks
    trained.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    trained.checkpoint.write_bytes(b"final checkpoint")
    trained.trained_marker.write_text("{}")
    final = launch.read_manifest(tmp_path / "results", "slurm_ci")
    dead = final[tuple(launch.task_key(untrained))]["job_id"]
    (tmp_path / "squeue.txt").write_text(f"{dead}|PENDING|DependencyNeverSatisfied\n")
    for f in (tmp_path / "scripts").iterdir():
        f.unlink()
    code, err = submit_with(tmp_path, BIG_CLUSTER, f"folder={tmp_path / 'logs'}", capsys=capsys)
    assert code == 0, err
    assert (tmp_path / "scancel.txt").read_text().split() == [dead]
    by_stage = {}
    for script in scripts(tmp_path):
        stage = "train" if "_train" in script.split("--job-name=")[1].split("\n")[0] else (
            "eval" if "_eval" in script.split("--job-name=")[1].split("\n")[0] else "baseline")
        by_stage.setdefault(stage, []).append(script)
    assert len(by_stage["train"]) == 1  # one training task, of the untrained cell only
    trains = launch.read_manifest(tmp_path / "results", "slurm_ci", stage="train")
    assert trains[tuple(launch.task_key(untrained))]["job_id"] == "4242"  # this round's
    assert trains[tuple(launch.task_key(trained))]["job_id"] in ("4242_0", "4242_1")  # the first round's
    evals = by_stage["eval"]  # the untrained cell's, after its new training; the trained cell's, at once
    assert len(evals) == 2
    assert "#SBATCH --dependency=afterok:4242\n" in evals[0] and "--dependency" not in evals[1]
    final2 = launch.read_manifest(tmp_path / "results", "slurm_ci")
    assert final2[tuple(launch.task_key(untrained))]["job_id"] != dead


def test_shipped_cluster_file_loads():
    cc = launch.load_cluster(REPO / "slurm" / "cluster.yaml")
    assert cc.ranks == 1 and cc.time_min * 60 > cc.signal_delay_s + launch.STARTUP_S


def test_status_names_failed_lost_and_missing_tasks_with_reason_and_log(tmp_path, capsys, monkeypatch):
    from pic_bench.report.results import append_row, make_row

    monkeypatch.chdir(tmp_path)  # the logs the jobs wrote, where the manifest says (only logs that exist are named)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "999990_0_0_log.err").write_text("")
    abl_path = write_ablation(tmp_path)
    results = tmp_path / "results"
    a, b = run.expand(load_ablation(abl_path), "smoke", {}, str(results), baselines=False)
    path = launch.manifest_file(results, "slurm_ci")
    path.parent.mkdir(parents=True)
    with open(path, "w") as f:
        for i, t in enumerate((a, b)):
            f.write(json.dumps({"key": launch.task_key(t), "name": t.name, "cell": t.cell, "job_id": f"999990_{i}",
                                "array_id": "999990", "stderr": f"logs/999990_{i}_0_log.err",
                                "submitted": "2000-01-01T00:00:00+0000"}) + "\n")
    append_row(make_row(a.ablation, a.preset, a.cell, a.cfg, "failed", {}, {"index_digest": a.digest}, "cpu",
                        error="NonFiniteLoss: non-finite loss nan at step 3\ntraceback ..."), results)
    assert status.main([str(abl_path), "--results", str(results), "--preset", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "| smoke | pic | pic.correction=False | 0 | failed | NonFiniteLoss: non-finite loss nan at step 3 | " \
           "logs/999990_0_0_log.err |" in out
    assert "| smoke | pic | pic.correction=True | 0 | lost | job 999990_1 is not queued and left no row" in out
    assert "| smoke | baseline_random | pic.correction=True | 0 | missing | never submitted |" in out
    assert "1 failed, 1 lost, 2 missing" in out
    assert status.main(["no_such_ablation", "--results", str(results)]) == 1


def test_status_shows_the_training_job_an_evaluation_waits_for_and_a_dead_evaluation_as_failed(
        tmp_path, capsys, monkeypatch):
    abl_path = write_ablation(tmp_path)
    results = tmp_path / "results"
    a, b = run.expand(load_ablation(abl_path), "smoke", {}, str(results), baselines=False)
    path = launch.manifest_file(results, "slurm_ci")
    path.parent.mkdir(parents=True)
    with open(path, "w") as f:
        for stage, array in (("train", "777"), ("eval", "778")):
            for i, t in enumerate((a, b)):
                f.write(json.dumps({"key": launch.task_key(t), "name": t.name, "cell": t.cell, "stage": stage,
                                    "job_id": f"{array}_{i}", "array_id": array,
                                    "stderr": f"logs/{array}_{i}_0_log.err",
                                    "submitted": "2000-01-01T00:00:00+0000"}) + "\n")
    monkeypatch.chdir(tmp_path)  # the training jobs' logs (only logs that exist are named)
    (tmp_path / "logs").mkdir()
    for i in (0, 1):
        (tmp_path / "logs" / f"777_{i}_0_log.err").write_text("")
    monkeypatch.setattr(status, "queue_states", lambda *a, **k: {
        "777_0": ("RUNNING", "None"), "778_0": ("PENDING", "Dependency"),
        "778_1": ("PENDING", "DependencyNeverSatisfied")})
    monkeypatch.setattr(status, "accounting_states", lambda *a, **k: {})
    assert status.main([str(abl_path), "--results", str(results), "--preset", "smoke", "--no-baselines"]) == 0
    out = capsys.readouterr().out
    assert ("| smoke | pic | pic.correction=False | 0 | running | training: job 777_0 RUNNING; evaluation job "
            "778_0 starts when it succeeds | logs/777_0_0_log.err |") in out
    assert ("| smoke | pic | pic.correction=True | 0 | failed | training job 777_1 ended without training the "
            "cell; evaluation job 778_1 can never start | logs/777_1_0_log.err |") in out


def test_status_tells_an_evaluation_array_sbatch_refused_from_a_task_never_submitted(tmp_path, monkeypatch, capsys):
    """sbatch takes the training array and refuses the evaluation array (its eval: section asks for too much)."""
    scripts_dir = tmp_path / "scripts"
    scripts_dir.mkdir()
    fake_bin(tmp_path, monkeypatch, sinfo="printf 'debug*\\n'\n", squeue="echo '4242_0|RUNNING|None'\n",
             sacct="exit 0\n",
             sbatch=f"n=$(ls {scripts_dir} | wc -l)\nif [ $n -ge 1 ]; then echo 'sbatch: error: Memory specification "
                    f"can not be satisfied' >&2; exit 1; fi\ncp \"$1\" {scripts_dir}/$n.sh\n"
                    "echo \"Submitted batch job $((4242 + n))\"\n")
    code, err = submit_with(tmp_path, "partition: debug\neval: {mem_gb: 100000}\n", f"folder={tmp_path / 'logs'}",
                            capsys=capsys)
    assert code == 2 and "sbatch refused the eval job array" in err, err
    results = tmp_path / "results"
    assert status.main([str(tmp_path / "slurm_ci.yaml"), "smoke", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    pic = [line for line in out.splitlines() if line.startswith("| smoke | pic |")]
    assert len(pic) == 2
    for line in pic:  # before: "missing | never submitted", though its training job is running
        assert "| refused | sbatch refused its evaluation array: Memory specification can not be satisfied; its " \
               "training job 4242_" in line and "running the same command again submits it" in line
        assert "never submitted" not in line
    assert "2 refused" in out
    baselines = [line for line in out.splitlines() if line.startswith("| smoke | baseline")]
    assert baselines and all("| missing | never submitted |" in line for line in baselines)  # never reached sbatch


def test_status_names_a_failed_training_jobs_own_log_and_no_log_that_does_not_exist(tmp_path, capsys, monkeypatch):
    from pic_bench.report.results import append_row, make_row

    abl_path = write_ablation(tmp_path)
    results = tmp_path / "results"
    a, b = run.expand(load_ablation(abl_path), "smoke", {}, str(results), baselines=False)
    logs = tmp_path / "logs"
    logs.mkdir()
    path = launch.manifest_file(results, "slurm_ci")
    path.parent.mkdir(parents=True)
    with open(path, "w") as f:
        for stage, array in (("train", "777"), ("eval", "778")):
            for i, t in enumerate((a, b)):
                f.write(json.dumps({"key": launch.task_key(t), "name": t.name, "cell": t.cell, "stage": stage,
                                    "job_id": f"{array}_{i}", "array_id": array,
                                    "stderr": str(logs / f"{array}_{i}_0_log.err"),
                                    "submitted": "2000-01-01T00:00:00+0000"}) + "\n")
    (logs / "777_0_0_log.err").write_text("NonFiniteLoss: non-finite loss nan at step 3\n")  # a's training ran
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "777")  # the failed row as a's training task writes it
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    append_row(make_row(a.ablation, a.preset, a.cell, a.cfg, "failed", {}, {"index_digest": a.digest}, "cpu",
                        error="NonFiniteLoss: non-finite loss nan at step 3"), results)
    monkeypatch.setattr(status, "queue_states", lambda *a, **k: {})  # the evaluation jobs were cancelled
    monkeypatch.setattr(status, "accounting_states", lambda *a, **k: {})
    assert status.main([str(abl_path), "--results", str(results), "--preset", "smoke", "--no-baselines"]) == 0
    out = capsys.readouterr().out
    # before: logs/778_0_0_log.err, the evaluation job's log, which never existed
    assert f"| failed | NonFiniteLoss: non-finite loss nan at step 3 | {logs / '777_0_0_log.err'} |" in out
    lost = next(line for line in out.splitlines() if "| lost |" in line)
    assert lost.endswith("|  |") and "778_1_0_log.err" not in out  # b left no log: none is named


# ---- the preemption path of one array task, in-process (what submitit does on SIGUSR2, minus the requeue)

def test_array_task_checkpoints_at_a_step_boundary_and_the_resubmission_resumes(tmp_path):
    abl = load_ablation(write_ablation(tmp_path))
    tasks = run.expand(abl, "smoke", {"run.checkpoint_every": 5, "optim.epochs": 10}, str(tmp_path / "results"),
                       str(tmp_path / "ck"), baselines=False)
    task = next(t for t in tasks if t.cell == {"pic.correction": False})
    job = launch.ArrayTask(signal_delay_s=30)
    job.requeue_wait_s = 0.1
    outcome = {}

    def call():
        try:
            job(task)
        except RuntimeError as e:
            outcome["error"] = str(e)

    th = threading.Thread(target=call)
    th.start()
    deadline = time.time() + 120
    while not task.checkpoint.is_file() and time.time() < deadline:  # training is under way
        time.sleep(0.05)
    delayed = job.checkpoint(task)  # what submitit's SIGUSR2 handler calls, from the main thread
    th.join(timeout=60)
    assert "stopped for a requeue" in outcome["error"]
    import torch

    saved = torch.load(task.checkpoint, weights_only=False)["step"]
    assert 5 <= saved < 80
    assert isinstance(delayed.function, launch.ArrayTask) and delayed.args == (task,)
    assert delayed.function is not job  # a fresh callable: nothing of the stopped run is pickled
    result = delayed.result()  # the requeued job, run here
    assert result["status"] == "ok"
    rows, _ = read_rows(tmp_path / "results", "slurm_ci")
    assert len(rows) == 1 and rows[0]["derived"]["resumed_from_step"] == saved
    assert not task.checkpoint.is_file()  # removed once the row landed
    assert job(task)["skipped"]  # a late duplicate of the same task does nothing


# ---- a real cluster

def cluster_reachable() -> bool:
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and bool(r.stdout.strip())


def wait_until(cond, limit_s: float, what: str, poll_s: float = 0.5):
    end = time.time() + limit_s
    while time.time() < end:
        value = cond()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {limit_s:.0f} s waiting for {what}")


def ok_rows(results: Path) -> dict:
    rows, problems = read_rows(results, "slurm_ci")
    assert problems == []
    return {row_key(r): r for r in rows if r["status"] == "ok"}


@pytest.fixture(scope="module")
def slurm_flow(tmp_path_factory):
    """Submits the tiny ablation, requeues one array task with SIGUSR2 once its periodic checkpoint exists,
    computes the same task uninterrupted in-process meanwhile, waits for every row, then resubmits."""
    if not cluster_reachable():
        if os.environ.get("PIC_REQUIRE_SLURM") == "1":  # set by .ci/run after bringing the cluster up
            pytest.fail("PIC_REQUIRE_SLURM=1 but no SLURM cluster is reachable (sinfo failed)")
        pytest.skip("no SLURM cluster reachable (sinfo failed); start one: sudo bash slurm/local_cluster/up.sh")
    d = tmp_path_factory.mktemp("slurm")
    partition = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()[0]
    abl_path = write_ablation(d)
    results, ck = d / "results", d / "ck"
    argv = [str(abl_path), "smoke", "--executor", "slurm", "--results", str(results), "--checkpoints", str(ck),
            "--slurm", f"partition={partition.rstrip('*')}", "time_min=10", "signal_delay_s=30", "mem_gb=1",
            "checkpoint_every=10", f"folder={d / 'logs'}"]
    out: dict = {"d": d, "results": results, "argv": argv}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "pic_bench.run", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    out["submit"] = proc
    assert proc.returncode == 0, proc.stderr
    manifest = launch.read_manifest(results, "slurm_ci")
    out["manifest"] = manifest
    try:
        abl = load_ablation(abl_path)
        tasks = run.expand(abl, "smoke", {}, str(results), str(ck))
        target = next(t for t in tasks if t.kind == "pic" and t.cell == {"pic.correction": False})
        trains = launch.read_manifest(results, "slurm_ci", stage="train")
        out["trains"] = trains
        job_id = trains[tuple(launch.task_key(target))]["job_id"]  # its training task
        wait_until(target.checkpoint.is_file, 150, "the first periodic checkpoint of the target task")
        step_at_signal = __import__("torch").load(target.checkpoint, weights_only=False)["step"]
        # scancel delivers at once, then may retry for as long as the requeue keeps the job busy ("Job can not
        # be altered now, try again later"): the results below tell whether the signal arrived
        try:
            subprocess.run(["scancel", "--signal=USR2", job_id], timeout=10)
        except subprocess.TimeoutExpired:
            pass
        out["signalled"] = (job_id, step_at_signal, time.time() - t0)
        # the same task, uninterrupted, in this process (while the requeued job waits and resumes)
        ref_task = dataclasses.replace(target, results_dir=str(d / "ref"), checkpoint_dir=str(d / "ref_ck"))
        out["reference"] = run.run_task(ref_task)
        wait_until(lambda: len(ok_rows(results)) == len(tasks), 300, "every task's row")
        out["rows_done_s"] = time.time() - t0
        out["rows"] = ok_rows(results)
        out["lines"] = len(rows_file(results, "slurm_ci").read_text().splitlines())
        out["target"] = target
        # idempotent resubmission: one row removed, the same command again submits only that task
        path = rows_file(results, "slurm_ci")
        lines = path.read_text().splitlines()
        kept = [line for line in lines if json.loads(line)["kind"] != "baseline_pixels"]
        assert len(kept) == len(lines) - 1
        path.write_text("\n".join(kept) + "\n")
        proc2 = subprocess.run([sys.executable, "-m", "pic_bench.run", *argv, "--wait"], cwd=REPO,
                               capture_output=True, text=True, timeout=240)
        out["resubmit"] = proc2
        out["manifest2"] = launch.read_manifest(results, "slurm_ci")
        out["manifest2_lines"] = launch.manifest_file(results, "slurm_ci").read_text().splitlines()
        out["rows2"] = ok_rows(results)
        out["status"] = subprocess.run([sys.executable, "-m", "pic_bench.status", str(abl_path), "--results",
                                        str(results), "--preset", "smoke"], cwd=REPO, capture_output=True,
                                       text=True, timeout=120)
        out["total_s"] = time.time() - t0
        print(f"slurm flow: signalled after {out['signalled'][2]:.0f} s, all rows after {out['rows_done_s']:.0f} s,"
              f" total {out['total_s']:.0f} s", file=sys.stderr)
    finally:
        active = [e["job_id"] for stage in ("final", "train")
                  for e in launch.read_manifest(results, "slurm_ci", stage=stage).values()]
        if active:
            subprocess.run(["scancel", *active], capture_output=True, timeout=30)
    return out


@pytest.mark.slurm
def test_submission_prints_the_array_id_and_returns(slurm_flow):
    """Three arrays: the cells' training, their evaluations (each after its training task), the baselines."""
    proc, manifest, trains = slurm_flow["submit"], slurm_flow["manifest"], slurm_flow["trains"]
    assert len(manifest) == 4 and len(trains) == 2  # 2 cells (train + eval) + 2 baselines
    (train_id,) = {e["array_id"] for e in trains.values()}
    evals = {e["array_id"] for e in manifest.values() if e["stage"] == "eval"}
    bases = {e["array_id"] for e in manifest.values() if e["stage"] == "baseline"}
    assert len(evals) == len(bases) == 1 and len({train_id, *evals, *bases}) == 3
    assert f"submitted 2 train task(s) as job array {train_id}" in proc.stdout
    assert f"submitted 2 eval task(s) as job array {evals.pop()}" in proc.stdout
    assert f"aftercorr:{train_id}" in proc.stdout
    assert sorted(e["job_id"] for e in trains.values()) == [f"{train_id}_{i}" for i in range(2)]


@pytest.mark.slurm
def test_every_array_task_lands_exactly_one_row(slurm_flow):
    rows = slurm_flow["rows"]
    assert len(rows) == 4 and slurm_flow["lines"] == 4  # no duplicate after the requeue
    assert {r["kind"] for r in rows.values()} == {"pic", "baseline_random", "baseline_pixels"}
    for r in rows.values():
        assert r["slurm_job_id"] == slurm_flow["manifest"][row_key(r)]["array_id"]  # written by its final task
        assert r["slurm_array_task_id"] is not None
        if r["kind"] == "pic":  # evaluated in its own task, after the training task of the same index
            assert r["metrics"]["knn_top1"] > 0 and r["metrics"]["final_loss"] > 0
            assert r["derived"]["evaluated_after_training"] is True
            job = r["derived"]["train_job"]
            assert job["slurm_job_id"] == slurm_flow["trains"][row_key(r)]["array_id"]
            assert job["slurm_array_task_id"] == r["slurm_array_task_id"]


@pytest.mark.slurm
def test_requeued_task_resumed_from_its_checkpoint_with_uninterrupted_numbers(slurm_flow):
    target, rows = slurm_flow["target"], slurm_flow["rows"]
    row = rows[tuple(launch.task_key(target))]
    job_id, step_at_signal, _ = slurm_flow["signalled"]
    resumed = row["derived"].get("resumed_from_step")
    assert resumed is not None and resumed >= step_at_signal > 0, (resumed, step_at_signal)
    ref = slurm_flow["reference"]
    assert "resumed_from_step" not in ref["derived"]
    for key in ("final_loss", "knn_top1", "linear_top1"):
        assert row["metrics"][key] == ref["metrics"][key], key  # bit-exact: deterministic CPU run
    log = Path(slurm_flow["trains"][row_key(row)]["stderr"])  # the training task was requeued
    assert "Requeued" in log.read_text() or "requeue" in log.read_text().lower()


@pytest.mark.slurm
def test_resubmission_skips_finished_cells_and_reruns_only_the_missing_one(slurm_flow):
    proc = slurm_flow["resubmit"]
    assert proc.returncode == 0, proc.stderr
    assert "skipping 3 task(s) whose row already exists" in proc.stderr
    assert "submitted 1 baseline task(s)" in proc.stdout and "train task(s)" not in proc.stdout
    assert len(slurm_flow["manifest2_lines"]) == 7  # 2 trainings, 2 evaluations, 2 baselines + the one resubmitted
    rows2 = slurm_flow["rows2"]
    assert len(rows2) == 4
    again = [r for r in rows2.values() if r["kind"] == "baseline_pixels"][0]
    assert again["slurm_job_id"] != slurm_flow["rows"][row_key(again)]["slurm_job_id"]  # really run again
    assert "| default | baseline_pixels |" in proc.stdout or "baseline_pixels" in proc.stdout  # the table


@pytest.mark.slurm
def test_status_reports_every_task_done_and_the_table(slurm_flow):
    proc = slurm_flow["status"]
    assert proc.returncode == 0, proc.stderr
    assert "4 done" in proc.stdout
    assert "resumed from step" in proc.stdout
    assert "kNN top-1" in proc.stdout  # the table rebuilt from the rows
    states = status.task_states("slurm_ci", slurm_flow["results"])
    assert [s["state"] for s in states] == ["done"] * 4


DDP_ABLATION = """\
# One cell trained by two data-parallel ranks (SLURM tasks) of one array task.
name: slurm_ci_ddp
overrides: {run.deterministic: true, optim.epochs: 4, pic.correction: false}
seeds: [0]
"""


@pytest.mark.slurm
def test_two_rank_array_task_initialised_from_slurm_matches_one_process(slurm_flow):
    """tasks_per_node=2: srun starts two ranks; the process group comes from SLURM's/submitit's environment;
    rank 0 writes the row, whose numbers match an in-process single-process run of the same global batch."""
    d = slurm_flow["d"]
    abl_path = d / "slurm_ci_ddp.yaml"
    abl_path.write_text(DDP_ABLATION)
    results = d / "ddp_results"
    argv = [str(abl_path), "smoke", "--executor", "slurm", "--no-baselines", "--wait", "-q", "--results",
            str(results), "--checkpoints", str(d / "ddp_ck"), "--slurm", "tasks_per_node=2", "cpus_per_task=1",
            "time_min=10", "signal_delay_s=30", "mem_gb=2", f"folder={d / 'logs'}"]
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "pic_bench.run", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=240)
    print(f"2-rank array task: {time.time() - t0:.0f} s", file=sys.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows, _ = read_rows(results, "slurm_ci_ddp")
    assert len(rows) == 1 and rows[0]["status"] == "ok"  # rank 1 wrote nothing
    (task,) = run.expand(load_ablation(abl_path), "smoke", {}, str(d / "ddp_ref"), str(d / "ddp_ref_ck"),
                         baselines=False)
    ref = run.run_task(task)
    assert rows[0]["config_hash"] == ref["config_hash"]
    got, want = rows[0]["metrics"]["final_loss"], ref["metrics"]["final_loss"]
    # the same arithmetic but for the order of sums (gradient all-reduce, BatchNorm over ranks): float rounding
    assert abs(got - want) <= 1e-5 * abs(want), (got, want)
    out0 = Path(launch.read_manifest(results, "slurm_ci_ddp")[tuple(launch.task_key(task))]["stdout"])
    out1 = out0.with_name(out0.name.replace("_0_log.out", "_1_log.out"))
    logs = [out.read_text() + out.with_suffix(".err").read_text() for out in (out0, out1)]
    assert "global_rank=0(2)" in logs[0] and "global_rank=1(2)" in logs[1]  # submitit's env: two ranks, one job


def test_status_takes_the_submission_command_line_and_shows_preset_and_running_step(tmp_path, capsys,
                                                                                    monkeypatch):
    """The preset and key=value items after the ablation, as given to run, name the same tasks; smoke and small
    tasks are told apart by a preset column; a running task shows the latest step and loss of its curve."""
    abl_path = write_ablation(tmp_path)
    results = tmp_path / "results"
    cli = {"optim.epochs": 2}
    (a, b) = run.expand(load_ablation(abl_path).for_preset("smoke"), "smoke", cli, str(results), baselines=False)
    small = run.expand(load_ablation(abl_path).for_preset("small"), "small", {}, str(results), baselines=False)[0]
    fake_bin(tmp_path, monkeypatch, squeue="printf '999991_0|RUNNING|None\\n999991_1|PENDING|Priority\\n'\n",
             sacct="exit 0\n")
    path = launch.manifest_file(results, "slurm_ci")
    path.parent.mkdir(parents=True)
    with open(path, "w") as f:
        for i, t in enumerate((a, b, small)):
            f.write(json.dumps({"key": launch.task_key(t), "name": t.name, "cell": t.cell, "job_id": f"999991_{i}",
                                "array_id": "999991", "stderr": f"logs/999991_{i}_0_log.err", "curve": str(t.curve),
                                "submitted": "2000-01-01T00:00:00+0000"}) + "\n")
    a.curve.parent.mkdir(parents=True)
    a.curve.write_text('{"step": 5, "loss": 6.5, "lr": 0.3, "wall_s": 1.0}\n'
                       '{"step": 10, "loss": 6.25, "lr": 0.3, "wall_s": 2.0}\n{"step": 1')
    assert status.main([str(abl_path), "smoke", "optim.epochs=2", "--results", str(results),
                        "--no-baselines"]) == 0
    out = capsys.readouterr().out
    assert "| preset | kind | cell | seed | state |" in out
    assert "| smoke | pic | pic.correction=False | 0 | running | job 999991_0 RUNNING, step 10 loss 6.2500 |" in out
    assert "| smoke | pic | pic.correction=True | 0 | pending | job 999991_1 PENDING (Priority) |" in out
    assert "missing" not in out and "| small |" not in out  # before: the overrides named other tasks
    assert "2 " in out.splitlines()[-1] or "1 pending, 1 running" in out
    # without the preset, every submitted task is listed, each with its preset
    assert status.main([str(abl_path), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "| small | pic |" in out and "| smoke | pic |" in out


# ---- SLURM faults: refusals that name their source, USR2 handling, why a task ended

def test_a_partition_given_on_the_command_line_is_blamed_on_the_command_line(tmp_path, fake_slurm, capsys):
    code, err = submit_with(tmp_path, "partition: debug\n", "partition=gpu2", capsys=capsys)
    assert code == 2 and "error: command line (--slurm): partition 'gpu2' does not exist" in err  # was: cluster.yaml
    code, err = submit_with(tmp_path, "partition: nosuch\n", capsys=capsys)
    assert code == 2 and "cluster.yaml: partition 'nosuch'" in err
    code, err = submit_with(tmp_path, "time_min: 5\n", "time_min=1", capsys=capsys)
    assert code == 2 and "command line (--slurm): time_min=1 is too short" in err


def test_an_sbatch_refusal_is_one_error_line_with_sbatchs_words(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sinfo").write_text("#!/bin/sh\nprintf 'debug*\\n'\n")
    (bin_dir / "squeue").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: Memory specification can not be satisfied' >&2\n"
                                    "echo 'sbatch: error: Batch job submission failed: Requested node configuration "
                                    "is not available' >&2\nexit 1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    code, err = submit_with(tmp_path, "partition: debug\n", "mem_gb=100000", f"folder={tmp_path / 'logs'}",
                            capsys=capsys)  # before: a submitit FailedJobError traceback
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "sbatch refused" in lines[0] and "Memory specification can not be satisfied" in lines[0]
    assert "Requested node configuration is not available" in lines[0]
    assert not launch.manifest_file(tmp_path / "results", "slurm_ci").exists()  # nothing recorded as submitted


@pytest.fixture
def usr2_handler(tmp_path):
    """submitit's own SIGUSR2 handler for a job with time_min=10 and max_requeues=0, on a fake environment that
    records requeues instead of calling scontrol; restores the process's handler afterwards."""
    import signal

    from submitit.core import job_environment, utils

    previous = signal.getsignal(signal.SIGUSR2)
    made = []

    def make(ran_s: float, max_requeues: int = 0):
        cfg_task = run.expand(load_ablation(write_ablation(tmp_path)), "smoke", {}, str(tmp_path / "results"),
                              baselines=False)[0]
        job = launch.ArrayTask(signal_delay_s=30)
        delayed = utils.DelayedSubmission(job, cfg_task)
        delayed.set_timeout(10, max_requeues)
        requeues, exits = [], []
        env = type("Env", (), {"global_rank": 0, "_requeue": lambda self, c: requeues.append(c)})()
        handler = job_environment.SignalHandler(env, utils.JobPaths(tmp_path / "logs", job_id="5"), delayed)
        handler._start_time = time.time() - ran_s
        handler._exit = lambda: exits.append(1)
        (tmp_path / "logs").mkdir(exist_ok=True)
        signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
        made.append(job)
        return job, requeues, exits

    yield make
    signal.signal(signal.SIGUSR2, previous)


def test_a_manual_usr2_is_a_preemption_and_a_second_one_during_the_requeue_is_ignored(usr2_handler, capsys):
    import signal

    job, requeues, exits = usr2_handler(ran_s=60)  # one minute into a 10-minute job: scancel --signal=USR2
    assert job.take_over_signal()
    handle = signal.getsignal(signal.SIGUSR2)
    handle(signal.SIGUSR2, None)  # before: "timed-out" (submitit: from second 0 when time_min < 50), not requeued
    assert requeues == [0] and exits == [1]  # requeued, max_requeues (0) untouched
    handle(signal.SIGUSR2, None)  # arrives while stopping / requeueing
    assert requeues == [0] and exits == [1]
    err = capsys.readouterr().err
    assert "a preemption (does not count against max_requeues)" in err and "USR2 again while stopping" in err


def test_the_time_limit_signal_still_counts_against_max_requeues(usr2_handler, capsys):
    import signal

    from submitit.core.utils import UncompletedJobError

    job, requeues, _ = usr2_handler(ran_s=600 - 30 - 20)  # SLURM's USR2, signal_delay_s before the limit
    assert job.take_over_signal()
    with pytest.raises(UncompletedJobError, match="timed-out too many times"):
        signal.getsignal(signal.SIGUSR2)(signal.SIGUSR2, None)
    assert requeues == [] and "the time limit (counts against max_requeues)" in capsys.readouterr().err
    assert launch.timed_out(500, 600, 30) and not launch.timed_out(470, 600, 30)


def test_status_shows_why_a_job_ended_as_its_log_says(tmp_path, monkeypatch, capsys):
    abl_path = write_ablation(tmp_path)
    results = tmp_path / "results"
    a, b = run.expand(load_ablation(abl_path), "smoke", {}, str(results), baselines=False)
    fake_bin(tmp_path, monkeypatch, squeue="exit 0\n",
             sacct="printf '999992_0|FAILED|1:0\\n999992_1|FAILED|1:0\\n'\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "0.err").write_text(
        "submitit WARNING (2026-12-01 10:00:00,000) - Caught signal SIGUSR2 on node1: this job is timed-out.\n"
        "submitit INFO (2026-12-01 10:00:01,000) - Job not requeued because: timed-out too many times.\n"
        "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
        "submitit.core.utils.UncompletedJobError: Job not requeued because: timed-out too many times.\n")
    (logs / "1.err").write_text("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                                "MemoryError: cannot allocate 12 GiB\n")
    path = launch.manifest_file(results, "slurm_ci")
    path.parent.mkdir(parents=True)
    with open(path, "w") as f:
        for i, t in enumerate((a, b)):
            f.write(json.dumps({"key": launch.task_key(t), "name": t.name, "cell": t.cell, "job_id": f"999992_{i}",
                                "array_id": "999992", "stderr": str(logs / f"{i}.err"),
                                "submitted": "2000-01-01T00:00:00+0000"}) + "\n")
    states = {s["key"]: s for s in status.task_states("slurm_ci", results)}
    assert states[a.key]["detail"] == "job 999992_0 ended FAILED (exit 1:0): timed-out too many times"  # was:
    assert states[b.key]["detail"] == "job 999992_1 ended FAILED (exit 1:0): MemoryError: cannot allocate 12 GiB"


def require_cluster() -> str:
    if not cluster_reachable():
        if os.environ.get("PIC_REQUIRE_SLURM") == "1":
            pytest.fail("PIC_REQUIRE_SLURM=1 but no SLURM cluster is reachable (sinfo failed)")
        pytest.skip("no SLURM cluster reachable (sinfo failed); start one: sudo bash slurm/local_cluster/up.sh")
    return subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()[0].rstrip("*")


@pytest.mark.slurm
@pytest.mark.parametrize("flag, words", [("mem_gb=100000", "memory"), ("extra_sbatch={nosuchflag: 1}", "nosuchflag")],
                         ids=["memory-beyond-the-node", "bad-extra-flag"])
def test_the_real_sbatch_refusal_is_one_error_line(tmp_path, flag, words):
    partition = require_cluster()
    argv = [str(write_ablation(tmp_path)), "smoke", "--executor", "slurm", "--results", str(tmp_path / "results"),
            "--no-baselines", "--slurm", f"partition={partition}", "time_min=10", f"folder={tmp_path / 'logs'}", flag]
    proc = subprocess.run([sys.executable, "-m", "pic_bench.run", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "sbatch refused" in errors[0] and words in errors[0].lower(), errors[0]


USR2_ABLATION = """\
name: slurm_usr2
overrides: {run.deterministic: true, optim.epochs: 40}
seeds: [0]
"""


@pytest.mark.slurm
def test_manual_usr2_twice_requeues_once_without_using_up_max_requeues(tmp_path):
    """max_requeues=0: a preemption must not count as a time-out (before: 'timed-out too many times', no row),
    and a second USR2 right after the first must not kill the requeue."""
    partition = require_cluster()
    abl_path = tmp_path / "slurm_usr2.yaml"
    abl_path.write_text(USR2_ABLATION)
    results, ck = tmp_path / "results", tmp_path / "ck"
    argv = [str(abl_path), "smoke", "--executor", "slurm", "--no-baselines", "--results", str(results),
            "--checkpoints", str(ck), "--slurm", f"partition={partition}", "time_min=10", "signal_delay_s=30",
            "mem_gb=1", "checkpoint_every=10", "max_requeues=0", f"folder={tmp_path / 'logs'}"]
    proc = subprocess.run([sys.executable, "-m", "pic_bench.run", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (task,) = run.expand(load_ablation(abl_path), "smoke", {}, str(results), str(ck), baselines=False)
    entry = launch.read_manifest(results, "slurm_usr2", stage="train")[task.key]  # the training task
    evaluation = launch.read_manifest(results, "slurm_usr2")[task.key]
    try:
        wait_until(task.checkpoint.is_file, 150, "the first periodic checkpoint")
        for _ in range(2):
            try:
                subprocess.run(["scancel", "--signal=USR2", entry["job_id"]], timeout=10)
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.3)

        def landed():
            rows, _ = read_rows(results, "slurm_usr2")
            return [r for r in rows if r["status"] == "ok"] or (
                status.task_states("slurm_usr2", results)[0]["state"] == "failed" and ["failed"])
        got = wait_until(landed, 300, "the requeued task's row", poll_s=2)
        log = Path(entry["stderr"]).read_text()
        assert got != ["failed"], status.task_states("slurm_usr2", results)[0]["detail"] + "\n" + log[-3000:]
        assert got[0]["derived"].get("resumed_from_step", 0) > 0
        assert "a preemption (does not count against max_requeues)" in log
    finally:
        subprocess.run(["scancel", entry["job_id"], evaluation["job_id"]], capture_output=True, timeout=30)


def test_data_that_cannot_be_read_at_submission_is_one_error_line(tmp_path, fake_slurm, capsys):
    abl = write_ablation(tmp_path)
    code = run.main([str(abl), "smoke", "--executor", "slurm", "--results", str(tmp_path / "results"),
                     "data.dataset=imagefolder", f"data.root={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err
    assert code == 2 and "error: " in err and "image folder not found" in err and "Traceback" not in err
    assert not fake_slurm.exists()


def _sharded_rank(steps: int) -> dict:
    """One SLURM task (srun rank) of a 2-rank job: the process group from SLURM's / submitit's environment,
    smoke training with sharded input, every image this rank decoded recorded."""
    from pic_bench.pic import distributed
    from pic_bench.config import build
    from pic_bench.data.sources import Source, TensorSet, load_source
    from pic_bench.pic.train import Trainer

    ctx = distributed.init_from_env("cpu")
    try:
        loaded: list[int] = []

        class Counting(TensorSet):
            def load(self, i):
                loaded.append(int(i))
                return super().load(i)

        c = build("smoke", {"run.deterministic": True, "optim.max_steps": steps, "optim.epochs": 2})
        src = load_source(c.data, c.run.seed)
        train = Counting(src.train.images, src.train.labels)
        t = Trainer(c, Source(src.name, train, src.test, src.channels, src.mean, src.std, src.index_digest))
        t.train()
        return {"rank": ctx.rank, "world": ctx.world, "loaded": loaded, "step": t.step,
                "losses": list(t.meters.losses), "w": t.w.clone(), "u": t.u.clone(),
                "model": {k: v.clone() for k, v in t.model.state_dict().items()},
                "ring": t.negatives.ring.clone(), "count": t.negatives.count}
    finally:
        distributed.shutdown()


@pytest.mark.slurm
def test_two_slurm_ranks_each_decode_a_disjoint_half_and_match_one_process(tmp_path):
    """Sharded input, SLURM-launched: srun starts two ranks of one job; each decodes only its half of every
    global batch (B / 2 images per step, the two halves disjoint and together the batch) and both end with the
    parameters of one process (test_distributed.py's tolerance)."""
    import submitit
    from test_distributed import STEPS, assert_close, cfg as dist_cfg

    from pic_bench.pic.train import Trainer

    if not cluster_reachable():
        if os.environ.get("PIC_REQUIRE_SLURM") == "1":
            pytest.fail("PIC_REQUIRE_SLURM=1 but no SLURM cluster is reachable (sinfo failed)")
        pytest.skip("no SLURM cluster reachable (sinfo failed); start one: sudo bash slurm/local_cluster/up.sh")
    partition = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()[0]
    ex = submitit.SlurmExecutor(folder=tmp_path / "%j")
    ex.update_parameters(partition=partition.rstrip("*"), time=10, nodes=1, ntasks_per_node=2, cpus_per_task=1,
                         mem="2048MB", setup=[f"export PYTHONPATH={REPO}:{REPO / 'tests'}"])
    job = ex.submit(_sharded_rank, STEPS)
    try:
        wait_until(job.done, 400, "the 2-rank job")
        ranks = sorted(job.results(), key=lambda r: r["rank"])
    finally:
        if not job.done():
            job.cancel()
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["world"] == 2
    one = Trainer(dist_cfg())
    one.train()
    B = one.cfg.optim.batch_size
    whole = [one.schedule.batch(s, B).tolist() for s in range(STEPS)]
    for r in ranks:
        lo, hi = r["rank"] * B // 2, (r["rank"] + 1) * B // 2
        assert r["loaded"] == sum((w[lo:hi] for w in whole), [])  # its half only, B / 2 per step
        want = {"losses": list(one.meters.losses), "w": one.w, "u": one.u, "step": one.step,
                "model": one.model.state_dict(), "ring": one.negatives.ring, "count": one.negatives.count}
        assert_close(r, want)


def test_the_dry_run_names_each_tasks_array_and_resources_and_submits_nothing(tmp_path, fake_slurm, capsys):
    abl = write_ablation(tmp_path)
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(textwrap.dedent(BIG_CLUSTER))
    argv = [str(abl), "smoke", "--executor", "slurm", "--cluster", str(cluster), "--results",
            str(tmp_path / "results"), "--checkpoints", str(tmp_path / "ck"), "--dry-run"]
    assert run.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    plans = {line.split()[0].split("/")[1] + " " + line.split("{")[1].split("}")[0]: out[i + 1]
             for i, line in enumerate(out) if line.endswith(" todo")}
    train = plans["pic 'pic.correction': False"]
    assert ("SLURM train task (2 nodes x 4 tasks, 4 GPU/node, 8 CPU/task, 200 GB/node, 720 min, partition gpu), "
            "then its eval task (1 node x 1 task, 1 GPU/node, 8 CPU/task, 200 GB/node, 240 min, partition gpu)") in train
    # the smoke preset pins run.device=cpu: its features are planned in float32; with auto, on the node's GPU
    assert "float32" in train
    cc = launch.load_cluster(cluster)
    task = run.expand(load_ablation(abl), "smoke", {"run.device": "auto"}, str(tmp_path / "r"), str(tmp_path / "c"))[0]
    assert launch.eval_device(cc, task) == "cuda"
    assert launch.eval_device(launch.load_cluster(cluster, {"eval": {"gpus_per_node": 0}}), task) is None
    assert "SLURM baseline task (1 node x 1 task, 1 GPU/node" in plans["baseline_random 'pic.correction': True"]
    assert not fake_slurm.exists()  # nothing submitted
    # a cell trained already is planned as its evaluation alone
    (t, *_), = [[t for t in run.expand(load_ablation(abl), "smoke", {}, str(tmp_path / "results"),
                                       str(tmp_path / "ck")) if t.cell == {"pic.correction": False}]]
    t.checkpoint.parent.mkdir(parents=True)
    t.checkpoint.write_bytes(b"final")
    t.trained_marker.write_text("{}")
    assert run.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    i = next(i for i, line in enumerate(out) if t.name in line)
    assert "SLURM eval task only, trained already (1 node x 1 task, 1 GPU/node" in out[i + 1]

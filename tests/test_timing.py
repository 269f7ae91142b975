"""Timings that can be trusted or say why not (issue 20): the measurer's record, the contention verdict, the row.

    nice -n 10 python3 -m pytest tests/test_timing.py -q
"""
from __future__ import annotations

import os
import time

import pytest
import torch

from pic_bench.config import apply, build
from pic_bench.report import timing
from pic_bench.suite.tasks import Task, run_task

KEYS = {"wall_s", "cpu_s", "threads", "cpus", "load_start", "load_end", "gpu_util"}


def quiet(**kw) -> dict:
    seg = {"wall_s": 10.0, "cpu_s": 19.0, "threads": 2, "cpus": 2, "load_start": 1.9, "load_end": 2.1,
           "gpu_util": None, "device": "cpu"}
    return {**seg, **kw}


def test_the_measurer_records_a_busy_loop():
    with timing.measure() as seg:
        x = torch.randn(128, 128)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.3:  # a busy loop: CPU time accrues with wall time
            x = torch.tanh(x @ x)
    assert KEYS <= set(seg)
    assert seg["threads"] == torch.get_num_threads() and seg["cpus"] == len(os.sched_getaffinity(0))
    assert seg["wall_s"] >= 0.3 and seg["cpu_s"] > 0
    assert seg["cpu_s"] <= seg["wall_s"] * seg["cpus"] + 0.05  # a process cannot use more than its cores
    assert seg["gpu_util"] is None and seg["device"] == "cpu"
    assert all(isinstance(seg[k], float) for k in ("load_start", "load_end"))
    # start/stop gives the same record
    m = timing.Measurer().start()
    rec = m.stop()
    assert KEYS <= set(rec) and rec["wall_s"] >= 0


def test_the_measurer_fills_its_record_when_the_block_raises():
    with pytest.raises(ValueError):
        with timing.measure() as seg:
            raise ValueError("x")
    assert KEYS <= set(seg)


def test_contention_verdicts():
    assert timing.segment_contention(quiet()) is None
    # others on the cores: load 6 on 2 cores, 4 beyond the run's own 2 threads
    why = timing.segment_contention(quiet(load_end=6.0))
    assert why and "load 6.0 on 2 cores" in why
    # a one-thread run leaves a core free: one other process is not contention
    assert timing.segment_contention(quiet(threads=1, cpu_s=9.5, load_end=2.0)) is None
    # the process got a fraction of its threads x wall: contended even where the load average lags
    why = timing.segment_contention(quiet(cpu_s=6.0))
    assert why and "CPU time 0.60 x wall" in why
    # on CUDA the CPU share says nothing (the host thread waits on the device)
    assert timing.segment_contention(quiet(cpu_s=6.0, device="cuda")) is None
    assert timing.contention({"derived": {}}) == "not recorded"
    assert timing.contention({"derived": {"timing": {"segments": []}}}) == "not recorded"
    assert timing.contention({"derived": {"timing": {"segments": [quiet()]}}}) is None
    two = timing.contention({"derived": {"timing": {"segments": [quiet(), quiet(load_start=7.0)]}}})
    assert two.startswith("segment 1 of 2: load 7.0")


def test_a_trained_row_carries_its_timing_segment(tmp_path):
    cfg = apply(build("smoke"), {"optim.max_steps": 2, "eval.linear_epochs": 2}, "test")
    row = run_task(Task("timing", "smoke", {}, cfg, results_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "ck")),
                   echo=False)
    segs = row["derived"]["timing"]["segments"]
    assert len(segs) == 1 and KEYS <= set(segs[0]) and segs[0]["wall_s"] > 0
    verdict = timing.contention(row)
    assert verdict is None or verdict.startswith(("load", "CPU time"))  # recorded: never "not recorded"


def test_bench_warns_on_a_contended_segment(capsys):
    assert timing.warn_if_contended(quiet(load_end=9.0), "loader dali") is not None
    err = capsys.readouterr().err
    assert err.startswith("warning: loader dali measured under contention: load 9.0")
    assert timing.warn_if_contended(quiet(), "loader dali") is None
    assert capsys.readouterr().err == ""


def _loaded(monkeypatch):
    """The machine as a busy one looks: a 1-minute load average of 9 on these cores."""
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (9.0, 9.0, 9.0))


def test_the_knn_benchmark_records_its_segment_and_warns_under_load(monkeypatch, capsys):
    from argparse import Namespace

    from pic_bench.bench import eval as bench_eval

    _loaded(monkeypatch)
    row = bench_eval.bench_knn(torch.device("cpu"), torch.float32, "chunked",
                               Namespace(knn_train=300, knn_test=20, dim=16))
    assert KEYS <= set(row["timing"]) and row["timing"]["load_end"] == 9.0
    assert "warning: knn chunked measured under contention: load 9.0" in capsys.readouterr().err


def test_the_loader_benchmark_records_its_segment_and_warns_under_load(monkeypatch, tmp_path, capsys):
    import json

    from pic_bench.bench import loader

    _loaded(monkeypatch)
    assert loader.main(["--images", "8", "--batch", "4", "--steps", "1", "--warmup", "1", "--threads", "0",
                        "--size", "32", "--views", "1", "--loaders", "torchvision", "--out", str(tmp_path)]) == 0
    rows = json.loads(next(tmp_path.glob("loader-*.json")).read_text())
    seg = rows[0]["timing"]
    assert KEYS <= set(seg) and seg["threads"] == 1 and seg["load_start"] == 9.0
    assert "warning: loader torchvision measured under contention: load 9.0" in capsys.readouterr().err


def test_the_scaling_benchmark_records_its_segment_and_warns_under_load(monkeypatch, capsys):
    from pic_bench.bench import scaling

    _loaded(monkeypatch)
    arm = next(iter(scaling.ARMS))
    rows = scaling.head_point(arm, 1000, 64, torch.float32, ("plain",), 2, torch.device("cpu"), B=8, d=16)
    assert rows and all(KEYS <= set(r["timing"]) for r in rows)
    assert "measured under contention: load 9.0" in capsys.readouterr().err


def test_a_suite_scaling_point_carries_its_timing_segment():
    from pic_bench.suite.analysis import scaling_cells

    cfg = apply(build("smoke"), {"data.num_instances": 10000, "pic.K": 0, "pic.correction": False}, "test")
    (_, _, kind, fn), = list(scaling_cells({}, cfg))
    status, metrics, derived, device, error = fn()
    assert (kind, status, error) == ("scaling", "ok", None)
    assert KEYS <= set(derived["timing"]["segments"][0])


def test_a_training_resumed_after_preemption_keeps_both_segments(tmp_path):
    from pic_bench.pic.train import Preempted

    cfg = apply(build("smoke"), {"optim.max_steps": 6, "eval.linear_epochs": 2}, "test")
    task = Task("timing", "smoke", {}, cfg, results_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "ck"))
    calls = {"n": 0}

    def stop_at_3():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Preempted):
        run_task(task, should_stop=stop_at_3, echo=False)
    assert task.timing_file.is_file()
    row = run_task(task, echo=False)
    segs = row["derived"]["timing"]["segments"]
    assert row["derived"]["resumed_from_step"] == 3 and len(segs) == 2 and all(KEYS <= set(x) for x in segs)
    assert not task.timing_file.exists()  # cleaned up with the checkpoint


def test_on_cuda_the_record_has_the_device_utilisation_and_none_when_it_cannot_be_read(monkeypatch):
    # a CPU stand-in for a CUDA device: the availability and the utilisation query are patched
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "utilization", lambda device=None: 55)
    seg = timing.Measurer("cuda:0").start().stop()
    assert seg["gpu_util"] == 55.0 and seg["device"] == "cuda"

    def no_pynvml(device=None):
        raise ModuleNotFoundError("pynvml")

    monkeypatch.setattr(torch.cuda, "utilization", no_pynvml)
    assert timing.Measurer("cuda:0").start().stop()["gpu_util"] is None
    assert timing.Measurer("cpu").start().stop()["gpu_util"] is None


def test_an_evaluation_task_reports_the_training_process_segments(tmp_path):
    import json

    cfg = apply(build("smoke"), {"optim.max_steps": 4, "eval.linear_epochs": 2}, "test")
    task = Task("timing", "smoke", {}, cfg, results_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "ck"))
    run_task(task.at("train"), echo=False)
    marker = json.loads(task.trained_marker.read_text())
    row = run_task(task.at("eval"), echo=False)
    assert row["derived"]["timing"] == marker["derived"]["timing"]  # the training's, not the evaluation's load
    assert len(row["derived"]["timing"]["segments"]) == 1

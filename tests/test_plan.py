"""The dry run's plan per task (issue 12): steps as training derives them, the evaluation's feature memory from the
network's real feature dim, and an evaluation time only from landed rows.

    OMP_NUM_THREADS=1 python -m pytest tests/test_plan.py -q
"""
from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch

from pic_bench.suite import plan as plan_mod
from pic_bench.config import build
from pic_bench.data.sources import load_source
from pic_bench.pic.model import PICModel
from pic_bench.report.results import append_row, make_row
from pic_bench.suite.run import main
from pic_bench.suite.tasks import Task
from pic_bench.pic.train import derive

REPO = Path(__file__).resolve().parent.parent


def task(tmp_path: Path, kind: str = "pic", preset: str = "smoke", seed: int = 0, **over) -> Task:
    cfg = build(preset, {"run.seed": seed, "run.device": "cpu", **over})
    return Task("planned", preset, {}, cfg, kind, str(tmp_path))


def test_steps_are_what_training_derives_from_the_source(tmp_path):
    for over in ({}, {"optim.epochs": 3, "optim.batch_size": 48}, {"data.num_instances": 100}):
        t = task(tmp_path, **over)
        N = load_source(t.cfg.data, 0).N
        p = plan_mod.plan(t, tmp_path)
        assert p["N"] == N and p["steps"] == derive(t.cfg, N)["steps"]
    assert plan_mod.plan(task(tmp_path, "baseline_random"), tmp_path)["steps"] is None  # trains nothing


@pytest.mark.parametrize("preset,over", [("smoke", {}), ("small", {"data.num_instances": 64, "data.test_size": 32}),
                                         ("smoke", {"model.pool": 2, "eval.feature_dtype": "bfloat16"})])
def test_feature_memory_is_images_times_the_backbones_real_dim_times_the_dtype(tmp_path, preset, over):
    t = task(tmp_path, preset=preset, **over)
    src = load_source(t.cfg.data, 0)
    x = src.train.load(0)[None].float()  # (1, C, H, W): one image through the backbone the run builds
    x = torch.nn.functional.interpolate(x, size=t.cfg.data.image_size)
    model = PICModel(t.cfg.model, src.channels).eval()
    with torch.no_grad():
        dim = model.features(x).shape[1]
    size = {"auto": 4, "float32": 4, "bfloat16": 2}[t.cfg.eval.feature_dtype]
    p = plan_mod.plan(t, tmp_path)
    assert p["eval_images"] == len(src.train) + len(src.test)
    assert p["feature_dim"] == dim
    assert p["eval_feature_bytes"] == (len(src.train) + len(src.test)) * dim * size


def test_the_pixel_baselines_memory_is_the_pixel_vector_at_pixels_size(tmp_path):
    t = task(tmp_path, "baseline_pixels", **{"eval.pixels_size": 4})
    src = load_source(t.cfg.data, 0)
    p = plan_mod.plan(t, tmp_path)
    assert p["feature_dim"] == 4 * 4 * src.channels
    assert p["eval_feature_bytes"] == (len(src.train) + len(src.test)) * 4 * 4 * src.channels * 4
    full = plan_mod.plan(task(tmp_path, "baseline_pixels"), tmp_path)  # pixels_size 0: the image size
    assert full["feature_dim"] == task(tmp_path).cfg.data.image_size ** 2 * src.channels


def land(t: Task, wall: float, N: int) -> None:
    row = make_row(t.ablation, t.preset, t.cell, t.cfg, "ok", {"eval_wall_s": wall}, {"N": N, "index_digest": "x"},
                   "cpu", kind=t.kind)
    assert append_row(row, Path(t.results_dir))


def test_the_eval_time_is_unknown_without_rows_and_the_median_per_image_with_them(tmp_path):
    t = task(tmp_path)
    src = load_source(t.cfg.data, 0)
    assert plan_mod.plan(t, tmp_path)["eval_seconds"] is None
    assert "unknown (no landed rows at this preset)" in plan_mod.describe(t, tmp_path)
    # two landed rows of the same ablation and preset, at other seeds and N: 10 s and 45 s of evaluation
    land(task(tmp_path, seed=1), 10.0, 100)
    land(task(tmp_path, seed=2), 45.0, 200)
    land(task(tmp_path, "baseline_pixels", seed=3), 0.1, 100)  # another kind: not the network's cost
    per_image = [10.0 / (100 + len(src.test)), 45.0 / (200 + len(src.test))]
    p = plan_mod.plan(t, tmp_path)
    assert p["eval_rows"] == 2
    assert p["eval_seconds"] == pytest.approx(statistics.median(per_image) * (len(src.train) + len(src.test)))
    assert plan_mod.plan(task(tmp_path, preset="small"), tmp_path)["eval_seconds"] is None  # another preset


def test_units():
    assert plan_mod.fmt_bytes(3 * 2**30) == "3.0 GiB" and plan_mod.fmt_bytes(1536 * 2**10) == "1.5 MiB"
    assert plan_mod.fmt_seconds(7260) == "2 h 1 min" and plan_mod.fmt_seconds(90) == "1 min 30 s"
    assert plan_mod.describe(task(Path("/nonexistent")), "/nonexistent", "1 node x 4 tasks x 4 GPUs, 720 min"
                             ).endswith("on 1 node x 4 tasks x 4 GPUs, 720 min")


def test_the_dry_run_prints_each_tasks_plan_under_its_line(capsys, tmp_path):
    rc = main([str(REPO / "ablations" / "negatives_k.yaml"), "smoke", "pic.K=128", "--seeds", "0", "--results",
               str(tmp_path), "--dry-run", "run.device=cpu"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    t = task(tmp_path, **{"pic.K": 128})
    steps = derive(t.cfg, load_source(t.cfg.data, 0).N)["steps"]
    pic = next(i for i, line in enumerate(out) if "/pic/" in line)
    assert out[pic].endswith("{'pic.K': 128} todo")  # the task line is unchanged
    assert out[pic + 1].startswith("    pic, ") and f"{steps} steps" in out[pic + 1]
    assert "eval time unknown (no landed rows at this preset)" in out[pic + 1]
    assert "on this process (cpu" in out[pic + 1]
    pixels = next(i for i, line in enumerate(out) if "/baseline_pixels/" in line)
    assert out[pixels + 1].startswith("    baseline_pixels, no training")


def test_eval_rate_is_the_plain_median_over_every_row_and_reads_the_rows_once(tmp_path, monkeypatch):
    """The cached per-file rate against the plain computation (row_eval_images over every row), on fresh random
    rows of mixed presets, kinds, splits and test sizes; planning many tasks parses the rows file once."""
    import json
    import random

    from pic_bench.config import to_dict
    from pic_bench.report import results
    from pic_bench.report.results import read_rows, rows_file

    rng = random.Random()
    settings = [{"data.eval_split": s, "data.test_size": n} for s in ("val", "train") for n in (100, 200)]
    lines = []
    for seed in range(60):
        cfg = build(rng.choice(["smoke", "small"]), {"run.seed": seed, **rng.choice(settings)})
        lines.append(json.dumps({
            "ablation": "planned", "preset": rng.choice(["smoke", "small"]), "seed": seed, "config_hash": "h",
            "kind": rng.choice(["pic", "baseline_random"]), "status": rng.choice(["ok", "ok", "failed"]),
            "metrics": {"eval_wall_s": rng.uniform(0.5, 50)} if rng.random() < 0.9 else {},
            "derived": {"N": rng.randint(0, 500)}, "config": to_dict(cfg)}) + "\n")
    path = rows_file(tmp_path, "planned")
    path.parent.mkdir(parents=True)
    path.write_text("".join(lines))
    parsed = []
    real = json.loads
    monkeypatch.setattr(results.json, "loads", lambda *a, **kw: parsed.append(1) or real(*a, **kw))
    tasks = [task(tmp_path, kind, preset, 0, **over) for kind in ("pic", "baseline_random")
             for preset in ("smoke", "small") for over in settings]
    for t in tasks * 3:
        got = plan_mod.eval_rate(tmp_path, "planned", t.preset, t.kind, t.cfg, 77)
        per_image = []
        for row in read_rows(tmp_path, "planned")[0]:  # the plain reference: every row, every time
            wall = row["metrics"].get("eval_wall_s")
            n = plan_mod.row_eval_images(row, t.cfg, 77)
            if row["status"] == "ok" and row["preset"] == t.preset and row["kind"] == t.kind and wall and n:
                per_image.append(wall / n)
        assert got == ((statistics.median(per_image) if per_image else None), len(per_image))
    parsed.clear()
    for t in tasks * 10:
        plan_mod.plan(t, tmp_path)
    assert parsed == []  # before: every plan read every row again (10,000 tasks x 10,000 rows)

"""Every ablation file: its header, its paper preset, and a run at the smoke preset (analyses at a small N).

    nice -n 10 python -m pytest tests/test_ablations.py -q
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from pic_bench.suite import analysis, run
from pic_bench.config import load_ablation
from pic_bench.data.window import make_schedule, visit_distances

REPO = Path(__file__).resolve().parent.parent
FILES = sorted((REPO / "ablations").glob("*.yaml"))
TRAINING = [f for f in FILES if load_ablation(f).kind == "train"]
NO_PAPER_RUNTIME_YET: set[str] = set()  # files whose header gives no paper runtime yet
HEADER = ("Mirrors:", "Paper claim:", "Expected numbers:", "Our interpretation:", "Command:", "Runtime:")


def rows(results: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (results / "rows" / f"{name}.jsonl").read_text().splitlines()]


def header_blocks(path: Path) -> dict[str, str]:
    """The header's fields: each 'Field:' comment line and its indented continuation lines."""
    blocks, current = {}, None
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        field = next((h for h in HEADER if text.startswith(h)), None)
        if field:
            current = field
            blocks[field] = text[len(field):].strip()
        elif current and line.startswith("#   "):
            blocks[current] += " " + text
    return blocks


def test_the_suite_has_every_paper_ablation():
    assert {f.stem for f in FILES} >= {"components", "temperature", "sliding_window", "negatives_k",
                                       "weight_correction", "epochs", "scaling", "visit_distance"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_file_opens_with_the_header(path):
    blocks = header_blocks(path)
    assert set(blocks) == set(HEADER), f"{path.name}: header lacks {set(HEADER) - set(blocks)}"
    assert f"python -m pic_bench.run ablations/{path.name}" in blocks["Command:"]
    presets = ("smoke", "small") if path.stem in NO_PAPER_RUNTIME_YET else ("smoke", "small", "paper")
    assert all(p in blocks["Runtime:"] for p in presets), blocks["Runtime:"]
    expected = blocks["Expected numbers:"]
    assert "not available" in expected or "pic_official_readme.csv" in expected
    # A number in the expected-numbers field must name where it comes from, never memory.
    if re.search(r"\d+\.\d", expected):
        assert any(s in expected for s in ("pic_official_readme.csv", "not a published", "Our derivation")), expected
    assert load_ablation(path).name == path.stem


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: p.stem)
def test_paper_preset_carries_the_paper_setting(path):
    abl = load_ablation(path).for_preset("paper")
    for cell, cfg in abl.resolve("paper"):
        assert cfg.model.arch == "resnet50" and cfg.data.dataset == "imagefolder" and cfg.model.head == "mlp" \
            or "model.head" in cell
        assert cfg.optim.batch_size == 256 and cfg.optim.base_lr == 0.03
        assert cfg.pic.tau == 0.2 or "pic.tau" in cell
        assert cfg.pic.K == 65536 or "pic.K" in cell
        assert (cfg.pic.D, cfg.pic.S) == (131072, 16384) or "pic.D" in cell
        assert cfg.optim.epochs == 200 or "optim.epochs" in cell


@pytest.mark.parametrize("preset", ["smoke", "small", "scale", "paper"])
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_file_passes_the_dry_run_at_every_preset(path, preset, tmp_path, capsys):
    """The one validation before work (ranges, data, K against the preset's batch) accepts every shipped file at
    every preset; the paper preset gets an image folder for data.root. Nothing is written."""
    extra = []
    if preset == "paper":
        import torch

        from pic_bench.data.sources import encode_jpeg

        for split in ("train", "val"):  # the dry run lists the folder (its digest names the cell)
            for c in ("a", "b"):
                (tmp_path / "imagenet" / split / c).mkdir(parents=True)
                (tmp_path / "imagenet" / split / c / "0.jpg").write_bytes(
                    encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8)))
        extra = [f"data.root={tmp_path / 'imagenet'}", "eval.knn_k=2"]  # kNN k at most the bank: 2 images
    rc = run.main([str(path), preset, "--dry-run", "--results", str(tmp_path / "res"), *extra])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "error:" not in cap.err and not (tmp_path / "res").exists()
    assert cap.out.count(" todo") + cap.out.count(" done") >= 1


SCALE_FILES = ("negatives_k", "sliding_window", "weight_correction", "components", "temperature", "epochs")


@pytest.mark.parametrize("name", SCALE_FILES)
def test_the_scale_models_files_name_its_command_and_a_measured_or_estimated_runtime(name):
    blocks = header_blocks(REPO / "ablations" / f"{name}.yaml")
    assert f"python -m pic_bench.run ablations/{name}.yaml scale" in blocks["Command:"]
    runtime = blocks["Runtime:"]
    assert "scale (" in runtime and ("ESTIMATED" in runtime or "MEASURED" in runtime.split("scale (", 1)[1])


def test_the_scale_designs_issue_19():
    """weight_correction: rows leave the window and return in every cell; epochs: lengths on both sides of one sweep
    and in whole sweeps; sliding_window: the baselines to beat are rows of the file; components: the small arms."""
    from pic_bench.data.window import SlidingWindow, regime, window_returns
    from pic_bench.pic.train import derive

    for cell, cfg in load_ablation(REPO / "ablations" / "weight_correction.yaml").for_preset("scale").resolve("scale"):
        N = cfg.data.num_instances
        s = SlidingWindow(N, cfg.pic.D, cfg.pic.S, 0)
        assert 0 < cfg.pic.K <= cfg.pic.D and window_returns(s, derive(cfg, N)["steps"] * cfg.optim.batch_size) > N
    sweeps = []
    for cell, cfg in load_ablation(REPO / "ablations" / "epochs.yaml").for_preset("scale").resolve("scale"):
        N = cfg.data.num_instances
        samples = derive(cfg, N)["steps"] * cfg.optim.batch_size
        sweeps.append(round(regime(SlidingWindow(N, cfg.pic.D, cfg.pic.S, 0), samples)["sweeps"], 6))
    assert min(sweeps) < 1 and 1.0 in sweeps and max(sweeps) > 1 and sum(x == int(x) for x in sweeps) >= 3
    sw = load_ablation(REPO / "ablations" / "sliding_window.yaml").for_preset("scale").resolve("scale")
    assert {c.get("pic.scheduler") for c, _ in sw} >= {"sliding", "epoch", "official"}
    assert all(cfg.eval.baselines and cfg.optim.epochs == 40 for _, cfg in sw)
    comp = load_ablation(REPO / "ablations" / "components.yaml")
    assert [c for c, _ in comp.for_preset("scale").resolve("scale")] == \
        [c for c, _ in comp.for_preset("small").resolve("small")]


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: p.stem)
def test_training_file_runs_at_smoke(path, tmp_path):
    abl = load_ablation(path).for_preset("smoke")
    rc = run.main([str(path), "smoke", "--seeds", "0", "--results", str(tmp_path), "-q"])
    assert rc == 0
    got = rows(tmp_path, abl.name)
    assert all(r["status"] == "ok" for r in got), [r["error"] for r in got if r["status"] != "ok"]
    pic = [r for r in got if r["kind"] == "pic"]
    assert [r["cell"] for r in pic] == abl.cell_overrides()
    assert all(math.isfinite(r["metrics"]["knn_top1"]) and r["metrics"]["step_ms_median"] > 0 for r in pic)
    md = (tmp_path / "tables" / f"{abl.name}.md").read_text()
    assert "## preset `smoke`" in md and "## Published reference" in md
    for cell in abl.cell_overrides():
        label = ", ".join(f"{k}={v}" for k, v in cell.items()) or "default"
        assert f"| {label}" in md


# ----------------------------------------------------------------------------------------------- visit distance
@pytest.mark.parametrize("kind", ["epoch", "sliding", "official"])
def test_revisit_distances_equal_the_reference_walk(kind):
    s = make_schedule(kind, 700, 160, 40, seed=5)
    fast = analysis.revisit_distances(s, 9 * 700 + 13)
    assert np.array_equal(fast, visit_distances(s.positions(0, 9 * 700 + 13), 700))


def test_visit_distance_file_runs_at_a_small_n(tmp_path):
    N, D, S = 2000, 400, 50
    rc = run.main([str(REPO / "ablations" / "visit_distance.yaml"), "smoke", "--seeds", "0", "--results",
                   str(tmp_path), f"data.num_instances={N}", f"pic.D={D}", f"pic.S={S}", "optim.epochs=24"])
    assert rc == 0
    got = {r["config"]["pic"]["scheduler"]: r for r in rows(tmp_path, "visit_distance")}
    assert set(got) == {"epoch", "sliding", "official"}  # the two settings coincide here: one row each
    ep, sl, of = (got[k]["metrics"] for k in ("epoch", "sliding", "official"))
    assert abs(ep["median"] - N) < 0.05 * N and ep["median_over_N"] == pytest.approx(ep["median"] / N)
    assert D <= sl["median"] <= 1.2 * D  # most revisits after about D, not N
    assert abs(sl["median"] - sl["expected_median"]) < 0.05 * D
    assert sl["share_within_2D"] >= 1 - S / D - 0.01
    assert of["median"] > 2 * D  # the official sampler draws fresh random windows: revisits are N-scale
    assert sum(got["sliding"]["derived"]["hist_counts"]) == sl["revisits"]
    md = (tmp_path / "tables" / "visit_distance.md").read_text()
    assert "| sliding | 2,000 | 400 | 50 |" in md
    assert (tmp_path / "tables" / "visit_distance_smoke.png").is_file()


def test_visit_distance_at_imagenet_scale():
    from pic_bench.config import build

    cfg = build("paper", {"data.num_instances": 1_281_167, "pic.scheduler": "sliding", "optim.epochs": 2})
    m, d = analysis.visit_distance_metrics(cfg)
    assert d["samples"] == 2 * 1_281_167 and d["D"] == 131072
    # 2 epochs' worth is shorter than one wrap of the window (8 epochs), so no long gap is seen yet
    assert 0.9 * 131072 <= m["median"] <= 1.2 * 131072 and m["median_over_N"] < 0.12
    assert m["share_within_2D"] > 0.99


# ----------------------------------------------------------------------------------------------------- scaling
def test_n_grid():
    assert analysis.n_grid(1_281_167) == [10_000, 100_000, 1_000_000, 1_281_167]
    assert analysis.n_grid(10**8) == [10**4, 10**5, 10**6, 1_281_167, 10**7, 10**8]
    assert analysis.n_grid(3000) == [3000]


def test_scaling_file_runs_at_a_small_n(tmp_path):
    rc = run.main([str(REPO / "ablations" / "scaling.yaml"), "smoke", "--seeds", "0", "--results", str(tmp_path),
                   "data.num_instances=3000"])
    assert rc == 0
    got = rows(tmp_path, "scaling")
    assert len(got) == 3 and all(r["status"] == "ok" and r["derived"]["N"] == 3000 for r in got)
    by_arm = {(r["config"]["pic"]["K"], r["config"]["pic"]["correction"]): r for r in got}
    assert by_arm[(0, False)]["derived"]["K_effective"] == 3000 and by_arm[(64, True)]["derived"]["K_effective"] == 64
    for r in got:
        m = r["metrics"]
        assert m["head_ms_median"] > 0 and m["step_ms_median"] > 0 and m["head_repeats"] <= 3  # optim.max_steps
        assert m["state_mib"] == pytest.approx(2 * 3000 * 16 * 4 / 2**20)
        if m["peak_mem_kind"] != "unavailable":
            assert m["head_peak_mib"] >= 0
    if analysis.bench_head_point() is not None:  # the kernels issue's benchmark measures the head
        assert all(r["metrics"]["head_path"].startswith("pic_bench.bench.scaling.head_point") for r in got)
        assert all(r["metrics"]["head_floor_ms_median"] > 0 for r in got)
    md = (tmp_path / "tables" / "scaling.md").read_text()
    assert "| recent K=64, correction | 3,000 | 64 |" in md
    assert (tmp_path / "tables" / "scaling_smoke.png").is_file()


def test_scaling_minimal_head_measurement_without_the_benchmark(tmp_path, monkeypatch):
    monkeypatch.setattr(analysis, "bench_head_point", lambda: None)
    assert run.main([str(REPO / "ablations" / "scaling.yaml"), "smoke", "--seeds", "0", "--results", str(tmp_path),
                     "data.num_instances=3000"]) == 0
    got = rows(tmp_path, "scaling")
    assert len(got) == 3 and all(r["status"] == "ok" and r["metrics"]["head_ms_median"] > 0 for r in got)
    assert all(not r["metrics"]["head_path"].startswith("pic_bench.bench") for r in got)
    assert all(r["derived"]["implementation"].startswith("head: pic_bench.analysis;") for r in got)


def test_scaling_skips_points_that_do_not_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(analysis, "memory_available", lambda device: 1024.0)
    rc = run.main([str(REPO / "ablations" / "scaling.yaml"), "smoke", "--seeds", "0", "--results", str(tmp_path),
                   "data.num_instances=3000"])
    assert rc == 0
    got = rows(tmp_path, "scaling")
    assert {r["status"] for r in got} == {"skipped"} and "GiB available" in got[0]["error"]
    assert "## Points not measured" in (tmp_path / "tables" / "scaling.md").read_text()


def test_a_failing_point_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    real = analysis.measure_point

    def flaky(cfg, N, device):
        if cfg.pic.K == 0:
            raise RuntimeError("simulated kernel failure")
        return real(cfg, N, device)

    monkeypatch.setattr(analysis, "measure_point", flaky)
    rc = run.main([str(REPO / "ablations" / "scaling.yaml"), "smoke", "--seeds", "0", "--results", str(tmp_path),
                   "data.num_instances=3000"])
    assert rc == 1
    got = rows(tmp_path, "scaling")
    assert sorted(r["status"] for r in got) == ["failed", "ok", "ok"]
    md = (tmp_path / "tables" / "scaling.md").read_text()
    assert "RuntimeError: simulated kernel failure" in md and "| recent K=64, correction | 3,000 |" in md


def test_an_unknown_analysis_is_refused(tmp_path):
    f = tmp_path / "mystery.yaml"
    f.write_text("name: mystery\nkind: analysis\nseeds: [0]\n")
    assert run.main([str(f), "smoke", "--results", str(tmp_path)]) == 2
    assert run.main([str(f), "smoke", "--results", str(tmp_path), "--dry-run"]) == 2

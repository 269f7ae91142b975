"""validate refuses a paper run its cluster resources cannot carry (issue 18, item 4): a run longer than
(max_requeues + 1) job segments at the stated step time, host memory below what the node's ranks need, a large
checkpoint written every few seconds. The shipped files' own values go through ``launch.validate``: the local
test cluster's defaults refuse the paper run, the paper profile carries it; the dry run prints the budget.

The paper run's data is ImageNet's size (N = 1,281,167 and 50,000 images, 3 channels) without ImageNet: the task
sizes come from ``tasks.data_sizes``, patched here; everything else is the paper preset as shipped.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

pytest.importorskip("submitit")  # the launcher imports it; a bare GPU machine may not carry it

from pic_bench.config import ConfigError, build  # noqa: E402
from pic_bench.suite import launch, plan, tasks as tasks_mod  # noqa: E402
from pic_bench.suite.tasks import Task  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
IMAGENET = (1_281_167, 50_000, 3)


@pytest.fixture
def imagenet_sized(monkeypatch):
    monkeypatch.setattr(tasks_mod, "data_sizes", lambda cfg: IMAGENET)
    monkeypatch.setattr(plan, "data_sizes", lambda cfg: IMAGENET)
    monkeypatch.setattr(launch, "partitions", lambda: ["debug"])
    monkeypatch.setattr(Task, "digest", "d" * 64)  # the listing of a folder that is not there


def paper_task(tmp_path, **overrides) -> Task:
    cfg = build("paper", {"data.root": str(tmp_path), **overrides})
    return Task("negatives_k", "paper", {}, cfg, results_dir=str(tmp_path / "results"))


def cluster(name: str, **overrides) -> tuple[launch.ClusterConfig, dict]:
    origins: dict[str, str] = {}
    return launch.load_cluster(REPO / "slurm" / name, overrides, origins), origins


def test_checkpoint_bytes_of_the_paper_run_are_w_u_network_and_momentum(tmp_path):
    cfg = build("paper", {"data.root": str(tmp_path)})
    N = IMAGENET[0]
    got = plan.checkpoint_bytes(cfg, N, 3)
    wu = 2 * N * 128 * 4  # w and u, float32
    net = 2 * 4 * 27_968_832  # ResNet-50 without fc (23,508,032) + MLP head 2048-2048-128 with BN (4,460,800)
    assert got - wu - net > 0 and got - wu - net < 2**20  # BatchNorm buffers on top, well under 1 MiB
    assert 1.40 < got / 2**30 < 1.46  # the 1.43 GiB


def test_shipped_local_cluster_file_refuses_the_paper_run_naming_the_key(tmp_path, imagenet_sized):
    cc, origins = cluster("cluster.yaml")
    where = str(REPO / "slurm" / "cluster.yaml")
    t = [paper_task(tmp_path)]
    with pytest.raises(ConfigError, match=r"mem_gb=4 is below what negatives_k at the paper preset needs") as e:
        launch.validate(cc, t, tmp_path / "results", where=where, origins=origins)
    assert str(e.value).startswith(where)
    # with memory enough, the 6 segments of 60 min at the paper preset's assumed step time are too few
    cc2, origins2 = cluster("cluster.yaml", mem_gb=200)
    with pytest.raises(ConfigError, match=r"time_min=60 and max_requeues=5 cannot carry negatives_k at the paper "
                                          r"preset: 1000912 steps x 0.1 s/step \(assumed for the paper preset"
                                          r".* needs 30 job segments, but a task gets at most \(max_requeues \+ 1\)"
                                          r" = 6"):
        launch.validate(cc2, t, tmp_path / "results", where=where, origins=origins2)
    # with time enough, its checkpoint_every: 200 writes 1.4 GiB every 20 s
    cc3, origins3 = cluster("cluster.yaml", mem_gb=200, time_min=720)
    with pytest.raises(ConfigError, match=r"command line \(--slurm\)|cluster.yaml: checkpoint_every=200 writes "
                                          r"negatives_k's|checkpoint_every=200 writes") as e:
        launch.validate(cc3, t, tmp_path / "results", where=where, origins=origins3)
    assert re.search(r"cluster\.yaml: checkpoint_every=200 writes negatives_k at the paper preset's 1\.4 GiB "
                     r"checkpoint every 20 s .*set checkpoint_every >= 1800", str(e.value)), str(e.value)


def test_shipped_paper_profile_carries_the_paper_run(tmp_path, imagenet_sized):
    cc, origins = cluster("cluster_paper.yaml")
    t = [paper_task(tmp_path), paper_task(tmp_path, **{"pic.K": 0})]
    launch.validate(cc, t, tmp_path / "results", where="cluster_paper.yaml", origins=origins)
    b, src = launch.task_budget(cc, t[0], tmp_path / "results")
    assert b["steps"] == 1_000_912 and b["segments"] == 3 and b["max_segments"] == 6
    assert b["interval_s"] == 600 and b["checkpoints"] == 166 + 2  # every 10 min, and one per requeue
    assert 20 < b["host_bytes"] / 2**30 < cc.mem_gb
    assert "assumed for the paper preset" in src


def test_step_time_override_and_the_run_config_interval_are_named(tmp_path, imagenet_sized):
    # twice the assumed step time still fits the paper profile's 6 segments; ten times does not
    cc, origins = cluster("cluster_paper.yaml", step_s=0.2)
    launch.validate(cc, [paper_task(tmp_path)], tmp_path / "results", origins=origins)
    cc, origins = cluster("cluster_paper.yaml", step_s=1.0)
    with pytest.raises(ConfigError, match=r"cluster_paper.yaml: time_min=720 and max_requeues=5 cannot "
                                          r"carry .* x 1 s/step \(step_s\)"):
        launch.validate(cc, [paper_task(tmp_path)], tmp_path / "results", origins=origins)
    # checkpoint_every: 0 hands the interval to the run config (run.checkpoint_every = 200): named as such
    cc, origins = cluster("cluster_paper.yaml", checkpoint_every=0)
    with pytest.raises(ConfigError, match=r"^the run config: run.checkpoint_every=200 writes"):
        launch.validate(cc, [paper_task(tmp_path)], tmp_path / "results", origins=origins)


def test_small_checkpoints_and_unknown_step_times_are_not_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "partitions", lambda: ["debug"])
    cfg = build("smoke", {"optim.epochs": 40})
    t = Task("x", "smoke", {}, cfg, results_dir=str(tmp_path / "results"))
    cc = launch.load_cluster(REPO / "slurm" / "cluster.yaml", {"step_s": 0.05})  # a checkpoint every 10 s: tiny
    launch.validate(cc, [t], tmp_path / "results")
    b, _ = launch.task_budget(cc, t, tmp_path / "results")
    assert b["checkpoint_bytes"] < plan.SMALL_CHECKPOINT_BYTES and b["interval_s"] == 10
    assert b["checkpoints"] == b["steps"] // 200
    cc = launch.load_cluster(REPO / "slurm" / "cluster.yaml")  # smoke: no step time at all
    b, src = launch.task_budget(cc, t, tmp_path / "results")
    assert b["step_s"] is None and b["segments"] is None and "no step_s" in src


def test_dry_run_prints_segments_checkpoints_and_bytes(tmp_path, imagenet_sized, capsys, monkeypatch):
    from pic_bench.suite import run

    (tmp_path / "k.yaml").write_text("name: negatives_k\nseeds: [0]\n")
    monkeypatch.setattr(run, "check_data", lambda cfg, src: None)
    code = run.main([str(tmp_path / "k.yaml"), "paper", f"data.root={tmp_path}", "--no-baselines", "--dry-run",
                     "--executor", "slurm", "--cluster", str(REPO / "slurm" / "cluster_paper.yaml"),
                     "--results", str(tmp_path / "results")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert re.search(r"1000912 steps x 0\.1 s/step \(assumed for the paper preset.*\) = 27 h 48 min: 3 segment\(s\)"
                     r" of at most 6, 168 checkpoint\(s\) x 1\.4 GiB = 2\d\d\.\d GiB written", out.out), out.out

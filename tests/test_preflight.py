"""The preflight's CPU subset (what CI runs without a GPU): every CPU check passes, every GPU check is recorded
as not run, and a broken check is named first."""
from __future__ import annotations

import json

import pytest
import torch

from pic_bench.suite import preflight

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the full preflight runs instead "
                                "(slurm/gpu_checks.sh)")


def test_cpu_subset_runs_every_cpu_check_and_names_the_gpu_checks_it_could_not_run(tmp_path, capsys):
    assert preflight.main(["--out", str(tmp_path), "--repeats", "1"]) == 0
    (path,) = tmp_path.glob("preflight-*.json")
    r = json.loads(path.read_text())
    assert path.name == f"preflight-{r['machine']}.json" and r["machine"].startswith("cpu")
    assert r["first_broken"] is None
    c = r["checks"]
    for name in ("all_reduce", "dali_decode", "head", "step", "checkpoint"):
        assert c[name]["status"] == "ok", (name, c[name])
    assert c["all_reduce"]["backend"] == "gloo" and c["all_reduce"]["ranks"] == 2
    assert c["dali_decode"]["decoder"] == "cpu" and c["checkpoint"]["max_rel_diff"] == 0.0
    assert max(c["head"]["rel_err"].values()) <= c["head"]["tol"]
    assert c["step"]["pic_step_ms"] > 0 and c["step"]["backbone_step_ms"] > 0
    gpu_only = [n for n in c if n.startswith("gpu")]
    assert "gpus" in gpu_only and len(gpu_only) >= 6
    assert all(c[n] == {"status": "not run", "why": "no CUDA device"} for n in gpu_only)


def test_a_broken_check_is_named_first_and_fails_the_run(tmp_path, monkeypatch, capsys):
    fast = {"status": "ok"}
    monkeypatch.setattr(preflight, "check_ranks", lambda cuda: (dict(preflight.NO_CUDA), dict(fast)))
    monkeypatch.setattr(preflight, "check_dali", lambda device: dict(fast))
    monkeypatch.setattr(preflight, "check_step", lambda device, repeats: dict(fast))
    monkeypatch.setattr(preflight, "check_checkpoint", lambda device: {"status": "failed", "why": "later one"})

    def broken_head(device, repeats):
        raise RuntimeError("the head is broken")

    monkeypatch.setattr(preflight, "check_head", broken_head)
    assert preflight.main(["--out", str(tmp_path), "--repeats", "1"]) == 1
    r = json.loads(next(tmp_path.glob("preflight-*.json")).read_text())
    assert r["first_broken"] == "head" and "the head is broken" in r["checks"]["head"]["why"]
    assert "FIRST BROKEN: head" in capsys.readouterr().err


def test_slurm_executor_refuses_a_missing_cluster_file_before_submitting(tmp_path, capsys):
    missing = tmp_path / "nosuch.yaml"
    assert preflight.main(["--executor", "slurm", "--cluster", str(missing), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nosuch.yaml" in err
    assert not list(tmp_path.glob("preflight-*.json"))

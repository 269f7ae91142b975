"""The preflight's checks say what they did (issue 18, item 7): the head is checked under the math flags the paper
preset's run sets (and torch's flags are restored), an all-reduce of one rank is "not run" rather than a silent
pass, and the DALI check reports the memory its pipeline took (``memory_mib``)."""
from __future__ import annotations

import pytest
import torch

from pic_bench.config import PRESETS
from pic_bench.pic import train
from pic_bench.suite import preflight


def test_head_check_runs_at_the_paper_precision_and_restores_torchs_flags(monkeypatch):
    calls = []

    before = torch.backends.cuda.matmul.allow_tf32

    def stand_in(precision, device, deterministic):  # set_precision sets torch's flags on CUDA only: recorded
        calls.append(precision)
        torch.backends.cuda.matmul.allow_tf32 = not before  # a flag the run changes, seen by the check
        return precision

    monkeypatch.setattr(train, "set_precision", stand_in)
    out = preflight.check_head(torch.device("cpu"), 1)
    assert calls == [PRESETS["paper"]["run.precision"]] == ["bf16"]
    assert out["status"] == "ok" and out["precision"] == "bf16" and out["tf32_matmul"] is (not before)
    assert torch.backends.cuda.matmul.allow_tf32 == before  # restored: later checks and tests see the same flags


def test_one_rank_all_reduce_is_not_a_pass():
    assert preflight.single_rank({"status": "ok", "ranks": 1}, cuda=True) == {
        "status": "not run", "ranks": 1, "why": "1 GPU: NCCL not exercised"}
    assert preflight.single_rank({"status": "ok", "ranks": 4}, cuda=True)["status"] == "ok"
    assert preflight.single_rank({"status": "failed", "ranks": 1, "why": "x"}, cuda=True)["status"] == "failed"
    _, reduce = preflight.check_ranks(False, world=1)  # a real one-process gloo group
    assert reduce["status"] == "not run" and reduce["why"] == "1 rank: gloo not exercised", reduce


def test_dali_check_reports_its_memory():
    pytest.importorskip("nvidia.dali", reason="the DALI check needs nvidia-dali")
    out = preflight.check_dali(torch.device("cpu"))
    assert out["status"] == "ok", out
    assert isinstance(out["memory_mib"], float) and out["memory_kind"] == "host RSS"

"""Resume correctness: a run stopped and resumed from its checkpoint ends bit-exact with an uninterrupted one
(CPU, run.deterministic=true, smoke preset). This is what makes a SLURM requeue invisible in the results."""
from __future__ import annotations

import pytest
import torch

from pic_bench.config import build
from pic_bench.pic.train import Preempted, Trainer


class Killed(RuntimeError):
    """Stands for SIGKILL: the run dies without saving anything."""


def smoke_cfg(**extra):
    return build("smoke", {"run.deterministic": True, "optim.epochs": 2, **extra})  # 16 steps


def stop_at(calls: set[int], exc: type[Exception] | None = None):
    """should_stop() that says yes (or raises ``exc``) on the given call numbers (one call per step)."""
    n = [0]

    def should_stop() -> bool:
        n[0] += 1
        if n[0] in calls and exc is not None:
            raise exc(f"killed at call {n[0]}")
        return n[0] in calls
    return should_stop


def assert_same_state(a: Trainer, b: Trainer) -> None:
    assert a.step == b.step
    assert a.meters.losses == b.meters.losses  # every step's loss, float for float
    assert torch.equal(a.w, b.w) and torch.equal(a.u, b.u)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for (ka, va), (kb, vb) in zip(a.opt.state_dict()["state"].items(), b.opt.state_dict()["state"].items()):
        assert torch.equal(va["momentum_buffer"], vb["momentum_buffer"]), ka


@pytest.fixture(scope="module")
def uninterrupted():
    t = Trainer(smoke_cfg())
    metrics = t.train()
    return t, metrics


@pytest.mark.parametrize("stops", [{1}, {7}, {3, 9, 14}], ids=["at-start", "mid-window", "three-requeues"])
def test_resume_on_signal_is_bit_exact(uninterrupted, tmp_path, stops):
    """Each stop saves a checkpoint (what submitit's checkpoint signal triggers); a fresh Trainer resumes."""
    ref, ref_metrics = uninterrupted
    ckpt = tmp_path / "run.pt"
    calls, stopped_at = sorted(stops), []
    t = Trainer(smoke_cfg())
    for i, call in enumerate(calls):
        # calls are counted per segment: the n-th should_stop() of this segment is step (previous stop + n - 1)
        local = call - (calls[i - 1] - 1 if i else 0)
        with pytest.raises(Preempted):
            t.train(should_stop=stop_at({local}), checkpoint=ckpt)
        stopped_at.append(t.step)
        t = Trainer(smoke_cfg())
        t.load(ckpt)
        assert t.step == stopped_at[-1]
    metrics = t.train(checkpoint=ckpt)
    assert stopped_at == [c - 1 for c in calls]
    assert_same_state(ref, t)
    assert metrics["final_loss"] == ref_metrics["final_loss"]
    assert t.negatives.count == ref.negatives.count and torch.equal(t.negatives.ring, ref.negatives.ring)


def test_resume_from_periodic_checkpoint_after_a_kill(uninterrupted, tmp_path):
    """A kill without a signal (plain requeue, SIGKILL) loses only the steps since the last periodic checkpoint."""
    ref, _ = uninterrupted
    ckpt = tmp_path / "run.pt"
    cfg = smoke_cfg(**{"run.checkpoint_every": 5})
    t = Trainer(cfg)
    with pytest.raises(Killed):
        t.train(should_stop=stop_at({13}, Killed), checkpoint=ckpt)  # dies before step 12, nothing saved then
    assert t.step == 12
    t = Trainer(cfg)
    t.load(ckpt)
    assert t.step == 10  # the last periodic checkpoint
    t.train(checkpoint=ckpt)
    assert_same_state(ref, t)


def test_checkpoint_holds_every_piece_of_state(tmp_path):
    t = Trainer(smoke_cfg())
    with pytest.raises(Preempted):
        t.train(should_stop=stop_at({4}), checkpoint=tmp_path / "c.pt")
    sd = torch.load(tmp_path / "c.pt", weights_only=False)
    assert sd["step"] == 3
    assert {"model", "opt", "w", "u", "meters", "rng"} <= set(sd)
    assert set(sd["rng"]) >= {"torch", "numpy", "python"}
    assert len(sd["meters"]["losses"]) == 3
    assert torch.equal(sd["w"], t.w) and torch.equal(sd["u"], t.u)


def test_every_run_writes_its_loss_curve_named_in_the_row_and_a_resume_drops_the_steps_it_repeats(tmp_path,
                                                                                                capsys):
    """Every run.log_every steps one line {step, loss, lr, wall_s} to results/curves/<ablation>/...jsonl, the row
    names the file, the lines go to stderr for SLURM logs; a resumed run's curve equals the uninterrupted one's."""
    import json

    from pic_bench.report.results import read_rows
    from pic_bench.suite.tasks import Task, run_task

    cfg = build("smoke", {"run.deterministic": True, "optim.epochs": 2, "optim.max_steps": 12, "eval.linear_epochs": 2})
    ref = Task("curves", "smoke", {}, cfg, results_dir=str(tmp_path / "ref"), checkpoint_dir=str(tmp_path / "ck0"))
    row = run_task(ref)
    assert row["curve"] == f"curves/curves/{ref.stem}.jsonl" and (tmp_path / "ref" / row["curve"]).is_file()
    assert read_rows(tmp_path / "ref", "curves")[0][0]["curve"] == row["curve"]
    lines = [json.loads(x) for x in ref.curve.read_text().splitlines()]
    assert [x["step"] for x in lines] == [5, 10, 12]  # smoke: run.log_every = 5, and the last step
    assert set(lines[0]) == {"step", "loss", "lr", "wall_s"}
    assert all(x["wall_s"] >= 0 and x["lr"] > 0 for x in lines)
    assert "step 5/12 loss" in capsys.readouterr().err
    t = Task("curves", "smoke", {}, cfg, results_dir=str(tmp_path / "res"), checkpoint_dir=str(tmp_path / "ck"))
    with pytest.raises(Preempted):
        run_task(t, should_stop=stop_at({8}))  # stops before step 8 with a checkpoint at step 7
    with open(t.curve, "a") as f:
        f.write('{"step": 7')  # and a line cut by the kill
    row2 = run_task(t)
    assert row2["derived"]["resumed_from_step"] == 7
    got = [json.loads(x) for x in t.curve.read_text().splitlines()]
    assert [(x["step"], x["loss"], x["lr"]) for x in got] == [(x["step"], x["loss"], x["lr"]) for x in lines]


# ---- checkpoints that load anywhere, resume by default, curves (issues 11 and 14; helper C1)

def test_rng_states_restore_when_the_checkpoint_tensors_are_mapped_off_the_cpu(tmp_path):
    """torch.load(map_location=<cuda>) moves every tensor; the RNG states must still restore (as CPU
    ByteTensors). The meta device stands in for CUDA: the RNG part of the checkpoint is loaded with it."""
    t = Trainer(smoke_cfg())
    with pytest.raises(Preempted):
        t.train(should_stop=stop_at({4}), checkpoint=tmp_path / "c.pt")
    saved = torch.get_rng_state().clone()
    on_cpu = torch.load(tmp_path / "c.pt", map_location="cpu", weights_only=False)
    mapped = torch.load(tmp_path / "c.pt", map_location="meta", weights_only=False)
    fresh = Trainer(smoke_cfg())
    torch.manual_seed(12345)  # a different state, which the load must replace
    fresh.load_state_dict({**on_cpu, "rng": mapped["rng"]})
    assert torch.equal(torch.get_rng_state(), saved)
    def to_meta(storage, location):  # what a function map_location does for CUDA, with meta storage
        return torch.UntypedStorage(storage.nbytes(), device="meta")

    fn_mapped = torch.load(tmp_path / "c.pt", map_location=to_meta, weights_only=False)
    torch.manual_seed(12345)
    fresh.load_state_dict({**on_cpu, "rng": fn_mapped["rng"]})
    assert torch.equal(torch.get_rng_state(), saved)


def test_resume_is_on_by_default_and_announced(tmp_path, capsys):
    """A run killed without a signal resumes from the periodic checkpoint that the default config writes."""
    from pic_bench.config import Config

    every = Config().run.checkpoint_every
    assert every > 0
    cfg = build("smoke", {"run.deterministic": True, "optim.max_steps": every + 10, "optim.epochs": 100})
    ckpt = tmp_path / "run.pt"
    t = Trainer(cfg)
    with pytest.raises(Killed):
        t.train(should_stop=stop_at({every + 6}, Killed), checkpoint=ckpt)
    assert ckpt.is_file()
    t = Trainer(cfg)
    capsys.readouterr()
    t.load(ckpt)
    assert t.step == every
    assert f"resuming from step {every} of {every + 10}: {ckpt}" in capsys.readouterr().err


def _curve(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def test_curve_has_a_line_every_log_every_steps_and_continues_on_resume(uninterrupted, tmp_path):
    ref, _ = uninterrupted  # 16 steps, log_every 5 (smoke preset)
    full = tmp_path / "full.jsonl"
    t = Trainer(smoke_cfg())
    t.train(curve=full)
    lines = _curve(full)
    assert [r["step"] for r in lines] == [5, 10, 15, 16]
    assert set(lines[0]) == {"step", "loss", "lr", "wall_s"}
    losses = ref.meters.losses
    for r, (a, b) in zip(lines, [(0, 5), (5, 10), (10, 15), (15, 16)]):
        assert r["loss"] == pytest.approx(sum(losses[a:b]) / (b - a), rel=1e-12)  # mean over the log window
        assert r["lr"] == pytest.approx(float(t.lr[r["step"] - 1]))
    assert all(x["wall_s"] <= y["wall_s"] for x, y in zip(lines, lines[1:]))
    # killed after the line of step 15 but with its last checkpoint at step 12: the resumed run drops that
    # line and continues the file, ending with the uninterrupted run's steps and losses
    cfg = smoke_cfg(**{"run.checkpoint_every": 12})
    ckpt, part = tmp_path / "run.pt", tmp_path / "part.jsonl"
    t = Trainer(cfg)
    with pytest.raises(Killed):
        t.train(should_stop=stop_at({16}, Killed), checkpoint=ckpt, curve=part)
    assert [r["step"] for r in _curve(part)] == [5, 10, 15]
    t = Trainer(cfg)
    t.load(ckpt)
    assert t.step == 12
    t.train(checkpoint=ckpt, curve=part)
    assert [(r["step"], r["loss"], r["lr"]) for r in _curve(part)] == [(r["step"], r["loss"], r["lr"]) for r in lines]


def test_tensorboard_writer_is_optional(tmp_path, capsys):
    """run.tensorboard=true writes beside the curve where tensorboard is installed, and says why not elsewhere;
    the curve file is written either way."""
    import importlib.util

    t = Trainer(smoke_cfg(**{"run.tensorboard": True, "optim.max_steps": 5}))
    t.train(curve=tmp_path / "c.jsonl")
    assert [r["step"] for r in _curve(tmp_path / "c.jsonl")] == [5]
    if importlib.util.find_spec("tensorboard") is None:
        assert "run.tensorboard: not written" in capsys.readouterr().err
    else:
        assert (tmp_path / "c.tb").is_dir()

import json
import math

import numpy as np
import pytest
import torch

from pic_bench.config import apply, build
from pic_bench.data.sources import DatasetError, BadImageError, encode_jpeg, load_source
from pic_bench.report.results import read_rows
from pic_bench.suite.run import Task, main, run_task
from pic_bench.pic.train import NonFiniteLoss, Trainer, lr_schedule


def smoke(**kw):
    return apply(build("smoke"), kw, "test")


def test_lr_schedule_is_indexed_by_step_with_warmup_and_cosine():
    s = lr_schedule(1.0, 100, 10)
    assert len(s) == 100 and s[9] == pytest.approx(1.0) and s[0] == pytest.approx(0.1)
    assert np.all(np.diff(s[10:]) <= 1e-12) and s[-1] < 0.01


def test_lr_schedule_with_a_floor_ends_at_its_fraction_of_the_peak():
    plain, floored = lr_schedule(2.0, 100, 10), lr_schedule(2.0, 100, 10, 0.1)
    assert np.array_equal(floored[:10], plain[:10])  # the warm-up is untouched
    # the cosine part is the plain one squeezed into [0.2, 2.0]: floor + (1 - ratio) * plain
    assert np.allclose(floored[10:], 0.2 + 0.9 * plain[10:])
    assert floored[-1] == pytest.approx(0.2, abs=2e-3) and np.all(np.diff(floored[10:]) <= 1e-12)


def test_final_lr_ratio_reaches_the_trainer():
    t, plain = Trainer(smoke(**{"optim.final_lr_ratio": 0.5})), Trainer(smoke())
    d = t.derived
    assert np.array_equal(t.lr, lr_schedule(d["lr"], d["steps"], d["warmup_steps"], 0.5))
    assert np.array_equal(plain.lr, lr_schedule(d["lr"], d["steps"], d["warmup_steps"]))
    assert t.lr.min() >= 0.5 * d["lr"] > plain.lr[-1]


def test_loss_goes_down_in_20_steps():
    cfg = smoke(**{"optim.max_steps": 20, "optim.epochs": 10.0, "pic.K": 0, "data.aug": "weak",
                   "optim.base_lr": 0.5})
    t = Trainer(cfg)
    t.train()
    losses = t.meters.losses
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1


def _one_step(cfg, fill_steps):
    """Runs fill_steps steps, then returns w, u and the backbone after one more step."""
    t = Trainer(cfg)
    it = t.loader.iterate(0, fill_steps + 1)
    for _ in range(fill_steps + 1):
        t.train_step(next(it))
        t.step += 1
    return t.w.clone(), t.u.clone(), [p.detach().clone() for p in t.model.parameters()]


@pytest.mark.parametrize("correction", [True, False])
def test_K_equal_N_sampled_path_equals_full_path_once_every_instance_is_recent(correction):
    # Epoch order, N = 64 instances, B = 16: at the 4th step the last 64 visits are every instance once, so the
    # recent-K softmax runs over all N rows and must give the same step as the full softmax. Before that step
    # both runs differ (the ring is not full), so compare from the same state: run 3 steps on the full path, copy.
    base = smoke(**{"data.num_instances": 64, "optim.batch_size": 16, "pic.scheduler": "epoch",
                    "pic.correction": correction, "optim.epochs": 4.0, "run.deterministic": True})
    full = Trainer(apply(base, {"pic.K": 0}, "t"))
    samp = Trainer(apply(base, {"pic.K": 64}, "t"))
    it_f, it_s = full.loader.iterate(0, 4), samp.loader.iterate(0, 4)
    for _ in range(3):
        b = next(it_f)
        next(it_s)
        full.train_step(b)
        full.step += 1
    samp.load_state_dict(full.state_dict())  # same state; the ring is refilled from the scheduler
    bf, bs = next(it_f), next(it_s)
    assert torch.equal(bf.index, bs.index)
    lf, ls = float(full.train_step(bf)), float(samp.train_step(bs))
    assert ls == pytest.approx(lf, rel=1e-6)
    assert torch.allclose(full.w, samp.w, atol=1e-6) and torch.allclose(full.u, samp.u, atol=1e-6)


def test_correction_changes_training_only_through_unsampled_rows():
    base = smoke(**{"optim.max_steps": 6, "pic.K": 64, "optim.weight_decay": 1e-2})
    on, off = Trainer(apply(base, {"pic.correction": True}, "t")), Trainer(apply(base, {"pic.correction": False}, "t"))
    w0 = on.w.clone()
    on.train()
    off.train()
    visited = np.unique(on.schedule.positions(0, 6 * base.optim.batch_size))
    never = np.setdiff1d(np.arange(on.N), visited)
    assert len(never) > 0
    assert torch.equal(on.w[never], w0[never])  # with correction, never-sampled rows never move
    assert not torch.equal(off.w[never], w0[never])  # plain SGD decays them


def test_tiny_end_to_end_run_writes_a_valid_row(tmp_path):
    rc = main(["ablations/negatives_k.yaml", "smoke", "--seeds", "0", "--results", str(tmp_path),
               "--checkpoints", str(tmp_path / "ck"), "-q", "optim.max_steps=4"])
    assert rc == 0
    rows, problems = read_rows(tmp_path, "negatives_k")
    assert not problems
    pic = [r for r in rows if r["kind"] == "pic"]
    assert len(pic) == 5 and {r["cell"]["pic.K"] for r in pic} == {128, 512, 2048, 0}  # + the positions arm at 2048
    for r in pic:
        m = r["metrics"]
        assert r["status"] == "ok" and 0 <= m["knn_top1"] <= 100 and 0 <= m["linear_top1"] <= 100
        assert m["step_ms_median"] > 0 and m["peak_mem_mib"] > 0 and math.isfinite(m["final_loss"])
        assert r["derived"]["loader"] == "torchvision" and r["derived"]["steps"] == 4
        assert r["config"]["pic"]["K"] == r["cell"]["pic.K"] and "torch" in r["versions"]
        assert "git_sha" in r and "device" in r and len(r["config_hash"]) == 12
    kinds = {r["kind"] for r in rows}
    assert {"baseline_random", "baseline_pixels"} <= kinds
    assert (tmp_path / "tables" / "negatives_k.md").is_file()
    # running the same command again skips every cell and writes no duplicate
    n = len(rows)
    assert main(["ablations/negatives_k.yaml", "smoke", "--seeds", "0", "--results", str(tmp_path), "-q",
                 "--checkpoints", str(tmp_path / "ck"), "optim.max_steps=4"]) == 0
    assert len(read_rows(tmp_path, "negatives_k")[0]) == n


def test_non_finite_loss_stops_the_run_and_writes_a_failed_row(tmp_path):
    cfg = smoke(**{"optim.base_lr": 1e30, "pic.softmax": "plain", "optim.max_steps": 20})
    task = Task("nan_test", "smoke", {"optim.base_lr": 1e30}, cfg, results_dir=str(tmp_path),
                checkpoint_dir=str(tmp_path / "ck"))
    with pytest.raises(NonFiniteLoss, match="non-finite loss"):
        run_task(task)
    rows, _ = read_rows(tmp_path, "nan_test")
    assert len(rows) == 1 and rows[0]["status"] == "failed" and "non-finite" in rows[0]["error"]
    assert list((tmp_path / "ck").rglob("*-failed.pt"))


def test_run_refuses_a_bad_key_with_the_file_name(tmp_path, capsys):
    f = tmp_path / "typo.yaml"
    f.write_text("name: typo\nsweep: {pic.KK: [1]}\n")
    assert main([str(f), "smoke", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "typo.yaml" in err and "pic.KK" in err
    assert main(["ablations/negatives_k.yaml", "smoke", "pic.tau=hot", "--results", str(tmp_path)]) == 2
    assert "pic.tau" in capsys.readouterr().err


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    cfg = apply(build("small"), {"data.root": str(tmp_path)}, "t")
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_source(cfg.data)


def test_fashion_mnist_loads_the_real_files():
    cfg = apply(build("small"), {"data.num_instances": 500, "data.test_size": 100}, "t")
    s = load_source(cfg.data)
    assert s.N == 500 and len(s.test) == 100 and s.train.load(0).shape == (1, 28, 28)
    assert len(np.unique(s.train.labels)) == 10


def _folder(tmp_path, n=12):
    src = load_source(build("smoke").data)
    for i in range(n):
        d = tmp_path / "train" / f"c{src.train.labels[i]}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"img{i:03d}.jpg").write_bytes(encode_jpeg(src.train.images[i].expand(3, -1, -1).contiguous()))
    return tmp_path


def test_unreadable_image_names_the_file(tmp_path):
    root = _folder(tmp_path)
    bad = sorted((root / "train").rglob("*.jpg"))[3]
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG
    cfg = apply(build("smoke"), {"data.dataset": "imagefolder", "data.root": str(root), "data.num_instances": 0,
                                 "data.eval_split": "train",
                                 "data.loader": "torchvision", "optim.batch_size": 4, "pic.K": 8, "pic.D": 12,
                                 "pic.S": 4, "optim.max_steps": 3, "data.image_size": 8}, "t")
    t = Trainer(cfg)
    with pytest.raises(BadImageError, match=bad.name):
        t.train()


def test_rows_argv_names_no_machine_folder(tmp_path):
    from pic_bench.report.results import portable_argv

    root = tmp_path / "repo"
    (root / "pic_bench").mkdir(parents=True)
    argv = [str(root / "pic_bench" / "run.py"), "ablations/negatives_k.yaml", "small", "--results",
            "/data/someone/results", f"--checkpoints={tmp_path}/ck", "data.root=/mnt/imagenet/train", "pic.K=512",
            str(root / "ablations" / "x.yaml")]
    assert portable_argv(argv, root) == [
        "pic_bench/run.py", "ablations/negatives_k.yaml", "small", "--results", ".../results",
        "--checkpoints=.../ck", "data.root=.../train", "pic.K=512", "ablations/x.yaml"]


# ---- the step loop on a GPU's terms (issue 11; helper C1): no per-step host sync, mixed precision, time budget

class _Preloaded:
    """The loader's batches made beforehand, so only the training loop's own host syncs are counted."""

    name = "preloaded"

    def __init__(self, batches):
        self.batches = batches

    def iterate(self, start, stop):
        return iter(self.batches[start:stop])


SYNCS = [(torch.Tensor, "__float__"), (torch.Tensor, "__bool__"), (torch.Tensor, "item"), (torch.Tensor, "tolist"),
         (torch.Tensor, "cpu"), (torch.Tensor, "numpy"), (torch.Tensor, "__int__"), (torch.cuda, "synchronize")]


@pytest.mark.parametrize("fast_head", [True, False])
def test_step_loop_syncs_with_the_host_only_at_log_steps(monkeypatch, fast_head):
    cfg = smoke(**{"optim.max_steps": 20, "optim.epochs": 10.0, "pic.K": 0, "run.log_every": 10,
                   "pic.fast_head": fast_head})
    t = Trainer(cfg)
    t.loader = _Preloaded(list(t.loader.iterate(0, 20)))
    at_step: list[int] = []
    for owner, name in SYNCS:
        real = getattr(owner, name)

        def counted(*a, real=real, **k):
            at_step.append(t.step)
            return real(*a, **k)

        monkeypatch.setattr(owner, name, counted)
    t.train()
    monkeypatch.undo()
    assert t.step == 20 and len(t.meters.losses) == 20
    assert at_step and set(at_step) <= {10, 20}, sorted(set(at_step))  # the steps at which the loss is read


def test_bf16_trains_on_the_cpu_and_differs_from_fp32():
    base = {"optim.max_steps": 20, "optim.epochs": 10.0, "pic.K": 0, "data.aug": "weak", "optim.base_lr": 0.5}
    bf16, fp32 = Trainer(smoke(**base, **{"run.precision": "bf16"})), Trainer(smoke(**base))
    m = bf16.train()
    fp32.train()
    losses = bf16.meters.losses
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1
    assert losses != fp32.meters.losses
    assert bf16.w.dtype == torch.float32  # the classifier's storage is pic.storage's, its math float32
    assert bf16.derived["precision"] == "bf16" and fp32.derived["precision"] == "fp32"
    assert m["final_loss"] == pytest.approx(np.mean(losses[-1:]))


def test_precision_enters_the_config_hash_except_at_fp32():
    from pic_bench.config import config_hash

    base = smoke()
    assert config_hash(smoke(**{"run.precision": "fp32"})) == config_hash(base)
    assert config_hash(smoke(**{"run.precision": "bf16"})) != config_hash(base)
    assert config_hash(smoke(**{"run.precision": "tf32"})) != config_hash(smoke(**{"run.precision": "bf16"}))
    assert build("paper").run.precision == "bf16" and build("paper").run.checkpoint_minutes == 30


def test_checkpoints_on_a_time_budget_are_taken_at_log_steps(monkeypatch, tmp_path):
    """run.checkpoint_minutes: a save at the first log step at least that long after the last save (a fake
    clock advances 20 s per step, so 1 minute is 3 steps: log steps 4, 8, 12, 16, 20 with log_every 4)."""
    cfg = smoke(**{"optim.max_steps": 20, "optim.epochs": 10.0, "run.log_every": 4, "run.checkpoint_every": 0,
                   "run.checkpoint_minutes": 1.0})
    t = Trainer(cfg)
    now = [0.0]
    saved = []
    monkeypatch.setattr(t, "clock", lambda: now[0])
    real_save = t.save
    monkeypatch.setattr(t, "save", lambda path, **k: (saved.append(t.step), real_save(path, **k)))
    real_step = t.train_step

    def step(batch):
        now[0] += 20.0
        return real_step(batch)

    monkeypatch.setattr(t, "train_step", step)
    t.train(checkpoint=tmp_path / "c.pt")
    assert saved == [4, 8, 12, 16]  # none at the end: the row follows (and its task deletes the checkpoint)


def test_row_peak_memory_is_the_training_loops_not_evaluations(tmp_path, monkeypatch):
    from pic_bench.eval import evaluate
    from pic_bench.pic import train

    evaluated = []
    real_eval = evaluate.evaluate_run
    monkeypatch.setattr(evaluate, "evaluate_run", lambda *a: (evaluated.append(1), real_eval(*a))[1])
    monkeypatch.setattr(train, "peak_memory_mib", lambda device: 999.0 if evaluated else 100.0)
    cfg = smoke(**{"optim.max_steps": 3})
    row = run_task(Task("peak_test", "smoke", {}, cfg, results_dir=str(tmp_path), checkpoint_dir=str(tmp_path)))
    assert evaluated
    assert row["metrics"]["peak_mem_mib"] == 100.0 and row["metrics"]["peak_mem_mib_ranks"] == [100.0]
    assert row["metrics"]["peak_mem_kind"] == "cpu_peak_rss" and row["metrics"]["dali_pool_mib"] is None

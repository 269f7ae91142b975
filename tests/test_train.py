import json
import math

import numpy as np
import pytest
import torch

from pic_bench.config import apply, build
from pic_bench.data.sources import DatasetError, BadImageError, encode_jpeg, load_source
from pic_bench.results import read_rows
from pic_bench.run import Task, main, run_task
from pic_bench.train import NonFiniteLoss, Trainer, lr_schedule


def smoke(**kw):
    return apply(build("smoke"), kw, "test")


def test_lr_schedule_is_indexed_by_step_with_warmup_and_cosine():
    s = lr_schedule(1.0, 100, 10)
    assert len(s) == 100 and s[9] == pytest.approx(1.0) and s[0] == pytest.approx(0.1)
    assert np.all(np.diff(s[10:]) <= 1e-12) and s[-1] < 0.01


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
    lf, ls = full.train_step(bf), samp.train_step(bs)
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
                                 "data.loader": "torchvision", "optim.batch_size": 4, "pic.K": 8, "pic.D": 12,
                                 "pic.S": 4, "optim.max_steps": 3, "data.image_size": 8}, "t")
    t = Trainer(cfg)
    with pytest.raises(BadImageError, match=bad.name):
        t.train()


def test_rows_argv_names_no_machine_folder(tmp_path):
    from pic_bench.results import portable_argv

    root = tmp_path / "repo"
    (root / "pic_bench").mkdir(parents=True)
    argv = [str(root / "pic_bench" / "run.py"), "ablations/negatives_k.yaml", "small", "--results",
            "/data/someone/results", f"--checkpoints={tmp_path}/ck", "data.root=/mnt/imagenet/train", "pic.K=512",
            str(root / "ablations" / "x.yaml")]
    assert portable_argv(argv, root) == [
        "pic_bench/run.py", "ablations/negatives_k.yaml", "small", "--results", ".../results",
        "--checkpoints=.../ck", "data.root=.../train", "pic.K=512", "ablations/x.yaml"]

"""Evaluation: the official linear protocol against a plain reference, no silent train-set evaluation, every
backbone kept and reloadable, the chunked reduced-precision kNN against the float32 reference, baselines that fit.

kNN tolerance (bfloat16 features, float32 similarities): on random clustered inputs the top-1 of the chunked path
is within 1 percentage point of the float32 reference (bfloat16 keeps 8 bits of mantissa, so similarities move by
about 1e-2 and only near-tied votes change); with float32 features it equals the reference exactly.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ranks import free_port, init_gloo, run_ranks
from torchvision.transforms import v2 as T

from pic_bench.eval import evaluate as E
from pic_bench.config import ADDED_KEYS, PRESETS, apply, build
from pic_bench.data.sources import DatasetError, encode_jpeg, load_source
from pic_bench.pic.model import PICModel

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200), (200, 40, 200)]  # classes
ROOT = Path(__file__).resolve().parent.parent


def write_split(root: Path, split: str, n: int, side: int = 14, seed: int = 0) -> None:
    """root/split/c<k>/<i>.jpg: class k = a colour plus heavy pixel noise."""
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        c = i % len(COLOURS)
        base = torch.tensor(COLOURS[c], dtype=torch.float32)[:, None, None].expand(3, side, side)
        img = (base + torch.randn(3, side, side, generator=g) * 50).clamp(0, 255).to(torch.uint8)
        p = root / split / f"c{c}" / f"{i:03d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(encode_jpeg(img))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_folder")
    write_split(root, "train", 72, seed=1)
    write_split(root, "val", 36, seed=2)
    return root


def folder_cfg(root: Path, **kw):
    return apply(build("smoke"), {"data.dataset": "imagefolder", "data.root": str(root), "data.num_instances": 0,
                                  "data.test_size": 0, "data.image_size": 12, **kw}, "test")


# ---- 1. linear_sgd: the official protocol, equal to a plain reference

def reference_linear_sgd(fn, feat_dim, train, test, size, mean, std, ev, seed):
    """The same protocol written plainly: one process, one image at a time, the schedule written out."""
    C = int(max(train.labels.max(), test.labels.max())) + 1
    torch.manual_seed(seed + 31)
    fc = torch.nn.Linear(feat_dim, C)
    opt = torch.optim.SGD(fc.parameters(), lr=ev.sgd_lr, momentum=ev.sgd_momentum, weight_decay=ev.sgd_weight_decay)
    aug = T.Compose([T.RandomResizedCrop(size, scale=(ev.sgd_crop_min, 1.0), antialias=True),
                     T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])
    n = len(train)
    B = min(ev.sgd_batch, n)
    per_epoch = n // B
    total = ev.sgd_epochs * per_epoch
    warm = int(round(ev.sgd_warmup_epochs * per_epoch))
    step = 0
    for epoch in range(ev.sgd_epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(E.sample_seed(seed, epoch, -1))).tolist()
        for b in range(per_epoch):
            ids = perm[b * B:(b + 1) * B]
            if step < warm:
                lr = ev.sgd_lr / 100 + (ev.sgd_lr - ev.sgd_lr / 100) * step / warm
            else:
                lr = 0.5 * ev.sgd_lr * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
            xs = []
            for i in ids:
                torch.manual_seed(E.sample_seed(seed, epoch, i))
                xs.append(aug(train.load(i)))
            with torch.no_grad():
                f = fn(torch.stack(xs))
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad()
            F.cross_entropy(fc(f), torch.as_tensor(train.labels[ids])).backward()
            opt.step()
            step += 1
    val = T.Compose([T.Resize(round(size * 256 / 224), antialias=True), T.CenterCrop(size),
                     T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])
    with torch.no_grad():
        f = fn(torch.stack([val(test.load(i)) for i in range(len(test))]))
        top5 = fc(f).topk(min(5, C), dim=1).indices
    y = torch.as_tensor(test.labels)
    return 100.0 * float((top5[:, 0] == y).float().mean()), 100.0 * float((top5 == y[:, None]).any(1).float().mean())


def test_linear_sgd_is_the_official_protocol_and_equals_a_plain_reference(folder):
    # raw pixels (4 x 4 per channel) as the frozen feature map: linearly separable colours, well above chance
    cfg = folder_cfg(folder, **{"eval.protocol": "linear_sgd", "eval.sgd_epochs": 6, "eval.sgd_batch": 16,
                                "eval.sgd_warmup_epochs": 1, "eval.pixels_size": 4})
    src = load_source(cfg.data)
    got = E.evaluate_pixels(src, 12, cfg.eval, seed=3, workers=2)
    fn, d = E.pixels_fn(12, 4)
    with torch.random.fork_rng(devices=[]):
        ref = reference_linear_sgd(fn, 3 * d, src.train, src.test, 12, src.mean, src.std, cfg.eval, seed=3)
    assert (got["linear_top1"], got["linear_top5"]) == ref  # same seed, same numbers
    assert got["linear_top1"] >= 60.0 and "knn_top1" in got  # 6 classes: chance is 16.7%


def test_linear_sgd_on_the_smoke_network_equals_the_reference(folder):
    cfg = folder_cfg(folder, **{"eval.protocol": "linear_sgd", "eval.sgd_epochs": 3, "eval.sgd_batch": 24,
                                "eval.sgd_warmup_epochs": 1})
    src = load_source(cfg.data)
    torch.manual_seed(0)
    model = PICModel(cfg.model, src.channels).eval()
    got = E.linear_sgd(model.features, model.feat_dim, src.train, src.test, 12, src.mean, src.std, cfg.eval, "cpu",
                       seed=5, workers=2)
    with torch.random.fork_rng(devices=[]):
        ref = reference_linear_sgd(model.features, model.feat_dim, src.train, src.test, 12, src.mean, src.std,
                                   cfg.eval, seed=5)
    assert (got["linear_top1"], got["linear_top5"]) == ref


def test_linear_sgd_defaults_are_the_official_values_and_the_paper_preset_uses_it():
    ev = build("paper").eval
    assert ev.protocol == "linear_sgd" and ev.pixels_size == 32
    assert (ev.sgd_epochs, ev.sgd_batch, ev.sgd_lr, ev.sgd_momentum, ev.sgd_weight_decay, ev.sgd_warmup_epochs,
            ev.sgd_crop_min) == (100, 256, 30.0, 0.9, 0.0, 5.0, 0.08)
    for p in ("small", "smoke"):
        assert build(p).eval.protocol == "probe"
    assert ADDED_KEYS["eval.protocol"] == "probe" and ADDED_KEYS["eval.pixels_size"] == 0
    assert ADDED_KEYS["data.eval_split"] == "val"
    lr = E.sgd_lr_schedule(30.0, 100, 10, 5)
    assert len(lr) == 1000 and lr[0] == pytest.approx(0.3) and lr[50] == pytest.approx(30.0)
    assert lr[-1] < 1e-3 and np.all(np.diff(lr[50:]) <= 0)
    # validation at 224 px: resize 256, centre crop 224
    vt = E.linear_val_transform(224, (0.5,) * 3, (0.5,) * 3)
    assert vt.transforms[0].size == [256] and tuple(vt.transforms[1].size) == (224, 224)


def test_linear_sgd_does_not_depend_on_the_number_of_workers(folder):
    cfg = folder_cfg(folder, **{"eval.protocol": "linear_sgd", "eval.sgd_epochs": 2, "eval.sgd_batch": 32})
    src = load_source(cfg.data)
    fn, d = E.pixels_fn(12, 4)
    runs = [E.linear_sgd(fn, 3 * d, src.train, src.test, 12, src.mean, src.std, cfg.eval, "cpu", 0, workers=w)
            for w in (0, 2)]
    assert runs[0] == runs[1]


# ---- 2. no silent train-set evaluation

def test_folder_without_val_is_refused_unless_asked_for(tmp_path):
    write_split(tmp_path, "train", 8)
    with pytest.raises(DatasetError, match=r"no val/ split.*data\.eval_split=train"):
        load_source(folder_cfg(tmp_path).data)
    src = load_source(folder_cfg(tmp_path, **{"data.eval_split": "train"}).data)
    assert src.eval_split == "train" and src.test.files == src.train.files


def test_folder_with_val_says_so(folder):
    src = load_source(folder_cfg(folder).data)
    assert src.eval_split == "val" and len(src.test) == 36 and not set(src.test.files) & set(src.train.files)
    assert load_source(build("smoke").data).eval_split == "test"


def test_missing_val_is_one_error_line_exit_2_and_writes_no_row(tmp_path):
    write_split(tmp_path / "data", "train", 8)
    res = tmp_path / "results"
    p = subprocess.run([sys.executable, "-m", "pic_bench.run", "ablations/negatives_k.yaml", "smoke",
                        "--no-baselines", "--results", str(res), "--checkpoints", str(tmp_path / "ck"),
                        "--seeds", "0", "data.dataset=imagefolder", f"data.root={tmp_path / 'data'}",
                        "data.num_instances=0"],
                       cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                       timeout=300)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2, p.stderr[-2000:]
    assert len(errors) == 1 and "no val/ split" in errors[0] and "data.eval_split=train" in errors[0]
    assert not list(res.rglob("*.jsonl"))


# ---- 3. every trained backbone kept

def smoke_task(tmp_path, **kw):
    from pic_bench.suite.run import Task

    cfg = apply(build("smoke"), {"optim.max_steps": 6, **kw}, "test")
    return Task("evaltest", "smoke", {}, cfg, "pic", str(tmp_path / "results"), str(tmp_path / "ck"))


def test_backbone_written_by_a_run_loads_and_reproduces_its_knn(tmp_path):
    import pic_bench
    from pic_bench.data.augment import eval_transform
    from pic_bench.suite.run import run_task

    task = smoke_task(tmp_path)
    row = run_task(task)
    path = Path(row["backbone"])
    assert path.is_file() and path.parent == task.checkpoint.parent and not task.checkpoint.is_file()
    net = pic_bench.load_backbone(path)
    assert not net.training and net.feat_dim == 32
    src = load_source(task.cfg.data)
    t = eval_transform(task.cfg.data.image_size, src.mean, src.std)
    trf, try_ = E.embed(src.train, net, t, "cpu")
    tef, tey = E.embed(src.test, net, t, "cpu")
    assert E.knn_top1(trf, try_, tef, tey, task.cfg.eval.knn_k, task.cfg.eval.knn_t) == row["metrics"]["knn_top1"]
    # the row on disk names it too
    rows = [json.loads(x) for x in (tmp_path / "results" / "rows" / "evaltest.jsonl").read_text().splitlines()]
    assert rows[-1]["backbone"] == str(path)


def test_resnet_backbone_is_torchvision_compatible(tmp_path):
    import torchvision

    from pic_bench.eval.backbone import load_backbone, save_backbone

    cfg = build("smoke", {"model.arch": "resnet18", "model.small_stem": False}).model
    torch.manual_seed(0)
    model = PICModel(cfg, 3).eval()
    p = save_backbone(model, cfg, 3, tmp_path / "b.pt")
    sd = torch.load(p, weights_only=True)["state_dict"]
    tv = torchvision.models.resnet18()
    assert set(sd) == {k for k in tv.state_dict() if not k.startswith("fc.")}
    missing, unexpected = tv.load_state_dict(sd, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    tv.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tv.eval()(x), model.features(x)) and torch.equal(load_backbone(p)(x), model.features(x))


def test_load_backbone_refuses_other_files(tmp_path):
    from pic_bench.eval.backbone import load_backbone

    torch.save({"model": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a pic_bench backbone"):
        load_backbone(tmp_path / "x.pt")


# ---- 4. weighted kNN: chunked, reduced precision, against the float32 reference

def clustered(n_train, n_test, C, d, g, spread=2.5):
    """Train and test features around the same C random centres, labels = the centre."""
    centres = torch.randn(C, d, generator=g)

    def draw(n):
        y = torch.randint(0, C, (n,), generator=g)
        return centres[y] + spread * torch.randn(n, d, generator=g) / d ** 0.5 * 4, y.numpy()

    return (*draw(n_train), *draw(n_test))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_knn_equals_the_reference(seed):
    g = torch.Generator().manual_seed(seed)
    trf, try_, tef, tey = clustered(3000, 700, 10, 32, g)
    ref = E.knn_top1(trf, try_, tef, tey, 200, 0.07)
    assert 20 < ref < 100  # neither trivial nor hopeless
    # float32 features, chunks smaller than both sets: the same number
    assert E.knn_top1_chunked(trf, try_, tef, tey, 200, 0.07, chunk=128, train_chunk=512) == ref
    # bfloat16 features on the CPU: within the stated tolerance
    got = E.knn_top1_chunked(trf.bfloat16(), try_, tef.bfloat16(), tey, 200, 0.07, chunk=128, train_chunk=512)
    assert abs(got - ref) <= 1.0


@pytest.mark.gpu
def test_chunked_knn_on_gpu_matches_the_cpu_reference():
    g = torch.Generator().manual_seed(5)
    trf, try_, tef, tey = clustered(20000, 2000, 50, 128, g)
    ref = E.knn_top1(trf, try_, tef, tey, 200, 0.07)
    dev = torch.device("cuda")
    f32 = E.knn_top1_chunked(trf.to(dev), try_, tef.to(dev), tey, 200, 0.07, train_chunk=4096)
    bf16 = E.knn_top1_chunked(trf.to(dev, torch.bfloat16), try_, tef.to(dev, torch.bfloat16), tey, 200, 0.07,
                              train_chunk=4096)
    assert abs(f32 - ref) <= 0.1 and abs(bf16 - ref) <= 1.0


def test_feature_dtype_auto_keeps_cpu_float32():
    assert E.feature_dtype("auto", "cpu") == torch.float32
    assert E.feature_dtype("auto", "cuda") == torch.bfloat16
    assert E.feature_dtype("float16", "cpu") == torch.float16


# ---- 6. baselines that fit

def test_pixel_baseline_is_downsampled_and_says_so():
    from pic_bench.eval.evaluate import baseline_metrics

    fn, d = E.pixels_fn(8, 4)
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    assert d == 16 and torch.equal(fn(x), F.avg_pool2d(x, 2).flatten(1))
    fn0, d0 = E.pixels_fn(8, 0)
    assert d0 == 64 and torch.equal(fn0(x), x.flatten(1))
    cfg = build("smoke", {"eval.pixels_size": 4})
    m, derived = baseline_metrics(cfg, "pixels")
    assert derived["pixels_size"] == 4 and derived["eval_split"] == "test"
    full, derived_full = baseline_metrics(build("smoke"), "pixels")
    assert derived_full["pixels_size"] == 8 and m["knn_top1"] != full["knn_top1"]


def test_random_network_baseline_runs_through_linear_sgd(folder):
    from pic_bench.eval.evaluate import baseline_metrics

    cfg = folder_cfg(folder, **{"eval.protocol": "linear_sgd", "eval.sgd_epochs": 1, "eval.sgd_batch": 32})
    m, derived = baseline_metrics(cfg, "random")
    assert {"knn_top1", "linear_top1", "linear_top5"} <= set(m) and derived["eval_split"] == "val"


def test_paper_preset_baseline_pixels_are_32px():
    assert PRESETS["paper"]["eval.pixels_size"] == 32


def test_table_says_when_a_cell_was_evaluated_on_its_training_images():
    from pic_bench.report.tables import aggregate

    def row(seed, split):
        return {"status": "ok", "preset": "smoke", "kind": "pic", "cell": {}, "config_hash": "h", "seed": seed,
                "config": {}, "metrics": {"knn_top1": 50.0}, "derived": {"eval_split": split}}

    _, warnings = aggregate([row(0, "val")])
    assert not warnings
    _, warnings = aggregate([row(0, "train")])
    assert len(warnings) == 1 and "own training images" in warnings[0] and "data.eval_split=train" in warnings[0]


# ---- 5. evaluation sharded over ranks: rank r embeds its slice, all-gather; linear_sgd splits each batch

def _shard_cfg():
    return build("smoke", {"data.num_instances": 96, "data.test_size": 50, "eval.protocol": "linear_sgd",
                           "eval.sgd_epochs": 2, "eval.sgd_batch": 32, "eval.sgd_warmup_epochs": 0.5})


def _sharded_eval(cfg):
    from pic_bench.data.augment import eval_transform

    src = load_source(cfg.data)
    torch.manual_seed(0)
    model = PICModel(cfg.model, src.channels).eval()
    f, y = E.embed(src.train, model.features, eval_transform(8, src.mean, src.std), "cpu", batch=20)
    fn, d = E.pixels_fn(8, 0)
    lin = E.linear_sgd(fn, d, src.train, src.test, 8, src.mean, src.std, cfg.eval, "cpu", seed=1)
    return {"f": f, "y": y, "lin": lin}


def _shard_worker(rank: int, world: int, port: int, outs: list) -> None:
    import torch.distributed as dist

    out = str(outs[rank])  # this rank's file
    init_gloo(rank, world, port)
    try:
        torch.set_num_threads(1)
        torch.save(_sharded_eval(_shard_cfg()), out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_evaluation_sharded_over_two_ranks_equals_one_process(tmp_path):
    outs = [tmp_path / f"r{r}.pt" for r in range(2)]
    run_ranks(_shard_worker, 2, free_port(), outs, timeout=300)
    one = _sharded_eval(_shard_cfg())
    for o in outs:
        two = torch.load(o, weights_only=False)
        assert np.array_equal(two["y"], one["y"])  # every rank holds the whole set, in set order
        torch.testing.assert_close(two["f"], one["f"], rtol=1e-5, atol=1e-6)
        # the same batches split in two; gradients averaged over ranks differ only by rounding
        for k in ("linear_top1", "linear_top5"):
            assert abs(two["lin"][k] - one["lin"][k]) <= 2 * 100 / 50, (k, two["lin"], one["lin"])


# ---- 7. evaluation resumes from its own checkpoint

class Killed(BaseException):
    """Stands for a kill: not an Exception, so nothing records it as a failure."""


def kill_after(monkeypatch, key: str, when):
    """Progress.put raises Killed right after saving ``key`` once ``when(value)`` holds."""
    put = E.Progress.put

    def put_then_kill(self, k, value):
        put(self, k, value)
        if k == key and when(value):
            raise Killed(k)

    monkeypatch.setattr(E.Progress, "put", put_then_kill)


class Counting:
    def __init__(self, fn):
        self.fn, self.images = fn, 0

    def __call__(self, x):
        self.images += len(x)
        return self.fn(x)


def test_killed_linear_sgd_resumes_from_its_own_checkpoint(folder, tmp_path, monkeypatch):
    cfg = folder_cfg(folder, **{"eval.protocol": "linear_sgd", "eval.sgd_epochs": 4, "eval.sgd_batch": 24,
                                "eval.sgd_warmup_epochs": 1})
    src = load_source(cfg.data)
    fn, d = E.pixels_fn(12, 4)
    full = Counting(fn)
    want = E.evaluate_backbone(full, 3 * d, src, 12, cfg.eval, "cpu", 3)
    state = tmp_path / "b-eval.pt"
    with monkeypatch.context() as m:
        kill_after(m, "linear_sgd", lambda v: v["epoch"] == 2)
        with pytest.raises(Killed):
            E.evaluate_backbone(fn, 3 * d, src, 12, cfg.eval, "cpu", 3, progress=E.Progress(state, every_s=0))
    assert state.is_file()
    rerun = Counting(fn)
    got = E.evaluate_backbone(rerun, 3 * d, src, 12, cfg.eval, "cpu", 3, progress=E.Progress(state, every_s=0))
    assert got == want
    # only epochs 3 and 4 and the validation pass ran again: no embedding for kNN, no earlier epoch
    assert rerun.images == 2 * 3 * 24 + len(src.test) < full.images


def test_killed_embedding_resumes_after_the_last_saved_batch(folder, tmp_path, monkeypatch):
    from pic_bench.data.augment import eval_transform

    src = load_source(folder_cfg(folder).data)
    torch.manual_seed(0)
    model = PICModel(folder_cfg(folder).model, 3).eval()
    t = eval_transform(12, src.mean, src.std)
    want, y = E.embed(src.train, model.features, t, "cpu", batch=16)
    state = tmp_path / "e.pt"
    with monkeypatch.context() as m:
        kill_after(m, "embed:embed", lambda v: v["done"] == 2)
        with pytest.raises(Killed):
            E.embed(src.train, model.features, t, "cpu", batch=16, progress=E.Progress(state, every_s=0))
    rerun = Counting(model.features)
    got, y2 = E.embed(src.train, rerun, t, "cpu", batch=16, progress=E.Progress(state, every_s=0))
    assert torch.equal(got, want) and np.array_equal(y, y2) and rerun.images == len(src.train) - 32


def test_killed_evaluation_in_a_run_finishes_without_retraining(tmp_path, monkeypatch):
    from pic_bench.suite.run import run_task

    task = smoke_task(tmp_path)
    want = run_task(smoke_task(tmp_path / "uninterrupted"))
    with monkeypatch.context() as m:
        kill_after(m, "result", lambda v: "knn_top1" in v)
        with pytest.raises(Killed):
            run_task(task)
    assert task.checkpoint.is_file() and not (tmp_path / "results" / "rows").exists()
    trained = json.loads(task.trained_marker.read_text())
    row = run_task(task)
    # training was not run again: the row reports the training process's figures and says it was not resumed
    assert row["derived"]["evaluated_after_training"] is True and "resumed_from_step" not in row["derived"]
    assert row["metrics"]["peak_mem_mib"] == trained["metrics"]["peak_mem_mib"]
    assert row["metrics"]["train_wall_s"] == trained["metrics"]["train_wall_s"]
    assert row["metrics"]["knn_top1"] == want["metrics"]["knn_top1"]
    assert row["metrics"]["linear_top1"] == want["metrics"]["linear_top1"]
    assert not task.checkpoint.is_file() and not list(task.checkpoint.parent.glob("*-eval.pt*"))


@pytest.mark.parametrize("key,value", [("eval.sgd_batch", 0), ("eval.sgd_epochs", 0), ("eval.sgd_lr", 0.0),
                                       ("eval.sgd_crop_min", 0.0), ("eval.pixels_size", -1),
                                       ("data.eval_split", "train")])
def test_bad_linear_sgd_settings_are_refused_naming_the_key(key, value):
    from pic_bench.config import ConfigError, validate

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(build("smoke", {key: value}), where="test")

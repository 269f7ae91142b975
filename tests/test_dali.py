"""The DALI loader on the CPU (device_id=None): exact instance order, resume, parity with torchvision, bad input.

    python -m pytest tests/test_dali.py -q

Images are real: Fashion-MNIST digits of clothing, tinted to three channels and written as JPEG folders in
tmp dirs, or fed from memory. Statistical checks compare DALI with the torchvision loader on the same images
and window order (their random streams differ); each tolerance is stated where it is used.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

pytest.importorskip("nvidia.dali", reason="the DALI loader needs nvidia-dali (pip install nvidia-dali-cuda120)")

from pic_bench.config import DataConfig, apply, build
from pic_bench.data import dali as D
from pic_bench.data.augment import Recipe, recipes
from pic_bench.data.loaders import build_loader
from pic_bench.data.sources import (
    INDEX_MAP,
    BadImageError,
    DatasetError,
    Source,
    TensorSet,
    _read_idx,
    encode_jpeg,
    load_source,
)
from pic_bench.data.torchvision_loader import TorchvisionLoader
from pic_bench.report.results import read_rows
from pic_bench.suite.run import Task, run_task
from pic_bench.pic.train import Preempted, Trainer
from pic_bench.data.window import EpochOrder, SlidingWindow

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.fixture(autouse=True)
def _listing_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIC_BENCH_CACHE", str(tmp_path / "listing_cache"))
PLAIN = dict(jitter=(0.0, 0.0, 0.0, 0.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0, mean=(0.0,) * 3, std=(1.0,) * 3)


def fashion(n: int) -> np.ndarray:
    """The first n Fashion-MNIST training images, uint8 (n, 28, 28); where Fashion-MNIST is not installed (a bare
    GPU machine running tests/test_dali_gpu.py), ``bench.loader.synthetic_glyphs``: class-shaped blobs."""
    if not FASHION.exists():
        from pic_bench.bench.loader import synthetic_glyphs

        return synthetic_glyphs(n)[0]
    return _read_idx(FASHION)[:n]


def tinted(n: int, H: int = 48, W: int = 64) -> torch.Tensor:
    """Fashion-MNIST upscaled to (H, W) and tinted so that every channel differs: uint8 (n, 3, H, W)."""
    t = torch.from_numpy(fashion(n).copy()).float()[:, None]
    t = torch.nn.functional.interpolate(t, size=(H, W), mode="bilinear", align_corners=False)
    return torch.cat([t, 0.5 * t + 64, 200 - 0.6 * t], 1).clamp(0, 255).round().to(torch.uint8)


def write_folder(root: Path, images: torch.Tensor, classes: int = 3) -> list[Path]:
    """An ImageNet-style folder root/train/c<k>/<i>.jpg; returns the files in sorted (= instance) order."""
    files = []
    for i, img in enumerate(images):
        p = root / "train" / f"c{i % classes}" / f"{i:04d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(encode_jpeg(img))
        files.append(p)
    return sorted(files)


def folder_source(root: Path, **kw) -> Source:
    # these folders have no val/: evaluating on the training images must be asked for (data.eval_split)
    return load_source(DataConfig(dataset="imagefolder", root=str(root), **{"eval_split": "train", **kw}))


def memory_source(images: torch.Tensor, mean=(0.5,), std=(0.25,)) -> Source:
    c = images.shape[1]
    s = TensorSet(images, np.zeros(len(images)))
    return Source("memory", s, s, c, tuple(mean) * (3 if c == 3 and len(mean) == 1 else 1),
                  tuple(std) * (3 if c == 3 and len(std) == 1 else 1), "memory")


def config(**kw):
    base = {"optim.batch_size": 8, "data.image_size": 16, "data.crop_min": 0.08, "data.workers": 2,
            "run.device": "cpu", "data.eval_split": "train"}
    return build("smoke", {**base, **kw})


def dali(source: Source, schedule, cfg, large: Recipe | None = None, **kw) -> D.DaliLoader:
    L, S = recipes(cfg.data, source.channels, source.mean, source.std)
    return D.DaliLoader(source, schedule, cfg, large or L, S, device="cpu", **kw)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jpegs")
    write_folder(root, tinted(48))
    return root


def same_batches(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.step == y.step and torch.equal(x.index, y.index) and x.skipped == y.skipped
        assert len(x.views) == len(y.views) and len(x.small_views) == len(y.small_views)
        for u, v in zip(x.views + x.small_views, y.views + y.small_views):
            assert torch.equal(u, v)


# ---------------------------------------------------------------- order: windows, rebuilds, resume


@pytest.mark.parametrize("kind", ["folder", "memory"])
def test_indices_follow_the_window_order_across_window_changes_and_rebuilds(folder, kind):
    src = folder_source(folder) if kind == "folder" else memory_source(torch.from_numpy(fashion(48).copy())[:, None])
    cfg = config(**{"data.views": 2})
    sched = SlidingWindow(src.N, D=20, S=6, seed=3)  # 20 is not a multiple of B = 8: batches straddle windows
    steps = 10  # 80 positions: windows 0..3
    one = dali(src, sched, cfg)
    many = dali(src, sched, cfg)
    many.segment_samples = 1  # a new pipeline every window (3 steps), mid-window relative to batches
    a, b = list(one.iterate(0, steps)), list(many.iterate(0, steps))
    for batch in a:
        assert torch.equal(batch.index, torch.from_numpy(sched.batch(batch.step, 8)))  # exact, in order
        assert len(batch.views) == 2 and batch.views[0].shape == (8, src.channels, 16, 16)
    assert len({int(t) for t in np.arange(steps * 8) // sched.L}) == 4
    same_batches(a, b)  # rebuilding the pipeline changes no pixel


@pytest.mark.parametrize("kind", ["folder", "memory"])
def test_resume_from_a_later_step_gives_the_same_batches(folder, kind):
    src = folder_source(folder) if kind == "folder" else memory_source(tinted(40), (0.4,), (0.3,))
    cfg = config(**{"data.views": 1, "data.small_views": 2, "data.small_size": 8})
    sched = SlidingWindow(src.N, D=16, S=4, seed=1)
    full = list(dali(src, sched, cfg).iterate(0, 9))
    resumed = list(dali(src, sched, cfg).iterate(5, 9))  # a fresh loader, as after a restart
    same_batches(full[5:], resumed)
    assert resumed[0].small_views[0].shape == (8, 3, 8, 8)


def test_augmentation_follows_the_run_seed():
    src = memory_source(tinted(16), (0.4,), (0.3,))
    sched = EpochOrder(16, 0)
    a0 = list(dali(src, sched, config(**{"run.seed": 0})).iterate(0, 2))
    a0_again = list(dali(src, sched, config(**{"run.seed": 0})).iterate(0, 2))
    a1 = list(dali(src, sched, config(**{"run.seed": 1})).iterate(0, 2))
    same_batches(a0, a0_again)
    assert torch.equal(a0[0].index, a1[0].index)  # the order comes from the scheduler, not the seed here
    assert not torch.equal(a0[0].views[0], a1[0].views[0])


def test_trainer_with_dali_resumes_bit_exact(tmp_path):
    cfg = build("smoke", {"run.deterministic": True, "optim.epochs": 1, "data.loader": "dali", "data.workers": 1})
    ref = Trainer(cfg)
    assert ref.derived["loader"] == "dali"
    ref.train()
    calls = [0]

    def stop_at_5() -> bool:
        calls[0] += 1
        return calls[0] == 6

    t = Trainer(cfg)
    with pytest.raises(Preempted):
        t.train(should_stop=stop_at_5, checkpoint=tmp_path / "c.pt")
    assert t.step == 5
    t = Trainer(cfg)
    t.load(tmp_path / "c.pt")
    t.train()
    assert t.meters.losses == ref.meters.losses and torch.equal(t.w, ref.w) and torch.equal(t.u, ref.u)


# ---------------------------------------------------------------- every recipe builds and runs


@pytest.mark.parametrize("aug", ["strong", "weak"])
@pytest.mark.parametrize("kind", ["folder", "memory"])
@pytest.mark.parametrize("views,small", [(1, 0), (2, 0), (2, 3)], ids=["1view", "2views", "multicrop"])
def test_every_recipe_builds_and_runs(folder, aug, kind, views, small):
    src = folder_source(folder) if kind == "folder" else memory_source(torch.from_numpy(fashion(24).copy())[:, None])
    cfg = config(**{"data.loader": "dali", "data.aug": aug, "data.views": views, "data.small_views": small,
                    "data.small_size": 8, "data.small_crop_max": 0.3})
    sched = EpochOrder(src.N, 0)
    loader = build_loader(cfg, src, sched)
    assert isinstance(loader, D.DaliLoader) and loader.name == "dali"
    (b,) = list(loader.iterate(2, 3))
    assert torch.equal(b.index, torch.from_numpy(sched.batch(2, 8))) and b.index.dtype == torch.int64
    assert len(b.views) == views and len(b.small_views) == small
    for x in b.views:
        assert x.shape == (8, src.channels, 16, 16) and x.dtype == torch.float32 and torch.isfinite(x).all()
    for x in b.small_views:
        assert x.shape == (8, src.channels, 8, 8) and torch.isfinite(x).all()


# ---------------------------------------------------------------- each op equals torchvision's for the same draws


def torchvision_reference(img: torch.Tensor, tries: np.ndarray, q: np.ndarray, r: Recipe) -> torch.Tensor:
    """torchvision's functional ops in the torchvision recipe's order, with the draws given."""
    y, x, h, w = D.crop_window_reference(img.shape[1], img.shape[2], tries, q[D.POS_Y], q[D.POS_X], r.ratio)
    o = F.resized_crop(img, y, x, h, w, [r.size, r.size], antialias=True)
    o = F.adjust_brightness(o, float(q[D.BRIGHT]))
    o = F.adjust_contrast(o, float(q[D.CONTRAST]))
    o = F.adjust_saturation(o, float(q[D.SAT]))
    o = F.adjust_hue(o, float(q[D.HUE]))
    if q[D.GRAY]:
        o = F.rgb_to_grayscale(o, num_output_channels=3)
    if q[D.BLUR]:
        o = F.gaussian_blur(o, [r.blur_kernel] * 2, [float(q[D.SIGMA])] * 2)
    if q[D.FLIP]:
        o = F.horizontal_flip(o)
    return o.float()


def test_crop_window_in_the_graph_equals_its_plain_reference():
    # Shapes that exercise accepted tries and every fallback (too narrow, too wide, within the ratio range).
    rng = np.random.default_rng(0)
    for H, W, scale in [(48, 64, (0.08, 1.0)), (20, 90, (0.9, 1.0)), (90, 20, (0.9, 1.0)), (30, 33, (0.99, 1.0))]:
        r = Recipe(8, scale, **PLAIN)
        tries, q = D.draw_view(rng, r, 64)
        y, x = np.mgrid[0:H, 0:W]
        img = torch.from_numpy(np.stack([2 * x, 2 * y, x * 0]).astype(np.uint8))[None].repeat(64, 1, 1, 1)
        out = D.augment_with_draws(img, tries, q, r) * 255
        for i in range(64):
            cy, cx, h, w = D.crop_window_reference(H, W, tries[i], q[i, D.POS_Y], q[i, D.POS_X], r.ratio)
            want = F.resized_crop(img[i], cy, cx, h, w, [8, 8], antialias=True).float()
            if q[i, D.FLIP]:
                want = F.horizontal_flip(want)
            assert (out[i] - want).abs().max() < 1.5, (H, W, i, (cy, cx, h, w))  # 1 px off is 2 levels


@pytest.mark.parametrize("op", ["crop", "brightness", "contrast", "saturation", "hue", "gray", "blur", "flip",
                                "all", "all-gpu-formulas"])
def test_each_op_matches_torchvision_for_the_same_draws(op):
    """Mean |DALI - torchvision| under 0.35 grey levels per op and for the whole chain (measured 0.12-0.22,
    mostly resampling at crop borders: single pixels differ by up to 11); a wrong op is off by 10 to 60 and a
    rounding mode that differs (nearest instead of down) by 0.4."""
    imgs = tinted(48)
    r = Recipe(24, (0.08, 1.0), jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, gray_p=1.0, blur_p=1.0,
               mean=(0.0,) * 3, std=(1 / 255,) * 3)
    tries, q = D.draw_view(np.random.default_rng(5), r, len(imgs))
    if not op.startswith("all"):
        cols = {"brightness": D.BRIGHT, "contrast": D.CONTRAST, "saturation": D.SAT, "hue": D.HUE,
                "gray": D.GRAY, "blur": D.BLUR, "flip": D.FLIP}
        identity = {D.BRIGHT: 1, D.CONTRAST: 1, D.SAT: 1, D.HUE: 0, D.GRAY: 0, D.BLUR: 0, D.FLIP: 0}
        for col, v in identity.items():
            if cols.get(op) != col:
                q[:, col] = v
        if op in ("gray", "blur", "flip"):
            q[:, cols[op]] = 1
    out = D.augment_with_draws(imgs, tries, q, r, gpu_ops=op == "all-gpu-formulas")  # GPU graph, on the CPU
    want = torch.stack([torchvision_reference(imgs[i], tries[i], q[i], r) for i in range(len(imgs))])
    err = (out - want).abs()
    assert err.mean() < 0.35 and abs((out - want).mean()) < 0.1, float(err.mean())
    assert err.max() <= 16


# ---------------------------------------------------------------- statistics agree with the torchvision loader


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    z = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(np.sort(a), z, "right") / len(a)
                        - np.searchsorted(np.sort(b), z, "right") / len(b)).max())


def both_loaders(src: Source, r: Recipe, steps: int, B: int = 64, views: int = 1, seed: int = 3):
    """All views of `steps` batches from DALI and from torchvision, same images, same order, same recipe."""
    cfg = config(**{"optim.batch_size": B, "data.views": views, "run.seed": seed})
    sched = EpochOrder(src.N, 0)
    xd = torch.cat([torch.cat(b.views) for b in D.DaliLoader(src, sched, cfg, r, None, "cpu").iterate(0, steps)])
    tv = TorchvisionLoader(src.train, sched, B, r, None, views, 0, seed)
    xt = torch.cat([torch.cat(b.views) for b in tv.iterate(0, steps)])
    return xd, xt


# With n = 1024 views per loader: a KS distance above 0.09 has probability < 0.1% when both draw from one
# distribution (critical value 1.95 * sqrt(2 / n)); a fraction p differs between loaders by more than
# 4 * sqrt(2 p (1 - p) / n) (4 standard errors) with probability < 1e-4.
KS_MAX = 0.09


def frac_tol(p: float, n: int = 1024) -> float:
    return 4 * np.sqrt(2 * p * (1 - p) / n)


def test_crop_area_aspect_and_flip_statistics_agree():
    # Coordinate images: R = 4 x, G = 5 y, so a crop's extent can be read off its output's value range.
    H, W = 48, 64
    y, x = np.mgrid[0:H, 0:W]
    img = torch.from_numpy(np.stack([x * 4, y * 5, np.full_like(x, 128)]).astype(np.uint8))
    src = memory_source(img[None].repeat(64, 1, 1, 1), (0.0,), (1.0,))
    r = Recipe(16, (0.08, 1.0), flip_p=0.5, **PLAIN)
    stats = []
    for out in both_loaders(src, r, steps=16):
        R, G = out[:, 0] * 255 / 4, out[:, 1] * 255 / 5
        w = (R.amax((1, 2)) - R.amin((1, 2))) * 16 / 15  # output pixel centres span 15/16 of the crop
        h = (G.amax((1, 2)) - G.amin((1, 2))) * 16 / 15
        flipped = (R[:, :, 0].mean(1) > R[:, :, -1].mean(1)).float()
        stats.append(((w * h / (H * W)).numpy(), torch.log(w / h).numpy(), float(flipped.mean())))
    (area_d, aspect_d, flip_d), (area_t, aspect_t, flip_t) = stats
    assert ks_distance(area_d, area_t) < KS_MAX and ks_distance(aspect_d, aspect_t) < KS_MAX
    assert abs(area_d.mean() - area_t.mean()) < 0.03  # mean area fraction ~0.43, sd ~0.27
    assert abs(flip_d - flip_t) < frac_tol(0.5) and abs(flip_d - 0.5) < frac_tol(0.5) / np.sqrt(2)


def test_grayscale_and_blur_statistics_agree():
    # A colour checkerboard of 2-px squares, kept whole (scale 1, ratio 1, output = input size): grey views
    # have equal channels; blur lowers the mean horizontal gradient by an amount that grows with sigma.
    yy, xx = np.mgrid[0:16, 0:16]
    c = ((xx // 2 + yy // 2) % 2).astype(np.float32)
    img = torch.from_numpy(np.stack([40 + 180 * c, 200 - 120 * c, 90 + 60 * c]).astype(np.uint8))
    src = memory_source(img[None].repeat(64, 1, 1, 1), (0.0,), (1.0,))
    r = Recipe(16, (1.0, 1.0), ratio=(1.0, 1.0), **{**PLAIN, "gray_p": 0.2, "blur_p": 0.5})
    stats = []
    for out in both_loaders(src, r, steps=16):
        gray = (out.amax(1) - out.amin(1)).amax((1, 2)) < 2 / 255
        sharp = (out[..., 1:] - out[..., :-1]).abs().mean((1, 2, 3))
        rel = (sharp[~gray] / sharp[~gray].max()).numpy()  # 1 = not blurred
        stats.append((float(gray.float().mean()), rel))
    (gray_d, rel_d), (gray_t, rel_t) = stats
    assert abs(gray_d - gray_t) < frac_tol(0.2) and abs(gray_d - 0.2) < frac_tol(0.2) / np.sqrt(2)
    blurred_d, blurred_t = (rel_d < 0.97).mean(), (rel_t < 0.97).mean()  # sigma above ~0.4 is visible at k=3
    assert abs(blurred_d - blurred_t) < frac_tol(0.45, len(rel_d))
    assert 0.3 < blurred_d < 0.5  # p = 0.5 times P(sigma large enough to show)
    assert ks_distance(rel_d, rel_t) < KS_MAX  # the sigma distribution, through its effect


@pytest.mark.parametrize("aug", ["strong", "weak"])
def test_per_channel_output_statistics_agree(folder, aug):
    """Per-channel mean of the normalised output within 0.12 (4.5 standard errors of a difference of two means
    of 1024 views whose per-view means spread by ~0.75) and standard deviation within 8% (measured: means
    within 0.065, std within 3%)."""
    src = folder_source(folder)
    cfg = config(**{"data.aug": aug, "data.image_size": 32})
    L, _ = recipes(cfg.data, 3, src.mean, src.std)
    xd, xt = both_loaders(src, L, steps=8, views=2)
    assert len(xd) == len(xt) == 1024
    assert torch.allclose(xd.mean((0, 2, 3)), xt.mean((0, 2, 3)), atol=0.12)
    assert torch.allclose(xd.std((0, 2, 3)), xt.std((0, 2, 3)), rtol=0.08)


# ---------------------------------------------------------------- bad input


def break_file(path: Path, kind: str) -> None:
    good = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "random_bytes":
        path.write_bytes(good[:200] + np.random.default_rng(0).bytes(len(good) - 200))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "deleted":
        path.unlink()


BAD = {3: "truncated", 10: "random_bytes", 17: "empty"}  # instance index -> how it is broken


@pytest.fixture
def broken_folder(tmp_path) -> Path:
    """24 JPEGs, three of them broken (``BAD``) after the folder was listed once."""
    write_folder(tmp_path, tinted(24))
    files = folder_source(tmp_path).train.files
    for i, kind in BAD.items():
        break_file(Path(files[i]), kind)
    return tmp_path


def step_of(sched, instance: int, B: int = 8) -> int:
    return int(np.flatnonzero(sched.positions(0, sched.L) == instance)[0]) // B


@pytest.mark.parametrize("kind", ["truncated", "random_bytes", "empty", "deleted"])
def test_a_bad_file_stops_the_run_with_its_name(tmp_path, kind):
    write_folder(tmp_path, tinted(24))
    src = folder_source(tmp_path)
    i = 13
    path = src.train.files[i]
    break_file(Path(path), kind)  # after the folder was listed: "deleted" disappears mid-run
    sched = EpochOrder(src.N, 0)
    seen = []
    with pytest.raises(BadImageError) as e:
        for b in dali(src, sched, config()).iterate(0, 3):
            seen.append(b.step)
    assert e.value.path == path and path in str(e.value)
    # Batches come in order and stop before the bad file's; a file that cannot be read at all may stop the
    # run a few steps early (the reader reads ahead).
    assert seen == list(range(len(seen))) and len(seen) <= step_of(sched, i)
    if kind in ("truncated", "random_bytes"):
        assert len(seen) == step_of(sched, i)  # the decoder fails at the file's own step


def test_skip_drops_and_counts_bad_files_and_keeps_the_order(broken_folder):
    src = folder_source(broken_folder)
    bad_idx = set(BAD)
    sched = SlidingWindow(src.N, D=16, S=8, seed=0)
    cfg = config(**{"data.on_bad_image": "skip", "data.views": 2})
    batches = list(dali(src, sched, cfg).iterate(0, 6))
    want = sched.positions(0, 48)
    assert sum(b.skipped for b in batches) == int(np.isin(want, list(bad_idx)).sum()) > 0
    got = torch.cat([b.index for b in batches]).numpy()
    np.testing.assert_array_equal(got, want[~np.isin(want, list(bad_idx))])
    for b in batches:
        assert all(len(v) == len(b.index) for v in b.views)


def test_skipped_images_are_counted_in_the_run_metrics(broken_folder):
    cfg = apply(config(), {"data.dataset": "imagefolder", "data.root": str(broken_folder), "data.loader": "dali",
                           "data.on_bad_image": "skip", "pic.scheduler": "epoch", "optim.epochs": 1.0}, "test")
    t = Trainer(cfg)
    metrics = t.train()  # the summary that run_task puts into the row's metrics
    assert t.derived["loader"] == "dali" and t.step == 3
    assert metrics["skipped_images"] == len(BAD)  # one epoch visits each bad file once


def test_the_result_row_tells_which_loader_ran(folder, tmp_path):
    cfg = apply(config(), {"data.dataset": "imagefolder", "data.root": str(folder), "data.loader": "dali",
                           "optim.max_steps": 2, "eval.knn_k": 3, "eval.linear_epochs": 2}, "test")
    run_task(Task("dali_test", "smoke", {}, cfg, results_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "ck")))
    (row,), problems = read_rows(tmp_path, "dali_test")
    assert not problems and row["status"] == "ok" and row["derived"]["loader"] == "dali"
    assert row["metrics"]["skipped_images"] == 0


def test_missing_and_empty_folders_name_the_path(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nowhere")):
        folder_source(tmp_path / "nowhere")
    (tmp_path / "empty" / "train" / "c0").mkdir(parents=True)
    with pytest.raises(DatasetError, match=f"{tmp_path / 'empty' / 'train'}.*empty"):
        folder_source(tmp_path / "empty")


def test_a_changed_folder_is_detected(tmp_path):
    files = write_folder(tmp_path, tinted(12))
    a = folder_source(tmp_path)
    assert not (tmp_path / INDEX_MAP).exists()  # nothing is written into the dataset folder
    assert folder_source(tmp_path, num_instances=6).N == 6  # another subset of the same folder is fine
    assert folder_source(tmp_path).index_digest == a.index_digest
    extra = tmp_path / "train" / "c0" / "0000a.jpg"  # sorts between existing files: indices would shift
    extra.write_bytes(files[0].read_bytes())
    with pytest.raises(DatasetError, match="file list changed.*0000a.jpg"):
        folder_source(tmp_path)
    extra.unlink()
    files[4].rename(files[4].with_name("renamed.jpg"))
    with pytest.raises(DatasetError, match="file list changed"):
        folder_source(tmp_path)


def test_the_listing_lives_in_the_cache_and_guards_the_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_folder(data, tinted(6))
    monkeypatch.setenv("PIC_BENCH_CACHE", str(tmp_path / "cache"))
    folder_source(data)
    recorded = sorted((tmp_path / "cache" / "listing").glob("*.txt"))
    assert len(recorded) == 1  # train/ only: there is no val/
    assert not list(data.rglob(".pic_bench*")) and not list(data.rglob("*.tmp"))
    (data / "train" / "c1" / "0001.jpg").unlink()
    with pytest.raises(DatasetError, match=str(recorded[0])):
        folder_source(data)

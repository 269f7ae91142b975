"""The batched loader (fast path) against the per-image torchvision loader (reference), same recipe."""
import numpy as np
import pytest
import torch

from pic_bench.config import apply, build
from pic_bench.data.augment import Recipe, torchvision_transform
from pic_bench.data.batched import BatchedLoader, augment_batch
from pic_bench.data.sources import load_source
from pic_bench.data.torchvision_loader import TorchvisionLoader
from pic_bench.data.window import SlidingWindow

S = 64


def _ramp_images(n):
    """Channel 0 = x coordinate, channel 1 = y coordinate, channel 2 = constant: a crop's extent is readable."""
    x = torch.linspace(0, 255, S).round().to(torch.uint8)
    img = torch.stack([x.expand(S, S), x[:, None].expand(S, S), torch.full((S, S), 128, dtype=torch.uint8)])
    return img.expand(n, -1, -1, -1).contiguous()


def _extent(out):
    """(width fraction, height fraction, flipped) of each crop read back from the ramps."""
    x, y = out[:, 0], out[:, 1]
    wf = (x[:, :, -1] - x[:, :, 0]).mean(1).abs() / 1.0
    hf = (y[:, -1, :] - y[:, 0, :]).mean(1).abs() / 1.0
    flipped = (x[:, :, -1] - x[:, :, 0]).mean(1) < 0
    return wf.numpy(), hf.numpy(), flipped.numpy()


def _pair(recipe, n=400, seed=0):
    imgs = _ramp_images(n)
    t = torchvision_transform(recipe)
    torch.manual_seed(seed)
    ref = torch.stack([t(i) for i in imgs])
    fast, _ = augment_batch(imgs, recipe, torch.Generator().manual_seed(seed))
    return ref, fast


def test_crop_area_aspect_and_flip_distributions_match_torchvision():
    r = Recipe(S, (0.2, 1.0), jitter=(0, 0, 0, 0), jitter_p=0, gray_p=0, blur_p=0, mean=(0, 0, 0), std=(1, 1, 1))
    ref, fast = _pair(r)
    (wr, hr, fr), (wf, hf, ff) = _extent(ref), _extent(fast)
    area_r, area_f = wr * hr, wf * hf
    # tolerances: 400 samples; the clamp instead of retry shifts the tails a little
    assert abs(np.mean(area_r) - np.mean(area_f)) < 0.04
    assert abs(np.median(area_r) - np.median(area_f)) < 0.06
    assert abs(np.mean(np.log(wr / hr)) - np.mean(np.log(wf / hf))) < 0.06
    assert abs(np.std(np.log(wr / hr)) - np.std(np.log(wf / hf))) < 0.06
    assert abs(fr.mean() - 0.5) < 0.07 and abs(ff.mean() - 0.5) < 0.07


def test_grayscale_fraction_matches():
    r = Recipe(S, (1.0, 1.0), (1.0, 1.0), flip_p=0, jitter=(0, 0, 0, 0), jitter_p=0, gray_p=0.2, blur_p=0,
               mean=(0, 0, 0), std=(1, 1, 1))
    ref, fast = _pair(r)
    gray = lambda o: ((o[:, 0] - o[:, 2]).abs().amax((1, 2)) < 1e-3).float().mean().item()  # noqa: E731
    assert abs(gray(ref) - 0.2) < 0.05 and abs(gray(fast) - 0.2) < 0.05


def test_blur_fraction_and_real_image_statistics_match():
    cfg = apply(build("small"), {"data.num_instances": 400, "data.test_size": 10}, "t")
    src = load_source(cfg.data)
    r = Recipe(28, (0.3, 1.0), jitter=(0.4, 0.4, 0.0, 0.0), channels=1, gray_p=0, mean=src.mean, std=src.std)
    imgs = src.train.images
    t = torchvision_transform(r)
    torch.manual_seed(1)
    ref = torch.stack([t(i) for i in imgs])
    fast, _ = augment_batch(imgs, r, torch.Generator().manual_seed(1))
    assert abs(ref.mean().item() - fast.mean().item()) < 0.05
    assert abs(ref.std().item() - fast.std().item()) < 0.05
    # high-frequency energy (blur lowers it): mean absolute horizontal gradient
    hf = lambda o: (o[..., 1:] - o[..., :-1]).abs().mean().item()  # noqa: E731
    assert abs(hf(ref) - hf(fast)) / hf(ref) < 0.08


def test_batched_loader_yields_scheduler_indices_and_resumes_identically():
    cfg = build("smoke")
    src = load_source(cfg.data)
    sched = SlidingWindow(src.N, 128, 32, seed=0)
    r = Recipe(8, (0.5, 1.0), channels=1, mean=src.mean, std=src.std)
    a = BatchedLoader(src.train, sched, 32, r, views=2, seed=3)
    first = list(a.iterate(0, 8))
    for s, b in enumerate(first):
        assert torch.equal(b.index, torch.from_numpy(sched.batch(s, 32)))
        assert len(b.views) == 2 and not torch.equal(b.views[0], b.views[1])
    again = list(BatchedLoader(src.train, sched, 32, r, views=2, seed=3).iterate(5, 8))
    for b1, b2 in zip(first[5:], again):
        assert torch.equal(b1.views[0], b2.views[0]) and torch.equal(b1.index, b2.index)
    other = next(BatchedLoader(src.train, sched, 32, r, views=2, seed=4).iterate(5, 6))
    assert not torch.equal(other.views[0], first[5].views[0])  # the run seed changes the augmentation


def test_batched_loader_refuses_image_folders():
    from pic_bench.data.sources import FolderSet

    with pytest.raises(ValueError, match="in-memory"):
        BatchedLoader(FolderSet(["a.jpg"], np.zeros(1)), SlidingWindow(1, 1, 1, 0), 1, Recipe(8, (0.5, 1)))

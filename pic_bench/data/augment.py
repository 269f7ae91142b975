"""Augmentation recipes as plain numbers (``Recipe``), built into torchvision transforms here and into DALI
operators in ``dali.py``, so both loaders run the same recipe.

- strong: MoCo v2 / SimCLR: random resized crop, colour jitter (0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale with
  p = 0.2, Gaussian blur sigma in [0.1, 2.0] with p = 0.5, horizontal flip.
- weak: NPID: random resized crop, grayscale p = 0.2, colour jitter (0.4, 0.4, 0.4, 0.4) always, flip.

On 1-channel images saturation, hue and grayscale do nothing and are left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2 as T

from ..config import DataConfig


@dataclass(frozen=True)
class Recipe:
    size: int  # output side, px
    scale: tuple[float, float]  # random-resized-crop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # random-resized-crop aspect ratio
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    channels: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    @property
    def blur_kernel(self) -> int:
        """Odd kernel of about 10% of the image side (SimCLR), at least 3."""
        k = max(3, int(0.1 * self.size))
        return k if k % 2 == 1 else k + 1


def recipes(cfg: DataConfig, channels: int, mean, std) -> tuple[Recipe, Recipe | None]:
    """(large-view recipe, small-view recipe or None) for a data config."""
    common = dict(channels=channels, mean=tuple(mean), std=tuple(std))
    if cfg.aug == "strong":
        kw = dict(jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2, blur_p=0.5)
    else:
        kw = dict(jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, gray_p=0.2, blur_p=0.0)
    if channels == 1:
        kw.update(jitter=(kw["jitter"][0], kw["jitter"][1], 0.0, 0.0), gray_p=0.0)
    if cfg.small_views > 0:  # multi-crop: large crops take [small_crop_max, 1], small ones [crop_min, small_crop_max]
        large = Recipe(cfg.image_size, (cfg.small_crop_max, 1.0), **kw, **common)
        small = Recipe(cfg.small_size, (cfg.crop_min, cfg.small_crop_max), **kw, **common)
        return large, small
    return Recipe(cfg.image_size, (cfg.crop_min, 1.0), **kw, **common), None


def torchvision_transform(r: Recipe) -> T.Compose:
    """uint8 (C, H, W) tensor -> normalised float (C, size, size)."""
    ops: list = [T.RandomResizedCrop(r.size, scale=r.scale, ratio=r.ratio, antialias=True)]
    b, c, s, h = r.jitter
    if any(r.jitter):
        ops.append(T.RandomApply([T.ColorJitter(b, c, s, h)], p=r.jitter_p))
    if r.gray_p > 0:
        ops.append(T.RandomGrayscale(p=r.gray_p))
    if r.blur_p > 0:
        ops.append(T.RandomApply([T.GaussianBlur(r.blur_kernel, sigma=r.blur_sigma)], p=r.blur_p))
    ops += [T.RandomHorizontalFlip(p=r.flip_p), T.ToDtype(torch.float32, scale=True), T.Normalize(r.mean, r.std)]
    return T.Compose(ops)


def eval_transform(size: int, mean, std) -> T.Compose:
    """Deterministic: resize the short side to size / 0.875 (skipped for <= 32 px images), centre crop."""
    ops: list = []
    if size > 32:
        ops += [T.Resize(int(round(size / 0.875)), antialias=True), T.CenterCrop(size)]
    else:
        ops += [T.Resize(size, antialias=True), T.CenterCrop(size)]
    ops += [T.ToDtype(torch.float32, scale=True), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(ops)

"""Chooses the loader named by ``data.loader`` (auto: DALI where it is installed, else torchvision)."""
from __future__ import annotations

import importlib.util

import torch

from ..config import Config
from ..window import Schedule
from .augment import recipes
from .sources import Source


def dali_available() -> bool:
    return importlib.util.find_spec("nvidia.dali") is not None


def build_loader(cfg: Config, source: Source, schedule: Schedule, device: torch.device | None = None):
    """``device``: the rank's training device (DALI decodes on that GPU; the other loaders yield CPU batches)."""
    d = cfg.data
    large, small = recipes(d, source.channels, source.mean, source.std)
    kind = d.loader
    if kind == "auto":
        kind = "dali" if dali_available() else "torchvision"
    if kind == "dali":
        from .dali import DaliLoader  # the only place DALI is imported

        if device is None:
            return DaliLoader(source, schedule, cfg, large, small)
        return DaliLoader(source, schedule, cfg, large, small, "gpu" if device.type == "cuda" else "cpu",
                          device.index if device.type == "cuda" else None)
    if kind == "batched":
        from .batched import BatchedLoader

        return BatchedLoader(source.train, schedule, cfg.optim.batch_size, large, small, d.views, d.small_views,
                             cfg.run.seed)
    from .torchvision_loader import TorchvisionLoader

    return TorchvisionLoader(source.train, schedule, cfg.optim.batch_size, large, small, d.views, d.small_views,
                             cfg.run.seed, d.workers, d.on_bad_image)

"""Chooses the loader named by ``data.loader`` (auto: DALI where it is installed, else torchvision)."""
from __future__ import annotations

import importlib.util

import torch

from ..config import Config
from .window import Schedule
from . import shard_rows
from .augment import recipes
from .sources import Source


def dali_available() -> bool:
    return importlib.util.find_spec("nvidia.dali") is not None


def build_loader(cfg: Config, source: Source, schedule: Schedule, shard: tuple[int, int] = (0, 1),
                 device: torch.device | str | None = None):
    """The loader of a run.

    Args:
        shard: (rank, world): this rank reads and decodes only its rows of each global batch (``shard_rows``).
        device: where DALI decodes (``cuda:<i>`` -> its ``device_id``; "cpu"); None: the GPU of the current
            CUDA device when the run uses CUDA. The other loaders produce CPU tensors; torchvision's are pinned
            when ``device`` is CUDA (an asynchronous copy in ``Batch.to``).
    """
    d = cfg.data
    rank, world = shard
    rows = shard_rows(cfg.optim.batch_size, rank, world)  # refuses a batch that does not split
    if world > 1 and d.on_bad_image == "skip":
        raise ValueError(f"data.on_bad_image=skip cannot be used with {world} ranks: a rank that drops an image "
                         "would leave the others' view of the global batch wrong; use data.on_bad_image=error")
    large, small = recipes(d, source.channels, source.mean, source.std)
    kind = d.loader
    if kind == "auto":
        kind = "dali" if dali_available() else "torchvision"
    if kind == "dali":
        from .dali import DaliLoader  # the only place DALI is imported

        return DaliLoader(source, schedule, cfg, large, small, device=device, rows=rows)
    if kind == "batched":
        from .batched import BatchedLoader

        return BatchedLoader(source.train, schedule, cfg.optim.batch_size, large, small, d.views, d.small_views,
                             cfg.run.seed, rows=rows)
    from .torchvision_loader import TorchvisionLoader

    return TorchvisionLoader(source.train, schedule, cfg.optim.batch_size, large, small, d.views, d.small_views,
                             cfg.run.seed, d.workers, d.on_bad_image, rows=rows, device=device)

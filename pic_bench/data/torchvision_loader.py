"""The torchvision loader: batch ``step`` holds the scheduler's positions ``[step*B, (step+1)*B)``.

Augmentation randomness is seeded per image from (run seed, step, row of the global batch), so a resumed run
draws the same views as an uninterrupted one, the number of workers never changes what is drawn, and a rank
that augments only its rows [lo, hi) of the batch (sharded input) draws exactly what one process draws for them.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .window import Schedule
from . import Batch
from .augment import Recipe, torchvision_transform
from .sources import BadImageError, ImageSet


def step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7_919 + 0x5EED) % (2**63 - 1)


def row_seed(seed: int, step: int, row: int) -> int:
    """The torch seed of row ``row`` of batch ``step`` (a hash: nearby rows and steps get unrelated streams)."""
    return int(np.random.SeedSequence([int(seed), int(step), int(row), 0x70C1]).generate_state(1, np.uint64)[0]) >> 1


class _Steps(Dataset):
    def __init__(self, images: ImageSet, schedule: Schedule, B: int, large: Recipe, small: Recipe | None,
                 views: int, small_views: int, seed: int, on_bad_image: str, rows: tuple[int, int]):
        self.images, self.schedule, self.B, self.rows = images, schedule, B, rows
        self.large, self.small = torchvision_transform(large), (torchvision_transform(small) if small else None)
        self.views, self.small_views, self.seed, self.on_bad = views, small_views, seed, on_bad_image

    def __len__(self) -> int:  # pragma: no cover - the sampler bounds it
        return 2**62

    def __getitem__(self, step: int) -> Batch:
        index = torch.from_numpy(self.schedule.batch(step, self.B))  # (B,) the global batch
        lo, hi = self.rows
        keep, large, small = [], [[] for _ in range(self.views)], [[] for _ in range(self.small_views)]
        with torch.random.fork_rng(devices=[]):
            for n in range(lo, hi):  # this rank's rows only
                try:
                    img = self.images.load(int(index[n]))
                except BadImageError:
                    if self.on_bad == "error":
                        raise
                    continue
                keep.append(n)
                torch.manual_seed(row_seed(self.seed, step, n))
                for v in range(self.views):
                    large[v].append(self.large(img))
                for v in range(self.small_views):
                    small[v].append(self.small(img))
        if not keep:
            raise BadImageError(str(index[lo:hi].tolist()), "every image of the batch failed to decode")
        skipped = (hi - lo) - len(keep)
        if skipped:  # one process only (build_loader refuses skip with several ranks): the batch shrinks
            index = index[keep]
            lo, hi = 0, len(keep)
        return Batch([torch.stack(v) for v in large], index, step, [torch.stack(v) for v in small], skipped,
                     rows=(lo, hi))


def _identity(b):
    return b


class TorchvisionLoader:
    """Iterates ``Batch`` for steps ``[start_step, end_step)``; ``rows`` (lo, hi): the rows of each global
    batch this rank reads and augments (default all). ``device``: where the batches go; for CUDA they come in
    pinned memory (``pin_memory``), so ``Batch.to`` copies them asynchronously."""

    name = "torchvision"

    def __init__(self, images: ImageSet, schedule: Schedule, B: int, large: Recipe, small: Recipe | None = None,
                 views: int = 1, small_views: int = 0, seed: int = 0, workers: int = 0,
                 on_bad_image: str = "error", rows: tuple[int, int] | None = None,
                 device: torch.device | str | None = None):
        self.ds = _Steps(images, schedule, B, large, small, views, small_views if small else 0, seed, on_bad_image,
                         rows or (0, B))
        self.workers = workers
        self.pin_memory = device is not None and torch.device(device).type == "cuda"

    def data_loader(self, start_step: int, end_step: int) -> DataLoader:
        """The worker processes' DataLoader over steps [start_step, end_step) (``workers`` > 0)."""
        return DataLoader(self.ds, batch_size=None, sampler=range(start_step, end_step), num_workers=self.workers,
                          collate_fn=_identity, prefetch_factor=4, persistent_workers=False,
                          pin_memory=self.pin_memory)

    def iterate(self, start_step: int, end_step: int):
        if self.workers == 0:
            for s in range(start_step, end_step):
                # pinned here too: the copy then overlaps the augmentation of the next batch
                yield self.ds[s].pin_memory() if self.pin_memory else self.ds[s]
            return
        yield from self.data_loader(start_step, end_step)

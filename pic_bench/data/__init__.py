"""Loaders that all yield the same ``Batch``: the views and the true instance indices, in scheduler order.

Sharded input: with ``shard=(rank, world)`` a loader reads, decodes and augments only rows ``[lo, hi)`` of
each global batch of B (``shard_rows``), with exactly the random draws those rows get in one process, so the
ranks' views concatenated in rank order are the single-process batch bit for bit. The batch still carries all
B instance indices (the recent-negatives ring must see the global batch) and names its rows (``Batch.rows``).

Holds the sources (``sources``), the window scheduler, the paper's *data* scheduler (``window``), the loaders
(``loaders``, ``torchvision_loader``, ``batched``, ``dali``), augmentation (``augment``) and the decode check of
every image before training (``probe``).

May import: ``pic_bench.config``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


def shard_rows(B: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of a global batch of B that rank ``rank`` of ``world`` reads (``DataParallel.shard``'s)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not one of {world} ranks")
    if B % world:
        raise ValueError(f"the global batch ({B} images) does not split over {world} ranks: "
                         f"set optim.batch_size to a multiple of {world}")
    b = B // world
    return rank * b, (rank + 1) * b


@dataclass
class Batch:
    """One training batch (this rank's rows of it when the loader is sharded).

    Attributes:
        views: list of (b, C, H, W) float tensors, the large views (each trains w), rows ``rows`` of the global
            batch (b = hi - lo; b = B in one process).
        index: (B,) int64, the true instance index of every image of the GLOBAL batch: position in the
            scheduler's stream, carried from the scheduler to the loss (never rebuilt with an arange).
        small_views: list of (b, C, h, w) float tensors, extra small crops (multi-crop; do not train w).
        step: the global step this batch belongs to.
        skipped: images that failed to decode and were replaced (data.on_bad_image=skip), counted for the row.
        rows: (lo, hi), the rows of ``index`` that the views hold (default: all of them).
        host_index: (B,) int64 on the host, ``index`` as the loader made it (kept by ``to``): what the recent-
            negatives ring reads on the host instead of waiting for the device (None: ``index`` is on the host).
    """

    views: list[torch.Tensor]
    index: torch.Tensor
    step: int
    small_views: list[torch.Tensor] = field(default_factory=list)
    skipped: int = 0
    rows: tuple[int, int] | None = None
    host_index: torch.Tensor | None = None

    def __post_init__(self):
        if self.rows is None:
            self.rows = (0, int(self.index.numel()))

    def _map(self, fn) -> "Batch":
        host = self.host_index if self.host_index is not None else \
            (self.index if self.index.device.type == "cpu" else None)
        return Batch([fn(v) for v in self.views], fn(self.index), self.step, [fn(v) for v in self.small_views],
                     self.skipped, self.rows, host)

    def pin_memory(self) -> "Batch":
        """The batch in page-locked memory (what DataLoader(pin_memory=True) calls on each batch it yields)."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device) -> "Batch":
        """The batch on ``device``; to CUDA without a host sync: a host tensor not in page-locked memory (the
        DALI and batched loaders' index from ``torch.from_numpy``, any unpinned view) is pinned first (a host
        copy, from torch's caching host allocator), then copied asynchronously. From pageable memory CUDA waits
        for the stream's queued work before it copies: a blocking copy every step."""
        device = torch.device(device)
        if device.type != "cuda":
            return self._map(lambda t: t.to(device))

        def move(t: torch.Tensor) -> torch.Tensor:
            if t.device.type == "cpu" and not t.is_pinned():
                t = t.pin_memory()
            return t.to(device, non_blocking=True)

        return self._map(move)

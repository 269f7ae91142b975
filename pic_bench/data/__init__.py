"""Loaders that all yield the same ``Batch``: the views and the true instance indices, in scheduler order."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Batch:
    """One training batch.

    Attributes:
        views: list of (B, C, H, W) float tensors, the large views (each trains w).
        index: (B,) int64, the true instance index of every image: position in the scheduler's stream,
            carried from the scheduler to the loss (never rebuilt with an arange).
        small_views: list of (B, C, h, w) float tensors, extra small crops (multi-crop; do not train w).
        step: the global step this batch belongs to.
        skipped: images that failed to decode and were replaced (data.on_bad_image=skip), counted for the row.
    """

    views: list[torch.Tensor]
    index: torch.Tensor
    step: int
    small_views: list[torch.Tensor] = field(default_factory=list)
    skipped: int = 0

    def to(self, device: torch.device) -> "Batch":
        nb = device.type == "cuda"
        return Batch([v.to(device, non_blocking=nb) for v in self.views], self.index.to(device, non_blocking=nb),
                     self.step, [v.to(device, non_blocking=nb) for v in self.small_views], self.skipped)

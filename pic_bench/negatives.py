"""Recent negative sampling: the candidate rows U of the softmax are the K most recently visited instances.

"Recently visited" is by position in the scheduler's stream, the current batch included. The last K positions
may name an instance twice (an image at the end of one window and the start of the next), so U is their
distinct set (|U| <= K). The ring is rebuilt from the scheduler on resume (``refill``): it is derived state,
not a fourth place where state lives.
"""
from __future__ import annotations

import numpy as np
import torch

from .window import Schedule


class RecentNegatives:
    def __init__(self, N: int, K: int, device: torch.device):
        """K = 0 (or K >= N with every instance seen) means all N instances."""
        self.N, self.K, self.device = N, K, device
        self.full = K == 0
        if not self.full:
            self.ring = torch.full((K,), -1, dtype=torch.long, device=device)
            self.count = 0  # positions written so far (saturates meaning at K)

    def push(self, index: torch.Tensor) -> None:
        """Records the batch's instance indices (B,) as the most recent visits."""
        if self.full:
            return
        B = index.numel()
        take = index[-self.K:] if B > self.K else index  # only the last K can survive
        first = self.count + B - take.numel()
        self.ring[(first + torch.arange(take.numel(), device=self.device)) % self.K] = take
        self.count += B

    def select(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pushes the batch, then returns (U, target).

        Args:
            index: (B,) int64 instance indices of the batch.
        Returns:
            U: (|U|,) int64 distinct instance indices whose rows enter the softmax (sorted).
            target: (B,) int64 position of each index[i] in U.
        """
        if self.full:
            return torch.arange(self.N, device=self.device), index
        self.push(index)
        valid = self.ring if self.count >= self.K else self.ring[: self.count]
        U, inv = torch.unique(valid, sorted=True, return_inverse=True)
        B = index.numel()
        if B >= self.K:  # the ring holds only (the end of) this batch
            return U, torch.searchsorted(U, index)
        pos = (self.count - B + torch.arange(B, device=self.device)) % self.K  # the batch's slots
        return U, inv[pos]

    def refill(self, schedule: Schedule, positions_done: int) -> None:
        """Restores the ring as it was after ``positions_done`` stream positions (for resume)."""
        if self.full:
            return
        start = max(0, positions_done - self.K)
        recent = schedule.positions(start, positions_done - start)
        self.ring.fill_(-1)
        self.count = 0
        if len(recent):
            # Write as if pushed in order so that slot positions match an uninterrupted run.
            self.count = start
            self.push(torch.from_numpy(np.ascontiguousarray(recent)).to(self.device))

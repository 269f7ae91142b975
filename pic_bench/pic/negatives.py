"""Recent negative sampling: the candidate rows U of the softmax are the K most recently visited instances.

Two readings of "the K most recently visited instances" (``pic.recent``):

- ``instances`` (the default; the paper's wording): the K most recently visited *distinct* instances, the
  current batch included. Once K distinct instances have been seen, |U| = K exactly. The ring holds K instance
  ids with the stream position of their last visit, newest first. A step merges the ring with the batch
  (K + B candidates), keeps each id's latest visit (a stable sort of the candidates by id) and keeps the K
  latest (top-k by last visit; positions are unique, so there are no ties). Nothing is O(N), per step or in
  memory, and once full every shape is fixed (no host sync on a GPU).
- ``positions`` (what every row before ``pic.recent`` existed ran): the distinct instances among the last K
  *stream positions*. The last K positions may name an instance twice (the windows overlap by D - S), so
  |U| <= K, and well below K when K > D / 2 (measured: |U| / K ~ 0.56 at K = 2 D). |U| changes from step to
  step; it is counted on the host (a mirror of the ring's ids from ``Batch.host_index``, with how often each id
  is held: 4 N bytes), so the device never has to report it (``unique_known``, not ``torch.unique``).

U is returned sorted and distinct (``head`` and ``update`` rely on it: K = N gives every row in order), and
``target[i]`` is the position of the batch's i-th instance in U. K must be at least the batch (otherwise the
batch's own instances cannot all be in U). K = 0 means all N instances.

The ring is rebuilt from the scheduler on resume (``refill``): it is derived state, not a fourth place where
state lives. |U| per step (sum, min, max over the steps, plain ints: |U| is known on the host without a sync)
is kept as a meter (``U_meters`` / ``load_U_meters``) for the result row.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.window import Schedule

RECENT = ("instances", "positions")


def unique_known(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(x, sorted=True, return_inverse=True)`` when the number of distinct values ``n`` is known on
    the host: fixed shapes only, so no host sync on a GPU (torch.unique waits for the device to learn its size).

    Args: x: (M,) int64; n: its number of distinct values. Returns: U (n,) sorted distinct, inv (M,) with
    U[inv] == x."""
    s, order = torch.sort(x)  # (M,)
    first = torch.ones_like(s, dtype=torch.bool)
    first[1:] = s[1:] != s[:-1]
    rank = torch.cumsum(first, 0) - 1  # (M,) position of each sorted value in U
    U = torch.empty(n, dtype=x.dtype, device=x.device).scatter_(0, rank, s)  # equal values write alike
    inv = torch.empty_like(rank).scatter_(0, order, rank)  # (M,)
    return U, inv


class RecentNegatives:
    def __init__(self, N: int, K: int, device: torch.device, recent: str = "instances"):
        """K = 0 (or K >= N with every instance seen) means all N instances."""
        if recent not in RECENT:
            raise ValueError(f"RecentNegatives: recent must be one of {list(RECENT)}, got {recent!r}")
        self.N, self.K, self.device, self.recent = N, K, device, recent
        self.full = K == 0
        self.count = 0  # stream positions pushed so far
        self.U_steps, self.U_sum, self.U_min, self.U_max = 0, 0, None, None
        if self.full:
            return
        self.ring = torch.full((K,), -1, dtype=torch.long, device=device)
        if recent == "instances":
            self.ring_t = torch.full((K,), -1, dtype=torch.long, device=device)  # last visit of each ring id
            self.n = 0  # distinct ids held (< K only until the ring first fills; then K for good)
        else:  # the ring's ids on the host too, with how often each is held: |U| known without the device
            self.host_ring = np.full(K, -1, dtype=np.int64)
            self.held = np.zeros(N, dtype=np.int32)  # copies of each id in the ring (4 N bytes on the host)
            self.distinct = 0  # ids with held > 0: |U|

    # ---- positions: the last K stream positions
    def push(self, index: torch.Tensor, host_index: torch.Tensor | None = None) -> None:
        """Records the batch's instance indices (B,) as the most recent visits (``host_index``: the same on the
        host, if ``index`` is not; without it a device index is copied to the host, which waits for the device)."""
        if self.full:
            return
        if self.recent == "instances":
            self._merge(index)
            return
        B = index.numel()
        take = index[-self.K:] if B > self.K else index  # only the last K can survive
        first = self.count + B - take.numel()
        self.ring[(first + torch.arange(take.numel(), device=self.device)) % self.K] = take
        slots = (first + np.arange(take.numel())) % self.K  # the same slots, on the host
        host = (host_index if host_index is not None else index).cpu().numpy()
        self._hold(slots, host[-self.K:] if B > self.K else host)
        self.count += B

    def _hold(self, slots: np.ndarray, ids: np.ndarray) -> None:
        """The host mirror: ``ids`` replace the ring's ``slots``; ``distinct`` follows (O(B), never O(N) or K)."""
        out = self.host_ring[slots]
        out = out[out >= 0]
        touched = np.unique(np.concatenate([out, ids]))
        before = int((self.held[touched] > 0).sum())
        np.subtract.at(self.held, out, 1)
        np.add.at(self.held, ids, 1)
        self.host_ring[slots] = ids
        self.distinct += int((self.held[touched] > 0).sum()) - before

    # ---- instances: the K most recently visited distinct instances
    def _merge(self, index: torch.Tensor) -> None:
        B = index.numel()
        # Candidates in increasing time of visit: the ring oldest first (empty slots, time -1, come first), then
        # the batch in stream order. A stable sort by id keeps that order among equal ids, so the last of each
        # run of equal ids is that id's latest visit.
        ids = torch.cat([self.ring.flip(0), index])  # (K + B,)
        t = torch.cat([self.ring_t.flip(0), self.count + torch.arange(B, device=self.device)])  # (K + B,)
        ids, order = torch.sort(ids, stable=True)
        t = t[order]
        last = torch.ones_like(ids, dtype=torch.bool)
        last[:-1] = ids[1:] != ids[:-1]
        key = torch.where(last & (ids >= 0), t, -1)  # (K + B,) one candidate per distinct id
        top = torch.topk(key, self.K)  # newest first; evicts the oldest distinct ids
        self.ring_t = top.values
        self.ring = torch.where(top.values >= 0, ids[top.indices], -1)
        self.count += B
        if self.n < self.K:  # host sync only until the ring first fills
            self.n = int((top.values >= 0).sum())

    def select(self, index: torch.Tensor, host_index: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pushes the batch, then returns (U, target), without a host sync when the index's host copy is given.

        Args:
            index: (B,) int64 instance indices of the batch.
            host_index: the same on the host (``Batch.host_index``), or None when ``index`` is there.
        Returns:
            U: (|U|,) int64 distinct instance indices whose rows enter the softmax (sorted).
            target: (B,) int64 position of each index[i] in U.
        """
        B = index.numel()
        if self.full:
            self._meter(self.N)
            return torch.arange(self.N, device=self.device), index
        if self.K < B:
            raise ValueError(f"RecentNegatives: K={self.K} is smaller than the batch (B={B}); the batch's own "
                             "instances must all be among the K recent ones")
        self.push(index, host_index)
        if self.recent == "instances":
            U = (self.ring if self.n == self.K else self.ring[: self.n]).sort().values  # (|U|,)
            self._meter(U.numel())
            return U, torch.searchsorted(U, index)
        valid = self.ring if self.count >= self.K else self.ring[: self.count]
        U, inv = unique_known(valid, self.distinct)
        self._meter(U.numel())
        if B == self.K:  # the ring holds only this batch
            return U, torch.searchsorted(U, index)
        pos = (self.count - B + torch.arange(B, device=self.device)) % self.K  # the batch's slots
        return U, inv[pos]

    def refill(self, schedule: Schedule, positions_done: int) -> None:
        """Restores the ring as it was after ``positions_done`` stream positions (for resume)."""
        if self.full:
            return
        self.ring.fill_(-1)
        self.count = 0
        if self.recent == "instances":
            self._refill_instances(schedule, positions_done)
            return
        self.host_ring.fill(-1)
        self.held[:] = 0
        self.distinct = 0
        start = max(0, positions_done - self.K)
        recent = schedule.positions(start, positions_done - start)
        if len(recent):
            # Write as if pushed in order so that slot positions match an uninterrupted run.
            self.count = start
            host = torch.from_numpy(np.ascontiguousarray(recent, dtype=np.int64))
            self.push(host.to(self.device), host)

    def lookback(self, P: int) -> int:
        """The first stream position ``refill(schedule, P)`` usually reads (the checkpoint keeps the scheduler's
        state from there). positions: exactly P - K. instances: two of its walk-back chunks, which hold K distinct
        ids unless the stream repeats itself heavily; a deeper walk stays exact, the official scheduler then
        replays from an earlier saved state."""
        if self.full:
            return P
        if self.recent == "instances":
            return max(0, P - 2 * max(2 * self.K, 1024))
        return max(0, P - self.K)

    def _refill_instances(self, schedule: Schedule, P: int) -> None:
        """Walks the stream back from position P until K distinct ids (or all N, or the stream's start)."""
        want = min(self.K, self.N)
        chunk = max(2 * self.K, 1024)
        ids: list[np.ndarray] = []
        times: list[np.ndarray] = []
        seen = np.zeros(0, dtype=np.int64)
        end = P
        while end > 0 and len(seen) < want:
            start = max(0, end - chunk)
            block = np.asarray(schedule.positions(start, end - start), dtype=np.int64)[::-1]  # newest first
            u, first = np.unique(block, return_index=True)  # each id's latest visit inside the block
            new = ~np.isin(u, seen)
            ids.append(u[new])
            times.append(end - 1 - first[new])
            seen = np.concatenate([seen, u[new]])
            end = start
        self.count = P
        self.ring_t.fill_(-1)
        self.n = 0
        if not ids:
            return
        all_ids, all_t = np.concatenate(ids), np.concatenate(times)
        order = np.argsort(-all_t)[: self.K]  # newest first, as the step keeps them
        n = len(order)
        self.ring[:n] = torch.from_numpy(all_ids[order]).to(self.device)
        self.ring_t[:n] = torch.from_numpy(all_t[order]).to(self.device)
        self.n = n

    # ---- |U| per step, for the result row
    def _meter(self, size: int) -> None:
        self.U_steps += 1
        self.U_sum += size
        self.U_min = size if self.U_min is None else min(self.U_min, size)
        self.U_max = size if self.U_max is None else max(self.U_max, size)

    def U_meters(self) -> dict[str, int | None]:
        return {"U_steps": self.U_steps, "U_sum": self.U_sum, "U_min": self.U_min, "U_max": self.U_max}

    def load_U_meters(self, m: dict[str, int | None]) -> None:
        self.U_steps, self.U_sum, self.U_min, self.U_max = m["U_steps"], m["U_sum"], m["U_min"], m["U_max"]

    def U_summary(self) -> dict[str, float | None]:
        """Row metrics: mean, min and max of |U| over the steps taken (None before any step)."""
        mean = self.U_sum / self.U_steps if self.U_steps else None
        return {"U_mean": mean, "U_min": self.U_min, "U_max": self.U_max}

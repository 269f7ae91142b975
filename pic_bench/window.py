"""Data schedulers: the order in which instances are visited. Pure numpy, seeded, random access by position.

Three schedulers share one interface: ``window(t)`` is the visiting order of window ``t`` (an int64 array of
length ``L``, the window length), and the stream of instance indices is the concatenation of windows 0, 1, 2, ...
A batch is positions ``[step * B, (step + 1) * B)`` of that stream, so a loader needs only the global step to
know exactly which instances come next (resume = remember the step).

- ``SlidingWindow`` (the paper): a fixed seeded permutation ``pi`` of the N instances; window ``t`` holds
  ``pi[(t * S + j) mod N]`` for ``j < D``, visited in a fresh seeded random order. Consecutive windows overlap by
  ``D - S`` instances, so an image is visited about every D samples rather than every N.
  Our interpretation where the paper is silent: ``pi`` is drawn once and kept (reshuffling it when the window
  wraps would break the ``D - S`` overlap at the wrap); the order inside a window is a fresh permutation of it.
- ``EpochOrder``: every instance once per window of length N, freshly shuffled per epoch (window = epoch).
- ``OfficialWindow``: bl0/PIC's ``SubsetSlidingWindowSampler`` as it behaves. Its modulus is the window length,
  so every window is drawn from the first D entries of its index list; the start index cycles through
  multiples of S modulo D without moving what is drawn. With ``shuffle_per_epoch`` (scripts/PIC.sh sets it)
  the whole list is reshuffled before every window whose start index is not 0, so those windows are fresh
  random D-subsets of all N; without it, training only ever sees the same D images.
"""
from __future__ import annotations

import numpy as np


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


class Schedule:
    """A stream of instance indices made of windows of equal length ``L``."""

    N: int
    L: int

    def window(self, t: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def positions(self, start: int, count: int) -> np.ndarray:
        """Instance indices at stream positions ``[start, start + count)``, (count,) int64."""
        out = np.empty(count, dtype=np.int64)
        filled = 0
        while filled < count:
            t, off = divmod(start + filled, self.L)
            take = min(self.L - off, count - filled)
            out[filled:filled + take] = self.window(t)[off:off + take]
            filled += take
        return out

    def batch(self, step: int, B: int) -> np.ndarray:
        """Instance indices of batch ``step`` (B,) int64."""
        return self.positions(step * B, B)


class SlidingWindow(Schedule):
    def __init__(self, N: int, D: int, S: int, seed: int):
        if not 0 < S <= D:
            raise ValueError(f"need 0 < S <= D, got D={D}, S={S}")
        self.N, self.D, self.S, self.seed = N, min(D, N), S, seed
        self.L = self.D
        self.pi = _rng(seed, 0x51DE).permutation(N)
        self._cache: tuple[int, np.ndarray] | None = None

    def members(self, t: int) -> np.ndarray:
        """The D instances of window t, in permutation order (not visiting order)."""
        return self.pi[(t * self.S + np.arange(self.D)) % self.N]

    def window(self, t: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != t:
            m = self.members(t)
            self._cache = (t, m[_rng(self.seed, 0x0DE5, t).permutation(self.D)])
        return self._cache[1]


class EpochOrder(Schedule):
    def __init__(self, N: int, seed: int):
        self.N, self.L, self.seed = N, N, seed
        self._cache: tuple[int, np.ndarray] | None = None

    def window(self, t: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != t:
            self._cache = (t, _rng(self.seed, 0xE90C, t).permutation(self.N))
        return self._cache[1]


class OfficialWindow(Schedule):
    """bl0/PIC ``contrast/data/sampler.py`` behaviour, reproduced with a seeded generator.

    Its state is sequential (the index list is shuffled in place), so windows are generated in order and the
    latest is cached; asking for an earlier window replays from the start.
    """

    def __init__(self, N: int, D: int, S: int, seed: int, shuffle_per_epoch: bool = True):
        self.N, self.D, self.S, self.seed, self.shuffle = N, min(D, N), S, seed, shuffle_per_epoch
        self.L = self.D
        self._reset()

    def _reset(self) -> None:
        self._gen = _rng(self.seed, 0x0FF1)
        self._indices = np.arange(self.N)
        self._gen.shuffle(self._indices)
        self._start = 0
        self._t = -1
        self._current = np.empty(0, dtype=np.int64)

    def _advance(self) -> None:
        # One call of the official sampler's __iter__.
        if self.shuffle and self._start + self.D > self.D:  # i.e. start > 0: len(sampler) is the window size
            self._gen.shuffle(self._indices)
        pos = np.mod(np.arange(self.D) + self._start, self.D)  # the modulus is D, not N: never slides
        w = self._indices[pos].copy()
        self._gen.shuffle(w)
        self._start = (self._start + self.S) % self.D
        self._t += 1
        self._current = w

    def window(self, t: int) -> np.ndarray:
        if t < self._t:
            self._reset()
        while self._t < t:
            self._advance()
        return self._current


def make_schedule(kind: str, N: int, D: int, S: int, seed: int, official_shuffle: bool = True) -> Schedule:
    if kind == "sliding":
        return SlidingWindow(N, D, S, seed)
    if kind == "epoch":
        return EpochOrder(N, seed)
    if kind == "official":
        return OfficialWindow(N, D, S, seed, official_shuffle)
    raise ValueError(f"unknown scheduler '{kind}' (sliding | epoch | official)")


def visit_distances(order: np.ndarray, N: int) -> np.ndarray:
    """Distances (in samples) between consecutive visits of the same instance along a stream, all instances."""
    last = np.full(N, -1, dtype=np.int64)
    pos = np.arange(len(order), dtype=np.int64)
    # Process in order; vectorised per chunk would double-count repeats inside a chunk, so do it exactly.
    out = []
    for start in range(0, len(order), 1 << 16):
        chunk = order[start:start + (1 << 16)]
        p = pos[start:start + (1 << 16)]
        # Within a chunk, an instance can repeat only if the chunk is longer than the revisit distance.
        _, first = np.unique(chunk, return_index=True)
        if len(first) == len(chunk):
            prev = last[chunk]
            seen = prev >= 0
            out.append(p[seen] - prev[seen])
            last[chunk] = p
        else:
            for i, j in zip(p, chunk):
                if last[j] >= 0:
                    out.append(np.array([i - last[j]]))
                last[j] = i
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

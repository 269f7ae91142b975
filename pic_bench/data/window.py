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
  So the window holds the same images at the same point of every sweep, and a loss curve can repeat once a sweep
  (``suite.curve_ends`` compares an end with the same window one sweep earlier).
- ``EpochOrder``: every instance once per window of length N, freshly shuffled per epoch (window = epoch).
- ``OfficialWindow``: bl0/PIC's ``SubsetSlidingWindowSampler`` as it behaves. Its modulus is the window length,
  so every window is drawn from the first D entries of its index list; the start index cycles through
  multiples of S modulo D without moving what is drawn. With ``shuffle_per_epoch`` (scripts/PIC.sh sets it)
  the whole list is reshuffled before every window whose start index is not 0, so those windows are fresh
  random D-subsets of all N; without it, training only ever sees the same D images.

Regime (issue 19). ``regime(schedule, samples)`` gives the figures a run's stream trains in, from the scheduler
alone: sweeps of the data by the window, share of images never visited, share of samples that are a first visit,
when first visits end, mean revisit distance in units of D; exact and about a second at ImageNet size for the
sliding window. ``window_returns`` counts visits that come back after a whole window away (the correction's case).

State. Sliding and epoch orders are pure functions of (seed, t): random access costs one permutation of a
window. The official sampler is sequential (its index list is reshuffled in place), so ``OfficialWindow``
keeps what random access needs: the last windows it produced (about ``keep_samples`` positions, so a loader's
look-ahead followed by its first batch draws nothing again) and its state before each of the latest windows
(generator state, index list, start index). ``state_dict(first)`` returns the state from which every position
``>= first`` is reached without replaying from window 0; a checkpoint stores it and a resumed run loads it, so
the first batch of a segment at window 60 costs one or two windows' draws instead of 61. Asking for a window
earlier than every kept state still replays from window 0 (correct, only slow).
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

    kind = ""

    def _settings(self) -> dict:
        return {"scheduler": self.kind, "N": self.N, "L": self.L, "seed": self.seed}

    def state_dict(self, first: int = 0) -> dict:
        """What a checkpoint keeps so that positions ``>= first`` are reached without a replay; for the
        stateless schedulers only their settings (checked on load)."""
        return self._settings()

    def load_state_dict(self, sd: dict) -> None:
        """Restores ``state_dict``'s state; refuses one from a scheduler with other settings."""
        mine = self._settings()
        theirs = {k: sd.get(k) for k in mine}
        if theirs != mine:
            diff = ", ".join(f"{k}: saved {theirs[k]!r}, now {mine[k]!r}" for k in mine if theirs[k] != mine[k])
            raise ValueError(f"the checkpoint's scheduler state does not belong to this scheduler ({diff})")


class SlidingWindow(Schedule):
    kind = "sliding"

    def __init__(self, N: int, D: int, S: int, seed: int):
        if not 0 < S <= D:
            raise ValueError(f"need 0 < S <= D, got D={D}, S={S}")
        self.N, self.D, self.S, self.seed = N, min(D, N), S, seed
        self.L = self.D
        self.pi = _rng(seed, 0x51DE).permutation(N)
        self._cache: tuple[int, np.ndarray] | None = None

    def _settings(self) -> dict:
        return {**super()._settings(), "S": self.S}

    def members(self, t: int) -> np.ndarray:
        """The D instances of window t, in permutation order (not visiting order)."""
        return self.pi[(t * self.S + np.arange(self.D)) % self.N]

    def window(self, t: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != t:
            m = self.members(t)
            self._cache = (t, m[_rng(self.seed, 0x0DE5, t).permutation(self.D)])
        return self._cache[1]


class EpochOrder(Schedule):
    kind = "epoch"

    def __init__(self, N: int, seed: int):
        self.N, self.L, self.seed = N, N, seed
        self._cache: tuple[int, np.ndarray] | None = None

    def window(self, t: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != t:
            self._cache = (t, _rng(self.seed, 0xE90C, t).permutation(self.N))
        return self._cache[1]


class OfficialWindow(Schedule):
    """bl0/PIC ``contrast/data/sampler.py`` behaviour, reproduced with a seeded generator.

    Its state is sequential (the index list is shuffled in place), so windows are generated in order. Kept for
    random access: the outputs of the latest windows (``keep_samples`` positions, at least two windows) and the
    state before each of the latest ``keep_states`` windows (O(N) each), plus a state loaded from a checkpoint.
    A window is served from the kept outputs, else regenerated from the latest kept state before it, else
    replayed from window 0 (``replays`` counts those).
    """

    kind = "official"

    def __init__(self, N: int, D: int, S: int, seed: int, shuffle_per_epoch: bool = True,
                 keep_samples: int = 1 << 22, keep_states: int = 3):
        self.N, self.D, self.S, self.seed, self.shuffle = N, min(D, N), S, seed, shuffle_per_epoch
        self.L = self.D
        self.keep_windows = max(2, -(-keep_samples // self.L))
        self.keep_states = max(2, keep_states)
        self._windows: dict[int, np.ndarray] = {}  # t -> visiting order of window t (the latest ones)
        self._states: dict[int, dict] = {}  # t -> the sampler's state before window t was drawn
        self._loaded: dict | None = None  # the state from a checkpoint (never evicted)
        self.replays = 0  # times a window had to be replayed from window 0
        self._reset()

    def _settings(self) -> dict:
        return {**super()._settings(), "S": self.S, "shuffle_per_epoch": self.shuffle}

    def _reset(self) -> None:
        self._gen = _rng(self.seed, 0x0FF1)
        self._indices = np.arange(self.N)
        self._gen.shuffle(self._indices)
        self._start = 0
        self._t = -1  # the latest window drawn from the current state

    def _state(self) -> dict:
        """The state before window ``self._t + 1`` (the index list copied: the next window shuffles it)."""
        return {"t": self._t + 1, "gen": self._gen.bit_generator.state, "indices": self._indices.copy(),
                "start": self._start}

    def _restore(self, st: dict) -> None:
        self._gen.bit_generator.state = st["gen"]
        self._indices = np.array(st["indices"], dtype=np.int64)  # a copy: the kept state stays as it was
        self._start = int(st["start"])
        self._t = int(st["t"]) - 1

    def _keep(self, store: dict, t: int, value, limit: int) -> None:
        store[t] = value
        while len(store) > limit:
            del store[min(store)]  # the earliest goes: loaders move forward and look back a little

    def _advance(self) -> None:
        # One call of the official sampler's __iter__.
        self._keep(self._states, self._t + 1, self._state(), self.keep_states)
        if self.shuffle and self._start + self.D > self.D:  # i.e. start > 0: len(sampler) is the window size
            self._gen.shuffle(self._indices)
        pos = np.mod(np.arange(self.D) + self._start, self.D)  # the modulus is D, not N: never slides
        w = self._indices[pos].copy()
        self._gen.shuffle(w)
        self._start = (self._start + self.S) % self.D
        self._t += 1
        self._keep(self._windows, self._t, w, self.keep_windows)

    def _seek(self, t: int) -> None:
        """Puts the current state anywhere from which window ``t`` is drawn without passing window 0 again."""
        if self._t < t:
            return  # forward from here
        kept = [st for st in [*self._states.values(), self._loaded] if st is not None and st["t"] <= t]
        if kept:
            self._restore(max(kept, key=lambda st: st["t"]))
        else:
            self.replays += 1
            self._reset()

    def window(self, t: int) -> np.ndarray:
        w = self._windows.get(t)
        if w is not None:
            return w
        self._seek(t)
        while self._t < t:
            self._advance()
        return self._windows[t]

    def state_dict(self, first: int = 0) -> dict:
        """The state before the window holding stream position ``first`` (generator state, the index list of
        N entries, the start index): a run resumed from it reaches every position ``>= first`` without a
        replay from window 0."""
        t = max(0, first) // self.L
        if t not in self._states:
            if t == self._t + 1:
                self._keep(self._states, t, self._state(), self.keep_states)
            else:
                self._seek(t - 1) if t > 0 else self._reset()
                while self._t < t - 1:
                    self._advance()
                self._keep(self._states, t, self._state(), self.keep_states)
        st = self._states[t]
        return {**self._settings(), "t": st["t"], "gen": st["gen"], "indices": st["indices"].copy(),
                "start": st["start"]}

    def load_state_dict(self, sd: dict) -> None:
        super().load_state_dict(sd)
        st = {"t": int(sd["t"]), "gen": sd["gen"], "indices": np.asarray(sd["indices"], dtype=np.int64),
              "start": int(sd["start"])}
        if st["indices"].shape != (self.N,):
            raise ValueError(f"the checkpoint's official-scheduler state holds {st['indices'].shape} indices, "
                             f"expected ({self.N},)")
        self._loaded = st
        self._windows.clear()
        self._states.clear()
        self._restore(st)


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


# ---- the regime a schedule trains in (issue 19): figures of the stream alone, no training

REGIME_KEYS = ("sweeps", "never_visited", "first_visit_share", "first_visits_end", "revisit_distance_D")


def sweeps(schedule: Schedule, samples: int) -> float:
    """How many times the window has swept the data in ``samples`` stream positions.

    Sliding: the window moves S instances per window of D samples, so ``samples x S / (D x N)`` (= epochs x S / D,
    the issue's definition). Epoch order: one sweep per epoch, ``samples / N``. Official: its window does not slide
    (every window is a fresh random D-subset, or the same one without ``shuffle_per_epoch``); we count it as epoch
    order does, ``samples / N``.
    """
    if isinstance(schedule, SlidingWindow):
        return samples * schedule.S / (schedule.D * schedule.N)
    return samples / schedule.N


def regime(schedule: Schedule, samples: int) -> dict[str, float]:
    """The regime figures of the first ``samples`` positions of ``schedule``'s stream (one training run's).

    Returns ``{"sweeps", "never_visited", "first_visit_share", "first_visits_end", "revisit_distance_D"}``:

    - ``sweeps``: see ``sweeps``.
    - ``never_visited``: share of the N instances that no position of the stream visits.
    - ``first_visit_share``: share of the samples that are an instance's first visit (distinct visited / samples).
    - ``first_visits_end``: where the last first visit happens, as a fraction of training: (its position + 1) /
      samples (1.0 when new instances arrive to the last sample).
    - ``revisit_distance_D``: mean distance in samples between consecutive visits of one instance, over every
      revisit, divided by D (the window size; N for epoch order, whose window is the epoch). NaN without revisits.

    Exact, and fast at ImageNet scale: an instance's visits telescope, so the sum of its revisit distances is
    last - first position and the number of revisits is its visits - 1, summing to samples - distinct. Every window
    holds an instance at most once, so a window at a time fills first and last positions with array assignments.
    Random-access schedules (sliding, epoch) read windows forward only until every instance has been seen and
    backward from the end only until every visited instance's last visit is found (about 2 N / S windows for the
    sliding window, 2 for epoch order); the official sampler is sequential and is streamed once. ``regime_reference``
    is the plain per-sample loop it is tested against.
    """
    N, L = schedule.N, schedule.L
    first = np.full(N, -1, dtype=np.int64)
    last = np.full(N, -1, dtype=np.int64)
    T = -(-samples // L)  # windows touched, the last one possibly in part

    def part(t: int) -> tuple[np.ndarray, np.ndarray]:
        w = schedule.window(t)[:min(L, samples - t * L)]
        return w, t * L + np.arange(len(w), dtype=np.int64)

    sequential = isinstance(schedule, OfficialWindow)
    seen = 0
    for t in range(T):
        w, pos = part(t)
        new = first[w] < 0
        first[w[new]] = pos[new]
        seen += int(new.sum())
        if sequential:
            last[w] = pos
        elif seen == N:
            break
    if not sequential:
        found = 0
        for t in range(T - 1, -1, -1):
            w, pos = part(t)
            new = last[w] < 0
            last[w[new]] = pos[new]
            found += int(new.sum())
            if found == seen:
                break
    visited = first >= 0
    distinct = int(visited.sum())
    revisits = samples - distinct
    span = int((last[visited] - first[visited]).sum())
    D = schedule.D if isinstance(schedule, (SlidingWindow, OfficialWindow)) else N
    return {
        "sweeps": float(sweeps(schedule, samples)),
        "never_visited": float(1 - distinct / N),
        "first_visit_share": float(distinct / samples) if samples else float("nan"),
        "first_visits_end": float((first.max() + 1) / samples) if samples else float("nan"),
        "revisit_distance_D": float(span / revisits / D) if revisits else float("nan"),
    }


def regime_reference(order: np.ndarray, N: int, D: int) -> dict[str, float]:
    """``regime``'s figures (``sweeps`` left out: it is a property of the scheduler) by a plain loop over the
    stream ``order``, one sample at a time: the reference the fast path is tested against."""
    first: dict[int, int] = {}
    prev: dict[int, int] = {}
    distances = []
    last_first = -1
    for p, j in enumerate(order.tolist()):
        if j in prev:
            distances.append(p - prev[j])
        else:
            first[j] = p
            last_first = p
        prev[j] = p
    n = len(order)
    return {
        "never_visited": 1 - len(first) / N, "first_visit_share": len(first) / n,
        "first_visits_end": (last_first + 1) / n,
        "revisit_distance_D": (sum(distances) / len(distances) / D) if distances else float("nan"),
    }


def returns_after_leaving(order: np.ndarray, N: int, K: int) -> int:
    """How many visits of the stream ``order`` are of an instance that had left the K most recently visited
    distinct instances (at least K others were visited since its previous visit) and came back: the case the
    weight update correction exists for (its row left the softmax, the others kept training, it returns).

    Exact: a Fenwick tree over positions holds each instance's latest visit, so the distinct others visited since
    an instance's previous visit are the latest visits counted between the two positions. O(samples log samples)
    in Python: for checking a design at the small presets, not for ImageNet-size streams."""
    n = len(order)
    tree = [0] * (n + 1)

    def add(i: int, v: int) -> None:
        i += 1
        while i <= n:
            tree[i] += v
            i += i & -i

    def upto(i: int) -> int:  # latest visits at positions < i
        s = 0
        while i > 0:
            s += tree[i]
            i -= i & -i
        return s

    prev = np.full(N, -1, dtype=np.int64).tolist()
    returns = 0
    for p, j in enumerate(order.tolist()):
        q = prev[j]
        if q >= 0:
            if upto(p) - upto(q + 1) >= K:
                returns += 1
            add(q, -1)
        add(p, 1)
        prev[j] = p
    return returns


def window_returns(schedule: Schedule, samples: int) -> int:
    """How many visits in the first ``samples`` positions are of an instance that was outside at least one whole
    window since its previous visit (previous visit in window t, this one in a window after t + 1): it left the
    window and came back, the paper's case for the weight update correction. None at the ``small`` preset (0.63
    sweeps: an image leaves the window once and never returns); at ``scale`` about one visit in D / S per image.
    Epoch order (its window is the epoch) has none. Vectorised: the stream sorted by instance, stably."""
    order = schedule.positions(0, samples)
    pos = np.argsort(order, kind="stable")  # (samples,) positions grouped by instance, in stream order
    inst = order[pos]
    same = inst[1:] == inst[:-1]
    jump = pos[1:] // schedule.L - pos[:-1] // schedule.L
    return int((same & (jump > 1)).sum())

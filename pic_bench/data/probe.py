"""Finds unreadable images before any training: every file of the training instances and of the evaluation
split is decoded once, the way the evaluation decodes it (``ImageSet.load``).

Without it, an unreadable file in ``val/`` surfaces only at evaluation, after the whole training run, and is lost
with it. Our interpretation of ``data.on_bad_image``: ``error`` refuses the run before the first step, naming
every unreadable file (up to a few); ``skip`` lets it run, and the images the evaluation will leave out are
counted (``eval_skipped_images``, added to the row's ``skipped_images``). In-memory datasets have no files and
are not probed. Large folders are decoded by a thread pool (Pillow releases the GIL while decoding), so the
probe costs about one evaluation pass over the data, once per dataset: its result is cached beside the folder's
listing (``sources.read_facts``), and a multi-rank task splits it over its ranks before its process group exists.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

from .sources import BadImageError, ImageSet, Source, read_facts, write_facts

SERIAL_BELOW = 256  # files; below this a thread pool costs more than it saves


def _try(images: ImageSet, i: int) -> tuple[int, str] | None:
    try:
        images.load(i)
    except BadImageError as e:
        return i, str(e)
    return None


def unreadable(images: ImageSet, workers: int | None = None, shard: tuple[int, int] = (0, 1)
               ) -> list[tuple[str, str]]:
    """(path, reason) of every file of ``images`` that does not decode (empty for in-memory sets); ``shard``
    (rank, world): only files rank, rank + world, ... (every rank's shards together are the whole set)."""
    if not images.files:
        return []
    rank, world = shard
    idx = range(rank, len(images), world)
    if len(idx) < SERIAL_BELOW or workers == 1:
        found = [_try(images, i) for i in idx]
    else:
        with ThreadPoolExecutor(max_workers=workers or min(32, os.cpu_count() or 1)) as pool:
            found = list(pool.map(lambda i: _try(images, i), idx, chunksize=64))
    return [(images.files[i], why) for i, why in (f for f in found if f is not None)]


# ---- the probe's result, cached beside the folder's listing (``sources.read_facts``)
#
# Key: "probe:<sha256 of the set's file list, 16 hex>" for the whole set, with ":<rank>/<world>" for one rank's
# shard. Every rank of a multi-rank task probes its shard before the process group exists (``probe_shard``); the
# probe proper then finds all shards (or the whole set) in the cache and decodes only what is missing. A requeued
# segment, the evaluation task and reruns find the whole set's entry and decode nothing.

def _probe_key(images: ImageSet) -> str | None:
    root = getattr(images, "root", None)
    if not images.files or root is None:
        return None  # in-memory, or a set not from a listed folder: not cached
    return "probe:" + hashlib.sha256("\n".join(images.files).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _as_pairs(value) -> list[tuple[str, str]] | None:
    try:
        return [(str(p), str(w)) for p, w in value]
    except (TypeError, ValueError):
        return None


def _cached(images: ImageSet, key: str) -> list[tuple[str, str]] | None:
    """The whole set's unreadable files from the cache: its own entry, or every shard of one split of it."""
    facts = read_facts(images.root)
    whole = _as_pairs(facts.get(key)) if key in facts else None
    if whole is not None:
        return whole
    worlds = {k.rsplit("/", 1)[1] for k in facts if k.startswith(key + ":")}
    for w in sorted(worlds, key=lambda x: int(x) if x.isdigit() else 0):
        parts = [_as_pairs(facts.get(f"{key}:{r}/{w}")) for r in range(int(w) if w.isdigit() else 0)]
        if parts and all(p is not None for p in parts):
            found = [p for part in parts for p in part]
            if found:  # in set order, as one process finds them
                bad = {p for p, _ in found}
                at = {f: i for i, f in enumerate(images.files) if f in bad}
                found.sort(key=lambda pw: at.get(pw[0], -1))
            return found
    return None


def unreadable_cached(images: ImageSet, workers: int | None = None) -> list[tuple[str, str]]:
    """``unreadable(images)``, from the cache beside the folder's listing when it is there; kept there when not."""
    key = _probe_key(images)
    if key is None:
        return unreadable(images, workers)
    found = _cached(images, key)
    if found is None:
        found = unreadable(images, workers)
        write_facts(images.root, {key: [list(pw) for pw in found]})
    return found


def probe_shard(source: Source, rank: int, world: int, workers: int | None = None) -> None:
    """This rank's shard of the probe, cached (run by every rank before the process group exists: no rank waits
    in a collective while another decodes; never raises for a bad image, the probe proper reports them)."""
    for images in _splits(source):
        key = _probe_key(images)
        if key is None or _cached(images, key) is not None:
            continue
        write_facts(images.root, {f"{key}:{rank}/{world}": [list(pw) for pw in unreadable(images, workers,
                                                                                              (rank, world))]})


def _splits(source: Source) -> list[ImageSet]:
    same = source.test is source.train or (source.test.files and source.test.files == source.train.files)
    return [source.train] if same else [source.train, source.test]


def probe(source: Source, on_bad_image: str, workers: int | None = None) -> dict[str, int]:
    """Decodes every file of ``source.train`` and ``source.test`` (or finds the result cached beside the folder's
    listing: ``unreadable_cached``). Returns the count of unreadable ones per split; raises ``BadImageError``
    naming them when ``on_bad_image`` is not 'skip'."""
    bad = {"train": unreadable_cached(source.train, workers)}
    same = source.test is source.train or (source.test.files and source.test.files == source.train.files)
    bad["val"] = bad["train"] if same else unreadable_cached(source.test, workers)  # no val/: train is evaluated
    if on_bad_image != "skip":
        found = [(split, path, why) for split, items in bad.items() for path, why in items]
        if found:
            split, path, why = found[0]
            more = "; ".join(f"{p}" for _, p, _ in found[1:6]) + (" ..." if len(found) > 6 else "")
            raise BadImageError(path, f"{why.split(': ', 1)[-1]} (found in {split}/ before training: "
                                      f"{len(found)} unreadable image(s)" + (f", also {more}" if more else "")
                                + "; fix or remove them, or set data.on_bad_image=skip to leave them out)")
    return {split: len(items) for split, items in bad.items()}

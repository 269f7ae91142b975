"""Finds unreadable images before any training: every file of the training instances and of the evaluation
split is decoded once, the way the evaluation decodes it (``ImageSet.load``).

Without it, an unreadable file in ``val/`` surfaces only at evaluation, after the whole training run, and is lost
with it. Our interpretation of ``data.on_bad_image``: ``error`` refuses the run before the first step, naming
every unreadable file (up to a few); ``skip`` lets it run, and the images the evaluation will leave out are
counted (``eval_skipped_images``, added to the row's ``skipped_images``). In-memory datasets have no files and
are not probed. Large folders are decoded by a thread pool (Pillow releases the GIL while decoding), so the
probe costs about one evaluation pass over the data, once per dataset and content: its result is cached beside
the folder's listing (``sources.read_facts``, keyed by the file list and the source's content digest), and a
multi-rank task splits it over its ranks before its process group exists.

The probe also hashes the bytes it reads (sha256, in the same pass: no second read) and checks the source's
content digest, the cell's identity, against them (``sources.check_read``): a file rewritten behind the digest
cache's back refuses the run instead of training under another cell's name (issue 21). A probe found in the cache
reads nothing, so that check runs where the probe reads: the digest's own cache is keyed by each file's size,
mtime, ctime and inode, which an in-place rewrite changes.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

from .sources import UNREADABLE, BadImageError, FolderSet, ImageSet, Source, check_read, decode_image, \
    read_facts, read_image_bytes, shown, write_facts

SERIAL_BELOW = 256  # files; below this a thread pool costs more than it saves


def _try(images: ImageSet, i: int) -> tuple[int, str] | None:
    try:
        images.load(i)
    except BadImageError as e:
        return i, str(e)
    return None


def _read(images: FolderSet, i: int) -> tuple[str, str | None]:
    """(sha256 of the file's bytes or UNREADABLE, why it does not decode or None), from one read of the file."""
    path = images.files[i]
    try:
        data = read_image_bytes(path)
    except BadImageError as e:
        return UNREADABLE, str(e)
    try:
        decode_image(data, path, images.channels)
    except BadImageError as e:
        return hashlib.sha256(data).hexdigest(), str(e)
    return hashlib.sha256(data).hexdigest(), None


def _map(fn, n: int, workers: int | None) -> list:
    if n < SERIAL_BELOW or workers == 1:
        return [fn(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=workers or min(32, os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, range(n), chunksize=64))


def read_all(images: ImageSet, workers: int | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """(path, reason) of every file of ``images`` that does not decode, and the sha256 of every file's bytes (in
    file order) from the same read. Sets that are not plain folders are decoded through ``load`` and not hashed."""
    if not images.files:
        return [], []
    if not isinstance(images, FolderSet):
        found = _map(lambda i: _try(images, i), len(images), workers)
        return [(images.files[i], why) for i, why in (f for f in found if f is not None)], []
    got = _map(lambda i: _read(images, i), len(images), workers)
    return [(images.files[i], why) for i, (_, why) in enumerate(got) if why is not None], [h for h, _ in got]


def unreadable(images: ImageSet, workers: int | None = None, shard: tuple[int, int] = (0, 1)
               ) -> list[tuple[str, str]]:
    """(path, reason) of every file of ``images`` that does not decode (empty for in-memory sets); ``shard``
    (rank, world): only files rank, rank + world, ... (every rank's shards together are the whole set)."""
    if shard == (0, 1):
        return read_all(images, workers)[0]
    if not images.files:
        return []
    rank, world = shard
    idx = list(range(rank, len(images), world))
    found = _map(lambda j: _try(images, idx[j]), len(idx), workers)
    return [(images.files[i], why) for i, why in (f for f in found if f is not None)]


# ---- the probe's result, cached beside the folder's listing (``sources.read_facts``)
#
# Key: "probe:<sha256 of the set's file list, 16 hex>" for the whole set, with ":<rank>/<world>" for one rank's
# shard. Every rank of a multi-rank task probes its shard before the process group exists (``probe_shard``); the
# probe proper then finds all shards (or the whole set) in the cache and decodes only what is missing. A requeued
# segment, the evaluation task and reruns find the whole set's entry and decode nothing.

def _probe_key(images: ImageSet, digest: str | None = None) -> str | None:
    root = getattr(images, "root", None)
    if not images.files or root is None:
        return None  # in-memory, or a set not from a listed folder: not cached
    text = "\n".join(images.files) + "\n" + (digest or "")  # other content: another key, probed again
    return "probe:" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


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


def unreadable_cached(images: ImageSet, workers: int | None = None, digest: str | None = None
                      ) -> tuple[list[tuple[str, str]], list[str] | None]:
    """``read_all(images)`` from the cache beside the folder's listing when it is there (no bytes read: hashes
    None), else read and kept there."""
    key = _probe_key(images, digest)
    if key is None:
        return read_all(images, workers)
    found = _cached(images, key)
    if found is not None:
        return found, None
    found, hashes = read_all(images, workers)
    write_facts(images.root, {key: [list(pw) for pw in found]})
    return found, hashes


def probe_shard(source: Source, rank: int, world: int, workers: int | None = None) -> None:
    """This rank's shard of the probe, cached (run by every rank before the process group exists: no rank waits
    in a collective while another decodes; never raises for a bad image, the probe proper reports them)."""
    for images in _splits(source):
        key = _probe_key(images, getattr(source, "digest", None))
        if key is None or _cached(images, key) is not None:
            continue
        write_facts(images.root, {f"{key}:{rank}/{world}": [list(pw) for pw in unreadable(images, workers,
                                                                                              (rank, world))]})


def _splits(source: Source) -> list[ImageSet]:
    same = source.test is source.train or (source.test.files and source.test.files == source.train.files)
    return [source.train] if same else [source.train, source.test]


def probe(source: Source, on_bad_image: str, workers: int | None = None) -> dict[str, int]:
    """Decodes every file of ``source.train`` and ``source.test`` (or finds the result cached beside the folder's
    listing: ``unreadable_cached``). Returns the count of unreadable ones per split;
    raises ``BadImageError`` naming them when ``on_bad_image`` is not 'skip', and ``DatasetError`` when the bytes
    read are not those the source's digest was taken from (``sources.check_read``)."""
    bad, read = {}, {}
    digest = getattr(source, "digest", None)
    bad["train"], read["train"] = unreadable_cached(source.train, workers, digest)
    same = source.test is source.train or (source.test.files and source.test.files == source.train.files)
    if same:  # no val/: train is evaluated
        bad["val"], read["val"] = bad["train"], read["train"]
    else:
        bad["val"], read["val"] = unreadable_cached(source.test, workers, digest)
    if source.digest_parts and all(read.get(split) is not None and len(read[split]) == len(files)
                                   for split, files, _ in source.digest_parts):
        check_read(source, read)  # only where this probe read the bytes (not found in the cache)
    if on_bad_image != "skip":
        found = [(split, path, why) for split, items in bad.items() for path, why in items]
        if found:
            split, path, why = found[0]
            more = "; ".join(shown(p) for _, p, _ in found[1:6]) + (" ..." if len(found) > 6 else "")
            raise BadImageError(path, f"{why.split(': ', 1)[-1]} (found in {split}/ before training: "
                                      f"{len(found)} unreadable image(s)" + (f", also {more}" if more else "")
                                + "; fix or remove them, or set data.on_bad_image=skip to leave them out)")
    return {split: len(items) for split, items in bad.items()}

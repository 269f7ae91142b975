"""Finds unreadable images before any training: every file of the training instances and of the evaluation
split is decoded once, the way the evaluation decodes it (``ImageSet.load``).

Without it, an unreadable file in ``val/`` surfaces only at evaluation, after the whole training run, and is lost
with it. Our interpretation of ``data.on_bad_image``: ``error`` refuses the run before the first step, naming
every unreadable file (up to a few); ``skip`` lets it run, and the images the evaluation will leave out are
counted (``eval_skipped_images``, added to the row's ``skipped_images``). In-memory datasets have no files and
are not probed. Large folders are decoded by a thread pool (Pillow releases the GIL while decoding), so the
probe costs about one evaluation pass over the data, once per run.

The probe also hashes the bytes it reads (sha256, in the same pass: no second read) and checks the source's
content digest, the cell's identity, against them (``sources.check_read``): a file rewritten behind the digest
cache's back refuses the run instead of training under another cell's name (issue 21).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

from .sources import UNREADABLE, BadImageError, FolderSet, ImageSet, Source, check_read, decode_image, \
    read_image_bytes, shown

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


def unreadable(images: ImageSet, workers: int | None = None) -> list[tuple[str, str]]:
    """(path, reason) of every file of ``images`` that does not decode (empty for in-memory sets)."""
    return read_all(images, workers)[0]


def probe(source: Source, on_bad_image: str, workers: int | None = None) -> dict[str, int]:
    """Decodes every file of ``source.train`` and ``source.test``. Returns the count of unreadable ones per split;
    raises ``BadImageError`` naming them when ``on_bad_image`` is not 'skip', and ``DatasetError`` when the bytes
    read are not those the source's digest was taken from (``sources.check_read``)."""
    bad, read = {}, {}
    bad["train"], read["train"] = read_all(source.train, workers)
    same = source.test is source.train or (source.test.files and source.test.files == source.train.files)
    if same:  # no val/: train is evaluated
        bad["val"], read["val"] = bad["train"], read["train"]
    else:
        bad["val"], read["val"] = read_all(source.test, workers)
    if source.digest_parts and all(len(read[split]) == len(files) for split, files, _ in source.digest_parts):
        check_read(source, read)
    if on_bad_image != "skip":
        found = [(split, path, why) for split, items in bad.items() for path, why in items]
        if found:
            split, path, why = found[0]
            more = "; ".join(shown(p) for _, p, _ in found[1:6]) + (" ..." if len(found) > 6 else "")
            raise BadImageError(path, f"{why.split(': ', 1)[-1]} (found in {split}/ before training: "
                                      f"{len(found)} unreadable image(s)" + (f", also {more}" if more else "")
                                + "; fix or remove them, or set data.on_bad_image=skip to leave them out)")
    return {split: len(items) for split, items in bad.items()}

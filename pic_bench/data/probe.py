"""Finds unreadable images before any training: every file of the training instances and of the evaluation
split is decoded once, the way the evaluation decodes it (``ImageSet.load``).

Without it, an unreadable file in ``val/`` surfaces only at evaluation, after the whole training run, and is lost
with it. Our interpretation of ``data.on_bad_image``: ``error`` refuses the run before the first step, naming
every unreadable file (up to a few); ``skip`` lets it run, and the images the evaluation will leave out are
counted (``eval_skipped_images``, added to the row's ``skipped_images``). In-memory datasets have no files and
are not probed. Large folders are decoded by a thread pool (Pillow releases the GIL while decoding), so the
probe costs about one evaluation pass over the data, once per run.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from .sources import BadImageError, ImageSet, Source

SERIAL_BELOW = 256  # files; below this a thread pool costs more than it saves


def _try(images: ImageSet, i: int) -> tuple[int, str] | None:
    try:
        images.load(i)
    except BadImageError as e:
        return i, str(e)
    return None


def unreadable(images: ImageSet, workers: int | None = None) -> list[tuple[str, str]]:
    """(path, reason) of every file of ``images`` that does not decode (empty for in-memory sets)."""
    if not images.files:
        return []
    n = len(images)
    if n < SERIAL_BELOW or workers == 1:
        found = [_try(images, i) for i in range(n)]
    else:
        with ThreadPoolExecutor(max_workers=workers or min(32, os.cpu_count() or 1)) as pool:
            found = list(pool.map(lambda i: _try(images, i), range(n), chunksize=64))
    return [(images.files[i], why) for i, why in (f for f in found if f is not None)]


def probe(source: Source, on_bad_image: str, workers: int | None = None) -> dict[str, int]:
    """Decodes every file of ``source.train`` and ``source.test``. Returns the count of unreadable ones per split;
    raises ``BadImageError`` naming them when ``on_bad_image`` is not 'skip'."""
    bad = {"train": unreadable(source.train, workers)}
    same = source.test is source.train or (source.test.files and source.test.files == source.train.files)
    bad["val"] = bad["train"] if same else unreadable(source.test, workers)  # no val/: train is evaluated
    if on_bad_image != "skip":
        found = [(split, path, why) for split, items in bad.items() for path, why in items]
        if found:
            split, path, why = found[0]
            more = "; ".join(f"{p}" for _, p, _ in found[1:6]) + (" ..." if len(found) > 6 else "")
            raise BadImageError(path, f"{why.split(': ', 1)[-1]} (found in {split}/ before training: "
                                      f"{len(found)} unreadable image(s)" + (f", also {more}" if more else "")
                                + "; fix or remove them, or set data.on_bad_image=skip to leave them out)")
    return {split: len(items) for split, items in bad.items()}

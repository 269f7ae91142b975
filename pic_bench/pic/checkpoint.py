"""Which failures say that a saved file (a checkpoint, an evaluation's progress file) cannot be *read*, and moving
such a file aside.

Our rule: a file is moved aside (``<name>.corrupt-<n>``, kept for inspection, never deleted) only when reading it
fails: unpickling errors, an empty or truncated file (``EOFError``; torch's seek past the end of a cut archive,
``OSError`` EINVAL), a zip archive torch cannot open. A file that
reads but does not restore (another run's shapes, more CUDA states than this process has, out of memory) is not
corrupt: moving it aside would throw away a good run, so the caller reports it as an error naming the file.
"""
from __future__ import annotations

import errno
import os
import pickle
import zipfile
from pathlib import Path

# torch's messages for a file that is not (or no longer) a readable zip archive
_ZIP_MESSAGES = ("PytorchStreamReader", "zip archive", "central directory", "file not found")


def unreadable_file(e: BaseException) -> bool:
    """Whether ``e``, raised by ``torch.load`` (or ``json.loads``), means the file's bytes cannot be read back."""
    if isinstance(e, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, UnicodeDecodeError)):
        return True
    if isinstance(e, OSError):  # torch seeking past the end of a truncated archive: EINVAL; not EACCES, EIO, ...
        return e.errno == errno.EINVAL
    if isinstance(e, RuntimeError) and not isinstance(e, MemoryError):
        return any(m in str(e) for m in _ZIP_MESSAGES) and "out of memory" not in str(e)
    return False


def move_aside(path: Path) -> Path:
    """Renames ``path`` to the first free ``<path>.corrupt-<n>`` (kept for inspection, never deleted)."""
    path = Path(path)
    n = 1
    while path.with_name(f"{path.name}.corrupt-{n}").exists():
        n += 1
    aside = path.with_name(f"{path.name}.corrupt-{n}")
    os.replace(path, aside)
    return aside

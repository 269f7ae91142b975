"""Writing the suite's files so that a failed write loses nothing and says which file failed, and why.

A full disk (ENOSPC), a read-only filesystem (EROFS) or a quota (EDQUOT) while a checkpoint, a backbone, a trained
marker, a loss curve or a result row is written is raised as ``WriteError``: an ``OSError`` whose message names the
file and the reason ("cannot write checkpoints/x.pt: No space left on device (ENOSPC)"), also where torch.save
wraps the OS error in its own ``RuntimeError`` ("enforce fail at inline_container.cc:672 ... unexpected pos").

``write_atomic`` writes through a ``.tmp`` file renamed over the target: on any failure the ``.tmp`` is removed and
the previous file is left as it was.

Imports nothing of ours (as ``config``): every wing may use it.
"""
from __future__ import annotations

import errno as errno_names
import os
from pathlib import Path
from typing import IO, Callable


class WriteError(OSError):
    """A file of the suite could not be written: ``filename`` the file, ``strerror`` the reason."""

    def __str__(self) -> str:
        code = errno_names.errorcode.get(self.errno or 0)
        return f"cannot write {self.filename}: {self.strerror}" + (f" ({code})" if code else "")


def os_error(e: BaseException) -> OSError | None:
    """The OS error behind ``e``: itself, or the one it was raised from or during (torch.save raises a
    RuntimeError while the OSError of the file's write is its context). None when there is none."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e
        e = e.__cause__ or e.__context__
    return None


def write_error(path: str | Path, e: BaseException) -> WriteError | None:
    """``e`` as a WriteError naming ``path`` (None when no OS error lies behind it: a bug, not the disk)."""
    if isinstance(e, WriteError):
        return e
    err = os_error(e)
    if err is None:
        return None
    return WriteError(err.errno, err.strerror or os.strerror(err.errno), str(path))


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None], tmp: str | Path | None = None) -> Path:
    """Writes ``path`` by ``write(f)`` into ``tmp`` (default ``<name>.tmp``), synced, then renamed over ``path``.

    A failure anywhere (the write, the sync, the rename) removes ``tmp`` and leaves ``path`` as it was; an OS error
    behind it is raised as ``WriteError`` naming ``path``. ``write`` gets a binary file object: pass
    ``lambda f: torch.save(obj, f)`` rather than saving to a path, so the OS error reaches us."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the .tmp's folder itself is unreachable: nothing was left in it
        err = write_error(path, e)
        if err is None:
            raise
        raise err from e
    return path

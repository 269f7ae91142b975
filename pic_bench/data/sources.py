"""Image sources: the training instances (index i = instance i) and a labelled test split for evaluation.

Every source yields uint8 tensors (C, H, W). Instance indices are positions in ``train``; for a folder they
are positions in the sorted file list, which is listed once and cached outside the dataset folder
(``cached_listing``) and recorded (``index_digest``) so that a folder whose contents changed since indices were
assigned is detected rather than silently attaching weights to other images.

A source's identity (``Source.digest``, part of every row's key) is its *content*: for a folder, the names and
bytes of every image it trains and evaluates on (``content_digest``, issue 21); for the in-memory datasets, their
training and test arrays. ``index_digest`` (names of the training files only) keeps its old meaning.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DatasetError(RuntimeError):
    """A dataset is missing, empty or changed; the message names the path and how to fix it."""


def shown(path: str) -> str:
    """A path as messages and rows show it: a name that is not UTF-8 with its odd bytes as \\xNN escapes (the raw
    surrogates os.fsdecode leaves would fail every UTF-8 write of the message: rows, tables, logs)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class BadImageError(RuntimeError):
    """An image could not be decoded; the message names the file."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot decode image {shown(path)}: {shown(reason)}")
        self.path = path


class ImageSet:
    """Images addressable by index, with integer class labels (used only for evaluation)."""

    labels: np.ndarray
    files: list[str] | None = None  # file paths for folder sets, None for in-memory sets

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TensorSet(ImageSet):
    def __init__(self, images: torch.Tensor, labels: np.ndarray):
        assert images.dtype == torch.uint8 and images.ndim == 4, images.shape
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)

    def load(self, i: int) -> torch.Tensor:
        return self.images[i]


HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit greyscale as PIL opens it (PNG: I;16 or I)


def to_8bit(im, channels: int = 3) -> np.ndarray:
    """A PIL image as uint8 (H, W, channels) by its actual bit depth and mode.

    PIL's ``convert("RGB")`` of a 16-bit greyscale image clips every value above 255 (a 16-bit PNG comes out
    almost all white); here 16-bit values are scaled to 8 bits (the top byte, v >> 8, as PIL's own
    ``convert("RGB")`` does for 16-bit RGB PNGs, which it opens as RGB). Palette, alpha (dropped, as PIL does),
    CMYK, 1-bit and the 8-bit modes go through PIL's own conversion."""
    if im.mode in HIGH_BIT_MODES:
        v = np.asarray(im).astype(np.int64)  # I;16 as uint16, I as int32 (values 0..65535 from a 16-bit PNG)
        grey = (np.clip(v, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], channels, axis=2) if channels == 3 else grey[:, :, None]
    arr = np.asarray(im.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_image(data: bytes, path: str, channels: int = 3) -> torch.Tensor:
    """Image file bytes -> uint8 (C, H, W). Any failure to decode (truncated, not an image, a decompression bomb
    past PIL's limit, a mode PIL cannot convert) is a ``BadImageError`` naming the file, so that every class of
    bad image goes through ``data.on_bad_image``."""
    from PIL import Image

    fp = io.BytesIO(data)
    try:
        with Image.open(fp) as im:
            arr = to_8bit(im, channels)
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        # PIL names the buffer ("<_io.BytesIO object at 0x...>"): name the file, as when PIL opened it itself
        raise BadImageError(path, f"{type(e).__name__}: {str(e).replace(repr(fp), repr(path))}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def read_image_bytes(path: str) -> bytes:
    """A file's bytes; a file that cannot be read (a dangling symlink, no permission) is a ``BadImageError``."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadImageError(path, f"{type(e).__name__}: {e.strerror or e}") from None


class FolderSet(ImageSet):
    def __init__(self, files: list[str], labels: np.ndarray, channels: int = 3, root: Path | None = None):
        self.files, self.labels, self.channels = files, np.asarray(labels, dtype=np.int64), channels
        self.root = root  # the listed folder the files come from (its listing cache keys ``read_facts``)

    def load(self, i: int) -> torch.Tensor:
        path = self.files[i]
        return decode_image(read_image_bytes(path), path, self.channels)


@dataclass
class Source:
    name: str
    train: ImageSet  # the instances: index i here is instance i
    test: ImageSet  # labelled held-out split for kNN and the linear probe
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    index_digest: str  # sha256 of the index -> file map (or of the in-memory data's selection)
    eval_split: str = "test"  # what ``test`` is: test (the dataset's own) | val (a folder's val/) | train (asked for)
    digest: str = ""  # the data's identity: content of train and the evaluation split (index_digest if not given)
    # for a folder: (split, files, base) of every split the digest covers, so the probe can check what it reads
    digest_parts: tuple = ()

    def __post_init__(self):
        if not self.digest:
            self.digest = self.index_digest

    @property
    def N(self) -> int:
        return len(self.train)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_fashion_mnist(root: str) -> Path:
    candidates = [root] if root else list(FASHION_MNIST_DIRS)
    for c in candidates:
        p = Path(c)
        if all(any((p / (f + ext)).is_file() for ext in (".gz", "")) for f in FASHION_MNIST_FILES.values()):
            return p
    where = root or " or ".join(FASHION_MNIST_DIRS)
    raise DatasetError(
        f"Fashion-MNIST not found in {where}. Install it with `apt-get install dataset-fashion-mnist` "
        f"(Debian) or point data.root=<folder> at a folder holding the four idx files "
        f"({', '.join(FASHION_MNIST_FILES.values())}, optionally .gz).")


def _idx(p: Path, stem: str) -> np.ndarray:
    f = p / (stem + ".gz")
    return _read_idx(f if f.is_file() else p / stem)


def _subset(n_total: int, n: int, seed: int) -> np.ndarray:
    """The first n of a fixed permutation (seed independent of the run seed: every run sees the same images)."""
    if n <= 0 or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


def fashion_mnist(cfg: DataConfig) -> Source:
    p = _find_fashion_mnist(cfg.root)
    xs = _idx(p, FASHION_MNIST_FILES["train_images"])
    ys = _idx(p, FASHION_MNIST_FILES["train_labels"])
    xt = _idx(p, FASHION_MNIST_FILES["test_images"])
    yt = _idx(p, FASHION_MNIST_FILES["test_labels"])
    tr = _subset(len(xs), cfg.num_instances, 1234)
    te = _subset(len(xt), cfg.test_size, 4321)
    train = TensorSet(torch.from_numpy(xs[tr].copy())[:, None], ys[tr])
    test = TensorSet(torch.from_numpy(xt[te].copy())[:, None], yt[te])
    digest = hashlib.sha256(b"fashion_mnist" + tr.tobytes()).hexdigest()
    return Source("fashion_mnist", train, test, 1, (0.286,), (0.353,), digest,
                  digest=array_digest("fashion_mnist", train, test))


def array_digest(name: str, train: "TensorSet", test: "TensorSet") -> str:
    """The content digest of an in-memory dataset: its training and test images and labels, shapes included."""
    h = hashlib.sha256(f"pic_bench arrays 1 {name}\n".encode())
    for part in (train, test):
        for a in (part.images.numpy(), part.labels):
            h.update(f"{a.dtype} {a.shape}\n".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def digits(cfg: DataConfig) -> Source:
    """scikit-learn's bundled 8x8 digits (1797 images): tiny, for tests. Split 80/20 by a fixed permutation."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    x = np.clip(d.images * 16, 0, 255).astype(np.uint8)  # values 0..16 -> 0..255
    perm = np.random.default_rng(7).permutation(len(x))
    n_test = 360
    te_all, tr_all = perm[:n_test], perm[n_test:]
    tr = tr_all[: cfg.num_instances] if cfg.num_instances > 0 else tr_all
    te = te_all[: cfg.test_size] if cfg.test_size > 0 else te_all
    train = TensorSet(torch.from_numpy(x[tr])[:, None], d.target[tr])
    test = TensorSet(torch.from_numpy(x[te])[:, None], d.target[te])
    return Source("digits", train, test, 1, (0.3,), (0.38,), hashlib.sha256(tr.tobytes()).hexdigest(),
                  digest=array_digest("digits", train, test))


def synthetic(cfg: DataConfig, seed: int = 0) -> Source:
    """Random images, 10 classes: for benchmarks and tests of plumbing only (nothing to learn)."""
    n = cfg.num_instances or 1024
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    tr = torch.randint(0, 256, (n, 3, s, s), generator=g, dtype=torch.uint8)
    te = torch.randint(0, 256, (cfg.test_size or 256, 3, s, s), generator=g, dtype=torch.uint8)
    ys = np.arange(n) % 10
    yt = np.arange(len(te)) % 10
    return Source("synthetic", TensorSet(tr, ys), TensorSet(te, yt), 3, (0.5,) * 3, (0.29,) * 3, f"synthetic-{n}-{seed}")


def list_folder(root: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Sorted image files of an ImageNet-style folder (root/<class>/<image>), their class ids, class names."""
    return _list(root)[:3]


def _list(root: Path) -> tuple[list[str], np.ndarray, list[str], list[str]]:
    """``list_folder`` and the directories it walked (relative to root, "." for root itself).

    Nothing is left out silently: a directory that cannot be read is a ``DatasetError`` naming it (os.walk would
    skip it, and a class of images would vanish from the index), and so is a name that the line-based listing
    cannot hold (a newline or carriage return in it). Names that are not UTF-8 are kept as the filesystem gives
    them (``os.fsencode`` returns their bytes)."""
    if not root.is_dir():
        raise DatasetError(f"image folder not found: {root} (set data.root to an ImageNet-style folder "
                           "with train/<class>/<image> and val/<class>/<image>)")

    def unreadable(e: OSError) -> None:
        raise DatasetError(f"cannot read directory {e.filename or root} ({e.strerror or e}): its images would be "
                           "left out of the listing; fix its permissions or remove it") from None

    try:
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    except OSError as e:
        unreadable(e)
    files, labels, dirs = [], [], ["."]
    for ci, c in enumerate(classes):
        for dirpath, _, names in sorted(os.walk(root / c, onerror=unreadable)):
            dirs.append(os.path.relpath(dirpath, root))
            _check_name(dirs[-1], root)
            for n in sorted(names):
                if n.lower().endswith(IMAGE_EXTENSIONS):
                    _check_name(n, dirpath)
                    files.append(os.path.join(dirpath, n))
                    labels.append(ci)
    if not files:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}/<class>/: the folder is empty")
    return files, np.asarray(labels, dtype=np.int64), classes, dirs


def _check_name(name: str, where) -> None:
    if "\n" in name or "\r" in name:
        raise DatasetError(f"{os.path.join(where, name)!r}: a file or folder name with a line break cannot be "
                           "listed (the listing and the index are one name per line); rename it")


def relative_paths(files: list[str], root: Path) -> list[str]:
    """``os.path.relpath(f, root)`` of every file, by cutting the prefix where ``f`` is ``root/<clean path>``
    (as the listing builds it: 200,000 relpath calls cost seconds); anything else goes through relpath."""
    prefix = os.path.join(str(root), "")
    n = len(prefix)
    out = []
    for f in files:
        rest = f[n:]
        # a clean remainder has no "." / ".." components and no empty ones: relpath would return it unchanged
        if f.startswith(prefix) and "/." not in "/" + rest and "//" not in rest and rest:
            out.append(rest)
        else:
            out.append(os.path.relpath(f, root))
    return out


def digest_files(files: list[str], root: Path) -> str:
    """sha256 over the files' paths relative to root, one per line: the index digest rows record."""
    h = hashlib.sha256()
    for r in relative_paths(files, root):
        h.update(os.fsencode(r) + b"\n")  # the name's bytes: UTF-8 names as before, others as the disk has them
    return h.hexdigest()


def digest_files_reference(files: list[str], root: Path) -> str:
    """The plain reference of ``digest_files`` (one relpath per file)."""
    h = hashlib.sha256()
    for f in files:
        h.update(os.fsencode(os.path.relpath(f, root)) + b"\n")
    return h.hexdigest()


def image_folder(cfg: DataConfig) -> Source:
    root = Path(cfg.root) if cfg.root else None
    if root is None:
        raise DatasetError("data.dataset=imagefolder needs data.root=<folder> with train/ and val/ subfolders")
    train_dir = root / "train" if (root / "train").is_dir() else root
    test_dir = root / "val"
    # The whole sorted list is recorded: the instances are a fixed function of it and num_instances.
    files, labels, classes = cached_listing(train_dir, guard=[root / INDEX_MAP])
    tr = _subset(len(files), cfg.num_instances, 1234)
    files = [files[i] for i in tr]
    labels = labels[tr]
    if cfg.eval_split == "train":  # asked for explicitly: the row and the table say so
        test, split = FolderSet(files, labels, root=train_dir), "train"
    elif test_dir.is_dir():
        tfiles, tlabels, tclasses = cached_listing(test_dir, guard=None)
        if tclasses != classes:
            raise DatasetError(f"{test_dir}: class folders differ from {train_dir}")
        te = _subset(len(tfiles), cfg.test_size, 4321)
        test, split = FolderSet([tfiles[i] for i in te], tlabels[te], root=test_dir), "val"
    else:
        raise DatasetError(f"{root}: no val/ split to evaluate on (data.eval_split=val). Add val/<class>/<image>, "
                           "or set data.eval_split=train to evaluate on the training images themselves")
    digest = digest_files(files, train_dir)
    parts = (("train", files, train_dir),) + ((("val", test.files, test_dir),) if split == "val" else ())
    split_digests = {}
    for name, fl, base in parts:
        rel = relative_paths(fl, base)
        hashes = file_hashes(fl, base, rel=rel)
        gone = [f for f, x in zip(fl, hashes) if x == UNREADABLE]
        if gone and cfg.on_bad_image != "skip":  # a dangling symlink, a file without read permission
            more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
            raise DatasetError(f"cannot read {gone[0]!r}{more} in {name}/ (a dangling symlink or no read "
                               "permission): fix or remove it, or set data.on_bad_image=skip to leave it out")
        split_digests[name] = fold(rel, hashes)
    return Source("imagefolder", FolderSet(files, labels, root=train_dir), test, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                  digest, split, digest=folder_digest(parts, split, split_digests), digest_parts=parts)


# ---- one listing per dataset, kept outside the dataset folder
#
# A folder is listed once; its sorted file list (index -> file) goes to ``$PIC_BENCH_CACHE/listing/<key>.txt``
# (default ``~/.cache/pic_bench``; key: the folder's resolved path) together with the mtimes of its
# directories. A later load (another rank, a requeued segment, a baseline task) stats those directories and
# reuses the list when none changed: adding, removing or renaming a file or a class folder changes its
# directory's mtime. A changed folder is listed again and, for the training split, compared with the recorded
# list: a different list is refused (instance weights would attach to other images). Directory mtimes tick
# coarsely (a few ms), so a folder modified within RACY_S seconds of its listing is not trusted next time
# (git's "racily clean" rule). Nothing is written into the dataset folder; an index map left there by earlier
# versions (INDEX_MAP) or in the earlier cache (``index/``) is still read as the recorded list.

INDEX_MAP = ".pic_bench_index.txt"  # where earlier versions recorded the list, beside the data (read only)
LISTING_HEADER = "# pic_bench listing 1"
RACY_S = 2.0


def cache_dir() -> Path:
    env = os.environ.get("PIC_BENCH_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pic_bench"


def _key(base: Path) -> str:
    return hashlib.sha256(str(Path(base).resolve()).encode()).hexdigest()[:16]


def listing_path(base: Path) -> Path:
    """The cached listing of folder ``base``."""
    return cache_dir() / "listing" / f"{_key(base)}.txt"


def _stamp(base: Path, dirs: list[str]) -> str | None:
    """sha256 of the directories' mtimes (ns); None if one is gone or was modified in the last RACY_S s."""
    h = hashlib.sha256()
    now = time.time_ns()
    for d in dirs:
        try:
            m = os.stat(os.path.join(base, d)).st_mtime_ns
        except OSError:
            return None
        if now - m < RACY_S * 1e9:
            return None
        h.update(f"{d}\t{m}\n".encode())
    return h.hexdigest()


def _lines(path: Path) -> list[str]:
    """A cache file's lines: split on "\\n" only (str.splitlines would also split names holding \\x1c, \\x85,
    \\u2028 ...), names that are not UTF-8 read back as written (surrogateescape)."""
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def _read_listing(path: Path) -> dict | None:
    try:
        lines = _lines(path)
    except OSError:
        return None
    try:
        if lines[0] != LISTING_HEADER:
            return None
        n_dirs = int(lines[2].removeprefix("# dirs="))
        dirs = lines[3:3 + n_dirs]
        at = 3 + n_dirs
        n_classes = int(lines[at].removeprefix("# classes="))
        classes = lines[at + 1:at + 1 + n_classes]
        at += 1 + n_classes
        n = int(lines[at].removeprefix("# n="))
        rel = lines[at + 1:at + 1 + n]
        if len(rel) != n:
            return None
        return {"stamp": lines[1].removeprefix("# stamp="), "dirs": dirs, "classes": classes, "rel": rel}
    except (IndexError, ValueError):
        return None  # a damaged cache file is listed again, never trusted


def _read_index_map(path: Path) -> list[str] | None:
    """An index map of earlier versions: ``# n=<count>`` then the relative paths."""
    try:
        lines = _lines(path)
    except OSError:
        return None
    if not lines or not lines[0].startswith("# n="):
        return None
    return lines[1:]


def _write_listing(path: Path, stamp: str, dirs: list[str], classes: list[str], rel: list[str]) -> None:
    text = "\n".join([LISTING_HEADER, f"# stamp={stamp}", f"# dirs={len(dirs)}", *dirs,
                      f"# classes={len(classes)}", *classes, f"# n={len(rel)}", *rel]) + "\n"
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
        os.replace(tmp, path)  # atomic: concurrent ranks never read a half-written listing
    except OSError as e:
        print(f"warning: cannot write the listing cache {path} ({e.strerror or e}); the folder will be listed "
              f"again by every load (set PIC_BENCH_CACHE to a writable folder)", file=sys.stderr)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _refuse_changed(base: Path, recorded: list[str], rel: list[str], path: Path) -> None:
    if recorded == rel:
        return
    first = next((i for i, (a, b) in enumerate(zip(recorded, rel)) if a != b), min(len(recorded), len(rel)))
    was = recorded[first] if first < len(recorded) else "(end of list)"
    now = rel[first] if first < len(rel) else "(end of list)"
    raise DatasetError(
        f"{base}: the file list changed since instance indices were assigned (recorded in {path}: "
        f"{len(recorded)} files, now {len(rel)}; first difference at sorted position {first}: recorded "
        f"{was!r}, now {now!r}). Instance weights would attach to the wrong images. Restore the folder, "
        f"or delete {path} to start a fresh index.")


def cached_listing(base: Path, guard: list[Path] | None) -> tuple[list[str], np.ndarray, list[str]]:
    """``list_folder(base)``, listed once and cached outside the folder (see above).

    Args:
        base: the folder (root/<class>/<image>).
        guard: None: a changed folder is simply listed again (the evaluation split). Otherwise the folder's
            list is the instance index and a changed list is refused; ``guard`` names earlier versions' index
            maps to honour when the cache has none.
    Returns:
        (files, labels, classes) as ``list_folder``: files joined to ``base`` as given.
    """
    path = listing_path(base)
    cached = _read_listing(path)
    if cached is not None and cached["stamp"] == _stamp(base, cached["dirs"]):
        index = {c: i for i, c in enumerate(cached["classes"])}
        prefix = os.path.join(str(base), "")
        files = [prefix + r for r in cached["rel"]]  # os.path.join(base, r), as the listing joined them
        labels = np.fromiter((index[r.split("/", 1)[0]] for r in cached["rel"]), np.int64, len(files))
        return files, labels, cached["classes"]
    files, labels, classes, dirs = _list(base)
    rel = relative_paths(files, base)
    if guard is not None:
        if cached is not None:
            _refuse_changed(base, cached["rel"], rel, path)
        else:
            legacy = cache_dir() / "index" / f"{_key(base)}.txt"
            for old in [*guard, legacy]:
                recorded = _read_index_map(old)
                if recorded is not None:
                    _refuse_changed(base, recorded, rel, old)
                    break
    # a folder modified too recently (or while it was listed) is not trusted: the next load lists it again
    stamp = _stamp(base, dirs) or "racy"
    _write_listing(path, stamp, dirs, classes, rel)
    return files, labels, classes


# ---- facts about a listed folder, cached beside its listing
#
# What was learnt about a folder's files by reading them (the probe's unreadable files; a content digest) is kept
# in ``listing/<key>.facts.json`` beside the listing, as one JSON dict tagged with the listing's stamp: a changed
# folder (its directories' mtimes moved) invalidates it, as it invalidates the listing. Only a trusted listing (not "racy")
# keeps facts. Writers merge under a lock file, so concurrent ranks add their entries without losing another's.
# A file rewritten in place (same name, so the directory's mtime does not move) is not noticed by the stamp; the
# probe's entries are also keyed by the folder's content digest (below), which such a rewrite changes.

def facts_path(base: Path) -> Path:
    """The cached facts of folder ``base`` (beside ``listing_path(base)``)."""
    return cache_dir() / "listing" / f"{_key(base)}.facts.json"


def _listing_stamp(base: Path) -> str | None:
    """The stamp of ``base``'s cached listing when it still holds (its directories unchanged), else None: read
    from the listing's head only (the stamp and the directories come before the file list)."""
    try:
        with open(listing_path(base), encoding="utf-8") as f:
            header, stamp, n_dirs = (f.readline().rstrip("\n") for _ in range(3))
            if header != LISTING_HEADER or not stamp.startswith("# stamp=") or not n_dirs.startswith("# dirs="):
                return None
            dirs = [f.readline().rstrip("\n") for _ in range(int(n_dirs.removeprefix("# dirs=")))]
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    stamp = stamp.removeprefix("# stamp=")
    return stamp if stamp != "racy" and stamp == _stamp(base, dirs) else None


def read_facts(base: Path) -> dict:
    """The facts cached for folder ``base`` under its current listing ({} when none, stale or damaged)."""
    stamp = _listing_stamp(base)
    if stamp is None:
        return {}
    try:
        data = json.loads(facts_path(base).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("stamp") != stamp or not isinstance(data.get("facts"), dict):
        return {}
    return data["facts"]


def write_facts(base: Path, update: dict) -> bool:
    """Merges ``update`` into the facts cached for folder ``base``; False (with a warning) when nothing could be
    kept (no trusted listing, or an unwritable cache)."""
    import fcntl

    stamp = _listing_stamp(base)
    if stamp is None:
        return False
    path = facts_path(base)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            facts = read_facts(base)
            facts.update(update)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"stamp": stamp, "facts": facts}), encoding="utf-8")
            os.replace(tmp, path)
        return True
    except OSError as e:
        print(f"warning: cannot write the facts cache {path} ({e.strerror or e}); set PIC_BENCH_CACHE to a "
              f"writable folder", file=sys.stderr)
        return False


# ---- the content digest of a folder (issue 21)
#
# A file's sha256 is kept beside the listing (``<key>.hashes``: one line "sha256 size mtime_ns ctime_ns inode
# name" per file) and reused while the file's size, mtime, ctime and inode are those recorded: rewriting a file
# changes its ctime even when its mtime is put back, and a replacement has another inode. A file modified in the
# RACY_S seconds before it was hashed is not kept (it may change again within one mtime tick). The probe, which
# reads every byte before training anyway, hashes what it reads and checks the digest against the cached one
# (``check_read``): a stale entry is corrected and the run refused, naming both digests.

HASHES_HEADER = "# pic_bench hashes 1"
UNREADABLE = "unreadable"  # in place of a file's sha256: it could not be read (counted as a bad image by the probe)
DIGEST_WORKERS = 8  # reading small files is latency-bound: a few threads overlap their opens and reads
DIGEST_SERIAL_BELOW = 64  # files to hash; below this a thread pool costs more than it saves


def hashes_path(base: Path) -> Path:
    """The cached per-file sha256 of folder ``base``, beside its listing."""
    return cache_dir() / "listing" / f"{_key(base)}.hashes"


def _read_hashes(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (its stat key as written: "size<TAB>mtime_ns<TAB>ctime_ns<TAB>inode", sha256)."""
    try:
        lines = _lines(path)
    except OSError:
        return {}
    if not lines or lines[0] != HASHES_HEADER:
        return {}
    out = {}
    for line in lines[1:]:
        f = line.split("\t", 5)
        if len(f) == 6 and len(f[0]) == 64:  # a damaged line is left out: that file is read again
            out[f[5]] = ("\t".join(f[1:5]), f[0])
    return out


def _write_hashes(path: Path, entries: dict[str, tuple[str, str]]) -> None:
    text = HASHES_HEADER + "\n" + "".join(f"{h}\t{st}\t{rel}\n" for rel, (st, h) in sorted(entries.items()))
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
        os.replace(tmp, path)
    except OSError as e:
        print(f"warning: cannot write the digest cache {path} ({e.strerror or e}); every image will be read again "
              f"by the next load (set PIC_BENCH_CACHE to a writable folder)", file=sys.stderr)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _stat_key(path: str) -> str | None:
    """"size<TAB>mtime_ns<TAB>ctime_ns<TAB>inode" of a file (None if it cannot be stat'ed: a dangling symlink)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}\t{st.st_mtime_ns}\t{st.st_ctime_ns}\t{st.st_ino}"


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (``UNREADABLE`` when it cannot be read: the probe names it)."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return UNREADABLE


def fold(rel: list[str], hashes: list[str]) -> str:
    """The digest of one split: sha256 over "name NUL sha256(bytes)" lines, in index order (names as the bytes
    the filesystem holds: ``os.fsencode``, i.e. UTF-8 with surrogateescape)."""
    text = "".join(f"{r}\0{x}\n" for r, x in zip(rel, hashes))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def file_hashes(files: list[str], base: Path, workers: int | None = None, rel: list[str] | None = None
                ) -> list[str]:
    """The sha256 of every file (order of ``files``), from the cache where a file's stat is unchanged, else read
    (by a thread pool for many files); the cache is updated. ``rel``: ``relative_paths(files, base)`` if known."""
    path = hashes_path(base)
    cached = _read_hashes(path)
    rel = relative_paths(files, base) if rel is None else rel
    stats = [_stat_key(f) for f in files]
    out: list[str | None] = []
    todo = []
    for i, (r, st) in enumerate(zip(rel, stats)):
        hit = cached.get(r)
        if st is not None and hit is not None and hit[0] == st:
            out.append(hit[1])
        else:
            out.append(None)
            todo.append(i)
    if todo:
        if len(todo) < DIGEST_SERIAL_BELOW or workers == 1:
            read = [file_sha256(files[i]) for i in todo]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=workers or DIGEST_WORKERS) as pool:
                read = list(pool.map(lambda i: file_sha256(files[i]), todo, chunksize=256))
        for i, x in zip(todo, read):
            out[i] = x
        # keyed by the stat taken before the read: a file changed while it was read is read again next time
        _remember(path, cached, [(rel[i], files[i], out[i]) for i in todo], [stats[i] for i in todo])
    return out  # type: ignore[return-value]


def _remember(path: Path, cached: dict, entries: list[tuple[str, str, str]], stats: list | None = None) -> None:
    """Adds (rel, file, sha256) entries to the cache, keyed by the file's stat (``stats``, else taken now); files
    modified within RACY_S seconds or unreadable are dropped from it (read again next time)."""
    now = time.time_ns()
    for k, (r, f, x) in enumerate(entries):
        st = stats[k] if stats is not None else _stat_key(f)
        times = [int(t) for t in st.split("\t")[1:3]] if st is not None else []
        if x == UNREADABLE or st is None or any(now - t < RACY_S * 1e9 for t in times):
            cached.pop(r, None)
        else:
            cached[r] = (st, x)
    _write_hashes(path, cached)


def content_digest(files: list[str], base: Path, workers: int | None = None) -> str:
    """The content digest of ``files`` under folder ``base``: names (relative to base) and bytes, in index order.

    A plain function of the folder: per-file hashes come from ``hashes_path(base)`` where a file is unchanged
    (size, mtime, ctime, inode), otherwise the file is read. A file that cannot be read enters as UNREADABLE."""
    rel = relative_paths(files, base)
    return fold(rel, file_hashes(files, base, workers, rel))


def content_digest_reference(files: list[str], base: Path) -> str:
    """The plain reference of ``content_digest``: every file read and hashed, no cache, one relpath per file."""
    h = hashlib.sha256()
    for f in files:
        try:
            with open(f, "rb") as fh:
                x = hashlib.sha256(fh.read()).hexdigest()
        except OSError:
            x = UNREADABLE
        h.update(os.fsencode(os.path.relpath(f, base)) + b"\0" + x.encode() + b"\n")
    return h.hexdigest()


def folder_digest(parts, eval_split: str, split_digests: dict[str, str] | None = None) -> str:
    """A folder source's identity: the content digests of its training files and of its evaluation split
    (``parts``: (split, files, base)), and which split is evaluated. ``split_digests`` gives them instead of
    computing them (the probe's, from the bytes it read)."""
    h = hashlib.sha256(f"pic_bench folder 1 eval={eval_split}\n".encode())
    for split, files, base in parts:
        d = split_digests[split] if split_digests else content_digest(files, Path(base))
        h.update(f"{split} {len(files)} {d}\n".encode())
    return h.hexdigest()


def check_read(source: Source, read: dict[str, list[str]]) -> None:
    """Checks a folder source's digest against the sha256 of the bytes the probe read (``read``: split -> hashes
    in file order). A difference means a cached hash was stale (a file rewritten with its size, mtime, ctime and
    inode kept, or changed since the digest was taken): the cache is corrected and the run refused, naming both
    digests, since its rows, skip and checkpoint were chosen by the stale one."""
    if not source.digest_parts:
        return
    now = folder_digest(source.digest_parts, source.eval_split,
                        {split: fold(relative_paths(files, Path(base)), read[split])
                         for split, files, base in source.digest_parts})
    if now == source.digest:
        return
    for split, files, base in source.digest_parts:
        path = hashes_path(Path(base))
        _remember(path, _read_hashes(path), list(zip(relative_paths(files, Path(base)), files, read[split])))
    raise DatasetError(f"{source.digest_parts[0][2]}: the images changed while this run was being set up: their "
                       f"digest was {source.digest[:16]} (cached), the bytes read now give {now[:16]}. The cached "
                       "hashes are corrected; run the same command again to train the new data as its own cell")


def load_source(cfg: DataConfig, seed: int = 0) -> Source:
    if cfg.dataset == "fashion_mnist":
        return fashion_mnist(cfg)
    if cfg.dataset == "digits":
        return digits(cfg)
    if cfg.dataset == "synthetic":
        return synthetic(cfg, seed)
    if cfg.dataset == "imagefolder":
        return image_folder(cfg)
    raise DatasetError(f"unknown data.dataset '{cfg.dataset}'")


def encode_jpeg(img: torch.Tensor) -> bytes:
    """uint8 (C, H, W) -> JPEG bytes (used to write real JPEG folders for tests and benchmarks)."""
    from PIL import Image

    arr = img.permute(1, 2, 0).numpy()
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()

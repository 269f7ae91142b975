"""One listing per dataset (issue 11 item 7, issue 14): an image folder's file list is listed once and cached
outside the dataset folder (``$PIC_BENCH_CACHE``), validated by the mtimes of its directories, reused by every
later load; nothing is written into the dataset folder, a read-only folder works, a changed folder is refused
with the same message as before and the index digest is computed as before.
"""
from __future__ import annotations

import builtins
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pic_bench.config import DataConfig
from pic_bench.data import sources
from pic_bench.data.sources import DatasetError, encode_jpeg, load_source


def write_folder(root: Path, n: int = 12, classes: int = 3, val: int = 0) -> list[Path]:
    """root/train/c<k>/<i>.jpg (and root/val/... if val), every directory's mtime an hour ago (an old
    dataset: a directory modified in the last seconds is not trusted, see sources.RACY_S)."""
    g = torch.Generator().manual_seed(0)
    files = []
    for split, count in (("train", n), ("val", val)):
        for i in range(count):
            p = root / split / f"c{i % classes}" / f"{i:04d}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(encode_jpeg(torch.randint(0, 256, (3, 8, 8), generator=g, dtype=torch.uint8)))
            if split == "train":
                files.append(p)
    age(root)
    return sorted(files)


def age(root: Path, seconds: float = 3600) -> None:
    t = time.time() - seconds
    for d, _, _ in os.walk(root):
        os.utime(d, (t, t))


def tree(root: Path) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), root) for d, dirs, names in os.walk(root) for n in dirs + names}


def load(root: Path, **kw):
    if not (root / "val").is_dir():  # evaluation is not what these tests are about
        kw.setdefault("eval_split", "train")
    return load_source(DataConfig(dataset="imagefolder", root=str(root), **kw))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    c = tmp_path / "cache"
    monkeypatch.setenv("PIC_BENCH_CACHE", str(c))
    return c


@pytest.fixture
def listings(monkeypatch):
    """Counts directory listings (os.scandir, os.walk, os.listdir) of anything under a folder."""
    calls: list[str] = []
    for name in ("scandir", "walk", "listdir"):
        real = getattr(os, name)

        def counting(path=".", *a, _real=real, _name=name, **kw):
            calls.append(f"{_name} {path}")
            return _real(path, *a, **kw)

        monkeypatch.setattr(os, name, counting)
    return calls


def test_nothing_is_written_into_the_dataset_folder(tmp_path, cache):
    data = tmp_path / "data"
    write_folder(data, val=6)
    before = tree(data)
    load(data)
    load(data, num_instances=6)
    assert tree(data) == before
    assert list((cache / "listing").glob("*.txt"))  # the listing went to the cache instead


def test_second_load_does_not_list_the_folder(tmp_path, listings):
    data = tmp_path / "data"
    write_folder(data, val=6)
    a = load(data)
    assert any(str(data) in c for c in listings)  # the first load lists it
    del listings[:]
    b = load(data)
    assert not [c for c in listings if str(data) in c], listings
    assert b.train.files == a.train.files and np.array_equal(b.train.labels, a.train.labels)
    assert b.test.files == a.test.files and b.index_digest == a.index_digest


def test_index_digest_and_order_are_as_before(tmp_path):
    """The digest is sha256 over the sorted relative paths, as committed rows' derived.index_digest has it;
    the instance order is the sorted walk (classes sorted, then directories, then names)."""
    data = tmp_path / "data"
    files = write_folder(data, n=10)
    nested = data / "train" / "c1" / "sub" / "0100.jpg"
    nested.parent.mkdir()
    nested.write_bytes(files[0].read_bytes())
    age(data)
    for _ in range(2):  # listed, then from the cache
        s = load(data)
        rel = [os.path.relpath(f, data / "train") for f in s.train.files]
        assert rel[:4] == ["c0/0000.jpg", "c0/0003.jpg", "c0/0006.jpg", "c0/0009.jpg"]
        assert "c1/sub/0100.jpg" == rel[rel.index("c1/0007.jpg") + 1]
        want = hashlib.sha256("".join(r + "\n" for r in rel).encode()).hexdigest()
        assert s.index_digest == want
        assert list(s.train.labels) == [int(r[1]) for r in rel]


def test_a_changed_folder_is_still_refused(tmp_path):
    data = tmp_path / "data"
    files = write_folder(data)
    load(data)
    extra = data / "train" / "c0" / "0000a.jpg"  # sorts between existing files: indices would shift
    extra.write_bytes(files[0].read_bytes())
    with pytest.raises(DatasetError, match="file list changed since instance indices were assigned.*0000a.jpg"):
        load(data)
    extra.unlink()
    age(data)
    assert load(data).N == 12  # restored: fine again
    files[4].rename(files[4].with_name("renamed.jpg"))
    with pytest.raises(DatasetError, match="file list changed.*delete .*listing"):
        load(data)


def test_a_change_right_after_listing_is_seen(tmp_path):
    """Directory mtimes tick coarsely: a folder changed within the same tick as it was listed keeps its mtime,
    so a listing of a just-modified folder is not trusted (the next load lists again)."""
    data = tmp_path / "data"
    files = write_folder(data)
    age(data, 0)  # modified just now
    load(data)
    (data / "train" / "c2" / "0002b.jpg").write_bytes(files[0].read_bytes())
    age(data, 0)  # the same mtime as when it was listed
    with pytest.raises(DatasetError, match="file list changed"):
        load(data)


def test_a_read_only_dataset_folder_works(tmp_path, monkeypatch, cache):
    data = tmp_path / "data"
    write_folder(data, val=3)
    inside = str(data.resolve())

    def refuse(path):
        if os.path.abspath(os.fspath(path)).startswith(inside):
            raise PermissionError(13, "Read-only file system", os.fspath(path))

    real_open, real_os_open, real_replace, real_mkdir = builtins.open, os.open, os.replace, os.mkdir

    def ro_open(file, mode="r", *a, **kw):
        if isinstance(file, (str, os.PathLike)) and any(m in mode for m in "wax+"):
            refuse(file)
        return real_open(file, mode, *a, **kw)

    def ro_os_open(path, flags, *a, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *a, **kw)

    monkeypatch.setattr(builtins, "open", ro_open)
    monkeypatch.setattr(os, "open", ro_os_open)
    monkeypatch.setattr(os, "replace", lambda a, b, *x, **k: (refuse(a), refuse(b), real_replace(a, b, *x, **k)))
    monkeypatch.setattr(os, "mkdir", lambda p, *x, **k: (refuse(p), real_mkdir(p, *x, **k)))
    a = load(data)
    b = load(data)
    assert a.N == b.N == 12 and a.index_digest == b.index_digest and len(b.test) == 3


def test_an_unwritable_cache_still_loads_and_says_so(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    write_folder(data)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("PIC_BENCH_CACHE", str(blocker))
    assert load(data).N == 12
    assert "cannot write the listing cache" in capsys.readouterr().err


def test_a_legacy_index_map_beside_the_data_is_still_honoured(tmp_path):
    """Folders first used before the cache existed have <root>/.pic_bench_index.txt: it still guards them
    (read only, never written)."""
    data = tmp_path / "data"
    files = write_folder(data)
    rel = [os.path.relpath(f, data / "train") for f in files]
    (data / ".pic_bench_index.txt").write_text(f"# n={len(rel)}\n" + "\n".join(rel) + "\n")
    files[0].unlink()
    age(data)
    with pytest.raises(DatasetError, match=r"file list changed.*\.pic_bench_index\.txt"):
        load(data)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_relative_paths_and_digest_match_the_reference(seed, tmp_path, monkeypatch):
    """Random paths under awkward roots (relative, '..', '/', dotted names, foreign files): the prefix cut
    equals os.path.relpath everywhere, so the digest equals the plain one."""
    rng = np.random.default_rng(seed)
    monkeypatch.chdir(tmp_path)
    names = ["a", "b.jpg", ".hidden.jpg", "x..y.JPEG", "..z.png", "c d.jpg", "é.jpg"]
    roots = [Path("data/train"), Path("data/../data/train"), tmp_path / "data" / "train", Path("/"), Path(".")]
    for root in roots:
        files = []
        for _ in range(200):
            parts = [str(p) for p in rng.choice(names, size=rng.integers(1, 4))]
            kind = rng.integers(0, 4)
            if kind == 0:  # outside the root
                files.append(os.path.join("elsewhere", *parts))
            elif kind == 1:  # an unclean path under the root
                files.append(os.path.join(str(root), ".", *parts) if rng.random() < 0.5
                             else os.path.join(str(root), parts[0], "..", *parts))
            else:
                files.append(os.path.join(str(root), *parts))
        assert sources.relative_paths(files, root) == [os.path.relpath(f, root) for f in files], root
        assert sources.digest_files(files, root) == sources.digest_files_reference(files, root)


# ---- issue 21: the content digest's cache, and a listing that never skips silently
def test_a_cached_digest_is_reused_without_rereading_unchanged_files(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "RACY_S", 0.0)  # files written by this test are seconds old
    data = tmp_path / "data"
    files = write_folder(data, n=12, val=6)
    reads = []
    real = sources.file_sha256
    monkeypatch.setattr(sources, "file_sha256", lambda p: reads.append(p) or real(p))
    first = load(data)
    assert len(reads) == 18  # cold: every train and val file read once
    del reads[:]
    again = load(data)
    assert reads == [] and again.digest == first.digest  # cached: nothing read
    files[5].write_bytes(files[6].read_bytes())  # one file rewritten, same name
    changed = load(data)
    assert reads == [str(files[5])] and changed.digest != first.digest
    # the plain reference (every file read, no cache) agrees with the cached digest of each split
    for split, fl, base in changed.digest_parts:
        assert sources.content_digest(fl, base) == sources.content_digest_reference(fl, base)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_content_digest_matches_the_reference_on_random_folders(seed, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "RACY_S", 0.0)
    rng = np.random.default_rng(seed)
    base = tmp_path / "f"
    files = []
    for i in range(int(rng.integers(1, 90))):  # across DIGEST_SERIAL_BELOW: serial and pooled reads
        p = base / f"c{rng.integers(0, 3)}" / f"{rng.integers(0, 10**6)}-{i}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.bytes(int(rng.integers(0, 200))))
        files.append(str(p))
    files.sort()
    want = sources.content_digest_reference(files, base)
    assert sources.content_digest(files, base, workers=4) == want  # cold
    assert sources.content_digest(files, base) == want  # cached


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_unreadable_class_folder_is_refused_and_never_cached_short(tmp_path, monkeypatch, capsys, split):
    from pic_bench.suite.run import main

    data = tmp_path / "data"
    write_folder(data, n=12, val=6)
    locked = data / split / "c1"
    real = os.scandir

    def scandir(path=".", *a, **kw):
        if os.fspath(path) == str(locked):  # as chmod 000 would (the tests may run as root, which ignores it)
            raise PermissionError(13, "Permission denied", str(locked))
        return real(path, *a, **kw)

    monkeypatch.setattr(os, "scandir", scandir)
    abl = tmp_path / "a.yaml"
    abl.write_text("name: locked\nseeds: [0]\n")
    rc = main([str(abl), "smoke", "--results", str(tmp_path / "res"), "--no-baselines", "-q",
               "data.dataset=imagefolder", f"data.root={data}", "data.num_instances=0", "data.test_size=0",
               "optim.batch_size=4", "pic.K=8", "pic.D=8", "pic.S=4", "optim.max_steps=1", "eval.knn_k=3"])
    err = capsys.readouterr().err
    assert rc == 2 and f"error: cannot read directory {locked}" in err  # before: trained on 2 of 3 classes
    assert not (tmp_path / "res" / "rows").exists()
    monkeypatch.setattr(os, "scandir", real)  # permissions fixed: the whole folder, not a cached short list
    s = load(data)
    assert s.N == 12 and len(s.test) == 6


def test_names_that_are_not_utf8_or_hold_separators_are_listed_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "RACY_S", 0.0)
    data = tmp_path / "data"
    files = write_folder(data, n=6)
    odd = [os.fsdecode(b"c0/\xff\xfe-latin.jpg"), "c1/a\x1cb.jpg", "c2/c\u2028d.jpg", "c0/tab\there.jpg",
           "c1/e\x85f.jpg"]
    for name in odd:
        (data / "train" / name).write_bytes(files[0].read_bytes())
    age(data)
    a = load(data)  # before: UnicodeEncodeError writing the listing
    b = load(data)  # from the cache: before, a KeyError or a shifted list for names that splitlines() splits
    assert a.N == b.N == 11 and a.train.files == b.train.files and a.digest == b.digest
    assert all(str(data / "train" / n) in a.train.files for n in odd)
    assert list(a.train.labels) == list(b.train.labels)
    assert a.index_digest == sources.digest_files_reference(a.train.files, data / "train")


def test_a_name_with_a_line_break_is_refused_naming_it(tmp_path):
    data = tmp_path / "data"
    files = write_folder(data, n=6)
    (data / "train" / "c1" / "line\n.jpg").write_bytes(files[0].read_bytes())
    age(data)
    with pytest.raises(DatasetError, match=r"line\\n\.jpg.*line break"):
        load(data)


def test_a_file_rewritten_behind_the_cache_is_refused_by_the_probe(tmp_path, monkeypatch):
    """A file whose stat looks unchanged to the cache (as when a tool restores the size and times) but whose bytes
    changed: the probe, which reads every byte, refuses the run naming both digests and corrects the cache."""
    from pic_bench.data.probe import probe

    monkeypatch.setattr(sources, "RACY_S", 0.0)
    data = tmp_path / "data"
    files = write_folder(data, n=12, val=6)
    before = load(data)
    victim = files[3]
    victim.write_bytes(files[4].read_bytes())
    hp = sources.hashes_path(data / "train")
    rel = os.path.relpath(victim, data / "train")
    st = sources._stat_key(str(victim))
    lines = [line if not line.endswith("\t" + rel) else "\t".join([line.split("\t")[0], st, rel])
             for line in hp.read_text().split("\n")]
    hp.write_text("\n".join(lines))  # the cache now holds the old hash under the new stat
    stale = load(data)
    assert stale.digest == before.digest
    with pytest.raises(DatasetError, match=f"digest was {before.digest[:16]}.*bytes read now give"):
        probe(stale, "error")  # before: trained under the old data's cell
    fresh = load(data)
    assert fresh.digest != before.digest
    probe(fresh, "error")

"""The cost of a folder's content digest beside its listing (issue 21): generates N tiny distinct JPEG files under
``--dir`` (kept for reruns), then times the listing and the content digest, cold (no cache) and cached.

    python -m pic_bench.bench.digest --files 200000 --dir /tmp/digest_bench

"Cold" starts with an empty ``$PIC_BENCH_CACHE`` (a private one under --dir); the page cache is whatever the
machine holds (the files were just written: warm), so a first read from a cold disk costs more.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path


def make_folder(root: Path, n: int, classes: int = 100) -> None:
    import torch

    from ..data.sources import encode_jpeg

    if sum(1 for _ in root.glob("c*/*.jpg")) == n:
        return
    shutil.rmtree(root, ignore_errors=True)
    jpg = encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8))
    for i in range(n):
        d = root / f"c{i % classes:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:07d}.jpg").write_bytes(jpg + i.to_bytes(4, "big"))  # distinct bytes per file
    t = time.time() - 3600  # an old dataset: directories modified seconds ago are not trusted by the listing
    for d, _, _ in os.walk(root):
        os.utime(d, (t, t))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pic_bench.bench.digest", description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--dir", default="/tmp/digest_bench")
    args = ap.parse_args(argv)
    root = Path(args.dir) / "train"
    make_folder(root, args.files)
    os.environ["PIC_BENCH_CACHE"] = str(Path(args.dir) / "cache")
    shutil.rmtree(os.environ["PIC_BENCH_CACHE"], ignore_errors=True)
    from ..data.sources import cached_listing, content_digest

    def timed(f):
        t0 = time.perf_counter()
        out = f()
        return time.perf_counter() - t0, out

    t_list, (files, _, _) = timed(lambda: cached_listing(root, guard=None))
    t_list2, _ = timed(lambda: cached_listing(root, guard=None))
    t_cold, d1 = timed(lambda: content_digest(files, root))
    t_warm, d2 = timed(lambda: content_digest(files, root))
    assert d1 == d2
    print(f"{len(files)} files of {os.path.getsize(files[0])} bytes: listing cold {t_list:.2f} s, cached "
          f"{t_list2:.2f} s; content digest cold {t_cold:.2f} s, cached {t_warm:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Loader throughput: DALI against torchvision, the strong recipe at 224 px with two views, real JPEGs.

    python -m pic_bench.bench.loader                                  # generated JPEGs, every loader
    python -m pic_bench.bench.loader --root /data/imagenet --batch 256 --threads 8 --steps 40

Without ``--root`` it writes 500x375 RGB JPEGs (the size of a typical ImageNet photo) made from Fashion-MNIST
images (synthetic glyphs where Fashion-MNIST is not installed), upscaled and tinted, into a tmp folder, and says
which in every row. A sample is one image decoded and
augmented into ``--views`` views. Rows go to ``results/bench/loader-<machine>.json`` (``cpu<cores>`` or the GPU's
name), replacing earlier rows of the same setting, each with the command, versions, device and load average.

Variants (same recipe, same images, same order):
- ``dali``: DALI on the GPU (nvJPEG decode) when there is one, else on the CPU; ``dali-cpu`` forces the CPU.
  Its blur is exact (window = the recipe's kernel, 23 taps at 224 px).
- ``torchvision``: the torchvision loader as training uses it (``data.workers`` processes), exact 23-tap blur.
- ``torchvision-pilblur``: the same with PIL's GaussianBlur (an approximation by box blurs, much faster on a
  CPU); not the training recipe, listed for comparison with loaders that use it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2 as T

from ..config import Config, DataConfig, apply
from ..data.augment import Recipe, recipes, torchvision_transform
from ..data.sources import FASHION_MNIST_FILES, DatasetError, FolderSet, Source, _find_fashion_mnist, _idx, list_folder
from ..data.torchvision_loader import TorchvisionLoader
from ..report.results import device_key, device_name, provenance
from ..report.timing import measure as timed, warn_if_contended
from ..data.window import EpochOrder

VARIANTS = ("dali", "dali-cpu", "torchvision", "torchvision-pilblur")


class PilGaussianBlur(torch.nn.Module):
    """PIL's GaussianBlur(radius = sigma ~ U(sigma range)) on a uint8 (C, H, W) tensor."""

    def __init__(self, sigma: tuple[float, float]):
        super().__init__()
        self.sigma = sigma

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        from PIL import Image, ImageFilter

        s = float(torch.empty(1).uniform_(*self.sigma))
        arr = img.permute(1, 2, 0).numpy()
        im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).filter(ImageFilter.GaussianBlur(s))
        out = torch.from_numpy(np.asarray(im).copy())
        return (out[None] if out.ndim == 2 else out.permute(2, 0, 1)).contiguous()


def with_pil_blur(r: Recipe) -> T.Compose:
    """``torchvision_transform(r)`` with its exact GaussianBlur swapped for PIL's."""
    ops = []
    for op in torchvision_transform(r).transforms:
        if isinstance(op, T.RandomApply) and isinstance(op.transforms[0], T.GaussianBlur):
            op = T.RandomApply([PilGaussianBlur(r.blur_sigma)], p=op.p)
        ops.append(op)
    return T.Compose(ops)


def synthetic_glyphs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n 28 x 28 uint8 grey images of 10 classes without any dataset: a class-shaped blob (an ellipse whose axes
    and angle follow the class) with random offset and smooth noise, so JPEG sizes and decode work resemble
    Fashion-MNIST's upscaled photos' rather than flat colour. Returns (images (n, 28, 28), labels (n,))."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    y = np.arange(n) % 10
    out = np.empty((n, 28, 28), np.uint8)
    for i in range(n):
        a, b, th = 4 + y[i] % 5 * 2, 12 - y[i] % 4 * 2, y[i] * np.pi / 10
        cy, cx = 14 + rng.normal(0, 1.5, 2)
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        blob = np.clip(1.5 - np.sqrt((u / a) ** 2 + (v / b) ** 2), 0, 1)
        noise = rng.normal(0, 1, (7, 7)).repeat(4, 0).repeat(4, 1) * 0.15
        out[i] = np.clip((blob + noise * blob) * 255, 0, 255).astype(np.uint8)
    return out, y


def generate_jpegs(folder: Path, n: int, H: int = 375, W: int = 500, seed: int = 0) -> tuple[Path, str]:
    """n Fashion-MNIST training images (``synthetic_glyphs`` where Fashion-MNIST is not installed, e.g. on a bare
    GPU machine), upscaled (bicubic) to W x H and tinted with a random foreground and background colour each, as
    RGB JPEGs (quality 90) in folder/train/<class>/. Returns (folder/train, which images: "Fashion-MNIST" or
    "synthetic")."""
    from PIL import Image

    try:
        p = _find_fashion_mnist("")
        x, y = _idx(p, FASHION_MNIST_FILES["train_images"])[:n], _idx(p, FASHION_MNIST_FILES["train_labels"])[:n]
        kind = "Fashion-MNIST"
    except DatasetError as e:  # not installed: no dataset needed for a throughput figure
        print(f"bench.loader: Fashion-MNIST not found ({str(e).splitlines()[0]}): synthetic images",
              file=sys.stderr)
        x, y = synthetic_glyphs(n, seed)
        kind = "synthetic"
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = np.asarray(Image.fromarray(x[i]).resize((W, H), Image.BICUBIC), np.float32)[:, :, None] / 255
        fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        rgb = (a * fg + (1 - a) * bg).round().clip(0, 255).astype(np.uint8)  # (H, W, 3)
        out = folder / "train" / f"c{int(y[i])}" / f"{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(out, format="JPEG", quality=90)
    return folder / "train", kind


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its live child processes (loader workers), Linux."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            f = stat.read_text().rsplit(")", 1)[1].split()  # fields after the command name
        except OSError:
            continue
        if f[1] == me:  # ppid
            total += (int(f[11]) + int(f[12])) / tick  # utime + stime
    return total


def measure(batches, B: int, warmup: int, steps: int, sync) -> tuple[float, float, float]:
    """Samples per second over `steps` batches after `warmup` ones, CPU milliseconds per sample over the same
    batches (robust to other load on a shared machine), seconds until the warm-up was done."""
    t_start = time.perf_counter()
    for _ in range(warmup):
        next(batches)
    sync()
    t0, c0 = time.perf_counter(), cpu_seconds()
    for _ in range(steps):
        next(batches)
    sync()
    t1, c1 = time.perf_counter(), cpu_seconds()
    batches.close()
    return B * steps / (t1 - t0), (c1 - c0) * 1e3 / (B * steps), t0 - t_start


def run(variant: str, source: Source, recipe: Recipe, args) -> dict:
    B, views, threads = args.batch, args.views, args.threads
    gpu = variant == "dali" and torch.cuda.is_available() and args.device != "cpu"
    cfg = apply(Config(), {"optim.batch_size": B, "data.views": views, "data.workers": threads,
                           "run.seed": 0, "run.device": "cuda" if gpu else "cpu"}, "bench")
    schedule = EpochOrder(source.N, 0)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    if variant.startswith("dali"):
        from ..data.dali import DaliLoader

        loader = DaliLoader(source, schedule, cfg, recipe, None, device="gpu" if gpu else "cpu")
        blur = f"exact, {recipe.blur_kernel} taps (DALI gaussian_blur)"
    else:
        loader = TorchvisionLoader(source.train, schedule, B, recipe, None, views, 0, 0, threads)
        if variant == "torchvision-pilblur":
            loader.ds.large = with_pil_blur(recipe)
            blur = "PIL GaussianBlur (box-blur approximation; not the training recipe)"
        else:
            blur = f"exact, {recipe.blur_kernel} taps (torchvision GaussianBlur)"
    load_before = os.getloadavg()
    with timed("cuda" if gpu else None) as seg:
        rate, cpu_ms, startup = measure(loader.iterate(0, args.warmup + args.steps), B, args.warmup, args.steps, sync)
    # the loader's work runs in its worker processes (or DALI threads): count them, and their number as threads
    seg.update(wall_s=round(B * args.steps / rate, 4), cpu_s=round(cpu_ms * B * args.steps / 1e3, 4),
               threads=max(1, threads),
               note="wall_s, cpu_s: the timed batches, the loader workers' CPU included; threads: the workers")
    warn_if_contended(seg, f"loader {variant}")
    return {
        "bench": "loader", "loader": variant, "backend": "gpu" if gpu else "cpu", "samples_per_s": round(rate, 1),
        "views_per_s": round(rate * views, 1), "cpu_ms_per_sample": round(cpu_ms, 1), "startup_s": round(startup, 2),
        "batch": B, "views": views,
        "size": recipe.size, "threads": threads, "steps": args.steps, "warmup": args.warmup, "blur": blur,
        "recipe": "strong (MoCo v2: crop 0.08-1, jitter 0.4/0.4/0.4/0.1 p 0.8, gray 0.2, blur 0.1-2 p 0.5, flip)",
        "images": args.images_note, "load_avg_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "timing": seg,
        "command": " ".join(["python -m pic_bench.bench.loader", *sys.argv[1:]]),
        **provenance("cuda" if gpu else "cpu"),
    }


def write_rows(rows: list[dict], out_dir: Path, machine: str) -> Path:
    """Writes rows to out_dir/loader-<machine>.json, replacing earlier rows of the same setting."""
    path = out_dir / f"loader-{machine}.json"
    key = ("loader", "backend", "batch", "views", "size", "threads", "images")
    old = json.loads(path.read_text()) if path.is_file() else []
    new_keys = {tuple(r[k] for k in key) for r in rows}
    kept = [r for r in old if tuple(r.get(k) for k in key) not in new_keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(kept + rows, indent=1, sort_keys=True, default=str) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pic_bench.bench.loader", description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="", help="ImageNet-style folder (root/train/<class>/<img> or root/<class>/"
                    "<img>); default: generate JPEGs from Fashion-MNIST (synthetic without it) in a tmp dir")
    ap.add_argument("--images", type=int, default=512, help="how many JPEGs to generate (without --root)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="timed batches per loader")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches first (pipeline build, worker start)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="DALI threads and torchvision worker processes")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--loaders", default="dali,torchvision,torchvision-pilblur", help=f"some of {VARIANTS}")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu"), help="cpu: no GPU even if there is one")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.loaders.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown loader(s) {sorted(unknown)}; choose from {VARIANTS}")
    torch.set_num_threads(1)  # the loaders' own threads / processes do the work
    with tempfile.TemporaryDirectory(prefix="pic_bench_jpegs_") as tmp:
        if args.root:
            root = Path(args.root)
            train = root / "train" if (root / "train").is_dir() else root
            args.images_note = f"folder {root}"
        else:
            t0 = time.perf_counter()
            train, kind = generate_jpegs(Path(tmp), args.images)
            args.images_note = (f"generated: {args.images} {kind} images upscaled to 500x375 RGB JPEG "
                                f"(quality 90, tinted) in a tmp dir")
            print(f"no --root: {args.images_note} ({time.perf_counter() - t0:.1f} s)", flush=True)
        files, labels, _ = list_folder(train)
        imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        source = Source("bench", FolderSet(files, labels), FolderSet(files, labels), 3, *imagenet, "bench")
        recipe, _ = recipes(DataConfig(aug="strong", image_size=args.size, crop_min=0.08), 3, *imagenet)
        rows = []
        for v in variants:
            row = run(v, source, recipe, args)
            rows.append(row)
            print(f"{v:>20} ({row['backend']}): {row['samples_per_s']:8.1f} samples/s, "
                  f"{row['cpu_ms_per_sample']:.1f} CPU ms/sample (start {row['startup_s']} s, "
                  f"load {row['load_avg_1min']})", flush=True)
    machine = device_key(device_name("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"))
    path = write_rows(rows, Path(args.out), machine)
    print("\n| loader | backend | samples/s | CPU ms/sample | batch | threads | blur |\n" + "| --- " * 7 + "|")
    for r in rows:
        print(f"| {r['loader']} | {r['backend']} | {r['samples_per_s']} | {r['cpu_ms_per_sample']} | {r['batch']} | "
              f"{r['threads']} | {r['blur']} |")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

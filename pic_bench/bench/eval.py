"""Evaluation throughput: images/s through the evaluation loader (decode + eval transform, then + the frozen
backbone), and kNN queries/s (float32 reference, chunked float32 / bfloat16 path) on this machine.

    python -m pic_bench.bench.eval                                   # generated JPEGs, ResNet-50 at 224 px
    python -m pic_bench.bench.eval --images 64 --workers 2 --knn-train 50000
    python -m pic_bench.bench.eval --root /data/imagenet/val --images 5000 --workers 8   # a real folder

Without ``--root`` it writes ``--images`` 500x375 RGB JPEGs (``bench.loader.generate_jpegs``: Fashion-MNIST
upscaled and tinted, the size of a typical ImageNet photo) into a tmp folder, and says so in every row. kNN runs
on random clustered features of ``--knn-train`` x ``--dim`` against ``--knn-test`` queries, k = 200, t = 0.07.
Rows go to ``results/bench/eval-<machine>.json`` (``cpu<cores>`` or the GPU's name), replacing earlier rows of the
same setting, each with the command, versions, device and load average. Extrapolation to ImageNet is a row
field (``imagenet_eval_h``: train + val = 1,331,167 images at the measured rate), not a measurement.
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

from ..config import ModelConfig
from ..data.augment import eval_transform
from ..data.sources import FolderSet, list_folder
from ..eval.evaluate import embed, knn_top1, knn_top1_chunked
from ..pic.model import PICModel
from ..report.results import device_key, device_name, provenance
from ..report.timing import Measurer, warn_if_contended
from .loader import generate_jpegs

IMAGENET_TRAIN_VAL = 1_281_167 + 50_000
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_embed(images: FolderSet, fn, device, args, what: str) -> dict:
    t = eval_transform(args.size, MEAN, STD)
    embed(FolderSet(images.files[:args.batch], images.labels[:args.batch]), fn, t, device, batch=args.batch,
          workers=0, out_device=device)  # warm-up: first conv algorithms, page cache
    _sync(device)
    load0, t0, m = os.getloadavg()[0], time.perf_counter(), Measurer(device).start()
    f, _ = embed(images, fn, t, device, batch=args.batch, workers=args.workers, out_device=device)
    _sync(device)
    dt, seg = time.perf_counter() - t0, m.stop()
    warn_if_contended(seg, what)
    rate = len(images) / dt
    return {"bench": "eval", "what": what, "images_per_s": round(rate, 2), "images": len(images),
            "batch": args.batch, "workers": args.workers, "size": args.size, "arch": args.arch,
            "feature_dim": int(f.shape[1]), "wall_s": round(dt, 2), "imagenet_eval_h": round(
                IMAGENET_TRAIN_VAL / rate / 3600, 2), "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "timing": seg}


def bench_knn(device: torch.device, dtype: torch.dtype, path: str, args) -> dict:
    g = torch.Generator().manual_seed(0)
    C = 100
    centres = torch.randn(C, args.dim, generator=g)
    ytr = torch.randint(0, C, (args.knn_train,), generator=g)
    yte = torch.randint(0, C, (args.knn_test,), generator=g)
    trf = centres[ytr] + 2 * torch.randn(args.knn_train, args.dim, generator=g)
    tef = centres[yte] + 2 * torch.randn(args.knn_test, args.dim, generator=g)
    trf, tef = trf.to(device, dtype), tef.to(device, dtype)
    load0 = os.getloadavg()[0]
    _sync(device)
    t0, m = time.perf_counter(), Measurer(device).start()
    if path == "reference":
        top1 = knn_top1(trf, ytr.numpy(), tef, yte.numpy(), 200, 0.07)
    else:
        top1 = knn_top1_chunked(trf, ytr.numpy(), tef, yte.numpy(), 200, 0.07)
    _sync(device)
    dt, seg = time.perf_counter() - t0, m.stop()
    warn_if_contended(seg, f"knn {path}")
    return {"bench": "knn", "what": f"knn {path} {str(dtype).removeprefix('torch.')} on {device.type}",
            "queries_per_s": round(args.knn_test / dt, 1), "train": args.knn_train, "test": args.knn_test,
            "dim": args.dim, "k": 200, "top1": round(top1, 3), "wall_s": round(dt, 3),
            "feature_mib": round(trf.numel() * trf.element_size() / 2**20, 1),
            "imagenet_knn_min": round(50_000 / (args.knn_test / dt) * (IMAGENET_TRAIN_VAL - 50_000) / args.knn_train
                                      / 60, 1),
            "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)], "timing": seg}


def write_rows(rows: list[dict], out_dir: Path, machine: str) -> Path:
    """Writes rows to out_dir/eval-<machine>.json, replacing earlier rows of the same setting."""
    path = out_dir / f"eval-{machine}.json"
    key = ("bench", "what", "images", "batch", "workers", "size", "arch", "train", "test", "dim")
    old = json.loads(path.read_text()) if path.is_file() else []
    new_keys = {tuple(r.get(k) for k in key) for r in rows}
    kept = [r for r in old if tuple(r.get(k) for k in key) not in new_keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(kept + rows, indent=1, sort_keys=True, default=str) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pic_bench.bench.eval", description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="", help="image folder (root/<class>/<img>); default: generated JPEGs")
    ap.add_argument("--images", type=int, default=256, help="images to embed (generated, or the first of --root)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader worker processes")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--arch", default="resnet50", choices=("resnet18", "resnet50", "small_cnn"))
    ap.add_argument("--knn-train", type=int, default=100_000)
    ap.add_argument("--knn-test", type=int, default=1_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu"), help="cpu: no GPU even if there is one")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    command = " ".join(["python -m pic_bench.bench.eval", *(sys.argv[1:] if argv is None else argv)])
    rows = []
    with tempfile.TemporaryDirectory(prefix="pic_bench_eval_") as tmp:
        if args.root:
            files, labels, _ = list_folder(Path(args.root))
            note = f"folder {Path(args.root).name}"
        else:
            files, labels, _ = list_folder(generate_jpegs(Path(tmp), args.images)[0])
            note = f"generated: {args.images} Fashion-MNIST images upscaled to 500x375 RGB JPEG (quality 90)"
        images = FolderSet(files[:args.images], labels[:args.images])
        model = PICModel(ModelConfig(arch=args.arch), 3).to(device).eval()
        for what, fn in (("loader only (decode + eval transform)", lambda x: x.flatten(1)[:, :1]),
                         (f"loader + {args.arch} features", model.features)):
            r = bench_embed(images, fn, device, args, what)
            rows.append({**r, "images_note": note, "device": device_name(device)})
            print(f"{what:>40}: {r['images_per_s']:8.2f} images/s (ImageNet train+val ~{r['imagenet_eval_h']} h)",
                  flush=True)
    paths = [("reference", torch.float32)] if device.type == "cpu" else []
    paths += [("chunked", torch.float32), ("chunked", torch.bfloat16)]
    for path, dtype in paths:
        r = bench_knn(device, dtype, path, args)
        rows.append(r)
        print(f"{r['what']:>40}: {r['queries_per_s']:8.1f} queries/s over {args.knn_train} x {args.dim} "
              f"({r['feature_mib']} MiB; ImageNet val ~{r['imagenet_knn_min']} min), top-1 {r['top1']}", flush=True)
    prov = provenance(device)
    for r in rows:
        r.update(command=command, **{k: prov[k] for k in ("git_sha", "git_dirty", "versions", "host", "time")},
                 torch_threads=torch.get_num_threads())
        r.setdefault("device", device_name(device))
    path = write_rows(rows, Path(args.out), device_key(device_name(device)))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

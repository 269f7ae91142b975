"""The DALI loader's GPU path: nvJPEG decode (device="mixed") and augmentation on the GPU. Skipped cleanly
without CUDA or without DALI's GPU backend (``dali.gpu_backend_missing``: DALI's own device count, no graph run);
a GPU graph that raises fails.

    python -m pytest tests/test_dali_gpu.py -q                    # on a GPU machine
    python -m pic_bench.bench.loader --batch 256 --threads 8      # then the throughput row for that GPU
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("nvidia.dali", reason="needs nvidia-dali with its CUDA backend")

from test_dali import (
    config,
    dali,
    folder_source,
    memory_source,
    same_batches,
    tinted,
    torchvision_reference,
    write_folder,
)

from pic_bench.config import build
from pic_bench.data import dali as D
from pic_bench.data.augment import Recipe, recipes
from pic_bench.pic.train import Trainer
from pic_bench.data.window import EpochOrder, SlidingWindow


if D.gpu_backend_missing():  # asks DALI's backend, runs no graph: a broken GPU graph fails the tests below
    pytest.skip(f"no DALI GPU backend: {D.gpu_backend_missing()}", allow_module_level=True)


def test_the_gpu_graph_runs():
    """The smallest GPU graph: if it raises, that is a failure (it used to skip the whole module)."""
    r = Recipe(8, (0.5, 1.0), mean=(0.0,) * 3, std=(1.0,) * 3)
    tries, q = D.draw_view(np.random.default_rng(0), r, 2)
    out = D.augment_with_draws(tinted(2), tries, q, r, device="gpu")
    assert out is not None


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    write_folder(root, tinted(48))
    return root


def gpu_loader(src, sched, cfg, **kw):
    L, S = recipes(cfg.data, src.channels, src.mean, src.std)
    return D.DaliLoader(src, sched, cfg, L, S, device="gpu", **kw)


@pytest.mark.parametrize("kind", ["folder", "memory"])
def test_gpu_indices_follow_the_window_order_and_views_are_on_the_gpu(folder, kind):
    src = folder_source(folder) if kind == "folder" else memory_source(tinted(48), (0.4,), (0.3,))
    cfg = config(**{"data.views": 2, "data.small_views": 2, "data.small_size": 8, "run.device": "cuda"})
    sched = SlidingWindow(src.N, D=20, S=6, seed=3)
    one, many = gpu_loader(src, sched, cfg), gpu_loader(src, sched, cfg)
    many.segment_samples = 1
    a, b = list(one.iterate(0, 10)), list(many.iterate(0, 10))
    for batch in a:
        assert torch.equal(batch.index, torch.from_numpy(sched.batch(batch.step, 8)))
        assert all(v.is_cuda and v.shape == (8, 3, 16, 16) for v in batch.views)
        assert all(v.is_cuda and v.shape == (8, 3, 8, 8) for v in batch.small_views)
    same_batches(a, b)
    resumed = list(gpu_loader(src, sched, cfg).iterate(6, 10))
    same_batches(a[6:], resumed)
    held = [x.views[0].clone() for x in a]  # DALI must not reuse a returned batch's memory
    assert all(torch.equal(h, x.views[0]) for h, x in zip(held, a))


def test_gpu_ops_match_torchvision_for_the_same_draws():
    imgs = tinted(48)
    r = Recipe(24, (0.08, 1.0), jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=0.8, gray_p=0.2, blur_p=0.5,
               mean=(0.0,) * 3, std=(1 / 255,) * 3)
    tries, q = D.draw_view(np.random.default_rng(5), r, len(imgs))
    out = D.augment_with_draws(imgs, tries, q, r, device="gpu")
    want = torch.stack([torchvision_reference(imgs[i], tries[i], q[i], r) for i in range(len(imgs))])
    err = (out - want).abs()
    assert err.mean() < 0.35 and abs((out - want).mean()) < 0.1, float(err.mean())


def test_gpu_and_cpu_pipelines_agree_on_jpegs(folder):
    """Same draws, same files: only the JPEG decoders differ (nvJPEG's chroma upsampling is not
    libjpeg-turbo's), so views agree to a few grey levels on average."""
    src = folder_source(folder)
    cfg = config(**{"data.views": 2, "data.image_size": 32})
    sched = EpochOrder(src.N, 0)
    cpu = list(dali(src, sched, cfg).iterate(0, 3))
    gpu = list(gpu_loader(src, sched, cfg).iterate(0, 3))
    for c, g in zip(cpu, gpu):
        assert torch.equal(c.index, g.index)
        for u, v in zip(c.views, g.views):
            assert (u - v.cpu()).abs().mean() * 0.225 * 255 < 3.0  # normalised units -> grey levels


def test_trainer_on_the_gpu_uses_dali_and_trains():
    cfg = build("smoke", {"data.loader": "dali", "run.device": "cuda", "optim.max_steps": 5})
    t = Trainer(cfg)
    assert t.derived["loader"] == "dali" and t.loader.gpu
    metrics = t.train()
    assert t.step == 5 and np.isfinite(metrics["final_loss"])

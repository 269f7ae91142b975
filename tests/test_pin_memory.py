"""The torchvision loader's batches come in pinned memory when they go to a GPU (issue 11), so ``Batch.to`` copies
them asynchronously; on the CPU nothing is pinned. The flag is checked on the DataLoader itself, without a GPU.

    OMP_NUM_THREADS=1 python -m pytest tests/test_pin_memory.py -q
"""
from __future__ import annotations

import pytest
import torch

from pic_bench.config import build
from pic_bench.data.loaders import build_loader
from pic_bench.data.sources import load_source
from pic_bench.data.window import SlidingWindow


def loader(device, workers: int = 1):
    cfg = build("smoke", {"data.loader": "torchvision", "data.workers": workers})
    src = load_source(cfg.data)
    return build_loader(cfg, src, SlidingWindow(src.N, 48, 16, 0), device=device)


@pytest.mark.parametrize("device, pinned", [("cuda", True), (torch.device("cuda", 1), True), ("cpu", False),
                                            (None, False)])
def test_the_dataloader_pins_memory_only_for_a_cuda_device(device, pinned):
    ld = loader(device)
    assert ld.name == "torchvision" and ld.pin_memory is pinned
    assert ld.data_loader(0, 2).pin_memory is pinned  # what the worker processes' DataLoader is asked for


def test_a_cpu_batch_is_not_pinned_and_moves_blocking():
    b = next(loader("cpu", workers=0).iterate(0, 1))
    assert not b.views[0].is_pinned()
    moved = b.to(torch.device("cpu"))
    assert torch.equal(moved.views[0], b.views[0]) and torch.equal(moved.index, b.index)


@pytest.mark.gpu
@pytest.mark.parametrize("workers", [0, 1])
def test_on_a_gpu_batches_arrive_pinned_and_copy_to_the_device(workers):
    b = next(loader("cuda", workers).iterate(0, 1))
    assert all(v.is_pinned() for v in b.views) and b.index.is_pinned()
    on = b.to(torch.device("cuda"))
    torch.cuda.synchronize()
    assert on.views[0].is_cuda and torch.equal(on.views[0].cpu(), b.views[0]) and torch.equal(on.index.cpu(), b.index)

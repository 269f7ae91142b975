"""Evaluation on frozen features: a weighted kNN monitor (NPID) and a linear probe, for the trained network and
for two baselines under the same protocols: the randomly initialised network and raw pixels.

kNN (Wu et al. 2018, as in NPID and the PIC code base): cosine similarity to every training feature, the top k
neighbours vote for their class with weight exp(sim / t). Linear probe: standardise the features (training
statistics), then a full-batch multinomial logistic regression with Adam; report test top-1.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .config import EvalConfig
from .data.augment import eval_transform
from .data.sources import BadImageError, ImageSet


@torch.no_grad()
def embed(images: ImageSet, fn, size: int, mean, std, device, batch: int = 512, on_bad_image: str = "error"
          ) -> tuple[torch.Tensor, np.ndarray]:
    """fn(x) for every image of the set after the deterministic eval transform.

    Returns:
        (n, f) float32 features on CPU and the labels of the images they belong to (images that fail to decode
        are left out with on_bad_image=skip, and raise BadImageError naming the file otherwise).
    """
    t = eval_transform(size, mean, std)
    out, keep = [], []
    for s in range(0, len(images), batch):
        xs = []
        for i in range(s, min(s + batch, len(images))):
            try:
                xs.append(t(images.load(i)))
                keep.append(i)
            except BadImageError:
                if on_bad_image == "error":
                    raise
        if xs:
            out.append(fn(torch.stack(xs).to(device)).float().cpu())
    return torch.cat(out), images.labels[np.asarray(keep, dtype=np.int64)]


@torch.no_grad()
def knn_top1(train_f: torch.Tensor, train_y: np.ndarray, test_f: torch.Tensor, test_y: np.ndarray, k: int,
             t: float, num_classes: int | None = None, chunk: int = 1024) -> float:
    """Weighted kNN top-1 (%) of test features against training features (cosine)."""
    trf = F.normalize(train_f, dim=1)
    tey = torch.as_tensor(test_y)
    try_ = torch.as_tensor(train_y)
    C = num_classes or int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(trf))
    correct = 0
    for s in range(0, len(test_f), chunk):
        q = F.normalize(test_f[s:s + chunk], dim=1)
        sim, idx = (q @ trf.t()).topk(k, dim=1)  # (b, k)
        votes = torch.zeros(len(q), C).scatter_add_(1, try_[idx], (sim / t).exp())
        correct += int((votes.argmax(1) == tey[s:s + chunk]).sum())
    return 100.0 * correct / len(test_f)


def linear_probe_top1(train_f: torch.Tensor, train_y: np.ndarray, test_f: torch.Tensor, test_y: np.ndarray,
                      epochs: int, lr: float, seed: int = 0) -> float:
    """Linear probe top-1 (%): logistic regression on standardised frozen features."""
    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6
    xtr, xte = (train_f - mu) / sd, (test_f - mu) / sd
    ytr = torch.as_tensor(train_y)
    C = int(max(train_y.max(), test_y.max())) + 1
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(xtr.shape[1], C)
    with torch.no_grad():
        lin.weight.normal_(0, 0.01, generator=g)
        lin.bias.zero_()
    opt = torch.optim.Adam(lin.parameters(), lr=lr * 0.1, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            F.cross_entropy(lin(xtr), ytr).backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return 100.0 * float((lin(xte).argmax(1) == torch.as_tensor(test_y)).float().mean())


def evaluate_features(train_f, train_y, test_f, test_y, cfg: EvalConfig, seed: int) -> dict[str, float]:
    out = {"knn_top1": knn_top1(train_f, train_y, test_f, test_y, cfg.knn_k, cfg.knn_t)}
    if cfg.linear:
        out["linear_top1"] = linear_probe_top1(train_f, train_y, test_f, test_y, cfg.linear_epochs, cfg.linear_lr,
                                               seed)
    return out


def evaluate_model(model, source, size: int, cfg: EvalConfig, device, seed: int, on_bad_image: str = "error"
                   ) -> dict[str, float]:
    was_training = model.training
    model.eval()
    trf, try_ = embed(source.train, model.features, size, source.mean, source.std, device, on_bad_image=on_bad_image)
    tef, tey = embed(source.test, model.features, size, source.mean, source.std, device, on_bad_image=on_bad_image)
    model.train(was_training)
    return evaluate_features(trf, try_, tef, tey, cfg, seed)


def evaluate_pixels(source, size: int, cfg: EvalConfig, seed: int, on_bad_image: str = "error") -> dict[str, float]:
    flat = lambda x: x.flatten(1)  # noqa: E731
    trf, try_ = embed(source.train, flat, size, source.mean, source.std, "cpu", on_bad_image=on_bad_image)
    tef, tey = embed(source.test, flat, size, source.mean, source.std, "cpu", on_bad_image=on_bad_image)
    return evaluate_features(trf, try_, tef, tey, cfg, seed)

"""Evaluation on a frozen backbone: a weighted kNN monitor (NPID) and a linear classifier, for the trained network
and for two baselines under the same protocols: the randomly initialised network and raw pixels.

kNN (Wu et al. 2018, as in NPID and the PIC code base): cosine similarity to every training feature, the top k
neighbours vote for their class with weight exp(sim / t). Features come from the deterministic eval transform
(``data.augment.eval_transform``). ``knn_top1`` is the plain float32 reference; ``knn_top1_chunked`` is the path
for large sets: features kept on the device in ``eval.feature_dtype`` (bfloat16 on CUDA by default, half the
memory of float32), similarities of each (test chunk, train chunk) pair computed in float32 from the up-cast
features, the running top-k merged in float32, votes summed in float32.

Three linear protocols (``eval.protocol``):

- ``probe`` (the small presets): standardise the cached centre-crop features (training statistics), then
  ``eval.linear_epochs`` full-batch steps of multinomial logistic regression with Adam, cosine-decayed; Adam's
  step size is ``eval.linear_lr x 0.1`` (kept so that committed rows stay what the code computes). Test top-1.
- ``logreg`` (the ``scale`` preset, issue 19): the same standardised features, a multinomial logistic regression
  fitted to convergence (full-batch L-BFGS in float64 until the largest |gradient| is below 1e-5, at most
  ``eval.logreg_max_steps`` iterations) with weight decay ``eval.logreg_l2``; 0 chooses it from
  ``LOGREG_L2_GRID`` on a held-out fifth of the training features (never the test set), then refits on all of
  them. The row states the decay, its held-out top-1, the iterations, the final objective and gradient and whether
  it converged. ``probe`` stops early (the issue measured 87.51 at 200 Adam steps and 86.67 at 1,000 on one set of
  features), which is why its number moves with its step count.
- ``linear_sgd`` (the paper preset): the official linear evaluation, bl0/PIC ``main_linear.py`` with
  ``contrast/option.py``'s linear-stage defaults and the ``NULL`` / ``val`` transforms of
  ``contrast/data/transform.py``: a linear layer (PyTorch's default init) on the frozen backbone, SGD with total
  batch ``eval.sgd_batch`` 256, lr ``eval.sgd_lr`` 30, momentum 0.9, weight decay 0, ``eval.sgd_epochs`` 100,
  stepped every iteration: linear warm-up from lr / 100 (option.py's ``--warmup-multiplier 100``) over
  ``eval.sgd_warmup_epochs`` 5 epochs, then cosine; training images RandomResizedCrop(image_size, scale
  (0.08, 1)) + horizontal flip, fresh every epoch; validation images resized to round(image_size * 256 / 224)
  and centre-cropped to image_size; top-1 and top-5 of the final epoch's classifier.

  Where ours differs from the official run (all deliberate, or unavoidable):
  * the backbone stays in eval mode (BatchNorm uses its trained running statistics); ``main_linear.py`` calls
    ``model.train()`` on the whole network, so its frozen BatchNorm layers normalise with batch statistics and
    keep updating their running statistics during the linear stage;
  * the validation resize is image_size * 256 / 224 (the issue's spec); the official ``val`` transform resizes
    to image_size + 32, the same number at 224 px (256) and different elsewhere;
  * the cosine decays to 0 after warm-up; the official scheduler (``contrast/lr_scheduler.py``, not in our
    reference copy) is the usual GradualWarmupScheduler + CosineAnnealingLR, whose floor we could not check;
  * fp32 throughout (the official default is apex AMP O1); every validation image is scored (the official
    validation loader drops the last partial batch per rank); the linear layer is seeded from ``run.seed``;
  * augmentation is drawn from a seed of (run seed, epoch, image index), so it does not depend on the number of
    loader workers or ranks, and ``linear_sgd`` is reproducible given a seed;
  * a training set smaller than one batch trains on batches of all its images (the official loader would
    yield no batch at all with ``drop_last``).

Evaluation reads through a torchvision ``DataLoader`` with ``data.workers`` worker processes (also when training
used DALI: the eval transforms are deterministic and cheap next to the backbone), shards every set over the ranks
of a task (rank r embeds its contiguous slice, then all-gather; ``linear_sgd`` splits each global batch), and
shows a tqdm bar with ETA on stderr from rank 0 (visible in SLURM logs, updated every 30 s there).

Evaluation is resumable on its own (``Progress``): ``run_task`` keeps ``<checkpoint stem>-eval.pt`` beside the
backbone with the features embedded so far (saved at most every 5 minutes), the kNN / probe results, and the
linear layer with its optimizer after every ``linear_sgd`` epoch; a rerun after a kill continues from there
(and from the trained state saved before evaluation began), and the file is deleted with the checkpoint once the
row is written.
"""
from __future__ import annotations

import math
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T

from ..pic import distributed
from ..pic.checkpoint import move_aside, unreadable_file
from ..config import Config, EvalConfig
from ..data.augment import eval_transform
from ..data.sources import BadImageError, ImageSet, Source, load_source

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def feature_dtype(name: str, device) -> torch.dtype:
    """``eval.feature_dtype`` on a device: auto keeps float32 on the CPU (bit-identical to earlier runs)."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return DTYPES[name]


# ---- the loader: one image set through a transform, in worker processes, sharded over ranks

def sample_seed(seed: int, epoch: int, i: int) -> int:
    """Seed of image i's augmentation in an epoch: independent of workers, ranks and batch position."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(i) * 104_729 + 0xE7A1) % (2**63 - 1)


class Transformed(Dataset):
    """Image i of a set through a transform; (x, i), or None for an undecodable image with on_bad_image=skip.

    With ``seed`` set, the transform's randomness is drawn from ``sample_seed(seed, epoch, i)``."""

    def __init__(self, images: ImageSet, transform: Callable, on_bad_image: str = "error",
                 seed: int | None = None, epoch: int = 0):
        self.images, self.transform, self.on_bad = images, transform, on_bad_image
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)  # (epoch, i) from ``EpochBatches``
        try:
            img = self.images.load(i)
        except BadImageError:
            if self.on_bad == "error":
                raise
            return None
        if self.seed is None:
            return self.transform(img), i
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, i))  # CPU only: cheap, no CUDA
            return self.transform(img), i


def _collate(items):
    items = [it for it in items if it is not None]
    if not items:
        return None
    return torch.stack([x for x, _ in items]), torch.as_tensor([i for _, i in items], dtype=torch.int64)


def batches(dataset: Transformed, index_batches, workers: int) -> DataLoader:
    """A DataLoader yielding (x, image indices) for each list of keys (image indices, or (epoch, image index)),
    in order (None for a batch whose every image failed to decode)."""
    return DataLoader(dataset, batch_sampler=index_batches, num_workers=workers, collate_fn=_collate,
                      persistent_workers=False)


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank r's contiguous slice [lo, hi) of n items (sizes differ by at most one)."""
    return n * rank // world, n * (rank + 1) // world


def progress_bar(total: int, desc: str, is_main: bool):
    from tqdm import tqdm

    # SLURM logs are files: fewer, coarser updates there than on a terminal.
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False, disable=not is_main,
                mininterval=1.0 if sys.stderr.isatty() else 30.0)


def _all_gather_rows(f: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (n_r, d) features and (n_r,) indices, concatenated in rank order (padded for the gather)."""
    world = torch_dist.get_world_size()
    n = torch.tensor([len(idx)], device=f.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    torch_dist.all_gather(sizes, n)
    m = int(max(int(s) for s in sizes))
    fp = torch.zeros(m, f.shape[1], dtype=f.dtype, device=f.device)
    ip = torch.full((m,), -1, dtype=torch.int64, device=f.device)
    fp[:len(idx)], ip[:len(idx)] = f, idx.to(f.device)
    fs, is_ = [torch.empty_like(fp) for _ in range(world)], [torch.empty_like(ip) for _ in range(world)]
    torch_dist.all_gather(fs, fp)
    torch_dist.all_gather(is_, ip)
    return (torch.cat([x[:int(s)] for x, s in zip(fs, sizes)]),
            torch.cat([x[:int(s)] for x, s in zip(is_, sizes)]))


class Progress:
    """Evaluation's own checkpoint: what is done so far (features embedded, the linear layer's epoch, results),
    one file rewritten atomically, so a preempted evaluation resumes from it instead of from training.

    ``path`` None keeps nothing (in-memory only). Each rank of a multi-rank task keeps its own file (``.r<rank>``).
    Parts are saved at most every ``every_s`` seconds (features are large), and always when a part is finished.
    ``dist`` is the task's ranks (``Trainer.dist``); without it, the running group on ``device``. A file that
    cannot be read (cut short, garbage) is named, moved aside (``.corrupt-<n>``) and the evaluation starts over.
    """

    def __init__(self, path: str | Path | None, every_s: float = 300.0, dist: distributed.Single | None = None,
                 device=None):
        dist = dist or distributed.current(device)
        if path is not None and dist.world > 1:
            path = Path(f"{path}.r{dist.rank}")
        self.path, self.every_s = (Path(path) if path is not None else None), every_s
        self.dist = dist
        self.state: dict = {}
        if self.path is not None and self.path.is_file():
            self.state = self._read(self.path)
        if dist.world > 1:
            self._agree()
        self._last = time.monotonic()

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(state, dict):
                raise pickle.UnpicklingError(f"holds a {type(state).__name__}, not an evaluation's progress")
            return state
        except Exception as e:  # noqa: BLE001 - only what says the file is unreadable is caught below
            if not unreadable_file(e):
                raise
            aside = move_aside(path)
            why = (str(e).strip().splitlines() or [""])[0][:200]
            print(f"warning: evaluation progress file {path} cannot be read ({type(e).__name__}: {why}); moved to "
                  f"{aside}; the evaluation starts over", file=sys.stderr)
            return {}

    def _agree(self) -> None:
        """Ranks resume collective parts (results, the linear layer's epoch) only where all saved the same:
        a kill between two ranks' saves must not make them wait in different collectives. Each rank's embedded
        slice is its own and is kept."""
        mine = (sorted((self.state.get("result") or {}).items()),
                (self.state.get("linear_sgd") or {}).get("epoch"))
        if not self.dist.same(mine):
            self.state.pop("result", None)
            self.state.pop("linear_sgd", None)

    def get(self, key: str):
        return self.state.get(key)

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def put(self, key: str, value) -> None:
        self.state[key] = value
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save(self.state, tmp)
        os.replace(tmp, self.path)  # atomic: a kill mid-write leaves the previous state
        self._last = time.monotonic()

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        self.state = {}


@torch.no_grad()
def embed(images: ImageSet, fn, transform: Callable, device, batch: int = 512, workers: int = 0,
          on_bad_image: str = "error", dtype: torch.dtype = torch.float32, out_device="cpu", desc: str = "embed",
          dist: distributed.Single | None = None, progress: Progress | None = None
          ) -> tuple[torch.Tensor, np.ndarray]:
    """fn(x) for every image of the set after ``transform``, read by a DataLoader, sharded over ranks.

    With ``progress``, the features embedded so far are saved under ``embed:<desc>`` and a rerun continues after
    the last saved batch.

    Returns:
        (n, f) features in ``dtype`` on ``out_device`` and the (n,) labels of the images they belong to, in set
        order (images that fail to decode are left out with on_bad_image=skip, and raise BadImageError naming
        the file otherwise). Every rank returns the whole set.
    """
    dist = dist or distributed.current(torch.device(device))
    lo, hi = shard_range(len(images), dist.rank, dist.world)
    index_batches = [list(range(s, min(s + batch, hi))) for s in range(lo, hi, batch)]
    out, keep = [], []
    store = out_device if dist.world == 1 else device  # several ranks gather on the device
    key, done = f"embed:{desc}", 0
    saved = progress.get(key) if progress is not None else None
    if saved is not None and (saved["n"], saved["batch"], saved["lo"], saved["hi"]) == (len(images), batch, lo, hi):
        done = saved["done"]
        if len(saved["idx"]):
            out, keep = [saved["f"].to(store, dtype)], [saved["idx"]]
    bar = progress_bar(hi - lo, desc, dist.is_main)
    bar.update(sum(len(b) for b in index_batches[:done]))

    def save(done: int) -> None:
        f = torch.cat(out).cpu() if out else torch.empty(0, 0, dtype=dtype)
        idx = torch.cat(keep) if keep else torch.empty(0, dtype=torch.int64)
        progress.put(key, {"n": len(images), "batch": batch, "lo": lo, "hi": hi, "done": done, "f": f, "idx": idx})

    try:
        loader = batches(Transformed(images, transform, on_bad_image), index_batches[done:], workers)
        for j, item in enumerate(loader, start=done):
            if item is not None:
                x, idx = item
                out.append(fn(x.to(device)).to(store, dtype))
                keep.append(idx)
            bar.update(len(index_batches[j]))
            if progress is not None and (progress.due() or j + 1 == len(index_batches)) and j + 1 > done:
                save(j + 1)
    finally:
        bar.close()
    if not out:
        f = torch.empty(0, 0, dtype=dtype, device=device)
        idx = torch.empty(0, dtype=torch.int64)
    else:
        f, idx = torch.cat(out), torch.cat(keep)
    if dist.world > 1:
        f, idx = _all_gather_rows(f.contiguous(), idx)
        f, idx = f.to(out_device), idx.cpu()
    if len(idx) == 0:
        raise BadImageError(f"{len(images)} images", "no image of the set could be decoded")
    idx_np = idx.numpy()
    return f, images.labels[idx_np]


# ---- weighted kNN

@torch.no_grad()
def knn_top1(train_f: torch.Tensor, train_y: np.ndarray, test_f: torch.Tensor, test_y: np.ndarray, k: int,
             t: float, num_classes: int | None = None, chunk: int = 1024) -> float:
    """Weighted kNN top-1 (%) of test features against training features (cosine): the float32 reference."""
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


@torch.no_grad()
def knn_top1_chunked(train_f: torch.Tensor, train_y: np.ndarray, test_f: torch.Tensor, test_y: np.ndarray,
                     k: int, t: float, num_classes: int | None = None, chunk: int = 1024,
                     train_chunk: int = 131072) -> float:
    """Weighted kNN top-1 (%) from features in any dtype on any device (the path for large sets).

    Args:
        train_f: (N, f) training features, e.g. bfloat16 on the GPU; read ``train_chunk`` rows at a time.
        test_f: (n, f) test features, same device; read ``chunk`` rows at a time.
    Each chunk is up-cast to float32 and normalised there; the (b, k) running top-k of the similarities and the
    votes are float32, so memory is (chunk x train_chunk) floats beyond the stored features.
    """
    device = train_f.device
    try_ = torch.as_tensor(train_y, device=device)
    tey = torch.as_tensor(test_y, device=device)
    C = num_classes or int(max(train_y.max(), test_y.max())) + 1
    N = len(train_f)
    k = min(k, N)
    correct = 0
    for s in range(0, len(test_f), chunk):
        q = F.normalize(test_f[s:s + chunk].float(), dim=1)  # (b, f)
        best_s = torch.full((len(q), 0), -math.inf, device=device)  # (b, <=k) running top-k similarities
        best_i = torch.empty((len(q), 0), dtype=torch.int64, device=device)
        for c in range(0, N, train_chunk):
            w = F.normalize(train_f[c:c + train_chunk].float(), dim=1)  # (m, f)
            sim = q @ w.t()  # (b, m) float32
            cand_s = torch.cat([best_s, sim], dim=1)
            cand_i = torch.cat([best_i, torch.arange(c, c + len(w), device=device).expand(len(q), -1)], dim=1)
            best_s, pos = cand_s.topk(min(k, cand_s.shape[1]), dim=1)
            best_i = cand_i.gather(1, pos)
        votes = torch.zeros(len(q), C, device=device).scatter_add_(1, try_[best_i], (best_s / t).exp())  # (b, C)
        correct += int((votes.argmax(1) == tey[s:s + chunk]).sum())
    return 100.0 * correct / len(test_f)


def knn(train_f, train_y, test_f, test_y, k: int, t: float) -> float:
    """The reference on CPU float32 features (what every earlier row ran), the chunked path otherwise."""
    if train_f.device.type == "cpu" and train_f.dtype == torch.float32:
        return knn_top1(train_f, train_y, test_f, test_y, k, t)
    return knn_top1_chunked(train_f, train_y, test_f, test_y, k, t)


# ---- protocol "probe": full-batch logistic regression on cached standardised features

def linear_probe_top1(train_f: torch.Tensor, train_y: np.ndarray, test_f: torch.Tensor, test_y: np.ndarray,
                      epochs: int, lr: float, seed: int = 0) -> float:
    """Linear probe top-1 (%): logistic regression on standardised frozen features (Adam step lr x 0.1)."""
    train_f, test_f = train_f.float().cpu(), test_f.float().cpu()
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


# ---- protocol "logreg": the probe trained to convergence, its weight decay chosen on held-out training features

LOGREG_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # eval.logreg_l2 = 0: the weight decays tried on the held-out fifth
LOGREG_TOL = 1e-5  # converged: the largest |gradient| of the objective below this


def logreg_fit(x: torch.Tensor, y: torch.Tensor, C: int, l2: float, max_steps: int,
               start: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Multinomial logistic regression fitted to convergence: minimises mean cross-entropy + l2 / 2 x ||W||^2
    (the bias is not decayed) with full-batch L-BFGS (strong Wolfe line search) from zero, or from ``start``
    (W, b): a warm start changes the iterations, not the minimiser (the objective is strictly convex for l2 > 0).

    Args: x (n, d) float32 features, y (n,) int64 labels, C classes. The objective is sklearn's
    ``LogisticRegression(C=1 / (l2 n))`` up to the factor n, so the two have the same minimiser.
    Returns: {"W" (C, d), "b" (C,), "steps" (L-BFGS iterations), "loss" (final objective), "grad_norm" (largest
    |gradient| at the end), "converged" (grad_norm < LOGREG_TOL)}.
    """
    x = x.double()  # float64: the gradient tolerance is below float32's resolution of the loss
    W = torch.zeros(C, x.shape[1], dtype=torch.float64) if start is None else start[0].clone().double()
    b = torch.zeros(C, dtype=torch.float64) if start is None else start[1].clone().double()
    W.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_steps, tolerance_grad=LOGREG_TOL, tolerance_change=0,
                            history_size=20, line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        loss = F.cross_entropy(x @ W.T + b, y) + 0.5 * l2 * (W * W).sum()  # (n, C) logits
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(objective)
        loss = objective()
    grad = max(float(W.grad.abs().max()), float(b.grad.abs().max()))
    steps = int(opt.state[opt._params[0]].get("n_iter", 0))  # 0: the start already met the tolerance
    return {"W": W.detach(), "b": b.detach(), "steps": steps, "loss": float(loss.detach()), "grad_norm": grad,
            "converged": grad < LOGREG_TOL}


def logreg_probe(train_f: torch.Tensor, train_y: np.ndarray, test_f: torch.Tensor, test_y: np.ndarray,
                 l2: float, max_steps: int, seed: int = 0) -> dict[str, float]:
    """Protocol ``logreg``: the probe's standardised features, a logistic regression fitted to convergence.

    With ``l2 = 0`` the weight decay is chosen from ``LOGREG_L2_GRID`` on the training features alone: fitted on a
    seeded four fifths, scored on the held-out fifth (the largest decay among the best), then refitted on every
    training feature (each fit of the path warm-started from the previous, larger decay; the refit from the chosen
    one). The test set is scored once, by the final fit. Returns the row's metrics: ``linear_top1``
    (test, %), ``linear_l2`` (the decay used), ``linear_heldout_top1`` (its held-out top-1, % ; None when given),
    ``linear_steps``, ``linear_loss``, ``linear_grad_norm`` and ``linear_converged`` of the final fit.
    """
    train_f, test_f = train_f.float().cpu(), test_f.float().cpu()
    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6
    xtr, xte = (train_f - mu) / sd, (test_f - mu) / sd
    ytr = torch.as_tensor(np.asarray(train_y), dtype=torch.int64)
    C = int(max(train_y.max(), test_y.max())) + 1
    heldout = None
    if not l2:
        n = len(ytr)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        val, fit = perm[:max(1, n // 5)], perm[max(1, n // 5):]
        scores, fits, prev = {}, {}, None
        for lam in sorted(LOGREG_L2_GRID, reverse=True):  # the regularisation path, each fit warm-started
            m = logreg_fit(xtr[fit], ytr[fit], C, lam, max_steps, prev)
            prev = fits[lam] = (m["W"], m["b"])
            pred = (xtr[val].double() @ m["W"].T + m["b"]).argmax(1)
            scores[lam] = 100.0 * float((pred == ytr[val]).double().mean())
        heldout = max(scores.values())
        l2 = max(lam for lam, sc in scores.items() if sc == heldout)
        start = fits[l2]
    else:
        start = None
    m = logreg_fit(xtr, ytr, C, l2, max_steps, start)
    pred = (xte.double() @ m["W"].T + m["b"]).argmax(1)
    top1 = 100.0 * float((pred == torch.as_tensor(np.asarray(test_y))).double().mean())
    return {"linear_top1": top1, "linear_l2": float(l2), "linear_heldout_top1": heldout,
            "linear_steps": m["steps"], "linear_loss": m["loss"], "linear_grad_norm": m["grad_norm"],
            "linear_converged": bool(m["converged"])}


# ---- protocol "linear_sgd": the official linear evaluation

def linear_train_transform(size: int, crop_min: float, mean, std) -> T.Compose:
    """Official ``NULL`` augmentation: RandomResizedCrop(size, scale (crop_min, 1)) + flip."""
    return T.Compose([T.RandomResizedCrop(size, scale=(crop_min, 1.0), antialias=True), T.RandomHorizontalFlip(),
                      T.ToDtype(torch.float32, scale=True), T.Normalize(tuple(mean), tuple(std))])


def linear_val_transform(size: int, mean, std) -> T.Compose:
    """Resize the short side to round(size * 256 / 224), centre crop size (224 px: resize 256, crop 224)."""
    return T.Compose([T.Resize(int(round(size * 256 / 224)), antialias=True), T.CenterCrop(size),
                      T.ToDtype(torch.float32, scale=True), T.Normalize(tuple(mean), tuple(std))])


def sgd_lr_schedule(lr: float, epochs: int, iters_per_epoch: int, warmup_epochs: float,
                    multiplier: float = 100.0) -> np.ndarray:
    """Per-iteration lr: linear from lr / multiplier to lr over the warm-up, then cosine to 0."""
    total = epochs * iters_per_epoch
    warm = min(int(round(warmup_epochs * iters_per_epoch)), total)
    i = np.arange(total, dtype=np.float64)
    warm_part = lr / multiplier + (lr - lr / multiplier) * i[:warm] / max(warm, 1)
    cos_part = 0.5 * lr * (1 + np.cos(np.pi * (i[warm:] - warm) / max(total - warm, 1)))
    sched = np.concatenate([warm_part, cos_part])
    assert len(sched) == total, (len(sched), total)
    return sched


def epoch_batches(n: int, B: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of one epoch: a seeded permutation cut into batches of B, the last partial one dropped
    (official ``drop_last``); a set smaller than B gives one batch of all of it."""
    g = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    perm = torch.randperm(n, generator=g).tolist()
    B = min(B, n)
    return [perm[s:s + B] for s in range(0, n - B + 1, B)]


class EpochBatches:
    """This rank's slice of every global batch of epochs [start, epochs), as lists of (epoch, image index):
    one sampler for the whole stage, so loader workers persist across epochs."""

    def __init__(self, n: int, B: int, seed: int, epochs: int, dist: distributed.Single, start: int = 0):
        self.n, self.B, self.seed, self.epochs, self.dist, self.start = n, B, seed, epochs, dist, start
        self.per_epoch = len(epoch_batches(n, B, seed, 0))

    def __len__(self) -> int:
        return (self.epochs - self.start) * self.per_epoch

    def __iter__(self):
        for epoch in range(self.start, self.epochs):
            for b in epoch_batches(self.n, self.B, self.seed, epoch):
                lo, hi = shard_range(len(b), self.dist.rank, self.dist.world)
                yield [(epoch, i) for i in b[lo:hi]]


def linear_sgd(fn, feat_dim: int, train: ImageSet, test: ImageSet, size: int, mean, std, cfg: EvalConfig,
               device, seed: int, workers: int = 0, on_bad_image: str = "error",
               dist: distributed.Single | None = None, num_classes: int | None = None,
               progress: Progress | None = None) -> dict[str, float]:
    """Trains a linear layer on fn(augmented image) with SGD (the official protocol); top-1 / top-5 (%) on test.

    ``fn`` is the frozen feature map (no gradient reaches it). Each global batch of ``eval.sgd_batch`` is split
    over the ranks (rank r: its contiguous rows, any number of ranks); the layer's gradients are combined into
    the global batch's mean. With
    ``progress``, the layer and its optimizer are saved after every epoch (``linear_sgd``) and a rerun continues
    with the next epoch, drawing the same augmentation and learning rates as an uninterrupted run.
    """
    dist = dist or distributed.current(torch.device(device))
    C = num_classes or int(max(train.labels.max(), test.labels.max())) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 31)
        fc = nn.Linear(feat_dim, C).to(device)  # PyTorch's default init, as main_linear.py's fc
    opt = torch.optim.SGD(fc.parameters(), lr=cfg.sgd_lr, momentum=cfg.sgd_momentum,
                          weight_decay=cfg.sgd_weight_decay)
    n = len(train)
    ipe = len(epoch_batches(n, cfg.sgd_batch, seed, 0))
    B = min(cfg.sgd_batch, n)  # every global batch has B images (the last partial one is dropped)
    lr = sgd_lr_schedule(cfg.sgd_lr, cfg.sgd_epochs, ipe, cfg.sgd_warmup_epochs)
    t_train = linear_train_transform(size, cfg.sgd_crop_min, mean, std)
    labels = torch.as_tensor(train.labels)
    bar = progress_bar(cfg.sgd_epochs * ipe, "linear_sgd", dist.is_main)
    bar.unit = "it"
    data = Transformed(train, t_train, on_bad_image, seed=seed)
    start = 0
    saved = progress.get("linear_sgd") if progress is not None else None
    if saved is not None:
        start = saved["epoch"]
        fc.load_state_dict(saved["fc"])
        opt.load_state_dict(saved["opt"])
        bar.update(start * ipe)
    try:
        for step, item in enumerate(batches(data, EpochBatches(n, cfg.sgd_batch, seed, cfg.sgd_epochs, dist, start),
                                            workers), start=start * ipe):
            for group in opt.param_groups:
                group["lr"] = float(lr[step])
            opt.zero_grad(set_to_none=True)
            if item is not None:
                x, idx = item
                with torch.no_grad():
                    f = fn(x.to(device)).float()  # (b, feat_dim)
                if dist.world == 1:
                    loss = F.cross_entropy(fc(f), labels[idx].to(device))
                else:  # slices may differ by one image: weight so that the rank average is the global mean
                    loss = F.cross_entropy(fc(f), labels[idx].to(device), reduction="sum") * dist.world / B
                loss.backward()
            else:  # every image of this rank's slice failed to decode: contribute a zero gradient
                for p in fc.parameters():
                    p.grad = torch.zeros_like(p)
            dist.average_gradients(list(fc.parameters()))
            opt.step()
            bar.update(1)
            if progress is not None and (step + 1) % ipe == 0:
                progress.put("linear_sgd", {"epoch": (step + 1) // ipe, "fc": fc.state_dict(),
                                            "opt": opt.state_dict()})
    finally:
        bar.close()
    f, y = embed(test, fn, linear_val_transform(size, mean, std), device, workers=workers,
                 on_bad_image=on_bad_image, out_device=device, desc="linear_sgd val", dist=dist, progress=progress)
    with torch.no_grad():
        top5 = fc(f.float()).topk(min(5, C), dim=1).indices.cpu()  # (n, 5)
    y = torch.as_tensor(y)
    return {"linear_top1": 100.0 * float((top5[:, 0] == y).float().mean()),
            "linear_top5": 100.0 * float((top5 == y[:, None]).any(1).float().mean())}


# ---- one backbone (or the pixels) under the configured protocols

def evaluate_backbone(fn, feat_dim: int, source, size: int, cfg: EvalConfig, device, seed: int,
                      on_bad_image: str = "error", workers: int = 0, progress: Progress | None = None,
                      dist: distributed.Single | None = None) -> dict[str, float]:
    """kNN on eval-transform features, then the linear protocol ``cfg.protocol`` (if ``cfg.linear``).

    With ``progress`` every finished part (embedded features, kNN, the linear layer's epochs) is kept there, so a
    rerun after a kill does only what is missing; the caller clears it once the result is safe. ``dist``: the
    task's ranks, as training has them (an NCCL group needs this rank's device); default: the running group on
    ``device``.
    """
    device = torch.device(device)
    dist = dist or distributed.current(device)
    dtype = feature_dtype(cfg.feature_dtype, device)
    t = eval_transform(size, source.mean, source.std)
    # CPU float32 features stay on the CPU (what earlier rows ran); reduced-precision ones stay on the device.
    keep = "cpu" if dtype == torch.float32 and device.type == "cpu" else device
    out = dict(progress.get("result") or {}) if progress is not None else {}
    on_features = cfg.linear and cfg.protocol in ("probe", "logreg")  # the protocols on the cached features
    need_features = "knn_top1" not in out or (on_features and "linear_top1" not in out)
    if need_features:
        trf, try_ = embed(source.train, fn, t, device, workers=workers, on_bad_image=on_bad_image, dtype=dtype,
                          out_device=keep, desc="embed train", dist=dist, progress=progress)
        tef, tey = embed(source.test, fn, t, device, workers=workers, on_bad_image=on_bad_image, dtype=dtype,
                         out_device=keep, desc="embed test", dist=dist, progress=progress)
        if "knn_top1" not in out:
            out["knn_top1"] = knn(trf, try_, tef, tey, cfg.knn_k, cfg.knn_t)
        if cfg.linear and cfg.protocol == "probe" and "linear_top1" not in out:
            out["linear_top1"] = linear_probe_top1(trf, try_, tef, tey, cfg.linear_epochs, cfg.linear_lr, seed)
        if cfg.linear and cfg.protocol == "logreg" and "linear_top1" not in out:
            out.update(logreg_probe(trf, try_, tef, tey, cfg.logreg_l2, cfg.logreg_max_steps, seed))
        del trf, tef  # the linear_sgd stage reads images again, with fresh augmentation every epoch
        if progress is not None:  # the results replace the (large) features in the saved state
            progress.state.pop("embed:embed train", None)
            progress.state.pop("embed:embed test", None)
            progress.put("result", dict(out))
    if cfg.linear and cfg.protocol == "linear_sgd" and "linear_top1" not in out:
        out.update(linear_sgd(fn, feat_dim, source.train, source.test, size, source.mean, source.std, cfg, device,
                              seed, workers, on_bad_image, dist=dist, progress=progress))
        if progress is not None:
            progress.put("result", dict(out))
    return out


def evaluate_model(model, source, size: int, cfg: EvalConfig, device, seed: int, on_bad_image: str = "error",
                   workers: int = 0, progress: Progress | None = None, dist: distributed.Single | None = None
                   ) -> dict[str, float]:
    """A PICModel's (or any module with ``features`` and ``feat_dim``) backbone features, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return evaluate_backbone(model.features, model.feat_dim, source, size, cfg, device, seed, on_bad_image,
                                 workers, progress, dist)
    finally:
        model.train(was_training)


def pixels_fn(size: int, pixels_size: int) -> tuple[Callable, int]:
    """Raw pixels as features: the eval crop, downsampled to pixels_size x pixels_size (area average) if smaller."""
    if not pixels_size or pixels_size >= size:
        return (lambda x: x.flatten(1)), size * size
    return (lambda x: F.adaptive_avg_pool2d(x, pixels_size).flatten(1)), pixels_size * pixels_size


def evaluate_pixels(source, size: int, cfg: EvalConfig, seed: int, on_bad_image: str = "error", device="cpu",
                    workers: int = 0, progress: Progress | None = None) -> dict[str, float]:
    fn, d = pixels_fn(size, cfg.pixels_size)
    return evaluate_backbone(fn, d * source.channels, source, size, cfg, device, seed, on_bad_image, workers,
                             progress)


def evaluate_run(trainer, progress: Progress | None = None) -> dict[str, float]:
    """kNN and the linear protocol on a training run's network (a ``pic.train.Trainer``: its model, source,
    config and device); ``progress`` keeps what is done for a rerun. The task calls this after training: a
    training run never evaluates itself."""
    cfg = trainer.cfg
    return evaluate_model(trainer.model, trainer.source, cfg.data.image_size, cfg.eval, trainer.device, cfg.run.seed,
                          cfg.data.on_bad_image, cfg.data.workers, progress, dist=trainer.dist)


def baseline_metrics(cfg: Config, kind: str, source: Source | None = None) -> tuple[dict[str, float], dict]:
    """The two baselines under the run's evaluation protocol: 'random' (untrained network) or 'pixels'."""
    from ..pic.model import PICModel
    from ..pic.train import resolve_device, seed_everything

    source = source or load_source(cfg.data, cfg.run.seed)
    t0 = time.perf_counter()
    device = resolve_device(cfg.run.device)
    if kind == "pixels":
        m = evaluate_pixels(source, cfg.data.image_size, cfg.eval, cfg.run.seed, cfg.data.on_bad_image, device,
                            cfg.data.workers)
    else:
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        seed_everything(cfg.run.seed)
        model = PICModel(cfg.model, source.channels).to(device)
        m = evaluate_model(model, source, cfg.data.image_size, cfg.eval, device, cfg.run.seed, cfg.data.on_bad_image,
                           cfg.data.workers)
    m["eval_wall_s"] = time.perf_counter() - t0
    derived = {"N": source.N, "index_digest": source.index_digest, "data_digest": source.digest,
               "eval_split": source.eval_split}
    if kind == "pixels":
        derived["pixels_size"] = cfg.eval.pixels_size or cfg.data.image_size
    return m, derived

"""The NVIDIA DALI loader: batch ``step`` holds the scheduler's positions ``[step*B, (step+1)*B)``, like the
torchvision loader, and is the only module that imports ``nvidia.dali``.

    python -m pic_bench.run ablations/components.yaml paper data.loader=dali

Inputs. A folder source goes through ``fn.readers.file`` with an explicit file list in the scheduler's order
(reader shuffling off) whose labels are the instance indices, so the index travels through the pipeline to
the loss. An in-memory source (Fashion-MNIST, digits, synthetic) goes in through ``fn.external_source`` as raw
uint8 HWC images plus their indices: no JPEG round trip, so both loaders see the same pixels. Decoding uses
``device="mixed"`` (nvJPEG) on a GPU and ``device="cpu"`` with ``device_id=None`` without one.

Randomness. DALI's own random operators are seeded once per pipeline, so their draws would depend on where a
pipeline was (re)built. Instead every random number of a batch (crop tries and position, flip, jitter factors,
grayscale, blur and its sigma) is drawn in numpy from (run seed, step) and fed through ``external_source``;
the graph only does arithmetic on them. So a resumed run, a window change or a pipeline rebuild never changes
what batch ``step`` looks like. The crop follows torchvision's RandomResizedCrop rule (10 tries of area
fraction and log aspect ratio, accept the first that fits, else a centre crop with the ratio clamped),
evaluated per sample in the graph from the image's shape.

Sharded input. With ``rows=(lo, hi)`` (``build_loader``'s ``shard``) a rank's file reader lists only rows
[lo, hi) of every batch and the graph runs batches of hi - lo images; the draws are the whole batch's, sliced.

Windows. The file reader's list is fixed when a pipeline is built, so the list covers a segment of the
stream: at least one window and at least ``segment_samples`` positions. A window change inside a segment
rebuilds nothing; an ImageNet run with the paper's D rebuilds every ~2^20 samples.

Parity with torchvision. Each op reproduces torchvision's functional op on uint8 images, rounding included
(brightness, contrast and saturation round down; grayscale is floor(luma); the hue shift is done in HSV, not
DALI's YIQ rotation), to about 0.2 grey levels on average for the same draws (tests/test_dali.py). Left
different: colour jitter applies brightness, contrast, saturation, hue in this fixed order (torchvision
permutes them per image); contrast blends with luma(mean) - 0.5 rather than mean(floor(luma)); the JPEG
decoders (libjpeg-turbo or nvJPEG against PIL) may differ by a grey level.

Cost on the CPU: DALI's elementwise arithmetic makes a pass per node, about 1 ms per 224 px image, so native
operators are used where one computes the same thing (brightness_contrast, coord_transform as a colour
matrix); the exact HSV hue shift (~40 nodes) is skipped where jitter is not applied.

Bad images: DALI stops a pipeline at the first file it cannot read or decode, and its message does not
always name the file, so the loader probes the files of the failing step one by one. ``on_bad_image=error``
raises ``BadImageError`` naming the file; ``skip`` rebuilds the pipeline from that step with the file
replaced by a placeholder whose label is -1, drops it from the batch and counts it in ``Batch.skipped``.
"""
from __future__ import annotations

import math
import os
import tempfile
import weakref
from pathlib import Path

import numpy as np
import nvidia.dali.math as dmath
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from ..config import Config
from .window import Schedule
from . import Batch
from .augment import Recipe
from .sources import BadImageError, Source, encode_jpeg

TRIES = 10  # random-resized-crop attempts before the centre-crop fallback (torchvision's rule)
# Columns of the per-view parameter array fed to the graph, one row per sample.
POS_Y, POS_X, FLIP, JITTERED, BRIGHT, CONTRAST, SAT, HUE, GRAY, BLUR, SIGMA = range(11)
N_PARAMS = 11
READ_AHEAD_STEPS = 4  # how far DALI's file reader and prefetch queue may run ahead of the step being returned
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
GRAY_MATRIX = np.tile(np.array(GRAY_WEIGHTS, np.float32), (3, 1))  # RGB -> luma in every channel
ROUND_DOWN = -0.4999  # added before DALI's round-to-nearest, in grey levels: rounds down like torchvision


def view_rng(seed: int, step: int) -> np.random.Generator:
    """The random stream of batch ``step``: a function of the run seed and the step only."""
    return np.random.default_rng([int(seed), int(step), 0xDA11])


def draw_view(rng: np.random.Generator, r: Recipe, B: int) -> tuple[np.ndarray, np.ndarray]:
    """Random numbers of one view for a batch, with torchvision's distributions.

    Returns:
        tries: (B, TRIES, 2) float32, per crop try the area fraction ~ U(scale) and log aspect ~ U(log ratio).
        params: (B, N_PARAMS) float32, columns POS_Y ... SIGMA (identity values where an op is not applied).
    """
    tries = np.empty((B, TRIES, 2), np.float32)
    tries[..., 0] = rng.uniform(r.scale[0], r.scale[1], (B, TRIES))
    tries[..., 1] = rng.uniform(np.log(r.ratio[0]), np.log(r.ratio[1]), (B, TRIES))
    p = np.empty((B, N_PARAMS), np.float32)
    p[:, POS_Y], p[:, POS_X] = rng.random(B), rng.random(B)
    p[:, FLIP] = rng.random(B) < r.flip_p
    jit = rng.random(B) < r.jitter_p
    p[:, JITTERED] = jit
    for col, x in zip((BRIGHT, CONTRAST, SAT), r.jitter[:3]):
        p[:, col] = np.where(jit, rng.uniform(max(0.0, 1 - x), 1 + x, B), 1.0)
    p[:, HUE] = np.where(jit, rng.uniform(-r.jitter[3], r.jitter[3], B), 0.0)  # fraction of the hue circle
    p[:, GRAY] = rng.random(B) < r.gray_p
    p[:, BLUR] = rng.random(B) < r.blur_p
    p[:, SIGMA] = rng.uniform(r.blur_sigma[0], r.blur_sigma[1], B)
    return tries, p


def draw(rng: np.random.Generator, recipes: list[Recipe], B: int) -> tuple[np.ndarray, np.ndarray]:
    """Random numbers of every view of a batch: tries (B, V, TRIES, 2) and params (B, V, N_PARAMS)."""
    tries, params = zip(*(draw_view(rng, r, B) for r in recipes))
    return np.stack(tries, 1), np.stack(params, 1)


def _crop_windows(H, W, tries, params, ratios: np.ndarray):
    """torchvision's RandomResizedCrop rule on DALI nodes, all V views of a sample at once (one set of graph
    nodes whatever V is: building a pipeline costs about a millisecond per node).

    Args:
        H, W: the image's height and width, per-sample float scalars.
        tries: (V, TRIES, 2) per view and try the area fraction and log aspect ratio.
        params: (V, N_PARAMS), of which POS_Y and POS_X in [0, 1) place an accepted crop.
        ratios: (V, 2) numpy, each view's aspect ratio range (for the centre-crop fallback).
    Returns:
        anchor (V, 2) as (x, y) and shape (V, 2) as (w, h), absolute pixels, float.
    """
    area = H * W
    aspect = dmath.exp(tries[:, :, 1])  # (V, TRIES)
    target = area * tries[:, :, 0]
    w = dmath.floor(dmath.sqrt(target * aspect) + 0.5)  # (V, TRIES)
    h = dmath.floor(dmath.sqrt(target / aspect) + 0.5)
    fits = fn.cast((w > 0) & (w <= W) & (h > 0) & (h <= H), dtype=types.FLOAT)
    k = types.Constant(np.arange(TRIES, dtype=np.float32))  # (TRIES,)
    first = fn.reductions.min(fits * k + (1 - fits) * TRIES, axes=[1])  # (V,) first try that fits, TRIES if none
    pick = fn.cast(k == fn.expand_dims(first, axes=[1]), dtype=types.FLOAT)  # (V, TRIES) one-hot, or all zero
    found = fn.cast(first < TRIES, dtype=types.FLOAT)  # (V,)
    # Fallback: the whole image with its aspect clamped into the view's ratio range, centred.
    rmin, rmax = (types.Constant(np.ascontiguousarray(ratios[:, i], dtype=np.float32)) for i in (0, 1))  # (V,)
    narrow = fn.cast(W / H < rmin, dtype=types.FLOAT)
    wide = fn.cast(W / H > rmax, dtype=types.FLOAT)
    w_fb = wide * dmath.floor(H * rmax + 0.5) + (1 - wide) * W
    h_fb = narrow * dmath.floor(W / rmin + 0.5) + (1 - narrow) * H
    w = found * fn.reductions.sum(w * pick, axes=[1]) + (1 - found) * w_fb  # (V,)
    h = found * fn.reductions.sum(h * pick, axes=[1]) + (1 - found) * h_fb
    y = found * dmath.floor(params[:, POS_Y] * (H - h + 1)) + (1 - found) * dmath.floor((H - h) / 2)
    x = found * dmath.floor(params[:, POS_X] * (W - w + 1)) + (1 - found) * dmath.floor((W - w) / 2)
    return fn.stack(x, y, axis=1), fn.stack(w, h, axis=1)


def crop_window_reference(H: int, W: int, tries: np.ndarray, pos_y: float, pos_x: float,
                          ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """Plain reference of ``_crop_window`` for one image: (y, x, h, w), torchvision's RandomResizedCrop rule
    with its random draws given (tries (TRIES, 2): area fraction, log aspect; pos_y, pos_x in [0, 1))."""
    f = np.float32  # the graph computes in float32
    for s, log_r in tries:
        target, aspect = f(H * W) * f(s), np.exp(f(log_r))
        w, h = int(np.floor(np.sqrt(target * aspect) + f(0.5))), int(np.floor(np.sqrt(target / aspect) + f(0.5)))
        if 0 < w <= W and 0 < h <= H:
            return int(np.floor(f(pos_y) * f(H - h + 1))), int(np.floor(f(pos_x) * f(W - w + 1))), h, w
    if W / H < ratio[0]:
        w, h = W, math.floor(W / ratio[0] + 0.5)
    elif W / H > ratio[1]:
        w, h = math.floor(H * ratio[1] + 0.5), H
    else:
        w, h = W, H
    return (H - h) // 2, (W - w) // 2, h, w


def _blend(x, f, other):
    """torchvision's blend of uint8 images: floor(clamp(f * x + (1 - f) * other, 0, 255)), layout HWC."""
    out = fn.cast(dmath.floor(dmath.clamp(f * x + (1 - f) * other, 0, 255)), dtype=types.UINT8)
    return fn.reshape(out, layout="HWC")  # arithmetic drops the layout; the blur needs it to find the channels


def _mean_grey(x, channels: int):
    """The mean grey level torchvision's adjust_contrast blends with: mean(floor(luma)) for RGB, which is
    taken as luma(mean) - 0.5 (a per-pixel luma would cost several passes; off by at most ~0.5 levels)."""
    m = fn.reductions.mean(x, axes=[0, 1])  # (C,)
    if channels == 1:
        return fn.reductions.sum(m)  # the image itself is the grey image
    return fn.reductions.sum(m * types.Constant(np.array(GRAY_WEIGHTS, np.float32))) - 0.5


def _hue_shift(x, dh):
    """Shifts the HSV hue of uint8 RGB images by ``dh`` (fraction of the circle), keeping S and V, as
    torchvision's adjust_hue; DALI's own hue op rotates in YIQ space, which differs visibly at NPID's +-0.4.

    Hue in sixths of the circle from the channel holding the maximum; back with the closed form
    channel_n = V - C * clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1 for R, G, B, where
    V = max and C = max - min (chroma).
    """
    x = fn.cast(x, dtype=types.FLOAT)  # uint8 differences would wrap around
    r, g, b = x[:, :, 0], x[:, :, 1], x[:, :, 2]  # (H, W) each
    v = dmath.max(dmath.max(r, g), b)
    c = v - dmath.min(dmath.min(r, g), b)
    cs = dmath.max(c, 1)  # c is 0 or >= 1 on uint8 input; where it is 0 the hue does not matter
    is_r = v == r
    is_g = (v == g) & (v != r)
    is_b = (v != r) & (v != g)
    h6 = is_r * ((g - b) / cs) + is_g * ((b - r) / cs + 2) + is_b * ((r - g) / cs + 4) + 6 * dh
    out = []
    for n in (5, 3, 1):
        k = h6 + n
        k = k - 6 * dmath.floor(k / 6)
        out.append(v - c * dmath.clamp(dmath.min(k, 4 - k), 0, 1))  # in [min, max]: no clamp needed
    return fn.cast(fn.stack(*out, axis=2, axis_name="C"), dtype=types.UINT8)  # rounds to nearest


def _augment(images, anchor, shape, params, r: Recipe, gpu: bool, gpu_ops: bool | None = None):
    """One view: crop -> resize -> colour jitter -> grayscale -> blur -> flip + normalise, (C, size, size).

    ``anchor`` and ``shape`` (2,) come from ``_crop_windows``; ``params`` (N_PARAMS,) are the view's draws.
    ``gpu_ops`` (default: ``gpu``) picks the GPU formulation where it differs, so a CPU test can check it.
    """
    gpu_ops = gpu if gpu_ops is None else gpu_ops
    on_dev = (lambda n: n.gpu()) if gpu else (lambda n: n)
    x = fn.slice(images, anchor, shape, axis_names="WH", normalized_anchor=False, normalized_shape=False)
    x = fn.resize(x, resize_x=r.size, resize_y=r.size, antialias=True)
    # torchvision's colour jitter on uint8 blends and rounds down after each op; DALI rounds to nearest, so a
    # shift of just under half a level turns its rounding into torchvision's. Native ops where they exist:
    # DALI's elementwise arithmetic is slow on the CPU (about 1 ms per 224 px image and node).
    if r.jitter[0] > 0:  # b * x
        x = fn.brightness_contrast(x, brightness=params[BRIGHT], brightness_shift=ROUND_DOWN / 255)
    if r.jitter[1] > 0:  # c * x + (1 - c) * mean grey level of x
        mean = _mean_grey(x, r.channels)
        if gpu_ops:  # the mean is on the GPU, and an operator's arguments must be on the CPU
            x = _blend(x, on_dev(params[CONTRAST]), mean)
        else:
            x = fn.brightness_contrast(x, contrast=params[CONTRAST], contrast_center=mean,
                                       brightness_shift=ROUND_DOWN / 255)
    if r.channels == 3 and r.jitter[2] > 0:  # s * x + (1 - s) * grey(x): one 3x3 colour matrix per sample
        s = params[SAT]
        M = s * types.Constant(np.eye(3, dtype=np.float32)) + (1 - s) * types.Constant(GRAY_MATRIX)
        x = fn.coord_transform(x, M=M, T=[ROUND_DOWN] * 3, dtype=types.UINT8)
    if r.channels == 3 and r.jitter[3] > 0:
        if params[JITTERED] > 0.5:  # the HSV hue shift is the costly op: skip it where jitter is not applied
            x = _hue_shift(x, on_dev(params[HUE]))
    if r.channels == 3 and r.gray_p > 0:
        if params[GRAY] > 0.5:  # floor(luma) in all three channels, as torchvision's rgb_to_grayscale
            x = fn.coord_transform(x, M=GRAY_MATRIX.ravel().tolist(), T=[ROUND_DOWN] * 3, dtype=types.UINT8)
    if r.blur_p > 0:
        if params[BLUR] > 0.5:
            x = fn.gaussian_blur(x, window_size=r.blur_kernel, sigma=params[SIGMA])
    return fn.crop_mirror_normalize(
        x, dtype=types.FLOAT, output_layout="CHW", mirror=fn.cast(params[FLIP], dtype=types.INT32),
        mean=[255 * m for m in r.mean], std=[255 * s for s in r.std])


def _views(images, hwc, tries, params, recipes: list[Recipe], gpu: bool, gpu_ops: bool | None = None) -> list:
    """Every view of a sample: ``tries`` (V, TRIES, 2) and ``params`` (V, N_PARAMS) as ``draw`` returns."""
    anchor, shape = _crop_windows(hwc[0], hwc[1], tries, params, np.array([r.ratio for r in recipes]))
    return [_augment(images, anchor[v], shape[v], params[v], r, gpu, gpu_ops) for v, r in enumerate(recipes)]


@pipeline_def(enable_conditionals=True)
def _graph(feed, recipes: list[Recipe], channels: int, gpu: bool, files: list[str] | None,
           labels: list[int] | None):
    if files is not None:
        encoded, index = fn.readers.file(files=files, labels=labels, random_shuffle=False, name="reader")
        tries, params = fn.external_source(source=feed, num_outputs=2, batch=True)
        hwc = fn.peek_image_shape(encoded, dtype=types.FLOAT, adjust_orientation=False)
        images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", adjust_orientation=False,
                                   output_type=types.RGB if channels == 3 else types.GRAY)
    else:
        images, index, tries, params = fn.external_source(source=feed, num_outputs=4, batch=True,
                                                          layout=["HWC", "", "", ""])
        hwc = images.shape(dtype=types.FLOAT)
        if gpu:
            images = images.gpu()
    return (*_views(images, hwc, tries, params, recipes, gpu), index)


def _constant(v):
    return lambda: v


@pipeline_def(enable_conditionals=True)
def _one_view_graph(images, tries, params, r: Recipe, gpu: bool, gpu_ops: bool):
    x, t, p = (fn.external_source(source=_constant(v), batch=True, layout=lay)
               for v, lay in ((images, "HWC"), (tries[:, None], ""), (params[:, None], "")))
    return _views(x.gpu() if gpu else x, x.shape(dtype=types.FLOAT), t, p, [r], gpu, gpu_ops)[0]


def augment_with_draws(images: torch.Tensor, tries: np.ndarray, params: np.ndarray, r: Recipe,
                       device: str = "cpu", gpu_ops: bool | None = None) -> torch.Tensor:
    """Runs one view of recipe ``r`` on given images with given random draws (as ``draw_view`` returns).

    For tests (each op against torchvision's functional op with the same draws) and for looking at a recipe;
    ``gpu_ops=True`` on the CPU runs the graph as built for a GPU where the two differ.

    Args:
        images: (B, C, H, W) uint8.
    Returns:
        (B, C, r.size, r.size) float32 on the CPU.
    """
    x = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())  # (B, H, W, C)
    gpu = device == "gpu"
    pipe = _one_view_graph(x, tries, params, r, gpu, gpu if gpu_ops is None else gpu_ops, batch_size=len(x),
                           num_threads=1, device_id=torch.cuda.current_device() if gpu else None)
    pipe.build()
    (out,) = pipe.run()
    out = out.as_cpu() if gpu else out
    return torch.from_numpy(np.stack([np.asarray(out[i]) for i in range(len(x))]))


@pipeline_def
def _probe_graph(output_type):
    return fn.decoders.image(fn.external_source(name="encoded", dtype=types.UINT8), device="cpu",
                             output_type=output_type, adjust_orientation=False)


def _dali_reason(e: Exception) -> str:
    """The informative line of a DALI error (its messages end with boilerplate)."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip() and "no longer valid" not in s]
    return lines[-1] if lines else type(e).__name__


def gpu_backend_missing() -> str | None:
    """Why DALI cannot run its GPU operators here (no DALI, a CPU-only build, no CUDA device it can see), or None.
    It asks DALI's backend and runs no graph: a GPU graph that fails is a failure to report, not a reason to skip."""
    try:
        from nvidia.dali import backend
    except ImportError as e:
        return f"nvidia.dali does not import: {e}"
    try:
        n = backend.GetCUDADeviceCount()
    except (AttributeError, RuntimeError) as e:
        return f"this DALI build has no CUDA backend: {e}"
    if n < 1:
        return "DALI sees no CUDA device (a CPU-only build, or none visible)"
    return None


class DaliLoader:
    """Iterates ``Batch`` for steps ``[start_step, end_step)``, the same batches whatever ``start_step`` is.

    Args:
        source: the instances; a folder set (``images.files``) is read by DALI's file reader, an in-memory set
            (``images.images``, uint8 (N, C, H, W)) is fed through ``external_source``.
        schedule: the window order; batch ``step`` is ``schedule.batch(step, B)``.
        cfg: the run config (batch size, views, workers = DALI threads, on_bad_image, seed, device).
        large, small: the recipes of the large views and of the multi-crop small views (None: no small views).
        device: where to decode: a ``torch.device`` (``cuda:<i>`` decodes on GPU i, its ``device_id``), "cpu",
            "gpu" (the current CUDA device) or None (the current CUDA device when the run uses CUDA, else cpu).
        rows: (lo, hi), the rows of each global batch this rank reads and decodes (default all): the file
            reader's list holds only them and the graph runs batches of hi - lo; the random draws are the whole
            batch's, sliced, so a row looks the same whatever rank decodes it.
    """

    name = "dali"
    segment_samples = 1 << 20  # a file-reader pipeline covers at least this many stream positions

    def __init__(self, source: Source, schedule: Schedule, cfg: Config, large: Recipe, small: Recipe | None,
                 device: torch.device | str | None = None, rows: tuple[int, int] | None = None):
        d = cfg.data
        self.images, self.schedule, self.B, self.seed = source.train, schedule, cfg.optim.batch_size, cfg.run.seed
        self.recipes = [large] * d.views + ([small] * d.small_views if small is not None else [])
        self.views = d.views
        self.channels = source.channels
        self.on_bad = d.on_bad_image
        self.threads = d.workers if d.workers > 0 else max(1, min(4, os.cpu_count() or 1))
        self.rows = rows or (0, self.B)
        self.b = self.rows[1] - self.rows[0]  # images per pipeline batch: this rank's rows
        if device is None:
            device = "gpu" if cfg.run.device != "cpu" and torch.cuda.is_available() else "cpu"
        if isinstance(device, torch.device):
            self.gpu = device.type == "cuda"
            self.device_id = (device.index if device.index is not None else torch.cuda.current_device()) \
                if self.gpu else None
        else:
            self.gpu = device == "gpu"
            self.device_id = torch.cuda.current_device() if self.gpu else None
        self.files = source.train.files
        if self.files is None and not isinstance(getattr(source.train, "images", None), torch.Tensor):
            raise TypeError(f"DaliLoader needs a folder or in-memory image set, got {type(source.train).__name__}")
        self.bad: dict[int, str] = {}  # instance index -> why it was skipped (on_bad_image=skip)
        self._placeholder: str | None = None
        self._probe = None

    # ---- the random numbers of a batch: a function of (seed, step) only, drawn for all B rows (cheap)
    def _feed(self, a: int, b: int):
        lo, hi = self.rows
        for s in range(a, b):
            tries, params = draw(view_rng(self.seed, s), self.recipes, self.B)
            tries, params = tries[lo:hi], params[lo:hi]  # this rank's rows
            if self.files is not None:
                yield tries, params
            else:
                index = self.schedule.batch(s, self.B)[lo:hi]
                x = self.images.images[torch.from_numpy(index)].permute(0, 2, 3, 1).contiguous().numpy()  # (B, H, W, C)
                yield x, index, tries, params

    # ---- one pipeline for steps [a, b)
    def _pipeline(self, a: int, b: int):
        files = labels = None
        if self.files is not None:
            lo, hi = self.rows
            index = self.schedule.positions(a * self.B, (b - a) * self.B).reshape(b - a, self.B)[:, lo:hi].ravel()
            files = [self.files[i] for i in index]
            labels = [int(i) for i in index]
            for n, i in enumerate(labels):
                if i in self.bad:
                    files[n], labels[n] = self._placeholder_file(), -1
        pipe = _graph(self._feed(a, b), self.recipes, self.channels, self.gpu, files, labels,
                      batch_size=self.b, num_threads=self.threads, device_id=self.device_id,
                      seed=int(view_rng(self.seed, a).integers(2**31)))  # unused by the graph; never constant
        names = [f"v{k}" for k in range(len(self.recipes))] + ["index"]
        return DALIGenericIterator([pipe], names)

    def _segment_steps(self) -> int:
        return max(1, -(-max(self.schedule.L, self.segment_samples) // self.B))

    def iterate(self, start_step: int, end_step: int):
        step = start_step
        while step < end_step:
            b = min(end_step, step + self._segment_steps())
            step = yield from self._run(step, b)

    def _run(self, a: int, b: int):
        """Yields the batches of steps [a, b); returns the step to continue from (b, or a failed step to redo)."""
        it, s = None, a
        try:
            while s < b:
                try:
                    if it is None:
                        it = self._pipeline(a, b)  # DALI's iterator runs the first step as it starts
                    out = next(it)[0]
                except StopIteration:
                    raise RuntimeError(f"DALI pipeline ended at step {s}, expected {b}") from None
                except RuntimeError as e:
                    self._bad_step(s, b, e)  # raises, or records the bad files for a rebuild from s
                    return s
                yield self._batch(s, out)
                s += 1
        finally:
            del it
        return b

    def _batch(self, step: int, out: dict[str, torch.Tensor]) -> Batch:
        lo, hi = self.rows
        index = torch.from_numpy(self.schedule.batch(step, self.B))  # (B,) the global batch
        want = index[lo:hi].numpy()  # (b,) this rank's rows
        got = out["index"].reshape(-1).to(torch.int64).cpu()  # (b,), -1 marks a skipped image
        keep = got >= 0
        expected_keep = torch.from_numpy(np.array([int(i) not in self.bad for i in want]))
        if not torch.equal(keep, expected_keep) or not torch.equal(got[keep], torch.from_numpy(want)[keep]):
            raise RuntimeError(f"DALI returned instance indices {got.tolist()} at step {step}, "
                               f"the scheduler's order is {want.tolist()}")
        skipped = int((~keep).sum())
        if skipped == self.b:
            raise BadImageError(str(want.tolist()), "every image of the batch failed to decode")
        views = [out[f"v{k}"] for k in range(len(self.recipes))]
        if skipped:  # one process only (build_loader refuses skip with several ranks): the batch shrinks
            views, index, (lo, hi) = [v[keep.to(v.device)] for v in views], got[keep], (0, int(keep.sum()))
        return Batch(views[:self.views], index, step, views[self.views:], skipped, rows=(lo, hi))

    # ---- bad images
    def _bad_step(self, step: int, end: int, error: Exception) -> None:
        """Finds the file(s) behind a DALI error at ``step``: raises ``BadImageError`` (on_bad_image=error) or
        records them in ``self.bad`` for a rebuild from ``step`` (skip). The file reader reads ahead, so a
        file that cannot be read may fail a few steps before its own; those steps are probed too."""
        if self.files is None:
            raise error
        found = {}
        lo, hi = self.rows
        for s in range(step, min(end, step + READ_AHEAD_STEPS + 1)):
            for i in self.schedule.batch(s, self.B)[lo:hi].tolist():
                if i not in self.bad and i not in found:
                    why = self._why_bad(self.files[i])
                    if why is not None:
                        if self.on_bad == "error":
                            raise BadImageError(self.files[i], f"{why} (instance {i}, step {s})") from None
                        found[i] = why
            if found and s == step:
                break  # the decoder fails at the failing sample's own step: nothing else to look for
        if not found:
            files = [self.files[i] for i in self.schedule.batch(step, self.B)[lo:hi]]
            raise RuntimeError(f"DALI failed at step {step} but every file of steps {step}.. decodes alone "
                               f"({files[:4]}...): {_dali_reason(error)}") from error
        self.bad.update(found)

    def _why_bad(self, path: str) -> str | None:
        """Why DALI cannot read or decode ``path`` alone (None if it can)."""
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as e:
            return f"{type(e).__name__}: {e}"
        if data.size == 0:
            return "empty file"
        if self._probe is None:
            self._probe = _probe_graph(types.RGB if self.channels == 3 else types.GRAY, batch_size=1,
                                       num_threads=1, device_id=None, prefetch_queue_depth=1,
                                       exec_async=False, exec_pipelined=False)  # one input, one run
            self._probe.build()
        try:
            self._probe.feed_input("encoded", [data])
            self._probe.run()
        except RuntimeError as e:
            self._probe = None  # a failed DALI pipeline cannot run again
            return _dali_reason(e)
        return None

    def _placeholder_file(self) -> str:
        if self._placeholder is None:
            folder = tempfile.mkdtemp(prefix="pic_bench_dali_")
            path = Path(folder) / "placeholder.jpg"
            path.write_bytes(encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8)))
            weakref.finalize(self, _remove, folder)
            self._placeholder = str(path)
        return self._placeholder


def _remove(folder: str) -> None:
    for p in Path(folder).glob("*"):
        p.unlink(missing_ok=True)
    Path(folder).rmdir()

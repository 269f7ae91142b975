"""Typed, frozen configuration: defaults are the paper's main setting.

A config is a tree of frozen dataclasses. It is built from three layers, each strictly checked (an unknown
key or a wrong type raises ``ConfigError`` naming the key and where it came from):

    defaults (this file)  <-  preset (``smoke`` | ``small`` | ``scale`` | ``paper``)  <-  ablation file  <-  command line

An ablation file (``ablations/*.yaml``) holds only what differs from the defaults::

    name: negatives_k            # the table this file regenerates
    overrides: {pic.correction: true}
    presets:                     # optional, per-preset overrides for this ablation only; a preset may also
      small: {optim.epochs: 10}  # replace sweep / cells / default_cell / seeds for itself:
      paper: {sweep: {pic.K: [16384, 65536, 0]}}
    sweep:                       # product of lists; "a,b" as one key zips a and b
      pic.K: [256, 1024, 0]
    cells:                       # optional: explicit arms, crossed with the sweep
      - {pic.scheduler: epoch}
    default_cell: {pic.K: 0}     # the cell other cells are compared against in tables
    seeds: [0, 1, 2]

The file is UTF-8 (a byte-order mark is fine); YAML merge keys share settings between cells
(``- &base {pic.K: 256}`` then ``- {<<: *base, pic.tau: 0.1}``); a key given twice, also nested and dotted in one
mapping, is refused.

Derived values (number of instances, iterations) are never written back into the config: see
``pic_bench.pic.train.derive``.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml


class ConfigError(ValueError):
    """A config key, value or file is wrong; the message names it."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "imagefolder"  # imagefolder | fashion_mnist | digits | synthetic
    root: str = ""  # folder of the dataset ("" = the dataset's standard place)
    num_instances: int = 0  # N, the number of training images used as instances (0 = all)
    test_size: int = 0  # images of the test split used for evaluation (0 = all)
    image_size: int = 224  # side of the (large) crops, px
    aug: str = "strong"  # strong (MoCo v2 / SimCLR, incl. blur) | weak (NPID: crop, flip, jitter, gray)
    crop_min: float = 0.08  # lower bound of the random-resized-crop area (official code: 0.08 with MultiCrop)
    views: int = 1  # augmented views per image per iteration that train w (paper: 1)
    small_views: int = 0  # extra small crops (multi-crop, official: 3 x 96 px); they do not train w
    small_size: int = 96  # side of the small crops, px
    small_crop_max: float = 0.14  # small crops take area in [crop_min_small, this]; large in [this, 1] with multi-crop
    loader: str = "auto"  # auto (DALI where installed, else torchvision) | dali | torchvision | batched (in-memory)
    workers: int = 0  # loader worker processes (torchvision) or threads (DALI)
    on_bad_image: str = "error"  # error | skip (skipped images are counted in the result row)
    eval_split: str = "val"  # imagefolder: evaluate on val/ (refused if absent) | train (asked for: own images)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet50"  # resnet18 | resnet50 | small_cnn
    small_stem: bool = False  # 3x3 stride-1 stem and no max-pool, for 28-32 px inputs
    width: int = 64  # channel width of small_cnn's first stage (ResNets ignore it)
    pool: int = 1  # the backbone's last average pool gives a pool x pool grid (1 = global, as in the paper)
    head: str = "mlp"  # projection head: mlp (2-layer) | linear | none
    head_hidden: int = 2048  # hidden width of the MLP head
    dim: int = 128  # d, the feature dimension of z and of each classifier row w_j


@dataclass(frozen=True)
class PICConfig:
    softmax: str = "cosine"  # cosine (normalised z and w, divided by tau) | plain (dot product, no tau)
    tau: float = 0.2  # tau, the temperature of the cosine softmax
    K: int = 65536  # recent negative sampling: the K most recently visited instances (0 = all N)
    recent: str = "instances"  # what K counts: distinct instances (the paper's wording) | stream positions (|U| <= K)
    correction: bool = True  # classification weight update correction: update only sampled rows of w and u
    scheduler: str = "sliding"  # sliding (the paper) | epoch | official (bl0/PIC's sampler, which does not slide)
    D: int = 131072  # window size: instances in one window
    S: int = 16384  # window stride: how far the window moves
    official_shuffle: bool = True  # official scheduler: its --shuffle-per-epoch flag (scripts/PIC.sh sets it)
    w_init_std: float = 0.01  # classifier rows start as N(0, std^2) (official: 0.01)
    storage: str = "float32"  # dtype of w and u: float32 | bfloat16
    fast_head: bool = True  # head step via pic_bench.pic.head (closed-form gradients, one gather of w[U]); False = plain path


@dataclass(frozen=True)
class OptimConfig:
    batch_size: int = 256  # B, global batch (official: 4 GPUs x 64)
    base_lr: float = 0.03  # learning rate at B = 256, scaled linearly with B (official: 0.03)
    momentum: float = 0.9  # SGD momentum, backbone and classifier alike
    weight_decay: float = 1e-4  # SGD weight decay, backbone and classifier alike
    epochs: float = 200  # training length in passes' worth of samples (epochs * N samples in all)
    warmup_epochs: float = 5  # linear warm-up, same unit as epochs (official: epochs / 40)
    final_lr_ratio: float = 0.0  # the cosine decays to this fraction of the peak lr (official: 0, decay to 0)
    max_steps: int = 0  # stop after this many steps regardless (0 = no cap); for smoke runs


@dataclass(frozen=True)
class EvalConfig:
    protocol: str = "probe"  # probe (early-stopped Adam; small) | logreg (converged, decay held-out; scale) | linear_sgd (official)
    knn_k: int = 200  # neighbours of the weighted kNN monitor (NPID)
    knn_t: float = 0.07  # temperature of the kNN vote weights exp(sim / t)
    feature_dtype: str = "auto"  # kept features: auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16
    linear: bool = True  # also train a linear classifier on frozen backbone features (protocol above)
    linear_epochs: int = 100  # probe: full-batch optimisation steps
    linear_lr: float = 0.1  # probe: Adam on standardised features; its real step size is linear_lr x 0.1 (= 0.01)
    logreg_l2: float = 0.0  # logreg: weight decay l2 (mean CE + l2/2 |W|^2); 0 = chosen on held-out training features
    logreg_max_steps: int = 1000  # logreg: most L-BFGS iterations (it stops earlier once converged)
    sgd_epochs: int = 100  # linear_sgd: epochs over the training set (official main_linear.py: 100)
    sgd_batch: int = 256  # linear_sgd: total batch over all ranks (official: 256)
    sgd_lr: float = 30.0  # linear_sgd: peak learning rate (official: 30)
    sgd_momentum: float = 0.9  # linear_sgd: SGD momentum (official: 0.9)
    sgd_weight_decay: float = 0.0  # linear_sgd: weight decay (official: 0)
    sgd_warmup_epochs: float = 5  # linear_sgd: linear warm-up from lr / 100, then cosine to 0 (official: 5)
    sgd_crop_min: float = 0.08  # linear_sgd: RandomResizedCrop area lower bound for training (official: 0.08)
    pixels_size: int = 0  # raw-pixel baseline: side the pixels are downsampled to (0 = data.image_size)
    baselines: bool = True  # also evaluate the random-init network and raw pixels under the same protocols


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0  # seeds every random stream: init, order, augmentation
    device: str = "auto"  # auto | cpu | cuda (cuda: this rank's GPU, cuda:<local rank> of SLURM or torchrun)
    threads: int = 0  # torch CPU threads (0 = torch's default)
    deterministic: bool = False  # torch deterministic algorithms (bit-exact resume on CPU)
    precision: str = "fp32"  # fp32 | tf32 (TF32 matmuls and convolutions on CUDA) | bf16 (autocast: backbone + head)
    checkpoint_every: int = 200  # save every this many steps (0 = no periodic save: only on a stop request); the
    # backbone is always written at the end (run_task), the checkpoint deleted after a successful run
    checkpoint_minutes: float = 0.0  # also save at the first log step this long after the last save (0 = off)
    log_every: int = 50  # steps between loss reads (host sync, curve line, progress, stop agreement)
    tensorboard: bool = False  # also write the curve to a TensorBoard SummaryWriter beside the curve file


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pic: PICConfig = field(default_factory=PICConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": ("imagefolder", "fashion_mnist", "digits", "synthetic"),
    "data.aug": ("strong", "weak"),
    "data.loader": ("auto", "dali", "torchvision", "batched"),
    "data.on_bad_image": ("error", "skip"),
    "data.eval_split": ("val", "train"),
    "eval.protocol": ("probe", "logreg", "linear_sgd"),
    "eval.feature_dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.arch": ("resnet18", "resnet50", "small_cnn"),
    "model.head": ("mlp", "linear", "none"),
    "pic.softmax": ("cosine", "plain"),
    "pic.scheduler": ("sliding", "epoch", "official"),
    "pic.recent": ("instances", "positions"),
    "pic.storage": ("float32", "bfloat16"),
    "run.device": ("auto", "cpu", "cuda"),
    "run.precision": ("fp32", "tf32", "bf16"),
}

# Scale presets. `paper` follows the official training script (github bl0/PIC scripts/PIC.sh and
# contrast/option.py): ResNet-50, MLP head, tau 0.2, 4 GPUs x 64 images, base lr 0.03, SGD momentum 0.9,
# weight decay 1e-4, cosine schedule with warm-up of epochs/40, D = 131072, S = 16384, 200 epochs.
# `small` is tuned for a 2-core CPU on a 10k-image Fashion-MNIST subset, with the paper's window proportions
# (N / D ~ 10, D / S = 8, K = D / 2) and a 3 x 3 final pool (576-d features; see results/README.md for what the
# global pool gave). At 5 epochs it is the fast preset for plumbing and CI, not a scale model of the paper: its window
# sweeps the data 0.63 times (paper: 25), 28.5% of the images are never trained on (issue 19). Every row committed
# before issue 19 says `small` and keeps meaning this. `scale` is the scale model: `small` trained 40 epochs, so
# the window sweeps the data 5 times (epochs x S / D), every image is visited 39-41 times, first visits are done by
# 18% of training (``data.window.regime``), with the converged linear probe (eval.protocol=logreg), and its cosine
# ends at a tenth of the peak lr (optim.final_lr_ratio=0.1) where the paper's and `small`'s decay to 0: with the
# rate to 0, images that return to the window in the last steps cannot pull their classifier rows back and the
# loss rises at the end (all N by about 1.8; results/README.md, "Why the scale preset keeps a floor"). Rows of
# `scale` before the floor are in results/rows/history/*-scale-e7ad888.jsonl. `smoke` is for tests.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "data.dataset": "imagefolder", "data.image_size": 224, "data.workers": 8,
        "model.arch": "resnet50", "optim.epochs": 200, "optim.warmup_epochs": 5,
        "eval.protocol": "linear_sgd", "eval.pixels_size": 32,
        "run.precision": "bf16", "run.checkpoint_minutes": 30.0,
    },
    "small": {
        "data.dataset": "fashion_mnist", "data.num_instances": 10000, "data.test_size": 10000,
        "data.image_size": 28, "data.crop_min": 0.6, "data.loader": "batched", "data.workers": 0,
        "model.arch": "small_cnn", "model.small_stem": True, "model.width": 16, "model.pool": 3,
        "model.head_hidden": 512, "pic.K": 512, "pic.D": 1024, "pic.S": 128,
        "optim.batch_size": 64, "optim.base_lr": 0.4, "optim.epochs": 5, "optim.warmup_epochs": 1,
        "optim.weight_decay": 5e-4,
        "run.device": "cpu", "run.threads": 2, "eval.linear_epochs": 200,
    },
    "scale": {
        "data.dataset": "fashion_mnist", "data.num_instances": 10000, "data.test_size": 10000,
        "data.image_size": 28, "data.crop_min": 0.6, "data.loader": "batched", "data.workers": 0,
        "model.arch": "small_cnn", "model.small_stem": True, "model.width": 16, "model.pool": 3,
        "model.head_hidden": 512, "pic.K": 512, "pic.D": 1024, "pic.S": 128,
        "optim.batch_size": 64, "optim.base_lr": 0.4, "optim.epochs": 40, "optim.warmup_epochs": 1,
        "optim.weight_decay": 5e-4, "optim.final_lr_ratio": 0.1,
        "run.device": "cpu", "run.threads": 2, "eval.protocol": "logreg",
    },
    "smoke": {
        "data.dataset": "digits", "data.num_instances": 256, "data.test_size": 200, "data.image_size": 8,
        "data.crop_min": 0.5, "data.loader": "torchvision", "data.workers": 0,
        "model.arch": "small_cnn", "model.small_stem": True, "model.width": 8, "model.head_hidden": 32,
        "model.dim": 16, "pic.K": 64, "pic.D": 128, "pic.S": 32,
        "optim.batch_size": 32, "optim.base_lr": 0.3, "optim.epochs": 1, "optim.warmup_epochs": 0.25,
        "run.device": "cpu", "run.threads": 1, "eval.knn_k": 10, "eval.linear_epochs": 20,
        "run.log_every": 5,
    },
}


# Numbers as a researcher types them. YAML 1.1 reads `1e6` and `3e-4` (no dot) as strings, and `nan` / `inf`
# without YAML's leading dot too; float keys take them (and ``StrictLoader`` reads the exponent forms as floats).
FLOAT_TEXT = re.compile(r"^[-+]?(?:(?:[0-9][0-9_]*)?\.?[0-9]+(?:[eE][-+]?[0-9]+)?|[0-9]+\.|nan|inf|infinity)$",
                        re.IGNORECASE)


@functools.lru_cache(maxsize=None)
def _field_types(cls) -> dict[str, Any]:
    # once per class: get_type_hints re-evaluates every annotation, and a 10,000-cell sweep asks ~100,000 times
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, typ: Any, where: str) -> Any:
    """Checks `value` against the annotated type; ints are accepted where floats are expected."""
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        if isinstance(value, str) and FLOAT_TEXT.match(value.strip()):
            value = float(value)  # 1e6, 3E-4, nan, inf as typed; the range checks refuse the non-finite ones
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif typ is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - every field is one of the above
        raise ConfigError(f"{where}: key '{key}' has an unsupported type {typ}")
    if not ok:
        raise ConfigError(
            f"{where}: key '{key}' expects {typ.__name__}, got {type(value).__name__} {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{where}: key '{key}' must be one of {list(CHOICES[key])}, got {value!r}")
    return value


def flatten(d: dict[str, Any], prefix: str = "", where: str | None = None) -> dict[str, Any]:
    """{'pic': {'K': 1}} and {'pic.K': 1} both become {'pic.K': 1}.

    One key given twice in one mapping, nested and dotted (``optim: {base_lr: 1}`` beside ``optim.base_lr: 2``),
    is a ConfigError naming it (and ``where``, the mapping's source, when given): neither value is picked."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        part = flatten(v, key + ".", where) if isinstance(v, dict) else {key: v}
        for fk, fv in part.items():
            if fk in out:
                raise ConfigError(f"{where + ': ' if where else ''}key '{fk}' is given twice in one mapping "
                                  f"(nested and dotted: {out[fk]!r} and {fv!r}); give it once")
            out[fk] = fv
    return out


def apply(cfg: Config, overrides: dict[str, Any], where: str) -> Config:
    """Returns a new config with dotted `overrides` applied; `where` names their source in errors."""
    groups: dict[str, dict[str, Any]] = {}
    for key, value in flatten(overrides, where=where).items():
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in _field_types(Config):
            raise ConfigError(f"{where}: unknown config key '{key}' (sections: {list(_field_types(Config))})")
        section, name = parts
        types = _field_types(type(getattr(cfg, section)))
        if name not in types:
            raise ConfigError(f"{where}: unknown config key '{key}' (known in '{section}': {sorted(types)})")
        groups.setdefault(section, {})[name] = _coerce(key, value, types[name], where)
    return dataclasses.replace(
        cfg, **{s: dataclasses.replace(getattr(cfg, s), **kv) for s, kv in groups.items()})


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any], where: str = "dict") -> Config:
    return apply(Config(), d, where)


# Keys added after rows were committed, each with the value that every earlier run used. The config hash leaves a
# key out while it holds that value, and rows written before the key existed read as having it
# (``with_added_keys``), so a committed row keeps its hash and is compared with new rows for what it really ran.
# Add a key here in the commit that adds it to a dataclass above (its earlier value, not its new default).
ADDED_KEYS: dict[str, Any] = {
    "data.eval_split": "val", "eval.protocol": "probe", "eval.feature_dtype": "auto", "eval.sgd_epochs": 100,
    "eval.sgd_batch": 256, "eval.sgd_lr": 30.0, "eval.sgd_momentum": 0.9, "eval.sgd_weight_decay": 0.0,
    "eval.sgd_warmup_epochs": 5.0, "eval.sgd_crop_min": 0.08, "eval.pixels_size": 0,
    "run.precision": "fp32", "run.checkpoint_minutes": 0.0, "run.tensorboard": False,
    "pic.recent": "positions",  # negatives.RecentNegatives before pic.recent: the last K stream positions
    "eval.logreg_l2": 0.0, "eval.logreg_max_steps": 1000,  # issue 19; no earlier run used protocol logreg
    "optim.final_lr_ratio": 0.0,  # issue 19: every earlier run decayed its lr to 0
}


def with_added_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A row's resolved config (nested dict) with every key of ``ADDED_KEYS`` it lacks set to its earlier value."""
    out = {section: dict(values) for section, values in config.items()}
    for dotted, earlier in ADDED_KEYS.items():
        section, name = dotted.split(".")
        out.setdefault(section, {}).setdefault(name, earlier)
    return out


# Keys that play no part in a run under another key's value: pic.recent (which instances are recent) means nothing
# when pic.K = 0 (all N instances are in the softmax). Left out of the hash and of cell comparisons there, so a
# K = 0 cell is one cell whichever reading of "recent" its file names.
def irrelevant_keys(flat: dict[str, Any]) -> set[str]:
    """Dotted keys of ``flat`` (a cell or a flattened config) that cannot change its run."""
    return {"pic.recent"} if flat.get("pic.K") == 0 else set()


def canonical_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """A cell without the keys that play no part in it (``irrelevant_keys``)."""
    drop = irrelevant_keys(cell)
    return {k: v for k, v in cell.items() if k not in drop}


def plain_sections(cfg: Config) -> dict[str, dict[str, Any]]:
    """``to_dict(cfg)`` for a config whose sections hold only plain values (every field is a bool, int, float or
    str), without ``dataclasses.asdict``'s deep copy: a tenth of the time, for config_hash of 10,000-cell sweeps.
    ``to_dict`` stays the reference (tests/test_config.py compares the two on random configs)."""
    return {f.name: dict(vars(getattr(cfg, f.name))) for f in dataclasses.fields(cfg)}


def config_hash(cfg: Config) -> str:
    """Hash of everything that defines an experiment cell, the seed excluded (cells group seeds).

    A key of ``ADDED_KEYS`` at its earlier value is left out, so hashes of configs that earlier code could
    express do not change when a key is added."""
    d = plain_sections(cfg)
    flat = flatten(plain_sections(cfg))
    for dotted, earlier in ADDED_KEYS.items():
        section, name = dotted.split(".")
        if d[section].get(name) == earlier:
            del d[section][name]
    for dotted in irrelevant_keys(flat):
        section, name = dotted.split(".")
        d[section].pop(name, None)
    d["run"] = {k: v for k, v in d["run"].items() if k in ("deterministic", "precision")}
    d["data"] = {k: v for k, v in d["data"].items() if k not in ("workers", "root")}
    blob = json.dumps(d, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]



# Keys that decide what else a command launches, never what a run computes: eval.baselines adds the random-network
# and raw-pixel tasks beside a cell's own. Two configs that differ only here are two cells of two ablation files
# (their config hashes differ, as committed rows record them) but one experiment: ``run_hash`` is the same, and the
# suite runs it once and shares its row (``pic_bench.report.results.share_sources``). Each key's value here is the
# one ``run_hash`` reads every config at.
LAUNCH_ONLY_KEYS: dict[str, Any] = {"eval.baselines": True}


def run_hash(cfg: Config) -> str:
    """The experiment's hash: ``config_hash`` of ``cfg`` with every key of ``LAUNCH_ONLY_KEYS`` at its fixed
    value. Equal for the same cell of two ablation files that differ only in what else they launch."""
    groups: dict[str, dict[str, Any]] = {}
    for dotted, value in LAUNCH_ONLY_KEYS.items():
        section, name = dotted.split(".")
        groups.setdefault(section, {})[name] = value
    return config_hash(dataclasses.replace(
        cfg, **{s: dataclasses.replace(getattr(cfg, s), **kv) for s, kv in groups.items()}))

class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently) and
    reading `1e6` / `3e-4` as floats (YAML 1.2; 1.1 needs a dot)."""

    def flatten_mapping(self, node):
        # Merging rewrites node.value (merged pairs first, then the mapping's own): remember the keys written in
        # the mapping itself, before this or a mapping merging it rewrites them.
        own = self.__dict__.setdefault("_own_keys", {})
        own.setdefault(id(node), [k for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"])
        super().flatten_mapping(node)

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        # YAML merge keys (``<<: *base``) are resolved first, as SafeLoader does: a key written in this mapping
        # overrides a merged one (that is what the merge is for); only keys written here twice are refused.
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep=deep)  # YAML's own error for a non-mapping
        self.flatten_mapping(node)
        for key_node in self._own_keys[id(node)]:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, typing.Hashable):
                continue  # the base constructor refuses an unhashable key with its own message
            if key in seen:
                raise ConfigError(f"duplicate key '{key}' at line {line} (first at line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader


_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32-BE"), (b"\xff\xfe\x00\x00", "UTF-32-LE"), (b"\xfe\xff", "UTF-16-BE"),
         (b"\xff\xfe", "UTF-16-LE"))


def decode_text(path: Path, data: bytes) -> str:
    """A config file's text: UTF-8, with or without a byte-order mark. Anything else (UTF-16, UTF-32, Latin-1,
    Windows-1252, ...) is a ConfigError naming the file and the encoding it looks like, never a silent guess."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise ConfigError(f"{path}: the file is {name} (byte-order mark {bom.hex(' ')}); save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        if b"\x00" in data:
            guess = "UTF-16 or UTF-32 without a byte-order mark (it holds NUL bytes)"
        else:
            guess = "an 8-bit encoding such as Latin-1 (ISO-8859-1) or Windows-1252"
        raise ConfigError(f"{path}: not UTF-8: byte 0x{data[e.start]:02x} at line {line} is not valid UTF-8; the "
                          f"file looks like {guess}; save it as UTF-8") from None


def parse_cli_overrides(items: list[str]) -> dict[str, Any]:
    """['pic.K=1024', 'pic.correction=false'] -> {'pic.K': 1024, 'pic.correction': False} (YAML scalars).

    A value is kept as YAML reads it; 'pic.K=128,512' (Hydra's multirun spelling) stays the string '128,512'
    here and becomes two cells in ``Ablation.narrowed``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"command line: '{item}' is not key=value")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = load_yaml(raw) if raw != "" else ""
        except (yaml.YAMLError, ConfigError) as e:
            reason = " ".join(str(e).split())
            raise ConfigError(f"command line: {key.strip()}={raw}: not a valid YAML value ({reason})") from None
    return out


def cell_label(cell: dict[str, Any]) -> str:
    """'pic.K=512, pic.correction=True', or 'default' for the empty cell (the tables' label)."""
    return ", ".join(f"{k}={v}" for k, v in cell.items()) if cell else "default"


def _dedupe(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for c in cells:
        if c not in out:
            out.append(c)
    return out


def get_value(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


@dataclass(frozen=True)
class Ablation:
    """An ablation file: what differs from the defaults, the sweep, the seeds."""

    name: str
    path: str
    overrides: dict[str, Any]
    presets: dict[str, dict[str, Any]]
    sweep: dict[str, list[Any]]
    cells: list[dict[str, Any]]
    default_cell: dict[str, Any]
    seeds: list[int]
    kind: str = "train"  # train | analysis (no training: visit_distance, scaling)
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-preset sweep / cells / default_cell / seeds
    cli_keys: frozenset = frozenset()  # keys the command line set (also those that became cells): named in refusals

    def for_preset(self, preset: str) -> "Ablation":
        """This ablation with the preset's own sweep, cells, default cell and seeds where the file gives them."""
        plan = self.plans.get(preset, {})
        if not plan:
            return self
        return dataclasses.replace(
            self, sweep=plan.get("sweep", self.sweep) or {}, cells=list(plan.get("cells", self.cells) or []),
            default_cell=flatten(plan.get("default_cell", self.default_cell) or {},
                                 where=f"{self.path}: presets.{preset}.default_cell"),
            seeds=plan.get("seeds", self.seeds))

    def cell_overrides(self) -> list[dict[str, Any]]:
        """Every cell of the ablation as the dotted overrides that define it, in file order."""
        axes: list[list[dict[str, Any]]] = []
        for key, values in self.sweep.items():
            keys = [k.strip() for k in key.split(",")]
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{self.path}: sweep '{key}' must be a non-empty list")
            axis = []
            for v in values:
                if len(keys) == 1:
                    axis.append({keys[0]: v})
                else:
                    if not isinstance(v, list) or len(v) != len(keys):
                        raise ConfigError(
                            f"{self.path}: sweep '{key}' zips {len(keys)} keys; each value must be a list of "
                            f"{len(keys)}, got {v!r}")
                    axis.append(dict(zip(keys, v)))
            axes.append(axis)
        base_cells = self.cells or [{}]
        out = []
        for arm in base_cells:
            for combo in itertools.product(*axes):
                cell: dict[str, Any] = dict(flatten(arm, where=f"{self.path}: cells"))
                for part in combo:
                    cell.update(part)
                out.append(cell)
        return out

    def source(self, key: str, preset: str, cell: dict[str, Any], cli: dict[str, Any] | None = None) -> str:
        """Where the value of ``key`` came from: the command line, this file (cell, preset block, overrides),
        the preset or the defaults; refusals name it."""
        if (cli and key in cli) or key in self.cli_keys:
            return "command line"
        if key in cell:
            return f"{self.path} (cell '{cell_label(cell)}')"
        if key in self.presets.get(preset, {}):
            return f"{self.path} (presets.{preset})"
        if key in self.overrides:
            return f"{self.path} (overrides)"
        if key in PRESETS.get(preset, {}):
            return f"preset '{preset}'"
        return "the defaults (pic_bench/config.py)"

    def resolve(self, preset: str, cli: dict[str, Any] | None = None, check: bool = True
                ) -> list[tuple[dict[str, Any], Config]]:
        """(cell overrides, full config) for every cell, seed not yet applied.

        Keys and types are always checked; ``check`` also runs ``validate`` (ranges and cross-field checks) for
        this preset, naming where each refused value came from."""
        base = build(preset, self.overrides, self.presets.get(preset, {}), where=self.path)
        out = []
        for cell in self.cell_overrides():
            cfg = apply(base, cell, where=f"{self.path} (cell '{cell_label(cell)}')")
            if cli:
                cfg = apply(cfg, cli, where="command line")
            if check:
                validate(cfg, where=lambda key, cell=cell: self.source(key, preset, cell, cli), preset=preset)
            out.append((cell, cfg))
        return out

    def narrowed(self, preset: str, cli: dict[str, Any]) -> tuple["Ablation", dict[str, Any]]:
        """This ablation with the command line's values of swept keys as its cells, and the rest of the line.

        A swept key (one that some cell sets) given on the command line keeps the cells whose value of it is one
        of the given values (``pic.K=128``; ``pic.K=128,512`` or ``pic.K=[128,512]`` for several); a value no
        cell has becomes its own cell(s): the cells that set the key, with it replaced. A key that is not swept
        applies to every cell, or, given several values, becomes a new axis of the sweep. So every cell's label
        says what it ran. ``run.seed`` is refused: seeds come from ``--seeds``.
        """
        if "run.seed" in cli:
            raise ConfigError(f"command line: run.seed={cli['run.seed']}: the seed is set by --seeds, not by a key "
                              f"(use --seeds {cli['run.seed']}; several: --seeds 0,1,2)")
        base = build(preset, self.overrides, self.presets.get(preset, {}), where=self.path)
        cells = self.cell_overrides()
        rest: dict[str, Any] = {}
        for key, raw in flatten(cli, where="command line").items():
            values = cli_values(key, raw)
            swept = any(key in c for c in cells)
            if swept:
                picked: list[dict[str, Any]] = []
                for raw_v, v in values:
                    same = [c for c in cells if get_value(apply(base, c, self.path), key) == v]
                    picked += same or [{**c, key: raw_v} for c in cells if key in c]
                cells = _dedupe(picked)
            elif len(values) > 1:
                cells = _dedupe([{**c, key: raw_v} for c in cells for raw_v, _ in values])
            else:
                rest[key] = raw
        return dataclasses.replace(self, sweep={}, cells=cells, cli_keys=self.cli_keys | set(flatten(cli))), rest

    def merged(self, preset: str, cli: dict[str, Any]) -> tuple["Ablation", list[str]]:
        """This ablation with cells that resolve to one config kept once, and a warning for each.

        The whole resolved config is compared (not the hash, which leaves out settings such as data.root and
        run.threads that a sweep may still vary on purpose)."""
        kept: dict[str, dict[str, Any]] = {}
        warnings = []
        for cell, cfg in self.resolve(preset, cli, check=False):
            h = json.dumps(plain_sections(cfg), sort_keys=True)  # to_dict's content, without its deep copy
            if h in kept:
                warnings.append(f"cells '{cell_label(kept[h])}' and '{cell_label(cell)}' resolve to the same config "
                                f"({config_hash(cfg)}) at preset '{preset}': running it once, as "
                                f"'{cell_label(kept[h])}'")
                continue
            kept[h] = cell
        if not warnings:
            return self, []
        return dataclasses.replace(self, sweep={}, cells=list(kept.values())), warnings


def cli_values(key: str, raw: Any) -> list[tuple[Any, Any]]:
    """(value as typed, value as the config holds it) for each value a command-line item gives ``key``.

    Several values: a YAML list or Hydra's comma spelling ``a,b``; a free-text key (data.root) is never split."""
    typ = _field_types(type(getattr(Config(), key.split(".")[0], Config()))).get(key.partition(".")[2]) \
        if "." in key else None
    if isinstance(raw, list):
        items = raw
    elif isinstance(raw, str) and "," in raw and (typ is not str or key in CHOICES):
        items = [load_yaml(p.strip()) for p in raw.split(",")]
    else:
        items = [raw]
    if not items:
        raise ConfigError(f"command line: {key}=[]: give at least one value")
    return [(v, get_value(apply(Config(), {key: v}, "command line"), key)) for v in items]


ABLATION_KEYS = {"name", "overrides", "presets", "sweep", "cells", "default_cell", "seeds", "kind"}
PLAN_KEYS = {"sweep", "cells", "default_cell", "seeds"}  # what a preset block may replace besides config keys


def read_yaml_mapping(path: Path, missing: str, not_mapping: str, empty: str | None = None) -> dict[str, Any]:
    """A YAML file that must hold a mapping; every failure is a ConfigError naming the file.

    A file that holds nothing (empty or only comments) reads as {}, or is refused with ``empty`` when given.
    A key given twice is refused with its line; YAML merge keys (``<<: *base``) are resolved. The file must be
    UTF-8 (a byte-order mark is fine); another encoding is refused by name (``decode_text``)."""
    if not path.is_file():
        raise ConfigError(missing)
    try:
        text = decode_text(path, path.read_bytes())
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        raw = load_yaml(text)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if raw is None:
        if empty is not None:
            raise ConfigError(f"{path}: {empty}")
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {not_mapping}")
    return raw


NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def name_problem(name: Any) -> str:
    """Why ``name`` cannot name an ablation's files (<results>/rows/<name>.jsonl, tables/<name>.md), or ''.

    The one rule, used where a file is loaded (``load_ablation``) and where tables are written
    (``report.tables.resolve``): a non-empty string of letters, digits, '_', '-', '.', not starting with '.'
    (no hidden file, no '.' or '..'), so nothing is written outside <results> or out of sight."""
    if not isinstance(name, str):
        return (f"must be a string, got {type(name).__name__} {name!r} (quote it in YAML: name: '{name}')"
                if name is not None else "is empty")
    if not name:
        return "is empty"
    if not NAME.match(name) or name.startswith("."):
        return ("must be a plain file name (letters, digits, '_', '-', '.'; no '/', not starting with '.'): rows "
                "and tables are written as <results>/rows/<name>.jsonl")
    return ""


# What the random streams accept: torch.manual_seed takes [0, 2**64) and the code seeds side streams with the run
# seed plus small offsets (train.py: seed + 17, evaluate.py: seed + 31), so the run seed stays below 2**63 (numpy's
# legacy seed is taken modulo 2**32 in seed_everything; SeedSequence takes any non-negative integer).
SEED_LIMIT = 2**63


def _check_seeds(seeds: Any, where: str) -> list[int]:
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{where} must be a list of integers, got {seeds!r}")
    if not seeds:
        raise ConfigError(f"{where} is empty: nothing would run (give at least one seed, e.g. [0])")
    if any(s < 0 for s in seeds):
        raise ConfigError(f"{where} must be >= 0, got {[s for s in seeds if s < 0][0]} in {seeds}")
    if any(s >= SEED_LIMIT for s in seeds):
        raise ConfigError(f"{where} must be < 2**63 (what torch's seeding takes with the code's offsets), got "
                          f"{[s for s in seeds if s >= SEED_LIMIT][0]}")
    return seeds


def _check_structure(raw: dict[str, Any], path: Path) -> None:
    """Every structural key of an ablation file has its type (a ConfigError naming the key and the file)."""
    def mapping(value: Any, where: str) -> None:
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{path}: {where} must be a mapping of key: value, got {type(value).__name__} "
                              f"{value!r}")

    def plan(block: dict[str, Any], at: str) -> None:
        sweep = block.get("sweep")
        mapping(sweep, f"{at}sweep")
        for key, values in (sweep or {}).items():
            if not isinstance(key, str) or not isinstance(values, list) or not values:
                raise ConfigError(f"{path}: {at}sweep '{key}' must be a non-empty list of values, got {values!r}")
        cells = block.get("cells")
        if cells is not None and not isinstance(cells, list):
            raise ConfigError(f"{path}: {at}cells must be a list of mappings ('- {{pic.K: 512}}'), got "
                              f"{type(cells).__name__} {cells!r}")
        for i, cell in enumerate(cells or []):
            if not isinstance(cell, dict):
                raise ConfigError(f"{path}: {at}cells[{i}] must be a mapping of key: value, got "
                                  f"{type(cell).__name__} {cell!r}")
        mapping(block.get("default_cell"), f"{at}default_cell")

    mapping(raw.get("overrides"), "overrides")
    mapping(raw.get("presets"), "presets")
    plan(raw, "")
    for p, block in (raw.get("presets") or {}).items():
        mapping(block, f"presets.{p}")
        plan(block or {}, f"presets.{p}.")


def output_dir_problem(path: str | Path) -> str:
    """Why ``path`` cannot be an output folder, or '': it must be a writable folder, or a path whose nearest
    existing parent is a writable folder (it is created there). Nothing is created or written here.

    Writable means ``os.access(W_OK | X_OK)``, which also reports a read-only file system (EROFS)."""
    import os

    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            return f"{probe} is a dangling symbolic link"
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return (f"{probe} is a file, not a folder" if probe == path else
                f"{probe} is a file, so {path} cannot be created under it")
    if not os.access(probe, os.W_OK | os.X_OK):
        return (f"{probe} is not writable" if probe == path else
                f"{path} does not exist and cannot be created: {probe} is not writable")
    return ""


def check_output_dirs(*dirs: tuple[str, str | Path]) -> None:
    """(flag, folder) pairs, each checked with ``output_dir_problem``; the first that fails is a ConfigError
    naming the flag and the folder. Run before any work, in a dry run too."""
    for flag, folder in dirs:
        why = output_dir_problem(folder)
        if why:
            raise ConfigError(f"{flag} {folder}: not a writable folder: {why}")


def parse_seeds(text: str) -> list[int]:
    """--seeds '0,1,2' -> [0, 1, 2]; anything else is a ConfigError naming the flag."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {text}: expects comma-separated integers, e.g. --seeds 0,1,2") from None
    return _check_seeds(seeds, f"--seeds {text}: seeds")


def _check_default_cell(abl: "Ablation", preset: str) -> None:
    dc = abl.default_cell
    if not dc:
        return
    where = f"{abl.path}: default_cell {dc}" + (f" (presets.{preset})" if preset in abl.plans else "")
    try:
        apply(Config(), dc, where)
    except ConfigError as e:
        raise ConfigError(str(e)) from None
    cells = abl.cell_overrides()
    if not any(all(k in c and c[k] == v for k, v in dc.items()) for c in cells):
        shown = ", ".join(f"'{cell_label(c)}'" for c in cells[:8]) + (", ..." if len(cells) > 8 else "")
        raise ConfigError(f"{where} is not one of the cells at preset '{preset}' (cells: {shown}); "
                          "tables compare every cell against it")


def load_ablation(path: str | Path) -> Ablation:
    """An ablation file, its structure checked and every key type-checked at every preset.

    Ranges and cross-field checks (K against the batch, ...) depend on the preset and run only for the preset
    that runs (``Ablation.resolve``)."""
    path = Path(path)
    raw = read_yaml_mapping(path, f"ablation file not found: {path}", "must be a mapping at the top level",
                            empty="the file is empty (an ablation needs at least a name; see ablations/*.yaml)")
    unknown = set(raw) - ABLATION_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)} (known: {sorted(ABLATION_KEYS)})")
    _check_structure(raw, path)
    presets = raw.get("presets") or {}
    plans: dict[str, dict[str, Any]] = {}
    for p in list(presets):
        if p not in PRESETS:
            raise ConfigError(f"{path}: presets: unknown preset '{p}' (known: {list(PRESETS)})")
        block = dict(presets[p] or {})
        plans[p] = {k: block.pop(k) for k in list(block) if k in PLAN_KEYS}
        presets[p] = block
        if "seeds" in plans[p]:
            _check_seeds(plans[p]["seeds"], f"{path}: presets.{p}.seeds")
    seeds = _check_seeds(raw.get("seeds", [0]), f"{path}: 'seeds'")
    kind = raw.get("kind", "train")
    if kind not in ("train", "analysis"):
        raise ConfigError(f"{path}: 'kind' must be train or analysis, got {kind!r}")
    name = raw.get("name", path.stem)
    # The name becomes file names under --results (rows/<name>.jsonl, tables/<name>.md): nothing may escape it.
    why = name_problem(name)
    if why:
        raise ConfigError(f"{path}: name {name!r} {why}")
    abl = Ablation(
        name=name, path=str(path), overrides=flatten(raw.get("overrides") or {}, where=f"{path}: overrides"),
        presets={k: flatten(v or {}, where=f"{path}: presets.{k}") for k, v in presets.items()},
        sweep=raw.get("sweep") or {}, cells=list(raw.get("cells") or []),
        default_cell=flatten(raw.get("default_cell") or {}, where=f"{path}: default_cell"),
        seeds=seeds, kind=kind, plans=plans)
    # Check every key now, at every preset, so a typo fails at load time and names the file.
    for p in PRESETS:
        abl.for_preset(p).resolve(p, check=False)
        _check_default_cell(abl.for_preset(p), p)
    return abl


def build(preset: str, *layers: dict[str, Any], where: str = "overrides") -> Config:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}' (known: {list(PRESETS)})")
    cfg = apply(Config(), PRESETS[preset], where=f"preset '{preset}'")
    for layer in layers:
        cfg = apply(cfg, layer, where=where)
    return cfg


def validate(cfg: Config, where: str | Callable[[str], str] = "config", preset: str | None = None) -> None:
    """Ranges of every value and cross-field checks that a single type check cannot do.

    ``where`` names the source of the values (a string, or a function of the key: command line, file, preset);
    ``preset`` is named where a check depends on the preset (K against its batch)."""
    src = where if callable(where) else (lambda key: where)

    def refuse(key: str, why: str, value: Any = None) -> None:
        value = get_value(cfg, key) if value is None else value
        raise ConfigError(f"{src(key)}: {key}={value} {why}")

    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            v = getattr(getattr(cfg, section.name), f.name)
            if isinstance(v, float) and not math.isfinite(v):
                refuse(f"{section.name}.{f.name}", "must be a finite number")
    at_least = {  # key: the smallest valid value
        "model.dim": 1, "model.width": 1, "model.head_hidden": 1, "data.image_size": 1, "data.num_instances": 0,
        "data.test_size": 0, "data.small_views": 0, "data.workers": 0, "eval.knn_k": 1, "eval.linear_epochs": 1,
        "optim.max_steps": 0, "optim.warmup_epochs": 0, "run.threads": 0, "run.log_every": 1,
        "run.checkpoint_every": 0,
    }
    notes = {"data.num_instances": " (0 = all)", "data.test_size": " (0 = all)", "optim.max_steps": " (0 = no cap)",
             "run.threads": " (0 = torch's default)", "run.checkpoint_every": " (0 = only at the end)"}
    for key, low in at_least.items():
        if get_value(cfg, key) < low:
            refuse(key, f"must be >= {low}{notes.get(key, '')}")
    for key in ("eval.knn_t", "optim.epochs", "optim.base_lr", "pic.tau", "eval.linear_lr"):
        if get_value(cfg, key) <= 0:
            refuse(key, "must be > 0")
    for key in ("optim.momentum", "eval.sgd_momentum"):  # SGD momentum: 1 or more never forgets, grows
        if not 0 <= get_value(cfg, key) < 1:
            refuse(key, "must be in [0, 1)")
    for key in ("optim.weight_decay", "eval.sgd_weight_decay"):
        if get_value(cfg, key) < 0:
            refuse(key, "must be >= 0 (0 = none)")
    p, o, d = cfg.pic, cfg.optim, cfg.data
    if not 0 <= o.final_lr_ratio <= 1:
        refuse("optim.final_lr_ratio", "must be in [0, 1] (the fraction of the peak lr the cosine ends at; 0 = "
               "decay to 0)")
    if o.warmup_epochs > o.epochs:  # the schedule would cut the warm-up short (train.lr_schedule): no squeeze
        refuse("optim.warmup_epochs", f"must be <= optim.epochs={o.epochs} (from {src('optim.epochs')}): the "
               "warm-up has to fit in the run")
    if cfg.eval.sgd_warmup_epochs > cfg.eval.sgd_epochs:
        refuse("eval.sgd_warmup_epochs", f"must be <= eval.sgd_epochs={cfg.eval.sgd_epochs} (from "
               f"{src('eval.sgd_epochs')}): the warm-up has to fit in the run")
    if p.w_init_std < 0 or (p.w_init_std == 0 and p.softmax == "cosine"):
        refuse("pic.w_init_std", "must be > 0 with pic.softmax=cosine (a zero row has no direction), >= 0 "
               "otherwise")
    if not 0 <= cfg.run.seed < SEED_LIMIT:
        refuse("run.seed", "must be in [0, 2**63) (torch's seeding with the code's offsets)")
    if d.small_views > 0 and d.small_size < 1:
        refuse("data.small_size", f"must be >= 1 with data.small_views={d.small_views}")
    if o.batch_size < 2:
        refuse("optim.batch_size", "must be >= 2 (BatchNorm needs at least two samples)")
    if p.K < 0:
        refuse("pic.K", "must be >= 0 (0 = all instances)")
    if p.D <= 0 or p.S <= 0 or p.S > p.D:
        raise ConfigError(f"{src('pic.S')}: need 0 < pic.S <= pic.D, got D={p.D}, S={p.S}")
    if 0 < p.K < o.batch_size:
        at = f"at preset '{preset}'" if preset else "of this config"
        raise ConfigError(f"{src('pic.K')}: pic.K={p.K} is smaller than the batch {at} (optim.batch_size="
                          f"{o.batch_size}, from {src('optim.batch_size')}); recent negatives always include "
                          "the current batch")
    if cfg.model.pool < 1:
        refuse("model.pool", "must be >= 1 (1 = global average pool)")
    if d.views < 1:
        refuse("data.views", "must be >= 1")
    if not 0 < d.crop_min <= 1:
        refuse("data.crop_min", "must be in (0, 1]")
    if d.small_views > 0:  # multi-crop: small crops take area [crop_min, small_crop_max], large [small_crop_max, 1]
        if not 0 < d.small_crop_max <= 1:
            refuse("data.small_crop_max", f"must be in (0, 1] with data.small_views={d.small_views} (large crops "
                   "take area [data.small_crop_max, 1])")
        if d.crop_min >= d.small_crop_max:
            refuse("data.small_crop_max", f"must be > data.crop_min={d.crop_min} (from {src('data.crop_min')}) "
                   f"with data.small_views={d.small_views}: small crops take area [data.crop_min, "
                   "data.small_crop_max], an empty range")
    if d.eval_split != "val" and d.dataset != "imagefolder":
        refuse("data.eval_split", f"applies to image folders only; data.dataset={d.dataset} always evaluates on "
               "its own test split")
    e = cfg.eval
    for key, value, ok, why in (("eval.sgd_epochs", e.sgd_epochs, e.sgd_epochs >= 1, "must be >= 1"),
                                ("eval.sgd_batch", e.sgd_batch, e.sgd_batch >= 1, "must be >= 1"),
                                ("eval.sgd_lr", e.sgd_lr, e.sgd_lr > 0, "must be > 0"),
                                ("eval.sgd_warmup_epochs", e.sgd_warmup_epochs, e.sgd_warmup_epochs >= 0,
                                 "must be >= 0"),
                                ("eval.sgd_crop_min", e.sgd_crop_min, 0 < e.sgd_crop_min <= 1, "must be in (0, 1]"),
                                ("eval.logreg_l2", e.logreg_l2, e.logreg_l2 >= 0,
                                 "must be >= 0 (0 = chosen on held-out training features)"),
                                ("eval.logreg_max_steps", e.logreg_max_steps, e.logreg_max_steps >= 1,
                                 "must be >= 1"),
                                ("eval.pixels_size", e.pixels_size, e.pixels_size >= 0,
                                 "must be >= 0 (0 = data.image_size)")):
        if not ok:
            refuse(key, why, value)
    if cfg.run.checkpoint_minutes < 0:
        refuse("run.checkpoint_minutes", "must be >= 0 (0 = off)")

"""Typed, frozen configuration: defaults are the paper's main setting.

A config is a tree of frozen dataclasses. It is built from three layers, each strictly checked (an unknown
key or a wrong type raises ``ConfigError`` naming the key and where it came from):

    defaults (this file)  <-  preset (``smoke`` | ``small`` | ``paper``)  <-  ablation file  <-  command line

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

Derived values (number of instances, iterations) are never written back into the config: see
``pic_bench.train.derive``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    fast_head: bool = True  # head step via pic_bench.head (closed-form gradients, one gather of w[U]); False = plain path


@dataclass(frozen=True)
class OptimConfig:
    batch_size: int = 256  # B, global batch (official: 4 GPUs x 64)
    base_lr: float = 0.03  # learning rate at B = 256, scaled linearly with B (official: 0.03)
    momentum: float = 0.9  # SGD momentum, backbone and classifier alike
    weight_decay: float = 1e-4  # SGD weight decay, backbone and classifier alike
    epochs: float = 200  # training length in passes' worth of samples (epochs * N samples in all)
    warmup_epochs: float = 5  # linear warm-up, same unit as epochs (official: epochs / 40)
    max_steps: int = 0  # stop after this many steps regardless (0 = no cap); for smoke runs


@dataclass(frozen=True)
class EvalConfig:
    knn_k: int = 200  # neighbours of the weighted kNN monitor (NPID)
    knn_t: float = 0.07  # temperature of the kNN vote weights exp(sim / t)
    linear: bool = True  # also train a linear probe on frozen backbone features
    linear_epochs: int = 100  # full-batch optimisation steps of the linear probe
    linear_lr: float = 0.1  # learning rate of the linear probe (Adam on standardised features)
    baselines: bool = True  # also evaluate the random-init network and raw pixels under the same protocols


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0  # seeds every random stream: init, order, augmentation
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads (0 = torch's default)
    deterministic: bool = False  # torch deterministic algorithms (bit-exact resume on CPU)
    checkpoint_every: int = 0  # save a checkpoint every this many steps (0 = only on request / at the end)
    log_every: int = 50  # steps between progress-bar loss updates


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
    "model.arch": ("resnet18", "resnet50", "small_cnn"),
    "model.head": ("mlp", "linear", "none"),
    "pic.softmax": ("cosine", "plain"),
    "pic.scheduler": ("sliding", "epoch", "official"),
    "pic.recent": ("instances", "positions"),
    "pic.storage": ("float32", "bfloat16"),
    "run.device": ("auto", "cpu", "cuda"),
}

# Scale presets. `paper` follows the official training script (github bl0/PIC scripts/PIC.sh and
# contrast/option.py): ResNet-50, MLP head, tau 0.2, 4 GPUs x 64 images, base lr 0.03, SGD momentum 0.9,
# weight decay 1e-4, cosine schedule with warm-up of epochs/40, D = 131072, S = 16384, 200 epochs.
# `small` is tuned for a 2-core CPU on a 10k-image Fashion-MNIST subset, with the paper's window proportions
# (N / D ~ 10, D / S = 8, K = D / 2) and a 3 x 3 final pool (576-d features; see results/README.md for what the
# global pool gave); `smoke` for tests.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "data.dataset": "imagefolder", "data.image_size": 224, "data.workers": 8,
        "model.arch": "resnet50", "optim.epochs": 200, "optim.warmup_epochs": 5,
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


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, typ: Any, where: str) -> Any:
    """Checks `value` against the annotated type; ints are accepted where floats are expected."""
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
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


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'pic': {'K': 1}} and {'pic.K': 1} both become {'pic.K': 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def apply(cfg: Config, overrides: dict[str, Any], where: str) -> Config:
    """Returns a new config with dotted `overrides` applied; `where` names their source in errors."""
    groups: dict[str, dict[str, Any]] = {}
    for key, value in flatten(overrides).items():
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
    "pic.recent": "positions",  # negatives.RecentNegatives before pic.recent: the last K stream positions
}


def with_added_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A row's resolved config (nested dict) with every key of ``ADDED_KEYS`` it lacks set to its earlier value."""
    out = {section: dict(values) for section, values in config.items()}
    for dotted, earlier in ADDED_KEYS.items():
        section, name = dotted.split(".")
        out.setdefault(section, {}).setdefault(name, earlier)
    return out


def config_hash(cfg: Config) -> str:
    """Hash of everything that defines an experiment cell, the seed excluded (cells group seeds).

    A key of ``ADDED_KEYS`` at its earlier value is left out, so hashes of configs that earlier code could
    express do not change when a key is added."""
    d = to_dict(cfg)
    for dotted, earlier in ADDED_KEYS.items():
        section, name = dotted.split(".")
        if d[section].get(name) == earlier:
            del d[section][name]
    d["run"] = {k: v for k, v in d["run"].items() if k in ("deterministic",)}
    d["data"] = {k: v for k, v in d["data"].items() if k not in ("workers", "root")}
    blob = json.dumps(d, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def parse_cli_overrides(items: list[str]) -> dict[str, Any]:
    """['pic.K=1024', 'pic.correction=false'] -> {'pic.K': 1024, 'pic.correction': False} (YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"command line: '{item}' is not key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw != "" else ""
    return out


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

    def for_preset(self, preset: str) -> "Ablation":
        """This ablation with the preset's own sweep, cells, default cell and seeds where the file gives them."""
        plan = self.plans.get(preset, {})
        if not plan:
            return self
        return dataclasses.replace(
            self, sweep=plan.get("sweep", self.sweep), cells=list(plan.get("cells", self.cells)),
            default_cell=flatten(plan.get("default_cell", self.default_cell)), seeds=plan.get("seeds", self.seeds))

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
                cell: dict[str, Any] = dict(flatten(arm))
                for part in combo:
                    cell.update(part)
                out.append(cell)
        return out

    def resolve(self, preset: str, cli: dict[str, Any] | None = None) -> list[tuple[dict[str, Any], Config]]:
        """(cell overrides, full config) for every cell, seed not yet applied."""
        base = build(preset, self.overrides, self.presets.get(preset, {}), where=self.path)
        out = []
        for cell in self.cell_overrides():
            cfg = apply(base, cell, where=f"{self.path} (cell {cell})")
            if cli:
                cfg = apply(cfg, cli, where="command line")
            validate(cfg, where=f"{self.path} (cell {cell})")
            out.append((cell, cfg))
        return out


ABLATION_KEYS = {"name", "overrides", "presets", "sweep", "cells", "default_cell", "seeds", "kind"}
PLAN_KEYS = {"sweep", "cells", "default_cell", "seeds"}  # what a preset block may replace besides config keys


def read_yaml_mapping(path: Path, missing: str, not_mapping: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; every failure is a ConfigError naming the file."""
    if not path.is_file():
        raise ConfigError(missing)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {not_mapping}")
    return raw


def load_ablation(path: str | Path) -> Ablation:
    path = Path(path)
    raw = read_yaml_mapping(path, f"ablation file not found: {path}", "must be a mapping at the top level")
    unknown = set(raw) - ABLATION_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)} (known: {sorted(ABLATION_KEYS)})")
    presets = raw.get("presets") or {}
    plans: dict[str, dict[str, Any]] = {}
    for p in list(presets):
        if p not in PRESETS:
            raise ConfigError(f"{path}: presets: unknown preset '{p}' (known: {list(PRESETS)})")
        block = dict(presets[p] or {})
        plans[p] = {k: block.pop(k) for k in list(block) if k in PLAN_KEYS}
        presets[p] = block
        seeds_p = plans[p].get("seeds", [0])
        if not isinstance(seeds_p, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds_p):
            raise ConfigError(f"{path}: presets.{p}.seeds must be a list of integers, got {seeds_p!r}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{path}: 'seeds' must be a list of integers, got {seeds!r}")
    kind = raw.get("kind", "train")
    if kind not in ("train", "analysis"):
        raise ConfigError(f"{path}: 'kind' must be train or analysis, got {kind!r}")
    abl = Ablation(
        name=str(raw.get("name", path.stem)), path=str(path), overrides=flatten(raw.get("overrides") or {}),
        presets={k: flatten(v or {}) for k, v in presets.items()}, sweep=raw.get("sweep") or {},
        cells=list(raw.get("cells") or []), default_cell=flatten(raw.get("default_cell") or {}),
        seeds=seeds, kind=kind, plans=plans)
    # Check every key now, at every preset, so a typo fails at load time and names the file.
    for p in PRESETS:
        abl.for_preset(p).resolve(p)
    return abl


def build(preset: str, *layers: dict[str, Any], where: str = "overrides") -> Config:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}' (known: {list(PRESETS)})")
    cfg = apply(Config(), PRESETS[preset], where=f"preset '{preset}'")
    for layer in layers:
        cfg = apply(cfg, layer, where=where)
    return cfg


def validate(cfg: Config, where: str = "config") -> None:
    """Cross-field checks that a single type check cannot do."""
    p, o, d = cfg.pic, cfg.optim, cfg.data
    if p.tau <= 0:
        raise ConfigError(f"{where}: pic.tau must be > 0, got {p.tau}")
    if p.K < 0:
        raise ConfigError(f"{where}: pic.K must be >= 0 (0 = all instances), got {p.K}")
    if p.D <= 0 or p.S <= 0 or p.S > p.D:
        raise ConfigError(f"{where}: need 0 < pic.S <= pic.D, got D={p.D}, S={p.S}")
    if o.batch_size <= 0 or o.epochs <= 0:
        raise ConfigError(f"{where}: optim.batch_size and optim.epochs must be > 0")
    if 0 < p.K < o.batch_size:
        raise ConfigError(f"{where}: pic.K={p.K} is smaller than the batch ({o.batch_size}); "
                          "recent negatives always include the current batch")
    if cfg.model.pool < 1:
        raise ConfigError(f"{where}: model.pool must be >= 1 (1 = global average pool), got {cfg.model.pool}")
    if d.views < 1:
        raise ConfigError(f"{where}: data.views must be >= 1, got {d.views}")
    if not 0 < d.crop_min <= 1:
        raise ConfigError(f"{where}: data.crop_min must be in (0, 1], got {d.crop_min}")

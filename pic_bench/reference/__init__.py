"""Published reference numbers and the setting they were measured in (see README.md beside this file).

    from pic_bench.reference import load, match
    refs = load()                                   # every row of pic_official_readme.csv
    ref = match(row["config"], row["derived"])      # the PIC row this run reproduces, or None

A reproduced cell is put beside a reference only when its resolved config has the README's setting: tables
never compare numbers from different settings.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CSV = Path(__file__).with_name("pic_official_readme.csv")
SOURCE = ("the official repository's README, github.com/bl0/PIC, Main Results; "
          "pic_bench/reference/pic_official_readme.csv")

IMAGENET_1K_TRAIN = 1_281_167  # images in the ImageNet-1K training split

# The official setting behind the README's PIC rows, as dotted config keys: ResNet-50 on all of ImageNet-1K,
# one 160 px crop that trains w plus three 96 px crops (multi-crop), cosine softmax with tau 0.2 and a 2-layer
# MLP head (scripts/PIC.sh), every instance in the softmax (the official code has no recent negative sampling)
# and the official sampler (which does not slide) with D = 131072, S = 16384.
PIC_README_SETTING: dict[str, Any] = {
    "data.dataset": "imagefolder", "data.num_instances": 0, "data.views": 1, "data.image_size": 160,
    "data.small_views": 3, "data.small_size": 96, "model.arch": "resnet50", "model.head": "mlp",
    "pic.softmax": "cosine", "pic.tau": 0.2, "pic.K": 0, "pic.scheduler": "official", "pic.D": 131072,
    "pic.S": 16384,
}


@dataclass(frozen=True)
class Reference:
    method: str
    backbone: str
    views_per_iter: int
    epochs: int
    eval: str
    top1: float
    top5: float
    source: str
    note: str

    @property
    def is_pic(self) -> bool:
        return self.method.startswith("PIC")


def load(path: Path = CSV) -> list[Reference]:
    """Every row of the reference CSV, in file order."""
    with open(path, newline="", encoding="utf-8") as f:
        return [Reference(r["method"], r["backbone"], int(r["views_per_iter"]), int(r["epochs"]), r["eval"],
                          float(r["top1"]), float(r["top5"]), r["source"], r["note"]) for r in csv.DictReader(f)]


def _get(config: dict[str, Any], dotted: str) -> Any:
    section, key = dotted.split(".")
    return (config.get(section) or {}).get(key)


def match(config: dict[str, Any], derived: dict[str, Any] | None = None,
          refs: list[Reference] | None = None, any_protocol: bool = False) -> Reference | None:
    """The PIC reference row whose setting ``config`` (a resolved config as a nested dict) reproduces, or None.

    ``derived`` (a result row's derived values) must name N = 1,281,167 when it names N at all: an image folder
    of another size is not ImageNet-1K. The published numbers are the official linear evaluation's, so only a
    cell evaluated by that protocol (``eval.protocol: linear_sgd``) matches; ``any_protocol`` drops that condition
    (to name cells that ran the setting but were judged by the fast probe).
    """
    if any(_get(config, k) != v for k, v in PIC_README_SETTING.items()):
        return None
    if not any_protocol and _get(config, "eval.protocol") != "linear_sgd":
        return None
    if derived and "N" in derived and derived["N"] != IMAGENET_1K_TRAIN:
        return None
    epochs = _get(config, "optim.epochs")
    for ref in refs if refs is not None else load():
        if ref.is_pic and epochs is not None and float(epochs) == float(ref.epochs):
            return ref
    return None

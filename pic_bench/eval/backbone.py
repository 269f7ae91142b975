"""The trained backbone as one file per run, and ``load_backbone`` to get it back for features.

Every successful run writes ``<checkpoint stem>-backbone.pt`` beside its checkpoint (``run_task``), named in the
result row as ``row["backbone"]``; the training checkpoint itself is deleted after the run, this file is kept.

    import pic_bench
    net = pic_bench.load_backbone("checkpoints/components/paper/<hash>-s0-backbone.pt")  # eval mode, on CPU
    f = net(x)  # (B, net.feat_dim) features: what kNN and the linear classifier see

The file is a ``torch.save`` dict: ``state_dict`` (the backbone's parameters and buffers, CPU tensors) and
``pic_bench`` (how to rebuild it: format version, arch, the model config, input channels, feature dim). For the
ResNets ``state_dict`` has exactly the keys of ``torchvision.models.<arch>().state_dict()`` without ``fc.*``, so

    m = torchvision.models.resnet50(); m.load_state_dict(torch.load(p)["state_dict"], strict=False)

loads it into a stock torchvision ResNet (missing keys: ``fc.weight``, ``fc.bias`` only) when the run used the
standard stem on 3-channel images; ``model.small_stem`` or 1-channel data change ``conv1``'s shape, and
``model.pool`` > 1 changes the average pool (load_backbone rebuilds both). ``small_cnn`` has its own keys.
The projection head and the instance classifier w are not part of the backbone and are not saved.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..files import write_atomic
from ..pic.model import backbone

FORMAT = "pic_bench.backbone"  # the file format's tag (the module moved to pic_bench.eval.backbone)
VERSION = 1


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's state dict (CPU tensors) of a PICModel, or of a wrapper holding one as ``module``."""
    model = getattr(model, "module", model)
    return {k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()}


def save_backbone(model: nn.Module, cfg: ModelConfig, channels: int, path: str | Path) -> Path:
    """Writes the backbone of ``model`` (built from ``cfg`` for ``channels``-channel images) to ``path``."""
    path = Path(path)
    inner = getattr(model, "module", model)
    meta = {"format": FORMAT, "version": VERSION, "arch": cfg.arch, "model": dataclasses.asdict(cfg),
            "channels": int(channels), "feat_dim": int(inner.feat_dim)}
    state = {"pic_bench": meta, "state_dict": backbone_state(model)}
    # atomic: a kill or a full disk mid-write never leaves a truncated backbone under the final name, nor a .tmp;
    # a failed write is a WriteError naming the file
    return write_atomic(path, lambda f: torch.save(state, f))


class Backbone(nn.Module):
    """A loaded backbone: ``forward(x)`` = features (B, feat_dim); ``features`` is the same call."""

    def __init__(self, net: nn.Module, feat_dim: int, meta: dict):
        super().__init__()
        self.net, self.feat_dim, self.meta = net, feat_dim, meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load_backbone(path: str | Path, device: str | torch.device = "cpu") -> Backbone:
    """The backbone saved at ``path`` as an nn.Module in eval mode on ``device``, ready for features.

    Raises:
        ValueError naming the file if it is not a pic_bench backbone file.
    """
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob.get("pic_bench") if isinstance(blob, dict) else None
    if not meta or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a pic_bench backbone file (expected a dict with 'pic_bench' and "
                         "'state_dict', written by pic_bench.eval.backbone.save_backbone)")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: backbone format version {meta.get('version')}, this code reads {VERSION}")
    cfg = ModelConfig(**meta["model"])
    net, feat_dim = backbone(cfg, meta["channels"])
    net.load_state_dict(blob["state_dict"])
    return Backbone(net, feat_dim, meta).to(device).eval()

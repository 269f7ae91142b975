"""Backbone + projection head. ``forward`` returns z (B, d) and has no side effects.

Backbones: torchvision ResNet-18/50 (``small_stem``: 3x3 stride-1 first conv and no max-pool, for 28-32 px
inputs) and ``small_cnn``, a 5-conv network for 2-core CPU runs on 28 px images. The last average pool of either
gives a ``pool`` x ``pool`` grid, flattened (``pool`` = 1: the usual global pool, feature = channels; the small
preset's 3 keeps the coarse layout of a 28 px image: 9 x 64 = 576-d features from the last 7 x 7 map).
Heads: the paper's 2-layer MLP (Linear-BN-ReLU-Linear, 2048-2048-128 on ResNet-50), a linear layer, or none (z is
the backbone feature).
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn

from ..config import ModelConfig


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def small_cnn(channels: int, width: int, pool: int = 1) -> tuple[nn.Module, int]:
    w = width
    net = nn.Sequential(
        *_block(channels, w), *_block(w, w), nn.MaxPool2d(2),
        *_block(w, 2 * w), *_block(2 * w, 2 * w), nn.MaxPool2d(2),
        *_block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(pool), nn.Flatten())
    return net, 4 * w * pool * pool


def resnet(arch: str, channels: int, small_stem: bool, pool: int = 1) -> tuple[nn.Module, int]:
    net = getattr(torchvision.models, arch)(weights=None)
    if small_stem or channels != 3:
        k, s, p = (3, 1, 1) if small_stem else (7, 2, 3)
        net.conv1 = nn.Conv2d(channels, 64, k, s, p, bias=False)
    if small_stem:
        net.maxpool = nn.Identity()
    feat = net.fc.in_features * pool * pool
    net.avgpool = nn.AdaptiveAvgPool2d(pool)  # torchvision's forward flattens after it
    net.fc = nn.Identity()
    return net, feat


def backbone(cfg: ModelConfig, channels: int) -> tuple[nn.Module, int]:
    """The backbone of ``cfg`` for ``channels``-channel images and its feature dim."""
    if cfg.arch == "small_cnn":
        return small_cnn(channels, cfg.width, cfg.pool)
    return resnet(cfg.arch, channels, cfg.small_stem, cfg.pool)


def feature_dim(cfg: ModelConfig, channels: int) -> int:
    """The backbone's feature dim (what kNN and the linear probe see), from the network itself built on the meta
    device: no memory and no initialisation, so a plan can ask for a ResNet-50's in milliseconds."""
    with torch.device("meta"):
        return backbone(cfg, channels)[1]


class PICModel(nn.Module):
    def __init__(self, cfg: ModelConfig, channels: int):
        super().__init__()
        self.backbone, self.feat_dim = backbone(cfg, channels)
        if cfg.head == "mlp":
            self.head = nn.Sequential(nn.Linear(self.feat_dim, cfg.head_hidden), nn.BatchNorm1d(cfg.head_hidden),
                                      nn.ReLU(inplace=True), nn.Linear(cfg.head_hidden, cfg.dim))
            self.out_dim = cfg.dim
        elif cfg.head == "linear":
            self.head = nn.Linear(self.feat_dim, cfg.dim)
            self.out_dim = cfg.dim
        else:
            self.head = nn.Identity()
            self.out_dim = self.feat_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, feat_dim): what kNN and the linear probe see."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> z (B, d)."""
        return self.head(self.backbone(x))

import pytest
import torch
import torch.nn.functional as F

from pic_bench.config import ConfigError, ModelConfig, build, validate
from pic_bench.pic.model import PICModel


def _last_map(model: PICModel, x: torch.Tensor, arch: str) -> torch.Tensor:
    """The backbone's last feature map, before its average pool (computed by hand)."""
    b = model.backbone
    if arch == "small_cnn":
        for layer in list(b)[:-2]:  # drop AdaptiveAvgPool2d + Flatten
            x = layer(x)
        return x
    x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
    return b.layer4(b.layer3(b.layer2(b.layer1(x))))


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
@pytest.mark.parametrize("pool", [1, 2, 3])
def test_pool_grid_features_are_block_means_of_the_last_map(arch, pool):
    torch.manual_seed(pool)
    model = PICModel(ModelConfig(arch=arch, small_stem=True, width=8, pool=pool, head="mlp", head_hidden=32,
                                 dim=16), channels=1).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        f, fmap, z = model.features(x), _last_map(model, x, arch), model(x)
    C, H, W = fmap.shape[1:]
    assert f.shape == (3, model.feat_dim) == (3, C * pool * pool) and z.shape == (3, 16)
    hb = [(i * H // pool, -(-(i + 1) * H // pool)) for i in range(pool)]
    wb = [(j * W // pool, -(-(j + 1) * W // pool)) for j in range(pool)]
    ref = torch.stack([torch.stack([fmap[:, :, h0:h1, w0:w1].mean((2, 3)) for (w0, w1) in wb], -1)
                       for (h0, h1) in hb], -2).flatten(1)
    torch.testing.assert_close(f, ref, rtol=1e-5, atol=1e-6)
    if pool == 1:
        torch.testing.assert_close(f, F.adaptive_avg_pool2d(fmap, 1).flatten(1))


def test_small_preset_features_keep_a_3x3_layout():
    cfg = build("small")
    assert cfg.model.pool == 3 and PICModel(cfg.model, channels=1).feat_dim == 9 * 4 * cfg.model.width


def test_pool_below_one_is_refused_with_the_key():
    with pytest.raises(ConfigError, match=r"model\.pool"):
        validate(build("smoke", {"model.pool": 0}))

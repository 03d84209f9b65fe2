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


@pytest.mark.filterwarnings("ignore:Constant folding - Only steps=1:UserWarning")
@pytest.mark.parametrize("name", ["yolov5n-efficientformer-l0", "yolov5n-efficientformerv2-s0"])
def test_detection_model_exports_to_onnx(name: str, tmp_path) -> None:
    """One model per family of our own backbones (the timm family: tests/models/test_timm_backbone.py)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from efyolo.export.exporter import export_model
    from efyolo.models.checkpoint import model_from_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = efyolo.build_model(name, nc=3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("attention_biases", "gamma")):
                p.normal_(0.0, 0.5)  # biases and layer scales matter to the output
    weights = save_checkpoint(
        {"model_config": model.yaml, "state_dict": model.state_dict(), "names": ["a", "b", "c"], "imgsz": 128},
        tmp_path / "m.pt",
    )
    path = export_model(weights, "onnx", imgsz=(128, 192), output=tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 128, 192)
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model_from_checkpoint(weights).eval().fuse()(x)
    err = ((torch.from_numpy(out) - expected).abs() / expected.abs().clamp(min=1.0)).max().item()
    assert err <= 1e-4, err
    modes = {a.s.decode() for n in onnx.load(str(path)).graph.node if n.op_type == "Resize" for a in n.attribute
             if a.name == "mode"}
    assert "cubic" not in modes  # fixed size: attention biases are constants, no resampling in the graph


def test_builtin_names_of_every_family() -> None:
    from efyolo.models.config import builtin_model_names

    names = builtin_model_names()
    for expected in ("yolov5n6", "yolov5x6", "yolov5s-bot3", "yolov5n-efficientformerv2-s0",
                     "yolov5s-efficientformerv2-l", "yolov5n-efficientformer-l0", "yolov5n-efficientformer-n0"):
        assert expected in names
    assert efyolo.build_model("yolov5n6").max_stride == 64
    with pytest.raises(EfyoloError, match="P6 models"):
        efyolo.build_model("yolov5n6-efficientformer-l1")


def test_efficientformerv2_detector_exports_to_torchscript(tmp_path) -> None:
    """V2 in TorchScript at a fixed non-square size, and a dynamic ONNX export at another size."""
    from efyolo.export.exporter import export_model
    from efyolo.models.checkpoint import model_from_checkpoint, save_checkpoint
    from efyolo.runtime.autobackend import load_backend

    torch.manual_seed(0)
    model = efyolo.build_model("yolov5n-efficientformerv2-s0", nc=3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("attention_biases", "gamma")):
                p.normal_(0.0, 0.5)
    weights = save_checkpoint(
        {"model_config": model.yaml, "state_dict": model.state_dict(), "names": ["a", "b", "c"], "imgsz": 128},
        tmp_path / "v2.pt",
    )
    reference = model_from_checkpoint(weights).eval().fuse()
    x = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        expected = reference(x)
    path = export_model(weights, "torchscript", imgsz=(128, 192), output=tmp_path / "v2.torchscript")
    backend = load_backend(path, torch.device("cpu"))
    actual = backend(x)
    err = ((actual - expected).abs() / expected.abs().clamp(min=1.0)).max().item()
    assert err <= 1e-4, err
    graph = str(backend.module.inlined_graph)
    assert "upsample_bicubic" not in graph  # the attention biases were frozen as constants

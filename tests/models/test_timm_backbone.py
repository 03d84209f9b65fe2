"""Any timm model as a backbone (``timm:<model_name>``): shapes, detection models, training, export,
local weights, fuse, and the errors (unknown name, no stride 8/16/32, fixed-size models, no timm)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import efyolo
from efyolo.errors import EfyoloError
from efyolo.models import BACKBONES, build_backbone, build_model
from efyolo.models.backbone import load_backbone_weights
from efyolo.models.checkpoint import save_checkpoint
from efyolo.models.config import load_model_config
from efyolo.models.timm_backbone import TimmBackbone
from efyolo.training.loss import ComputeLoss

timm = pytest.importorskip("timm", reason='timm backbones need the [timm] extra: pip install "efyolo[timm]"')

NAMES = [
    "mobilenetv3_large_100",
    "mobilenetv3_small_100",
    "lcnet_100",
    "mobilenetv4_conv_small",
    "ghostnet_100",
    "efficientnet_b0",
    "repvit_m1",
]
# from timm's feature_info (stride 8, 16, 32 maps)
CHANNELS = {
    "mobilenetv3_large_100": [40, 112, 960],
    "mobilenetv3_small_100": [24, 48, 576],
    "lcnet_100": [128, 256, 512],
    "mobilenetv4_conv_small": [64, 96, 960],
    "ghostnet_100": [40, 80, 160],
    "efficientnet_b0": [40, 112, 320],
    "repvit_m1": [96, 192, 384],
}
FAST = ["lcnet_100", "mobilenetv3_small_100"]  # trained, validated, exported and run end to end
SIZES = [(224, 224), (256, 320), (384, 640)]
HYP = {"box": 0.05, "cls": 0.5, "obj": 1.0, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0,
       "label_smoothing": 0.0}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def backbones() -> dict:
    return {}


def _backbone(cache: dict, name: str) -> TimmBackbone:
    if name not in cache:
        torch.manual_seed(0)
        cache[name] = build_backbone("timm:" + name).eval()
    return cache[name]


def _check_shapes(model: TimmBackbone, h: int, w: int) -> None:
    with torch.no_grad():
        outs = model(torch.randn(1, 3, h, w))
    assert [o.shape[1] for o in outs] == model.channels, (model.name, h, w)
    assert [(h // o.shape[2], w // o.shape[3]) for o in outs] == [(s, s) for s in model.strides], (model.name, h, w)
    assert all(h % o.shape[2] == 0 and w % o.shape[3] == 0 for o in outs)


# --------------------------------------------------------------------------------------------
# shapes, fuse, a train step
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_declared_channels_and_strides_match_outputs(name: str, backbones: dict) -> None:
    model = _backbone(backbones, name)
    assert isinstance(model, TimmBackbone) and model.name == "timm:" + name
    assert model.channels == CHANNELS[name] and model.strides == [8, 16, 32]
    for h, w in SIZES:
        _check_shapes(model, h, w)


@pytest.mark.parametrize("name", NAMES)
def test_fuse_keeps_eval_outputs(name: str, backbones: dict) -> None:
    model = copy.deepcopy(_backbone(backbones, name))
    with torch.no_grad():
        for m in model.modules():  # non-trivial BatchNorm statistics, so that folding them is tested
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        x = torch.randn(1, 3, 128, 160)
        expected = model(x)
        n_before = sum(p.numel() for p in model.parameters())
        assert model.fuse() is model and model.fuse() is model  # twice is once
        actual = model(x)
    if name == "repvit_m1":  # timm re-parameterises RepViT (RepVggDw branches, ConvNorm + BN)
        assert sum(p.numel() for p in model.parameters()) < n_before
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        assert ((a - e).abs().max() / e.abs().max().clamp(min=1.0)).item() < 1e-4, name


def _train_step(model: torch.nn.Module, imgsz: int = 128) -> None:
    model.train()
    x = torch.rand(2, 3, imgsz, imgsz)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 0, 0.3, 0.6, 0.2, 0.2]])
    loss, items = ComputeLoss(model.detect, HYP)(model(x), targets)
    loss.backward()
    assert torch.isfinite(loss) and items.shape == (3,)
    backbone = model.model[0]
    grads = [p.grad for p in backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:5]) and any(g.abs().sum() > 0 for g in grads if g is not None)


@pytest.mark.parametrize("name", NAMES)
def test_detection_model_builds_and_trains(name: str) -> None:
    model = build_model(f"yolov5n-timm:{name}", nc=3)
    backbone = model.model[0]
    assert isinstance(backbone, TimmBackbone) and backbone.channels == CHANNELS[name]
    assert model.yaml["backbone_model"] == f"timm:{name}" and model.yaml["name"] == f"yolov5n-timm:{name}"
    assert [int(s) for s in model.stride] == [8, 16, 32]
    _train_step(model)
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 96, 128)).shape[-1] == 8


# --------------------------------------------------------------------------------------------
# names: built-in model names, YAML rows, the registry
# --------------------------------------------------------------------------------------------


def test_model_names_and_registry() -> None:
    cfg = load_model_config("yolov5s-timm:mobilenetv3_large_100")
    assert cfg["backbone_model"] == "timm:mobilenetv3_large_100" and cfg["width_multiple"] == 0.5
    assert load_model_config("yolov5n-timm:efficientnet_b0.ra_in1k")["backbone_model"] == "timm:efficientnet_b0.ra_in1k"
    # registered names keep working, written with dashes
    assert load_model_config("yolov5s-efficientformer-l1")["backbone_model"] == "efficientformer_l1"
    assert "timm:lcnet_100" in BACKBONES and "timm:lcnet_100" not in BACKBONES.names()
    with pytest.raises(EfyoloError, match=r"timm:<model name>"):
        BACKBONES.get("nonexistent_net")
    with pytest.raises(EfyoloError, match=r"yolov5\{n,s,m,l,x\}-timm:<timm model name>"):
        load_model_config("yolov5q-timm:lcnet_100")


def test_yaml_backbone_row_with_timm_kwargs() -> None:
    cfg = load_model_config("yolov5n-timm:lcnet_100", nc=2)
    row = cfg["backbone"][0]
    assert row[2] == "Backbone"
    cfg["backbone"][0] = [-1, 1, "Backbone", ["timm:efficientnet_b0", {"drop_path_rate": 0.2}]]
    model = build_model(cfg)
    backbone = model.model[0]
    assert backbone.name == "timm:efficientnet_b0" and backbone.timm_kwargs == {"drop_path_rate": 0.2}
    rates = [m.drop_prob for m in backbone.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) > 0  # the row's drop_path_rate reached timm
    with pytest.raises(EfyoloError, match="set by efyolo"):
        build_backbone("timm:lcnet_100", out_indices=(1, 2))
    with pytest.raises(EfyoloError, match="bad argument"):
        build_backbone("timm:lcnet_100", no_such_argument=1)


def test_timm_is_imported_only_when_a_timm_name_is_built() -> None:
    import subprocess

    code = ("import sys, efyolo, efyolo.models; efyolo.build_model('yolov5n', nc=1); "
            "assert 'timm' not in sys.modules, 'timm imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_unknown_and_empty_names() -> None:
    with pytest.raises(EfyoloError, match=r"unknown timm model 'mobilenetv3_larg_100'.*did you mean timm:mobilenetv3_large_100"):
        build_backbone("timm:mobilenetv3_larg_100")
    with pytest.raises(EfyoloError, match="unknown timm model"):
        build_model("yolov5n-timm:not_a_timm_model")
    with pytest.raises(EfyoloError, match="needs a timm model name"):
        build_backbone("timm:")
    with pytest.raises(EfyoloError, match="needs a timm model name"):
        build_model("yolov5n-timm:")


def test_vit_without_strides_8_16_32() -> None:
    with pytest.raises(EfyoloError, match=r"strides 8, 16 and 32.*reductions 16 only"):
        build_backbone("timm:vit_tiny_patch16_224")
    with pytest.raises(EfyoloError, match=r"reductions 16, 32, 64 only \(missing 8\)"):
        build_backbone("timm:levit_128")


def test_fixed_size_timm_models_point_to_efyolos_own() -> None:
    for name, own in (("efficientformerv2_s0", "efficientformerv2_s0"), ("efficientformer_l1", "efficientformer_l1")):
        with pytest.raises(EfyoloError, match=rf"fixed input size 224x224.*use backbone {own} \(efyolo's own, any input size\)"):
            build_backbone(f"timm:{name}")(torch.randn(1, 3, 320, 320))
    with pytest.raises(EfyoloError, match="use backbone efficientformerv2_s0"):
        build_model("yolov5n-timm:efficientformerv2_s0")


def test_input_not_a_multiple_of_32(backbones: dict) -> None:
    with pytest.raises(EfyoloError, match=r"224x200 is not a multiple of 32"):
        _backbone(backbones, "lcnet_100")(torch.randn(1, 3, 224, 200))


def test_missing_timm_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(EfyoloError, match=r'pip install "efyolo\[timm\]"'):
        build_backbone("timm:lcnet_100")
    with pytest.raises(EfyoloError, match=r'pip install "efyolo\[timm\]"'):
        build_model("yolov5n-timm:lcnet_100")


# --------------------------------------------------------------------------------------------
# local weights
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("name", ["mobilenetv3_small_100", "repvit_m1"])
def test_load_classification_state_dict(name: str, suffix: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    classifier = timm.create_model(name, pretrained=False)
    with torch.no_grad():
        for m in classifier.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = classifier.state_dict()
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state}, path)
    torch.manual_seed(2)  # a different random init, so that loading must change it
    model = build_backbone(f"timm:{name}", weights=path).eval()
    reference = timm.create_model(name, pretrained=False, features_only=True, out_indices=model.model.feature_info.out_indices)
    # timm's features_only model with the same weights: build it from the classifier's tensors
    full = timm.create_model(name, pretrained=False)
    full.load_state_dict(state)
    reference.load_state_dict(_features_state(reference, full))
    reference.eval()
    x = torch.randn(1, 3, 160, 192)
    with torch.no_grad():
        for a, e in zip(model(x), reference(x)):
            torch.testing.assert_close(a, e, rtol=0, atol=0)


def _features_state(features: torch.nn.Module, full: torch.nn.Module) -> dict:
    """The feature extractor's tensors taken from the classifier, matched by identity of the modules
    timm moves into its feature wrapper (written independently of the loader's key renaming)."""
    full_state = full.state_dict()
    out = {}
    for key in features.state_dict():
        candidates = [key, key.replace("_", ".", 1)]
        out[key] = next(full_state[c] for c in candidates if c in full_state)
    return out


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    small = timm.create_model("mobilenetv3_small_100", pretrained=False).state_dict()
    path = tmp_path / "large.pth"
    torch.save(timm.create_model("mobilenetv3_large_100", pretrained=False).state_dict(), path)
    with pytest.raises(EfyoloError, match=r"large.pth: weights do not fit timm:mobilenetv3_small_100.*shape mismatch: blocks.1.0.conv_pw.weight \(64, 16, 1, 1\) in file vs \(72, 16, 1, 1\) in model.*unexpected keys: blocks.3.2"):
        build_backbone("timm:mobilenetv3_small_100", weights=path)
    broken = dict(small)
    del broken["blocks.0.0.conv_dw.weight"]
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, path)
    with pytest.raises(EfyoloError, match=r"missing keys: blocks.0.0.conv_dw.weight; unexpected keys: extra.weight"):
        build_backbone("timm:mobilenetv3_small_100", weights=path)
    with pytest.raises(EfyoloError, match="not found"):
        build_backbone("timm:mobilenetv3_small_100", weights=tmp_path / "nope.pth")
    # --backbone-weights into a detection model, and refused after fuse()
    torch.save(small, path)
    model = build_model("yolov5n-timm:mobilenetv3_small_100", nc=2)
    load_backbone_weights(model, path)
    torch.testing.assert_close(model.model[0].model.conv_stem.weight, small["conv_stem.weight"])
    model.fuse()
    with pytest.raises(EfyoloError, match="before fuse"):
        load_backbone_weights(model, path)


# --------------------------------------------------------------------------------------------
# ONNX export and end to end
# --------------------------------------------------------------------------------------------


def _export_and_compare(name: str, tmp_path: Path, imgsz: int = 128) -> None:
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is in the [export] extra")
    from efyolo.export.exporter import export_model
    from efyolo.runtime.autobackend import load_backend
    from efyolo.runtime.pytorch import PyTorchBackend

    torch.manual_seed(0)
    model = build_model(f"yolov5n-timm:{name}", nc=3)
    weights = save_checkpoint({"model_config": model.yaml, "state_dict": model.state_dict(), "names": ["a", "b", "c"],
                               "imgsz": imgsz}, tmp_path / "w.pt")
    path = export_model(weights, "onnx", imgsz=imgsz, output=tmp_path / "w.onnx")
    x = torch.rand(1, 3, imgsz, imgsz)
    actual = load_backend(path, CPU)(x)
    expected = PyTorchBackend.from_checkpoint(weights, CPU)(x)
    err = ((actual - expected).abs() / expected.abs().clamp(min=1.0)).max().item()
    assert err <= 1e-4, f"{name}: max relative difference {err:.2e}"


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_matches_torch(name: str, tmp_path: Path) -> None:
    _export_and_compare(name, tmp_path)


@pytest.mark.parametrize("name", FAST)
def test_train_val_export_detect_end_to_end(name: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is in the [export] extra")
    import numpy as np

    from efyolo.data.synth import generate_dataset
    from efyolo.engine.predictor import Detector
    from efyolo.export.exporter import export_model

    data = generate_dataset(tmp_path / "data", n_train=8, n_val=4, imgsz=64, seed=3)
    result = efyolo.train(data=str(data), model=f"yolov5n-timm:{name}", epochs=1, imgsz=64, batch=4, workers=0,
                          patience=0, close_mosaic=1, cache=False, project=str(tmp_path), name="run", quiet=True)
    assert result.best.is_file() and result.epochs_run == 1
    metrics = efyolo.val(result.best, data=str(data), imgsz=64, batch=4, workers=0, quiet=True, plots=False,
                         project=str(tmp_path / "val"))
    assert 0.0 <= metrics["map50"] <= 1.0
    onnx_path = export_model(result.best, "onnx", imgsz=64, output=tmp_path / "best.onnx")
    image = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    (pt,) = Detector(result.best, device="cpu")(image, conf=0.001)
    (ox,) = Detector(onnx_path, device="cpu")(image, conf=0.001)
    assert len(pt.boxes) > 0 and abs(len(pt.boxes) - len(ox.boxes)) <= 2  # only ties at the threshold may differ
    k = min(10, len(pt.boxes), len(ox.boxes))
    top_pt, top_ox = np.sort(pt.scores)[::-1][:k], np.sort(ox.scores)[::-1][:k]
    assert np.abs(top_pt - top_ox).max() < 1e-3


def test_every_named_timm_model_end_to_end_through_compare(tmp_path: Path) -> None:
    """Each issue-named timm model: trained a few iterations, validated, exported to ONNX and timed."""
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is in the [export] extra")
    from efyolo.data.synth import generate_dataset
    from efyolo.engine.compare import compare

    data = generate_dataset(tmp_path / "data", n_train=8, n_val=4, imgsz=64, seed=3)
    models = [f"yolov5n-timm:{n}" for n in NAMES]
    result = compare(models, data=str(data), imgsz=64, epochs=1, batch=4, formats="onnx", runs=1, warmup=0,
                     passes=1, threads=1, project=str(tmp_path), name="study", quiet=True,
                     train_options={"workers": 0, "patience": 0, "close_mosaic": 0, "cache": False,
                                    "tensorboard": False})
    assert [r.model for r in result.rows] == models
    for row in result.rows:
        assert row.status == "ok" and row.epochs == 1 and row.latency_ms > 0, row
        assert 0.0 <= row.map50 <= 1.0 and row.size_mb > 0

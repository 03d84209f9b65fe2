"""Every YOLOv5 v7.0 detection config loads unchanged, with YOLOv5's exact parameter count, and runs.

The YAML files in ``yolov5_v7_configs/`` are YOLOv5 v7.0's own (see its README.txt). Covered: the
parameter count and head strides of each; forward in train and eval mode; yolov3-tiny's
``nn.ZeroPad2d`` + ``nn.MaxPool2d`` geometry; the ``activation:`` key; P6/P7/P2 levels through the
loss, AutoAnchor and a training run; GhostConv and C3TR through ONNX.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import efyolo
from efyolo import EfyoloError, build_model
from efyolo.models.blocks import Conv, GhostBottleneck
from efyolo.models.checkpoint import model_from_checkpoint, save_checkpoint
from efyolo.models.activations import parse_activation
from efyolo.models.transformer import C3TR

CONFIG_DIR = Path(__file__).parent / "yolov5_v7_configs"

# Reference parameter counts and Detect strides at nc=80, from YOLOv5 v7.0 itself: the PyPI package
# yolov5==7.0.14 (wheel yolov5-7.0.14-py37.py38.py39.py310-none-any.whl, a packaging of YOLOv5 v7.0),
# unzipped, each YAML below built with its `yolov5.models.yolo.DetectionModel(cfg, ch=3)` (torch 2.14.1,
# CPU; its unneeded imports such as pandas and requests stubbed) and counted as
# `sum(p.numel() for p in model.parameters())`, strides from `model.stride`. Loading those reference
# models' state dicts into ours also gave the same keys and shapes and the same eval outputs.
REFERENCE = {
    "yolov3": (61_949_149, [8, 16, 32]),
    "yolov3-spp": (62_998_749, [8, 16, 32]),
    "yolov3-tiny": (8_852_366, [16, 32]),
    "yolov5-bifpn": (46_825_853, [8, 16, 32]),
    "yolov5-fpn": (41_117_565, [8, 16, 32]),
    "yolov5-p2": (47_493_372, [4, 8, 16, 32]),
    "yolov5-p34": (5_331_518, [8, 16]),
    "yolov5-p6": (76_770_172, [8, 16, 32, 64]),
    "yolov5-p7": (144_281_723, [8, 16, 32, 64, 128]),
    "yolov5-panet": (46_563_709, [8, 16, 32]),
    "yolov5n6": (3_246_940, [8, 16, 32, 64]),
    "yolov5s6": (12_626_620, [8, 16, 32, 64]),
    "yolov5m6": (35_731_932, [8, 16, 32, 64]),
    "yolov5l6": (76_770_172, [8, 16, 32, 64]),
    "yolov5x6": (140_794_780, [8, 16, 32, 64]),
    "yolov5s-ghost": (3_897_605, [8, 16, 32]),
    "yolov5s-transformer": (7_235_645, [8, 16, 32]),
    "yolov5s-LeakyReLU": (7_235_389, [8, 16, 32]),
    "yolov5n": (1_872_157, [8, 16, 32]),
    "yolov5s": (7_235_389, [8, 16, 32]),
    "yolov5m": (21_190_557, [8, 16, 32]),
    "yolov5l": (46_563_709, [8, 16, 32]),
    "yolov5x": (86_749_405, [8, 16, 32]),
}


def config_path(name: str) -> Path:
    return CONFIG_DIR / f"{name}.yaml"


def small_config(name: str, width: float = 0.25, depth: float = 0.33, nc: int | None = None) -> dict:
    """The config at (at most) nano width and depth: the same rows, modules and levels, cheaper."""
    cfg = yaml.safe_load(config_path(name).read_text())
    cfg["width_multiple"] = min(float(cfg["width_multiple"]), width)
    cfg["depth_multiple"] = min(float(cfg["depth_multiple"]), depth)
    if nc is not None:
        cfg["nc"] = nc
    return cfg


def test_fixture_folder_holds_every_config() -> None:
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == sorted(REFERENCE)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_config_builds_with_reference_params_and_strides(name: str) -> None:
    params, strides = REFERENCE[name]
    model = build_model(config_path(name))
    assert model.num_params() == params
    assert model.stride.tolist() == strides
    assert model.nc == 80 and model.detect.nl == len(strides) and model.detect.na == 3


def test_max_stride_counts_every_layer() -> None:
    """yolov5-p34 detects at 8 and 16, but its backbone reaches stride 32: inputs must be multiples of 32."""
    p34 = build_model(small_config("yolov5-p34"))
    assert p34.stride.tolist() == [8.0, 16.0] and p34.max_stride == 32
    with pytest.raises(EfyoloError, match="multiple of the model stride 32"):
        p34(torch.zeros(1, 3, 48, 48))
    assert build_model(small_config("yolov5-p7")).max_stride == 128
    assert build_model(small_config("yolov5-p2")).max_stride == 32


@pytest.mark.parametrize("name", [n for n in REFERENCE if n not in ("yolov5n", "yolov5s", "yolov5m", "yolov5l")])
def test_forward_train_and_eval_levels_and_strides(name: str) -> None:
    model = build_model(small_config(name, nc=3))
    strides = REFERENCE[name][1]
    s = model.max_stride
    h, w = 2 * s, s  # non-square, the smallest sizes with every level present
    x = torch.rand(2, 3, h, w)
    raw = model(x)
    assert [tuple(r.shape) for r in raw] == [(2, 3, h // st, w // st, 8) for st in strides]
    model.eval()
    with torch.no_grad():
        pred = model(x)
    assert pred.shape == (2, sum(3 * (h // st) * (w // st) for st in strides), 8)
    assert torch.isfinite(pred).all()


def test_yolov3_tiny_zeropad_maxpool_geometry() -> None:
    model = build_model(config_path("yolov3-tiny"))
    kinds = [type(m) for m in model.model]
    assert kinds[1] is nn.MaxPool2d and kinds[11] is nn.ZeroPad2d and kinds[12] is nn.MaxPool2d
    assert [model.shapes[i].stride for i in (1, 3, 5, 7, 9, 10, 11, 12)] == [2, 4, 8, 16, 32, 32, 32, 32]
    assert model.shapes[11].excess == (1, 1)  # one row and column of zeros ...
    assert model.shapes[12].excess == (0, 0)  # ... eaten by the 2x2 stride-1 pool
    assert model.shapes[12].channels == 512
    feats = model.model[:13](torch.zeros(1, 3, 64, 96))
    assert feats.shape == (1, 512, 2, 3)


def _tiny_yaml(tmp_path: Path, backbone: str, activation: str | None = None) -> Path:
    cfg = tmp_path / "tiny.yaml"
    act = f"activation: {activation}\n" if activation else ""
    cfg.write_text(f"nc: 2\n{act}anchors: 3\nbackbone: {backbone}\nhead: [[[-1], 1, Detect, [nc, anchors]]]\n")
    return cfg


def test_padding_off_the_stride_grid_is_refused(tmp_path: Path) -> None:
    bad = "[[-1, 1, Conv, [16, 3, 2]], [-1, 1, nn.ZeroPad2d, [[0, 1, 0, 1]]], [-1, 1, Conv, [16, 3, 1]]]"
    with pytest.raises(EfyoloError, match="layer 2: .*1 rows and 1 columns larger"):
        build_model(_tiny_yaml(tmp_path, bad))
    ok = "[[-1, 1, Conv, [16, 3, 1]], [-1, 1, nn.MaxPool2d, [3, 2, 1]], [-1, 1, nn.MaxPool2d, [2]]]"
    model = build_model(_tiny_yaml(tmp_path, ok))
    assert model.stride.tolist() == [4.0] and model.shapes[-1].excess == (0, 0)
    assert model(torch.zeros(1, 3, 32, 48))[0].shape == (1, 3, 8, 12, 7)


# ---- activation ---------------------------------------------------------------------------------


def test_leaky_relu_config_changes_every_conv() -> None:
    leaky = build_model(config_path("yolov5s-LeakyReLU"))
    plain = build_model(config_path("yolov5s"))  # built after: no global default leaks between models
    convs = [m for m in leaky.modules() if isinstance(m, Conv)]
    assert len(convs) == 57
    for conv in convs:
        assert type(conv.act) is nn.LeakyReLU and conv.act.negative_slope == pytest.approx(0.1)
    assert not any(isinstance(m, nn.SiLU) for m in leaky.modules())
    assert all(type(m.act) is nn.SiLU for m in plain.modules() if isinstance(m, Conv))
    assert leaky.yaml["activation"] == "nn.LeakyReLU(0.1)"  # stored as written: checkpoints rebuild it


def test_activation_survives_a_checkpoint(tmp_path: Path) -> None:
    model = build_model(small_config("yolov5s-LeakyReLU", nc=3)).eval()
    path = save_checkpoint({"model_config": model.yaml, "state_dict": model.state_dict(), "names": ["a", "b", "c"],
                            "imgsz": 64}, tmp_path / "leaky.pt")
    rebuilt = model_from_checkpoint(path).eval()
    assert all(type(m.act) is nn.LeakyReLU for m in rebuilt.modules() if isinstance(m, Conv))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_activation_reaches_ghost_and_transformer_blocks(tmp_path: Path) -> None:
    # Identity: GhostBottleneck's linear (act=False) convs, as in YOLOv5
    for name, expected in (("yolov5s-ghost", {nn.Hardswish, nn.Identity}), ("yolov5s-transformer", {nn.Hardswish})):
        cfg = small_config(name)
        cfg["activation"] = "nn.Hardswish()"
        model = build_model(cfg)
        assert {type(m.act) for m in model.modules() if isinstance(m, Conv)} == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("nn.SiLU()", nn.SiLU()),
        ("nn.SiLU", nn.SiLU()),
        ("torch.nn.ReLU6()", nn.ReLU6()),
        ("nn.LeakyReLU(negative_slope=0.2)", nn.LeakyReLU(0.2)),
        ("nn.GELU(approximate='tanh')", nn.GELU(approximate="tanh")),
        ("Mish()", nn.Mish()),
    ],
)
def test_activation_forms(text: str, expected: nn.Module) -> None:
    made = parse_activation(text)()
    assert type(made) is type(expected) and made.extra_repr() == expected.extra_repr()


@pytest.mark.parametrize(
    "value, needle",
    [
        ("nn.Swish()", "unknown activation 'Swish'"),
        ("nn.LeakyReLU(", "not an activation expression"),
        ("nn.LeakyReLU(slope)", "plain literals"),
        ("__import__('os').system('true')", "not an activation expression"),
        ("nn.LeakyReLU(0.1, bogus=1)", "bad arguments"),
        ("nn.LeakyReLU('steep')", "bad arguments"),
        ("nn.ReLU()()", "not an activation expression"),
        (0.1, "expected a string"),
    ],
)
def test_bad_activation_gives_clear_error(tmp_path: Path, value, needle: str) -> None:
    cfg = small_config("yolov5-p34")
    cfg["activation"] = value
    with pytest.raises(EfyoloError) as err:
        build_model(cfg)
    message = str(err.value)
    assert message.startswith("model config key 'activation': ") and needle in message
    assert repr(value) in message and "allowed: nn.SiLU" in message


# ---- P6/P7/P2 through the loss, AutoAnchor and training ----------------------------------------


BALANCE = {2: [4.0, 1.0], 3: [4.0, 1.0, 0.4], 4: [4.0, 1.0, 0.25, 0.06], 5: [4.0, 1.0, 0.25, 0.06, 0.02]}


def label_sizes(n: int = 400, lo: float = 4, hi: float = 250) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.exp(rng.uniform(np.log(lo), np.log(hi), (n, 2))).astype(np.float32)


@pytest.mark.parametrize("name, imgsz", [("yolov5n6", 128), ("yolov5-p7", 128), ("yolov5-p2", 64), ("yolov3-tiny", 64)])
def test_train_step_loss_backward(name: str, imgsz: int) -> None:
    """One training step on every level, with YOLOv5's per-level objectness balance."""
    from efyolo.training.autoanchor import check_anchors
    from efyolo.training.config import load_hyp
    from efyolo.training.loss import ComputeLoss, scale_loss_gains

    model = build_model(small_config(name, nc=3)).train()
    nl = model.detect.nl
    if isinstance(model.yaml["anchors"], int):  # 'anchors: 3': placeholders until AutoAnchor fits them
        check_anchors(model.detect, label_sizes(hi=imgsz), thr=4.0, imgsz=imgsz, seed=0, gen=30)
    hyp = scale_loss_gains(load_hyp(None), nc=3, nl=nl, imgsz=imgsz)
    loss_fn = ComputeLoss(model.detect, hyp)
    assert loss_fn.balance[:nl] == BALANCE[nl]
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.2, 0.3], [0, 1, 0.3, 0.6, 0.7, 0.8], [1, 2, 0.7, 0.2, 0.05, 0.06]])
    preds = model(torch.rand(2, 3, imgsz, imgsz))
    assert len(preds) == nl and preds[-1].shape[2] == imgsz // REFERENCE[name][1][-1]
    loss, items = loss_fn(preds, targets)
    loss.backward()
    assert torch.isfinite(loss) and (items > 0).all()
    assert all(m.weight.grad.abs().sum() > 0 for m in model.detect.m)  # every level learns


def test_autoanchor_fits_integer_anchors_on_p7() -> None:
    """``anchors: 3`` gives placeholder anchors; AutoAnchor replaces them with ones sorted by stride."""
    from efyolo.training.autoanchor import check_anchors

    model = build_model(small_config("yolov5-p7"))
    report = check_anchors(model.detect, label_sizes(), thr=4.0, imgsz=256, seed=0, gen=50)
    assert report.replaced and report.bpr_after > 0.98 > report.bpr_before
    px = model.detect.anchors * model.detect.stride.view(-1, 1, 1)
    area = px.prod(-1).mean(-1)
    assert (area[1:] > area[:-1]).all()


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    from efyolo.data.synth import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("synth"), n_train=8, n_val=4, imgsz=128, seed=5, workers=0)


TINY_TRAIN = {"epochs": 1, "batch": 4, "workers": 0, "patience": 0, "close_mosaic": 0, "cache": False,
              "tensorboard": False, "device": "cpu", "amp": False}


@pytest.mark.parametrize("name, imgsz", [("yolov5n6", 128), ("yolov3-tiny", 64)])
def test_train_and_validate_end_to_end(synth_data: Path, tmp_path: Path, name: str, imgsz: int) -> None:
    cfg = small_config(name)  # yolov5n6 as it is; yolov3-tiny at nano width
    model_yaml = tmp_path / f"{name}.yaml"
    model_yaml.write_text(yaml.safe_dump(cfg))
    result = efyolo.train(data=str(synth_data), model=str(model_yaml), imgsz=imgsz, project=str(tmp_path),
                          name="run", **TINY_TRAIN)
    assert result.epochs_run == 1
    assert np.isfinite(result.metrics["map50"])
    best = tmp_path / "run" / "weights" / "best.pt"
    model = model_from_checkpoint(best)
    assert model.stride.tolist() == REFERENCE[name][1]
    metrics = efyolo.val(weights=str(best), data=str(synth_data), imgsz=imgsz, batch=4, workers=0, device="cpu",
                         project=str(tmp_path), name="val", plots=False, quiet=True)
    assert np.isfinite(metrics["map50"])


# ---- ONNX ---------------------------------------------------------------------------------------

GHOST_TR = """
nc: 3
depth_multiple: 1.0
width_multiple: 1.0
activation: nn.LeakyReLU(0.1)
anchors: [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]]
backbone:
  [[-1, 1, Conv, [16, 3, 2]],
   [-1, 1, GhostConv, [32, 3, 2]],
   [-1, 2, C3Ghost, [32]],
   [-1, 1, GhostBottleneck, [64, 3, 2]],
   [-1, 1, nn.ZeroPad2d, [[0, 1, 0, 1]]],
   [-1, 1, nn.MaxPool2d, [2, 1, 0]],
   [-1, 1, GhostConv, [64, 3, 2]],
   [-1, 2, C3TR, [64]],
  ]
head:
  [[[5, 7], 1, Detect, [nc, anchors]]]
"""


@pytest.mark.filterwarnings("ignore:Constant folding - Only steps=1:UserWarning")
def test_ghost_and_transformer_export_to_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from efyolo.export.exporter import export_model

    cfg = yaml.safe_load(GHOST_TR)
    model = build_model(copy.deepcopy(cfg)).eval()
    assert isinstance(model.model[7], C3TR) and isinstance(model.model[3], GhostBottleneck)
    assert model.stride.tolist() == [8.0, 16.0]
    weights = save_checkpoint({"model_config": model.yaml, "state_dict": model.state_dict(), "names": ["a", "b", "c"],
                               "imgsz": 64}, tmp_path / "ghost_tr.pt")
    path = export_model(weights, "onnx", imgsz=64, output=tmp_path / "ghost_tr.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 64, 64)
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model_from_checkpoint(weights).eval().fuse()(x)
    err = ((torch.from_numpy(out) - expected).abs() / expected.abs().clamp(min=1.0)).max().item()
    assert err <= 1e-4, err

"""YOLOv5 model zoo from YAML: exact parameter counts, FLOPs, metadata, fuse, bad configs."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from efyolo import EfyoloError, build_model
from efyolo.engine.profiler import count_gflops
from efyolo.models.blocks import Focus
from efyolo.models.head import Detect
from efyolo.models.registry import Registry

# Reference YOLOv5 v7.0 at nc=80: parameters (unfused) and thop GFLOPs at 640x640.
REFERENCE = {
    "yolov5n": (1_872_157, 4.56),
    "yolov5s": (7_235_389, 16.63),
    "yolov5m": (21_190_557, 49.24),
    "yolov5l": (46_563_709, 109.59),
    "yolov5x": (86_749_405, 206.32),
}


def randomize_bn(model: nn.Module) -> None:
    """Give every BatchNorm non-trivial statistics so that fusing is actually exercised."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_reference_params_and_gflops(name: str) -> None:
    params, gflops_ref = REFERENCE[name]
    model = build_model(name).eval()
    assert model.num_params() == params
    # Every layer is a convolution (or parameter-free), so FLOPs scale exactly with the image
    # area: count at 256x256 and multiply by (640/256)^2 to keep the test fast.
    gflops = count_gflops(model, torch.zeros(1, 3, 256, 256)) * 6.25
    assert abs(gflops - gflops_ref) / gflops_ref < 0.03, gflops


def test_strides_and_shapes_come_from_metadata() -> None:
    model = build_model("yolov5n", nc=3)
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    assert model.nc == 3 and model.detect.no == 8
    heads_in = [model.shapes[i] for i in (17, 20, 23)]
    assert [s.channels for s in heads_in] == [64, 128, 256]
    assert [s.stride for s in heads_in] == [8, 16, 32]
    # anchors are stored in grid units: pixels / stride
    assert torch.allclose(model.detect.anchors[0, 0], torch.tensor([10 / 8, 13 / 8]))


def test_forward_train_and_eval_non_square() -> None:
    model = build_model("yolov5n", nc=3)
    x = torch.rand(2, 3, 256, 320)
    raw = model(x)
    assert [tuple(r.shape) for r in raw] == [(2, 3, 32, 40, 8), (2, 3, 16, 20, 8), (2, 3, 8, 10, 8)]
    model.eval()
    with torch.no_grad():
        pred = model(x)
    n = 3 * (32 * 40 + 16 * 20 + 8 * 10)
    assert pred.shape == (2, n, 8)
    assert (pred[..., 4:] >= 0).all() and (pred[..., 4:] <= 1).all()
    # decoded centres lie within (a cell's reach of) the image
    assert pred[..., 0].min() > -64 and pred[..., 0].max() < 320 + 64


def test_decode_matches_yolov5_formula() -> None:
    model = build_model("yolov5n", nc=2).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        decoded, raw = model.forward_train_and_eval(x)
    p = raw[1][0, 2, 1, 0]  # level 1 (stride 16), anchor 2, cell gy=1, gx=0
    s = p.sigmoid()
    anchor_px = model.detect.anchors[1, 2] * 16
    expected_xy = (s[:2] * 2 - 0.5 + torch.tensor([0.0, 1.0])) * 16
    expected_wh = (s[2:4] * 2) ** 2 * anchor_px
    offset = 3 * 8 * 8 + (2 * 4 * 4 + 1 * 4 + 0)  # level-0 cells, then anchor 2, row 1, col 0 of level 1
    assert torch.allclose(decoded[0, offset, :2], expected_xy, atol=1e-5)
    assert torch.allclose(decoded[0, offset, 2:4], expected_wh, atol=1e-4)


def test_detect_bias_prior() -> None:
    model = build_model("yolov5n", nc=80)
    obj_bias = model.detect.m[0].bias.view(3, -1)[:, 4]
    # log(8 / (640 / 8) ** 2) plus PyTorch's default init (|b| < 1/sqrt(fan_in))
    assert torch.allclose(obj_bias, torch.full((3,), -6.6846), atol=0.2)


def test_fuse_keeps_outputs() -> None:
    model = build_model("yolov5n", nc=5)
    randomize_bn(model)
    model.eval()
    x = torch.rand(1, 3, 128, 96)
    with torch.no_grad():
        before = model(x)
        model.fuse()
        after = model(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


def test_user_yaml_and_nc_override(tmp_path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        textwrap.dedent(
            """
            nc: 4
            depth_multiple: 0.33
            width_multiple: 0.25
            anchors: 3
            backbone:
              [[-1, 1, Conv, [32, 6, 2, 2]],
               [-1, 1, Conv, [64, 3, 2]],
               [-1, 1, C3, [64]],
               [-1, 1, Conv, [128, 3, 2]],
               [-1, 1, C3, [128]],
              ]
            head:
              [[[2, 4], 1, Detect, [nc, anchors]]]
            """
        )
    )
    model = build_model(str(cfg))
    assert model.nc == 4 and model.stride.tolist() == [4.0, 8.0]
    assert build_model(cfg, nc=7).nc == 7
    assert model.detect.anchors.shape == (2, 3, 2)


def test_yolov5_v5_style_config_loads(tmp_path) -> None:
    """Older YOLOv5 configs (Focus stem, SPP, BottleneckCSP) load unchanged."""
    cfg = tmp_path / "old.yaml"
    cfg.write_text(
        textwrap.dedent(
            """
            nc: 80
            depth_multiple: 0.33
            width_multiple: 0.50
            anchors:
              - [10,13, 16,30, 33,23]
              - [30,61, 62,45, 59,119]
              - [116,90, 156,198, 373,326]
            backbone:
              [[-1, 1, Focus, [64, 3]],
               [-1, 1, Conv, [128, 3, 2]],
               [-1, 3, BottleneckCSP, [128]],
               [-1, 1, Conv, [256, 3, 2]],
               [-1, 9, BottleneckCSP, [256]],
               [-1, 1, Conv, [512, 3, 2]],
               [-1, 9, BottleneckCSP, [512]],
               [-1, 1, Conv, [1024, 3, 2]],
               [-1, 1, SPP, [1024, [5, 9, 13]]],
               [-1, 3, BottleneckCSP, [1024, False]],
              ]
            head:
              [[-1, 1, Conv, [512, 1, 1]],
               [-1, 1, nn.Upsample, [None, 2, 'nearest']],
               [[-1, 6], 1, Concat, [1]],
               [-1, 3, BottleneckCSP, [512, False]],
               [-1, 1, Conv, [256, 1, 1]],
               [-1, 1, nn.Upsample, [None, 2, 'nearest']],
               [[-1, 4], 1, Concat, [1]],
               [-1, 3, BottleneckCSP, [256, False]],
               [-1, 1, Conv, [256, 3, 2]],
               [[-1, 14], 1, Concat, [1]],
               [-1, 3, BottleneckCSP, [512, False]],
               [-1, 1, Conv, [512, 3, 2]],
               [[-1, 10], 1, Concat, [1]],
               [-1, 3, BottleneckCSP, [1024, False]],
               [[17, 20, 23], 1, Detect, [nc, anchors]],
              ]
            """
        )
    )
    model = build_model(cfg)
    assert isinstance(model.model[0], Focus) and model.shapes[0].stride == 2
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3 * (64 + 16 + 4), 85)


def test_yaml_suffix_names_builtin() -> None:
    assert build_model("yolov5n.yaml").num_params() == REFERENCE["yolov5n"][0]


BAD_CONFIGS = {
    "unknown module": ("[[-1, 1, Conv, [16, 3, 2]], [-1, 1, Conv5000, [16]]]", "Conv5000"),
    "from out of range": ("[[-1, 1, Conv, [16, 3, 2]], [[-1, 7], 1, Concat, [1]]]", "layer 1"),
    "concat strides": ("[[-1, 1, Conv, [16, 3, 2]], [-1, 1, Conv, [16, 3, 2]], [[-1, 0], 1, Concat, [1]]]", "strides"),
    "row shape": ("[[-1, 1, Conv]]", "layer 0"),
    "bad args": ("[[-1, 1, Conv, [16, 3, 2, 1, 1, 1, 1, 1, 1]]]", "Conv"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_gives_clear_error(tmp_path, case: str) -> None:
    backbone, needle = BAD_CONFIGS[case]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"nc: 2\nanchors: 3\nbackbone: {backbone}\nhead: [[[-1], 1, Detect, [nc, anchors]]]\n")
    with pytest.raises(EfyoloError, match=needle):
        build_model(cfg)


def test_malformed_yaml_names_file_and_line(tmp_path) -> None:
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("nc: 2\nbackbone: [[-1, 1, Conv, [16, 3, 2]]\nhead: [\n")
    with pytest.raises(EfyoloError, match=r"broken\.yaml line \d+"):
        build_model(cfg)


def test_missing_key_and_unknown_name(tmp_path) -> None:
    cfg = tmp_path / "nohead.yaml"
    cfg.write_text("nc: 2\nbackbone: []\n")
    with pytest.raises(EfyoloError, match="missing key 'head'"):
        build_model(cfg)
    with pytest.raises(EfyoloError, match="unknown model 'yolov9q'"):
        build_model("yolov9q")
    with pytest.raises(EfyoloError, match="does not exist"):
        build_model(tmp_path / "absent.yaml")


def test_input_size_must_be_multiple_of_stride() -> None:
    model = build_model("yolov5n")
    with pytest.raises(EfyoloError, match="100x96 is not a multiple"):
        model(torch.zeros(1, 3, 100, 96))


def test_registry_refuses_duplicates_and_suggests() -> None:
    reg: Registry[int] = Registry("thing")
    reg.add("alpha", 1)
    with pytest.raises(ValueError):
        reg.add("alpha", 2)
    with pytest.raises(EfyoloError, match="did you mean alpha"):
        reg.get("alpah")


def test_detect_checks_anchor_order() -> None:
    det = Detect(2, [[116, 90, 156, 198, 373, 326], [10, 13, 16, 30, 33, 23]], [8, 8], [8, 32])
    # the large anchors were given for stride 8: the head flips them to the coarse level
    assert det.anchors[0, 0].tolist() == pytest.approx([10 / 8, 13 / 8])


def test_torch_export_traces_the_detector() -> None:
    """torch.export needs a forward free of data-dependent Python values (the stride check once read
    the stride buffer with .tolist())."""
    import torch

    from efyolo.models import build_model

    model = build_model("yolov5n").eval()
    program = torch.export.export(model, (torch.zeros(1, 3, 64, 64),))
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(program.module()(x), model(x), atol=1e-5)

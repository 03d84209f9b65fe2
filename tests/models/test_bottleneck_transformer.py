"""BoT3 / MHSA: any-size relative position bias, exactness at the reference grid, cache, export."""

from __future__ import annotations

import pytest
import torch

from efyolo.models.bottleneck_transformer import MHSA, BoT3, signed_offset_index


def test_signed_offsets_cover_every_pair() -> None:
    idx = signed_offset_index(2, 3)  # 6 tokens; table 3 x 5
    assert idx.shape == (6, 6)
    assert idx.diagonal().unique().tolist() == [1 * 5 + 2]  # (dy, dx) = (0, 0) is the centre
    assert idx[0, 5].item() == (0 - 1 + 1) * 5 + (0 - 2 + 2)  # token (0,0) vs (1,2): dy=-1, dx=-2
    assert idx[5, 0].item() == (1 + 1) * 5 + (2 + 2)


@pytest.mark.parametrize("hw", [(3, 5), (8, 8), (4, 10)])
def test_mhsa_any_grid(hw: tuple[int, int]) -> None:
    attn = MHSA(32, heads=4, resolution=4)
    x = torch.randn(2, 32, *hw)
    assert attn(x).shape == x.shape


def test_bias_is_the_table_at_the_reference_grid() -> None:
    attn = MHSA(16, heads=2, resolution=3)
    with torch.no_grad():
        attn.attention_biases.normal_()
    bias = attn.compute_bias(3, 3)  # (2, 9, 9)
    table = attn.attention_biases
    # token 0 is (0, 0), token 8 is (2, 2): offset (-2, -2) -> table corner [0, 0]
    assert torch.equal(bias[:, 0, 8], table[:, 0, 0])
    assert torch.equal(bias[:, 8, 0], table[:, 4, 4])
    assert torch.equal(bias[:, 4, 4], table[:, 2, 2])


def test_eval_cache_and_training_gradients() -> None:
    attn = MHSA(16, heads=2, resolution=3)
    x = torch.randn(1, 16, 4, 6)
    attn.train()
    attn(x).square().mean().backward()
    assert attn.attention_biases.grad is not None and attn.attention_biases.grad.abs().sum() > 0
    attn.eval()
    with torch.no_grad():
        first = attn.get_bias(4, 6, torch.float32)
        assert attn.get_bias(4, 6, torch.float32) is first
        assert attn.last_grid == (4, 6)


def test_bot3_shapes_and_heads_check() -> None:
    block = BoT3(64, 128, n=2, heads=4)
    assert block(torch.randn(1, 64, 6, 10)).shape == (1, 128, 6, 10)
    with pytest.raises(ValueError, match="heads"):
        BoT3(64, 36, heads=4)  # hidden width 18 does not split into 4 heads


# ---- as a YAML module: the built-in yolov5{n..x}-bot3 and an attention block in the backbone ----

BOT_BACKBONE_YAML = """
nc: 3
depth_multiple: 0.33
width_multiple: 0.25
activation: nn.LeakyReLU(0.1)
anchors:
  - [10,13, 16,30, 33,23]
  - [30,61, 62,45, 59,119]
backbone:
  [[-1, 1, Conv, [64, 6, 2, 2]],
   [-1, 1, Conv, [128, 3, 2]],
   [-1, 1, Conv, [256, 3, 2]],
   [-1, 1, Conv, [512, 3, 2]],
   [-1, 3, BoT3, [512]],
   [-1, 1, Conv, [1024, 3, 2]],
   [-1, 1, BoT3, [1024, True, 8]],
  ]
head:
  [[[4, 6], 1, Detect, [nc, anchors]]]
"""


def test_bot3_in_the_neck_builtin_name() -> None:
    from efyolo.models import build_model

    model = build_model("yolov5n-bot3", nc=3)
    assert isinstance(model.model[23], BoT3) and model.model[23].heads == 4
    plain = build_model("yolov5n", nc=3)
    # the only difference from yolov5n is the last PAN block
    assert model.num_params() != plain.num_params()
    model.train()
    outs = model(torch.rand(2, 3, 128, 192))
    assert [tuple(o.shape[2:4]) for o in outs] == [(16, 24), (8, 12), (4, 6)]
    sum(o.square().mean() for o in outs).backward()
    assert model.model[23].m[0].attn.attention_biases.grad is not None


def test_bot3_in_the_backbone_with_activation_and_heads() -> None:
    import yaml

    from efyolo.models import build_model

    model = build_model(yaml.safe_load(BOT_BACKBONE_YAML)).eval()
    assert model.model[6].heads == 8
    assert isinstance(model.model[4].m[0].act, torch.nn.LeakyReLU)  # the config's activation reached it
    with torch.no_grad():
        assert model(torch.rand(1, 3, 96, 160)).shape[-1] == 8


@pytest.mark.filterwarnings("ignore:Constant folding - Only steps=1:UserWarning")
def test_bot3_model_exports_to_onnx(tmp_path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from efyolo.export.exporter import export_model
    from efyolo.models import build_model
    from efyolo.models.checkpoint import model_from_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = build_model("yolov5n-bot3", nc=3)
    for m in model.modules():  # non-trivial biases, so the constant-bias fold is checked
        if isinstance(m, MHSA):
            with torch.no_grad():
                m.attention_biases.normal_()
    weights = save_checkpoint(
        {"model_config": model.yaml, "state_dict": model.state_dict(), "names": ["a", "b", "c"], "imgsz": 96},
        tmp_path / "bot.pt",
    )
    path = export_model(weights, "onnx", imgsz=(96, 160), output=tmp_path / "bot.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 96, 160)
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model_from_checkpoint(weights).eval().fuse()(x)
    err = ((torch.from_numpy(out) - expected).abs() / expected.abs().clamp(min=1.0)).max().item()
    assert err <= 1e-4, err
    import onnx

    modes = {a.s.decode() for n in onnx.load(str(path)).graph.node if n.op_type == "Resize" for a in n.attribute
             if a.name == "mode"}
    assert modes == {"nearest"}  # the neck's upsamples only: the bias is a constant, not resampled (cubic)

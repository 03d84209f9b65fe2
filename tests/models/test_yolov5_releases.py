"""Checkpoints of older YOLOv5 releases (v4.0, v5.0, v6.0, v6.1; made by each release's own code:
yolov5_checkpoints/make_old_checkpoints.py) import exactly, and a module efyolo would build
differently is named instead of being imported silently wrong."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from efyolo import EfyoloError
from efyolo.cli import main
from efyolo.models.checkpoint import load_checkpoint, model_from_checkpoint
from efyolo.models.yolov5_import import check_fits, efyolo_config, read_yolov5

FIXTURES = Path(__file__).parent / "yolov5_checkpoints"
RELEASES = json.loads((FIXTURES / "old_fixtures.json").read_text())


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "old_reference.npz") as z:
        return {k: z[k] for k in z.files}


def _input() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(1, 3, 128, 192)  # as make_old_checkpoints.py (a multiple of 64 for the P6 model)


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_old_release_outputs_equal_its_own_model(name: str, reference) -> None:
    path = FIXTURES / f"{name}.pt"
    found = read_yolov5(path)
    assert found.names == ["circle", "square", "triangle"] and found.parameters == RELEASES[name]["parameters"]
    assert all(k.startswith("models.") or not k.startswith(("yolov5.", "utils.")) for k in found.globals)
    model = model_from_checkpoint(load_checkpoint(path)).eval()
    expected = torch.from_numpy(reference[f"{name}/decoded"])
    with torch.no_grad():
        assert torch.allclose(model(_input()), expected, atol=1e-4, rtol=0)
        # fusing Conv+BN reorders float32 sums: relative error ~1e-6 on boxes of a few hundred px
        assert torch.allclose(model.fuse()(_input()), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", ["tiny_v4.0_yolov5s", "tiny_v5.0_yolov5s6"])
def test_pre_v6_anchor_grid_gives_the_decoding_anchors(name: str) -> None:
    """Before v6.0 Detect kept anchor_grid (pixels) beside anchors (grid units); the grid copy is
    what the model decoded with: it becomes efyolo's one anchors buffer and leaves the state dict."""
    found = read_yolov5(FIXTURES / f"{name}.pt")
    assert not any(k.endswith("anchor_grid") for k in found.state_dict)
    key = next(k for k in found.state_dict if k.endswith(".anchors"))
    assert torch.equal(found.state_dict[key], found.anchors)
    pixels = found.anchors * torch.tensor(found.stride).view(-1, 1, 1)
    assert torch.allclose(torch.tensor(efyolo_config(found)["anchors"]).view_as(pixels), pixels, atol=1e-3)


def test_v5_bottleneck_csp_keeps_its_leaky_relu(tmp_path: Path, capsys) -> None:
    """YOLOv5 before v6.2 put LeakyReLU(0.1) after BottleneckCSP's concat (efyolo's default is v6.2's
    SiLU): the import carries it as csp_activation, and the converted checkpoint rebuilds it."""
    path = FIXTURES / "tiny_v5.0_panet.pt"
    cfg = efyolo_config(read_yolov5(path))
    assert cfg["csp_activation"] == "nn.LeakyReLU(0.1)" and "activation" not in cfg
    out = tmp_path / "panet_efyolo.pt"
    assert main(["convert", "--from", "yolov5", "--weights", str(path), "--out", str(out)]) == 0
    model = model_from_checkpoint(load_checkpoint(out))
    assert isinstance(model.model[2].act, torch.nn.LeakyReLU) and model.model[2].act.negative_slope == 0.1
    assert "yolov5-panet" in "".join(capsys.readouterr())


def test_a_module_efyolo_builds_differently_is_named() -> None:
    found = read_yolov5(FIXTURES / "tiny_v5.0_panet.pt")
    # mixed activations after the CSP concats: no one csp_activation fits, so the first one that differs is named
    layout = dict(found.layout)
    layout["model.2.act"] = ("Hardswish", {})
    with pytest.raises(EfyoloError, match=r"module model\.2\.act is a Hardswish in the file but a SiLU in efyolo; efyolo cannot build"):
        check_fits(dataclasses.replace(found, layout=layout))
    # a setting that weights do not show (BatchNorm eps)
    layout = dict(found.layout)
    cls, settings = layout["model.1.bn"]
    layout["model.1.bn"] = (cls, {**settings, "eps": 1e-5})
    with pytest.raises(EfyoloError, match=r"tiny_v5.0_panet.pt: module model\.1\.bn \(BatchNorm2d\) has eps=1e-05"):
        check_fits(dataclasses.replace(found, layout=layout))


def test_csp_activation_key_is_checked() -> None:
    from efyolo.models import DetectionModel

    cfg = efyolo_config(read_yolov5(FIXTURES / "tiny_v5.0_panet.pt"))
    with pytest.raises(EfyoloError, match="model config key 'csp_activation': unknown activation 'Swish'"):
        DetectionModel({**cfg, "csp_activation": "nn.Swish()"})

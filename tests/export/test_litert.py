"""LiteRT (TFLite) export through litert-torch and :class:`efyolo.runtime.litert.LiteRTBackend`.

Models are built and prepared as the exporter prepares them (fused, eval, attention bias frozen at
64x64), with BatchNorm statistics taken from one batch of noise and a damped head (as
``test_export.make_weights(calibrate=True)``), so that scores depend on the input and spread over
(0, 1). Conversions take 20-60 s each on 2 cores: every converted file is shared through
module-scoped fixtures, and the float16 / INT8 tests quantize the float flatbuffer converted once
for the float test instead of converting again (quantization runs on the flatbuffer either way).
"""

from __future__ import annotations

import copy
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import efyolo
from efyolo.errors import EfyoloError
from efyolo.export.exporter import prepare_model
from efyolo.export.fold import materialize_attention_bias, rewrite_pool_mixers
from efyolo.export.metadata import build_metadata
from efyolo.ops.nms import non_max_suppression

pytest.importorskip("litert_torch", reason='LiteRT export needs the [litert] extra: pip install "efyolo[litert]"')
pytest.importorskip("ai_edge_litert", reason='running LiteRT models needs the [litert] extra: pip install "efyolo[litert]"')

from efyolo.export import litert
from efyolo.runtime.litert import LiteRTBackend

NAMES = ["a", "b", "c"]
SIZE = (64, 64)
CPU = torch.device("cpu")
# Float32: LiteRT (XNNPACK, NHWC, other summation order) vs PyTorch. Box centres are within 2e-3 px;
# widths/heights reach ~1300 px in these random models (4 x the largest anchor), where float32
# resolves ~1e-4 px and the two runtimes differ by up to 0.02 px (2e-5 relative). The bound is the
# brief's 1e-3 of the image size (0.064 px) for every box coordinate, 1e-4 for probabilities.
BOX_TOL = 1e-3 * SIZE[0]
PROB_TOL = 1e-4
CONVERSION_S: dict[str, float] = {}  # model -> seconds, printed with -s


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """A prepared export model whose outputs depend on its input (see the module docstring).
    ``<model>+pool-convs``: also with the pooling mixers as depthwise convolutions
    (:func:`efyolo.export.fold.rewrite_pool_mixers`, 20 % faster on LiteRT for n0 at 640)."""
    name, _, rewrite = name.partition("+")
    torch.manual_seed(seed)
    m = efyolo.build_model(name, nc=len(NAMES))
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # cumulative average: the statistics of this one batch
            mod.reset_running_stats()
    with torch.no_grad():
        m.train()(torch.rand(4, 3, *SIZE))
        for conv in m.detect.m:
            conv.weight.mul_(0.1)
    model = prepare_model(m, CPU)
    materialize_attention_bias(model, SIZE)
    if rewrite:
        assert rewrite_pool_mixers(model) > 0
    return model


def meta_for(name: str, half: bool = False) -> dict:
    return build_metadata("litert", NAMES, 32, SIZE, 1, False, half, None, name)


def example() -> torch.Tensor:
    return torch.zeros(1, 3, *SIZE)


def inputs(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def calibration_images(n: int = 8) -> list[np.ndarray]:
    """Synthetic "letterboxed" images: grey borders around noise, float32 [1, 3, H, W] in [0, 1]."""
    rng = np.random.default_rng(7)
    images = []
    for _ in range(n):
        img = np.full((1, 3, *SIZE), 114 / 255, dtype=np.float32)
        img[:, :, 8:56] = rng.random((1, 3, 48, SIZE[1]), dtype=np.float32)
        images.append(img)
    return images


def max_errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(largest box coordinate difference in px, largest objectness/probability difference)."""
    diff = (actual - expected).abs()
    return diff[..., :4].max().item(), diff[..., 4:].max().item()


def same_classes_after_nms(actual: torch.Tensor, expected: torch.Tensor, box_tol: float) -> None:
    """Same detections (classes, boxes) at a score threshold in the widest gap between the
    reference's 30 best scores (their scale differs per architecture), so that no score within
    the tolerance of the threshold can flip the comparison."""
    top = (expected[..., 4:5] * expected[..., 5:]).amax(-1).flatten().sort(descending=True).values[:30]
    gaps = top[:-1] - top[1:]
    i = int(gaps.argmax())
    conf = float(top[i + 1] + gaps[i] / 2)
    assert gaps[i] / 2 > 2 * PROB_TOL, "reference scores too dense for a stable threshold"
    a = non_max_suppression(actual, conf_thres=conf)
    b = non_max_suppression(expected, conf_thres=conf)
    assert sum(len(d) for d in b) > 0, "the reference detects nothing: the comparison would be empty"
    for da, db in zip(a, b):
        assert sorted(da[:, 5].tolist()) == sorted(db[:, 5].tolist())
        if len(db):
            order_a, order_b = da[:, 4].argsort(), db[:, 4].argsort()
            assert (da[order_a, :4] - db[order_b, :4]).abs().max().item() <= box_tol


class Conversions:
    """``export_litert`` with the float flatbuffers it converted remembered per model name."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.flatbuffers: dict[str, bytes] = {}
        self.models: dict[str, torch.nn.Module] = {}

    def model(self, name: str) -> torch.nn.Module:
        if name not in self.models:
            self.models[name] = build(name)
        return self.models[name]

    def export(self, name: str, tag: str = "fp32", **kwargs) -> Path:
        """Convert (or reuse this model's float flatbuffer) and write ``<name>_<tag>.tflite``."""
        path = self.folder / f"{name}_{tag}.tflite"
        if path.exists():
            return path
        model = self.model(name)
        convert = litert.convert_flatbuffer
        with pytest.MonkeyPatch.context() as mp:
            if name in self.flatbuffers:
                mp.setattr(litert, "convert_flatbuffer", lambda *a: self.flatbuffers[name])
            else:
                def remember(*args):
                    start = time.perf_counter()
                    self.flatbuffers[name] = convert(*args)
                    CONVERSION_S[name] = time.perf_counter() - start
                    return self.flatbuffers[name]

                mp.setattr(litert, "convert_flatbuffer", remember)
            return litert.export_litert(model, example(), path, meta_for(name, kwargs.get("half", False)), **kwargs)


@pytest.fixture(scope="module")
def conversions(tmp_path_factory) -> Conversions:
    found = Conversions(tmp_path_factory.mktemp("litert"))
    yield found
    print("\nLiteRT conversion seconds:", {k: round(v, 1) for k, v in CONVERSION_S.items()})


@pytest.fixture(scope="module")
def yolov5n_file(conversions) -> Path:
    return conversions.export("yolov5n")


# --------------------------------------------------------------------------------------------
# (a) float32 round trip
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "yolov5n",
        "yolov5n-efficientformer-n0",  # V1: pooling mixers (lerp), one attention stage
        pytest.param("yolov5n-efficientformer-n0+pool-convs", marks=pytest.mark.slow),
        pytest.param("yolov5n-efficientformerv2-s0", marks=pytest.mark.slow),  # V2: ~60 s to convert
    ],
)
def test_float32_round_trip(conversions, name) -> None:
    path = conversions.export(name)
    backend = LiteRTBackend(path, CPU, threads=2)
    assert backend.fixed_shape == (1, 3, *SIZE)
    x = inputs()  # batch 3 on a batch-1 file: run image by image by the base class
    out, ref = backend(x), conversions.model(name)(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape  # [3, N, 5 + nc], no layout change
    box, prob = max_errors(out, ref)
    assert box <= BOX_TOL and prob <= PROB_TOL, f"{name}: box {box:.2e} px, probability {prob:.2e}"
    same_classes_after_nms(out, ref, BOX_TOL)
    # a smaller image is padded to the fixed shape; a larger one is refused
    small = backend(x[:1, :, :32, :32])
    assert small.shape == ref[:1].shape and torch.isfinite(small).all()
    with pytest.raises(EfyoloError, match="fixed input of 64x64"):
        backend(torch.rand(1, 3, 96, 96))


def test_float32_graph_keeps_nchw_float_interface(yolov5n_file) -> None:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(yolov5n_file))
    (inp,), (out,) = runner.get_input_details(), runner.get_output_details()
    assert list(inp["shape"]) == [1, 3, *SIZE] and inp["dtype"] == np.float32
    assert list(out["shape"]) == [1, 252, 5 + len(NAMES)] and out["dtype"] == np.float32  # 3 x (8² + 4² + 2²)


# --------------------------------------------------------------------------------------------
# (b) float16 weights
# --------------------------------------------------------------------------------------------


def test_half_stores_float16_weights_and_computes_float32(conversions, yolov5n_file) -> None:
    """``half``: conv weights in float16, compute in float32. So the file equals, to the float32
    tolerance, PyTorch with its conv weights rounded to float16; against the float32 model it
    differs by what that rounding does to a random network (measured: centres 0.9 px, sizes up to
    6 % (8 px of ~1300), probabilities 0.013): checked loosely, 2 px / 10 % of the size / 0.05."""
    path = conversions.export("yolov5n", "half", half=True)
    assert path.stat().st_size < 0.6 * yolov5n_file.stat().st_size  # 7.2 MB -> 3.7 MB
    backend = LiteRTBackend(path, CPU, half=True, threads=2)  # --half accepted: the file is a half export
    assert backend.metadata["half"] is True
    model = conversions.model("yolov5n")
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for mod in rounded.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                mod.weight.copy_(mod.weight.half().float())
    x = inputs()
    out = backend(x)
    box, prob = max_errors(out, rounded(x))
    assert box <= BOX_TOL and prob <= PROB_TOL, f"vs fp16-rounded PyTorch: box {box:.2e}, probability {prob:.2e}"
    ref = model(x)
    diff = (out - ref).abs()
    assert diff[..., :2].max() <= 2.0 and (diff[..., 2:4] / ref[..., 2:4].clamp(min=1)).max() <= 0.1
    assert diff[..., 4:].max() <= 0.05
    # a float32 file refuses --half
    with pytest.raises(EfyoloError, match="float32 model"):
        LiteRTBackend(yolov5n_file, CPU, half=True)


# --------------------------------------------------------------------------------------------
# (c) full-integer INT8
# --------------------------------------------------------------------------------------------


def test_int8_full_integer_with_float_interface(conversions) -> None:
    """Static INT8 (weights and activations) calibrated on 8 synthetic images; float32 in and out.

    Random networks quantize badly (no trained, bounded features), so the check is loose: finite,
    same shape, and every output channel correlated with float32 (measured 0.80-0.99; required
    0.5). The box decoding after the last convolutions must be float32 (see
    :func:`efyolo.export.litert.float_tail_regex`)."""
    from ai_edge_litert.interpreter import Interpreter

    path = conversions.export("yolov5n", "int8", calibration=calibration_images())
    runner = Interpreter(model_path=str(path))
    (inp,), (out,) = runner.get_input_details(), runner.get_output_details()
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32
    kinds = {d["dtype"] for d in runner.get_tensor_details()}
    assert np.int8 in kinds  # activations really are int8 inside
    backend = LiteRTBackend(path, CPU, threads=2)
    x = inputs()
    y, ref = backend(x), conversions.model("yolov5n")(x)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    for c in range(y.shape[-1]):
        corr = np.corrcoef(y[..., c].numpy().ravel(), ref[..., c].numpy().ravel())[0, 1]
        assert corr > 0.5, f"channel {c}: correlation {corr:.3f}"
    assert (y[..., 5:] >= 0).all() and (y[..., 5:] <= 1).all()  # probabilities, not quantization debris


def test_int8_calibration_images_are_checked(conversions) -> None:
    model = conversions.model("yolov5n")
    with pytest.raises(EfyoloError, match=r"float32 \[B, 3, 64, 64\]"):
        litert.export_litert(model, example(), conversions.folder / "x.tflite", meta_for("yolov5n"),
                             calibration=[np.zeros((1, 3, 32, 32), np.float32)])
    with pytest.raises(EfyoloError, match="at least 1 calibration image"):
        litert.export_litert(model, example(), conversions.folder / "x.tflite", meta_for("yolov5n"), calibration=[])
    with pytest.raises(EfyoloError, match="not both"):
        litert.export_litert(model, example(), conversions.folder / "x.tflite", meta_for("yolov5n"),
                             half=True, calibration=calibration_images(1))
    # batches are split into the export batch
    assert len(litert.calibration_inputs([np.zeros((4, 3, *SIZE), np.float32)], (1, 3, *SIZE))) == 4
    assert not list(conversions.folder.glob("x.tflite*")) and not list(conversions.folder.glob(".x.tflite.*"))


# --------------------------------------------------------------------------------------------
# (d) metadata
# --------------------------------------------------------------------------------------------


def test_metadata_round_trip(conversions, yolov5n_file, tmp_path) -> None:
    from ai_edge_litert import schema_py_generated as schema

    meta = litert.read_metadata(yolov5n_file)
    assert meta == meta_for("yolov5n")
    backend = LiteRTBackend(yolov5n_file, CPU)
    assert backend.names == NAMES and backend.stride == 32 and backend.imgsz == SIZE
    assert backend.metadata["export_format"] == "litert" and backend.end2end is False
    # the standard-library reader agrees with the TFLite schema, also on the converter's own entries
    content = yolov5n_file.read_bytes()
    model = schema.Model.GetRootAs(content, 0)
    by_schema = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        by_schema[entry.Name().decode()] = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    entries = litert.metadata_entries(content)
    assert entries == by_schema and "min_runtime_version" in entries
    assert json.loads(entries[litert.METADATA_NAME]) == meta  # plain JSON, readable by any tool
    # embedding again replaces the entry instead of adding a second one
    again = litert.embed_metadata(content, {**meta, "model": "other"})
    assert list(litert.metadata_entries(again)).count(litert.METADATA_NAME) == 1
    assert litert.metadata_entries(again)[litert.METADATA_NAME] != entries[litert.METADATA_NAME]
    # a TFLite file without efyolo metadata: the interpreter runs it, efyolo refuses it clearly
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(conversions.flatbuffers["yolov5n"])
    with pytest.raises(EfyoloError, match="bare.tflite carries no efyolo metadata"):
        litert.read_metadata(bare)
    with pytest.raises(EfyoloError, match="no efyolo metadata"):
        LiteRTBackend(bare, CPU)


# --------------------------------------------------------------------------------------------
# (e) bad input
# --------------------------------------------------------------------------------------------


def test_corrupt_files_name_the_file(yolov5n_file, tmp_path) -> None:
    content = yolov5n_file.read_bytes()
    bad = {
        "noise.tflite": np.random.default_rng(0).bytes(4096),
        "truncated.tflite": content[: len(content) // 2],
        "header.tflite": content[:8],
        "empty.tflite": b"",
    }
    for name, data in bad.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(EfyoloError, match=rf"{name} is not a readable LiteRT \(TFLite\) model"):
            LiteRTBackend(path, CPU)
        with pytest.raises(EfyoloError, match=name):
            litert.read_metadata(path)
    with pytest.raises(EfyoloError, match="missing.tflite"):
        LiteRTBackend(tmp_path / "missing.tflite", CPU)
    with pytest.raises(struct.error):  # the reader's own bounds checks (read_metadata wraps them)
        litert.metadata_entries(content[:4096])


def test_real_conversion_failure_is_one_quiet_error(tmp_path, capfd) -> None:
    """TFLite's POW broadcasts up to 4-D: a 5-D cube fails in the converter's legalization."""

    class Cube(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(1, 1, 3, 8, 8) ** 3

    path = tmp_path / "cube.tflite"
    capfd.readouterr()
    with pytest.raises(EfyoloError, match=r"^litert conversion failed for tfl\.pow: failed to legalize") as err:
        litert.export_litert(Cube().eval(), torch.rand(1, 3, 8, 8), path, meta_for("cube"))
    assert "\n" not in str(err.value)
    out, errs = capfd.readouterr()
    assert out == "" and errs == "", "converter output leaked to the console"
    assert list(tmp_path.iterdir()) == []


def test_failure_leaves_no_file_or_temp(conversions, yolov5n_file, tmp_path, monkeypatch) -> None:
    import litert_torch

    def broken(*args, **kwargs):
        raise ValueError("Failed to run converter passes: model.py:1:0: error: aten.xyz is not lowered\nmore\nnoise")

    monkeypatch.setattr(litert_torch, "convert", broken)
    path = tmp_path / "best.tflite"
    with pytest.raises(EfyoloError, match=r"^litert conversion failed for aten\.xyz: aten\.xyz is not lowered$"):
        litert.export_litert(conversions.model("yolov5n"), example(), path, meta_for("yolov5n"))
    assert list(tmp_path.iterdir()) == []
    # a failure while writing (after conversion) removes the temporary file too
    monkeypatch.setattr(litert, "convert_flatbuffer", lambda *a: conversions.flatbuffers["yolov5n"])

    def no_rename(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(litert.os, "replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        litert.export_litert(conversions.model("yolov5n"), example(), path, meta_for("yolov5n"))
    assert list(tmp_path.iterdir()) == []


def test_missing_package_message(monkeypatch, tmp_path) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "litert_torch", None)  # import raises ImportError
    with pytest.raises(EfyoloError, match="LiteRT export needs the package 'litert_torch'"):
        litert.export_litert(torch.nn.Identity(), example(), tmp_path / "m.tflite", meta_for("m"))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# heavier: every variant of the attention models (pytest -m slow)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolov5n-efficientformer-n0", "yolov5n-efficientformerv2-s0"])
def test_attention_models_half_and_int8(conversions, name) -> None:
    x = inputs()
    ref = conversions.model(name)(x)
    half = LiteRTBackend(conversions.export(name, "half", half=True), CPU, threads=2)(x)
    assert torch.isfinite(half).all() and (half[..., 4:] - ref[..., 4:]).abs().max() <= 0.05
    int8 = LiteRTBackend(conversions.export(name, "int8", calibration=calibration_images()), CPU, threads=2)(x)
    assert torch.isfinite(int8).all()
    for c in range(4):  # boxes: correlated with float32 (probabilities of random models can be flat)
        assert np.corrcoef(int8[..., c].numpy().ravel(), ref[..., c].numpy().ravel())[0, 1] > 0.5

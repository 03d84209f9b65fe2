"""INT8 (ONNX Runtime QDQ, NNCF), ncnn and LiteRT exports: registry, round trips, calibration and bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from efyolo.cli import main
from efyolo.errors import EfyoloError
from efyolo.export.exporter import export_model, export_path
from efyolo.export.formats import all_formats, get_format
from efyolo.runtime.autobackend import load_backend

sys.path.insert(0, str(Path(__file__).parent))
from test_export import make_weights  # noqa: E402

onnx = pytest.importorskip("onnx", reason='ONNX export needs the [export] extra: pip install "efyolo[export]"')
pytest.importorskip("onnxruntime", reason="ONNX Runtime is in the [export] extra")

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from efyolo.data.synth import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("calib") / "data", n_train=6, n_val=2, imgsz=64, seed=4)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_weights(tmp_path_factory.mktemp("w") / "best.pt", calibrate=True)


def close_to_reference(path: Path, weights: Path, box_tol: float) -> None:
    """Raw predictions of the export equal the checkpoint's: boxes within ``box_tol`` pixels at 64 px
    for boxes inside the image, scores within 1e-3."""
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ref, out = load_backend(weights, CPU)(x), load_backend(path, CPU)(x)
    assert out.shape == ref.shape
    inside = (ref[..., 2:4] < 64).all(-1)  # untrained models also predict boxes many times the image
    assert (out[..., :4] - ref[..., :4])[inside].abs().max() <= box_tol
    assert (out[..., 4:] - ref[..., 4:]).abs().max() <= 1e-3


def test_registry_lists_every_format_with_aliases() -> None:
    names = set(all_formats())
    assert {"onnx", "torchscript", "openvino", "coreml", "litert", "ncnn"} <= names
    assert get_format("TFLite").name == "litert"
    assert export_path("r/best.pt", "onnx", int8=True) == Path("r/best_int8.onnx")
    assert export_path("r/best.pt", "openvino", int8=True) == Path("r/best_int8_openvino_model")
    assert export_path("r/best.pt", "tflite", half=True) == Path("r/best_fp16.tflite")
    assert export_path("r/best.pt", "ncnn") == Path("r/best_ncnn_model")


def test_int8_onnx_round_trip(weights, data) -> None:
    path = export_model(weights, "onnx", imgsz=64, int8=True, data=data, calib=4)
    assert path == weights.with_name("best_int8.onnx")
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    backend = load_backend(path, CPU)
    assert backend.precision == "int8"
    quant = backend.metadata["quantization"]
    assert quant["calibration"]["images"] == 4 and quant["quantized_ops"]["Conv"] > 10
    # the head's decoding stays float: no arithmetic of the Detect scope reads a DequantizeLinear output
    # (its convolutions are quantized, so their logits are dequantized once before the decoding)
    dq = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    decode_ops = ("Sigmoid", "Mul", "Add", "Pow", "Concat", "Split")
    head = [n for n in proto.graph.node if n.name.startswith("/model.24/") and n.op_type in decode_ops]
    assert head and not any(i in dq for n in head for i in n.input)
    x = torch.rand(2, 3, 64, 64)
    y, ref = backend(x), load_backend(weights, CPU)(x)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    # 8-bit activations: scores stay close to the float model's (loose; mAP is the benchmark's target)
    assert (y[..., 4] - ref[..., 4]).abs().mean() < 0.05


def test_int8_calibration_errors(weights, data, tmp_path) -> None:
    with pytest.raises(EfyoloError, match="--int8 needs --data"):
        export_model(weights, "onnx", imgsz=64, int8=True)
    with pytest.raises(EfyoloError, match="fewer than the export batch 8"):
        export_model(weights, "onnx", imgsz=64, int8=True, data=data, batch=8)
    with pytest.raises(EfyoloError, match="no 'test' split"):
        export_model(weights, "onnx", imgsz=64, int8=True, data=data, calib_split="test")
    with pytest.raises(EfyoloError, match="calibration method 'kl'"):
        export_model(weights, "onnx", imgsz=64, int8=True, data=data, int8_options={"method": "kl"})
    assert not list(weights.parent.glob("*int8*")) or weights.with_name("best_int8.onnx").exists()
    assert not [p for p in weights.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_int8_claim_on_a_float_graph_is_refused(weights, tmp_path) -> None:
    from efyolo.export.onnx import set_metadata

    path = export_model(weights, "onnx", imgsz=64, output=tmp_path / "fake_int8.onnx")
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    import json

    decoded = {k: json.loads(v) for k, v in meta.items()}
    decoded["precision"] = "int8"
    set_metadata(proto, decoded)
    onnx.save(proto, str(path))
    with pytest.raises(EfyoloError, match="says INT8 but the graph holds no quantized ops"):
        load_backend(path, CPU)


def test_cli_int8_errors_exit_2(weights, capsys) -> None:
    assert main(["export", "--weights", str(weights), "--format", "ncnn", "--int8", "--data", "x.yaml"]) == 2
    assert "ncnn export does not support --int8" in capsys.readouterr().err
    assert main(["export", "--weights", str(weights), "--format", "onnx", "--int8", "--data", "missing.yaml"]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_openvino_int8(weights, data) -> None:
    pytest.importorskip("openvino", reason='OpenVINO is in the [export] extra')
    pytest.importorskip("nncf", reason='NNCF (OpenVINO INT8) is in the [export] extra')
    path = export_model(weights, "openvino", imgsz=64, int8=True, data=data, calib=4)
    assert path.name == "best_int8_openvino_model"
    backend = load_backend(path, CPU)
    assert backend.precision == "int8" and backend.metadata["quantization"]["fake_quantize_nodes"] > 10
    assert torch.isfinite(backend(torch.rand(1, 3, 64, 64))).all()


@pytest.mark.parametrize("name", ["yolov5n", "yolov5n-efficientformer-n0", "yolov5n-efficientformerv2-s0"])
def test_ncnn_round_trip(name, tmp_path) -> None:
    pytest.importorskip("pnnx", reason='ncnn export needs pnnx (the [export] extra)')
    pytest.importorskip("ncnn", reason='the ncnn runtime is in the [export] extra')
    w = make_weights(tmp_path / "best.pt", name, calibrate=True)
    path = export_model(w, "ncnn", imgsz=64)
    assert path == tmp_path / "best_ncnn_model" and (path / "metadata.yaml").is_file()
    close_to_reference(path, w, box_tol=0.064)  # 1e-3 of the image size
    backend = load_backend(path, CPU)
    assert backend.names == ["a", "b", "c"] and backend.fixed_shape == (1, 3, 64, 64)
    half = export_model(w, "ncnn", imgsz=64, half=True, output=tmp_path / "half_ncnn_model")
    assert load_backend(half, CPU).metadata["precision"] == "fp16"


def test_ncnn_bad_folders(tmp_path) -> None:
    pytest.importorskip("ncnn", reason='the ncnn runtime is in the [export] extra')
    folder = tmp_path / "broken_ncnn_model"
    folder.mkdir()
    (folder / "model.ncnn.param").write_text("garbage\n")
    with pytest.raises(EfyoloError, match="broken_ncnn_model"):
        load_backend(folder, CPU)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolov5n", "yolov5n-efficientformer-n0", "yolov5n-efficientformerv2-s0"])
def test_litert_round_trip(name, tmp_path, data) -> None:
    pytest.importorskip("litert_torch", reason='LiteRT export needs the [litert] extra: pip install "efyolo[litert]"')
    w = make_weights(tmp_path / "best.pt", name, calibrate=True)
    path = export_model(w, "tflite", imgsz=64)
    assert path == tmp_path / "best.tflite"
    close_to_reference(path, w, box_tol=0.064)
    q = export_model(w, "litert", imgsz=64, int8=True, data=data, calib=4)
    assert load_backend(q, CPU).precision == "int8"


def test_litert_corrupt_file(tmp_path) -> None:
    pytest.importorskip("ai_edge_litert", reason='the LiteRT interpreter is in the [litert] extra')
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(EfyoloError, match="bad.tflite"):
        load_backend(bad, CPU)


def test_int8_split_without_images_is_refused(weights, data, tmp_path) -> None:
    import yaml

    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    cfg = yaml.safe_load(Path(data).read_text())
    cfg.update(path=str(Path(data).parent), train=str(empty / "images"))
    bad = tmp_path / "data.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(EfyoloError, match="train"):
        export_model(weights, "onnx", imgsz=64, int8=True, data=bad, output=tmp_path / "x_int8.onnx")
    assert not (tmp_path / "x_int8.onnx").exists()


def test_cli_bad_formats_and_files_exit_2(weights, tmp_path, capsys) -> None:
    assert main(["export", "--weights", str(weights), "--format", "tensorrt"]) == 2
    assert "tensorrt" in capsys.readouterr().err
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    folder = tmp_path / "half_ncnn_model"
    folder.mkdir()
    (folder / "model.ncnn.param").write_text("7767517\n1 1\nInput in0 0 1 in0\n")  # no .bin beside it
    import cv2
    import numpy as np

    image = tmp_path / "images" / "a.jpg"
    image.parent.mkdir()
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    import importlib.util

    checks = [folder] + ([bad] if importlib.util.find_spec("ai_edge_litert") else [])  # else: "needs the package"
    for path in checks:
        code = main(["detect", "--weights", str(path), "--source", str(image), "--imgsz", "64",
                     "--project", str(tmp_path / "runs")])
        err = capsys.readouterr().err
        assert code == 2 and path.name in err and "Traceback" not in err


def test_benchmark_rows_carry_the_precision(data, tmp_path) -> None:
    from efyolo.engine.benchmark import benchmark_formats, parse_format

    weights = make_weights(tmp_path / "best.pt", nc=6, calibrate=True)  # the synthetic set's 6 classes
    assert parse_format("onnx:int8") == ("onnx", "int8") and parse_format("TFLite") == ("litert", "fp32")
    with pytest.raises(EfyoloError, match="precision must be one of"):
        parse_format("onnx:int4")
    rows = benchmark_formats(weights, data=data, formats=["onnx", "onnx:int8"], imgsz=64, runs=2, warmup=1)
    rows = rows.rows
    by = {(r.format, r.precision): r for r in rows}
    assert by[("onnx", "int8")].file.endswith("best_int8.onnx") and by[("onnx", "fp32")].file.endswith("best.onnx")
    assert all(r.status == "ok" and r.map is not None and r.latency_ms > 0 for r in rows), [vars(r) for r in rows]


def test_conversion_failures_name_the_op(tmp_path) -> None:
    """What the ncnn and LiteRT writers raise when a converter leaves an op unconverted: the op, in one line."""
    from efyolo.export.litert import failure_message
    from efyolo.export.ncnn import unsupported_layers

    param = tmp_path / "model.ncnn.param"
    param.write_text("7767517\n3 3\nInput in0 0 1 in0\npnnx.Expression pnnx_expr_0 1 1 in0 1\n"
                     "Convolution conv_0 1 1 1 out0 0=8 1=1 6=24\n")
    assert list(unsupported_layers(param)) == ["pnnx.Expression"]
    err = RuntimeError("loc(fused[...]): error: failed to legalize operation 'tfl.pow' that was explicitly "
                       "marked illegal\nlong traceback line\n")
    message = failure_message("litert conversion", err, "")
    assert message.startswith("litert conversion failed for tfl.pow:") and "\n" not in message


def test_histogram_calibration_is_capped_to_what_memory_holds() -> None:
    import numpy as np

    from efyolo.export.onnx_int8 import HISTOGRAM_PIXEL_BUDGET, histogram_budget

    batches = [np.zeros((1, 3, 640, 640), np.float32) for _ in range(40)]
    assert histogram_budget(batches, "minmax") is batches
    kept = histogram_budget(batches, "entropy")
    assert len(kept) == HISTOGRAM_PIXEL_BUDGET // (640 * 640) == 16 and kept[0] is batches[0]
    assert len(histogram_budget(batches[:4], "percentile")) == 4

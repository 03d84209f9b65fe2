"""``efyolo benchmark``: the per-format table (size, mAP, latency) and the model-zoo comparison."""

from __future__ import annotations

import json

import pytest
import torch

import efyolo
from efyolo.cli import main
from efyolo.engine.benchmark import FormatRow, Report, ZooRow, benchmark_formats, format_report
from efyolo.models.checkpoint import save_checkpoint

pytest.importorskip("onnxruntime", reason='ONNX Runtime is in the [export] extra: pip install "efyolo[export]"')


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    m = efyolo.build_model("yolov5n", nc=6)
    with torch.no_grad():  # fire often enough to give predictions, hence a real mAP column
        for conv in m.detect.m:
            conv.bias.view(3, -1)[:, 4] += 6.0
    names = [str(i) for i in range(6)]
    return save_checkpoint({"model_config": m.yaml, "state_dict": m.state_dict(), "names": names, "imgsz": 64},
                           tmp_path_factory.mktemp("bench") / "best.pt")


def test_benchmark_formats_json(weights, tmp_path, capsys) -> None:
    from efyolo.data.synth import generate_dataset

    data = generate_dataset(tmp_path / "data", n_train=1, n_val=3, imgsz=64, seed=2)
    threads_before = torch.get_num_threads()
    code = main(["benchmark", "--weights", str(weights), "--data", str(data), "--formats", "pytorch,onnx",
                 "--runs", "20", "--warmup", "2", "--threads", "1", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    report = json.loads(captured.out)
    assert [r["format"] for r in report["rows"]] == ["pytorch", "onnx"]
    assert report["threads"] == 1 and report["runs"] == 20 and report["batch"] == 1 and report["imgsz"] == [64, 64]
    for row in report["rows"]:
        assert row["status"] == "ok" and row["latency_ms"] > 0 and row["size_mb"] > 0
        assert 0 <= row["map"] <= row["map50"] <= 1
    assert report["rows"][1]["file"] == str(weights.with_name("best.onnx"))
    assert "1 threads" in captured.err and "median of 20 runs" in captured.err  # the table went to stderr
    assert torch.get_num_threads() == threads_before  # the thread count is restored


def test_benchmark_skips_missing_runtime(weights, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the package were not installed
    report = benchmark_formats(weights, formats=["openvino"], runs=2, warmup=0)
    (row,) = report.rows
    assert row.latency_ms is None and row.status.startswith("skipped:") and "efyolo[export]" in row.status


def test_benchmark_models_zoo(capsys) -> None:
    assert main(["benchmark", "--models", "yolov5n", "--imgsz", "64", "--runs", "20", "--warmup", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["rows"]
    assert row["model"] == "yolov5n" and row["params"] == 1_872_157  # YOLOv5n at 80 classes (the reference v7.0 count)
    assert row["gflops"] == pytest.approx(4.47 / 100, rel=0.05)  # 640 -> 64: 1/100 of the FLOPs
    assert row["pytorch_ms"] > 0 and row["onnx_ms"] > 0
    assert row["onnx_gflops_per_s"] == pytest.approx(row["gflops"] / row["onnx_ms"] * 1e3, rel=0.01)


def test_format_report_table() -> None:
    rows = [FormatRow("onnx", "m.onnx", 7.1, 0.5, 0.7, 12.3), FormatRow("coreml", status="exported; CoreML ...")]
    text = format_report(Report(rows, [640, 640], 1, 20, 5, 2, "cpu", {"cpu": "X", "cores": 2}))
    assert "onnx" in text and "12.3" in text and "-" in text.splitlines()[3] and "2 threads" in text
    zoo = format_report(Report([ZooRow("yolov5n", 1_872_157, 4.47, 120.0, 27.0, 165.6)], [640, 640], 1, 20, 5, 2, "cpu"))
    assert "1.872" in zoo and "165.6" in zoo


@pytest.mark.parametrize(
    "args, message",
    [
        (["--formats", "tensorrt"], "unknown export format 'tensorrt'"),
        (["--imgsz", "70"], "70 is not a positive multiple"),
    ],
)
def test_benchmark_bad_arguments(weights, args, message, capsys) -> None:
    assert main(["benchmark", "--weights", str(weights), "--runs", "1", *args]) == 2
    assert message in capsys.readouterr().err


def test_benchmark_models_rejects_weights_options(capsys) -> None:
    assert main(["benchmark", "--models", "yolov5n", "--formats", "onnx"]) == 2
    assert "--formats go with --weights" in capsys.readouterr().err


def test_matmul_gflops_is_a_positive_speed() -> None:
    from efyolo.engine.benchmark import matmul_gflops

    assert 0.01 < matmul_gflops(size=64, runs=2) < 1e6

"""``efyolo profile`` end to end, in-process."""

from __future__ import annotations

import json

from efyolo.cli import main


def test_profile_json_single_model(capsys) -> None:
    code = main(["profile", "--model", "yolov5n", "--imgsz", "64", "--runs", "2", "--warmup", "1", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    record = json.loads(out)  # exactly one JSON object on stdout
    assert record["model"] == "yolov5n"
    assert record["params"] == 1_872_157
    assert record["imgsz"] == [64, 64]
    # 4.47 GFLOPs at 640 (flop_counter) scale with area: /100 at 64
    assert abs(record["gflops"] - 0.0447) < 0.002
    assert record["latency_ms"] > 0 and record["threads"] >= 1


def test_profile_table_for_several_models(capsys) -> None:
    code = main(["profile", "--model", "yolov5n,yolov5s", "--imgsz", "64", "96", "--runs", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "yolov5n" in out and "yolov5s" in out and "64x96" in out and "threads" in out


def test_profile_bad_input_exits_2_with_one_line(capsys) -> None:
    assert main(["profile", "--model", "yolov5q", "--imgsz", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'yolov5q'" in err[0]
    assert main(["profile", "--model", "yolov5n", "--imgsz", "100"]) == 2
    assert "not a positive multiple of the model stride 32" in capsys.readouterr().err
    assert main(["profile", "--model", "yolov5n", "--imgsz", "64", "--device", "cpu", "--half"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_profile_half_on_cuda(capsys) -> None:
    import pytest
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    assert main(["profile", "--model", "yolov5n", "--imgsz", "64", "--device", "0", "--half", "--runs", "2",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["device"].endswith("fp16")

"""``efyolo val --weights``: the model path of the evaluator, consistent with ``--pred``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import efyolo
from efyolo.cli import main
from efyolo.data.synth import generate_dataset
from efyolo.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def data_and_weights(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("valw")
    data = generate_dataset(root / "data", n_train=2, n_val=6, imgsz=96, seed=5)
    model = efyolo.build_model("yolov5n", nc=6)
    with torch.no_grad():  # make the untrained head fire often enough to give real predictions
        for conv in model.detect.m:
            conv.bias.view(3, -1)[:, 4] += 6.0
    weights = save_checkpoint(
        {"model_config": model.yaml, "state_dict": model.state_dict(), "names": [str(i) for i in range(6)],
         "imgsz": 96},
        root / "w.pt",
    )
    return data, weights


def test_val_weights_json_and_pred_round_trip(data_and_weights, tmp_path, capsys) -> None:
    data, weights = data_and_weights
    code = main(["val", "--data", str(data), "--weights", str(weights), "--imgsz", "96", "--batch", "4",
                 "--device", "cpu", "--json", "--save-json", "--project", str(tmp_path), "--name", "w"])
    captured = capsys.readouterr()
    assert code == 0
    metrics = json.loads(captured.out)
    for key in ("map50", "map", "map75", "precision", "recall", "per_class", "speed"):
        assert key in metrics
    assert metrics["n_images"] == 6 and metrics["n_predictions"] > 0
    assert {"class", "name", "ap50", "ap", "instances"} <= set(metrics["per_class"][0])
    assert "Speed:" in captured.err and "pre-process" in captured.err
    preds = tmp_path / "w" / "predictions.json"
    assert preds.exists() and (tmp_path / "w" / "confusion_matrix.png").exists()
    # Scoring the saved predictions file gives the same numbers as the model run.
    assert main(["val", "--data", str(data), "--pred", str(preds), "--json", "--project", str(tmp_path)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["map50"] == pytest.approx(metrics["map50"], abs=1e-6)
    assert again["map"] == pytest.approx(metrics["map"], abs=1e-6)


def test_detector_val_delegates(data_and_weights, tmp_path) -> None:
    data, weights = data_and_weights
    det = efyolo.Detector(weights, device="cpu")
    metrics = det.val(data=str(data), imgsz=96, batch=2, project=str(tmp_path), plots=False)
    assert 0 <= metrics["map50"] <= 1 and metrics["n_images"] == 6


def test_val_weights_bad_input(data_and_weights, tmp_path, capsys) -> None:
    data, weights = data_and_weights
    assert main(["val", "--data", str(data), "--weights", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().err
    assert main(["val", "--data", str(data), "--weights", str(weights), "--imgsz", "100", "--device", "cpu"]) == 2
    assert "100" in capsys.readouterr().err

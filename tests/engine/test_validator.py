"""The evaluator the trainer and `efyolo val --weights` share: YOLOv5's multi-label NMS protocol."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from efyolo.data.config import load_data_config
from efyolo.data.scan import scan_split
from efyolo.data.dataset import DetectionDataset, build_dataloader
from efyolo.engine.validator import evaluate

BOXES = [(8, 8, 40, 30), (30, 20, 60, 56)]  # pixel xyxy in a 64x64 image, both of class 0


def one_class_dataset(root: Path) -> Path:
    """Two 64x64 images, each with the two class-0 boxes of BOXES; the YAML declares 2 classes."""
    for split in ("val",):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), np.full((64, 64, 3), 114, np.uint8))
            rows = [f"0 {(x1 + x2) / 128} {(y1 + y2) / 128} {(x2 - x1) / 64} {(y2 - y1) / 64}" for x1, y1, x2, y2 in BOXES]
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(rows) + "\n")
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/val", "val": "images/val",
                                    "names": ["square", "disc"]}))
    return data


def uncertain_model(x: torch.Tensor) -> torch.Tensor:
    """Decoded predictions ``[B, 2, 5 + 2]``: every true box, objectness 0.9, but the wrong class
    ranked first (disc 0.6, square 0.4)."""
    rows = [[(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0.9, 0.4, 0.6] for x1, y1, x2, y2 in BOXES]
    return torch.tensor(rows).expand(x.shape[0], -1, -1)


@pytest.mark.parametrize("multi_label, expected", [(True, 1.0), (False, 0.0)])
def test_multi_label_nms_scores_the_runner_up_class(tmp_path: Path, multi_label: bool, expected: float) -> None:
    cfg = load_data_config(one_class_dataset(tmp_path))
    dataset = DetectionDataset(scan_split(cfg, "val", cache=False), 64, augment=False, rect=False, stride=32)
    loader = build_dataloader(dataset, 2, 0, shuffle=False)
    result = evaluate(uncertain_model, loader, list(cfg.names), "cpu", progress=False, multi_label=multi_label).result
    # Only "square" has ground truth; with multi-label NMS its 0.36 detections match every box.
    assert result.map50 == pytest.approx(expected)
    assert result.map == pytest.approx(expected)


def test_multi_label_is_the_default(tmp_path: Path) -> None:
    cfg = load_data_config(one_class_dataset(tmp_path))
    dataset = DetectionDataset(scan_split(cfg, "val", cache=False), 64, augment=False, rect=False, stride=32)
    loader = build_dataloader(dataset, 2, 0, shuffle=False)
    assert evaluate(uncertain_model, loader, list(cfg.names), "cpu", progress=False).result.map50 == pytest.approx(1.0)


def test_efyolo_val_is_the_python_form_of_efyolo_val(tmp_path: Path) -> None:
    import efyolo
    from efyolo.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = efyolo.build_model("yolov5n", nc=2)
    weights = save_checkpoint({"model_config": model.yaml, "state_dict": model.state_dict(),
                               "names": ["square", "disc"], "imgsz": 64}, tmp_path / "w.pt")
    metrics = efyolo.val(weights, data=one_class_dataset(tmp_path / "d"), imgsz=64, batch=2, workers=0,
                         device="cpu", project=tmp_path / "runs", plots=False)
    assert "val" in efyolo.__all__
    assert 0.0 <= metrics["map50"] <= 1.0 and {"map", "precision", "recall", "speed"} <= set(metrics)
    assert Path(metrics["save_dir"]).parent == tmp_path / "runs"

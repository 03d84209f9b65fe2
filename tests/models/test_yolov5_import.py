"""Real YOLOv5 checkpoints (made by YOLOv5 v7.0's own code: yolov5_checkpoints/README.txt) are read
safely, equal YOLOv5's own outputs, and work wherever ``--weights`` is accepted."""

from __future__ import annotations

import copy
import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import efyolo
from efyolo import EfyoloError
from efyolo.cli import main
from efyolo.models.checkpoint import load_checkpoint, model_from_checkpoint
from efyolo.models.yolov5_import import read_yolov5

FIXTURES = Path(__file__).parent / "yolov5_checkpoints"
BEST, LAST, LEGACY = FIXTURES / "tiny_best.pt", FIXTURES / "tiny_last.pt", FIXTURES / "tiny_legacy.pt"
NAMES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "tiny_reference.npz") as z:
        return {k: z[k] for k in z.files}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fixtures_reference_yolov5_classes_only() -> None:
    """The fixtures are real YOLOv5 files: they pickle models.yolo / models.common classes."""
    found = read_yolov5(BEST)
    assert "models.yolo.DetectionModel" in found.globals and "models.common.C3" in found.globals
    assert not any(g.startswith("yolov5.") for g in found.globals)


@pytest.mark.parametrize("path", [BEST, LEGACY, LAST], ids=["released", "legacy-format", "last"])
def test_read_recovers_config_weights_names_and_anchors(path: Path, reference) -> None:
    found = read_yolov5(path)
    assert found.names == NAMES and found.yaml["nc"] == 3 and found.stride == [8.0, 16.0, 32.0]
    assert found.stored_dtype == "float16" and all(t.dtype != torch.float16 for t in found.state_dict.values())
    prefix = "last_" if path == LAST else ""
    anchors = reference[f"{prefix}anchors"]
    assert np.allclose(found.anchors.numpy(), anchors, atol=1e-6)
    # AutoAnchor-style anchors: the trained ones, not the YAML's
    assert not np.allclose(reference[f"{prefix}anchors_pixels"], reference["yaml_anchors_pixels"], atol=0.5)
    if path == LAST:
        assert found.weights == "ema" and found.epoch is not None and found.epoch >= 0 and found.has_optimizer
        assert isinstance(found.opt, dict) and "hyp" in found.opt
    else:
        assert found.weights == "model" and found.epoch == -1 and not found.has_optimizer
    assert found.parameters == sum(t.numel() for k, t in found.state_dict.items()
                                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked", "anchors")))


@pytest.mark.parametrize("path,prefix", [(BEST, ""), (LEGACY, ""), (LAST, "last_")], ids=["released", "legacy", "last"])
def test_outputs_equal_yolov5s_own_model(path: Path, prefix: str, reference) -> None:
    """Eval decoded boxes and training-mode per-level logits, unfused and fused, within 1e-4."""
    model = model_from_checkpoint(load_checkpoint(path)).eval()
    x = torch.from_numpy(reference["x"])
    with torch.no_grad():
        decoded = model(x)
        assert torch.allclose(decoded, torch.from_numpy(reference[f"{prefix}decoded"]), atol=1e-4, rtol=0)
        raw = copy.deepcopy(model).train()(x)  # a copy: training mode updates BatchNorm statistics
        for i, level in enumerate(raw):
            assert torch.allclose(level, torch.from_numpy(reference[f"{prefix}train_raw{i}"]), atol=1e-4, rtol=0)
        fused = model.eval().fuse()
        assert torch.allclose(fused(x), torch.from_numpy(reference[f"{prefix}fused_decoded"]), atol=1e-4, rtol=0)


def test_detect_gives_yolov5_detect_py_boxes(tmp_path: Path) -> None:
    """Same images, size and thresholds as YOLOv5's detect.py (its minimum-rectangle letterbox for a
    .pt model is efyolo's rect=True): boxes within 1 px, same classes and scores."""
    ref = json.loads((FIXTURES / "tiny_detect.json").read_text())
    detector = efyolo.Detector(BEST)
    images = sorted((FIXTURES / "images").glob("*.jpg"))
    assert sorted(p.name for p in images) == sorted(ref["images"])
    total = 0
    for result in detector(images, imgsz=ref["imgsz"][0], conf=ref["conf_thres"], iou=ref["iou_thres"],
                           max_det=ref["max_det"]):
        expected = np.array(ref["images"][Path(result.path).name]["detections"], dtype=float).reshape(-1, 6)
        got = np.concatenate([result.boxes, result.scores[:, None], result.labels[:, None]], 1) \
            if len(result.boxes) else np.zeros((0, 6))
        assert len(got) == len(expected), Path(result.path).name
        # pair each expected box with an unused detection of the same class and score (ties in
        # score make the order arbitrary), within 1 px
        free = list(range(len(got)))
        for row in expected:
            match = [k for k in free if got[k, 5] == row[5] and abs(got[k, 4] - row[4]) <= 1e-3
                     and np.abs(got[k, :4] - row[:4]).max() <= 1.0]
            assert match, f"{Path(result.path).name}: no detection matches YOLOv5's {row.tolist()}"
            free.remove(match[0])
        total += len(got)
    assert total > 0


def test_convert_cli_writes_a_plain_checkpoint(tmp_path: Path, capsys) -> None:
    before = digest(LAST)
    out = tmp_path / "tiny_efyolo.pt"
    assert main(["convert", "--from", "yolov5", "--weights", str(LAST), "--out", str(out)]) == 0
    printed = "".join(capsys.readouterr())
    assert "3 classes" in printed and "31,800 parameters" in printed and "EMA" in printed
    ckpt = torch.load(out, weights_only=True)  # plain data
    assert ckpt["names"] == NAMES and ckpt["imported_from"]["weights"] == "ema"
    assert digest(LAST) == before
    # the default output name goes beside the input
    src = tmp_path / "yolov5_best.pt"
    src.write_bytes(BEST.read_bytes())
    assert main(["convert", "--from", "yolov5", "--weights", str(src)]) == 0
    assert (tmp_path / "yolov5_best_efyolo.pt").is_file()
    assert main(["convert", "--from", "yolov5", "--weights", str(src), "--out", str(src)]) == 2


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The synthetic set folded to the fixtures' three classes (class id modulo 3)."""
    from efyolo.data.synth import generate_dataset

    path = generate_dataset(tmp_path_factory.mktemp("y5data") / "d", n_train=8, n_val=4, imgsz=96, seed=1)
    for label in (path.parent / "labels").rglob("*.txt"):
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()]
        label.write_text("".join(f"{int(r[0]) % 3} {' '.join(r[1:])}\n" for r in rows))
    for cache in path.parent.rglob("*.cache"):
        cache.unlink()
    path.write_text(f"path: {path.parent}\ntrain: images/train\nval: images/val\nnames: {NAMES}\n")
    return path


def test_every_weights_option_takes_the_yolov5_file(tmp_path: Path, capsys) -> None:
    before = digest(BEST)
    weights = tmp_path / "best.pt"
    weights.write_bytes(BEST.read_bytes())
    # detect (CLI), val via the Python API, export
    assert main(["detect", "--weights", str(weights), "--source", str(FIXTURES / "images"), "--imgsz", "96",
                 "--project", str(tmp_path / "runs")]) == 0
    assert "converted in memory" in "".join(capsys.readouterr())
    from efyolo.export.exporter import export_model

    pytest.importorskip("onnx", reason="ONNX export is in the [export] extra")
    path = export_model(weights, "onnx", imgsz=96)
    from efyolo.runtime.autobackend import load_backend

    x = torch.rand(1, 3, 96, 96)
    assert torch.allclose(load_backend(path, torch.device("cpu"))(x), load_backend(weights, torch.device("cpu"))(x),
                          atol=1e-3)
    assert main(["benchmark", "--weights", str(weights), "--formats", "pytorch", "onnx", "--imgsz", "96",
                 "--runs", "1", "--warmup", "0"]) == 0
    assert digest(BEST) == before


def test_val_and_fine_tuning_start_from_yolov5_weights(data: Path, tmp_path: Path, capsys) -> None:
    metrics = efyolo.val(weights=str(BEST), data=str(data), imgsz=64, project=str(tmp_path / "v"))
    assert 0.0 <= metrics["map50"] <= 1.0
    efyolo.train(data=str(data), weights=str(BEST), epochs=1, imgsz=64, batch=4, workers=0,
                 project=str(tmp_path / "runs"), name="ft")
    printed = "".join(capsys.readouterr())
    total = len(model_from_checkpoint(load_checkpoint(BEST)).state_dict())
    assert f"Transferred {total}/{total} tensors from {BEST}" in printed  # same classes: every tensor
    # another architecture under the same neck and head: the YOLOv5 file gives the neck and head
    efyolo.train(data=str(data), model="yolov5n-efficientformer-n0", weights=str(BEST), epochs=1, imgsz=64,
                 batch=4, workers=0, project=str(tmp_path / "runs"), name="ft2")
    printed = "".join(capsys.readouterr())
    assert "another architecture: its rows 9-24 (neck and head) matched to rows 4-19" in printed


@pytest.fixture
def fake_yolov5(monkeypatch: pytest.MonkeyPatch):
    """Classes named like YOLOv5's (models.yolo.*, models.common.*), to craft odd checkpoints."""
    models, yolo, common = (types.ModuleType(n) for n in ("models", "models.yolo", "models.common"))
    for module, names in ((yolo, ("DetectionModel", "Detect")), (common, ("Conv", "C3x"))):
        for name in names:
            cls = type(name, (nn.Module,), {})
            cls.__module__, cls.__qualname__ = module.__name__, name
            setattr(module, name, cls)
    models.yolo, models.common = yolo, common
    for name, module in (("models", models), ("models.yolo", yolo), ("models.common", common)):
        monkeypatch.setitem(sys.modules, name, module)
    return yolo, common


def test_a_config_with_a_module_efyolo_lacks_is_named(tmp_path: Path, fake_yolov5) -> None:
    yolo, common = fake_yolov5
    model = yolo.DetectionModel()
    layer, head = common.C3x(), yolo.Detect()
    layer.conv = nn.Conv2d(3, 8, 1)
    model.model = nn.Sequential(layer, head)
    model.yaml = {"nc": 3, "depth_multiple": 0.33, "width_multiple": 0.25, "anchors": 3,
                  "backbone": [[-1, 1, "C3x", [64]]], "head": [[[0], 1, "Detect", ["nc", "anchors"]]]}
    model.names = ["a", "b", "c"]
    path = tmp_path / "c3x.pt"
    torch.save({"epoch": -1, "model": model}, path)
    before = digest(path)
    with pytest.raises(EfyoloError, match=r"module\(s\) C3x, which efyolo does not have"):
        load_checkpoint(path)
    assert main(["val", "--weights", str(path), "--data", "x.yaml"]) == 2
    assert digest(path) == before


@pytest.mark.parametrize("name,message", [
    ("tiny_seg.pt", "YOLOv5 segmentation checkpoint .*detection models only"),
    ("tiny_cls.pt", "YOLOv5 classification checkpoint .*detection models only"),
    ("ultralytics_v8.pt", "Ultralytics .*not a YOLOv5 model"),
])
def test_other_checkpoints_are_named_and_refused(name: str, message: str, tmp_path: Path, capsys) -> None:
    path = FIXTURES / name
    before = digest(path)
    with pytest.raises(EfyoloError, match=message):
        load_checkpoint(path)
    assert main(["detect", "--weights", str(path), "--source", str(FIXTURES / "images"),
                 "--project", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err
    assert main(["convert", "--from", "yolov5", "--weights", str(path), "--out", str(tmp_path / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists() and digest(path) == before


def test_truncated_yolov5_file_exits_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "cut.pt"
    path.write_bytes(BEST.read_bytes()[:50_000])
    assert main(["convert", "--from", "yolov5", "--weights", str(path)]) == 2
    assert "cut.pt" in capsys.readouterr().err
    assert not (tmp_path / "cut_efyolo.pt").exists()

"""``efyolo detect``: outputs in runs/detect/expN, video in and out, parity with the API, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import efyolo
from efyolo.cli import main
from efyolo.models.checkpoint import save_checkpoint
from efyolo.engine.predictor import Detector

NAMES = ["a", "b", "c"]


def _checkpoint(path: Path, handset: bool) -> Path:
    """yolov5n (random head) or one whose head yields one 10x13 box per P3 cell, class 1 ("b")."""
    m = efyolo.build_model("yolov5n", nc=3)
    if handset:
        head = m.detect
        with torch.no_grad():
            for level, conv in enumerate(head.m):
                conv.weight.zero_()
                b = conv.bias.view(head.na, head.no)
                b.zero_()
                b[:, 4] = -30.0
                if level == 0:
                    b[0, 4], b[0, 5:] = 2.0, torch.tensor([-5.0, 3.0, -5.0])
    save_checkpoint({"model_config": m.yaml, "state_dict": m.state_dict(), "names": NAMES, "imgsz": 64}, path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    return {"random": _checkpoint(d / "random.pt", False), "handset": _checkpoint(d / "handset.pt", True)}


@pytest.fixture
def images(tmp_path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(1)
    cv2.imwrite(str(d / "wide.png"), rng.integers(0, 256, (36, 128, 3), dtype=np.uint8))
    cv2.imwrite(str(d / "7.jpg"), rng.integers(0, 256, (50, 30, 3), dtype=np.uint8))
    return d


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ lands in the test's folder


def detect(*args: str) -> int:
    return main(["detect", *map(str, args)])


def test_cli_outputs(weights, images, capsys):
    (images / "broken.jpg").write_bytes(b"not an image")
    rc = detect("--weights", weights["handset"], "--source", images, "--save-txt", "--save-conf",
                "--save-json", "--save-crop", "--max-det", "3")
    captured = capsys.readouterr()
    out, err = captured.out.splitlines(), captured.err
    assert rc == 0
    exp = Path("runs/detect/exp")
    assert sorted(p.name for p in exp.iterdir()) == ["7.jpg", "crops", "labels", "predictions.json", "wide.png"]
    assert cv2.imread(str(exp / "wide.png")).shape == (36, 128, 3)  # annotated, original size

    rows = (exp / "labels" / "wide.txt").read_text().splitlines()
    assert len(rows) == 3 and all(len(r.split()) == 6 and r.split()[0] == "1" for r in rows)
    values = np.array([[float(v) for v in r.split()[1:]] for r in rows])
    assert (values[:, :4] >= 0).all() and (values[:, :4] <= 1).all()
    np.testing.assert_allclose(values[:, 4], 0.8808 * 0.9526, atol=1e-3)

    preds = json.loads((exp / "predictions.json").read_text())
    assert len(preds) == 6 and {p["image_id"] for p in preds} == {7, "wide"}
    assert {p["category_id"] for p in preds} == {1}
    crops = sorted(p.name for p in (exp / "crops" / "b").iterdir())
    assert crops == ["7-2.jpg", "7-3.jpg", "7.jpg", "wide-2.jpg", "wide-3.jpg", "wide.jpg"]

    # 50x30 -> x1.28 -> 64x38 -> padded to 64x64; 36x128 -> x0.5 -> 18x64 -> padded to 32x64
    assert out[0].startswith(f"image 1/3 {images / '7.jpg'}: 64x64 3 b, ")
    assert out[1].startswith(f"image 3/3 {images / 'wide.png'}: 32x64 3 b, ")
    assert out[2].startswith("Speed: ") and "pre-process" in out[2]
    assert out[2].endswith("NMS per image at shapes up to (1, 3, 64, 64)")
    assert out[-1] == "Results saved to runs/detect/exp"
    # warnings go to standard error (the logger's WARNING channel)
    skipped = [line for line in err.splitlines() if "unreadable source(s) skipped" in line]
    assert len(skipped) == 1 and "1 unreadable source(s) skipped" in skipped[0] and "broken.jpg" in skipped[0]


def test_run_folders_are_numbered(weights, images, capsys):
    src = images / "wide.png"
    assert detect("--weights", weights["handset"], "--source", src) == 0
    assert detect("--weights", weights["handset"], "--source", src, "--nosave", "--save-txt") == 0
    assert detect("--weights", weights["handset"], "--source", src, "--exist-ok", "--hide-labels", "--hide-conf") == 0
    assert detect("--weights", weights["handset"], "--source", src, "--nosave") == 0  # nothing to save
    assert sorted(p.name for p in Path("runs/detect").iterdir()) == ["exp", "exp2"]
    assert sorted(p.name for p in Path("runs/detect/exp2").iterdir()) == ["labels"]
    det = Detector(weights["handset"], device="cpu")
    (r,) = det(src)
    saved = cv2.imread("runs/detect/exp/wide.png")  # png: lossless, so the plot is exact
    np.testing.assert_array_equal(saved, r.plot(labels=False, conf=False))
    assert (saved != r.plot()).any()


def test_cli_and_api_give_identical_boxes(weights, images, capsys):
    args = {"imgsz": 64, "conf": 0.001, "iou": 0.5, "max_det": 50, "batch": 2}
    assert detect("--weights", weights["random"], "--source", images, "--save-json", "--save-txt", "--save-conf",
                  "--imgsz", 64, "--conf", 0.001, "--iou", 0.5, "--max-det", 50, "--batch", 2, "--nosave") == 0
    results = Detector(weights["random"], device="cpu")(images, **args)
    assert sum(len(r) for r in results) > 10  # enough boxes for a meaningful comparison
    api_json = [row for r in results for row in r.to_json()]
    assert json.loads(Path("runs/detect/exp/predictions.json").read_text()) == api_json
    for r in results:
        cli_rows = Path(f"runs/detect/exp/labels/{r.stem}.txt").read_text()
        r.save_txt("api.txt", save_conf=True)
        assert cli_rows == Path("api.txt").read_text()


def test_cli_classes_and_agnostic(weights, images, capsys):
    assert detect("--weights", weights["handset"], "--source", images / "wide.png", "--classes", 0, 2,
                  "--save-json", "--agnostic-nms") == 0
    assert json.loads(Path("runs/detect/exp/predictions.json").read_text()) == []
    assert "no detections" in capsys.readouterr().out


def test_video_in_and_out(weights, tmp_path, capsys):
    src = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (48, 32))
    for i in range(5):
        writer.write(np.full((32, 48, 3), 50 * i, np.uint8))
    writer.release()
    assert detect("--weights", weights["handset"], "--source", src, "--save-txt", "--max-det", 1) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"video 1/1 (frame 1/5) {src}: 64x64 1 b") and out[4].startswith("video 1/1 (frame 5/5)")
    cap = cv2.VideoCapture("runs/detect/exp/clip.mp4")
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 5 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (48, 32)
    cap.release()
    assert sorted(p.name for p in Path("runs/detect/exp/labels").iterdir()) == [f"clip_{i}.txt" for i in range(1, 6)]


def _bad(tmp_path):
    (tmp_path / "empty").mkdir()
    torch.save({"model": {}}, tmp_path / "other.pt")
    (tmp_path / "damaged.pt").write_bytes(b"\x00garbage")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff junk")
    cv2.imwrite(str(tmp_path / "ok.png"), np.zeros((8, 8, 3), np.uint8))


@pytest.mark.parametrize(
    "weights_name, source, extra, needle",
    [
        (None, "missing.jpg", [], "missing.jpg does not exist"),
        (None, "empty", [], "empty contains no images or videos"),
        (None, "bad.jpg", ["--save-json"], "bad.jpg cannot be read"),
        ("other.pt", "ok.png", [], "other.pt is not an efyolo checkpoint"),
        ("damaged.pt", "ok.png", [], "damaged.pt is not a readable efyolo checkpoint"),
        ("nothere.pt", "ok.png", [], "nothere.pt does not exist"),
        (None, "ok.png", ["--imgsz", "70"], "imgsz 70 is not a positive multiple"),
        (None, "ok.png", ["--half", "--device", "cpu"], "--half needs a CUDA device"),
    ],
)
def test_bad_input_exits_2_with_one_line(weights, tmp_path, capsys, weights_name, source, extra, needle):
    _bad(tmp_path)
    w = tmp_path / weights_name if weights_name else weights["handset"]
    assert detect("--weights", w, "--source", tmp_path / source, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("efyolo detect: error: ") and needle in err[0], err
    assert not Path("runs").exists()  # no run folder for a failed start

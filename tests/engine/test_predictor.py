"""The Python ``Detector``: exact boxes in original-image pixels, batching, TTA, inputs, results."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import efyolo
from efyolo.models.checkpoint import save_checkpoint
from efyolo.utils.plotting import class_color, crop_box, default_line_width, draw_detections
from efyolo.runtime.autobackend import Backend
from efyolo.engine.predictor import Detector, batch_shape
from efyolo.utils.checks import check_imgsz
from efyolo.engine.results import Result
from efyolo.errors import EfyoloError
from efyolo.models import DetectionModel

NAMES = ["a", "b", "c"]
OBJ, CLS = 2.0, 3.0  # hand-set logits: score = sigmoid(OBJ) * sigmoid(CLS)


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def handset_model() -> DetectionModel:
    """yolov5n whose head ignores its features: one box per P3 cell, anchor 0 (10x13 px), class 1.

    With zero conv weights the head's raw output is its bias: xy logit 0 -> the cell centre
    ``(c + 0.5) * 8``; wh logit 0 -> ``(2 * 0.5) ** 2 * anchor`` = the anchor itself.
    """
    m = efyolo.build_model("yolov5n", nc=3)
    head = m.detect
    with torch.no_grad():
        for level, conv in enumerate(head.m):
            conv.weight.zero_()
            b = conv.bias.view(head.na, head.no)
            b.zero_()
            b[:, 4] = -30.0  # objectness ~ 1e-13: no detection
            if level == 0:
                b[0, 4] = OBJ
                b[0, 5:] = torch.tensor([-5.0, CLS, -5.0])
    return m


def write_checkpoint(model: DetectionModel, path, imgsz: int = 64):
    payload = {"model_config": model.yaml, "state_dict": model.state_dict(), "names": NAMES, "imgsz": imgsz}
    save_checkpoint(payload, path)
    return path


@pytest.fixture(scope="module")
def handset_weights(tmp_path_factory):
    return write_checkpoint(handset_model(), tmp_path_factory.mktemp("w") / "handset.pt")


@pytest.fixture(scope="module")
def handset(handset_weights):
    return Detector(handset_weights, device="cpu")


def expected_p3_boxes(input_hw, gain, pad, orig_hw) -> np.ndarray:
    """The hand-set head's boxes for a ``input_hw`` network input, mapped back by hand."""
    rows = []
    for cy in range(input_hw[0] // 8):
        for cx in range(input_hw[1] // 8):
            xc, yc = (cx + 0.5) * 8, (cy + 0.5) * 8
            x1, x2 = (xc - 5 - pad[0]) / gain, (xc + 5 - pad[0]) / gain
            y1, y2 = (yc - 6.5 - pad[1]) / gain, (yc + 6.5 - pad[1]) / gain
            rows.append([x1, y1, x2, y2])
    boxes = np.array(rows)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, orig_hw[1])
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, orig_hw[0])
    return boxes


def _sorted(boxes: np.ndarray) -> np.ndarray:
    return boxes[np.lexsort(boxes.T[::-1])]


# ---- exact boxes from a hand-set head (real checkpoint, fused model) ---------------------------


@pytest.mark.parametrize(
    "orig_hw, rect, input_hw, gain, pad",
    [
        # square 32x32 -> x2 -> 64x64, no padding
        ((32, 32), True, (64, 64), 2.0, (0.0, 0.0)),
        # 40x128 -> x0.5 -> 20x64; minimal rectangle 32x64 pads (32 - 20) / 2 = 6 rows on top
        ((40, 128), True, (32, 64), 0.5, (0.0, 6.0)),
        # same image padded to the full 64x64 square: (64 - 20) / 2 = 22 rows on top
        ((40, 128), False, (64, 64), 0.5, (0.0, 22.0)),
        # 48x20 -> x4/3 -> 64x27 (round(26.67)); full square pads (64 - 27) / 2 = 18.5 columns
        ((48, 20), False, (64, 64), 4 / 3, (18.5, 0.0)),
    ],
)
def test_handset_head_exact_boxes(handset, orig_hw, rect, input_hw, gain, pad):
    img = np.zeros((*orig_hw, 3), np.uint8)
    (r,) = handset(img, imgsz=64, conf=0.25, rect=rect)
    assert r.input_shape == input_hw and r.orig_shape == orig_hw
    expected = expected_p3_boxes(input_hw, gain, pad, orig_hw)
    assert len(r) == len(expected) == (input_hw[0] // 8) * (input_hw[1] // 8)
    np.testing.assert_allclose(_sorted(r.boxes), _sorted(expected), atol=1e-4)
    np.testing.assert_allclose(r.scores, _sigmoid(OBJ) * _sigmoid(CLS), rtol=1e-5)
    assert (r.labels == 1).all() and r.boxes.dtype == np.float32 and r.labels.dtype == np.int64
    assert r.names == NAMES and r.counts() == {"b": len(expected)}


def test_nms_options(handset):
    img = np.zeros((32, 32, 3), np.uint8)
    assert len(handset(img, max_det=5)[0]) == 5
    assert len(handset(img, classes=[0, 2])[0]) == 0
    assert len(handset(img, classes=[1])[0]) == 64
    assert len(handset(img, conf=0.9)[0]) == 0  # score is 0.84
    # adjacent P3 boxes (10x13 at an 8 px pitch) overlap with IoU 0.11 (x) and 0.24 (y)
    assert len(handset(img, iou=0.2)[0]) < 64


def test_detector_from_module_leaves_it_untouched(handset):
    model = handset_model()
    img = np.zeros((40, 128, 3), np.uint8)
    (r,) = Detector(model, device="cpu")(img, imgsz=64)
    np.testing.assert_array_equal(r.boxes, handset(img, imgsz=64)[0].boxes)
    assert model.training and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_detector_attributes(handset):
    assert handset.names == NAMES and handset.stride == 32 and handset.imgsz == 64
    assert isinstance(handset.backend, Backend)
    assert not handset.model.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in handset.model.modules())  # fused
    assert handset.device == torch.device("cpu")


# ---- a model that finds the bright rectangle: checks the whole letterbox round trip -----------


def bright_box_forward(self, x: torch.Tensor) -> torch.Tensor:
    """Predict one box around the pixels brighter than 0.5 (in network-input pixels), class 2."""
    assert x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0, x.shape
    out = torch.zeros(x.shape[0], 2, 8)  # a second, empty row per image
    for b, mask in enumerate(x.mean(1) > 0.5):
        ys, xs = mask.nonzero(as_tuple=True)
        if len(xs):
            x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
            out[b, 0] = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0.9, 0, 0, 1.0])
    return out


def rectangle_image(hw, box) -> np.ndarray:
    img = np.zeros((*hw, 3), np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 255
    return img


# (image h, w), white box xyxy; even coordinates so that the 2x down/up-scaling is exact
CASES = [
    ((40, 128), (20, 8, 60, 32)),
    ((32, 16), (4, 10, 12, 26)),
    ((64, 64), (8, 16, 40, 48)),
    ((128, 128), (2, 30, 100, 64)),
]


@pytest.fixture
def bright(handset, monkeypatch):
    monkeypatch.setattr(DetectionModel, "forward", bright_box_forward)
    return handset


@pytest.mark.parametrize("rect", [True, False])
def test_letterbox_round_trip_exact(bright, rect):
    images = [rectangle_image(hw, box) for hw, box in CASES]
    for batch in (1, 4):
        results = bright(images, imgsz=64, rect=rect, batch=batch)
        for r, (hw, box) in zip(results, CASES):
            assert len(r) == 1 and r.labels[0] == 2 and r.orig_shape == hw
            np.testing.assert_allclose(r.boxes[0], box, atol=1e-4)
    assert results[0].input_shape == (64, 64)  # one batch shape for the mixed batch


def test_test_time_augmentation(bright):
    for hw, box in CASES:
        (plain,) = bright(rectangle_image(hw, box), imgsz=64)
        (tta,) = bright(rectangle_image(hw, box), imgsz=64, augment=True)
        # the scaled and flipped passes land on the same object (so NMS keeps one box)
        assert len(tta) == 1
        np.testing.assert_allclose(tta.boxes[0], box, atol=2 / min(64 / hw[0], 64 / hw[1]) + 0.5)
        np.testing.assert_allclose(plain.boxes[0], box, atol=1e-4)


def test_every_input_type_gives_the_same_boxes(bright, tmp_path):
    hw, box = CASES[0]
    bgr = rectangle_image(hw, box)
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "0042.png"), bgr)
    (tmp_path / "list.txt").write_text("0042.png\n")
    sources = [
        str(tmp_path / "0042.png"),
        tmp_path,
        str(tmp_path / "*.png"),
        tmp_path / "list.txt",
        bgr,
        Image.fromarray(rgb),
        torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
    ]
    for source in sources:
        (r,) = bright(source, imgsz=64)
        np.testing.assert_allclose(r.boxes[0], box, atol=1e-4)
    both = bright([bgr, str(tmp_path / "0042.png")], imgsz=64, batch=2)
    assert [r.path for r in both] == ["image0", str(tmp_path / "0042.png")]
    assert both[1].to_json()[0]["image_id"] == 42  # numeric stem -> int


# ---- results --------------------------------------------------------------------------------


def _result() -> Result:
    img = np.full((50, 100, 3), 30, np.uint8)
    return Result(
        boxes=np.array([[10, 5, 30, 25], [50, 0, 100, 50]], np.float32),
        scores=np.array([0.9, 0.5], np.float32),
        labels=np.array([2, 0]),
        names=NAMES,
        orig_shape=(50, 100),
        path="/data/img_7.jpg",
        orig_img=img,
    )


def test_result_conversions_and_json():
    r = _result()
    np.testing.assert_allclose(r.xywh(), [[20, 15, 20, 20], [75, 25, 50, 50]])
    np.testing.assert_allclose(r.xywhn(), [[0.2, 0.3, 0.2, 0.4], [0.75, 0.5, 0.5, 1.0]])
    rows = r.to_json()
    score = float(np.float32(0.9))  # full precision (coco_result_rows), not rounded to 0.9
    assert rows[0] == {"image_id": "img_7", "category_id": 2, "bbox": [10.0, 5.0, 20.0, 20.0], "score": score}
    assert rows[1]["category_id"] == 0 and json.loads(json.dumps(rows)) == rows
    assert r.summary() == "1 a, 1 c"


def test_result_plot_save_txt_and_crops(tmp_path):
    r = _result()
    plotted = r.plot(line_width=2)
    assert plotted.shape == r.orig_img.shape and (r.orig_img == 30).all()  # original untouched
    assert tuple(plotted[15, 10]) == class_color(2)  # left edge of box 0 in its class colour
    assert (plotted[40, 60:90] == 30).all()  # inside box 1, away from its edges and tag
    assert (r.plot(labels=False, conf=False) != r.plot()).any()  # the text tag is drawn
    assert cv2.imread(str(r.save(tmp_path / "out.png"))).shape == (50, 100, 3)
    with pytest.raises(EfyoloError, match="cannot save"):
        r.save(tmp_path / "out.gif")

    txt = r.save_txt(tmp_path / "labels" / "x.txt", save_conf=True).read_text().splitlines()
    assert [float(v) for v in txt[0].split()] == pytest.approx([2, 0.2, 0.3, 0.2, 0.4, 0.9])
    assert len(r.save_txt(tmp_path / "y.txt").read_text().splitlines()[1].split()) == 5

    crops = r.save_crops(tmp_path / "crops")
    assert [p.relative_to(tmp_path).as_posix() for p in crops] == ["crops/c/img_7.jpg", "crops/a/img_7.jpg"]
    assert cv2.imread(str(crops[0])).shape[:2] == crop_box(r.orig_img, r.boxes[0]).shape[:2]

    r.orig_img = None
    with pytest.raises(EfyoloError, match="no image"):
        r.plot()


def test_video_frame_stem_and_log_line():
    r = _result()
    r.frame, r.frames, r.index, r.total, r.input_shape = 2, 9, 0, 1, (32, 64)
    r.speed = {"inference": 12.34}
    assert r.stem == "img_7_3"
    assert r.log_line() == "video 1/1 (frame 3/9) /data/img_7.jpg: 32x64 1 a, 1 c, 12.3ms"


def test_draw_detections_helpers():
    img = np.zeros((40, 40, 3), np.uint8)
    out = draw_detections(img, np.array([[5, 5, 30, 30]]), np.array([0.7]), np.array([7]), NAMES, 3, False, False)
    assert tuple(out[20, 5]) == class_color(7) and (img == 0).all()  # unknown id: drawn anyway
    assert len({class_color(i) for i in range(20)}) == 20
    assert default_line_width((640, 640)) == 2 and default_line_width((2000, 2000)) == 6
    assert crop_box(img, [0, 0, 1000, 1000]).shape == (40, 40, 3)  # clipped


# ---- sizes, real-model TTA, bad weights -------------------------------------------------------


def test_imgsz_rules():
    assert check_imgsz(64, 32) == (64, 64) and check_imgsz([64, 96], 32) == (64, 96)
    with pytest.raises(EfyoloError, match="imgsz 100 is not a positive multiple of the model stride 32 .try 96 or 128"):
        check_imgsz(100, 32)
    assert batch_shape([(40, 128)], (64, 64), 32) == (32, 64)
    assert batch_shape([(40, 128), (128, 40)], (64, 64), 32) == (64, 64)
    assert batch_shape([(40, 128)], (64, 64), 32, rect=False) == (64, 64)


def test_real_model_tta_and_rectangular_sizes(tmp_path):
    det = Detector(write_checkpoint(efyolo.build_model("yolov5n", nc=3), tmp_path / "w.pt"), device="cpu")
    img = np.random.default_rng(0).integers(0, 256, (30, 70, 3), dtype=np.uint8)
    # 96 -> TTA passes at 96x96 (pads 79 -> 96, 64 -> 64): every input a multiple of 32
    (r,) = det(img, imgsz=96, conf=0.001, augment=True, rect=False)
    (p,) = det(img, imgsz=(64, 96), conf=0.001)
    assert r.input_shape == (96, 96) and p.input_shape == (64, 96)
    assert (r.boxes[:, 2] <= 70).all() and (r.boxes[:, 3] <= 30).all()
    with pytest.raises(EfyoloError, match="imgsz 50"):
        det(img, imgsz=50)
    with pytest.raises(EfyoloError, match="--half needs a CUDA device"):
        Detector(tmp_path / "w.pt", device="cpu", half=True)


def test_bad_weights(tmp_path):
    torch.save({"epoch": 3, "model": {}}, tmp_path / "other.pt")
    (tmp_path / "damaged.pt").write_bytes(b"PK\x03\x04 truncated zip")
    (tmp_path / "model.engine").write_bytes(b"tflite")
    cases = {
        "other.pt": "other.pt is not an efyolo checkpoint",
        "damaged.pt": "damaged.pt is not a readable efyolo checkpoint",
        "model.engine": "unsupported weights format '.engine'",
        "missing.pt": "missing.pt does not exist",
    }
    for name, match in cases.items():
        with pytest.raises(EfyoloError, match=match):
            Detector(tmp_path / name, device="cpu")

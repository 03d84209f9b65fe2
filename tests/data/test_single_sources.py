"""One implementation each: the COCO-results writer, the image-suffix list and the EXIF code.

The dataset side (listing, scan) and the inference side (``Sources``, ``Result``) used to keep
their own copies, which drifted apart; these tests pin that both sides now agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from efyolo.data import images as images_mod
from efyolo.data import sources as sources_mod
from efyolo.data.images import check_image, exif_orientation, exif_size, find_images
from efyolo.data.sources import Sources
from efyolo.engine.results import Result, ResultWriter
from efyolo.errors import EfyoloError
from efyolo.evaluation.coco_results import coco_result_rows, read_coco_results, write_coco_results

# ---- COCO results ---------------------------------------------------------------------------


def _result(path: str = "/data/0007.jpg") -> Result:
    return Result(
        boxes=np.array([[10.125, 5.3, 30.77, 25.01], [0.0, 0.0, 99.99, 49.5], [3.3, 4.4, 5.5, 6.6]], np.float32),
        scores=np.array([0.912345678, 0.5, 0.123456789], np.float32),
        labels=np.array([2, 0, 2]),
        names=["a", "b", "c"],
        orig_shape=(50, 100),
        path=path,
    )


def test_coco_rows_are_what_to_json_writer_and_reader_give(tmp_path: Path) -> None:
    r = _result()
    rows = coco_result_rows(7, r.boxes, r.scores, r.labels)
    assert r.to_json() == rows  # numeric stem -> int id 7
    assert rows[0]["image_id"] == 7 and rows[0]["category_id"] == 2 and type(rows[0]["category_id"]) is int
    # full precision: the float32 values themselves, nothing rounded
    assert rows[0]["score"] == float(np.float32(0.912345678)) and rows[2]["score"] != round(rows[2]["score"], 5)
    xyxy = r.boxes.astype(np.float64)  # w, h in float64: exact for float32 corners, so x + w gives x2 back
    np.testing.assert_array_equal([row["bbox"] for row in rows], np.c_[xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]])

    path = write_coco_results(tmp_path / "out" / "predictions.json", rows)
    assert json.loads(path.read_text()) == rows
    assert [p.name for p in path.parent.iterdir()] == ["predictions.json"]  # no temporary file left

    preds = read_coco_results(path)  # what the evaluator scores
    assert preds.image_ids == [7, 7, 7]
    np.testing.assert_array_equal(preds.boxes, r.boxes.astype(np.float64))  # xyxy back exactly
    np.testing.assert_array_equal(preds.scores, r.scores.astype(np.float64))
    np.testing.assert_array_equal(preds.labels, r.labels)
    assert coco_result_rows(7, preds.boxes, preds.scores, preds.labels) == rows  # a lossless round trip


def test_result_writer_writes_the_same_rows(tmp_path: Path) -> None:
    a, b = _result("/data/0007.jpg"), _result("/data/cat.png")
    with ResultWriter(tmp_path / "exp", save_img=False, save_json=True) as writer:
        writer.write(a)
        writer.write(b)
    written = json.loads((tmp_path / "exp" / "predictions.json").read_text())
    assert written == a.to_json() + b.to_json()
    assert written[3]["image_id"] == "cat"
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["predictions.json"]


def test_coco_rows_empty_and_mismatched() -> None:
    assert coco_result_rows("x", np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0, int)) == []
    with pytest.raises(ValueError, match="2 boxes, 1 scores"):
        coco_result_rows("x", np.zeros((2, 4)), np.zeros(1), np.zeros(2, int))


# ---- image suffixes -------------------------------------------------------------------------


def test_one_suffix_list() -> None:
    assert sources_mod.IMAGE_SUFFIXES is images_mod.IMAGE_SUFFIXES
    assert not hasattr(images_mod, "IMG_FORMATS")
    assert {".dib", ".jpe", ".pbm", ".pgm", ".ppm", ".jpg", ".png"} <= images_mod.IMAGE_SUFFIXES
    assert ".pfm" not in images_mod.IMAGE_SUFFIXES
    assert not images_mod.IMAGE_SUFFIXES & sources_mod.VIDEO_SUFFIXES
    assert images_mod.is_image_file("a/B.PPM") and not images_mod.is_image_file("png")


def _write_pil(path: Path, mode: str, fmt: str, w: int = 20, h: int = 12) -> Path:
    rgb = np.random.default_rng(len(path.name)).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert(mode).save(path, format=fmt)
    return path


@pytest.mark.parametrize(
    "name, mode, fmt",
    [("a.ppm", "RGB", "PPM"), ("b.pgm", "L", "PPM"), ("c.pbm", "1", "PPM"), ("d.dib", "RGB", "BMP"),
     ("e.jpe", "RGB", "JPEG"), ("F.PPM", "RGB", "PPM")],
)
def test_suffix_accepted_by_dataset_and_sources(tmp_path: Path, name: str, mode: str, fmt: str) -> None:
    path = _write_pil(tmp_path / name, mode, fmt)
    files, problems = find_images([tmp_path])
    assert files == [str(path)] and problems == []
    shape, reason = check_image(str(path))
    assert reason is None and shape == (12, 20)
    for source in (path, tmp_path, str(tmp_path / "*"), [path]):
        (frame,) = list(Sources(source))
        assert frame.path == str(path) and frame.image.shape == (12, 20, 3)


def test_pfm_is_left_out_by_both(tmp_path: Path) -> None:
    """OpenCV decodes a float map to 8 bits unscaled (a black image): neither side takes it."""
    pfm = tmp_path / "depth.pfm"
    assert cv2.imwrite(str(pfm), np.random.default_rng(0).random((6, 8, 3)).astype(np.float32))
    with pytest.raises(EfyoloError, match="no images found"):
        find_images([tmp_path])
    with pytest.raises(EfyoloError, match="unsupported file type '.pfm'"):
        Sources(pfm)
    with pytest.raises(EfyoloError, match="contains no images or videos"):
        Sources(tmp_path)
    png = tmp_path / "ok.png"
    assert cv2.imwrite(str(png), np.zeros((6, 8, 3), np.uint8))
    assert find_images([tmp_path])[0] == [str(png)] and Sources(tmp_path).paths == [str(png)]


# ---- EXIF orientation -----------------------------------------------------------------------


def _write_oriented_jpeg(path: Path, orientation: int, w: int = 48, h: int = 24) -> np.ndarray:
    """A JPEG stored ``w x h`` with four flat quadrants, tagged with ``orientation`` (as
    tests/data/test_dataset.py's write_image tags them); returns the stored RGB pixels."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[: h // 2, : w // 2] = (250, 20, 20)
    rgb[: h // 2, w // 2:] = (20, 250, 20)
    rgb[h // 2:, : w // 2] = (20, 20, 250)
    rgb[h // 2:, w // 2:] = (250, 250, 250)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, exif=exif, quality=95)
    return rgb


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_same_upright_image_for_scan_and_sources(tmp_path: Path, orientation: int) -> None:
    path = tmp_path / f"o{orientation}.jpg"
    _write_oriented_jpeg(path, orientation)
    upright_hw = (48, 24) if orientation >= 5 else (24, 48)

    assert exif_orientation(path) == orientation
    with Image.open(path) as im:
        assert exif_orientation(im) == orientation
        assert exif_size(im) == upright_hw[::-1]  # (w, h)
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))[:, :, ::-1]  # PIL's upright BGR

    shape, reason = check_image(str(path))  # the dataset scan's size (labels are relative to it)
    assert reason is None and shape == upright_hw
    (frame,) = list(Sources(path))  # inference decoding
    assert frame.image.shape[:2] == shape
    assert np.abs(frame.image.astype(int) - expected).mean() < 3  # same pixels, up to JPEG decoders
    trained = cv2.imread(str(path))  # how the training data loader reads it (OpenCV's own EXIF)
    assert trained.shape[:2] == shape and np.abs(trained.astype(int) - frame.image).mean() < 3


def test_exif_orientation_missing_or_invalid(tmp_path: Path) -> None:
    plain = _write_pil(tmp_path / "p.png", "RGB", "PNG")
    assert exif_orientation(plain) == 1 and exif_orientation(tmp_path / "missing.jpg") == 1
    bad = tmp_path / "bad.jpg"
    exif = Image.Exif()
    exif[0x0112] = 9  # not an orientation
    Image.new("RGB", (10, 4)).save(bad, exif=exif)
    assert exif_orientation(bad) == 1 and check_image(str(bad))[0] == (4, 10)
    assert list(Sources(bad))[0].image.shape == (4, 10, 3)

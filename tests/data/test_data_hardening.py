"""The dataset scan and loader against damaged datasets: symbolic link loops and second names,
images only PIL can read, decoder exceptions, byte-order marks, truncated JPEGs, stale caches and
images that become unreadable after the scan. Every image is tiny and lives in ``tmp_path``."""

from __future__ import annotations

import io
import logging
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efyolo.data import split as dataset_mod
from efyolo.data.config import load_data_config
from efyolo.data.scan import scan_split
from efyolo.data.images import check_image, list_images
from efyolo.data.dataset import DetectionDataset

BOX = "0 0.5 0.5 0.5 0.5\n"
NO_AUGMENT = {  # every augmentation off: a training sample is the letterboxed image
    "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "degrees": 0.0, "translate": 0.0, "scale": 0.0,
    "shear": 0.0, "perspective": 0.0, "flipud": 0.0, "fliplr": 0.0, "mosaic": 0.0, "mixup": 0.0,
}


def write_image(path: Path, w: int = 32, h: int = 24, colour=(120, 60, 30), **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path, **save)
    return path


def write_label(root: Path, stem: str, text: str) -> None:
    (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "val" / f"{stem}.txt").write_text(text, encoding="utf-8")


def make_yaml(root: Path, val: str = "images/val") -> Path:
    y = root / "data.yaml"
    y.write_text(f"path: .\nval: {val}\nnames: [cat, dog]\n")
    return y


def scan(root: Path, val: str = "images/val", **kw):
    return scan_split(load_data_config(make_yaml(root, val)), "val", **kw)


def png_without_idat() -> bytes:
    """A valid PNG with its IDAT chunk (length, type, data, CRC) cut out."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, format="PNG")
    data = buf.getvalue()
    start = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[start:start + 4])
    return data[:start] + data[start + 12 + length:]


# ---------------------------------------------------------------- listing


def test_symlink_loop_lists_each_image_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path.resolve()
    for stem in ("a", "b"):
        write_image(root / "images" / "val" / f"{stem}.jpg")
        write_label(root, stem, BOX)
    link = root / "images" / "val" / "loop"
    os.symlink(".", link)  # was: every image listed ~41 times, as a label-less background
    with caplog.at_level(logging.WARNING, logger="efyolo"):
        index = scan(root)
    assert len(index) == 2 and index.n_listed == 2 and index.n_backgrounds == 0
    loops = [m for m in index.problems if "symbolic link loop" in m]
    assert loops == [
        f"{link}: symbolic link loop (it points to {link.parent}, a folder that contains it), not followed"
    ]
    assert loops[0] in [r.getMessage() for r in caplog.records]
    cached = scan(root)  # the warning is not lost when the scan comes from the cache
    assert cached.from_cache and loops[0] in cached.problems and len(cached) == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="efyolo"):
        assert len(list_images([root / "images" / "val"])) == 2
    assert loops[0] in [r.getMessage() for r in caplog.records]  # list_images logs it itself


def test_symlinked_folders_followed_once(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    val = root / "images" / "val"
    write_image(val / "a.jpg")
    write_image(val / "sub" / "d.jpg")
    write_image(root / "elsewhere" / "c.jpg")
    os.symlink(root / "elsewhere", val / "ext")  # a linked image folder: followed
    os.symlink(root / "elsewhere", val / "ext2")  # the same folder again: not listed twice
    os.symlink("sub", val / "alias")  # a second name of a folder of the source, listed first
    os.symlink("sub/d.jpg", val / "z.jpg")  # a second name of a file
    index = scan(root, cache=False)
    assert index.im_files == [str(val / "a.jpg"), str(val / "ext" / "c.jpg"), str(val / "sub" / "d.jpg")]
    assert sorted(index.problems) == sorted([
        f"{val / 'ext2'}: same folder as {val / 'ext'} (already listed), not listed again",
        f"{val / 'alias'}: symbolic link to {val / 'sub'}, listed under its own name, not listed again",
        f"{val / 'z.jpg'}: same file as {val / 'sub' / 'd.jpg'}, listed once",
    ])


def test_image_list_with_bom_and_duplicates(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    for stem in ("a", "b"):
        write_image(root / "images" / "val" / f"{stem}.jpg")
    # a byte-order mark used to become part of the first path ("file not found")
    (root / "val.txt").write_text("images/val/a.jpg\n./images/val/b.jpg\nimages/val/a.jpg\n", encoding="utf-8-sig")
    index = scan(root, "val.txt", cache=False)
    a, b = str(root / "images" / "val" / "a.jpg"), str(root / "images" / "val" / "b.jpg")
    assert index.im_files == [a, b] and index.n_corrupt == 0
    assert index.problems == [f"{root / 'val.txt'}:3: {a} is listed again (line 1), listed once"]
    # the same file from a folder and a list of the split: listed once
    both = scan(root, "[images/val, val.txt]", cache=False)
    assert both.im_files == [a, b]
    assert f"{a}: same file as {a} (listed by an earlier source), listed once" in both.problems


# ---------------------------------------------------------------- checking


def test_image_opencv_cannot_decode_is_skipped_with_its_labels(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    write_image(root / "images" / "val" / "ok.jpg")
    write_label(root, "ok", BOX)
    ico = root / "images" / "val" / "x.png"
    Image.new("RGB", (32, 32)).save(ico, format="ICO")  # PIL reads it, OpenCV does not
    write_label(root, "x", BOX + "1 0.2 0.2 0.1 0.1\n")
    index = scan(root, cache=False)
    assert index.im_files == [str(root / "images" / "val" / "ok.jpg")]
    assert index.n_corrupt == 1 and index.n_instances == 1
    reason = "unreadable image (OpenCV cannot decode this ICO file saved as .png)"
    assert index.problems == [f"{ico}: {reason}, skipped"]
    assert check_image(str(ico)) == (None, reason)  # the COCO path's contract is unchanged
    assert check_image(str(root / "images" / "val" / "ok.jpg")) == ((24, 32), None)


def test_decoder_exception_skips_the_image(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    write_image(root / "images" / "val" / "ok.png")
    bad = root / "images" / "val" / "noidat.png"
    bad.write_bytes(png_without_idat())  # PIL's verify() raises IndexError: aborted the scan
    index = scan(root, cache=False)
    assert len(index) == 1 and index.n_corrupt == 1
    assert index.problems == [f"{bad}: unreadable image (IndexError: list index out of range), skipped"]


def test_label_file_with_bom_keeps_its_first_box(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    write_image(root / "images" / "val" / "a.jpg")
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "val" / "a.txt").write_bytes(b"\xef\xbb\xbf" + (BOX + "1 0.3 0.3 0.2 0.2\n").encode())
    index = scan(root, cache=False)
    assert index.problems == [] and index.n_dropped == 0
    np.testing.assert_allclose(index[0].labels[:, 0], [0, 1])


def test_truncated_jpeg_kept_and_reported(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    noise = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    full = root / "full.jpg"
    Image.fromarray(noise).save(full, quality=95)
    data = full.read_bytes()
    val = root / "images" / "val"
    val.mkdir(parents=True)
    cut = val / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    (val / "tail.jpg").write_bytes(data + b"appended by a camera")  # complete: bytes after FF D9 are fine
    index = scan(root, cache=False)
    assert [Path(f).name for f in index.im_files] == ["cut.jpg", "tail.jpg"] and index.n_corrupt == 0
    assert index.problems == [
        f"{cut}: truncated JPEG (no end-of-image marker): the file's {len(data) // 2} bytes decode to an "
        "incomplete image (OpenCV fills the missing part with grey); kept, the file is not modified"
    ]
    assert cut.read_bytes() == data[: len(data) // 2]  # never re-saved


def test_cache_of_an_older_version_is_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path.resolve()
    write_image(root / "images" / "val" / "a.jpg")
    write_label(root, "a", BOX)  # the cache goes to labels/val.cache
    monkeypatch.setattr(dataset_mod, "CACHE_VERSION", 3)  # the checks before this version
    assert not scan(root).from_cache
    monkeypatch.undo()
    assert not scan(root).from_cache  # rescanned with the current checks
    assert scan(root).from_cache


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("augment", [False, True])
def test_unreadable_after_scan_substitutes_the_whole_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, augment: bool
) -> None:
    root = tmp_path.resolve()
    val = root / "images" / "val"
    write_image(val / "a.jpg", 32, 32, (0, 0, 0))
    write_image(val / "b.jpg", 32, 32, (255, 255, 255))
    write_label(root, "b", "1 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.2 0.2\n")
    write_image(val / "c.jpg", 32, 16, (255, 0, 0))  # red, and a different shape
    write_label(root, "c", BOX)
    index = scan(root, cache=False)
    ds = DetectionDataset(index, imgsz=32, augment=augment, hyp=NO_AUGMENT, stride=32)
    (val / "b.jpg").write_bytes(b"gone")  # after the scan
    with caplog.at_level(logging.WARNING, logger="efyolo"):
        img, labels, path, shapes = ds[1]
        ds[1]
    assert path == str(val / "c.jpg") and shapes[0] == (16, 32)  # c's record, all of it
    assert labels[:, 1].tolist() == [0.0]  # c's single class-0 box, not b's two class-1 boxes
    red = img[0].float().mean() - img[2].float().mean()
    assert red > 50  # c's pixels (the tensor is RGB)
    assert ds.bad_files == {str(val / "b.jpg")}
    warnings = [r.getMessage() for r in caplog.records if "b.jpg" in r.getMessage()]
    assert warnings == [
        f"{val / 'b.jpg'}: image unreadable since the scan, replaced by {val / 'c.jpg'} with its own labels "
        "(1 unreadable so far)"
    ]

"""Inference sources: every input type, EXIF orientation, videos, and bad input."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from efyolo.data.sources import Sources, apply_orientation, load_image, read_image
from efyolo.errors import EfyoloError


def _image(h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write(path, img: np.ndarray) -> str:
    assert cv2.imwrite(str(path), img)
    return str(path)


def _frames(source):
    return list(Sources(source))


# ---- paths ------------------------------------------------------------------------------------


def test_image_folder_glob_and_list(tmp_path):
    imgs = {name: _image(10 + i, 20 + i, i) for i, name in enumerate(["b.png", "a.png", "c.bmp"])}
    for name, img in imgs.items():
        _write(tmp_path / name, img)
    (tmp_path / "notes.md").write_text("not an image")  # ignored in folders and globs

    one = _frames(tmp_path / "a.png")
    assert len(one) == 1 and one[0].path == str(tmp_path / "a.png")
    np.testing.assert_array_equal(one[0].image, imgs["a.png"])  # png is lossless

    folder = _frames(tmp_path)
    assert [f.path for f in folder] == [str(tmp_path / n) for n in ("a.png", "b.png", "c.bmp")]
    assert [(f.index, f.total) for f in folder] == [(0, 3), (1, 3), (2, 3)]

    assert [f.path for f in _frames(str(tmp_path / "*.png"))] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]

    sub = tmp_path / "lists"
    sub.mkdir()
    lst = sub / "files.txt"
    lst.write_text(f"# comment\n../c.bmp\n\n{tmp_path / 'a.png'}\n")  # relative to the list's folder
    listed = _frames(lst)
    assert [f.image.shape for f in listed] == [imgs["c.bmp"].shape, imgs["a.png"].shape]


def test_in_memory_inputs_and_mixed_list(tmp_path):
    bgr = _image(12, 16)
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    path = _write(tmp_path / "x.png", bgr)
    frames = _frames(
        [
            bgr,  # numpy BGR
            Image.fromarray(rgb),  # PIL (RGB)
            torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,  # float CHW RGB 0-1
            torch.from_numpy(np.stack([rgb, rgb])).permute(0, 3, 1, 2),  # uint8 BCHW -> 2 images
            path,
        ]
    )
    assert len(frames) == 6
    for f in frames:
        np.testing.assert_array_equal(f.image, bgr)
        assert f.image.dtype == np.uint8 and f.image.flags.c_contiguous
    assert [f.path for f in frames[:5]] == ["image0", "image1", "image2", "image3", "image4"]
    assert frames[5].path == path and frames[0].total == 6


def test_numpy_grey_and_bgra_become_bgr():
    grey = np.full((5, 7), 9, np.uint8)
    bgra = np.dstack([_image(5, 7), np.full((5, 7), 255, np.uint8)])
    g, b = _frames([grey, bgra])
    assert g.image.shape == (5, 7, 3) and (g.image == 9).all()
    np.testing.assert_array_equal(b.image, bgra[:, :, :3])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, orientation):
    rgb = _image(6, 10, seed=orientation)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    im.save(path, exif=exif)
    with Image.open(path) as ref:
        expected = np.asarray(ImageOps.exif_transpose(ref).convert("RGB"))[:, :, ::-1]
    np.testing.assert_array_equal(load_image(path), expected)
    assert apply_orientation(rgb, orientation).shape == expected.shape


def test_exif_orientation_jpeg(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :10] = 255  # white left band
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = _frames(tmp_path / "r.jpg")[0].image
    assert out.shape == (40, 20, 3)
    assert out[:8].mean() > 200 and out[-20:].mean() < 50  # the band is now at the top


# ---- videos -------------------------------------------------------------------------------------


def _write_video(path, n: int = 5, fps: float = 10.0, size=(48, 32)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((size[1], size[0], 3), 40 * i, np.uint8))
    writer.release()


def test_video_frames(tmp_path):
    _write_video(tmp_path / "v.avi")
    _write(tmp_path / "z.png", _image())
    frames = _frames(tmp_path)
    video = [f for f in frames if f.is_video]
    assert [f.frame for f in video] == [0, 1, 2, 3, 4]
    assert all(f.frames == 5 and f.fps == pytest.approx(10.0) and f.image.shape == (32, 48, 3) for f in video)
    assert not frames[-1].is_video and frames[-1].index == 1 and frames[-1].total == 2
    assert abs(float(video[3].image.mean()) - 120) < 5  # frames in order


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: d / "missing.jpg", "missing.jpg does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "contains no images or videos"),
        (lambda d: str(d / "*.jpg"), "matches no images"),
        (lambda d: (d / "a.xyz").write_text("x") and d / "a.xyz", "unsupported file type '.xyz'"),
        (lambda d: (d / "l.txt").write_text("\n# nothing\n") and d / "l.txt", "lists no files"),
        (lambda d: (d / "l.txt").write_text("a.png\nnope.png\n") and d / "l.txt", r"l.txt:1: listed file .*a.png"),
    ],
)
def test_bad_paths_name_the_path(tmp_path, make, match):
    with pytest.raises(EfyoloError, match=match):
        Sources(make(tmp_path))


@pytest.mark.parametrize(
    "source, match",
    [
        (np.zeros((4, 4, 3), np.float32), "uint8"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (torch.full((3, 4, 4), 2.0), r"\[0, 1\]"),
        (torch.zeros(4, 4), "RGB tensor"),
        (torch.zeros(3, 4, 4, dtype=torch.int32), "uint8"),
        (123, "unsupported type int"),
        ([], "empty list"),
    ],
)
def test_bad_in_memory_inputs(source, match):
    with pytest.raises(EfyoloError, match=match):
        Sources(source)


def test_single_unreadable_image_raises(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    assert read_image(bad) is None
    with pytest.raises(EfyoloError, match="bad.jpg"):
        _frames(bad)
    with pytest.raises(EfyoloError, match="bad.jpg"):
        load_image(bad)


def test_corrupt_image_among_many_is_skipped(tmp_path, caplog):
    _write(tmp_path / "a.png", _image())
    (tmp_path / "b.jpg").write_bytes(b"garbage")
    (tmp_path / "c.png").write_bytes(b"")
    _write(tmp_path / "d.png", _image())
    sources = Sources(tmp_path)
    with caplog.at_level(logging.WARNING, logger="efyolo"):
        frames = list(sources)
    assert [f.path for f in frames] == [str(tmp_path / "a.png"), str(tmp_path / "d.png")]
    assert sources.skipped == [str(tmp_path / "b.jpg"), str(tmp_path / "c.png")]
    assert sum("b.jpg" in r.message for r in caplog.records) == 1


def test_all_unreadable_raises(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"y")
    with pytest.raises(EfyoloError, match="none of the 2 sources could be read"):
        _frames(tmp_path)


def test_unreadable_video(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"not a video")
    with pytest.raises(EfyoloError, match="video .*v.mp4 cannot be read"):
        _frames(tmp_path / "v.mp4")

"""``efyolo detect`` hardening: same-named sources keep distinct outputs, label text sized for the
image, truncated videos and symlink loops warn, decoder exceptions skip the file."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from efyolo.cli import main
from efyolo.data.sources import Sources, _warn_if_truncated, read_image
from efyolo.utils.plotting import class_color, default_line_width, draw_detections, label_font, label_size
from efyolo.engine.results import Result, ResultWriter, output_image_ids, output_stems
from efyolo.errors import EfyoloError
from test_detect_cli import _checkpoint  # the tiny yolov5n checkpoint with a hand-set head


@pytest.fixture(scope="module")
def handset(tmp_path_factory) -> Path:
    """Weights whose head gives one box of class 1 per P3 cell: every image gets ``--max-det`` boxes."""
    return _checkpoint(tmp_path_factory.mktemp("weights") / "handset.pt", True)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ lands in the test's folder


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def _paths(source) -> list[str]:
    """The files a source expands to, without reading them."""
    return [item.path for item in Sources(source).items]


def _symlink(link: Path, target: str) -> None:
    try:
        os.symlink(target, link)
    except (OSError, NotImplementedError):  # e.g. Windows without the privilege
        pytest.skip("symlinks are not available here")


# ---- 1. output names --------------------------------------------------------------------------


def test_output_stems_rules():
    # unique stems: names unchanged (the usual layout)
    assert output_stems(["x/wide.png", "y/7.jpg", "image2"]) == ["wide", "7", "image2"]
    # same stem in different folders: the path below their common folder; others untouched
    assert output_stems(["d/a/000000.jpg", "d/b/000000.jpg", "d/c/1.jpg"]) == ["a/000000", "b/000000", "1"]
    assert output_stems(["/r/x/img/0.jpg", "/r/y/img/0.jpg"]) == ["x/img/0", "y/img/0"]
    # the same file again, or x.png beside x.jpg (labels/x.txt would collide): _2, _3 in source order
    assert output_stems(["a/x.jpg", "a/x.jpg", "a/x.jpg"]) == ["x", "x_2", "x_3"]
    assert output_stems(["a/x.png", "a/x.jpg"]) == ["x", "x_2"]
    assert output_stems(["a/x.jpg", "a/x.jpg", "a/x_2.jpg"]) == ["x", "x_3", "x_2"]  # x_2 is taken
    assert output_stems(["a/x.jpg", "b/x.jpg", "a/x.jpg"]) == ["a/x", "b/x", "a/x_2"]
    # videos: two clip.mp4 in different folders; a video and an image of one stem do not collide
    # (clip.mp4 + labels clip_<n>.txt against clip.jpg + labels/clip.txt)
    assert output_stems(["va/clip.mp4", "vb/clip.avi"]) == ["va/clip", "vb/clip"]
    assert output_stems(["d/clip.mp4", "d/clip.jpg"]) == ["clip", "clip"]
    # an in-memory image keeps its name; a file of that name yields
    assert output_stems(["image0", "d/image0.jpg"]) == ["image0", "image0_2"]


def test_output_image_ids():
    paths = ["d/a/000000.jpg", "d/b/000000.jpg", "d/c/000001.jpg", "e/7.jpg", "f/07.jpg", "v/7.mp4", "n/name.png"]
    ids = output_image_ids(paths, output_stems(paths))
    # int-stem convention where the id is the image's alone; else the output name ("7" and "07" both int 7)
    assert ids[:5] == ["a/000000", "b/000000", 1, "7", "07"] and ids[6] == "name"


def test_cli_same_file_names_stay_apart(handset, tmp_path, capsys):
    a = _write(tmp_path / "src" / "a" / "000000.jpg", _image(40, 56, 1))
    b = _write(tmp_path / "src" / "b" / "000000.jpg", _image(48, 32, 2))
    c = _write(tmp_path / "src" / "c" / "000001.png", _image(36, 36, 3))
    assert main(["detect", "--weights", str(handset), "--source", str(a), str(b), str(c), "--max-det", "2",
                 "--save-txt", "--save-json", "--save-crop"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "Note: sources share file names; to keep their outputs apart they are saved as a/000000, b/000000 "
        "(the path below the common folder of the same-named sources; a repeated file gets _2, _3)"
    )
    exp = Path("runs/detect/exp")
    assert cv2.imread(str(exp / "a" / "000000.jpg")).shape == (40, 56, 3)  # each annotated image kept
    assert cv2.imread(str(exp / "b" / "000000.jpg")).shape == (48, 32, 3)
    assert (exp / "000001.png").is_file() and not (exp / "000000.jpg").exists()
    for stem in ("a/000000", "b/000000", "000001"):
        assert len((exp / "labels" / f"{stem}.txt").read_text().splitlines()) == 2
    preds = json.loads((exp / "predictions.json").read_text())
    per_id = {i: sum(p["image_id"] == i for p in preds) for i in {p["image_id"] for p in preds}}
    assert per_id == {"a/000000": 2, "b/000000": 2, 1: 2}
    crops = sorted(p.relative_to(exp / "crops" / "b").as_posix() for p in (exp / "crops" / "b").rglob("*.jpg"))
    assert crops == ["000001-2.jpg", "000001.jpg", "a/000000-2.jpg", "a/000000.jpg", "b/000000-2.jpg", "b/000000.jpg"]

    # the very same file twice: _2
    assert main(["detect", "--weights", str(handset), "--source", str(a), str(a), "--save-json", "--max-det", "1"]) == 0
    assert "saved as 000000_2 " in capsys.readouterr().out
    exp2 = sorted(p.name for p in Path("runs/detect/exp2").iterdir())
    assert exp2 == ["000000.jpg", "000000_2.jpg", "predictions.json"]
    ids = [p["image_id"] for p in json.loads(Path("runs/detect/exp2/predictions.json").read_text())]
    assert ids == ["000000", "000000_2"]


def test_cli_unique_names_print_no_note(handset, tmp_path, capsys):
    _write(tmp_path / "imgs" / "x.png", _image(20, 20))
    assert main(["detect", "--weights", str(handset), "--source", str(tmp_path / "imgs" / "x.png")]) == 0
    assert not any(line.startswith("Note:") for line in capsys.readouterr().out.splitlines())
    assert sorted(p.name for p in Path("runs/detect/exp").iterdir()) == ["x.png"]


def _frame_result(path: str, index: int, frame: int | None, total: int = 3) -> Result:
    img = np.full((16, 24, 3), 40 * (frame or 0), np.uint8)
    return Result(
        boxes=np.array([[2, 2, 12, 10]], np.float32), scores=np.array([0.9], np.float32),
        labels=np.array([0]), names=["a"], orig_shape=(16, 24), path=path, index=index, total=total,
        frame=frame, frames=None if frame is None else 2, fps=None if frame is None else 5.0, orig_img=img,
    )


def test_writer_keeps_same_named_videos_and_in_memory_images_apart(tmp_path):
    paths = [str(tmp_path / "va" / "clip.avi"), str(tmp_path / "vb" / "clip.avi"), "image2",
             str(tmp_path / "image2.png")]
    results = [_frame_result(paths[v], v, k, 4) for v in (0, 1) for k in (0, 1)]
    results += [_frame_result(paths[2], 2, None, 4), _frame_result(paths[3], 3, None, 4)]
    out = tmp_path / "out"
    with ResultWriter(out, save_txt=True, save_json=True, source_paths=paths) as writer:
        for r in results:
            writer.write(r)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [
        "image2.jpg", "image2_2.png",
        "labels/image2.txt", "labels/image2_2.txt",
        "labels/va/clip_1.txt", "labels/va/clip_2.txt", "labels/vb/clip_1.txt", "labels/vb/clip_2.txt",
        "predictions.json", "va/clip.mp4", "vb/clip.mp4",
    ]
    ids = [p["image_id"] for p in json.loads((out / "predictions.json").read_text())]
    assert ids == ["va/clip_1", "va/clip_2", "vb/clip_1", "vb/clip_2", "image2", "image2_2"]


def test_writer_without_source_paths_keeps_the_plain_layout(tmp_path):
    with ResultWriter(tmp_path, save_txt=True, save_json=True) as writer:
        writer.write(_frame_result("/data/0001.jpg", 0, None, 1))
    assert (tmp_path / "0001.jpg").is_file() and (tmp_path / "labels" / "0001.txt").is_file()
    assert json.loads((tmp_path / "predictions.json").read_text())[0]["image_id"] == 1


# ---- 2. label text sized for the image ----------------------------------------------------------


def _tag_rows(size: int, line_width: int | None = None) -> int:
    """Rows above the box holding the tag's fill colour, for one labelled box on a black square image."""
    img = np.zeros((size, size, 3), np.uint8)
    y1 = size // 2
    box = np.array([[size // 4, y1, 3 * size // 4, 3 * size // 4]], np.float32)
    out = draw_detections(img, box, np.array([0.87]), np.array([1]), ["person", "car"], line_width)
    lw = line_width or default_line_width(img.shape)
    above = out[: y1 - lw]  # leave out the box's own top edge
    return int((above == class_color(1)).all(axis=2).any(axis=1).sum())


def test_label_text_scales_with_image_size():
    rows = {s: _tag_rows(s) for s in (64, 320, 1280)}
    assert rows[64] < rows[320] < rows[1280]
    assert rows[64] <= 0.15 * 64  # was 21 px of tag on a 64 px image
    heights = {s: label_size("person 0.87", (s, s), default_line_width((s, s)))[1] for s in (64, 320, 1280)}
    assert heights[64] <= 0.15 * 64 and heights[64] < heights[320] < heights[1280]
    assert label_font((1280, 1280), 4) == (4 / 3, 3)  # YOLOv5's size at 1280 unchanged
    assert label_font((640, 640), 2) == (2 / 3, 1)


def test_line_width_still_applies():
    img = np.zeros((320, 320, 3), np.uint8)
    box = np.array([[80, 160, 240, 240]], np.float32)
    for lw in (2, 6):
        out = draw_detections(img, box, np.array([0.5]), np.array([0]), ["a"], lw, False, False)
        edge = (out[200, 60:100] == class_color(0)).all(axis=1).sum()  # the left edge, mid-height
        assert abs(int(edge) - lw) <= 1
    # a thin line also gives smaller text on a large image; a thick one on a small image is capped
    assert label_size("a 0.50", (1280, 1280), 1)[1] < label_size("a 0.50", (1280, 1280), 4)[1]
    assert label_size("a 0.50", (64, 64), 10)[1] <= 0.15 * 64


# ---- 3. truncated videos, symlink loops ---------------------------------------------------------


def _write_video(path: Path, n: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (48, 32))
    assert writer.isOpened()
    for i in range(n):
        writer.write(_image(32, 48, i))  # noise: every frame takes its share of the file
    writer.release()


def test_truncated_video_warns_with_name_and_counts(tmp_path, caplog):
    whole, cut = tmp_path / "whole.avi", tmp_path / "cut.avi"
    _write_video(whole, 10)
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="efyolo"):
        assert len(list(Sources(whole))) == 10
        assert not caplog.records
        frames = list(Sources(cut))
    if frames[0].frames is None:
        pytest.skip("this OpenCV reports no frame count for the cut file")
    assert 0 < len(frames) < frames[0].frames == 10
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"WARNING: video {cut}: read {len(frames)} of 10 frames (truncated or corrupt)"]


def test_no_frame_count_no_truncation_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="efyolo"):
        _warn_if_truncated("v.mp4", 3, None)
        _warn_if_truncated("v.mp4", 12, 10)  # more than reported: counts are approximate
    assert not caplog.records


def test_recursive_glob_survives_symlink_loops(tmp_path, caplog):
    d = tmp_path / "d"
    a = _write(d / "a.png", _image(8, 8))
    b = _write(d / "sub" / "b.png", _image(8, 8, 1))
    _symlink(d / "loop", ".")
    pattern = str(d / "**" / "*.png")
    with caplog.at_level(logging.WARNING, logger="efyolo"):
        assert _paths(pattern) == [str(a), str(b)]  # Python's glob: 82 paths, each file ~40 times
    (msg,) = [r.getMessage() for r in caplog.records]
    assert msg.startswith(f"WARNING: source pattern {pattern}: skipped 1 path(s)") and "symlink loop" in msg

    _symlink(d / "loop2", ".")  # two loops: Python's glob walk is exponential and never ends
    assert _paths(pattern) == [str(a), str(b)]
    assert _paths(d) == [str(a)]  # folders are not recursive: the links are folders, ignored


def test_glob_uses_each_file_once(tmp_path, caplog):
    a = _write(tmp_path / "a.png", _image(8, 8))
    _symlink(tmp_path / "c.png", "a.png")
    with caplog.at_level(logging.WARNING, logger="efyolo"):
        assert _paths(str(tmp_path / "*.png")) == [str(a)]
    assert [r.getMessage().count(str(tmp_path / "c.png")) for r in caplog.records] == [1]


# ---- 4. images whose decoder raises -------------------------------------------------------------


def _huge_bmp(path: Path) -> Path:
    """A BMP header claiming 200000 x 200000 pixels: OpenCV raises cv2.error instead of returning None."""
    header = b"BM" + (66).to_bytes(4, "little") + bytes(4) + (54).to_bytes(4, "little")
    info = (40).to_bytes(4, "little") + (200000).to_bytes(4, "little") * 2 + (1).to_bytes(2, "little")
    info += (24).to_bytes(2, "little") + bytes(24)
    path.write_bytes(header + info + bytes(12))
    return path


def test_image_whose_decoder_raises_is_skipped(tmp_path, caplog):
    good = _write(tmp_path / "a.png", _image(8, 8))
    huge = _huge_bmp(tmp_path / "huge.bmp")
    assert read_image(huge) is None
    sources = Sources(tmp_path)
    with caplog.at_level(logging.WARNING, logger="efyolo"):
        assert [f.path for f in sources] == [str(good)]
    assert sources.skipped == [str(huge)]
    (msg,) = [r.getMessage() for r in caplog.records]
    assert msg.startswith(f"WARNING: skipping image {huge}: cannot be read (") and "\n" not in msg
    with pytest.raises(EfyoloError, match="huge.bmp cannot be read"):
        list(Sources(huge))


def test_any_decoder_exception_is_skipped(tmp_path, monkeypatch, caplog):
    good = _write(tmp_path / "a.png", _image(8, 8))
    odd = _write(tmp_path / "b.png", _image(8, 8, 1))
    original = cv2.imdecode

    def imdecode(data, flags):
        if data.size == odd.stat().st_size and (data == np.fromfile(odd, np.uint8)).all():
            raise RuntimeError("decoder\nexploded")
        return original(data, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    sources = Sources([good, odd])
    with caplog.at_level(logging.WARNING, logger="efyolo"):
        assert [f.path for f in sources] == [str(good)]
    assert sources.skipped == [str(odd)]
    assert [r.getMessage() for r in caplog.records] == [
        f"WARNING: skipping image {odd}: cannot be read (RuntimeError: decoder exploded)"
    ]

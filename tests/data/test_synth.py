"""The built-in synthetic dataset: determinism, layout, label validity, box geometry, occlusion,
the cache, and the ``efyolo synth`` command."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from efyolo.cli import main
from efyolo.data import synth
from efyolo.data.synth import (
    MARKER,
    ObjectSpec,
    SynthConfig,
    dataset_name,
    default_dataset,
    draw_objects,
    generate_dataset,
    render_image,
)
from efyolo.data.synth_shapes import CLASS_NAMES
from efyolo.errors import EfyoloError

# No clutter, noise, blur, shading or outlines, one flat background colour, and every object with
# a visible pixel keeps its box: pixel-exact images whose boxes can be checked against the pixels.
CLEAN = SynthConfig(
    backgrounds=("flat",),
    clutter=0,
    noise=0,
    blur_prob=0,
    shading=0,
    outline_prob=0,
    min_visible=0.0,
)
LABEL_ROW = re.compile(r"^\d+ \d\.\d{6} \d\.\d{6} \d\.\d{6} \d\.\d{6}$")


def _data_files(root: Path) -> dict[str, bytes]:
    """Images and labels of a dataset folder, by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for sub in ("images", "labels")
        for p in sorted((root / sub).rglob("*"))
        if p.is_file()
    }


def _read_labels(root: Path, split: str) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted((root / "labels" / split).glob("*.txt")):
        lines = path.read_text().splitlines()
        for line in lines:
            assert LABEL_ROW.match(line), f"{path}: bad row {line!r}"
        out[path.stem] = np.array([[float(v) for v in line.split()] for line in lines]).reshape(
            -1, 5
        )
    return out


def test_same_seed_same_bytes_whatever_the_count(tmp_path):
    a = generate_dataset(tmp_path / "a", n_train=6, n_val=3, imgsz=96, seed=1, workers=1).parent
    b = generate_dataset(tmp_path / "b", n_train=6, n_val=3, imgsz=96, seed=1, workers=1).parent
    fewer = generate_dataset(tmp_path / "c", n_train=3, n_val=1, imgsz=96, seed=1, workers=1).parent
    other = generate_dataset(tmp_path / "d", n_train=6, n_val=3, imgsz=96, seed=2, workers=1).parent

    files_a = _data_files(a)
    assert len(files_a) == 2 * 9
    assert files_a == _data_files(b)
    # Image i depends on (seed, split, i) only, not on how many images are written.
    files_fewer = _data_files(fewer)
    assert files_fewer == {k: files_a[k] for k in files_fewer}
    files_other = _data_files(other)
    images = [k for k in files_a if k.endswith(".jpg")]
    assert all(files_a[k] != files_other[k] for k in images)


@pytest.mark.slow  # each spawned worker imports the package, torch included
def test_same_bytes_with_a_worker_pool(tmp_path):
    one = generate_dataset(tmp_path / "a", n_train=6, n_val=3, imgsz=96, seed=1, workers=1).parent
    pool = generate_dataset(tmp_path / "b", n_train=6, n_val=3, imgsz=96, seed=1, workers=2).parent
    assert _data_files(one) == _data_files(pool)


def test_layout_and_yaml(tmp_path):
    data = generate_dataset(tmp_path / "ds", n_train=5, n_val=3, imgsz=64, seed=0)
    root = (tmp_path / "ds").resolve()
    assert data == root / "data.yaml"
    spec = yaml.safe_load(data.read_text())
    assert spec == {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "nc": len(CLASS_NAMES),
        "names": list(CLASS_NAMES),
    }
    assert len(CLASS_NAMES) >= 6 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    for split, n in (("train", 5), ("val", 3)):
        stems = [f"{i:06d}" for i in range(n)]
        assert sorted(p.stem for p in (root / "images" / split).iterdir()) == stems
        assert sorted(p.stem for p in (root / "labels" / split).iterdir()) == stems
        assert all(p.suffix == ".jpg" for p in (root / "images" / split).iterdir())
    assert json.loads((root / MARKER).read_text())["complete"] is True


def test_labels_are_valid_and_images_decode(tmp_path):
    import cv2

    generate_dataset(tmp_path / "ds", n_train=24, n_val=4, imgsz=128, seed=3)
    rows = np.concatenate([*_read_labels(tmp_path / "ds", "train").values(), np.zeros((0, 5))])
    assert len(rows) > 24  # several objects per image on average
    cls, xywh = rows[:, 0], rows[:, 1:]
    assert np.all(cls == np.round(cls)) and cls.min() >= 0 and cls.max() < len(CLASS_NAMES)
    assert np.all(xywh[:, 2:] > 0)
    # The box lies inside the image: corners in [0, 1].
    x0y0, x1y1 = xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2
    assert x0y0.min() >= -1e-6 and x1y1.max() <= 1 + 1e-6
    image = cv2.imread(str(tmp_path / "ds" / "images" / "train" / "000000.jpg"))
    assert image.shape == (128, 128, 3)


@pytest.mark.parametrize("size", [64, 160])
def test_boxes_are_tight_around_the_drawn_pixels(size):
    n_boxes = 0
    for i in range(12):
        sample = render_image(np.random.default_rng([7, 0, i]), size, CLEAN)
        image = sample.image.astype(np.int16)
        background = image[0, 0] if len(sample.boxes) == 0 else None
        covered = np.zeros((size, size), bool)
        for x0, y0, x1, y1 in sample.boxes.astype(int):
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            covered[y0:y1, x0:x1] = True
        outside = image[~covered]  # (k, 3) pixels outside every box
        if background is None and len(outside):
            background = outside[0]
        # Outside all boxes there is nothing but the flat background.
        assert np.all(outside == background)
        differs = np.any(image != background, axis=2)  # (S, S) drawn pixels
        for x0, y0, x1, y1 in sample.boxes.astype(int):
            box = differs[y0:y1, x0:x1]
            # Tight: every edge row and column of the box holds a drawn pixel.
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
        n_boxes += len(sample.boxes)
    assert n_boxes > 12


def _canvas(size=100):
    return np.full((size, size, 3), 128, np.uint8)


def test_fully_hidden_object_gets_no_box():
    rng = np.random.default_rng(0)
    small, big = ObjectSpec(0, 50, 50, 16, 16), ObjectSpec(1, 50, 50, 60, 60)
    classes, boxes = draw_objects(_canvas(), [small, big], rng, SynthConfig(min_visible=0.0))
    assert classes.tolist() == [1]
    np.testing.assert_allclose(boxes[0], [20, 20, 80, 80], atol=1)
    # Drawn the other way round, both stay visible.
    classes, _ = draw_objects(_canvas(), [big, small], rng, SynthConfig(min_visible=0.6))
    assert sorted(classes.tolist()) == [0, 1]


def test_half_covered_object_follows_the_visibility_threshold():
    rng = np.random.default_rng(0)
    # The second rectangle covers the right half (x 40..50) of the first one (x 30..50).
    first, second = ObjectSpec(1, 40, 50, 20, 20), ObjectSpec(1, 60, 50, 40, 60)
    classes, _ = draw_objects(_canvas(), [first, second], rng, SynthConfig(min_visible=0.6))
    assert len(classes) == 1
    classes, boxes = draw_objects(_canvas(), [first, second], rng, SynthConfig(min_visible=0.4))
    assert len(classes) == 2
    # The kept box is the whole silhouette, the occluded half included (amodal).
    np.testing.assert_allclose(boxes[0], [30, 40, 50, 60], atol=1)


def test_box_is_clipped_at_the_image_border():
    classes, boxes = draw_objects(
        _canvas(), [ObjectSpec(1, 4, 50, 20, 10)], np.random.default_rng(0), CLEAN
    )
    assert classes.tolist() == [1]
    np.testing.assert_allclose(boxes[0], [0, 45, 14, 55], atol=1)


def test_default_knobs_give_varied_scenes():
    counts, classes, sides = [], [], []
    for i in range(40):
        sample = render_image(np.random.default_rng([0, 0, i]), 320)
        counts.append(len(sample.classes))
        classes += sample.classes.tolist()
        sides += (sample.boxes[:, 2:] - sample.boxes[:, :2]).ravel().tolist()
    assert set(classes) == set(range(len(CLASS_NAMES)))
    assert 3 <= np.mean(counts) <= 6 and max(counts) >= 7  # 1 to 8 objects, minus the hidden ones
    assert min(sides) >= 5  # no object below ~8 px (a truncated one may lose a quarter)
    assert 100 <= max(sides) <= 0.75 * 320  # large objects, up to about half the image


def _object_sides(config: SynthConfig, n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.array([max(o.w, o.h) for _ in range(n) for o in synth.sample_objects(rng, 192, config)])


def test_size_law_spreads_object_sides():
    """Log-uniform (the default) against uniform in the square root: both span ~8 px to half the
    image; the square-root law has fewer objects whose longest side is under 16 px (aspect ratios
    make the longest side longer than the drawn ``side``, the geometric mean of the two)."""
    log_sides = _object_sides(SynthConfig())
    sqrt_sides = _object_sides(SynthConfig(size_law="sqrt"))
    for sides in (log_sides, sqrt_sides):
        assert sides.min() >= 8 and sides.max() <= 0.5 * 192 + 1e-6
    assert 0.15 < (log_sides < 16).mean() < 0.25  # measured 0.19
    assert 0.07 < (sqrt_sides < 16).mean() < 0.15  # measured 0.11
    with pytest.raises(EfyoloError, match="size_law.*'cubic'"):
        SynthConfig(size_law="cubic")


def test_jpeg_subsampling_keeps_colour_detail(tmp_path):
    """4:4:4 JPEGs keep the colour edges that 4:2:0 halves (small shapes of a colour close in
    brightness to their background lose their outline at 4:2:0)."""
    errors = {}
    for mode in ("4:2:0", "4:4:4"):
        config = SynthConfig(jpeg_subsampling=mode, jpeg_quality=(90, 90))
        generate_dataset(tmp_path / mode, n_train=3, n_val=1, imgsz=96, seed=0, config=config)
        drawn = [render_image(np.random.default_rng([0, 0, i]), 96, config).image for i in range(3)]
        decoded = [cv2.imread(str(tmp_path / mode / "images" / "train" / f"{i:06d}.jpg")) for i in range(3)]
        errors[mode] = np.mean([np.abs(a.astype(float) - b).mean() for a, b in zip(drawn, decoded)])
    assert errors["4:4:4"] < 0.8 * errors["4:2:0"], errors
    with pytest.raises(EfyoloError, match="jpeg_subsampling.*'4:1:1'"):
        SynthConfig(jpeg_subsampling="4:1:1")


def test_default_dataset_is_generated_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("EFYOLO_CACHE", str(tmp_path / "cache"))
    params = dict(n_train=3, n_val=2, imgsz=64, seed=0)
    data = default_dataset(**params)
    assert data.parent == (tmp_path / "cache" / "synth-v3-3-2-64-s0").resolve()
    assert yaml.safe_load(data.read_text())["path"] == str(data.parent)
    assert len(list((data.parent / "images" / "train").iterdir())) == 3
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        "synth-v3-3-2-64-s0"
    ]  # no temp left

    def must_not_run(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(synth, "_write_dataset", must_not_run)
    assert default_dataset(**params) == data
    assert dataset_name() == "synth-v3-800-200-320-s0"
    assert dataset_name(config=SynthConfig(clutter=0)).startswith("synth-v3-800-200-320-s0-c")


def test_default_dataset_replaces_an_incomplete_folder(tmp_path):
    final = tmp_path / dataset_name(n_train=2, n_val=1, imgsz=64)
    final.mkdir()
    (final / MARKER).write_text(json.dumps({"complete": False}))
    (final / "junk.txt").write_text("left over")
    data = default_dataset(tmp_path, n_train=2, n_val=1, imgsz=64)
    assert data.parent == final.resolve()
    assert not (final / "junk.txt").exists()
    assert len(list((final / "labels" / "val").iterdir())) == 1


def test_default_dataset_lost_race_keeps_the_winner(tmp_path, monkeypatch):
    # Another process finishes the same dataset while this one is still writing.
    write = synth._write_dataset
    final = tmp_path / dataset_name(n_train=2, n_val=1, imgsz=64)

    def write_and_lose(work, root, *args):
        out = write(work, root, *args)
        rival = tmp_path / "rival"
        rival.mkdir()
        write(rival, root, *args)
        (rival / "winner").write_text("")
        rival.rename(final)
        return out

    monkeypatch.setattr(synth, "_write_dataset", write_and_lose)
    data = default_dataset(tmp_path, n_train=2, n_val=1, imgsz=64)
    assert data == final.resolve() / "data.yaml"
    assert (final / "winner").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]


def test_regenerating_into_own_output_replaces_it(tmp_path):
    generate_dataset(tmp_path / "ds", n_train=4, n_val=1, imgsz=64)
    generate_dataset(tmp_path / "ds", n_train=2, n_val=1, imgsz=64)
    assert len(list((tmp_path / "ds" / "images" / "train").iterdir())) == 2


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(EfyoloError, match="not empty"):
        generate_dataset(tmp_path, n_train=1, n_val=1, imgsz=64)
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_cli_writes_the_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["synth", "--out", str(out), "--train", "4", "--val", "2", "--imgsz", "64"]) == 0
    assert len(list((out / "images" / "train").glob("*.jpg"))) == 4
    assert len(list((out / "labels" / "val").glob("*.txt"))) == 2
    assert str(out.resolve() / "data.yaml") in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra",
    [
        ["--train", "-1"],
        ["--val", "-3"],
        ["--imgsz", "16"],
        ["--seed", "-1"],
        ["--train", "0", "--val", "0"],
    ],
)
def test_cli_bad_arguments_exit_2(tmp_path, capsys, extra):
    assert main(["synth", "--out", str(tmp_path / "ds"), "--imgsz", "64", *extra]) == 2
    err = capsys.readouterr().err
    assert "error" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ds").exists()


def test_bad_api_arguments_raise(tmp_path):
    with pytest.raises(EfyoloError, match="n_train"):
        generate_dataset(tmp_path / "a", n_train=-1)
    with pytest.raises(EfyoloError, match="imgsz"):
        default_dataset(tmp_path, imgsz=31)
    with pytest.raises(EfyoloError, match="imgsz"):
        generate_dataset(tmp_path / "b", imgsz=64.0)
    with pytest.raises(EfyoloError, match="backgrounds"):
        SynthConfig(backgrounds=("plaid",))


def test_config_from_a_mapping_as_in_args_yaml(tmp_path, monkeypatch):
    """`train(synth={"config": {...}})` and a run's args.yaml (where tuples became lists) give the
    same dataset as the SynthConfig itself; an unknown key names itself."""
    monkeypatch.setenv("EFYOLO_CACHE", str(tmp_path / "cache"))
    config = SynthConfig(clutter=0, jpeg_quality=(80, 90))
    as_yaml = yaml.safe_load(yaml.safe_dump(dataclasses.asdict(config)))
    assert isinstance(as_yaml["jpeg_quality"], list)
    params = dict(n_train=2, n_val=1, imgsz=64)
    assert default_dataset(**params, config=as_yaml) == default_dataset(**params, config=config)
    with pytest.raises(EfyoloError, match="unknown key.*'clutterr'"):
        default_dataset(**params, config={"clutterr": 1})
    with pytest.raises(EfyoloError, match="synthetic dataset config.*clutter"):
        default_dataset(**params, config={"clutter": "many"})

"""Dataset YAML, YOLO label checks, the scan cache, COCO JSON splits and conversions."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efyolo.data import split as dataset_mod
from efyolo.data.convert import coco_to_yolo, yolo_to_coco
from efyolo.data.coco_json import image_id_from_path
from efyolo.data.config import load_data_config
from efyolo.data.scan import scan_split
from efyolo.data.labels import img2label_paths
from efyolo.errors import EfyoloError


def write_image(path: Path, w: int = 64, h: int = 48, orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (w, h), (120, 60, 30))
    if orientation is None:
        im.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(path, exif=exif)
    return path


def make_yolo(root: Path, labels: dict[str, str], names=("cat", "dog"), extra_yaml: str = "") -> Path:
    """``root/images/val/<stem>.jpg`` for every key, label text as given (None: no file)."""
    for stem, text in labels.items():
        write_image(root / "images" / "val" / f"{stem}.jpg")
        if text is not None:
            (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
            (root / "labels" / "val" / f"{stem}.txt").write_text(text)
    yaml_path = root / "data.yaml"
    yaml_path.write_text(f"path: .\ntrain: images/val\nval: images/val\nnames: {list(names)}\n{extra_yaml}")
    return yaml_path


# ---------------------------------------------------------------- config


def test_config_resolves_paths_and_names(tmp_path: Path) -> None:
    write_image(tmp_path / "d" / "images" / "a" / "1.png")
    write_image(tmp_path / "d" / "images" / "b" / "2.png")
    (tmp_path / "d" / "list.txt").write_text("images/b/2.png\n# comment\n\n")
    (tmp_path / "cfg").mkdir()
    y = tmp_path / "cfg" / "data.yaml"
    y.write_text("path: ../d\ntrain: [images/a, list.txt]\nval: images/b\nnames: {0: x, 1: y}\nnc: 2\n")
    cfg = load_data_config(y)
    assert cfg.root == (tmp_path / "d").resolve() and cfg.names == ["x", "y"] and cfg.nc == 2
    assert cfg.split_sources("train") == [(tmp_path / "d/images/a").resolve(), (tmp_path / "d/list.txt").resolve()]
    index = scan_split(cfg, "train", cache=False)
    assert [Path(f).name for f in index.im_files] == ["1.png", "2.png"]
    with pytest.raises(EfyoloError, match="no 'test' key"):
        cfg.split_sources("test")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("train: .\nval: .\n", "no 'names' key"),
        ("names: [a]\n", "no 'train', 'val' or 'test'"),
        ("val: nowhere\nnames: [a]\n", r"'val': .*nowhere does not exist"),
        ("path: missing\nval: .\nnames: [a]\n", "'path'"),
        ("val: .\nnames: [a, b]\nnc: 3\n", "'nc' is 3 but 'names' has 2"),
        ("val: .\nnames: {0: a, 2: b}\n", "mapping keys must be 0..1"),
        ("val: .\nnames: [a\n", "malformed YAML"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path: Path, text: str, match: str) -> None:
    y = tmp_path / "data.yaml"
    y.write_text(text)
    with pytest.raises(EfyoloError, match=match) as err:
        load_data_config(y)
    assert str(y) in str(err.value)


def test_missing_yaml_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(EfyoloError, match="not found"):
        load_data_config(tmp_path / "nope.yaml")
    (tmp_path / "images" / "val").mkdir(parents=True)
    y = tmp_path / "data.yaml"
    y.write_text("val: images/val\nnames: [a]\n")
    with pytest.raises(EfyoloError, match="no images found in"):
        scan_split(load_data_config(y), "val")


# ---------------------------------------------------------------- labels


def test_label_paths_replace_last_images_component() -> None:
    p = os.sep.join(["", "data", "images", "x", "images", "val", "a.b.jpg"])
    assert img2label_paths([p]) == [os.sep.join(["", "data", "images", "x", "labels", "val", "a.b.txt"])]


def test_label_problems_reported_with_file_and_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = "\n".join([
        "0 0.5 0.5 0.2 0.2",        # 1 ok
        "1 0.5 0.5",                 # 2 wrong column count
        "0 0.5 x 0.2 0.2",           # 3 not a number
        "2 0.5 0.5 0.2 0.2",         # 4 class out of range
        "0.5 0.5 0.5 0.2 0.2",       # 5 class not an integer
        "0 0.5 0.5 0.0 0.2",         # 6 zero area
        "0 0.95 0.5 0.2 0.2",        # 7 outside by 0.05 -> dropped
        "1 0.902 0.5 0.2 0.2",       # 8 outside by 0.002 -> clipped, kept
        "0 0.5 0.5 0.2 0.2",         # 9 duplicate of line 1
        "1 0.1 0.1 0.3 0.1 0.2 0.4",  # 10 polygon -> its box, kept
        "0 nan 0.5 0.2 0.2",         # 11 not finite
    ]) + "\n"
    y = make_yolo(tmp_path, {"bad": bad, "good": "1 0.3 0.3 0.1 0.1\n", "empty": "", "nolabel": None})
    with caplog.at_level(logging.WARNING, logger="efyolo"):
        index = scan_split(load_data_config(y), "val")
    label_file = str(tmp_path.resolve() / "labels" / "val" / "bad.txt")
    lines = {int(m.split(f"{label_file}:")[1].split(":")[0]) for m in index.problems if m.startswith(label_file)}
    assert lines == {2, 3, 4, 5, 6, 7, 8, 9, 11}
    assert any(f"{label_file}:3: not a number: 'x'" == m for m in index.problems)
    assert any(m.startswith(f"{label_file}:8:") and "clipped" in m for m in index.problems)
    assert index.n_dropped == 8 and index.n_backgrounds == 2 and len(index) == 4
    assert [r.getMessage() for r in caplog.records][: len(index.problems)] == index.problems
    rec = {Path(r.im_file).stem: r for r in index}
    assert rec["bad"].labels.shape == (3, 5) and rec["bad"].labels.dtype == np.float32
    np.testing.assert_allclose(rec["bad"].labels[1], [1, 0.901, 0.5, 0.198, 0.2], atol=1e-6)  # clipped
    np.testing.assert_allclose(rec["bad"].labels[2], [1, 0.2, 0.25, 0.2, 0.3], atol=1e-6)  # polygon box
    assert rec["bad"].shape == (48, 64)
    assert index.summary().startswith("val: 4 images, 4 boxes, 2 backgrounds, 8 label rows dropped")


def test_corrupt_images_skipped_and_exif_applied(tmp_path: Path) -> None:
    y = make_yolo(tmp_path, {"ok": "0 0.5 0.5 0.1 0.1\n"})
    (tmp_path / "images" / "val" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    write_image(tmp_path / "images" / "val" / "rotated.jpg", w=40, h=20, orientation=6)
    index = scan_split(load_data_config(y), "val", cache=False)
    assert index.n_listed == 3 and index.n_corrupt == 1 and len(index) == 2
    assert any("broken.jpg" in m and "skipped" in m for m in index.problems)
    shapes = {Path(r.im_file).stem: r.shape for r in index}
    assert shapes == {"ok": (48, 64), "rotated": (40, 20)}  # (h, w) of the upright image
    assert "1 corrupt images skipped" in index.summary()


# ---------------------------------------------------------------- cache


def test_cache_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    y = make_yolo(tmp_path, {"a": "0 0.5 0.5 0.1 0.1\n", "b": "1 0.5 0.5 0.2 0.2\n9 0.5 0.5 0.2 0.2\n"})
    cfg = load_data_config(y)
    first = scan_split(cfg, "val")
    assert not first.from_cache and first.cache_path == tmp_path.resolve() / "labels" / "val.cache"
    second = scan_split(cfg, "val")
    assert second.from_cache and second.problems == first.problems and second.n_dropped == 1
    np.testing.assert_array_equal(second[1].labels, first[1].labels)
    # editing a label file (size and mtime change) invalidates the cache
    (tmp_path / "labels" / "val" / "a.txt").write_text("1 0.4 0.4 0.1 0.1\n0 0.6 0.6 0.1 0.1\n")
    third = scan_split(cfg, "val")
    assert not third.from_cache and len(third[0].labels) == 2
    # so does a new label file where there was none
    write_image(tmp_path / "images" / "val" / "c.jpg")
    assert not scan_split(cfg, "val").from_cache
    assert scan_split(cfg, "val").from_cache

    # an unwritable folder: no cache, no error
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("read-only")

    monkeypatch.setattr(dataset_mod.tempfile, "mkstemp", refuse)
    (tmp_path / "labels" / "val.cache").unlink()
    index = scan_split(cfg, "val")
    assert index.cache_path is None and len(index) == 3
    # a corrupt cache file is ignored
    monkeypatch.undo()
    (tmp_path / "labels" / "val.cache").write_bytes(b"garbage")
    assert not scan_split(cfg, "val").from_cache


# ---------------------------------------------------------------- COCO


def make_coco(root: Path) -> Path:
    """Two images, categories with ids 3 and 7, one crowd annotation, one bad box."""
    write_image(root / "imgs" / "000000000001.jpg", 100, 50)
    write_image(root / "imgs" / "sub" / "000000000002.jpg", 80, 80)
    data = {
        "images": [
            {"id": 1, "file_name": "000000000001.jpg", "width": 100, "height": 50},
            {"id": 2, "file_name": "sub/000000000002.jpg", "width": 80, "height": 80},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 10], "area": 200, "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 7, "bbox": [50, 0, 50, 50], "area": 2500, "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 7, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 1},
            {"id": 13, "image_id": 2, "category_id": 3, "bbox": [70, 70, 30, 30], "area": 900, "iscrowd": 0},
        ],
    }
    (root / "ann.json").write_text(json.dumps(data))
    return root / "ann.json"


def test_coco_json_split(tmp_path: Path) -> None:
    make_coco(tmp_path)
    y = tmp_path / "data.yaml"
    y.write_text("val: ann.json\nval_images: imgs\n")
    cfg = load_data_config(y)
    assert cfg.names == ["cat", "dog"]  # ascending category id: 3 -> 0, 7 -> 1
    index = scan_split(cfg, "val")
    assert len(index) == 2 and index.n_crowd == 1 and index.n_dropped == 1
    np.testing.assert_allclose(index[1].crowd, [[1, 0.25, 0.25, 0.5, 0.5]])  # kept apart
    assert any("ann.json: annotation 13" in m and "outside the image" in m for m in index.problems)
    np.testing.assert_allclose(index[0].labels, [[0, 0.2, 0.3, 0.2, 0.2], [1, 0.75, 0.5, 0.5, 1.0]], atol=1e-6)
    assert index[0].shape == (50, 100) and len(index[1].labels) == 0
    cached = scan_split(cfg, "val")
    assert cached.from_cache and cached.n_crowd == 1
    np.testing.assert_array_equal(cached[1].crowd, index[1].crowd)
    # names in the YAML must agree with the categories
    y.write_text("val: ann.json\nval_images: imgs\nnames: [a, b, c]\n")
    with pytest.raises(EfyoloError, match="2 categories"):
        scan_split(load_data_config(y), "val")


def test_coco_images_folder_by_convention(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "val2017" / "5.jpg")
    (tmp_path / "annotations").mkdir()
    data = {"images": [{"id": 5, "file_name": "5.jpg", "width": 64, "height": 48}],
            "categories": [{"id": 1, "name": "a"}], "annotations": []}
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    (tmp_path / "data.yaml").write_text("val: annotations/instances_val2017.json\n")
    index = scan_split(load_data_config(tmp_path / "data.yaml"), "val")
    assert len(index) == 1 and index.n_backgrounds == 1


def test_malformed_coco_json(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "ann.json").write_text('{"images": [], "categories": [}')
    (tmp_path / "data.yaml").write_text("val: ann.json\nval_images: imgs\nnames: [a]\n")
    with pytest.raises(EfyoloError, match=r"ann.json: malformed JSON at line 1"):
        scan_split(load_data_config(tmp_path / "data.yaml"), "val")


def test_convert_coco_to_yolo_and_back(tmp_path: Path) -> None:
    json_path = make_coco(tmp_path)
    report = coco_to_yolo(json_path, tmp_path / "imgs", tmp_path / "out", split="val")
    assert report.images == 2 and report.boxes == 2 and len(report.problems) == 1
    cfg = load_data_config(tmp_path / "out" / "data.yaml")
    assert cfg.names == ["cat", "dog"]
    yolo = scan_split(cfg, "val")
    coco = scan_split(load_data_config(_coco_yaml(tmp_path)), "val")
    assert [Path(f).name for f in yolo.im_files] == [Path(f).name for f in coco.im_files]
    for a, b in zip(yolo, coco):
        np.testing.assert_allclose(a.labels, b.labels, atol=1e-6)
    assert (tmp_path / "out" / "images" / "val" / "sub" / "000000000002.jpg").is_symlink()

    back = yolo_to_coco(cfg, "val", tmp_path / "back.json")
    data = json.loads(back.out.read_text())
    assert [im["id"] for im in data["images"]] == [1, 2]  # numeric stems become the ids
    assert data["categories"] == [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]
    boxes = {a["category_id"]: a["bbox"] for a in data["annotations"]}
    np.testing.assert_allclose(boxes[0], [10, 10, 20, 10], atol=1e-3)
    np.testing.assert_allclose(boxes[1], [50, 0, 50, 50], atol=1e-3)


def _coco_yaml(root: Path) -> Path:
    y = root / "coco.yaml"
    y.write_text("val: ann.json\nval_images: imgs\n")
    return y


def test_image_id_from_path() -> None:
    assert image_id_from_path("/x/000000397133.jpg") == 397133
    assert image_id_from_path("/x/img_7.png") == "img_7"


def test_decimal_rounding_is_clipped_silently(tmp_path: Path) -> None:
    from efyolo.data.labels import read_label_file

    path = tmp_path / "a.txt"
    # x2 = 0.8 + 0.400001 / 2 = 1.0000005: a 6-decimal rounding artefact, not a labelling mistake
    path.write_text("0 0.800000 0.5 0.400001 0.2\n1 0.5 0.5 0.2 1.01\n")
    result = read_label_file(str(path), nc=2)
    assert len(result.labels) == 2
    assert result.labels[0, 1] + result.labels[0, 3] / 2 <= 1.0
    assert len(result.problems) == 1 and ":2:" in result.problems[0]

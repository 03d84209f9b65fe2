"""``efyolo convert`` never destroys its inputs and never loses annotations silently.

COCO -> YOLO: in-place conversion, absolute and ``..`` file names, foreign files at the output,
the input JSON as an output, duplicate image ids, unknown image ids, wrong sizes in the JSON and
unreadable images. YOLO -> COCO: an ``--out`` that is an input. Tiny images, all in tmp_path.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efyolo.cli import main
from efyolo.data.convert import ConvertReport, coco_to_yolo, yolo_to_coco
from efyolo.data.config import load_data_config
from efyolo.data.scan import scan_split
from efyolo.errors import EfyoloError


def write_image(path: Path, w: int = 32, h: int = 32, color=(200, 30, 30), orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.new("RGB", (w, h), color).save(path, exif=exif)
    return path


def write_json(path: Path, images: list[dict], annotations: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path


def box(ann_id: int, image_id, bbox=(0, 0, 16, 16)) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": list(bbox), "iscrowd": 0}


def two_images(images_dir: Path) -> tuple[list[dict], list[dict]]:
    """``a.png`` (one box) and ``b.png`` (two boxes), 32x32, different pixels."""
    write_image(images_dir / "a.png", color=(10, 20, 30))
    write_image(images_dir / "b.png", color=(40, 50, 60))
    images = [{"id": 1, "file_name": "a.png", "width": 32, "height": 32},
              {"id": 2, "file_name": "b.png", "width": 32, "height": 32}]
    return images, [box(1, 1), box(2, 2), box(3, 2, (16, 16, 16, 16))]


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``: file bytes, or the link target of a symlink (scan caches,
    which reading a split may write, left out)."""
    return {str(p.relative_to(folder)): (f"-> {p.readlink()}" if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if (p.is_symlink() or p.is_file()) and p.suffix != ".cache"}


# ---------------------------------------------------------------- in place, unsafe names


@pytest.mark.parametrize("copy", [False, True])
def test_in_place_conversion_leaves_the_images(tmp_path: Path, copy: bool) -> None:
    images_dir = tmp_path / "images" / "val"
    json_path = write_json(tmp_path / "ann.json", *two_images(images_dir))
    before = snapshot(images_dir)
    report = coco_to_yolo(json_path, images_dir, tmp_path, split="val", copy_images=copy)
    assert snapshot(images_dir) == before  # no unlinking, no self-symlink
    assert (report.images, report.boxes, report.skipped, report.dropped) == (2, 3, 0, 0)
    assert len(np.loadtxt(tmp_path / "labels" / "val" / "b.txt", ndmin=2)) == 2
    index = scan_split(load_data_config(tmp_path / "data.yaml"), "val", cache=False)
    assert len(index) == 2 and index.n_instances == 3


def test_in_place_conversion_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images_dir = tmp_path / "images" / "val"
    json_path = write_json(tmp_path / "ann.json", *two_images(images_dir))
    before = snapshot(images_dir)
    args = ["convert", "--from", "coco", "--to", "yolo", "--json", str(json_path), "--images", str(images_dir),
            "--out", str(tmp_path), "--copy-images"]
    assert main(args) == 0
    assert "2 images, 3 boxes" in capsys.readouterr().out
    assert snapshot(images_dir) == before
    assert main(args) == 0  # a second run is a no-op on the images too
    assert snapshot(images_dir) == before


def test_absolute_and_parent_file_names_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images, anns = two_images(tmp_path / "imgs")
    outside = tmp_path / "outside"
    secret = write_image(outside / "secret.png", color=(1, 2, 3))
    (outside / "notes.txt").write_text("not an image")
    images += [{"id": 3, "file_name": str(secret), "width": 32, "height": 32},
               {"id": 4, "file_name": str(outside / "notes.txt"), "width": 32, "height": 32},
               {"id": 5, "file_name": "../outside/secret.png", "width": 32, "height": 32},
               {"id": 6, "file_name": "sub/../a.png"}]  # stays inside: the same file as image 1
    anns += [box(4, 3), box(5, 5)]
    json_path = write_json(tmp_path / "ann.json", images, anns)
    before = snapshot(outside)
    with caplog.at_level(logging.WARNING, logger="efyolo"):
        report = coco_to_yolo(json_path, tmp_path / "imgs", tmp_path / "out")
    assert snapshot(outside) == before  # not linked, not replaced, no label written there
    assert (report.images, report.skipped, report.dropped) == (2, 4, 2)
    for image_id, name in ((3, str(secret)), (4, str(outside / "notes.txt")), (5, "../outside/secret.png")):
        assert f"{json_path}: image {image_id}: file_name {name!r} is absolute or leaves the images folder, skipped" \
            in report.problems
    assert any("image 6: file_name 'sub/../a.png' has the same label file as image 1" in m for m in report.problems)
    assert "4 images skipped, 2 boxes dropped" in report.summary()
    assert any("is absolute or leaves the images folder" in r.getMessage() for r in caplog.records)
    written = {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert written == {"data.yaml", "images/val/a.png", "images/val/b.png", "labels/val/a.txt", "labels/val/b.txt"}


def test_split_name_must_stay_inside_out(tmp_path: Path) -> None:
    json_path = write_json(tmp_path / "ann.json", *two_images(tmp_path / "imgs"))
    with pytest.raises(EfyoloError, match=r"split '\.\./x': must be a plain folder name"):
        coco_to_yolo(json_path, tmp_path / "imgs", tmp_path / "out", split="../x")
    assert not (tmp_path / "out").exists() and not (tmp_path / "labels").exists()


# ---------------------------------------------------------------- existing files at the output


def test_foreign_file_at_the_destination_is_an_error(tmp_path: Path) -> None:
    json_path = write_json(tmp_path / "ann.json", *two_images(tmp_path / "imgs"))
    foreign = write_image(tmp_path / "out" / "images" / "val" / "b.png", color=(0, 255, 0))
    kept = foreign.read_bytes()
    with pytest.raises(EfyoloError) as err:
        coco_to_yolo(json_path, tmp_path / "imgs", tmp_path / "out")
    assert str(err.value) == (f"{foreign}: exists and is neither {tmp_path / 'imgs' / 'b.png'} nor a link to it; "
                              "not replacing it (remove it or choose another --out)")
    assert foreign.read_bytes() == kept
    assert not (tmp_path / "out" / "images" / "val" / "a.png").exists()  # checked before any write
    assert not (tmp_path / "out" / "labels").exists() and not (tmp_path / "out" / "data.yaml").exists()


def test_identical_copies_are_kept_and_old_links_replaced(tmp_path: Path) -> None:
    json_path = write_json(tmp_path / "ann.json", *two_images(tmp_path / "imgs"))
    out_images = tmp_path / "out" / "images" / "val"
    out_images.mkdir(parents=True)
    (out_images / "a.png").write_bytes((tmp_path / "imgs" / "a.png").read_bytes())  # an earlier --copy-images
    other = write_image(tmp_path / "other.png", color=(9, 9, 9))
    (out_images / "b.png").symlink_to(other)  # an earlier conversion from another folder
    report = coco_to_yolo(json_path, tmp_path / "imgs", tmp_path / "out")
    assert report.images == 2
    assert not (out_images / "a.png").is_symlink()
    assert (out_images / "b.png").resolve() == (tmp_path / "imgs" / "b.png").resolve()
    assert other.exists()  # only the link was replaced


def test_input_json_as_an_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images, anns = two_images(tmp_path / "imgs")
    json_path = write_json(tmp_path / "out" / "labels" / "val" / "a.txt", images, anns)  # a.png's label file
    text = json_path.read_text()
    with pytest.raises(EfyoloError, match=r"labels/val/a\.txt: is an input of this conversion; choose another --out"):
        coco_to_yolo(json_path, tmp_path / "imgs", tmp_path / "out")
    assert json_path.read_text() == text
    assert not (tmp_path / "out" / "images").exists() and not (tmp_path / "out" / "data.yaml").exists()

    yaml_json = write_json(tmp_path / "d" / "data.yaml", images, anns)
    args = ["convert", "--from", "coco", "--to", "yolo", "--json", str(yaml_json), "--images", str(tmp_path / "imgs"),
            "--out", str(tmp_path / "d")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"efyolo convert: error: {yaml_json}: is an input of this conversion; choose another --out\n"
    assert yaml_json.read_text() == text


# ---------------------------------------------------------------- ids, sizes, unreadable images


def test_unknown_and_duplicate_image_ids(tmp_path: Path) -> None:
    images, anns = two_images(tmp_path / "imgs")
    write_image(tmp_path / "imgs" / "c.png", color=(70, 80, 90))
    images.append({"id": 2, "file_name": "c.png", "width": 32, "height": 32})  # repeats b.png's id
    anns.append(box(9, 99))
    json_path = write_json(tmp_path / "ann.json", images, anns)
    report = coco_to_yolo(json_path, tmp_path / "imgs", tmp_path / "out")
    assert f"{json_path}: annotation 9: unknown image_id 99, dropped" in report.problems
    assert (f"{json_path}: images[2]: duplicate image id 2 (file_name 'c.png'), skipped; "
            "its annotations go to the first image with this id") in report.problems
    assert (report.images, report.boxes, report.skipped, report.dropped) == (2, 3, 1, 1)
    assert not (tmp_path / "out" / "labels" / "val" / "c.txt").exists()  # not given b.png's boxes
    assert not (tmp_path / "out" / "images" / "val" / "c.png").exists()
    assert report.summary() == (f"2 images, 3 boxes -> {tmp_path / 'out' / 'data.yaml'}, 1 images skipped, "
                                "1 boxes dropped, 2 problems (see warnings)")


def test_coco_split_skips_duplicate_ids(tmp_path: Path) -> None:
    images, anns = two_images(tmp_path / "imgs")
    write_image(tmp_path / "imgs" / "c.png", color=(70, 80, 90))
    images.append({"id": 2, "file_name": "c.png", "width": 32, "height": 32})
    anns.append(box(9, 99))
    write_json(tmp_path / "ann.json", images, anns)
    (tmp_path / "data.yaml").write_text("val: ann.json\nval_images: imgs\n")
    index = scan_split(load_data_config(tmp_path / "data.yaml"), "val", cache=False)
    assert [Path(f).name for f in index.im_files] == ["a.png", "b.png"]
    assert [len(r.labels) for r in index] == [1, 2] and index.n_dropped == 1
    assert any("images[2]: duplicate image id 2 (file_name 'c.png'), skipped" in m for m in index.problems)
    assert any(m.endswith("annotation 9: unknown image_id 99, dropped") for m in index.problems)


def test_real_image_size_wins_over_the_json(tmp_path: Path) -> None:
    write_image(tmp_path / "imgs" / "a.png", 64, 32)
    write_image(tmp_path / "imgs" / "r.jpg", 64, 32, orientation=6)  # upright: 32 wide, 64 high
    images = [{"id": 1, "file_name": "a.png", "width": 128, "height": 32},  # wrong width
              {"id": 2, "file_name": "r.jpg", "width": 32, "height": 64}]  # right, after EXIF
    json_path = write_json(tmp_path / "ann.json", images, [box(1, 1, (0, 0, 32, 16)), box(2, 2, (0, 0, 16, 32))])
    report = coco_to_yolo(json_path, tmp_path / "imgs", tmp_path / "out")
    labels = tmp_path / "out" / "labels" / "val"
    np.testing.assert_allclose(np.loadtxt(labels / "a.txt"), [0, 0.25, 0.25, 0.5, 0.5])
    np.testing.assert_allclose(np.loadtxt(labels / "r.txt"), [0, 0.25, 0.25, 0.5, 0.5])
    src = tmp_path / "imgs" / "a.png"
    assert report.problems == [
        f"{json_path}: image 1: size 128x32 in the JSON but 64x32 in {src}; boxes normalised by the image's size"
    ]
    # the same JSON as a split (efyolo val / train on COCO JSON) uses the real size too
    (tmp_path / "data.yaml").write_text("val: ann.json\nval_images: imgs\n")
    index = scan_split(load_data_config(tmp_path / "data.yaml"), "val", cache=False)
    np.testing.assert_allclose(index[0].labels, [[0, 0.25, 0.25, 0.5, 0.5]], rtol=1e-6)
    assert any("size 128x32 in the JSON but 64x32" in m for m in index.problems)


def test_unreadable_image_is_skipped(tmp_path: Path) -> None:
    images, anns = two_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "b.png").write_bytes(b"not a png")
    json_path = write_json(tmp_path / "ann.json", images, anns)
    report = coco_to_yolo(json_path, tmp_path / "imgs", tmp_path / "out")
    assert (report.images, report.boxes, report.skipped, report.dropped) == (1, 1, 1, 2)
    assert any(m.startswith(f"{tmp_path / 'imgs' / 'b.png'}: unreadable image") and m.endswith(", skipped")
               for m in report.problems)
    assert not (tmp_path / "out" / "labels" / "val" / "b.txt").exists()


# ---------------------------------------------------------------- YOLO -> COCO


def yolo_dataset(root: Path) -> Path:
    write_image(root / "images" / "val" / "1.png")
    write_image(root / "images" / "val" / "2.png", color=(5, 5, 5))
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "val" / "1.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (root / "data.yaml").write_text("val: images/val\nnames: [thing]\n")
    return root / "data.yaml"


def test_yolo_to_coco_refuses_to_overwrite_an_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = yolo_dataset(tmp_path / "ds")
    before = snapshot(tmp_path / "ds")
    cfg = load_data_config(data)
    for out in (data, tmp_path / "ds" / "images" / "val" / "2.png", tmp_path / "ds" / "labels" / "val" / "1.txt"):
        with pytest.raises(EfyoloError, match=f"^{out}: is an input of this conversion; choose another --out$"):
            yolo_to_coco(cfg, "val", out)
    with pytest.raises(EfyoloError, match="is a folder, expected a file to write"):
        yolo_to_coco(cfg, "val", tmp_path / "ds" / "images")
    (tmp_path / "link.json").symlink_to(data)
    with pytest.raises(EfyoloError, match=f"would overwrite {data}, an input"):
        yolo_to_coco(cfg, "val", tmp_path / "link.json")
    assert snapshot(tmp_path / "ds") == before
    assert main(["convert", "--from", "yolo", "--to", "coco", "--data", str(data), "--out", str(data)]) == 2
    err = capsys.readouterr().err
    assert err == f"efyolo convert: error: {data}: is an input of this conversion; choose another --out\n"
    assert snapshot(tmp_path / "ds") == before


def test_yolo_to_coco_replaces_an_earlier_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = yolo_dataset(tmp_path / "ds")
    out = tmp_path / "val.json"
    out.write_text("{}")
    assert main(["convert", "--from", "yolo", "--to", "coco", "--data", str(data), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"converted yolo -> coco: 2 images, 1 boxes -> {out}\n"
    assert len(json.loads(out.read_text())["images"]) == 2


def test_summary_counts() -> None:
    assert ConvertReport(Path("d.yaml"), 3, 4).summary() == "3 images, 4 boxes -> d.yaml"
    report = ConvertReport(Path("d.yaml"), 3, 4, skipped=1, dropped=2, problems=["a", "b"])
    assert report.summary() == (
        "3 images, 4 boxes -> d.yaml, 1 images skipped, 2 boxes dropped, 2 problems (see warnings)"
    )

"""COCO instances JSON: as a dataset split, and conversion to and from YOLO label files.

As a split (``val: annotations/instances_val2017.json`` in the dataset YAML):

* Images: ``<images folder>/<file_name>``. The folder is the YAML key ``<split>_images``; without
  it, :func:`coco_images_dir` tries, for ``.../annotations/instances_val2017.json``,
  ``.../images/val2017``, ``.../val2017``, ``.../annotations/images/val2017``,
  ``.../annotations/val2017`` and ``.../annotations/images``, in that order.
* Classes: category ids in ascending order become class indices ``0..K-1`` (so COCO's 80
  categories with ids 1..90 become 0..79); names come from the YAML or from the categories.
* ``bbox`` ``[x, y, w, h]`` in pixels is normalised by the image entry's ``width``/``height``
  and checked with the same rules as YOLO label rows (:func:`efyolo.data.labels.clean_labels`),
  problems named ``<json>: annotation <id>``.
* ``iscrowd: 1`` annotations are kept apart as crowd regions (:attr:`ImageRecord.crowd`): not
  training targets, but ``efyolo val`` gives them to the evaluator, which ignores detections on
  them exactly as COCOeval does. Area ranges (AP small/medium/large) use the box area ``w * h``,
  not the JSON's (segmentation) ``area``, so on COCO itself only those three differ from
  COCOeval on the original JSON.

Conversion: :func:`coco_to_yolo` writes ``OUT/images/<split>/`` (symlinks to the images, or
copies), ``OUT/labels/<split>/*.txt`` and ``OUT/data.yaml`` (YOLO labels have no crowd regions:
they are left out); :func:`yolo_to_coco` writes one instances JSON for a split of any dataset,
with ``category_id`` = class index.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from efyolo.data.config import DataConfig, load_data_config
from efyolo.data.dataset import (
    ImageRecord,
    SplitIndex,
    files_hash,
    load_cache,
    log_problems,
    save_cache,
    scan_split,
)
from efyolo.data.images import check_image
from efyolo.data.labels import TOLERANCE, clean_labels
from efyolo.errors import EfyoloError
from efyolo.yaml_io import read_json_file
from efyolo.ops.boxes import xywhn2xyxy, xyxy2ltwh


def read_coco_json(path: str | Path) -> dict[str, Any]:
    """Load an instances JSON and check the parts we use (``images``, ``categories``, optional
    ``annotations``); :class:`EfyoloError` naming the file and the problem."""
    path = Path(path)
    data = read_json_file(path, "COCO JSON")
    if not isinstance(data, dict):
        raise EfyoloError(f"{path}: expected a COCO instances object with 'images' and 'categories'")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise EfyoloError(f"{path}: missing '{key}' list")
    if not isinstance(data.setdefault("annotations", []), list):
        raise EfyoloError(f"{path}: 'annotations' must be a list")
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise EfyoloError(f"{path}: images[{i}] needs 'id' and 'file_name'")
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
            raise EfyoloError(f"{path}: categories[{i}] needs an integer 'id'")
    if not data["categories"]:
        raise EfyoloError(f"{path}: 'categories' is empty")
    return data


def category_map(data: dict[str, Any]) -> tuple[dict[int, int], list[str]]:
    """``({category_id: class index}, names)`` with ids in ascending order."""
    cats = sorted(data["categories"], key=lambda c: c["id"])
    return {c["id"]: i for i, c in enumerate(cats)}, [str(c.get("name", c["id"])) for c in cats]


def coco_class_names(path: str | Path) -> list[str]:
    """Class names of a COCO JSON, in ascending category-id order."""
    return category_map(read_coco_json(path))[1]


def coco_images_dir(json_path: Path) -> Path | None:
    """The images folder of a COCO JSON found by convention (see the module docstring)."""
    name = json_path.stem.removeprefix("instances_")
    here, up = json_path.parent, json_path.parent.parent
    for cand in (up / "images" / name, up / name, here / "images" / name, here / name, here / "images"):
        if cand.is_dir():
            return cand
    return None


def scan_coco_split(cfg: DataConfig, split: str, *, cache: bool = True, workers: int | None = None) -> SplitIndex:
    """Index a split given as a COCO instances JSON (same result type as YOLO label splits)."""
    json_path = cfg.split_sources(split)[0]
    images_dir = cfg.images_dirs.get(split) or coco_images_dir(json_path)
    if images_dir is None:
        raise EfyoloError(
            f"{cfg.yaml_path}: cannot find the images of {json_path.name}: add '{split}_images: FOLDER'"
        )
    data = read_coco_json(json_path)
    cat_to_cls, cat_names = category_map(data)
    if len(cat_names) != cfg.nc:
        raise EfyoloError(f"{json_path}: {len(cat_names)} categories but {cfg.yaml_path} 'names' has {cfg.nc}")
    entries = data["images"]
    im_files = [os.path.normpath(images_dir / str(im["file_name"])) for im in entries]
    digest = files_hash([str(json_path)] + im_files, extra=f"coco nc={cfg.nc} tol={TOLERANCE}")
    cache_path = json_path.with_suffix(".cache")
    if cache:
        index = load_cache(cache_path, digest, split, cfg.names)
        if index is not None:
            return index
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        checked = list(pool.map(check_image, im_files))
    index = _index_coco(json_path, data, entries, im_files, checked, cat_to_cls, split, cfg.names)
    if cache:
        index.cache_path = cache_path if save_cache(cache_path, digest, index) else None
    return index


def _index_coco(
    json_path: Path,
    data: dict[str, Any],
    entries: list[dict[str, Any]],
    im_files: list[str],
    checked: list[tuple[tuple[int, int] | None, str | None]],
    cat_to_cls: dict[int, int],
    split: str,
    names: list[str],
) -> SplitIndex:
    index = SplitIndex(split, list(names), [], n_listed=len(entries))
    known = {im["id"] for im in entries}
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or ann.get("image_id") not in known:
            index.problems.append(f"{json_path}: annotation {_ann_id(ann)}: unknown image_id, dropped")
            index.n_dropped += 1
            continue
        by_image[ann["image_id"]].append(ann)
    for entry, im_file, (shape, reason) in zip(entries, im_files, checked):
        if shape is None:
            index.problems.append(f"{im_file}: {reason}, skipped")
            index.n_corrupt += 1
            continue
        h, w = int(entry.get("height") or shape[0]), int(entry.get("width") or shape[1])
        if (h, w) != shape:
            index.problems.append(
                f"{json_path}: image {entry['id']}: size {w}x{h} in the JSON but {shape[1]}x{shape[0]} in {im_file}"
            )
        rows, where, crowd = [], [], []
        for ann in by_image.get(entry["id"], []):
            row, reason = _ann_row(ann, cat_to_cls, w, h)
            if ann.get("iscrowd", 0):
                if row is not None:
                    crowd.append(row)
                    index.n_crowd += 1
                continue
            if reason:
                index.problems.append(f"{json_path}: annotation {_ann_id(ann)}: {reason}")
                index.n_dropped += 1
                continue
            rows.append(row)
            where.append(f"{json_path}: annotation {_ann_id(ann)}")
        labels, problems, dropped = clean_labels(np.array(rows, dtype=np.float64).reshape(-1, 5), where, len(names))
        index.problems.extend(problems)
        index.n_dropped += dropped
        index.n_backgrounds += len(labels) == 0
        index.images.append(ImageRecord(im_file, shape, labels, np.array(crowd, np.float32).reshape(-1, 5)))
    return index


def _ann_id(ann: Any) -> Any:
    return ann.get("id", "?") if isinstance(ann, dict) else "?"


def _ann_row(ann: dict[str, Any], cat_to_cls: dict[int, int], w: int, h: int) -> tuple[list[float] | None, str | None]:
    """One annotation -> normalised ``[cls, xc, yc, w, h]`` or a reason to drop it."""
    if ann.get("category_id") not in cat_to_cls:
        return None, f"unknown category_id {ann.get('category_id')!r}"
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        return None, f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}"
    x, y, bw, bh = (float(v) for v in bbox)
    return [cat_to_cls[ann["category_id"]], (x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h], None


@dataclass
class ConvertReport:
    """What a conversion wrote.

    Attributes:
        out: the main output (``data.yaml`` or the JSON).
        images: images converted.
        boxes: boxes written.
        problems: messages about skipped images and dropped boxes.
    """

    out: Path
    images: int = 0
    boxes: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the console."""
        extra = f", {len(self.problems)} problems (see warnings)" if self.problems else ""
        return f"{self.images} images, {self.boxes} boxes -> {self.out}{extra}"


def coco_to_yolo(
    json_path: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    split: str = "val",
    copy_images: bool = False,
) -> ConvertReport:
    """Convert a COCO instances JSON to a YOLO dataset.

    Writes ``OUT/images/<split>/<file_name>`` (a symlink to the image, or a copy),
    ``OUT/labels/<split>/<file_name stem>.txt`` for every image with boxes, and ``OUT/data.yaml``
    (created, or updated with this split when it exists with the same names). Crowd annotations
    are left out; bad boxes are dropped and reported.

    Args:
        json_path: the instances JSON.
        images_dir: folder that ``file_name`` entries are relative to.
        out_dir: the YOLO dataset root to write.
        split: split name used for the sub-folders and the YAML key.
        copy_images: copy the images instead of linking them.

    Returns:
        A :class:`ConvertReport` whose ``out`` is the data YAML.
    """
    json_path, images_dir, out_dir = Path(json_path), Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise EfyoloError(f"{images_dir}: images folder not found")
    data = read_coco_json(json_path)
    cat_to_cls, names = category_map(data)
    yaml_path = out_dir / "data.yaml"
    _check_existing_yaml(yaml_path, names)
    report = ConvertReport(yaml_path)
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for ann in data["annotations"]:
        if isinstance(ann, dict) and not ann.get("iscrowd", 0):
            by_image[ann.get("image_id")].append(ann)
    for entry in data["images"]:
        src = images_dir / str(entry["file_name"])
        if not src.is_file():
            report.problems.append(f"{src}: image not found, skipped")
            continue
        w, h = entry.get("width"), entry.get("height")
        if not w or not h:
            shape, reason = check_image(str(src))
            if shape is None:
                report.problems.append(f"{src}: {reason}, skipped")
                continue
            h, w = shape
        rows, where = [], []
        for ann in by_image.get(entry["id"], []):
            row, reason = _ann_row(ann, cat_to_cls, w, h)
            if reason:
                report.problems.append(f"{json_path}: annotation {_ann_id(ann)}: {reason}")
            else:
                rows.append(row)
                where.append(f"{json_path}: annotation {_ann_id(ann)}")
        labels, problems, _ = clean_labels(np.array(rows, dtype=np.float64).reshape(-1, 5), where, len(names))
        report.problems.extend(problems)
        rel = Path(str(entry["file_name"]))
        _place_image(src, out_dir / "images" / split / rel, copy_images)
        label_file = (out_dir / "labels" / split / rel).with_suffix(".txt")
        if len(labels):
            label_file.parent.mkdir(parents=True, exist_ok=True)
            label_file.write_text(_label_text(labels))
        elif label_file.exists():
            label_file.unlink()  # stale labels of an earlier conversion
        report.images += 1
        report.boxes += len(labels)
    _write_yaml(yaml_path, split, names)
    log_problems(report.problems)
    return report


def _label_text(labels: np.ndarray) -> str:
    return "".join(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels.tolist())


def _place_image(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if not copy:
        try:
            os.symlink(src.resolve(), dst)
            return
        except OSError:  # no symlinks here (some Windows setups): copy instead
            pass
    shutil.copy2(src, dst)


def _check_existing_yaml(yaml_path: Path, names: list[str]) -> None:
    if yaml_path.exists():
        existing = load_data_config(yaml_path)
        if existing.names != names:
            raise EfyoloError(f"{yaml_path}: exists with other class names {existing.names}; choose another --out")


def _write_yaml(yaml_path: Path, split: str, names: list[str]) -> None:
    data: dict[str, Any] = {}
    if yaml_path.exists():
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
    data[split] = f"images/{split}"
    data["nc"] = len(names)
    data["names"] = list(names)
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def image_id_from_path(path: str | Path) -> int | str:
    """The image id used in COCO results files: the file stem, as an int when it is all digits."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else stem


def yolo_to_coco(cfg: DataConfig, split: str, out_path: str | Path) -> ConvertReport:
    """Write a split of any dataset as a COCO instances JSON.

    Image ids are the file stems as ints when every stem is numeric and unique (so they agree with
    :func:`image_id_from_path`), otherwise 1..N. ``file_name`` is relative to the images' common
    folder; ``category_id`` is the class index; boxes are ``[x, y, w, h]`` in pixels.
    """
    out_path = Path(out_path)
    index = scan_split(cfg, split)
    ids = [image_id_from_path(f) for f in index.im_files]
    if not all(isinstance(i, int) for i in ids) or len(set(ids)) != len(ids):
        ids = list(range(1, len(ids) + 1))
    root = os.path.commonpath([os.path.dirname(f) for f in index.im_files]) if len(index) else ""
    images, annotations = [], []
    for image_id, rec in zip(ids, index):
        h, w = rec.shape
        images.append({"id": image_id, "file_name": os.path.relpath(rec.im_file, root), "width": w, "height": h})
        boxes = xyxy2ltwh(xywhn2xyxy(rec.labels[:, 1:].astype(np.float64), w, h))
        for c, (x, y, bw, bh) in zip(rec.labels[:, 0].astype(int).tolist(), boxes.tolist()):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": c,
                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0,
            })
    data = {
        "info": {"description": f"{cfg.yaml_path} split '{split}', written by efyolo"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k, "name": n} for k, n in enumerate(cfg.names)],
    }
    write_json_atomic(out_path, data)
    return ConvertReport(out_path, len(images), len(annotations), list(index.problems))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file next to ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""A COCO instances JSON as a dataset split (``val: annotations/instances_val2017.json``).

* Images: ``<images folder>/<file_name>``; the folder is the YAML key ``<split>_images`` or found
  by convention (:func:`efyolo.data.coco_json.coco_images_dir`).
* ``bbox`` ``[x, y, w, h]`` in pixels is normalised by the real image size (EXIF orientation
  applied; a different ``width``/``height`` in the JSON is reported) and checked with the same rules
  as YOLO label rows (:func:`efyolo.data.labels.clean_labels`), problems named
  ``<json>: annotation <id>``.
* ``iscrowd: 1`` annotations are kept apart as crowd regions (:attr:`ImageRecord.crowd`): not
  training targets, but ``efyolo val`` gives them to the evaluator, which ignores detections on
  them exactly as COCOeval does. Area ranges (AP small/medium/large) use the box area ``w * h``.
* Annotations whose ``image_id`` names no image are dropped with a problem line, and an image entry
  repeating an earlier entry's id is skipped with one (the annotations cannot tell the two apart,
  so they stay with the first).
"""

from __future__ import annotations
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
import numpy as np
from efyolo.data.config import DataConfig
from efyolo.data.split import ImageRecord, SplitIndex, files_hash, load_cache, save_cache
from efyolo.data.images import check_image
from efyolo.data.labels import TOLERANCE, clean_labels
from efyolo.errors import EfyoloError
from efyolo.data.coco_json import category_map, coco_images_dir, read_coco_json


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
    """The index of a checked COCO split; later entries repeating an image id are skipped (see
    :func:`first_of_each_id`), annotations of unknown images dropped, both with a problem line."""
    index = SplitIndex(split, list(names), [], n_listed=len(entries))
    keep, index.problems = first_of_each_id(json_path, entries)
    by_image, unknown = group_annotations(json_path, data["annotations"], {entries[i]["id"] for i in keep})
    index.problems.extend(unknown)
    index.n_dropped += len(unknown)
    for i in keep:
        entry, im_file, (shape, reason) = entries[i], im_files[i], checked[i]
        if shape is None:
            index.problems.append(f"{im_file}: {reason}, skipped")
            index.n_corrupt += 1
            continue
        h, w = shape  # the real size (EXIF applied) wins over the JSON's, as when converting
        given = (entry.get("width"), entry.get("height"))
        if any(given) and given != (w, h):
            index.problems.append(
                f"{json_path}: image {entry['id']!r}: size {given[0]}x{given[1]} in the JSON but {w}x{h} in "
                f"{im_file}; boxes normalised by the image's size"
            )
        rows, where, crowd = [], [], []
        for ann in by_image.get(entry["id"], []):
            row, reason = ann_row(ann, cat_to_cls, w, h)
            if ann.get("iscrowd", 0):
                if row is not None:
                    crowd.append(row)
                    index.n_crowd += 1
                continue
            if reason:
                index.problems.append(f"{json_path}: annotation {ann_id(ann)}: {reason}")
                index.n_dropped += 1
                continue
            rows.append(row)
            where.append(f"{json_path}: annotation {ann_id(ann)}")
        labels, problems, dropped = clean_labels(np.array(rows, dtype=np.float64).reshape(-1, 5), where, len(names))
        index.problems.extend(problems)
        index.n_dropped += dropped
        index.n_backgrounds += len(labels) == 0
        index.images.append(ImageRecord(im_file, shape, labels, np.array(crowd, np.float32).reshape(-1, 5)))
    return index


def ann_id(ann: Any) -> Any:
    return ann.get("id", "?") if isinstance(ann, dict) else "?"


def first_of_each_id(json_path: Path, entries: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
    """Indices of the image entries to use, in order, and one problem per entry left out.

    Annotations name their image by ``image_id`` alone, so two entries with one id cannot be told
    apart: the first keeps the annotations and later ones are skipped, rather than silently given
    the first one's boxes. An id that cannot be a key (a list, an object) names no image at all.
    """
    seen: set[Any] = set()
    keep, problems = [], []
    for i, entry in enumerate(entries):
        image_id, name = entry["id"], entry["file_name"]
        if not _is_hashable(image_id):
            problems.append(f"{json_path}: images[{i}]: id {image_id!r} is not a number or a string, skipped")
        elif image_id in seen:
            problems.append(
                f"{json_path}: images[{i}]: duplicate image id {image_id!r} (file_name {name!r}), skipped; "
                "its annotations go to the first image with this id"
            )
        else:
            seen.add(image_id)
            keep.append(i)
    return keep, problems


def group_annotations(
    json_path: Path, annotations: list[Any], known: set[Any]
) -> tuple[dict[Any, list[dict[str, Any]]], list[str]]:
    """Annotations by ``image_id``, and one problem per annotation that names no listed image.

    Without the message such an annotation would vanish from the converted or evaluated data
    without a trace.
    """
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    problems = []
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            problems.append(f"{json_path}: annotations[{i}]: not an object, dropped")
        elif not _is_hashable(ann.get("image_id")) or ann.get("image_id") not in known:
            image_id = ann.get("image_id")
            problems.append(f"{json_path}: annotation {ann_id(ann)}: unknown image_id {image_id!r}, dropped")
        else:
            by_image[ann["image_id"]].append(ann)
    return by_image, problems


def _is_hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def ann_row(ann: dict[str, Any], cat_to_cls: dict[int, int], w: int, h: int) -> tuple[list[float] | None, str | None]:
    """One annotation -> normalised ``[cls, xc, yc, w, h]`` or a reason to drop it."""
    if ann.get("category_id") not in cat_to_cls:
        return None, f"unknown category_id {ann.get('category_id')!r}"
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        return None, f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}"
    x, y, bw, bh = (float(v) for v in bbox)
    return [cat_to_cls[ann["category_id"]], (x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h], None

"""COCO results files (any detector's output) scored against a dataset split.

A results file is a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
with boxes in pixels of the original image, ``image_id`` the image file's stem (an int when the
stem is all digits, see :func:`efyolo.data.coco_json.image_id_from_path`) and ``category_id`` the class
index. Entries for images that are not in the split, or with a class index outside ``[0, nc)``,
are skipped with a warning and counted; a malformed file or entry is an
:class:`~efyolo.errors.EfyoloError` naming the file and the entry.

Rows are made in one place, :func:`coco_result_rows` (full precision), and files written by
:func:`write_coco_results`, for the validator's and ``efyolo detect``'s ``predictions.json`` alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from efyolo.data.coco_json import image_id_from_path
from efyolo.utils.files import write_json_atomic
from efyolo.data.split import SplitIndex
from efyolo.evaluation.metrics import DetectionEvaluator, EvalResult
from efyolo.errors import EfyoloError
from efyolo.utils.yaml_io import read_json_file
from efyolo.ops.boxes import ltwh2xyxy, xywhn2xyxy, xyxy2ltwh
from efyolo.utils.log import LOGGER



@dataclass
class Predictions:
    """A results file as arrays (one row per kept entry).

    Attributes:
        image_ids: ``[N]`` normalised image ids (int or str).
        boxes: ``[N, 4]`` float64 xyxy pixels.
        scores: ``[N]`` float64.
        labels: ``[N]`` int64 class indices.
    """

    image_ids: list[int | str]
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass
class ScoreReport:
    """The evaluation of a results file and what was skipped.

    Attributes:
        result: the metrics.
        n_predictions: entries in the file.
        unknown_images: entries skipped because their image is not in the split (and which ids,
            up to 10).
        bad_classes: entries skipped because their class index is outside ``[0, nc)``.
    """

    result: EvalResult
    n_predictions: int
    unknown_images: int = 0
    unknown_examples: list[Any] = field(default_factory=list)
    bad_classes: int = 0


def _normalise_id(value: Any) -> int | str:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value) if value.isdigit() else value
    raise TypeError


def read_coco_results(path: str | Path) -> Predictions:
    """Load and check a COCO results file (see the module docstring).

    Raises:
        EfyoloError: missing file, malformed JSON, not a list, or an entry without the four keys
            or with values of the wrong type (named by its index).
    """
    path = Path(path)
    entries = read_json_file(path, "predictions file")
    if not isinstance(entries, list):
        raise EfyoloError(f"{path}: expected a JSON list of {{image_id, category_id, bbox, score}}")
    ids, boxes, scores, labels = [], [], [], []
    for i, e in enumerate(entries):
        try:
            ids.append(_normalise_id(e["image_id"]))
            bbox = e["bbox"]
            if len(bbox) != 4:
                raise TypeError
            boxes.append([float(v) for v in bbox])
            scores.append(float(e["score"]))
            cat = e["category_id"]
            if isinstance(cat, bool) or not float(cat).is_integer():
                raise TypeError
            labels.append(int(cat))
        except KeyError as err:
            raise EfyoloError(f"{path}: entry {i}: missing {err}") from None
        except (TypeError, ValueError):
            raise EfyoloError(
                f"{path}: entry {i}: expected image_id (int or str), category_id (int), "
                f"bbox (4 numbers), score (number), got {json.dumps(e)[:200]}"
            ) from None
    return Predictions(
        ids,
        ltwh2xyxy(np.array(boxes, dtype=np.float64).reshape(-1, 4)),
        np.array(scores, dtype=np.float64),
        np.array(labels, dtype=np.int64),
    )


def split_image_ids(index: SplitIndex) -> dict[int | str, int]:
    """``{image_id: position in the index}``; :class:`EfyoloError` when two images share an id."""
    ids: dict[int | str, int] = {}
    for i, f in enumerate(index.im_files):
        key = image_id_from_path(f)
        if key in ids:
            raise EfyoloError(
                f"images {index.im_files[ids[key]]} and {f} have the same image_id {key!r} (file stem); "
                "predictions cannot tell them apart"
            )
        ids[key] = i
    return ids


def score_predictions(index: SplitIndex, preds: Predictions) -> ScoreReport:
    """Evaluate predictions against a scanned split with :class:`DetectionEvaluator`.

    Images are fed in ascending image-id order (ints before strings), the order COCOeval uses, so
    that even exact score ties across images resolve as pycocotools would.
    """
    nc = len(index.names)
    ids = split_image_ids(index)
    pos = np.array([ids.get(i, -1) for i in preds.image_ids], dtype=np.int64)
    unknown = pos < 0
    bad_cls = ~unknown & ((preds.labels < 0) | (preds.labels >= nc))
    report_unknown = sorted({preds.image_ids[i] for i in np.flatnonzero(unknown)}, key=_id_order)
    if unknown.any():
        LOGGER.warning(
            "%d predictions for %d image ids not in split '%s' skipped, e.g. %s",
            unknown.sum(), len(report_unknown), index.split, ", ".join(map(repr, report_unknown[:5])),
        )
    if bad_cls.any():
        LOGGER.warning("%d predictions with category_id outside [0, %d) skipped", bad_cls.sum(), nc)
    keep = np.flatnonzero(~unknown & ~bad_cls)
    # group kept predictions by image, input order kept within an image (stable)
    keep = keep[np.argsort(pos[keep], kind="stable")]
    bounds = np.searchsorted(pos[keep], np.arange(len(index) + 1))

    ev = DetectionEvaluator(nc, index.names)
    for key in sorted(ids, key=_id_order):
        i = ids[key]
        rec = index[i]
        sel = keep[bounds[i]:bounds[i + 1]]
        h, w = rec.shape
        gt = np.concatenate([rec.labels, rec.crowd]).astype(np.float64)  # crowd regions last
        crowd = np.arange(len(gt)) >= len(rec.labels)
        ev.update(preds.boxes[sel], preds.scores[sel], preds.labels[sel], xywhn2xyxy(gt[:, 1:], w, h), gt[:, 0],
                  image_id=key, gt_crowd=crowd)
    return ScoreReport(ev.compute(), len(preds.scores), int(unknown.sum()), report_unknown[:10], int(bad_cls.sum()))


def _id_order(key: int | str) -> tuple[int, Any]:
    return (0, key) if isinstance(key, int) else (1, key)


def coco_result_rows(
    image_id: int | str,
    boxes_xyxy: Any,
    scores: Any,
    labels: Any,
) -> list[dict[str, Any]]:
    """The COCO-results rows of one image's detections: the one place such rows are made.

    ``{"image_id": image_id, "category_id": int class index, "bbox": [x, y, w, h], "score"}``,
    one row per box in the given order. Values keep full precision (Python floats of the inputs;
    JSON writes them exactly): rounding scores would create ties that reorder COCO's
    greedy score-ordered matching, and rounded boxes would shift IoUs at the thresholds, so a
    written file would not score as the detections it came from.

    Args:
        image_id: the image's id (see :func:`efyolo.data.coco_json.image_id_from_path`).
        boxes_xyxy: ``[n, 4]`` ``xyxy`` pixel boxes (array, tensor or nested lists).
        scores: ``[n]`` confidences.
        labels: ``[n]`` class indices (``category_id``).
    """
    ltwh = xyxy2ltwh(np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4))
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if not len(ltwh) == len(scores) == len(labels):
        raise ValueError(f"{len(ltwh)} boxes, {len(scores)} scores and {len(labels)} labels for image {image_id!r}")
    return [
        {"image_id": image_id, "category_id": int(c), "bbox": box, "score": score}
        for box, score, c in zip(ltwh.tolist(), scores.tolist(), labels.tolist())
    ]


def write_coco_results(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows of :func:`coco_result_rows` as a COCO results file (atomically: a temporary file
    next to ``path`` renamed into place, so a reader never sees half a file); returns the path."""
    path = Path(path)
    write_json_atomic(path, rows)
    return path

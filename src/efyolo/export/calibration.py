"""Calibration images for INT8 post-training quantization.

A quantizer needs the range of every activation, which it measures by running the float model on
real inputs. Those inputs must be what the deployed model sees, so each image is letterboxed
exactly as inference letterboxes a fixed-shape export: aspect kept, scaled to fit ``imgsz``,
padded with YOLOv5's grey (114), RGB, ``float32`` in ``[0, 1]``, ``[B, 3, H, W]``.

The images come from a split of the dataset YAML (``train`` by default: the validation images stay
unseen, so the mAP measured after quantization is not flattered). ``n`` of them are taken at even
spacing over the sorted list (deterministic, spread over the whole split), all when fewer; corrupt
images were already skipped by the scan. The set is grouped into batches of the export batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from efyolo.errors import EfyoloError

DEFAULT_CALIB_IMAGES = 300  # a few hundred: the usual size of a PTQ calibration set


@dataclass
class CalibrationSet:
    """Letterboxed calibration batches and where they came from (for the export's metadata)."""

    batches: list[np.ndarray]  # each float32 [B, 3, H, W] in [0, 1]
    source: str  # the dataset YAML
    split: str
    files: list[str]

    @property
    def images(self) -> int:
        return sum(b.shape[0] for b in self.batches)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches)

    def describe(self) -> dict[str, object]:
        """What the metadata records about the calibration."""
        return {"data": self.source, "split": self.split, "images": self.images}


def pick_evenly(items: list[str], n: int) -> list[str]:
    """``n`` items at even spacing over ``items`` (all of them when ``n >= len(items)``)."""
    if n >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def letterbox_for_export(image: np.ndarray, imgsz: tuple[int, int]) -> np.ndarray:
    """``uint8 [H, W, 3]`` BGR -> ``float32 [3, h, w]`` RGB in ``[0, 1]``, letterboxed to ``imgsz``
    as inference does for a fixed-shape export (``efyolo.engine.predictor.preprocess``, ``rect=False``)."""
    from efyolo.data.augment import PAD_COLOR, letterbox

    boxed, _, _ = letterbox(image, imgsz, color=PAD_COLOR, auto=False, scaleup=True)
    return np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1), dtype=np.float32) / 255.0


def load_calibration(
    data: str | Path | None,
    imgsz: tuple[int, int],
    batch: int = 1,
    n: int | None = None,
    split: str = "train",
) -> CalibrationSet:
    """Read and letterbox the calibration images of ``split`` of the dataset YAML ``data``.

    Args:
        data: dataset YAML (required: INT8 needs real images).
        imgsz: the export's ``(h, w)``.
        batch: the export's batch size; the set is cut into batches of it.
        n: images to use (default :data:`DEFAULT_CALIB_IMAGES`, or all when the split has fewer).
        split: the split to take them from.

    Raises:
        EfyoloError: no ``data``, a split without images, ``n`` below 1, or fewer images than
            ``batch`` (a quantizer needs at least one full batch).
    """
    from efyolo.data.config import load_data_config
    from efyolo.data.scan import scan_split
    from efyolo.data.sources import read_image

    if data is None:
        raise EfyoloError("--int8 needs --data: a dataset YAML whose images calibrate the quantization")
    if n is not None and n < 1:
        raise EfyoloError(f"--calib must be at least 1, got {n}")
    cfg = load_data_config(data)
    if split not in cfg.splits:
        raise EfyoloError(f"{data}: no '{split}' split to calibrate --int8 on (splits: {', '.join(cfg.splits)})")
    index = scan_split(cfg, split)  # raises when the split holds no images
    files = pick_evenly(sorted(rec.im_file for rec in index), n or DEFAULT_CALIB_IMAGES)
    if len(files) < batch:
        raise EfyoloError(
            f"{data}: {len(files)} calibration image(s) in '{split}' is fewer than the export batch {batch}; "
            "use more images (--calib) or a smaller --batch"
        )
    samples = []
    for f in files:
        image = read_image(f)
        if image is not None:  # the scan checked every image; one removed since is skipped
            samples.append(letterbox_for_export(image, imgsz))
    usable = len(samples) - len(samples) % batch  # whole batches only: the export's input shape is fixed
    if usable < batch:
        raise EfyoloError(f"{data}: no readable calibration images left in '{split}'")
    stacked = np.stack(samples[:usable])
    batches = [stacked[i : i + batch] for i in range(0, usable, batch)]
    return CalibrationSet(batches, str(data), split, files[:usable])

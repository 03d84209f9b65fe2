"""Per-image detection results and the files made from them (``runs/detect/expN/``).

:class:`Result` holds numpy arrays (CPU, detached), so it can be handed straight to OpenCV, JSON
or any plotting library without a torch dependency in the caller. :class:`ResultWriter` turns a
stream of results into YOLOv5's output layout: annotated images and videos, ``labels/*.txt``,
``predictions.json`` and ``crops/<class>/``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from efyolo.data.coco import image_id_from_path
from efyolo.engine.plotting import crop_box, draw_detections
from efyolo.errors import EfyoloError
from efyolo.ops.boxes import xyxy2ltwh, xyxy2xywh, xyxy2xywhn

# Suffixes cv2.imwrite can write; an annotated copy of any other image is saved as .jpg.
_WRITABLE = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})


@dataclass(eq=False)  # arrays do not compare to one bool; identity is the useful equality
class Result:
    """The detections in one image (or video frame), in pixels of the original image.

    Attributes:
        boxes: ``float32 [N, 4]`` ``xyxy`` boxes, clipped to the image.
        scores: ``float32 [N]`` confidences (objectness x class probability), descending.
        labels: ``int64 [N]`` class ids.
        names: class names (``names[labels[i]]``).
        orig_shape: ``(h, w)`` of the original image.
        path: the source file, or ``image<i>`` for in-memory images.
        speed: milliseconds per image for ``preprocess``, ``inference`` and ``postprocess``
            (each batch's time divided by its size).
        input_shape: ``(h, w)`` of the letterboxed network input.
        index: position (0-based) of the source item (file or in-memory image) it came from.
        total: number of source items.
        frame: 0-based frame number for video frames, else ``None``.
        frames: the video's frame count as its container reports it (video frames only).
        fps: the video's frame rate (video frames only).
        orig_img: the original ``uint8 [H, W, 3]`` BGR image, kept for :meth:`plot` and crops
            (``None`` if dropped to save memory).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]
    orig_shape: tuple[int, int]
    path: str
    speed: dict[str, float] = field(default_factory=dict)
    input_shape: tuple[int, int] | None = None
    index: int = 0
    total: int = 1
    frame: int | None = None
    frames: int | None = None
    fps: float | None = None
    orig_img: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def stem(self) -> str:
        """File stem used for outputs; video frames get ``<stem>_<frame number from 1>`` as in YOLOv5."""
        stem = Path(self.path).stem
        return stem if self.frame is None else f"{stem}_{self.frame + 1}"

    def counts(self) -> dict[str, int]:
        """Detections per class name, in class-id order."""
        counter = Counter(int(c) for c in self.labels)
        return {self._name(c): counter[c] for c in sorted(counter)}

    def summary(self) -> str:
        """``"2 cars, 1 person"``-style text (``"no detections"`` when empty)."""
        counts = self.counts()
        return ", ".join(f"{n} {name}" for name, n in counts.items()) or "no detections"

    def log_line(self) -> str:
        """One line for the console: ``image 1/3 a.jpg: 64x96 2 cars, 1 person, 12.3ms``."""
        where = f"image {self.index + 1}/{self.total}"
        if self.frame is not None:
            where = f"video {self.index + 1}/{self.total} (frame {self.frame + 1}/{self.frames or '?'})"
        size = f"{self.input_shape[0]}x{self.input_shape[1]} " if self.input_shape else ""
        return f"{where} {self.path}: {size}{self.summary()}, {self.speed.get('inference', 0.0):.1f}ms"

    def _name(self, c: int) -> str:
        return self.names[c] if 0 <= c < len(self.names) else str(c)

    # ---- coordinate conversions -----------------------------------------------------------
    def xywh(self) -> np.ndarray:
        """``float32 [N, 4]`` pixel ``(xc, yc, w, h)``."""
        return xyxy2xywh(self.boxes)

    def xywhn(self) -> np.ndarray:
        """``float32 [N, 4]`` ``(xc, yc, w, h)`` normalised by the image width/height (YOLO labels)."""
        h, w = self.orig_shape
        return xyxy2xywhn(self.boxes, w, h)

    # ---- outputs ----------------------------------------------------------------------------
    def plot(self, line_width: int | None = None, labels: bool = True, conf: bool = True) -> np.ndarray:
        """The original image with boxes, class names and scores drawn: ``uint8 [H, W, 3]`` BGR."""
        if self.orig_img is None:
            raise EfyoloError(f"result for {self.path} holds no image to plot (orig_img was dropped)")
        return draw_detections(
            self.orig_img, self.boxes, self.scores, self.labels, self.names, line_width, labels, conf
        )

    def save(self, path: str | Path, **plot_kwargs: Any) -> Path:
        """Write :meth:`plot`'s image to ``path`` (format from its suffix); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() not in _WRITABLE:
            raise EfyoloError(f"cannot save an image as {path} (use one of {', '.join(sorted(_WRITABLE))})")
        if not cv2.imwrite(str(path), self.plot(**plot_kwargs)):
            raise EfyoloError(f"could not write image {path}")
        return path

    def to_json(self, image_id: int | str | None = None) -> list[dict[str, Any]]:
        """COCO-results dicts ``{image_id, category_id, bbox: [x, y, w, h], score}``.

        Args:
            image_id: defaults to the file stem, as an int when numeric (as the evaluator's
                :func:`efyolo.data.coco.image_id_from_path`); video frames use :attr:`stem`.
                ``category_id`` is the class index.
        """
        if image_id is None:
            image_id = image_id_from_path(self.path) if self.frame is None else self.stem
        ltwh = xyxy2ltwh(self.boxes)
        return [
            {
                "image_id": image_id,
                "category_id": int(c),
                "bbox": [round(float(v), 3) for v in b],
                "score": round(float(s), 5),
            }
            for b, s, c in zip(ltwh, self.scores, self.labels)
        ]

    def save_txt(self, path: str | Path, save_conf: bool = False) -> Path:
        """Write YOLO-format rows ``cls xc yc w h [conf]`` (normalised) to ``path`` (empty file if none)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        for c, xywhn, s in zip(self.labels, self.xywhn(), self.scores):
            values = [int(c), *(float(v) for v in xywhn)] + ([float(s)] if save_conf else [])
            rows.append(" ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values))
        path.write_text("".join(r + "\n" for r in rows))
        return path

    def save_crops(self, directory: str | Path) -> list[Path]:
        """Write each box's crop to ``directory/<class name>/<stem>.jpg`` (then ``<stem>-2.jpg``, ...)."""
        if self.orig_img is None:
            raise EfyoloError(f"result for {self.path} holds no image to crop (orig_img was dropped)")
        seen: Counter[str] = Counter()
        written = []
        for box, c in zip(self.boxes, self.labels):
            name = self._name(int(c))
            seen[name] += 1
            suffix = "" if seen[name] == 1 else f"-{seen[name]}"
            path = Path(directory) / name / f"{self.stem}{suffix}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), crop_box(self.orig_img, box))
            written.append(path)
        return written


class ResultWriter:
    """Writes a stream of results into a run folder, YOLOv5 style.

    Layout of ``save_dir``: annotated images under their own file names (in-memory images as
    ``image<i>.jpg``), videos as ``<stem>.mp4`` (same frame count and fps),
    ``labels/<stem>.txt``, ``predictions.json`` and ``crops/<class name>/<stem>.jpg``.
    Nothing is created unless something is written. Use as a context manager, or call
    :meth:`close` to finish the videos and write the JSON file.
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_img: bool = True,
        save_txt: bool = False,
        save_conf: bool = False,
        save_json: bool = False,
        save_crop: bool = False,
        line_width: int | None = None,
        hide_labels: bool = False,
        hide_conf: bool = False,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.save_img, self.save_txt, self.save_conf = save_img, save_txt, save_conf
        self.save_json, self.save_crop = save_json, save_crop
        self.plot_kwargs = {"line_width": line_width, "labels": not hide_labels, "conf": not hide_conf}
        self.json_rows: list[dict[str, Any]] = []
        self.video_path: str | None = None
        self.video_writer: cv2.VideoWriter | None = None
        self.written: list[Path] = []  # annotated images and videos

    @property
    def saves_anything(self) -> bool:
        return self.save_img or self.save_txt or self.save_json or self.save_crop

    def write(self, result: Result) -> None:
        """Save everything requested for one result."""
        if self.save_img:
            if result.frame is None:
                self._write_image(result)
            else:
                self._write_video_frame(result)
        if self.save_txt:
            result.save_txt(self.save_dir / "labels" / f"{result.stem}.txt", self.save_conf)
        if self.save_json:
            self.json_rows.extend(result.to_json())
        if self.save_crop:
            result.save_crops(self.save_dir / "crops")

    def _write_image(self, result: Result) -> None:
        name = Path(result.path).name
        if Path(name).suffix.lower() not in _WRITABLE:
            name = f"{Path(name).stem}.jpg"
        self.written.append(result.save(self.save_dir / name, **self.plot_kwargs))

    def _write_video_frame(self, result: Result) -> None:
        if result.path != self.video_path:  # a new video starts
            self._release_video()
            path = self.save_dir / f"{Path(result.path).stem}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            h, w = result.orig_shape
            self.video_writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), result.fps or 30.0, (w, h))
            if not self.video_writer.isOpened():
                raise EfyoloError(f"could not open video writer for {path} (OpenCV without mp4v support?)")
            self.video_path = result.path
            self.written.append(path)
        self.video_writer.write(result.plot(**self.plot_kwargs))

    def _release_video(self) -> None:
        if self.video_writer is not None:
            self.video_writer.release()
        self.video_writer, self.video_path = None, None

    def close(self, write_json: bool = True) -> None:
        """Finish the open video (so a partial video stays playable) and write ``predictions.json``."""
        self._release_video()
        if self.save_json and write_json:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            (self.save_dir / "predictions.json").write_text(json.dumps(self.json_rows))

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.close(write_json=exc_type is None)  # no predictions file from a failed run


class SpeedStats:
    """Accumulates :attr:`Result.speed` over a run for the closing speed line."""

    def __init__(self) -> None:
        self.totals = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
        self.count = 0
        self.shapes: set[tuple[int, int]] = set()

    def add(self, result: Result) -> None:
        for key in self.totals:
            self.totals[key] += result.speed.get(key, 0.0)
        self.count += 1
        if result.input_shape:
            self.shapes.add(tuple(result.input_shape))

    def per_image(self) -> dict[str, float]:
        """Mean milliseconds per image for each stage."""
        return {k: v / max(self.count, 1) for k, v in self.totals.items()}

    def summary(self, batch: int = 1) -> str:
        """``Speed: 0.4ms pre-process, 35.2ms inference, 1.1ms NMS per image at shape (1, 3, 640, 640)``."""
        s = self.per_image()
        if not self.shapes:
            where = "(no images)"
        else:
            h, w = max(self.shapes)
            where = f"at shape {(batch, 3, h, w)}" if len(self.shapes) == 1 else f"at shapes up to {(batch, 3, h, w)}"
        return (
            f"Speed: {s['preprocess']:.1f}ms pre-process, {s['inference']:.1f}ms inference, "
            f"{s['postprocess']:.1f}ms NMS per image {where}"
        )

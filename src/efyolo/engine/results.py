"""Per-image detection results and the files made from them (``runs/detect/expN/``).

:class:`Result` holds numpy arrays (CPU, detached), so it can be handed straight to OpenCV, JSON
or any plotting library without a torch dependency in the caller. :class:`ResultWriter` turns a
stream of results into YOLOv5's output layout: annotated images and videos, ``labels/*.txt``,
``predictions.json`` and ``crops/<class>/``; :func:`output_stems` keeps the outputs of sources
that share a file name apart.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from efyolo.data.coco_json import image_id_from_path
from efyolo.data.sources import VIDEO_SUFFIXES
from efyolo.evaluation.coco_results import coco_result_rows, write_coco_results
from efyolo.utils.plotting import crop_box, draw_detections
from efyolo.errors import EfyoloError
from efyolo.ops.boxes import xyxy2xywh, xyxy2xywhn

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

        Made by :func:`efyolo.evaluation.coco_results.coco_result_rows`, the same rows the
        validator writes: full precision (no rounding, so that a written file scores exactly as
        these detections; rounded scores tie and reorder COCO's matching). ``category_id`` is the
        class index.

        Args:
            image_id: defaults to the file stem, as an int when numeric (as the evaluator's
                :func:`efyolo.data.coco_json.image_id_from_path`); video frames use :attr:`stem`.
        """
        if image_id is None:
            image_id = image_id_from_path(self.path) if self.frame is None else self.stem
        return coco_result_rows(image_id, self.boxes, self.scores, self.labels)

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

    def save_crops(self, directory: str | Path, stem: str | None = None) -> list[Path]:
        """Write each box's crop to ``directory/<class name>/<stem>.jpg`` (then ``<stem>-2.jpg``, ...).

        Args:
            stem: file stem to use instead of :attr:`stem` (may hold sub-folders, ``a/000000``);
                :class:`ResultWriter` passes the name that keeps same-named sources apart.
        """
        stem = self.stem if stem is None else stem
        if self.orig_img is None:
            raise EfyoloError(f"result for {self.path} holds no image to crop (orig_img was dropped)")
        seen: Counter[str] = Counter()
        written = []
        for box, c in zip(self.boxes, self.labels):
            name = self._name(int(c))
            seen[name] += 1
            suffix = "" if seen[name] == 1 else f"-{seen[name]}"
            path = Path(directory) / name / f"{stem}{suffix}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), crop_box(self.orig_img, box))
            written.append(path)
        return written

# ---- output names -----------------------------------------------------------------------------


def _output_kind(path: str) -> str:
    """``"video"`` (writes ``<stem>.mp4`` and frames ``<stem>_<n>``) or ``"image"`` (``<stem>.<ext>``)."""
    return "video" if Path(path).suffix.lower() in VIDEO_SUFFIXES else "image"


def _path_below(path: str, parent: str) -> str:
    """``path`` relative to the folder ``parent``, without its suffix, with ``/`` separators."""
    try:
        rel = os.path.relpath(path, parent)
    except ValueError:  # different Windows drives: no relative path exists, use it whole
        rel = Path(path).relative_to(Path(path).anchor).as_posix()
    return Path(rel).with_suffix("").as_posix()


def _names_by_folder(paths: Sequence[str]) -> list[str]:
    """Names for sources that share a stem: their path below the common folder of all of them.

    In-memory images (``image<i>``, no folder and no suffix) keep their name. ``abspath`` and not
    ``resolve`` so that a symlinked folder is named as the user wrote it.
    """
    files = [os.path.abspath(p) for p in paths if Path(p).suffix]
    parent = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
    return [_path_below(os.path.abspath(p), parent) if Path(p).suffix else Path(p).name for p in paths]


def output_stems(paths: Sequence[str | Path]) -> list[str]:
    """The output name (stem) for each source item, so that no two items write the same files.

    Outputs are named after the source files, which collide when two sources share a file name
    (``a/000000.jpg`` and ``b/000000.jpg``, or two ``clip.mp4`` in different folders): one would
    overwrite the other's image and label file and their predictions would share an ``image_id``.
    Rules, applied in source order so that the names are the same on every run:

    1. A stem that no other item of the same kind (image or video; videos write ``<stem>.mp4``
       and frames ``<stem>_<n>``, images ``<stem>.<ext>``) has stays as it is: this is the usual
       layout, ``save_dir/000000.jpg``, ``labels/000000.txt``.
    2. Items sharing a stem are named by their path below the common folder of those items, without
       the suffix: ``a/000000`` and ``b/000000`` (sub-folders of ``save_dir``, ``labels/`` and
       ``crops/<class>/`` alike). The stem, not the file name, is compared because labels, crops
       and JSON ids drop the suffix (``x.png`` and ``x.jpg`` would share ``labels/x.txt``).
    3. A name that is still taken (the same file given twice, ``x.png`` beside ``x.jpg``) gets the
       first free suffix ``_2``, ``_3``, ... in source order.

    Args:
        paths: :attr:`Result.path` of each source item in order (:attr:`Sources.paths`); in-memory
            images are named ``image<i>``, files always have a suffix.

    Returns:
        One name per path, ``/``-separated, unique within each kind.
    """
    paths = [str(p) for p in paths]
    kinds = [_output_kind(p) for p in paths]
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (p, kind) in enumerate(zip(paths, kinds)):
        groups[(kind, Path(p).stem)].append(i)
    names = [Path(p).stem for p in paths]
    for members in groups.values():
        if len(members) > 1:
            for i, name in zip(members, _names_by_folder([paths[i] for i in members])):
                names[i] = name
    taken = {(kind, name) for kind, name in zip(kinds, names)}
    seen: set[tuple[str, str]] = set()
    for i, (kind, name) in enumerate(zip(kinds, names)):
        if (kind, name) in seen:
            k = 2
            while (kind, f"{name}_{k}") in taken:
                k += 1
            names[i] = f"{name}_{k}"
            taken.add((kind, names[i]))
        seen.add((kind, names[i]))
    return names


def output_image_ids(paths: Sequence[str | Path], stems: Sequence[str]) -> list[int | str]:
    """The ``predictions.json`` ``image_id`` of each still image (video frames use ``<stem>_<n>``).

    An image keeps the evaluator's id (:func:`efyolo.data.coco_json.image_id_from_path`: the stem, an
    int when numeric, which is what COCO-style ground truth uses) when no other image has that id;
    otherwise ids would merge different images, so the output name from :func:`output_stems` is
    used (``"a/000000"``). ``"7"`` and ``"07"`` count as the same id, as both become ``7``.
    Videos are listed too (to keep the positions) but never share ids with images.
    """
    ids = [image_id_from_path(p) for p in paths]
    counts = Counter(i for i, p in zip(ids, paths) if _output_kind(str(p)) == "image")
    return [i if counts[i] <= 1 else stem for i, stem in zip(ids, stems)]


class ResultWriter:
    """Writes a stream of results into a run folder, YOLOv5 style.

    Layout of ``save_dir``: annotated images under their own file names (in-memory images as
    ``image<i>.jpg``), videos as ``<stem>.mp4`` (same frame count and fps),
    ``labels/<stem>.txt`` (video frames ``<stem>_<n>.txt``), ``predictions.json`` and
    ``crops/<class name>/<stem>.jpg``. Nothing is created unless something is written. Use as a
    context manager, or call :meth:`close` to finish the videos and write the JSON file.

    Given ``source_paths`` (all source items, :attr:`Sources.paths`, known before the run), sources
    that share a file name are kept apart by :func:`output_stems`: ``save_dir/a/000000.jpg``,
    ``labels/a/000000.txt``, ``image_id`` ``"a/000000"``; a file given twice gets ``_2``. Without
    them each result is named after its own file, so same-named sources overwrite each other.
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
        source_paths: Sequence[str | Path] | None = None,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.source_paths = [str(p) for p in source_paths or []]
        self.stems = output_stems(self.source_paths)
        self.image_ids = output_image_ids(self.source_paths, self.stems)
        self.save_img, self.save_txt, self.save_conf = save_img, save_txt, save_conf
        self.save_json, self.save_crop = save_json, save_crop
        self.plot_kwargs = {"line_width": line_width, "labels": not hide_labels, "conf": not hide_conf}
        self.json_rows: list[dict[str, Any]] = []
        self.video_path: str | None = None
        self.video_index: int | None = None  # the same video given twice is two videos
        self.video_writer: cv2.VideoWriter | None = None
        self.written: list[Path] = []  # annotated images and videos

    @property
    def saves_anything(self) -> bool:
        return self.save_img or self.save_txt or self.save_json or self.save_crop

    def renamed(self) -> list[tuple[str, str]]:
        """``(source path, output name)`` of the items not named after their own file stem."""
        return [(p, s) for p, s in zip(self.source_paths, self.stems) if s != Path(p).stem]

    def collision_note(self) -> str | None:
        """One line telling how same-named sources are kept apart, or ``None`` when none are."""
        renamed = self.renamed()
        if not renamed:
            return None
        shown = ", ".join(name for _, name in renamed[:4]) + (", ..." if len(renamed) > 4 else "")
        return (
            f"Note: sources share file names; to keep their outputs apart they are saved as {shown} "
            "(the path below the common folder of the same-named sources; a repeated file gets _2, _3)"
        )

    def _known(self, result: Result) -> bool:
        """Whether the result comes from the source item at its index in ``source_paths``."""
        i = result.index
        return 0 <= i < len(self.source_paths) and self.source_paths[i] == result.path

    def _item_stem(self, result: Result) -> str:
        """The output name of the result's source item (its file stem when nothing collides)."""
        return self.stems[result.index] if self._known(result) else Path(result.path).stem

    def _stem(self, result: Result) -> str:
        """Output stem for labels and crops: the item's name, ``<name>_<frame from 1>`` for video frames."""
        stem = self._item_stem(result)
        return stem if result.frame is None else f"{stem}_{result.frame + 1}"

    def _image_id(self, result: Result) -> int | str:
        """``image_id`` in ``predictions.json``: :func:`output_image_ids`, frames ``<name>_<n>``."""
        if result.frame is not None:
            return self._stem(result)
        return self.image_ids[result.index] if self._known(result) else image_id_from_path(result.path)

    def write(self, result: Result) -> None:
        """Save everything requested for one result."""
        if self.save_img:
            if result.frame is None:
                self._write_image(result)
            else:
                self._write_video_frame(result)
        if self.save_txt:
            result.save_txt(self.save_dir / "labels" / f"{self._stem(result)}.txt", self.save_conf)
        if self.save_json:
            self.json_rows.extend(result.to_json(self._image_id(result)))
        if self.save_crop:
            result.save_crops(self.save_dir / "crops", self._stem(result))

    def _write_image(self, result: Result) -> None:
        suffix = Path(result.path).suffix
        if suffix.lower() not in _WRITABLE:
            suffix = ".jpg"
        self.written.append(result.save(self.save_dir / f"{self._item_stem(result)}{suffix}", **self.plot_kwargs))

    def _write_video_frame(self, result: Result) -> None:
        if result.path != self.video_path or result.index != self.video_index:  # a new video starts
            self._release_video()
            path = self.save_dir / f"{self._item_stem(result)}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            h, w = result.orig_shape
            self.video_writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), result.fps or 30.0, (w, h))
            if not self.video_writer.isOpened():
                raise EfyoloError(f"could not open video writer for {path} (OpenCV without mp4v support?)")
            self.video_path, self.video_index = result.path, result.index
            self.written.append(path)
        self.video_writer.write(result.plot(**self.plot_kwargs))

    def _release_video(self) -> None:
        if self.video_writer is not None:
            self.video_writer.release()
        self.video_writer, self.video_path, self.video_index = None, None, None

    def close(self, write_json: bool = True) -> None:
        """Finish the open video (so a partial video stays playable) and write ``predictions.json``."""
        self._release_video()
        if self.save_json and write_json:
            write_coco_results(self.save_dir / "predictions.json", self.json_rows)

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

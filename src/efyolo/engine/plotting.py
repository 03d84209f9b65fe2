"""Drawing detections on BGR images with OpenCV, and cutting out box crops."""

from __future__ import annotations

import colorsys
from typing import Sequence

import cv2
import numpy as np

_GOLDEN = 0.618033988749895  # hue step: consecutive class ids get well-separated hues
_FONT = cv2.FONT_HERSHEY_SIMPLEX
# Largest font scale per pixel of mean image side: 640 -> 0.67 and 1280 -> 1.33, the scales that
# YOLOv5's line_width / 3 gives there, so common sizes look as before while smaller images get
# proportionally smaller text instead of one fixed 21 px tag.
_SCALE_PER_PIXEL = 1 / 960
_MIN_SCALE = 0.2  # 5 px tall text (cv2.getTextSize), the smallest kept so tiny images still show a tag
_TAG_PAD = 3  # the tag is this many pixels taller than the text


def class_color(index: int) -> tuple[int, int, int]:
    """A stable, saturated BGR colour for class ``index`` (the same in every image and run)."""
    hue = (index * _GOLDEN) % 1.0
    sat = 0.75 if index % 2 == 0 else 0.95  # alternate so neighbouring hues also differ in tone
    r, g, b = colorsys.hsv_to_rgb(hue, sat, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def default_line_width(shape: Sequence[int]) -> int:
    """Box line width in pixels for an image of ``shape = (h, w, ...)``: 0.3% of its mean side, at least 2."""
    return max(round((shape[0] + shape[1]) / 2 * 0.003), 2)


def label_font(shape: Sequence[int], line_width: int) -> tuple[float, int]:
    """OpenCV font scale and stroke thickness for box labels on an image of ``shape = (h, w, ...)``.

    YOLOv5 sizes text from the line width alone (scale ``line_width / 3``), and the line width
    never drops below 2 px, so every image with a mean side under ~830 px got the same 21 px tall
    tag: a third of a 64 px image, covering its objects and the neighbouring tags. Here
    ``line_width / 3`` is capped by the image's mean side (:data:`_SCALE_PER_PIXEL`, at least
    :data:`_MIN_SCALE`), so the text shrinks with the image, while a thinner ``--line-width``
    still gives smaller text. Thickness follows the scale as YOLOv5's ``line_width - 1`` does
    for uncapped text.
    """
    cap = max((shape[0] + shape[1]) / 2 * _SCALE_PER_PIXEL, _MIN_SCALE)
    scale = min(line_width / 3, cap)
    return scale, max(round(3 * scale) - 1, 1)


def label_size(text: str, shape: Sequence[int], line_width: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of the filled tag that :func:`draw_box` puts behind ``text``."""
    scale, thickness = label_font(shape, line_width)
    (tw, th), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    return tw, th + _TAG_PAD


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on a BGR background (ITU-R 601 luma)."""
    b, g, r = bg
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def box_label(name: str, score: float, labels: bool = True, conf: bool = True) -> str:
    """The text drawn on a box: ``"person 0.87"``, ``"person"``, ``"0.87"`` or ``""``."""
    parts = ([name] if labels else []) + ([f"{score:.2f}"] if conf else [])
    return " ".join(parts)


def draw_box(
    img: np.ndarray,
    box: Sequence[float],
    color: tuple[int, int, int],
    text: str = "",
    line_width: int = 2,
) -> None:
    """Draw one ``xyxy`` box and its text (on a filled tag above the box, or inside at the top edge), in place.

    The text is sized for ``img`` by :func:`label_font`.
    """
    p1 = (int(box[0]), int(box[1]))
    p2 = (int(box[2]), int(box[3]))
    cv2.rectangle(img, p1, p2, color, thickness=line_width, lineType=cv2.LINE_AA)
    if not text:
        return
    font_scale, thickness = label_font(img.shape, line_width)
    tw, tag_h = label_size(text, img.shape, line_width)
    outside = p1[1] - tag_h >= 0  # room for the tag above the box?
    q2 = (p1[0] + tw, p1[1] - tag_h if outside else p1[1] + tag_h)
    cv2.rectangle(img, p1, q2, color, -1, cv2.LINE_AA)
    org = (p1[0], p1[1] - 2 if outside else p1[1] + tag_h - 1)
    cv2.putText(img, text, org, _FONT, font_scale, _text_color(color), thickness, cv2.LINE_AA)


def draw_detections(
    img: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    line_width: int | None = None,
    show_labels: bool = True,
    show_conf: bool = True,
) -> np.ndarray:
    """Draw detections on a copy of a BGR image.

    Args:
        img: ``uint8 [H, W, 3]`` BGR image (not modified).
        boxes: ``[N, 4]`` ``xyxy`` pixels of ``img``.
        scores: ``[N]`` confidences.
        labels: ``[N]`` class ids (indices into ``names``; unknown ids are drawn as numbers).
        names: class names.
        line_width: box line width in pixels (default :func:`default_line_width`); the text
            follows it up to a size set by the image (:func:`label_font`).
        show_labels: write the class name.
        show_conf: write the score.

    Returns:
        The annotated copy, ``uint8 [H, W, 3]`` BGR.
    """
    out = np.ascontiguousarray(img).copy()
    lw = line_width or default_line_width(out.shape)
    # lowest score first, so the most confident box ends up on top
    for i in np.argsort(np.asarray(scores), kind="stable"):
        c = int(labels[i])
        name = names[c] if 0 <= c < len(names) else str(c)
        draw_box(out, boxes[i], class_color(c), box_label(name, float(scores[i]), show_labels, show_conf), lw)
    return out


def crop_box(img: np.ndarray, box: Sequence[float], gain: float = 1.02, pad: int = 10) -> np.ndarray:
    """Cut a ``xyxy`` box out of an image, enlarged by ``gain`` and ``pad`` pixels and clipped to it.

    Returns:
        A copy of the region, at least 1x1 pixel.
    """
    h, w = img.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    bw, bh = (x2 - x1) * gain + pad, (y2 - y1) * gain + pad
    left = int(np.clip(cx - bw / 2, 0, w - 1))
    top = int(np.clip(cy - bh / 2, 0, h - 1))
    right = int(np.clip(cx + bw / 2, left + 1, w))
    bottom = int(np.clip(cy + bh / 2, top + 1, h))
    return img[top:bottom, left:right].copy()

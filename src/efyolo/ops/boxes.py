"""Box formats and coordinate maps. Pure functions on ``Tensor[N, 4]`` or ``ndarray[N, 4]``.

Formats:
  * ``xyxy``: corners ``(x1, y1, x2, y2)`` in pixels.
  * ``xywh``: centre and size ``(xc, yc, w, h)`` in pixels.
  * ``xywhn``: centre and size normalised by the image width/height (YOLO label format).
  * ``ltwh``: top-left corner and size ``(x, y, w, h)`` in pixels (COCO ``bbox``).

Every function accepts either a torch tensor or a numpy array and returns the same type, without
modifying its input. IoU and NMS come from torchvision.
"""

from __future__ import annotations

from typing import Sequence, TypeVar, Union

import numpy as np
import torch
import torchvision

Boxes = TypeVar("Boxes", torch.Tensor, np.ndarray)
ArrayLike = Union[torch.Tensor, np.ndarray]


def _empty_like(x: Boxes) -> Boxes:
    return x.clone() if isinstance(x, torch.Tensor) else np.array(x, copy=True)


def _as_float(x: Boxes) -> Boxes:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.float()
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)


def xywh2xyxy(x: Boxes) -> Boxes:
    """``(xc, yc, w, h) -> (x1, y1, x2, y2)``; shape ``[..., 4]``."""
    x = _as_float(x)
    y = _empty_like(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xyxy2xywh(x: Boxes) -> Boxes:
    """``(x1, y1, x2, y2) -> (xc, yc, w, h)``; shape ``[..., 4]``."""
    x = _as_float(x)
    y = _empty_like(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywhn2xyxy(x: Boxes, w: float, h: float, padw: float = 0.0, padh: float = 0.0) -> Boxes:
    """Normalised ``(xc, yc, w, h)`` -> pixel ``xyxy`` in an image of size ``w x h``,
    shifted by a padding offset (used when placing an image inside a mosaic or letterbox)."""
    x = _as_float(x)
    y = _empty_like(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x: Boxes, w: float, h: float, clip: bool = False) -> Boxes:
    """Pixel ``xyxy`` -> normalised ``(xc, yc, w, h)`` for an image of size ``w x h``."""
    x = _as_float(x)
    if clip:
        x = clip_boxes(x, (h, w))
    y = xyxy2xywh(x)
    y[..., 0] /= w
    y[..., 2] /= w
    y[..., 1] /= h
    y[..., 3] /= h
    return y


def ltwh2xyxy(x: Boxes) -> Boxes:
    """COCO ``(x, y, w, h)`` (top-left corner) -> ``xyxy``."""
    x = _as_float(x)
    y = _empty_like(x)
    y[..., :2] = x[..., :2]
    y[..., 2] = x[..., 0] + x[..., 2]
    y[..., 3] = x[..., 1] + x[..., 3]
    return y


def xyxy2ltwh(x: Boxes) -> Boxes:
    """``xyxy`` -> COCO ``(x, y, w, h)`` (top-left corner)."""
    x = _as_float(x)
    y = _empty_like(x)
    y[..., :2] = x[..., :2]
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def clip_boxes(boxes: Boxes, shape: Sequence[int]) -> Boxes:
    """Clip ``xyxy`` boxes to an image of ``shape = (height, width)``; returns a copy."""
    h, w = shape[0], shape[1]
    boxes = _empty_like(_as_float(boxes))
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w)
        boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h)
    else:
        boxes[..., 0::2] = boxes[..., 0::2].clip(0, w)
        boxes[..., 1::2] = boxes[..., 1::2].clip(0, h)
    return boxes


def letterbox_params(
    src_shape: Sequence[int], dst_shape: Sequence[int], scaleup: bool = True
) -> tuple[float, tuple[float, float]]:
    """The scale and padding that ``letterbox`` applies when fitting ``src`` into ``dst``.

    Args:
        src_shape: ``(h, w)`` of the original image.
        dst_shape: ``(h, w)`` of the network input.
        scaleup: allow enlarging (False only shrinks, as for validation in YOLOv5).

    Returns:
        ``(gain, (pad_w, pad_h))``: the resize factor and the padding added on the left and
        top (half of the total padding on each axis).
    """
    gain = min(dst_shape[0] / src_shape[0], dst_shape[1] / src_shape[1])
    if not scaleup:
        gain = min(gain, 1.0)
    new_w, new_h = round(src_shape[1] * gain), round(src_shape[0] * gain)
    return gain, ((dst_shape[1] - new_w) / 2, (dst_shape[0] - new_h) / 2)


def scale_boxes(
    boxes: Boxes,
    from_shape: Sequence[int],
    to_shape: Sequence[int],
    ratio_pad: tuple[float, tuple[float, float]] | None = None,
) -> Boxes:
    """Map ``xyxy`` boxes from a letterboxed network input back to the original image.

    The exact inverse of the letterbox transform: subtract the padding, divide by the gain,
    then clip to the original image.

    Args:
        boxes: ``[N, 4]`` ``xyxy`` boxes in pixels of the network input.
        from_shape: ``(h, w)`` of the network input.
        to_shape: ``(h, w)`` of the original image.
        ratio_pad: ``(gain, (pad_w, pad_h))`` as returned by :func:`letterbox_params`;
            recomputed from the shapes when omitted.
    """
    gain, (pad_w, pad_h) = ratio_pad or letterbox_params(to_shape, from_shape)
    boxes = _empty_like(_as_float(boxes))
    boxes[..., 0::2] -= pad_w
    boxes[..., 1::2] -= pad_h
    boxes[..., :4] /= gain
    return clip_boxes(boxes, to_shape)


def box_area(boxes: Boxes) -> Boxes:
    """Areas of ``xyxy`` boxes, ``[N, 4] -> [N]``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: ArrayLike, boxes2: ArrayLike) -> torch.Tensor:
    """Pairwise IoU of ``xyxy`` boxes, ``[N, 4] x [M, 4] -> Tensor[N, M]`` (torchvision)."""
    return torchvision.ops.box_iou(torch.as_tensor(boxes1).float(), torch.as_tensor(boxes2).float())

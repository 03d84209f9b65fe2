"""Inference: :class:`Detector` runs a trained model on images and videos and returns :class:`Result`\\s.

Pipeline for each batch of frames (all steps are timed per image in ``Result.speed``)::

    preprocess   letterbox each BGR image into one batch shape -> RGB float 0-1 [B, 3, H, W]
    inference    backend(batch) -> [B, N, 5 + nc] (pixel xywh of the input, objectness, classes)
                 (with augment=True: 3 scaled/flipped passes, mapped back and concatenated)
    postprocess  batched NMS (torchvision) -> letterbox inverse (scale_boxes) -> clipped xyxy

Batch shape: every image is resized so that it fits ``imgsz`` (its long side becomes ``imgsz``
for a square size), keeping its aspect ratio. With ``rect=True`` (default) the batch is padded
only to the smallest multiple of the stride that holds every image of the batch (for a single
image this is YOLOv5 ``detect.py``'s minimal rectangle); with ``rect=False`` every batch is
padded to the full ``imgsz``. Boxes are mapped back with each image's own gain and padding, so
they are exact in either case.

Backends: anything satisfying :class:`Backend` (a callable from a float batch to raw
predictions, plus ``names``, ``stride``, ``fp16``, ``device``). :func:`load_backend` picks one
from the weights file suffix: PyTorch checkpoints (``.pt``) here, exported models (``.onnx``,
``.torchscript``, ``*_openvino_model/``) through :func:`efyolo.runtime.exported.find_backend`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from efyolo.data.augment import PAD_COLOR, letterbox
from efyolo.data.sources import Frame, Sources
from efyolo.utils.checks import DEFAULT_IMGSZ, check_imgsz, check_inference_options
from efyolo.engine.results import Result
from efyolo.utils.devices import select_device
from efyolo.ops.boxes import scale_boxes
from efyolo.ops.nms import non_max_suppression
from efyolo.runtime.autobackend import Backend, load_backend
from efyolo.runtime.pytorch import PyTorchBackend

# Test-time augmentation as in YOLOv5's DetectionModel._forward_augment: (scale, flip left-right).
TTA_PASSES = ((1.0, False), (0.83, True), (0.67, False))

RatioPad = tuple[float, tuple[float, float]]  # (gain, (pad_w, pad_h)) from letterbox


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Pre- and post-processing (pure functions)
# --------------------------------------------------------------------------------------------


def batch_shape(
    shapes: Sequence[tuple[int, int]], imgsz: tuple[int, int], stride: int, rect: bool = True
) -> tuple[int, int]:
    """The ``(h, w)`` network input shape for a batch of images of ``shapes`` (see the module docstring)."""
    if not rect:
        return imgsz
    hs, ws = [], []
    for h, w in shapes:
        gain = min(imgsz[0] / h, imgsz[1] / w)
        hs.append(max(stride, math.ceil(round(h * gain) / stride) * stride))
        ws.append(max(stride, math.ceil(round(w * gain) / stride) * stride))
    return min(max(hs), imgsz[0]), min(max(ws), imgsz[1])


def preprocess(
    images: Sequence[np.ndarray], imgsz: tuple[int, int], stride: int, device: torch.device, rect: bool = True
) -> tuple[torch.Tensor, list[RatioPad]]:
    """Letterbox ``uint8 [H_i, W_i, 3]`` BGR images into one batch.

    Returns:
        ``(x, ratio_pads)``: ``float32 [B, 3, H, W]`` RGB in ``[0, 1]`` on ``device``, and per image
        the ``(gain, (pad_w, pad_h))`` that :func:`efyolo.ops.boxes.scale_boxes` inverts.
    """
    shape = batch_shape([im.shape[:2] for im in images], imgsz, stride, rect)
    boxed, ratio_pads = [], []
    for im in images:
        out, gain, pad = letterbox(im, shape, color=PAD_COLOR, auto=False, scaleup=True, stride=stride)
        boxed.append(out)
        ratio_pads.append((gain, pad))
    x = np.stack(boxed)[..., ::-1].transpose(0, 3, 1, 2)  # (B, H, W, 3) BGR -> (B, 3, H, W) RGB
    x = torch.from_numpy(np.ascontiguousarray(x)).to(device)  # uint8 over the bus, then cast
    return x.float().div_(255), ratio_pads


def scale_batch(x: torch.Tensor, ratio: float, stride: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """Resize a ``[B, 3, H, W]`` batch by ``ratio`` and pad right/bottom to a multiple of ``stride``.

    Returns:
        The new batch and the exact ``(x, y)`` scale factors of the resize (sizes are truncated
        to whole pixels, so they differ slightly from ``ratio``).
    """
    h, w = x.shape[2:]
    nh, nw = max(1, int(h * ratio)), max(1, int(w * ratio))
    y = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    ph, pw = math.ceil(nh / stride) * stride - nh, math.ceil(nw / stride) * stride - nw
    y = F.pad(y, [0, pw, 0, ph], value=PAD_COLOR[0] / 255)
    return y, (nw / w, nh / h)


def augmented_inference(backend: Backend, x: torch.Tensor) -> torch.Tensor:
    """Test-time augmentation: predictions of :data:`TTA_PASSES`, mapped back to ``x``'s pixels.

    Each pass scales (and possibly flips left-right) the batch, runs the backend, divides the
    predicted centres and sizes by the exact scale and un-flips the centres; the passes are
    concatenated along the prediction axis, so NMS merges them. Returns ``[B, N1+N2+N3, 5 + nc]``.
    """
    w = x.shape[3]
    outs = []
    for ratio, flip in TTA_PASSES:
        xi = x.flip(3) if flip else x
        sx, sy = 1.0, 1.0
        if ratio != 1.0:
            xi, (sx, sy) = scale_batch(xi, ratio, backend.stride)
        y = backend(xi).clone()  # (B, N_i, 5 + nc): xc, yc, w, h in pixels of xi
        y[..., [0, 2]] /= sx
        y[..., [1, 3]] /= sy
        if flip:
            y[..., 0] = w - y[..., 0]
        outs.append(y)
    return torch.cat(outs, 1)


def postprocess(
    dets: torch.Tensor, input_shape: Sequence[int], orig_shape: Sequence[int], ratio_pad: RatioPad
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[n, 6]`` NMS output in input pixels -> ``(boxes [n, 4] xyxy, scores [n], labels [n])`` numpy
    in pixels of the original image (exact letterbox inverse, then clipped)."""
    dets = dets.float().cpu()
    boxes = scale_boxes(dets[:, :4], input_shape, orig_shape, ratio_pad=ratio_pad)
    return (
        boxes.numpy().astype(np.float32),
        dets[:, 4].numpy().astype(np.float32),
        dets[:, 5].numpy().astype(np.int64),
    )


# --------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------


class Detector:
    """A trained detector ready for inference.

    Example::

        det = efyolo.Detector("runs/train/exp/weights/best.pt", device="cpu")
        for r in det(["a.jpg", "b.jpg"], imgsz=640, conf=0.25):
            print(r.path, r.boxes, r.scores, r.labels)

    Args:
        weights: a weights file (format from its suffix, see :func:`load_backend`), or a
            ``DetectionModel`` (deep-copied, then fused).
        device: ``"cpu"``, ``"0"``, ``"cuda:0"``, a ``torch.device``, or ``None`` for CUDA 0 when
            available else CPU.
        half: float16 inference; CUDA only (on CPU it raises :class:`EfyoloError`).
        fuse: fold BatchNorm into the convolutions (PyTorch models).

    Attributes:
        backend: the :class:`Backend` that runs the network.
        model: the underlying ``nn.Module`` (PyTorch backends; ``None`` otherwise).
        names, stride, device: from the backend.
        imgsz: default inference size (the checkpoint's training size, else 640).
    """

    def __init__(
        self,
        weights: str | Path | nn.Module,
        device: str | int | torch.device | None = None,
        half: bool = False,
        fuse: bool = True,
    ) -> None:
        dev = select_device(device)
        if isinstance(weights, nn.Module):
            self.backend: Backend = PyTorchBackend(weights, dev, half=half, fuse=fuse)
        else:
            self.backend = load_backend(weights, dev, half=half, fuse=fuse)
        self.weights = weights if not isinstance(weights, nn.Module) else None

    @property
    def model(self) -> nn.Module | None:
        return getattr(self.backend, "model", None)

    @property
    def names(self) -> list[str]:
        return list(self.backend.names)

    @property
    def stride(self) -> int:
        return int(self.backend.stride)

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def imgsz(self) -> int | Sequence[int]:
        return getattr(self.backend, "imgsz", None) or DEFAULT_IMGSZ

    def __call__(self, source: Any, **kwargs: Any) -> list[Result]:
        """Run on ``source`` and return one :class:`Result` per image / video frame.

        Accepts everything :class:`efyolo.data.sources.Sources` does and the keyword arguments
        of :meth:`stream`. Every result keeps its original image; for long videos iterate over
        :meth:`stream` instead.
        """
        return list(self.stream(source, **kwargs))

    def stream(
        self,
        source: Any,
        imgsz: int | Sequence[int] | None = None,
        conf: float = 0.25,
        iou: float = 0.45,
        classes: Sequence[int] | None = None,
        max_det: int = 300,
        agnostic: bool = False,
        multi_label: bool = False,
        augment: bool = False,
        batch: int = 1,
        rect: bool = True,
    ) -> Iterator[Result]:
        """Check the arguments and the source now; return an iterator that reads, batches and runs lazily.

        Args:
            source: a path, folder, glob, video, ``.txt`` list, numpy BGR image, PIL image,
                tensor, a list of those, or a :class:`Sources` (whose ``skipped`` list then
                tells the caller which files could not be read).
            imgsz: inference size, one int or ``(h, w)``, multiples of :attr:`stride`
                (default :attr:`imgsz`).
            conf: confidence threshold (objectness x class probability).
            iou: NMS IoU threshold.
            classes: keep only these class ids.
            max_det: detections per image.
            agnostic: class-agnostic NMS.
            multi_label: allow several classes per box.
            augment: test-time augmentation (:func:`augmented_inference`).
            batch: images per forward pass.
            rect: pad each batch only to the smallest stride multiple (else to full ``imgsz``).
        """
        check_inference_options(conf=conf, iou=iou, batch=batch, max_det=max_det)
        size = check_imgsz(self.imgsz if imgsz is None else imgsz, self.stride)
        sources = source if isinstance(source, Sources) else Sources(source)
        nms = {
            "conf_thres": conf,
            "iou_thres": iou,
            "classes": list(classes) if classes is not None else None,
            "agnostic": agnostic,
            "multi_label": multi_label,
            "max_det": max_det,
        }
        # arguments and paths are checked above, now; frames are read and run as the caller iterates
        return self._generate(sources, size, augment, rect, batch, nms)

    def _generate(
        self, sources: Sources, size: tuple[int, int], augment: bool, rect: bool, batch: int, nms: dict[str, Any]
    ) -> Iterator[Result]:
        pending: list[Frame] = []
        for frame in sources:
            pending.append(frame)
            if len(pending) == batch:
                yield from self._run_batch(pending, size, augment, rect, nms)
                pending = []
        if pending:
            yield from self._run_batch(pending, size, augment, rect, nms)

    def _sync(self) -> float:
        """``time.perf_counter()`` after the device has finished its queued work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _run_batch(
        self, frames: list[Frame], size: tuple[int, int], augment: bool, rect: bool, nms: dict[str, Any]
    ) -> list[Result]:
        with torch.inference_mode():
            t0 = self._sync()
            x, ratio_pads = preprocess([f.image for f in frames], size, self.stride, self.device, rect)
            t1 = self._sync()
            pred = augmented_inference(self.backend, x) if augment else self.backend(x)
            t2 = self._sync()
            dets = non_max_suppression(pred.float(), **nms)
            input_shape = tuple(x.shape[2:])
            outputs = [
                postprocess(d, input_shape, f.image.shape[:2], rp) for d, f, rp in zip(dets, frames, ratio_pads)
            ]
            t3 = self._sync()
        ms = 1e3 / len(frames)  # per image
        speed = {"preprocess": (t1 - t0) * ms, "inference": (t2 - t1) * ms, "postprocess": (t3 - t2) * ms}
        return [
            Result(
                boxes=boxes, scores=scores, labels=labels, names=self.names,
                orig_shape=tuple(f.image.shape[:2]), path=f.path, speed=dict(speed),
                input_shape=input_shape, index=f.index, total=f.total,
                frame=f.frame, frames=f.frames, fps=f.fps, orig_img=f.image,
            )
            for (boxes, scores, labels), f in zip(outputs, frames)
        ]

    def val(self, data: Any, **kwargs: Any) -> Any:
        """Evaluate on a dataset's val split: ``efyolo.engine.validator.validate_model(self.model, data, **kwargs)``
        (the weights file for exported models, which have no ``nn.Module``), at :attr:`imgsz` unless given."""
        from efyolo.engine.validator import validate_model

        size = self.imgsz
        kwargs.setdefault("imgsz", max(size) if isinstance(size, (tuple, list)) else size)
        return validate_model(self.model if self.model is not None else self.weights, data, **kwargs)

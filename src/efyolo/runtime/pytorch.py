"""The PyTorch runtime: an efyolo ``.pt`` checkpoint (or a ``DetectionModel``) in eval mode, fused."""

from __future__ import annotations
from copy import deepcopy
from pathlib import Path
from typing import Sequence
import torch
from torch import nn
from efyolo.errors import EfyoloError


class PyTorchBackend:
    """A :class:`~efyolo.models.DetectionModel` in eval mode, Conv+BN fused, optionally fp16 (CUDA only).

    Args:
        model: the model; deep-copied before fusing unless ``copy=False`` (then it is changed in place).
        device: where to run it.
        half: run in float16; needs a CUDA device.
        fuse: fold BatchNorm into the convolutions.
        imgsz: the image size the model was trained at, if known (the detector's default).
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        half: bool = False,
        fuse: bool = True,
        imgsz: int | Sequence[int] | None = None,
        copy: bool = True,
    ) -> None:
        if half and device.type != "cuda":
            raise EfyoloError(f"--half needs a CUDA device (got {device}); run in float32 on CPU")
        from efyolo.export.exporter import prepare_model

        model = prepare_model(deepcopy(model) if copy else model, device, half=half, fuse=fuse)
        self.model = model
        self.names = [str(n) for n in model.names]
        self.stride = int(model.max_stride)
        self.fp16 = half
        self.device = device
        self.imgsz = imgsz

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device, half: bool = False, fuse: bool = True):
        """Load an efyolo ``.pt`` checkpoint (validated, no pickled code) into a backend."""
        from efyolo.models.checkpoint import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(path, map_location="cpu")
        model = model_from_checkpoint(ckpt, source=path)  # carries the checkpoint's class names
        return cls(model, device, half=half, fuse=fuse, imgsz=ckpt.get("imgsz"), copy=False)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.half() if self.fp16 else batch.float()
        return self.model(x).float()

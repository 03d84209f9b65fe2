"""One loader for every runtime: :func:`load_backend` picks the backend of a weights file by its suffix.

Backends satisfy :class:`Backend`: a callable from a float ``[B, 3, H, W]`` batch in ``[0, 1]`` to
raw predictions ``[B, N, 5 + nc]``, plus ``names``, ``stride``, ``fp16``, ``device`` (and
``imgsz``, the size the model was trained or exported at). ``.pt`` checkpoints run in PyTorch
(:mod:`efyolo.runtime.pytorch`); exported files (``.onnx``, ``.torchscript``,
``*_openvino_model/``) in their runtimes (:mod:`efyolo.runtime.exported`). The predictor, the
validator and the benchmark all load weights through here.
"""

from __future__ import annotations
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable
import torch
from efyolo.errors import EfyoloError
from efyolo.runtime.pytorch import PyTorchBackend


@runtime_checkable
class Backend(Protocol):
    """What the :class:`Detector` needs from a model runtime.

    Attributes:
        names: class names.
        stride: the largest stride; input sides must be multiples of it.
        fp16: whether the model runs in half precision.
        device: where input batches must live.
    """

    names: list[str]
    stride: int
    fp16: bool
    device: torch.device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``float32 [B, 3, H, W]`` RGB in ``[0, 1]`` on :attr:`device` -> ``[B, N, 5 + nc]`` predictions."""
        ...


# weights suffix -> factory(path, device, half, fuse); exported formats live in efyolo.runtime.exported
BACKENDS: dict[str, Callable[..., Backend]] = {".pt": PyTorchBackend.from_checkpoint}


def load_backend(weights: str | Path, device: torch.device, half: bool = False, fuse: bool = True) -> Backend:
    """Pick and build the backend for a weights file by its suffix.

    Raises:
        EfyoloError: the file does not exist, its format is not supported, or it is not a valid
            efyolo file of that format.
    """
    path = Path(weights)
    if not path.exists():
        raise EfyoloError(f"weights file {path} does not exist")
    factory = BACKENDS.get(path.suffix.lower())
    if factory is None:
        from efyolo.runtime.exported import find_backend, supported_suffixes  # ONNX, TorchScript, OpenVINO

        factory = find_backend(path)
        if factory is None:
            supported = sorted(BACKENDS) + supported_suffixes()
            raise EfyoloError(
                f"weights {path}: unsupported weights format '{path.suffix}' (supported: {', '.join(supported)})"
            )
    return factory(path, device, half=half, fuse=fuse)

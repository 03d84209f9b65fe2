"""``--device`` strings (``cpu``, ``0``, ``0,1``, ``cuda:0``) -> ``torch.device``."""

from __future__ import annotations

import torch

from efyolo.errors import EfyoloError


def select_device(device: str | int | torch.device | None = None) -> torch.device:
    """Resolve a user device string; the first listed GPU when several are given (DDP uses LOCAL_RANK).

    Args:
        device: ``None``/``""`` (CUDA 0 if available, else CPU), ``"cpu"``, ``"0"``, ``"0,1"``,
            ``"cuda:1"`` or a ``torch.device``.
    """
    if isinstance(device, torch.device):
        return device
    text = "" if device is None else str(device).strip().lower().replace("cuda:", "")
    if text in ("", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise EfyoloError(f"--device {device!r}: Apple MPS is not available on this machine (use --device cpu)")
        return torch.device("mps")
    indices = [t for t in text.split(",") if t]
    if not all(t.isdigit() for t in indices):
        raise EfyoloError(f"--device {device!r}: expected cpu, a CUDA index (0) or a list (0,1)")
    if not torch.cuda.is_available():
        raise EfyoloError(f"--device {device!r}: CUDA is not available on this machine (use --device cpu)")
    count = torch.cuda.device_count()
    bad = [int(t) for t in indices if int(t) >= count]
    if bad:
        raise EfyoloError(f"--device {device!r}: CUDA device {bad[0]} does not exist ({count} visible)")
    return torch.device(f"cuda:{indices[0]}")

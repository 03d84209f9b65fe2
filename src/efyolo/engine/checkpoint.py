"""Safe checkpoints: plain data only, loadable with ``torch.load(weights_only=True)``, written atomically.

A checkpoint is a dict::

    {
      "format": "efyolo-checkpoint", "version": 1,
      "model_config": {...},        # the resolved model YAML as a dict
      "state_dict": {name: Tensor},  # model weights (EMA weights for training checkpoints)
      "names": ["circle", ...],     # class names
      "imgsz": 640,
      "train_args": {...}, "metrics": {...}, "epoch": int,
      # last.pt only: "optimizer", "scheduler", "ema", "ema_updates", "rng", ...
    }

No class is ever pickled, so loading a checkpoint cannot run code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from efyolo.errors import EfyoloError

FORMAT = "efyolo-checkpoint"
VERSION = 1


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` (plus format tags) to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate an efyolo checkpoint; any other file gets one clear :class:`EfyoloError`."""
    path = Path(path)
    if not path.is_file():
        raise EfyoloError(f"weights file {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EfyoloError(f"weights file {path} is not a readable efyolo checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        keys = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise EfyoloError(f"weights file {path} is not an efyolo checkpoint (found {keys})")
    if ckpt.get("version", 0) > VERSION:
        raise EfyoloError(f"weights file {path} has checkpoint version {ckpt['version']}; upgrade efyolo")
    for key in ("model_config", "state_dict"):
        if key not in ckpt:
            raise EfyoloError(f"weights file {path} is missing key {key!r}")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any] | str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the ``DetectionModel`` stored in a checkpoint (dict or path), with its class names."""
    from efyolo.models import DetectionModel

    source = str(ckpt) if not isinstance(ckpt, dict) else "<checkpoint>"
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt, map_location)
    model = DetectionModel(ckpt["model_config"])
    try:
        result = model.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as err:
        raise EfyoloError(f"weights {source} do not fit their model config: {str(err).splitlines()[1:2]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise EfyoloError(
            f"weights {source} do not fit their own model config: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    model.names = list(ckpt.get("names") or model.names)
    return model

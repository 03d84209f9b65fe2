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

import math
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from efyolo.errors import EfyoloError
from efyolo.utils.files import temp_file_beside

FORMAT = "efyolo-checkpoint"
VERSION = 1
# What --resume needs beyond a plain checkpoint (written by Trainer.save into last.pt).
RESUME_KEYS = ("train_args", "epoch", "model_state", "optimizer", "ema_updates", "rng")


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` (plus format tags) to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    fd, tmp = temp_file_beside(path)  # the umask's mode, not mkstemp's 0600
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
    """Load and validate an efyolo checkpoint; any other file gets one clear :class:`EfyoloError`.

    The file is read with ``weights_only=True``. A file holding pickled classes goes to
    :mod:`efyolo.models.yolov5_import`, which reads it without importing or calling anything it
    names: a YOLOv5 detection checkpoint is converted in memory (with a one-line notice), anything
    else (an Ultralytics or segmentation checkpoint, a file naming ``os.system``) is refused with
    one error that says what it is.
    """
    path = Path(path)
    if not path.is_file():
        raise EfyoloError(f"weights file {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols are not the user's business
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not _looks_like_pickle(path) and not zipfile.is_zipfile(path):
            raise EfyoloError(f"weights file {path} is not a readable efyolo checkpoint (neither a torch zip "
                              "archive nor a pickle: damaged or another format)") from None
        # pickled objects: a YOLOv5 checkpoint (converted, read without running any of it), or refused
        # with the global it names
        return _import_foreign(path, _unpickling_reason(err))
    except Exception as err:  # noqa: BLE001 - random bytes reach torch's unpickler as KeyError, TypeError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EfyoloError(f"weights file {path} is not a readable efyolo checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        keys = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise EfyoloError(f"weights file {path} is not an efyolo checkpoint (found {keys})")
    version = ckpt.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise EfyoloError(f"weights file {path} has checkpoint version {version!r}; upgrade efyolo")
    _check_structure(ckpt, path)
    return ckpt


def _import_foreign(path: Path, reason: str) -> dict[str, Any]:
    """A file of pickled classes: convert it in memory when it is a YOLOv5 checkpoint (read without
    running any of it), else one error naming what it is or the global it was refused for."""
    from efyolo.models.safe_pickle import NotATorchFileError
    from efyolo.models.yolov5_import import NotYoloV5Error, load_yolov5_checkpoint
    from efyolo.utils.log import LOGGER

    try:
        ckpt, found = load_yolov5_checkpoint(path)
    except NotATorchFileError as err:  # a plain pickle: say what it names
        raise EfyoloError(f"weights file {path} is not an efyolo checkpoint: {err.reason}") from None
    except NotYoloV5Error:
        raise EfyoloError(f"weights file {path} is not an efyolo checkpoint: {reason}") from None
    ckpt = {"format": FORMAT, "version": VERSION, **ckpt}
    LOGGER.info(f"{path}: {found.summary()}; converted in memory "
                f"(`efyolo convert --from yolov5 --weights {path}` writes an efyolo checkpoint)")
    _check_structure(ckpt, path)
    return ckpt


def convert_yolov5(weights: str | Path, out: str | Path | None = None):
    """``efyolo convert --from yolov5``: write ``<stem>_efyolo.pt`` (or ``out``) as a plain-data
    checkpoint; returns ``(path written, YoloV5Checkpoint found)``. The input is only read."""
    from efyolo.models.yolov5_import import load_yolov5_checkpoint

    weights = Path(weights)
    target = Path(out) if out else weights.with_name(f"{weights.stem}_efyolo.pt")
    if target.resolve() == weights.resolve():
        raise EfyoloError(f"--out {target} is the input file; choose another name (the input is never modified)")
    if target.suffix != ".pt":
        raise EfyoloError(f"--out {target}: an efyolo checkpoint is a .pt file")
    payload, found = load_yolov5_checkpoint(weights)
    return save_checkpoint(payload, target), found


def _looks_like_pickle(path: Path) -> bool:
    """A pickle of protocol 2 or newer starts with the PROTO opcode (0x80) and its version byte."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _unpickling_reason(err: pickle.UnpicklingError) -> str:
    """Why ``weights_only`` refused a file, in our words (PyTorch's advice to load it unsafely is left out)."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    if found:
        return (f"it holds pickled Python objects ({found.group(1)}), as YOLOv5/Ultralytics checkpoints do; "
                "efyolo reads only plain-data checkpoints and never runs code from a file")
    operand = re.search(r"Unsupported operand (\d+)", str(err))
    if operand:
        return (f"it is a pickle that is not a plain-data checkpoint (pickle opcode {operand.group(1)}); efyolo "
                "reads only plain-data checkpoints and never runs code from a file")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if first.startswith("Weights only load failed"):
        return "it holds pickled Python objects that efyolo does not load (it never runs code from a file)"
    return f"unreadable pickle ({first[:200]})"


def _check_structure(ckpt: dict[str, Any], path: Path) -> None:
    """The keys every reader relies on have the right types, so later code never meets a list for a dict."""
    for key in ("model_config", "state_dict"):
        if key not in ckpt:
            raise EfyoloError(f"weights file {path} is missing key {key!r}")
    if not isinstance(ckpt["model_config"], dict):
        raise EfyoloError(f"weights file {path}: 'model_config' must be a mapping, got {type(ckpt['model_config']).__name__}")
    for key in ("state_dict", "model_state"):
        if key in ckpt:
            _check_tensor_mapping(ckpt[key], f"weights file {path}: {key!r}")
    names = ckpt.get("names")
    if names is not None and (not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names)):
        raise EfyoloError(f"weights file {path}: 'names' must be a list of class names")
    imgsz = ckpt.get("imgsz")
    if imgsz is not None and not _is_size(imgsz):
        raise EfyoloError(f"weights file {path}: 'imgsz' must be a positive int or [h, w], got {imgsz!r}")


def _check_tensor_mapping(value: Any, where: str) -> None:
    if not isinstance(value, Mapping):
        raise EfyoloError(f"{where} must be a mapping of tensor names to tensors, got {type(value).__name__}")
    for name, tensor in value.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise EfyoloError(f"{where} must map names to tensors; entry {name!r} is {type(tensor).__name__}")


def _is_size(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > 0
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def check_resumable(ckpt: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint that ``--resume`` cannot continue exactly, naming the file and the key."""
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise EfyoloError(
            f"--resume {path}: not the last.pt of an unfinished run (missing {', '.join(map(repr, missing))})"
        )
    if not isinstance(ckpt["train_args"], dict):
        raise EfyoloError(f"--resume {path}: 'train_args' must be a mapping")
    if not isinstance(ckpt["epoch"], int) or ckpt["epoch"] < 0:
        raise EfyoloError(f"--resume {path}: 'epoch' must be a non-negative int, got {ckpt['epoch']!r}")
    rng = ckpt["rng"]
    if not isinstance(rng, dict) or "torch" not in rng or "python" not in rng:
        raise EfyoloError(f"--resume {path}: 'rng' must hold the 'torch' and 'python' generator states")


def non_finite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or infinity (weights or BatchNorm statistics)."""
    bad = []
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append(name)
    return bad


def finite_number(value: Any) -> bool:
    """A real, finite number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def model_from_checkpoint(
    ckpt: dict[str, Any] | str | Path, map_location: str | torch.device = "cpu", source: str | Path | None = None
):
    """Rebuild the ``DetectionModel`` stored in a checkpoint (dict or path), with its class names.

    Args:
        ckpt: a loaded checkpoint, or its path.
        source: the file a loaded ``ckpt`` came from, for messages (defaults to the path).
    """
    from efyolo.models import DetectionModel

    if not isinstance(ckpt, dict):
        source = source or ckpt
        ckpt = load_checkpoint(ckpt, map_location)
    where = f"weights file {source}" if source is not None else "checkpoint"
    try:
        model = DetectionModel(ckpt["model_config"])
    except (EfyoloError, KeyError, TypeError, ValueError, IndexError) as err:
        raise EfyoloError(f"{where}: its model config is invalid ({err})") from None
    try:
        result = model.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise EfyoloError(f"{where}: the weights do not fit its model config ({detail[:300]})") from None
    if result.missing_keys or result.unexpected_keys:
        raise EfyoloError(
            f"{where}: the weights do not fit its own model config: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    model.names = list(ckpt.get("names") or model.names)
    return model

"""Load ImageNet EfficientFormer checkpoints into our ``EfficientFormer`` backbone.

Two layouts exist, both accepted:

* official (snap-research): ``patch_embed.{0,1,3,4}`` (stem conv/BN pairs), stages in
  ``network.{0,2,4,6}.{i}``, downsamples in ``network.{1,3,5}.proj/norm``, ``layer_scale_1/2``,
  ``dist_head``; usually wrapped in ``{"model": ...}``; ``.pth``/``.pt``.
* timm: ``stem.conv1/norm1/conv2/norm2``, ``stages.S.downsample.conv/norm``,
  ``stages.S.blocks.i``, ``ls1.gamma``, ``head_dist``; ``.pth`` or ``.safetensors``. Our module
  names are timm's, so this layout loads as is.

Classifier parts (``norm``, ``head``, ``head_dist``/``dist_head``) and the ``attention_bias_idxs``
buffers are ignored; every other key must match the model by name and shape.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from efyolo.errors import EfyoloError

# Keys a classification checkpoint has that a backbone does not use.
IGNORED_KEY = re.compile(r"^(norm|head|head_dist|dist_head)\.|(^|\.)attention_bias_idxs$")
# official patch_embed Sequential index -> timm stem name (2 and 5 are parameter-free ReLUs)
_STEM_NAMES = {"0": "conv1", "1": "norm1", "3": "conv2", "4": "norm2"}
_MAX_LISTED = 6


def official_key_to_timm(key: str) -> str:
    """Rename one official-layout key to timm's (= ours); unknown keys come back unchanged."""
    if m := re.fullmatch(r"patch_embed\.(\d+)\.(.+)", key):
        if m[1] in _STEM_NAMES:
            key = f"stem.{_STEM_NAMES[m[1]]}.{m[2]}"
    elif (m := re.fullmatch(r"network\.(\d+)\.(\d+)\.(.+)", key)) and int(m[1]) % 2 == 0:
        key = f"stages.{int(m[1]) // 2}.blocks.{m[2]}.{m[3]}"  # stage s sits at network[2 s]
    elif (m := re.fullmatch(r"network\.(\d+)\.(proj|norm)\.(.+)", key)) and int(m[1]) % 2 == 1:
        part = "conv" if m[2] == "proj" else "norm"
        key = f"stages.{(int(m[1]) + 1) // 2}.downsample.{part}.{m[3]}"  # network[2 s - 1]
    key = re.sub(r"(^|\.)layer_scale_([12])$", r"\1ls\2.gamma", key)
    return re.sub(r"^dist_head\.", "head_dist.", key)


def checkpoint_layout(state_dict: dict[str, Tensor]) -> str | None:
    """``"official"``, ``"timm"`` or None (neither) from the stem / stage key prefixes."""
    if any(k.startswith(("patch_embed.", "network.")) for k in state_dict):
        return "official"
    if any(k.startswith(("stem.", "stages.")) for k in state_dict):
        return "timm"
    return None


def _read_file(path: Path) -> object:
    """Deserialise a .safetensors or torch file without running pickled code."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    # argparse.Namespace ("args") is stored in some training checkpoints; it is inert data.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file and return its tensors (unwrapping ``model`` / ``state_dict``).

    Raises:
        EfyoloError: the file is missing, unreadable, or holds no tensor dict.
    """
    path = Path(path)
    if not path.is_file():
        raise EfyoloError(f"{path}: EfficientFormer weights file not found")
    try:
        obj = _read_file(path)
    except Exception as exc:  # any parse failure means the file is not a usable checkpoint
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise EfyoloError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {detail})"
        ) from exc
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise EfyoloError(
            f"{path}: not a checkpoint of tensors (expected a state dict, optionally under 'model')"
        )
    keys = list(obj)
    if all(str(k).startswith("module.") for k in keys):  # saved from DataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _listed(names: list[str]) -> str:
    more = f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def load_efficientformer_weights(model: nn.Module, path: str | Path) -> None:
    """Load an official or timm ImageNet checkpoint into an (unfused) EfficientFormer backbone.

    Args:
        model: the backbone (an ``EfficientFormer``), not yet fused.
        path: ``.pth``/``.pt`` (torch) or ``.safetensors`` file.

    Raises:
        EfyoloError: unreadable file, or keys missing / unexpected / of the wrong shape, named
            together with the file (e.g. an L3 checkpoint given to L1).
    """
    name = getattr(model, "name", type(model).__name__)
    if getattr(model, "fused", False):
        raise EfyoloError(f"{path}: load weights into {name} before fuse(), not after")
    raw = read_state_dict(path)
    layout = checkpoint_layout(raw)
    if layout is None:
        raise EfyoloError(
            f"{path}: not EfficientFormer weights: no 'stem.*'/'stages.*' (timm) or "
            f"'patch_embed.*'/'network.*' (official) keys; first keys: {_listed(list(raw))}"
        )
    origin = {(official_key_to_timm(k) if layout == "official" else k): k for k in raw}
    state = {k: raw[o] for k, o in origin.items() if not IGNORED_KEY.search(k)}
    target = model.state_dict()

    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [origin[k] for k in state if k not in target]
    mismatched = [
        shape_mismatch(origin[k], v.shape, target[k].shape)
        for k, v in state.items()
        if k in target and v.shape != target[k].shape
    ]
    raise_if_unfit(path, f"{name} ({layout} layout)", mismatched, missing, unexpected)
    model.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent


def shape_mismatch(key: str, in_file: Sequence[int], in_model: Sequence[int]) -> str:
    """One entry of the "shape mismatch" list: ``key (a, b) in file vs (c, d) in model``."""
    return f"{key} {tuple(in_file)} in file vs {tuple(in_model)} in model"


def raise_if_unfit(
    path: str | Path, subject: str, mismatched: list[str], missing: list[str], unexpected: list[str]
) -> None:
    """One EfyoloError naming the file and every kind of misfit (a few names of each), if any.

    Shared by the EfficientFormer V1/V2 loaders and timm backbones, so a wrong checkpoint reads the
    same everywhere: ``FILE: weights do not fit SUBJECT: shape mismatch: ...; missing keys: ...``.
    """
    problems = [
        f"{label}: {_listed(items)}"
        for label, items in (("shape mismatch", mismatched), ("missing keys", missing), ("unexpected keys", unexpected))
        if items
    ]
    if problems:
        raise EfyoloError(f"{path}: weights do not fit {subject}: " + "; ".join(problems))

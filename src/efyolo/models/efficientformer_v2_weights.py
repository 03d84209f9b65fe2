"""Load ImageNet EfficientFormerV2 checkpoints into our ``EfficientFormerV2`` backbone.

Two layouts exist, both accepted:

* official (snap-research), usually under ``{"model": ...}``, ``.pth``: stem ``patch_embed.{0,1,3,4}``,
  stages in ``network.{0,2,4,6}.{j}``, downsamples ``network.{1,3}.proj/norm`` and
  ``network.5.conv/bn/attn``; blocks hold ``layer_scale_1/2`` of shape ``(C, 1, 1)``,
  ``mlp.fc1/norm1/mid/mid_norm/fc2/norm2``, attention convs as ``nn.Sequential`` indices
  (``q.0``/``q.1``, ``proj.1``/``proj.2``, ``q.local.0``, ``q.proj.0/1``) and persistent
  ``attention_bias_idxs`` buffers; ``dist_head``.
* timm: ``stem.conv1.conv``, ``stages.S.downsample.conv.bn``, ``ls1.gamma`` of shape ``(C,)``,
  ``head_dist``; ``.pth`` or ``.safetensors``. Our module names are timm's, so this layout loads
  as is.

Classifier parts (``norm``, ``head``, ``head_dist``/``dist_head``) and ``attention_bias_idxs`` are
ignored; every other key must match the model by name and shape, else one
:class:`~efyolo.errors.EfyoloError` names the file and the offending keys. The bias tables of both
layouts are numbered ``|dy| * R + |dx|`` (the official order of first appearance is the same
order), so they load unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor, nn

from efyolo.errors import EfyoloError
from efyolo.models.efficientformer_weights import (
    IGNORED_KEY,
    _listed,
    raise_if_unfit,
    shape_mismatch,
    checkpoint_layout,
    read_state_dict,
)

# official patch_embed Sequential index -> timm stem name (2 and 5 are parameter-free GELUs)
_STEM_NAMES = {"0": "conv1.conv", "1": "conv1.bn", "3": "conv2.conv", "4": "conv2.bn"}
_MLP_NAMES = {
    "fc1": "fc1.conv",
    "norm1": "fc1.bn",
    "mid": "mid.conv",
    "mid_norm": "mid.bn",
    "fc2": "fc2.conv",
    "norm2": "fc2.bn",
}
_SEQ = {"0": "conv", "1": "bn"}  # nn.Sequential(conv, BN) -> ConvNorm
_PROJ = {"1": "conv", "2": "bn"}  # nn.Sequential(act, conv, BN) -> act + ConvNorm


def _rename_inner(key: str) -> str:
    """Rename the part of a key below a block / downsample-attention module."""
    key = re.sub(r"^layer_scale_([12])$", r"ls\1.gamma", key)
    key = re.sub(r"^mlp\.(fc1|norm1|mid_norm|mid|fc2|norm2)\.", lambda m: f"mlp.{_MLP_NAMES[m[1]]}.", key)
    prefix = "token_mixer." if key.startswith("token_mixer.") else ""
    rest = key[len(prefix) :]
    if rest.startswith("q.local.0."):  # LGQuery's local conv: Sequential(conv)
        rest = "q.local." + rest[len("q.local.0.") :]
    elif m := re.fullmatch(r"q\.proj\.([01])\.(.+)", rest):  # LGQuery's proj: Sequential(conv, BN)
        rest = f"q.proj.{_SEQ[m[1]]}.{m[2]}"
    elif m := re.fullmatch(r"(q|k|v|v_local|stride_conv)\.([01])\.(.+)", rest):
        rest = f"{m[1]}.{_SEQ[m[2]]}.{m[3]}"
    elif m := re.fullmatch(r"proj\.([12])\.(.+)", rest):
        rest = f"proj.{_PROJ[m[1]]}.{m[2]}"
    return prefix + rest


def official_key_to_timm(key: str) -> str:
    """Rename one official-layout key to timm's (= ours); unknown keys come back unchanged."""
    if m := re.fullmatch(r"patch_embed\.(\d+)\.(.+)", key):
        if m[1] in _STEM_NAMES:
            return f"stem.{_STEM_NAMES[m[1]]}.{m[2]}"
        return key
    if (m := re.fullmatch(r"network\.(\d+)\.(\d+)\.(.+)", key)) and int(m[1]) % 2 == 0:
        return f"stages.{int(m[1]) // 2}.blocks.{m[2]}.{_rename_inner(m[3])}"  # network[2 s]
    if (m := re.fullmatch(r"network\.(\d+)\.(proj|norm|conv|bn)\.(.+)", key)) and int(m[1]) % 2:
        part = "conv" if m[2] in ("proj", "conv") else "bn"
        return f"stages.{(int(m[1]) + 1) // 2}.downsample.conv.{part}.{m[3]}"  # network[2 s - 1]
    if (m := re.fullmatch(r"network\.(\d+)\.attn\.(.+)", key)) and int(m[1]) % 2:
        return f"stages.{(int(m[1]) + 1) // 2}.downsample.attn.{_rename_inner(m[2])}"
    return re.sub(r"^dist_head\.", "head_dist.", key)


def load_efficientformer_v2_weights(model: nn.Module, path: str | Path) -> None:
    """Load an official or timm ImageNet checkpoint into an (unfused) EfficientFormerV2 backbone.

    Args:
        model: the backbone (an ``EfficientFormerV2``), not yet fused.
        path: ``.pth``/``.pt`` (torch) or ``.safetensors`` file.

    Raises:
        EfyoloError: unreadable file, or keys missing / unexpected / of the wrong shape, named
            together with the file (e.g. an S1 checkpoint given to S0).
    """
    name = getattr(model, "name", type(model).__name__)
    if getattr(model, "fused", False):
        raise EfyoloError(f"{path}: load weights into {name} before fuse(), not after")
    raw = read_state_dict(path)
    layout = checkpoint_layout(raw)
    if layout is None:
        raise EfyoloError(
            f"{path}: not EfficientFormerV2 weights: no 'stem.*'/'stages.*' (timm) or "
            f"'patch_embed.*'/'network.*' (official) keys; first keys: {_listed(list(raw))}"
        )
    origin = {(official_key_to_timm(k) if layout == "official" else k): k for k in raw}
    state: dict[str, Tensor] = {}
    for k, o in origin.items():
        if IGNORED_KEY.search(k):
            continue
        value = raw[o]
        if k.endswith(("ls1.gamma", "ls2.gamma")) and value.dim() == 3:
            value = value.flatten()  # official (C, 1, 1) -> (C,)
        state[k] = value
    target = model.state_dict()

    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [origin[k] for k in state if k not in target]
    mismatched = [
        shape_mismatch(origin[k], raw[origin[k]].shape, target[k].shape)
        for k, v in state.items()
        if k in target and v.shape != target[k].shape
    ]
    raise_if_unfit(path, f"{name} ({layout} layout)", mismatched, missing, unexpected)
    model.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent

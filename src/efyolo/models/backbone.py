"""Building a registered backbone by name."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from efyolo.models.registry import BACKBONES


def build_backbone(name: str, weights: str | Path | None = None, **kwargs) -> nn.Module:
    """Build a registered backbone, optionally loading ImageNet weights from a local file.

    Args:
        name: a registered name, e.g. ``"efficientformer_l1"`` (see ``efyolo.models.BACKBONES``), or
            ``"timm:<model name>"`` for any timm model (``"timm:mobilenetv3_large_100"``; needs
            ``pip install "efyolo[timm]"``, never downloads weights).
        weights: a local checkpoint (official or timm layout, ``.pth``/``.pt``/``.safetensors``; for a
            ``timm:`` name the timm classification model's state dict).
        **kwargs: passed to the backbone's factory (e.g. ``drop_path_rate``; for ``timm:`` names, to
            ``timm.create_model``).

    Returns:
        An ``nn.Module`` whose ``forward(x: Tensor[B, 3, H, W])`` returns a list of feature maps
        ``[B, C_i, H / s_i, W / s_i]`` with ``C_i = backbone.channels[i]`` and
        ``s_i = backbone.strides[i]`` (``[8, 16, 32]``); H and W must be multiples of 32.
    """
    return BACKBONES.get(name)(weights=weights, **kwargs)


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load ImageNet weights into the registered backbone inside a detection model.

    Raises:
        EfyoloError: the model has no backbone row, or the file does not fit the backbone.
    """
    from efyolo.errors import EfyoloError

    backbones = [m for m in getattr(model, "model", []) if getattr(m, "type", None) == "Backbone"]
    if not backbones:
        raise EfyoloError(f"--backbone-weights {path}: this model has no registered backbone (a Backbone row)")
    backbone = backbones[0]
    loader = getattr(backbone, "load_pretrained", None)
    if loader is None:
        raise EfyoloError(f"--backbone-weights {path}: backbone {type(backbone).__name__} cannot load weights")
    loader(path)

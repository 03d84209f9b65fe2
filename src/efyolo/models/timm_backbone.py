"""Any timm model as a backbone: the name ``timm:<model_name>`` (``timm:mobilenetv3_large_100``).

``build_timm_backbone`` makes ``timm.create_model(name, pretrained=False, features_only=True,
out_indices=...)`` with the feature maps whose ``feature_info`` reduction is 8, 16 and 32, and wraps
it in :class:`TimmBackbone`, which declares ``channels`` and ``strides`` from that ``feature_info``
(no dummy forward), returns NCHW maps, loads a local timm classification checkpoint and fuses what
timm can re-parameterise. timm is an optional extra (``pip install "efyolo[timm]"``), imported
only when a ``timm:`` name is built; weights are never downloaded.

The name prefix is registered in ``BACKBONES``, so a ``timm:`` name works wherever a registered
backbone name does: a YAML ``Backbone`` row, :func:`efyolo.build_backbone` and built-in model names
(``yolov5n-timm:mobilenetv3_large_100``).
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from efyolo.errors import EfyoloError
from efyolo.models.registry import BACKBONES

PREFIX = "timm:"
STRIDES = (8, 16, 32)
SIZE_DIVISOR = 32
INSTALL_HINT = 'pip install "efyolo[timm]"'
# Arguments efyolo sets itself; a Backbone row's dict may not override them.
_RESERVED = ("pretrained", "features_only", "out_indices", "pretrained_cfg_overlay", "checkpoint_path")
# timm families that work only at their img_size, and efyolo's own implementation of each.
_OWN_IMPLEMENTATION = {
    "efficientformerv2_": "efficientformerv2_s0 (efficientformerv2_s0/s1/s2/l)",
    "efficientformer_": "efficientformer_l1 (efficientformer_n0/l0/l1/l3/l7)",
}
_PLANS: dict[tuple[str, str], "_Plan"] = {}


def import_timm() -> Any:
    """``import timm``, or one EfyoloError naming the extra to install."""
    try:
        import timm
    except ImportError as exc:
        raise EfyoloError(f"timm backbones need the timm package: {INSTALL_HINT}") from exc
    return timm


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def own_implementation_hint(model_name: str) -> str:
    """``"; use backbone efficientformerv2_s0 (efyolo's own, any input size)"`` for timm models
    efyolo implements itself, else a hint about fixed-size arguments."""
    arch = model_name.split(".", 1)[0]
    for prefix, alternative in _OWN_IMPLEMENTATION.items():
        if arch.startswith(prefix):
            own = arch if arch in BACKBONES else alternative
            return f"; use backbone {own} (efyolo's own, any input size)"
    return (
        "; choose a timm model without a fixed input size, or pass its size arguments "
        "(e.g. img_size, dynamic_img_size=True) in the Backbone row's dict"
    )


@dataclass(frozen=True)
class _Plan:
    """What the model's ``feature_info`` says, read before building it for real."""

    out_indices: tuple[int, ...]
    native_size: tuple[int, int]  # (H, W) of its pretrained config (or img_size=...)
    fixed_input_size: bool


def _check_name(timm: Any, model_name: str) -> None:
    if not model_name:
        raise EfyoloError(f"backbone {PREFIX!r} needs a timm model name, e.g. timm:mobilenetv3_large_100")
    if not timm.is_model(model_name):
        arch = model_name.split(".", 1)[0]
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
        raise EfyoloError(f"unknown timm model {model_name!r} (backbone {PREFIX}{model_name}){hint}")


def _create(timm: Any, model_name: str, kwargs: dict[str, Any], **extra: Any) -> nn.Module:
    """``timm.create_model(model_name, pretrained=False, ...)`` with timm's failures as EfyoloError."""
    try:
        return timm.create_model(model_name, pretrained=False, **extra, **kwargs)
    except TypeError as exc:
        raise EfyoloError(
            f"backbone {PREFIX}{model_name}: bad argument in {sorted(kwargs)}: {_first_line(exc)}"
        ) from exc
    except Exception as exc:  # timm raises RuntimeError/AssertionError/ValueError for unsupported setups
        what = " as a feature extractor (features_only=True)" if extra.get("features_only") else ""
        raise EfyoloError(
            f"backbone {PREFIX}{model_name}: timm cannot build it{what}: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc


def _create_on_meta(timm: Any, model_name: str, kwargs: dict[str, Any], **extra: Any) -> nn.Module:
    """Build on the meta device (no memory, no initialisation) to read metadata; on CPU if timm's
    constructor does not work there."""
    try:
        with torch.device("meta"):
            return timm.create_model(model_name, pretrained=False, **extra, **kwargs)
    except Exception:
        return _create(timm, model_name, kwargs, **extra)


def _native_size(pretrained_cfg: dict[str, Any], kwargs: dict[str, Any]) -> tuple[int, int]:
    size = kwargs.get("img_size")
    if size is None:
        size = tuple(pretrained_cfg.get("input_size", (3, 224, 224)))[-2:]
    if isinstance(size, int):
        size = (size, size)
    return int(size[0]), int(size[1])


def _plan(timm: Any, model_name: str, kwargs: dict[str, Any]) -> _Plan:
    """Which feature maps give strides 8, 16, 32 (from ``feature_info``, cached per name and kwargs)."""
    key = (model_name, repr(sorted(kwargs.items())))
    if key in _PLANS:
        return _PLANS[key]
    probe = _create_on_meta(timm, model_name, kwargs, features_only=True)
    info = list(probe.feature_info.info)
    reductions = [int(i["reduction"]) for i in info]
    missing = [s for s in STRIDES if s not in reductions]
    if missing:
        have = ", ".join(str(r) for r in sorted(set(reductions)))
        raise EfyoloError(
            f"backbone {PREFIX}{model_name}: a detector needs feature maps at strides 8, 16 and 32, "
            f"but this timm model has reductions {have} only (missing {', '.join(map(str, missing))}); "
            "choose a hierarchical model (a CNN, or a ViT with stages)"
        )
    # the deepest map of each stride (several ViT-like blocks may share one reduction)
    out_indices = tuple(max(i for i, r in enumerate(reductions) if r == s) for s in STRIDES)
    cfg = dict(getattr(probe, "pretrained_cfg", None) or {})
    plan = _Plan(out_indices, _native_size(cfg, kwargs), bool(cfg.get("fixed_input_size", False)))
    _PLANS[key] = plan
    return plan


def _classification_key(key: str, full: set[str]) -> str | None:
    """The key of a features_only model's tensor in the classification model it was made from.

    timm's feature wrappers keep module names, except ``FeatureListNet`` (a flattened first level of
    ``nn.Sequential``: ``stages.0`` -> ``stages_0``) and ``FeatureGetterNet`` (under ``model.``).
    """
    if key in full:
        return key
    if key.startswith("model.") and key[len("model.") :] in full:
        return key[len("model.") :]
    head, _, rest = key.partition(".")
    for i, ch in enumerate(head):
        if ch == "_":
            candidate = f"{head[:i]}.{head[i + 1:]}.{rest}" if rest else f"{head[:i]}.{head[i + 1:]}"
            if candidate in full:
                return candidate
    return None


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model returning the stride-8, 16 and 32 feature maps.

    Args:
        model_name: a timm model name (``mobilenetv3_large_100``; a pretrained tag such as
            ``.ra_in1k`` is allowed but never downloaded).
        **kwargs: passed to ``timm.create_model`` (``drop_path_rate``, ``in_chans``, ...).

    Attributes:
        name: ``"timm:<model_name>"``.
        channels: channels of each returned map, from timm's ``feature_info``.
        strides: ``[8, 16, 32]``.
        model: the timm feature extractor.
    """

    def __init__(self, model_name: str, **kwargs: Any) -> None:
        super().__init__()
        reserved = sorted(set(kwargs) & set(_RESERVED))
        if reserved:
            raise EfyoloError(
                f"backbone {PREFIX}{model_name}: {', '.join(reserved)} are set by efyolo, not by the Backbone row"
            )
        timm = import_timm()
        _check_name(timm, model_name)
        plan = _plan(timm, model_name, kwargs)
        self.name = PREFIX + model_name
        self.model_name = model_name
        self.timm_kwargs = dict(kwargs)
        self.in_chans = int(kwargs.get("in_chans", 3))
        self.native_size = plan.native_size
        self.fixed_input_size = plan.fixed_input_size
        self.model = _create(timm, model_name, kwargs, features_only=True, out_indices=plan.out_indices)
        info = self.model.feature_info
        self.channels = [int(c) for c in info.channels()]
        self.strides = [int(r) for r in info.reduction()]
        if self.strides != list(STRIDES):  # timm ignored or remapped out_indices
            raise EfyoloError(
                f"backbone {self.name}: timm gave feature maps at strides {self.strides}, expected [8, 16, 32]"
            )
        fmt = getattr(self.model, "output_fmt", "NCHW")
        self.channels_last_output = getattr(fmt, "value", fmt) == "NHWC"  # e.g. Swin
        self.fused = False
        if self.fixed_input_size:
            self._check_other_size()

    def _check_other_size(self) -> None:
        """A model whose pretrained config says fixed input size must run at another size too
        (detection letterboxes to many sizes): one forward, batch 1, at a size just above its own."""
        h, w = (-(-s // SIZE_DIVISOR) * SIZE_DIVISOR for s in self.native_size)
        size = (h + SIZE_DIVISOR, w + 2 * SIZE_DIVISOR)
        was_training = self.training
        try:
            with torch.no_grad():
                self.eval()
                self._run(torch.zeros(1, self.in_chans, *size))  # raises the EfyoloError if it fails
        finally:
            self.train(was_training)

    def _run(self, x: Tensor) -> list[Tensor]:
        try:
            outs = self.model(x)
        except (RuntimeError, AssertionError, ValueError, IndexError) as exc:
            if isinstance(exc, torch.cuda.OutOfMemoryError) or not self.fixed_input_size:
                raise
            H, W = x.shape[-2:]
            if (int(H), int(W)) == self.native_size:
                raise
            nh, nw = self.native_size
            raise EfyoloError(
                f"backbone {self.name}: this timm model works only at its fixed input size {nh}x{nw}, "
                f"not {H}x{W} ({type(exc).__name__}: {_first_line(exc)})"
                + own_implementation_hint(self.model_name)
            ) from exc
        outs = list(outs)
        if self.channels_last_output:
            outs = [o.permute(0, 3, 1, 2) for o in outs]
        return outs

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, C, H, W]`` (H, W multiples of 32) -> maps ``[B, C_i, H / s_i, W / s_i]``."""
        H, W = x.shape[-2:]
        if H % SIZE_DIVISOR or W % SIZE_DIVISOR:
            raise EfyoloError(f"{self.name}: input size {H}x{W} is not a multiple of {SIZE_DIVISOR} (HxW)")
        return self._run(x)

    def load_pretrained(self, path: str | Path) -> None:
        """Load a local timm classification checkpoint (``.pth``/``.pt``/``.safetensors``, e.g. the
        ``state_dict()`` of ``timm.create_model(name)``); the classifier and any other tensors the
        feature extractor does not use are dropped.

        Raises:
            EfyoloError: unreadable file, or tensors missing / unexpected / of the wrong shape, by name.
        """
        from efyolo.models.efficientformer_weights import raise_if_unfit, read_state_dict, shape_mismatch

        path = Path(path)
        if self.fused:
            raise EfyoloError(f"{path}: load weights into {self.name} before fuse(), not after")
        if not path.is_file():
            raise EfyoloError(f"{path}: weights file for backbone {self.name} not found")
        raw = read_state_dict(path)
        full = set(_create_on_meta(import_timm(), self.model_name, self.timm_kwargs).state_dict())
        target = self.model.state_dict()
        state, missing, mismatched = {}, [], []
        for key, value in target.items():
            source = key if key in raw else _classification_key(key, full)
            if source is None or source not in raw:
                if not key.endswith("num_batches_tracked"):
                    missing.append(source or key)
            elif raw[source].shape != value.shape:
                mismatched.append(shape_mismatch(source, raw[source].shape, value.shape))
            else:
                state[key] = raw[source]
        unexpected = [k for k in raw if k not in full and k not in target]
        raise_if_unfit(path, f"{self.name} (timm classification layout)", mismatched, missing, unexpected)
        self.model.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent

    def fuse(self) -> "TimmBackbone":
        """Re-parameterise in place for inference where timm can (RepViT, MobileOne, FastViT, ...:
        modules with ``fuse``/``reparameterize``/``switch_to_deploy``); otherwise nothing. Eval-mode
        outputs stay the same; do not train the fused model. Returns ``self``."""
        if self.fused:
            return self
        hooks = ("fuse", "reparameterize", "switch_to_deploy")
        if any(callable(getattr(m, h, None)) for m in self.model.modules() for h in hooks if m is not self.model):
            from timm.utils.model import reparameterize_model

            self.model = reparameterize_model(self.model, inplace=True)
        self.fused = True
        return self

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, strides={self.strides}"


def build_timm_backbone(model_name: str, weights: str | Path | None = None, **kwargs: Any) -> TimmBackbone:
    """Build ``timm:<model_name>``, optionally loading a local timm classification checkpoint."""
    model = TimmBackbone(model_name, **kwargs)
    if weights is not None:
        model.load_pretrained(weights)
    return model


def _resolve(model_name: str) -> Callable[..., TimmBackbone]:
    return functools.partial(build_timm_backbone, model_name)


BACKBONES.add_prefix(PREFIX, _resolve, "timm:<model name> for any timm model")

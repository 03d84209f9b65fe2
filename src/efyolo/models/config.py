"""Model configs: YOLOv5's YAML format, built-in names, and safe argument resolution.

A model is named either by a built-in name or by a path to a YAML file. Built-in names:

* ``yolov5{n,s,m,l,x}``: ``configs/yolov5.yaml`` at one of its ``scales``.
* ``yolov5{n,s,m,l,x}-<backbone>``: ``configs/yolov5-backbone.yaml`` with any registered backbone,
  its name written with dashes (``yolov5s-efficientformer-l1`` -> ``efficientformer_l1``).
* ``yolov5{n,s,m,l,x}-timm:<model>``: the same with any timm model, spelled as timm spells it
  (``yolov5n-timm:mobilenetv3_large_100``; see ``models/timm_backbone.py``).
* ``yolov5{n,s,m,l,x}6``: YOLOv5 v7.0's P6 models (four levels, stride 64), ``configs/yolov5-p6.yaml``.
* ``yolov5{n,s,m,l,x}-<variant>``: ``configs/yolov5-<variant>.yaml`` for the other files there
  (``yolov5s-bot3``: a Bottleneck Transformer in the neck).

A variant is the base file plus ``depth_multiple``/``width_multiple`` from its ``scales`` entry,
not a copy of the file. The resolved config is a plain dict (what checkpoints store).
"""

from __future__ import annotations

import ast
import copy
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from efyolo.errors import EfyoloError
from efyolo.utils.yaml_io import read_yaml_mapping

CONFIG_DIR = "configs"
_BUILTIN = re.compile(
    r"^yolov5(?P<scale>[nsmlx])(?P<p6>6)?(?:-(?:(?P<timm>timm:[A-Za-z0-9_.\-]*)|(?P<backbone>[a-z0-9_\-]+)))?$"
)
TIMM_MODEL_NAMES = "yolov5{n,s,m,l,x}-timm:<timm model name>"
REQUIRED_KEYS = ("backbone", "head")
BACKBONE_FILE = "yolov5-backbone.yaml"  # the YOLOv5 neck and head under a registered backbone
P6_FILE = "yolov5-p6.yaml"


def _read_builtin(filename: str) -> dict[str, Any]:
    text = resources.files("efyolo.models").joinpath(CONFIG_DIR, filename).read_text()
    return yaml.safe_load(text)


def builtin_model_names() -> list[str]:
    """Every built-in model name (plain YOLOv5 scales, and each scale with each registered
    backbone); ``yolov5{n,s,m,l,x}-timm:<model>`` names are not listed (any timm model)."""
    from efyolo.models.registry import BACKBONES

    scales = list(_read_builtin("yolov5.yaml")["scales"])
    names = [f"yolov5{s}" for s in scales] + [f"yolov5{s}6" for s in scales]
    names += [f"yolov5{s}-{v}" for v in variant_files() for s in scales]
    names += [f"yolov5{s}-{b.replace('_', '-')}" for b in BACKBONES.names() for s in scales]
    return names


def variant_files() -> dict[str, str]:
    """Variant name -> built-in file: every ``configs/yolov5-<variant>.yaml`` but the backbone and
    P6 files, which have their own names."""
    folder = resources.files("efyolo.models").joinpath(CONFIG_DIR)
    files = sorted(f.name for f in folder.iterdir() if f.name.startswith("yolov5-") and f.name.endswith(".yaml"))
    return {f[len("yolov5-") : -len(".yaml")]: f for f in files if f not in (BACKBONE_FILE, P6_FILE)}


def _load_yaml_file(path: Path) -> dict[str, Any]:
    cfg = read_yaml_mapping(path, "model config")
    cfg.setdefault("yaml_file", str(path))
    return cfg


def apply_scale(cfg: dict[str, Any], scale: str | None, source: str) -> dict[str, Any]:
    """Set ``depth_multiple``/``width_multiple`` from ``cfg['scales'][scale]``."""
    scales = cfg.get("scales")
    if scales is None:
        return cfg
    scale = scale or cfg.get("scale")
    if scale is None:
        if "depth_multiple" in cfg and "width_multiple" in cfg:
            return cfg
        raise EfyoloError(f"model config {source} has 'scales' {list(scales)}: set key 'scale' to one of them")
    if scale not in scales:
        raise EfyoloError(f"model config {source}: scale {scale!r} not in 'scales' {list(scales)}")
    depth, width = scales[scale][:2]
    cfg = {k: v for k, v in cfg.items() if k != "scales"}
    cfg.update(scale=scale, depth_multiple=depth, width_multiple=width)
    return cfg


def load_model_config(name_or_path: str | Path | dict[str, Any], nc: int | None = None) -> dict[str, Any]:
    """Resolve a built-in name, a YAML path or an already-loaded dict to a full config dict.

    Args:
        name_or_path: ``"yolov5s"``, ``"yolov5s-efficientformer-l1"``, ``"path/to/model.yaml"`` or a dict.
        nc: override the number of classes.

    Returns:
        A new dict with at least ``nc``, ``depth_multiple``, ``width_multiple``, ``anchors``,
        ``backbone`` and ``head``.
    """
    if isinstance(name_or_path, dict):
        cfg, source = copy.deepcopy(name_or_path), "<dict>"
        cfg = apply_scale(cfg, None, source)
    else:
        text = str(name_or_path)
        path = Path(text)
        # "yolov5s.yaml" names the built-in config unless such a file exists here.
        match = _BUILTIN.match(path.stem if path.suffix in (".yaml", ".yml") else text)
        if path.is_file():
            source = text
            cfg = apply_scale(_load_yaml_file(path), None, source)
        elif match:
            cfg, source = _builtin_config(match), match.group(0)
        elif path.suffix in (".yaml", ".yml"):
            raise EfyoloError(f"model config {text} does not exist")
        else:
            raise EfyoloError(
                f"unknown model {text!r}: expected a built-in name ({', '.join(builtin_model_names())}, "
                f"{TIMM_MODEL_NAMES}) or a path to a model YAML"
            )
    for key in REQUIRED_KEYS:
        if key not in cfg:
            raise EfyoloError(f"model config {source} is missing key {key!r}")
    if nc is not None:
        cfg["nc"] = int(nc)
    if "nc" not in cfg:
        raise EfyoloError(f"model config {source} is missing key 'nc' (or pass nc=...)")
    cfg.setdefault("depth_multiple", 1.0)
    cfg.setdefault("width_multiple", 1.0)
    return cfg


def _builtin_config(match: re.Match) -> dict[str, Any]:
    from efyolo.models.registry import BACKBONES

    backbone, timm_name = match.group("backbone"), match.group("timm")
    if match.group("p6"):
        if backbone is not None or timm_name is not None:
            raise EfyoloError(
                f"unknown model {match.group(0)!r}: P6 models (yolov5n6 .. yolov5x6) take no backbone or variant"
            )
        cfg = _read_builtin(P6_FILE)
    elif backbone is None and timm_name is None:
        cfg = _read_builtin("yolov5.yaml")
    elif backbone in variant_files():
        cfg = _read_builtin(variant_files()[backbone])
    else:
        # a timm name keeps timm's spelling; a registered name is written with dashes
        backbone_name = timm_name if timm_name is not None else backbone.replace("-", "_")
        if backbone_name not in BACKBONES:
            raise EfyoloError(BACKBONES.unknown_message(backbone_name) + f" in model name {match.group(0)!r}")
        cfg = _read_builtin("yolov5-backbone.yaml")
        cfg["backbone_model"] = backbone_name
    cfg = apply_scale(cfg, match.group("scale"), match.group(0))
    cfg["name"] = match.group(0)
    return cfg


def resolve_arg(value: Any, cfg: dict[str, Any]) -> Any:
    """Resolve one YAML argument without ``eval``.

    Strings naming a top-level scalar or list key of the config (``nc``, ``anchors``,
    ``backbone_model``) take its value; ``"None"``/``"True"``/``"False"`` and numeric strings become
    Python literals; any other string stays a string (``"nearest"``).
    """
    if not isinstance(value, str):
        return value
    if value in cfg and value not in REQUIRED_KEYS:
        return cfg[value]
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value

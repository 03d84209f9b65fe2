"""YOLOv5 ``.pt`` checkpoints -> efyolo checkpoints, read safely (no YOLOv5 import, no pickle code run).

A YOLOv5 checkpoint is ``torch.save`` of a dict whose ``model`` (and ``ema``) is a pickled
``models.yolo.DetectionModel`` (``models.yolo.Model`` before v6.2):

    released / strip_optimizer: {epoch: -1, model: DetectionModel (float16), ema: None, optimizer: None, ...}
    train.py last.pt:           {epoch, best_fitness, model, ema, updates, optimizer, opt, git, date}

:mod:`efyolo.models.safe_pickle` reads it with every class as an inert placeholder, so what we
recover is data: ``model.yaml`` (the config dict YOLOv5 built from, with ``nc`` and anchors as
given), the module tree's parameters and buffers under YOLOv5's own key names (efyolo builds the
same layers under the same names, so they load one to one), ``names``, ``stride`` and the
``anchors`` buffer as trained (AutoAnchor may have rewritten it). The weights YOLOv5 itself
evaluates are taken: ``ema`` when present, else ``model`` (strip_optimizer copies the EMA into
``model``, so a released file's ``model`` is its EMA).

Releases differ in what weights alone do not show: before v6.0 Detect decoded with a second anchor
buffer (``anchor_grid``), and v4.0-v6.1's BottleneckCSP had LeakyReLU(0.1) where v6.2 has SiLU. So
the file's module tree (classes and settings such as ``eps``, ``stride``, ``negative_slope``) is
compared with the model efyolo builds, the activations it holds go into the config
(``activation``, ``csp_activation``), and any other difference is named rather than imported.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from efyolo.errors import EfyoloError
from efyolo.models.safe_pickle import (
    Placeholder,
    Policy,
    iter_modules,
    module_tree_state,
    read_torch_file,
)

# The modules whose classes a YOLOv5 (v5.0 - v7.0) or Ultralytics checkpoint pickles. The
# ``yolov5.`` forms are what the PyPI ``yolov5`` package writes.
YOLOV5_MODULES = ("models.yolo", "models.common", "models.experimental", "utils.activations")
CLASS_PREFIXES = (
    *(f"{m}." for m in YOLOV5_MODULES),
    *(f"yolov5.{m}." for m in YOLOV5_MODULES),
    "torch.nn.modules.",
    "ultralytics.",  # read only to name it: Ultralytics YOLOv8 / YOLO11 checkpoints are refused
    # a YOLOv5 classification model keeps its transforms (read only to refuse it as such)
    "torchvision.transforms.", "utils.augmentations.", "yolov5.utils.augmentations.",
)
EXTRA_CLASSES = frozenset({"argparse.Namespace", "types.SimpleNamespace", "numpy.ndarray"})
RECORDED = frozenset({"builtins.getattr"})  # YOLOv5's Segment head: self.detect = Detect.forward
DETECTION_CLASSES = ("DetectionModel", "Model")  # v6.2+ name, and the older alias


class NotYoloV5Error(EfyoloError):
    """A safely read torch file that holds no YOLOv5 (or Ultralytics) model at all."""


def yolov5_policy() -> Policy:
    return Policy(class_prefixes=CLASS_PREFIXES, extra_classes=EXTRA_CLASSES, recorded=RECORDED)


@dataclass
class YoloV5Checkpoint:
    """What a YOLOv5 checkpoint holds, as plain data."""

    path: Path
    yaml: dict[str, Any]
    state_dict: dict[str, torch.Tensor]  # float32, YOLOv5 key names
    names: list[str]
    stride: list[float]
    anchors: torch.Tensor | None  # [nl, na, 2] in grid units, as trained
    weights: str  # "ema" (the ema entry) or "model"
    epoch: int | None
    opt: dict[str, Any] | None
    has_optimizer: bool
    stored_dtype: str  # "float16" for released / last.pt files
    globals: list[str] = field(default_factory=list)
    # every submodule: dotted name -> (class name, the settings compared with efyolo's model)
    layout: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        name = self.yaml.get("yaml_file") or ""
        return Path(str(name)).stem if name else "custom config"

    @property
    def parameters(self) -> int:
        return sum(t.numel() for k, t in self.state_dict.items() if not _is_buffer_key(k))

    def summary(self) -> str:
        """One line: architecture, classes, parameter count, which weights, epoch."""
        weights = ("EMA weights (ema entry)" if self.weights == "ema"
                   else "model entry (a stripped file's model is its EMA)")
        epoch = "" if self.epoch is None or self.epoch < 0 else f", epoch {self.epoch}"
        return (f"YOLOv5 {self.architecture}: {len(self.names)} classes, {self.parameters:,} parameters, "
                f"{weights}, stored {self.stored_dtype}{epoch}")


def _is_buffer_key(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked", ".anchors"))


def read_yolov5(path: str | Path) -> YoloV5Checkpoint:
    """Read a YOLOv5 detection checkpoint safely; one :class:`EfyoloError` for anything else."""
    path = Path(path)
    policy = yolov5_policy()
    top = read_torch_file(path, policy)
    model = _model_entry(top, path, policy.seen)
    top_class = model._global
    _refuse_other_tasks(model, top_class, path)
    yaml_cfg = _yaml_of(model, path)
    stored = module_tree_state(model)  # as saved (float16 for YOLOv5's own files)
    state = {k: v.float() if v.is_floating_point() else v.clone() for k, v in stored.items()}
    detect = _detect_module(model, path)
    stride = vars(detect).get("stride")
    anchors = _decoding_anchors(state, _detect_key(model), stride)
    ema = top.get("ema") if isinstance(top, dict) else None
    opt = top.get("opt") if isinstance(top, dict) else None
    epoch = top.get("epoch") if isinstance(top, dict) else None
    dtypes = {str(t.dtype).removeprefix("torch.") for t in stored.values() if t.is_floating_point()}
    return YoloV5Checkpoint(
        path=path,
        yaml=yaml_cfg,
        state_dict=state,
        names=_names_of(model, yaml_cfg),
        stride=[float(s) for s in stride.tolist()] if isinstance(stride, torch.Tensor) else [],
        anchors=anchors,
        weights="ema" if isinstance(ema, Placeholder) else "model",
        epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
        opt=opt if isinstance(opt, dict) else None,
        has_optimizer=isinstance(top, dict) and isinstance(top.get("optimizer"), dict),
        stored_dtype="/".join(sorted(dtypes)) or "none",
        globals=sorted(policy.seen),
        layout=_layout(model),
    )


def _decoding_anchors(state: dict[str, torch.Tensor], detect_key: str, stride: Any) -> torch.Tensor | None:
    """The anchors the model decodes with, in grid units, written back to ``state``.

    YOLOv5 before v6.0 kept a second copy, the ``anchor_grid`` buffer ([nl, 1, na, 1, 1, 2], pixels),
    and decoded box sizes with it (``anchors`` served the loss); AutoAnchor wrote both. efyolo has
    one buffer, so the grid copy is taken (what the file's model predicted with) and dropped.
    """
    anchors = state.get(f"{detect_key}anchors")
    grid = state.pop(f"{detect_key}anchor_grid", None)
    if grid is None or anchors is None or not isinstance(stride, torch.Tensor) or grid.numel() != anchors.numel():
        return anchors
    anchors = grid.reshape(anchors.shape) / stride.float().view(-1, 1, 1)
    state[f"{detect_key}anchors"] = anchors
    return anchors


# Module settings that change a layer's output without being weights: compared between the file's
# modules and the model efyolo builds (check_fits), so that nothing imports silently different.
COMPARED_SETTINGS = ("stride", "padding", "dilation", "groups", "kernel_size", "eps", "negative_slope",
                     "approximate", "scale_factor", "mode", "ceil_mode", "count_include_pad")


def _layout(model: Placeholder) -> dict[str, tuple[str, dict[str, Any]]]:
    out = {}
    for name, module in iter_modules(model):
        if not name:
            continue  # the model itself: DetectionModel or the older Model
        state = vars(module)
        plain = {k: _plain(state[k]) for k in COMPARED_SETTINGS if k in state}
        out[name] = (module._global.rsplit(".", 1)[-1], {k: v for k, v in plain.items() if v is not None})
    return out


def _plain(value: Any) -> Any:
    """A setting as comparable plain data (tuples for lists); None for anything else."""
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return None if any(v is None for v in items) else tuple(items)
    if isinstance(value, (bool, int, float, str)):
        return value
    return None


def _model_entry(top: Any, path: Path, seen: set[str]) -> Placeholder:
    """The module tree YOLOv5 evaluates: ``ema`` when present, else ``model``."""
    if any(g.startswith("ultralytics.") for g in seen):
        raise EfyoloError(_ultralytics_message(top, path))
    if isinstance(top, Placeholder):  # torch.save(model) rather than a checkpoint dict
        top = {"model": top}
    if not isinstance(top, dict):
        raise NotYoloV5Error(f"weights file {path} is not a YOLOv5 checkpoint (it holds a {type(top).__name__})")
    for key in ("ema", "model"):
        entry = top.get(key)
        if isinstance(entry, Placeholder):
            return entry
    if isinstance(top.get("model"), dict) or "state_dict" in top:
        raise EfyoloError(f"weights file {path} holds a bare state dict, not a YOLOv5 model: it has no "
                          "config to rebuild the model from")
    raise NotYoloV5Error(f"weights file {path} is not a YOLOv5 checkpoint (no 'model' entry; keys {list(top)[:6]})")


def _ultralytics_message(top: Any, path: Path) -> str:
    model = top.get("ema") or top.get("model") if isinstance(top, dict) else top
    family = "Ultralytics YOLOv8 / YOLO11"
    if isinstance(model, Placeholder):
        yaml_cfg = vars(model).get("yaml")
        yaml_file = str(yaml_cfg.get("yaml_file", "")) if isinstance(yaml_cfg, dict) else ""
        classes = {m._global.rsplit(".", 1)[-1] for _, m in iter_modules(model)}
        if yaml_file:
            family = f"Ultralytics {Path(yaml_file).stem}"
        elif "C3k2" in classes:
            family = "Ultralytics YOLO11"
        elif "C2f" in classes:
            family = "Ultralytics YOLOv8"
    return (f"weights file {path} is an {family} checkpoint (ultralytics.nn.tasks classes), not a YOLOv5 model; "
            "efyolo imports YOLOv5 detection checkpoints only")


def _refuse_other_tasks(model: Placeholder, top_class: str, path: Path) -> None:
    name = top_class.rsplit(".", 1)[-1]
    last = _last_layer_class(model)
    if name == "SegmentationModel" or last == "Segment":
        raise EfyoloError(f"weights file {path} is a YOLOv5 segmentation checkpoint ({top_class}); "
                          "efyolo supports detection models only")
    if name == "ClassificationModel" or last == "Classify":
        raise EfyoloError(f"weights file {path} is a YOLOv5 classification checkpoint ({top_class}); "
                          "efyolo supports detection models only")
    if name not in DETECTION_CLASSES or not top_class.removeprefix("yolov5.").startswith("models.yolo."):
        raise EfyoloError(f"weights file {path} holds a {top_class}, not a YOLOv5 detection model "
                          "(models.yolo.DetectionModel)")
    if last != "Detect":
        raise EfyoloError(f"weights file {path}: the model's last layer is {last}, not YOLOv5's Detect head")


def _layers(model: Placeholder) -> list[Placeholder]:
    seq = (vars(model).get("_modules") or {}).get("model")
    if not isinstance(seq, Placeholder):
        return []
    return [m for m in (vars(seq).get("_modules") or {}).values() if isinstance(m, Placeholder)]


def _last_layer_class(model: Placeholder) -> str:
    layers = _layers(model)
    return layers[-1]._global.rsplit(".", 1)[-1] if layers else "none"


def _detect_module(model: Placeholder, path: Path) -> Placeholder:
    layers = _layers(model)
    if not layers:
        raise EfyoloError(f"weights file {path}: the model has no layer list (model.model)")
    return layers[-1]


def _detect_key(model: Placeholder) -> str:
    return f"model.{len(_layers(model)) - 1}."


def _yaml_of(model: Placeholder, path: Path) -> dict[str, Any]:
    """``model.yaml``: the config dict; modules efyolo lacks are named here."""
    from efyolo.models.parser import MODULES

    cfg = vars(model).get("yaml")
    if not isinstance(cfg, dict) or "backbone" not in cfg or "head" not in cfg:
        raise EfyoloError(f"weights file {path}: the YOLOv5 model carries no config dict (model.yaml)")
    cfg = copy.deepcopy(cfg)
    missing = []
    for section in ("backbone", "head"):
        rows = cfg.get(section)
        if not isinstance(rows, list):
            raise EfyoloError(f"weights file {path}: model.yaml {section!r} is not a list of rows")
        for row in rows:
            module = row[2] if isinstance(row, (list, tuple)) and len(row) == 4 else None
            if not isinstance(module, str):
                raise EfyoloError(f"weights file {path}: model.yaml {section} row {row!r} is malformed")
            name = module.removeprefix("torch.")
            if name not in MODULES and name not in missing:
                missing.append(name)
    if missing:
        raise EfyoloError(f"weights file {path}: its config uses module(s) {', '.join(missing)}, which efyolo "
                          "does not have")
    yaml_file = vars(model).get("yaml_file")
    if isinstance(yaml_file, str):
        cfg["yaml_file"] = yaml_file
    return cfg


def _names_of(model: Placeholder, cfg: dict[str, Any]) -> list[str]:
    names = vars(model).get("names")
    nc = int(cfg.get("nc") or 0)
    if isinstance(names, dict):  # v7.0 datasets give {0: 'person', ...}
        names = [str(names[k]) for k in sorted(names)]
    if isinstance(names, (list, tuple)) and len(names) == nc:
        return [str(n) for n in names]
    return [str(i) for i in range(nc)]


def efyolo_config(ck: YoloV5Checkpoint) -> dict[str, Any]:
    """The model config efyolo builds: YOLOv5's dict, anchors as trained (pixels), no YOLOv5-only
    keys, and the activations the file's modules hold where they are not efyolo's defaults."""
    cfg = {k: v for k, v in ck.yaml.items() if k not in ("ch", "yaml_file")}
    for key, owner in (("activation", "Conv"), ("csp_activation", "BottleneckCSP")):
        expr = _uniform_activation(ck.layout, owner)
        if expr is not None and key not in cfg:
            cfg[key] = expr
    if ck.anchors is not None and ck.stride and ck.anchors.shape[0] == len(ck.stride):
        px = ck.anchors * torch.tensor(ck.stride).view(-1, 1, 1)
        cfg["anchors"] = [[_clean(v) for v in level.flatten().tolist()] for level in px]
    return cfg


def _uniform_activation(layout: dict[str, tuple[str, dict[str, Any]]], owner: str) -> str | None:
    """``"nn.LeakyReLU(0.1)"`` when every ``<owner>.act`` of the file (Identity aside) is that one
    non-SiLU activation: a model trained with a changed ``Conv.default_act`` (v3.x's Hardswish Convs
    too, untested), v4.0-v6.1's BottleneckCSP (LeakyReLU after the concat)."""
    from efyolo.models.activations import ACTIVATIONS

    kinds = set()
    for name, (cls, settings) in layout.items():
        parent = layout.get(name.rsplit(".", 1)[0]) if name.endswith(".act") and "." in name else None
        if parent is not None and parent[0] == owner and cls != "Identity":
            kinds.add((cls, settings.get("negative_slope")))
    if len(kinds) != 1:
        return None  # none, or mixed: check_fits names any difference
    (cls, slope), = kinds
    if cls == "SiLU" or cls not in ACTIVATIONS:
        return None
    return f"nn.{cls}({slope})" if slope is not None else f"nn.{cls}()"


def _clean(value: float) -> float | int:
    r = round(value, 4)
    return int(r) if r == int(r) else r


def to_efyolo_checkpoint(ck: YoloV5Checkpoint) -> dict[str, Any]:
    """An efyolo checkpoint payload (for :func:`~efyolo.models.checkpoint.save_checkpoint`)."""
    imgsz = (ck.opt or {}).get("imgsz")
    if isinstance(imgsz, (list, tuple)) and imgsz:
        imgsz = imgsz[0]
    return {
        "model_config": efyolo_config(ck),
        "state_dict": dict(ck.state_dict),
        "names": list(ck.names),
        "imgsz": imgsz if isinstance(imgsz, int) and not isinstance(imgsz, bool) and imgsz > 0 else 640,
        "imported_from": {"format": "yolov5", "file": str(ck.path), "weights": ck.weights, "epoch": ck.epoch,
                          "architecture": ck.architecture},
    }


def check_fits(ck: YoloV5Checkpoint) -> None:
    """Build the efyolo model and load the weights strictly: a config or weight that does not fit is named."""
    from efyolo.models import DetectionModel

    try:
        model = DetectionModel(efyolo_config(ck))
    except EfyoloError as err:
        raise EfyoloError(f"weights file {ck.path}: its YOLOv5 config does not build in efyolo ({err})") from None
    own = model.state_dict()
    missing = [k for k in own if k not in ck.state_dict]
    extra = [k for k in ck.state_dict if k not in own]
    wrong = [k for k in own if k in ck.state_dict and own[k].shape != ck.state_dict[k].shape]
    if missing or extra or wrong:
        raise EfyoloError(f"weights file {ck.path}: the YOLOv5 weights do not fit the model its config builds "
                          f"(missing {missing[:3]}, unexpected {extra[:3]}, other shapes {wrong[:3]})")
    difference = _first_difference(ck.layout, model)
    if difference:
        raise EfyoloError(f"weights file {ck.path}: {difference}; efyolo cannot build this model exactly")
    bad = [k for k, t in ck.state_dict.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise EfyoloError(f"weights file {ck.path}: {len(bad)} tensors hold NaN or infinity (first: {bad[0]})")


def _first_difference(layout: dict[str, tuple[str, dict[str, Any]]], model: torch.nn.Module) -> str | None:
    """The first torch module of the file whose class or settings efyolo's model does not share
    (a YOLOv5 block of another release, an edited activation): weights alone would not show it."""
    ours = dict(model.named_modules())
    for name, (cls, settings) in layout.items():
        module = ours.get(name)
        if module is None:
            if cls in ("Identity", "Dropout"):
                continue  # no computation
            return f"module {name} ({cls}) has no counterpart in efyolo's model"
        if type(module).__name__ != cls:
            return f"module {name} is a {cls} in the file but a {type(module).__name__} in efyolo"
        for key, value in settings.items():
            mine = _plain(getattr(module, key, None))
            if mine is not None and mine != value and not _close(mine, value):
                return f"module {name} ({cls}) has {key}={value!r} in the file but {mine!r} in efyolo"
    return None


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-9 * max(1.0, abs(b))


def load_yolov5_checkpoint(path: str | Path) -> tuple[dict[str, Any], YoloV5Checkpoint]:
    """Read, check and convert in memory: ``(efyolo checkpoint payload, what was found)``."""
    ck = read_yolov5(path)
    check_fits(ck)
    return to_efyolo_checkpoint(ck), ck

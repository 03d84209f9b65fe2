"""Training options (:class:`TrainConfig`) and hyperparameters (YOLOv5's YAML keys)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from efyolo.errors import EfyoloError
from efyolo.utils.yaml_io import read_yaml_mapping

# `efyolo train` without --data: the built-in synthetic dataset (rendered at 192 px) and a
# detector sized for a CPU, for a run of under 10 minutes on 2 cores (docs/demo.md).
# These values replace the generic defaults only for options the user did not set.
DEFAULT_MODEL = "yolov5s"  # what `model` builds when neither it nor `weights` says otherwise
DEMO_DEFAULTS = {
    "model": "yolov5n-efficientformer-n0",  # beat l0 at equal time: docs/compare.md
    "imgsz": 192,
    "epochs": 11,  # the first plan; --time re-plans it after every epoch
    # 9.3 minutes in all, so that the run ends within 10 on a 2-core machine of any speed: a faster
    # machine trains more epochs (see docs/demo.md). Not applied when --epochs is given.
    "time": 0.155,
    "batch": 8,
    "lr0": 0.003,
    "close_mosaic": 3,
    "autoanchor": "refit",  # YOLOv5's anchors are sized for 640-px COCO, not 192-px images
    # Measured on the demo (docs/demo.md): YOLOv5 scales the class gain by nc / 80, which
    # leaves 6 classes a thirteenth of COCO's class weight, and classes are what a short run learns
    # last; 2-3x the class gain lifts mAP50 by ~0.1-0.15. A final LR of 10% (not 1%) of lr0 keeps
    # the last epochs learning. Adam's second moment over ~100 steps (beta2 0.99, not 0.999) follows
    # the gradients' scale as it falls during a 1,300-step run (+0.02-0.04 mAP50 on each seed tried).
    # An own --hyp file replaces these along with the rest.
    "hyp": {"cls": 1.5, "lrf": 0.1, "adam_beta2": 0.99},
    "synth": {"imgsz": 192},
}

AUTOANCHOR_MODES = ("check", "refit", "off")

# The allowed range of every hyperparameter: (low, high, high excluded). A value outside it is an
# error naming the key, before any work: probabilities and fractions lie in [0, 1], gains are not
# negative, a random scale gain of 1 or more could shrink an image to nothing.
_PROBABILITY = (0.0, 1.0, False)
_NON_NEGATIVE = (0.0, math.inf, False)
HYP_RANGES: dict[str, tuple[float, float, bool]] = {
    "lr0": (0.0, math.inf, False),  # and above 0, checked separately
    "lrf": _NON_NEGATIVE,
    "momentum": (0.0, 1.0, True),
    "weight_decay": _NON_NEGATIVE,
    "warmup_epochs": _NON_NEGATIVE,
    "warmup_momentum": (0.0, 1.0, True),
    "warmup_bias_lr": _NON_NEGATIVE,
    "box": _NON_NEGATIVE,
    "cls": _NON_NEGATIVE,
    "cls_pw": _NON_NEGATIVE,
    "obj": _NON_NEGATIVE,
    "obj_pw": _NON_NEGATIVE,
    "iou_t": _PROBABILITY,
    "anchor_t": (1.0, math.inf, False),
    "fl_gamma": _NON_NEGATIVE,
    "label_smoothing": (0.0, 1.0, True),
    "hsv_h": _PROBABILITY,
    "hsv_s": _PROBABILITY,
    "hsv_v": _PROBABILITY,
    "degrees": (0.0, 180.0, False),
    "translate": _PROBABILITY,
    "scale": (0.0, 1.0, True),
    "shear": (0.0, 90.0, True),
    "perspective": (0.0, 1.0, True),
    "flipud": _PROBABILITY,
    "fliplr": _PROBABILITY,
    "mosaic": _PROBABILITY,
    "mixup": _PROBABILITY,
    "copy_paste": _PROBABILITY,
    "adam_beta2": (0.0, 1.0, True),
    "backbone_lr_mult": _NON_NEGATIVE,
}
_POSITIVE_HYP = ("lr0", "cls_pw", "obj_pw")  # must be above zero, not just non-negative


@dataclass
class TrainConfig:
    """Every option of ``efyolo train`` (the CLI maps its flags one to one onto these fields).

    Attributes:
        data: dataset YAML; ``None`` uses the built-in synthetic dataset (generated once, cached).
        model: model name or YAML (default ``yolov5s``). With ``weights``: not given, the
            checkpoint's own model; given (:meth:`model_given`), that model, taking the checkpoint's tensors that fit (for a YOLOv5 file
            under another backbone, its neck and head; see :mod:`efyolo.training.transfer`).
        imgsz: training and validation size (a multiple of the model stride).
        epochs: total epochs (with ``time``: the first plan, re-planned after every epoch).
        time: a wall-clock budget in hours for the whole run (Ultralytics' ``time``): after each
            epoch the number of epochs is re-planned to what still fits, and the learning-rate
            schedule and ``close_mosaic`` follow; ``None``: no budget.
        batch: total batch size (split across DDP processes).
        device: ``""`` (auto), ``cpu``, ``0``, ``0,1``.
        workers: DataLoader workers per process.
        optimizer: ``SGD``, ``AdamW``, ``Adam`` or ``auto`` (AdamW for short schedules, else SGD).
        lr0: initial learning rate (overrides the hyp file; ``None``: hyp or the ``auto`` rule).
        hyp: hyperparameter YAML (YOLOv5 keys), merged over the built-in defaults, or a dict.
        weights: a checkpoint to start from (fine-tuning): efyolo's, or a YOLOv5 ``.pt`` (read safely).
        backbone_weights: ImageNet weights for the registered backbone (official or timm layout).
        freeze: freeze the first N model rows (``-1``/``None``: nothing; ``backbone``: the backbone).
        patience: stop after this many epochs without fitness improvement (0: never).
        cos_lr: cosine instead of linear learning-rate decay.
        close_mosaic: switch mosaic off for the last N epochs.
        project, name, exist_ok: the run folder ``project/name`` (numbered like YOLOv5).
        seed: seed of model init, data order and augmentation.
        resume: ``True`` (latest ``last.pt`` under ``project``) or a path to ``last.pt``.
        sync_bn: SyncBatchNorm under DDP.
        cache: decode and resize every image into RAM once (``None``: when the dataset is small).
        amp: mixed precision on CUDA.
        val: validate every epoch (always at the end).
        nbs: nominal batch size (gradient accumulation up to it).
        autoanchor: ``check`` (YOLOv5: new anchors only when the best possible recall is at most
            0.98), ``refit`` (fit anchors to the labels and keep them when they match better) or
            ``off``.
        max_det, conf, iou: validation NMS settings.
        verbose: per-class table at the end.
        synth: parameters of the synthetic dataset when ``data`` is None.
        tensorboard: write TensorBoard event files into the run folder (when the ``tensorboard``
            package is installed: ``pip install "efyolo[loggers]"``).
        quiet: show only warnings (the CLI's ``--quiet``).
    """

    data: str | None = None
    model: str = DEFAULT_MODEL
    imgsz: int = 640
    epochs: int = 100
    time: float | None = None
    batch: int = 16
    device: str = ""
    workers: int = 2
    optimizer: str = "auto"
    lr0: float | None = None
    hyp: str | dict | None = None
    weights: str | None = None
    backbone_weights: str | None = None
    freeze: Any = None
    patience: int = 50
    cos_lr: bool = False
    close_mosaic: int = 5
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    seed: int = 0
    resume: Any = False
    sync_bn: bool = False
    cache: bool | None = None
    amp: bool = True
    val: bool = True
    nbs: int = 64
    autoanchor: str = "check"
    conf: float = 0.001
    iou: float = 0.6
    max_det: int = 300
    verbose: bool = False
    synth: dict = field(default_factory=dict)
    tensorboard: bool = True
    quiet: bool = False

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "TrainConfig":
        """Build from keyword arguments, applying :data:`DEMO_DEFAULTS` when ``data`` is not given."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise EfyoloError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        given = {k: v for k, v in kwargs.items() if v is not None}
        applied: dict[str, Any] = {}
        if given.get("data") is None and not given.get("resume"):
            explicit_epochs = "epochs" in given
            own_lr0 = "lr0" in read_hyp_overrides(given.get("hyp"))  # checks the user's hyp now
            for key, value in DEMO_DEFAULTS.items():
                if key == "time" and explicit_epochs:
                    continue  # an explicit epoch count is not re-planned
                if key == "lr0" and own_lr0:
                    continue  # the user's --hyp sets lr0: it wins over the demo's
                if key == "model" and given.get("weights"):
                    continue  # the weights carry their model
                if key not in given:
                    given[key] = applied[key] = value
        hours = given.get("time")
        if hours is not None and (isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours <= 0):
            raise EfyoloError(f"time must be a positive number of hours, got {given['time']!r}")
        if given.get("autoanchor", "check") not in AUTOANCHOR_MODES:
            raise EfyoloError(f"autoanchor must be one of {AUTOANCHOR_MODES}, got {given['autoanchor']!r}")
        cfg = cls(**given)
        cfg.demo_applied = applied  # not a field: what the trainer tells the user it chose for them
        cfg.model_named = "model" in kwargs and kwargs["model"] is not None  # the user's own choice
        return cfg

    def model_given(self) -> bool:
        """Did the user name the model (so ``weights`` only initialises it)? Built through
        :meth:`from_kwargs` (the CLI, ``efyolo.train``) this is exact; a directly built config counts
        a model other than the default as given."""
        return getattr(self, "model_named", self.model != DEFAULT_MODEL)

    def demo_note(self) -> str:
        """The line that says which demo settings a run without ``data`` got ("" when none were applied)."""
        applied = {k: v for k, v in getattr(self, "demo_applied", {}).items() if k != "synth"}
        if not applied:
            return ""
        if set(applied) == set(DEMO_DEFAULTS) - {"synth"}:  # nothing of the recipe set by the user
            return ("No --data: the demo (the built-in synthetic dataset with the demo's recipe; "
                    "see docs/demo.md)")
        settings = ", ".join(f"{k} {v}" for k, v in applied.items())
        return (f"No --data: the built-in synthetic dataset, with the demo's settings for what you did not set: "
                f"{settings} (set them, or pass --data, to change)")

    def validate(self) -> None:
        """Check every option before any work (no run folder, no dataset scan): one clear error each."""
        from efyolo.utils.checks import check_imgsz, check_int, check_positive, check_range

        if self.resume:
            return  # the checkpoint's own options are checked when it is loaded
        check_int("epochs", self.epochs, 1)
        check_int("batch", self.batch, 1)
        check_int("workers", self.workers, 0)
        check_int("patience", self.patience, 0)
        check_int("close_mosaic", self.close_mosaic, 0)
        check_int("nbs", self.nbs, 1)
        check_int("seed", self.seed, 0)
        check_int("max_det", self.max_det, 1)
        check_imgsz(check_int("imgsz", self.imgsz, 1), 1)  # the bound now; the stride once the model is built
        if self.lr0 is not None:
            check_positive("lr0", self.lr0)
        check_range("conf", self.conf, 0.0, 1.0)
        check_range("iou", self.iou, 0.0, 1.0)
        if self.optimizer not in ("auto", "SGD", "AdamW", "Adam"):
            raise EfyoloError(f"optimizer must be auto, SGD, AdamW or Adam, got {self.optimizer!r}")
        read_hyp_overrides(self.hyp)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_hyp() -> dict[str, Any]:
    text = resources.files("efyolo").joinpath("cfg", "hyp.default.yaml").read_text()
    return yaml.safe_load(text)


def read_hyp_overrides(hyp: str | Path | Mapping[str, Any] | None) -> dict[str, float]:
    """The hyperparameters a user set (a YAML path or a mapping), checked key by key.

    Raises:
        EfyoloError: an unknown key (a typo would otherwise be silently ignored), a value that is
            not a finite number, or one outside its range (:data:`HYP_RANGES`), naming the file and key.
    """
    if hyp is None:
        return {}
    source = "hyp"
    if not isinstance(hyp, Mapping):
        path = Path(hyp)
        source = f"hyperparameter file {path}"
        hyp = read_yaml_mapping(path, "hyperparameter file")
    from efyolo.utils.checks import check_range

    known = default_hyp()
    out: dict[str, float] = {}
    for key, value in hyp.items():
        if key not in known:
            raise EfyoloError(f"{source}: unknown hyperparameter {key!r}")
        name = f"{source}: hyperparameter {key!r}"
        lo, hi, hi_open = HYP_RANGES.get(key, _NON_NEGATIVE)
        if key in _POSITIVE_HYP and check_range(name, value, -math.inf) <= 0:  # a finite number, and above 0
            raise EfyoloError(f"{name} must be above 0, got {value!r}")
        out[key] = check_range(name, value, lo, hi, hi_open=hi_open)  # a finite number within its range
    return out


def load_hyp(hyp: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """The built-in hyperparameters updated with ``hyp`` (a YAML path or a mapping), checked by
    :func:`read_hyp_overrides`."""
    out = default_hyp()
    out.update(read_hyp_overrides(hyp))
    return out

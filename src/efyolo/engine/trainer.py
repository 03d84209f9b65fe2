"""The training loop: ``efyolo train`` and ``efyolo.train(...)``.

One :class:`Trainer` holds the state of a run (model, EMA, optimizer, data, epoch) and moves it
forward epoch by epoch: ``setup()`` builds everything (or restores it from ``last.pt``),
``train_epoch()`` runs the optimisation, ``validate()`` scores the EMA weights, ``save()`` writes
the checkpoints. Around them the trainer fires the events of :mod:`efyolo.training.callbacks`;
``results.csv``, the plots and TensorBoard are callbacks, and a user's own are added with
``efyolo.train(callbacks=[...])``. Only rank 0 writes files, logs and fires events under DDP.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from efyolo.training import distributed as ddp
from efyolo.training.callbacks import RESULT_COLUMNS, Callbacks, default_callbacks
from efyolo.models.checkpoint import check_resumable, load_checkpoint, non_finite_tensors, save_checkpoint
from efyolo.training.ema import ModelEMA, ema_horizon, unwrap
from efyolo.training.optim import build_optimizer, lr_lambda, set_learning_rates
from efyolo.utils.devices import select_device
from efyolo.training.time_budget import TimeBudget
from efyolo.training.config import TrainConfig, default_hyp, read_hyp_overrides
from efyolo.training.transfer import transfer_weights
from efyolo.errors import EfyoloError
from efyolo.utils.files import remove_stale_temps
from efyolo.utils.log import LOGGER, setup_logging

__all__ = ["RESULT_COLUMNS", "TrainResult", "Trainer", "train"]


@dataclass
class TrainResult:
    """What a finished run leaves: its folder, checkpoints and final metrics (of ``best.pt``)."""

    save_dir: Path
    best: Path
    last: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    epochs_run: int = 0


def find_last_checkpoint(project: str | Path) -> Path:
    """The most recently written ``last.pt`` below ``project`` (for ``--resume`` without a path)."""
    candidates = sorted(Path(project).glob("**/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise EfyoloError(f"--resume: no last.pt found under {project}; pass the checkpoint path")
    return candidates[-1]


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """A training run. ``Trainer(TrainConfig(...)).train()`` or ``efyolo.train(...)``."""

    def __init__(self, cfg: TrainConfig, callbacks: Any = ()) -> None:
        """
        Args:
            cfg: the run's options; checked here, before any folder is made or any file read, and
                copied (the caller's object is never changed: the data path it resolves and the
                epochs a time budget re-plans belong to this run).
            callbacks: the user's callbacks, fired after the built-in ones (see
                :mod:`efyolo.training.callbacks`).
        """
        cfg.validate()
        self.cfg: TrainConfig = copy.deepcopy(cfg)
        self.dist = ddp.dist_info()
        if not self.dist.is_main:  # under DDP one process speaks; the others only warn
            LOGGER.setLevel(max(LOGGER.getEffectiveLevel(), logging.WARNING))
        self.callbacks = Callbacks([*default_callbacks(tensorboard=self.cfg.tensorboard), *callbacks])
        # the run's state, set by setup() (None until then)
        self.resume_ckpt: dict[str, Any] | None = None  # last.pt being resumed
        self.resume_path: Path | None = None
        self.device: torch.device | None = None
        self.save_dir: Path | None = None  # the run folder, made at the end of setup()
        self.wdir: Path | None = None  # save_dir / "weights"
        self.hyp: dict[str, float] = {}  # hyperparameters in use (lr0: the one really used)
        self.hyp_overrides: dict[str, float] = {}  # the ones the user set
        self.data_cfg: Any = None  # the dataset YAML, parsed
        self.names: list[str] = []
        self.train_index: Any = None  # scanned splits (efyolo.data.split.SplitIndex)
        self.val_index: Any = None
        self.batch_per_rank = 0
        self.stride = 0  # the model's largest stride (known once the model is built)
        self.train_set: Any = None
        self.train_loader: Any = None
        self.val_loader: Any = None  # main process only
        self.model: nn.Module | None = None
        self.loss_hyp: dict[str, float] = {}
        self.compute_loss: Any = None
        self.nb = 0  # batches per epoch
        self.accumulate = 1  # batches per optimizer step
        self.optimizer_name = ""
        self.lr0 = 0.0
        self.lr0_source = ""  # where lr0 came from, for the log
        self.optimizer: torch.optim.Optimizer | None = None
        self.warmup_bias_lr = 0.0
        self.lf: Any = None  # epoch -> learning-rate factor
        self.nw = 0  # warmup iterations
        self.ema: ModelEMA | None = None  # main process only
        self.amp = False
        self.scaler: Any = None
        # progress
        self.start_epoch = 0
        self.epoch = 0  # the epoch being trained (0-based)
        self.train_losses: np.ndarray | None = None  # the epoch's mean (box, obj, cls) loss
        self.epoch_metrics: dict[str, Any] = {}  # the epoch's results.csv row, by column
        self.final_metrics: dict[str, Any] = {}  # best.pt's final validation
        self.best_fitness = -1.0
        self.epochs_without_improvement = 0
        self.improved = False  # the latest validation beat the best fitness
        self.best_saved = False  # best.pt written by this run (a reused --exist-ok folder may hold an old one)
        self.stop = False  # early stopping
        self.budget: TimeBudget | None = None  # --time
        self.out_of_time = False  # the budget ended an epoch early
        self.last_train_seconds = 0.0
        self.first_plan = self.cfg.epochs  # the epochs asked for, before a time budget re-planned them
        self.stopped_in_epoch: tuple[int, int, int] | None = None  # (epoch, batches done, batches) when cut
        self.last_batch: torch.Tensor | None = None  # a few training images, for check_eval_forward

    def _info(self, message: str) -> None:
        """One line on the efyolo logger (main process only)."""
        if self.dist.is_main:
            LOGGER.info(message)

    def setup(self) -> None:
        """Everything before the first epoch. The run folder is made last, once the data, the
        model and every option have been checked, so a bad argument leaves no empty folder."""
        cfg = self.cfg
        if cfg.resume:
            self._load_resume()
            cfg = self.cfg
        self.device = self._device()
        ddp.init_distributed(self.dist, self.device)
        self._seed(cfg.seed)
        self.hyp_overrides = read_hyp_overrides(cfg.hyp)  # what the user set (lr0 precedence needs it)
        self.hyp = {**default_hyp(), **self.hyp_overrides}
        self._load_data()
        self._setup_model()
        self._build_loaders()
        self._setup_optimisation()
        self.save_dir = self._save_dir()
        self.wdir = self.save_dir / "weights"
        if self.resume_ckpt is not None:
            self._restore_state(self.resume_ckpt)
        if self.dist.is_main:
            self._prepare_run_folder()
            self._write_run_files()
            self.callbacks.fire("on_train_start", self)

    def _device(self) -> torch.device:
        if self.dist.enabled and torch.cuda.is_available() and self.cfg.device != "cpu":
            torch.cuda.set_device(self.dist.local_rank)
            return torch.device("cuda", self.dist.local_rank)
        if self.dist.enabled:
            return torch.device("cpu")
        return select_device(self.cfg.device)

    def _save_dir(self) -> Path:
        from efyolo.utils.runs import increment_path

        if self.resume_ckpt is not None:
            return self.resume_path.parent.parent
        path = None
        if self.dist.is_main:
            path = increment_path(Path(self.cfg.project) / self.cfg.name, exist_ok=self.cfg.exist_ok, mkdir=True)
        return Path(ddp.broadcast_object(str(path) if path else None))

    @staticmethod
    def _seed(seed: int) -> None:
        random.seed(seed)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)

    def _load_resume(self) -> None:
        cfg = self.cfg
        path = Path(cfg.resume) if isinstance(cfg.resume, (str, Path)) and cfg.resume not in ("", "True") else None
        path = path or find_last_checkpoint(cfg.project)
        ckpt = load_checkpoint(path)
        check_resumable(ckpt, path)
        if ckpt.get("finished"):
            raise EfyoloError(f"--resume {path}: that run already finished all {ckpt['train_args'].get('epochs')} epochs")
        args = dict(ckpt["train_args"])
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise EfyoloError(f"--resume {path}: unknown training option(s) {unknown} in 'train_args' "
                              "(written by another efyolo version?)")
        # The machine may differ: keep this invocation's device and workers.
        args.update(device=cfg.device, workers=cfg.workers, resume=False)
        try:
            self.cfg = TrainConfig(**args)
            self.cfg.validate()
        except (EfyoloError, TypeError) as err:
            raise EfyoloError(f"--resume {path}: its 'train_args' are invalid: {err}") from None
        bad = non_finite_tensors(ckpt["state_dict"]) + non_finite_tensors(ckpt["model_state"])
        if bad:
            raise EfyoloError(f"--resume {path}: {len(bad)} tensors hold NaN or infinity (first: {bad[0]})")
        self.first_plan = int(ckpt.get("first_plan") or self.cfg.epochs)
        self.resume_ckpt, self.resume_path = ckpt, path
        self.start_epoch = int(ckpt["epoch"]) + 1
        self._info(f"Resuming {path} from epoch {self.start_epoch + 1}/{self.cfg.epochs}")

    def _load_data(self) -> None:
        """Read the dataset YAML and scan both splits; an unusable split is an error here."""
        from efyolo.data.config import load_data_config
        from efyolo.data.scan import scan_split
        from efyolo.engine.validator import check_split_usable

        cfg = self.cfg
        if cfg.data is None:
            from efyolo.data.synth import default_dataset

            if self.dist.is_main:
                path = default_dataset(**cfg.synth)
            ddp.barrier()
            path = default_dataset(**cfg.synth)
            cfg.data = str(path)  # this run's copy of the options (the caller's stay as given)
            note = cfg.demo_note()
            if note:
                self._info(note)
            self._info(f"Using the built-in synthetic dataset: {path}")
        self.data_cfg = load_data_config(cfg.data)
        self.names = list(self.data_cfg.names)
        self.train_index = scan_split(self.data_cfg, "train")
        self.val_index = scan_split(self.data_cfg, "val")
        self._info(self.train_index.summary())
        self._info(self.val_index.summary())
        check_split_usable(self.train_index, self.data_cfg.yaml_path)
        check_split_usable(self.val_index, self.data_cfg.yaml_path)
        world = self.dist.world_size
        if cfg.batch < world:
            raise EfyoloError(f"--batch {cfg.batch} is smaller than the number of processes {world}")
        self.batch_per_rank = cfg.batch // world

    def _build_loaders(self) -> None:
        """The training and validation loaders, with the model's real stride (known by now).

        Validation letterboxes every image into ``imgsz x imgsz``: the geometry of ``efyolo val``
        and of a fixed-shape export, so the mAP printed here is the one those give.
        """
        from efyolo.data.dataset import DetectionDataset, build_dataloader

        cfg, world = self.cfg, self.dist.world_size
        cache = cfg.cache if cfg.cache is not None else len(self.train_index) * cfg.imgsz**2 * 3 < 2 * 2**30
        self.train_set = DetectionDataset(
            self.train_index, cfg.imgsz, augment=True, hyp=self.hyp, stride=self.stride, seed=cfg.seed,
            cache_images=cache,
        )
        self.train_loader = build_dataloader(
            self.train_set, self.batch_per_rank, cfg.workers, shuffle=True, seed=cfg.seed,
            rank=self.dist.rank, world_size=world,
        )
        self.val_loader = None
        if self.dist.is_main:
            val_set = DetectionDataset(self.val_index, cfg.imgsz, rect=False, stride=self.stride, cache_images=cache)
            self.val_loader = build_dataloader(val_set, self.batch_per_rank * 2, cfg.workers, shuffle=False)

    def _setup_model(self) -> None:
        from efyolo.training.autoanchor import check_anchors, label_wh_from_dataset
        from efyolo.training.loss import ComputeLoss, scale_loss_gains
        from efyolo.utils.checks import check_imgsz
        from efyolo.models import DetectionModel, build_model
        from efyolo.models.backbone import load_backbone_weights

        cfg, nc = self.cfg, len(self.names)
        if self.resume_ckpt is not None:
            model = DetectionModel(self.resume_ckpt["model_config"], nc=nc)
        elif cfg.weights:
            ckpt = load_checkpoint(cfg.weights)
            bad = non_finite_tensors(ckpt["state_dict"])
            if bad:
                raise EfyoloError(f"--weights {cfg.weights}: {len(bad)} tensors hold NaN or infinity "
                                  f"(first: {bad[0]}); the file comes from a diverged run")
            # --model with --weights: that architecture, with what fits of the file (neck and head of
            # a YOLOv5 file under another backbone); --weights alone: the checkpoint's own model
            model = (build_model(cfg.model, nc=nc) if cfg.model_given()
                     else DetectionModel(ckpt["model_config"], nc=nc))
            report = transfer_weights(model, ckpt["state_dict"], ckpt["model_config"])
            self._info(report.summary(str(cfg.weights)))
        else:
            model = build_model(cfg.model, nc=nc)
        if cfg.backbone_weights and self.resume_ckpt is None:
            load_backbone_weights(model, cfg.backbone_weights)
            self._info(f"Loaded backbone weights from {cfg.backbone_weights}")
        model.names = self.names
        self.stride = model.max_stride
        check_imgsz(cfg.imgsz, self.stride)
        self._freeze(model)
        if self.resume_ckpt is None and cfg.autoanchor != "off":
            wh = label_wh_from_dataset(
                self.train_index.shapes[:, ::-1].astype(float), self.train_index.labels, cfg.imgsz,
                np.random.default_rng(cfg.seed),
            )
            report = check_anchors(model.detect, wh, thr=self.hyp["anchor_t"], imgsz=cfg.imgsz, seed=cfg.seed,
                                   verbose=self.dist.is_main, refit=cfg.autoanchor == "refit")
            self._info(f"AutoAnchor: best possible recall {report.bpr_before:.4f}"
                        + (f" -> {report.bpr_after:.4f} with new anchors" if report.replaced else ""))
        # channels_last: the convolution kernels of oneDNN (CPU) and cuDNN (AMP) prefer NHWC;
        # measured +18% (yolov5n) and +40% (EfficientFormer) training throughput on 2 CPU cores.
        model = model.to(self.device, memory_format=torch.channels_last)
        if self.dist.enabled and cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.loss_hyp = scale_loss_gains(self.hyp, nc, model.detect.nl, cfg.imgsz)
        self.compute_loss = ComputeLoss(model.detect, self.loss_hyp)

    def _freeze(self, model: nn.Module) -> None:
        freeze = self.cfg.freeze
        if freeze in (None, -1, "", 0, "0"):
            return
        if freeze == "backbone":
            rows = [m.i for m in model.model if getattr(m, "type", None) == "Backbone"]
            if not rows:
                raise EfyoloError(f"--freeze backbone: model {self.cfg.model} has no registered backbone row")
            prefixes = [f"model.{rows[0]}."]
        else:
            try:
                n = int(freeze)
            except (TypeError, ValueError):
                raise EfyoloError(f"--freeze {freeze!r}: expected a number of rows or 'backbone'") from None
            prefixes = [f"model.{i}." for i in range(n)]
        count = 0
        for name, p in model.named_parameters():
            if any(name.startswith(x) for x in prefixes):
                p.requires_grad_(False)
                count += 1
        self._info(f"Froze {count} parameter tensors ({', '.join(x.rstrip('.') for x in prefixes[:3])}...)")

    def _setup_optimisation(self) -> None:
        cfg, hyp = self.cfg, self.hyp
        self.nb = len(self.train_loader)
        total_iters = self.nb * cfg.epochs
        # Gradient accumulation up to the nominal batch (YOLOv5), but short runs keep at least about
        # 1,000 optimizer steps: with 800 images, batch 16 and 10 epochs YOLOv5 makes only 125 steps.
        self.accumulate = max(min(round(cfg.nbs / cfg.batch), total_iters // 1000), 1)
        weight_decay = hyp["weight_decay"] * cfg.batch * self.accumulate / cfg.nbs
        name = cfg.optimizer
        if name == "auto":
            # Short schedules learn far better with AdamW (see docs/training-on-cpu.md).
            name = "AdamW" if total_iters < 10_000 else "SGD"
        self.optimizer_name = name
        self.lr0, self.lr0_source = self._choose_lr0(name)
        hyp["lr0"] = self.lr0  # hyp.yaml and the checkpoints record the learning rate really used
        self.optimizer = build_optimizer(
            unwrap(self.model), name, self.lr0, hyp["momentum"], weight_decay, hyp["backbone_lr_mult"],
            hyp["adam_beta2"],
        )
        # AdamW does not want SGD's large initial bias learning rate.
        self.warmup_bias_lr = hyp["warmup_bias_lr"] if name == "SGD" else 0.0
        self.lf = lr_lambda(cfg.epochs, hyp["lrf"], cfg.cos_lr)
        # Warmup: YOLOv5's max(warmup_epochs, 100 iterations), but at most a tenth of the run.
        nw = max(round(hyp["warmup_epochs"] * self.nb), 100) if hyp["warmup_epochs"] > 0 else 0
        self.nw = min(nw, max(total_iters // 10, 1))
        if total_iters < 10_000:
            # BatchNorm's running statistics lag the weights by about 1/momentum steps; YOLOv5's 0.03
            # is too slow for a short run (4 images, 60 steps: eval mAP50 0.003 at 0.03, 0.53 at
            # 0.1, the training loss being the same), so short runs use PyTorch's default 0.1.
            for m in unwrap(self.model).modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None:
                    m.momentum = max(m.momentum, 0.1)
        decay, tau = ema_horizon(max(total_iters // self.accumulate, 1))
        self.ema = ModelEMA(self.model, decay, tau) if self.dist.is_main else None
        self.amp = bool(cfg.amp and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self._info(
            f"optimizer: {name}(lr={self.lr0:g} {self.lr0_source}, momentum={hyp['momentum']}) with parameter groups "
            f"{[g['name'] for g in self.optimizer.param_groups]}, weight_decay={weight_decay:g}, "
            f"accumulate {self.accumulate} batches (nominal batch {cfg.nbs}), warmup {self.nw} iterations, "
            f"EMA decay {decay:.4g} (ramp {tau:g} steps)"
        )
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

    def _choose_lr0(self, optimizer: str) -> tuple[float, str]:
        """The initial learning rate and where it comes from: ``--lr0``, then an ``lr0`` in the
        user's ``--hyp``, then (``--optimizer auto`` choosing AdamW) the AdamW rule, else the default hyp."""
        cfg = self.cfg
        if cfg.lr0 is not None:
            return float(cfg.lr0), "from the lr0 option"
        if "lr0" in self.hyp_overrides:
            return self.hyp_overrides["lr0"], "from the hyp file"
        if cfg.optimizer == "auto" and optimizer == "AdamW":
            return round(0.002 * 5 / (4 + len(self.names)), 6), "(optimizer auto: AdamW's 0.002*5/(4+nc))"
        return float(self.hyp["lr0"]), "(hyp default)"

    def _restore_state(self, ckpt: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(ckpt["model_state"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema is not None:
            self.ema.ema.load_state_dict(ckpt["state_dict"])
            self.ema.updates = int(ckpt["ema_updates"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.best_fitness = float(ckpt.get("best_fitness", -1.0))
        self.epochs_without_improvement = int(ckpt.get("epochs_without_improvement", 0))
        _set_rng_state(ckpt["rng"])

    def _prepare_run_folder(self) -> None:
        """Remove what a killed writer left (temporary checkpoints); a resumed run's ``best.pt`` is its own."""
        for name in ("last.pt", "best.pt"):
            for tmp in remove_stale_temps(self.wdir, name):
                self._info(f"Removed {tmp.name}, left by a run killed while saving")
        if self.resume_ckpt is not None:
            self.best_saved = (self.wdir / "best.pt").exists()

    def _write_run_files(self) -> None:
        import yaml

        args = self.cfg.to_dict()
        (self.save_dir / "args.yaml").write_text(yaml.safe_dump(args, sort_keys=False))
        (self.save_dir / "hyp.yaml").write_text(yaml.safe_dump(self.hyp, sort_keys=False))

    # ------------------------------------------------------------------------------- loop
    def train(self) -> TrainResult:
        """Run (or resume) the whole schedule, then validate ``best.pt``; returns the run's result."""
        t_setup = time.time()  # with --time, setup (dataset generation included) counts towards the budget
        self.setup()
        cfg = self.cfg
        if cfg.time:
            used = float(self.resume_ckpt.get("time_used") or 0.0) if self.resume_ckpt is not None else 0.0
            self.budget = TimeBudget(seconds=cfg.time * 3600.0, start=t_setup - used)
        t0 = time.time()
        where = f"{self.device}" + (" with AMP" if self.amp else "")
        plan = (f"for {cfg.time * 60:.1f} minutes (first plan {cfg.epochs - self.start_epoch} epochs)" if self.budget
                else f"{cfg.epochs - self.start_epoch} epochs")
        self._info(f"Training {plan} at imgsz {cfg.imgsz}, batch {cfg.batch} on {where}; results in {self.save_dir}")
        epoch = self.start_epoch
        while epoch < cfg.epochs:
            t_epoch = time.time()
            self.epoch = epoch
            train_losses = self.train_losses = self.train_epoch(epoch)
            self.check_finite_state(epoch)
            if self.dist.is_main:
                self.callbacks.fire("on_train_epoch_end", self)
            if self.budget is not None:
                self._replan(epoch, time.time() - t_epoch)
            if self.dist.is_main:
                final_epoch = epoch + 1 == cfg.epochs
                t_val = time.time()
                evaluation = self.validate() if (cfg.val or final_epoch) else None
                if evaluation is not None and self.budget is not None:
                    self.budget.val_seconds = time.time() - t_val
                if evaluation is not None and evaluation.loss is not None and not np.isfinite(evaluation.loss).all():
                    self._diverged(f"the validation loss is {evaluation.loss.tolist()} after epoch {epoch + 1}")
                if evaluation is None:
                    self.check_eval_forward(epoch)
                self.record(epoch, train_losses, evaluation, time.time() - t0)
                self.save(epoch, evaluation, finished=final_epoch)
            if self.budget is not None:
                self.budget.epoch_seconds.append(time.time() - t_epoch)
            self.stop = bool(ddp.broadcast_object(self.stop))
            if self.stop:
                self._info(f"Stopping early: no improvement for {cfg.patience} epochs")
                break
            epoch += 1
        epoch = min(epoch, cfg.epochs - 1)
        result = TrainResult(self.save_dir, self.wdir / "best.pt", self.wdir / "last.pt", {}, epoch + 1)
        if self.dist.is_main:
            result.metrics = self.final_metrics = self.final_validation()
            self.callbacks.fire("on_train_end", self)
            self._info(f"{epoch + 1 - self.start_epoch} epochs completed in {(time.time() - t0) / 60:.1f} minutes")
            budget_note = self._budget_note()
            if budget_note:
                self._info(budget_note)
            self._info(self.next_steps())
        ddp.barrier()
        return result

    def _budget_note(self) -> str:
        """A line saying whether the time budget ended the run short of its first plan ("" if not)."""
        if self.budget is None:
            return ""
        notes = []
        if self.cfg.epochs < self.first_plan:
            notes.append(f"trained {self.cfg.epochs} of the {self.first_plan} epochs first planned")
        if self.stopped_in_epoch is not None:
            e, done, total = self.stopped_in_epoch
            notes.append(f"epoch {e + 1} stopped after {done}/{total} batches")
        if not notes:
            return ""
        return (f"Note: the time budget ({self.cfg.time * 60:.1f} min) cut the run short: {'; '.join(notes)}. "
                "A longer --time (or --epochs N without --time) trains the whole plan.")

    def next_steps(self) -> str:
        """Ready-to-paste commands for the trained model, with the run's real paths and size."""
        best, size = shlex.quote(str(self.wdir / "best.pt")), self.cfg.imgsz
        data = shlex.quote(str(self.data_cfg.yaml_path))
        images = shlex.quote(str(Path(self.val_index.im_files[0]).parent))
        return "\n".join([
            "Next steps:",
            f"  efyolo val --weights {best} --data {data} --imgsz {size}",
            f"  efyolo detect --weights {best} --source {images} --imgsz {size}",
            f"  efyolo export --weights {best} --format onnx --imgsz {size}",
        ])

    def _replan(self, epoch: int, train_seconds: float) -> None:
        """``--time``: set the run's epochs to what fits the budget (rank 0 decides for all ranks)."""
        assert self.budget is not None
        self.last_train_seconds = train_seconds
        epochs = epoch + 1 if self.out_of_time else self.budget.plan(epoch + 1, train_seconds, self.cfg.epochs)
        epochs = int(ddp.broadcast_object(epochs))
        if epochs != self.cfg.epochs:
            self._info(f"Time budget {self.cfg.time * 60:.1f} min, {self.budget.elapsed() / 60:.1f} used: "
                        f"{epochs} epochs in all (was {self.cfg.epochs}; "
                        f"~{self.budget.seconds_per_epoch(train_seconds):.0f} s per epoch)")
            self.cfg.epochs = epochs
            self.lf = lr_lambda(epochs, self.hyp["lrf"], self.cfg.cos_lr)

    def _set_lr(self, epoch: int, ni: int) -> None:
        hyp = self.hyp
        progress = ni / self.nw if self.nw and ni <= self.nw else None
        set_learning_rates(self.optimizer, self.lr0, self.lf(epoch), progress, self.warmup_bias_lr,
                           hyp["momentum"], hyp["warmup_momentum"])

    def train_epoch(self, epoch: int) -> np.ndarray:
        """One pass over the training data; returns the mean (box, obj, cls) loss."""
        cfg = self.cfg
        self.model.train()
        self.train_set.set_epoch(epoch)
        if cfg.close_mosaic and epoch >= cfg.epochs - cfg.close_mosaic and self.train_set.mosaic:
            self.train_set.close_mosaic()
            self._info("Closing mosaic for the last epochs")
        loader = self.train_loader
        loader.generator.manual_seed(cfg.seed + epoch)  # the epoch's order depends on the epoch only
        if self.dist.enabled:
            loader.sampler.set_epoch(epoch)
        mean_loss = torch.zeros(3)
        bar = tqdm(enumerate(loader), total=self.nb, disable=not self.dist.is_main, file=sys.stderr,
                   bar_format="{l_bar}{bar:10}{r_bar}", desc=f"{epoch + 1}/{cfg.epochs}")
        self.optimizer.zero_grad()
        last_step = -1
        # --time: stop inside the epoch rather than overrun the budget (not under DDP, where all
        # ranks would have to agree on every iteration; they re-plan at epoch ends only).
        deadline = (self.budget.train_deadline(self.last_train_seconds)
                    if self.budget is not None and not self.dist.enabled else None)
        for i, (imgs, targets, _, _) in bar:
            ni = i + self.nb * epoch
            self._set_lr(epoch, ni)
            accumulate = self.accumulate
            if self.nw and ni <= self.nw:
                accumulate = max(1, int(np.interp(ni, [0, self.nw], [1, self.accumulate]).round()))
            imgs = imgs.to(self.device, non_blocking=True).float().div_(255.0)
            imgs = imgs.contiguous(memory_format=torch.channels_last)
            if i == 0:
                self.last_batch = imgs[:2].detach()  # for check_eval_forward
            with torch.autocast(self.device.type, enabled=self.amp):
                preds = self.model(imgs)
                loss, items = self.compute_loss(preds, targets.to(self.device))
            if self.dist.enabled:
                loss = loss * self.dist.world_size  # DDP averages gradients across processes
            self.scaler.scale(loss).backward()
            if ni - last_step >= accumulate or i == self.nb - 1:
                self.optimizer_step()
                last_step = ni
            mean_loss = (mean_loss * i + items.cpu()) / (i + 1)
            if self.dist.is_main:
                bar.set_postfix_str(
                    f"box {mean_loss[0]:.4f} obj {mean_loss[1]:.4f} cls {mean_loss[2]:.4f} "
                    f"inst {targets.shape[0]} size {imgs.shape[-1]}"
                )
            if not math.isfinite(float(loss.detach())):
                self._diverged(f"the training loss is {float(loss.detach())} at epoch {epoch + 1}, batch {i + 1}")
            if deadline is not None and time.time() > deadline and i < self.nb - 1:
                if last_step != ni:
                    self.optimizer_step()
                self.out_of_time = True
                self.stopped_in_epoch = (epoch, i + 1, self.nb)
                bar.close()
                self._info(f"Time budget reached after {i + 1}/{self.nb} batches of epoch {epoch + 1}: "
                            "this epoch is the last")
                break
        return mean_loss.numpy()

    def optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
        # Under AMP an inf gradient is the scaler's business (it skips the step and lowers the scale).
        if not self.amp and not math.isfinite(float(norm)):
            self._diverged(f"the gradients are {float(norm)}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        if self.ema is not None:
            self.ema.update(self.model)

    def _diverged(self, what: str) -> None:
        """Stop the run with one clear error; the checkpoints on disk keep the last finite weights."""
        cause = (f"the learning rate is probably too high (lr0 {self.lr0:g}, {self.optimizer_name}): "
                 "lower --lr0 or lr0 in --hyp")
        if self.cfg.weights:
            cause += f", or --weights {self.cfg.weights} is unsuitable"
        kept = " last.pt and best.pt keep the last finite weights." if (self.wdir / "last.pt").exists() else ""
        raise EfyoloError(f"training diverged: {what}; {cause}.{kept}")

    def check_finite_state(self, epoch: int) -> None:
        """After an epoch: every weight and BatchNorm statistic (model and EMA) must be finite.

        A diverging run can keep a finite training loss (train-mode BatchNorm normalises with the
        batch's own statistics) while its running statistics overflow; validation then gives NaN
        and the checkpoints would hold NaN/inf. Checking before validation and saving stops that.
        """
        states = [("model", unwrap(self.model).state_dict())]
        if self.ema is not None:
            states.append(("EMA", self.ema.ema.state_dict()))
        for label, state in states:
            bad = non_finite_tensors(state)
            if bad:
                self._diverged(f"after epoch {epoch + 1}, {len(bad)} {label} tensors hold NaN or infinity "
                               f"(first: {bad[0]})")

    @torch.no_grad()
    def check_eval_forward(self, epoch: int) -> None:
        """Without a validation this epoch (``--noval``): the EMA model in eval mode on a few of the
        last training images must give finite outputs. Weights can grow huge yet finite, so that
        only an eval-mode forward (running BatchNorm statistics) overflows to NaN."""
        if self.ema is None or self.last_batch is None:
            return
        out = self.ema.ema.eval()(self.last_batch.to(self.device))
        out = out[0] if isinstance(out, (tuple, list)) else out
        if not bool(torch.isfinite(out).all()):
            self._diverged(f"after epoch {epoch + 1} the model's predictions hold NaN or infinity")

    # ------------------------------------------------------------------------------- eval/save
    def validate(self):
        from efyolo.engine.validator import evaluate

        assert self.ema is not None and self.val_loader is not None
        return evaluate(
            self.ema.ema, self.val_loader, self.names, self.device, self.cfg.conf, self.cfg.iou, self.cfg.max_det,
            loss_fn=self.compute_loss, progress=True, desc="  val",
        )

    def record(self, epoch: int, train_losses: np.ndarray, evaluation: Any, elapsed: float) -> None:
        """The epoch's results row (``epoch_metrics``, fired as ``on_fit_epoch_end``), best fitness
        and the early-stopping counter."""
        r = evaluation.result if evaluation is not None else None
        val_loss = evaluation.loss if evaluation is not None and evaluation.loss is not None else [float("nan")] * 3
        lrs = [g["lr"] for g in self.optimizer.param_groups][:3]
        lrs += [float("nan")] * (3 - len(lrs))
        metrics = [r.precision, r.recall, r.map50, r.map] if r is not None else [float("nan")] * 4
        row = [epoch + 1, *train_losses.tolist(), *metrics, *list(map(float, val_loss)), *lrs, round(elapsed, 1)]
        self.epoch_metrics = dict(zip(RESULT_COLUMNS, [float(v) if isinstance(v, (float, np.floating)) else v
                                                        for v in row]))
        self.improved = False
        if r is not None:
            self._info(f"  val: P {r.precision:.3f}  R {r.recall:.3f}  mAP50 {r.map50:.3f}  mAP50-95 {r.map:.3f}")
            self.improved = r.fitness > self.best_fitness
            if self.improved:
                self.best_fitness, self.epochs_without_improvement = r.fitness, 0
            else:
                self.epochs_without_improvement += 1
            if self.cfg.patience and self.epochs_without_improvement >= self.cfg.patience:
                self.stop = True
        self.callbacks.fire("on_fit_epoch_end", self)

    def _payload(self, epoch: int, evaluation: Any) -> dict[str, Any]:
        assert self.ema is not None
        return {
            "model_config": unwrap(self.model).yaml,
            "state_dict": {k: v.detach().cpu() for k, v in self.ema.ema.state_dict().items()},
            "names": self.names,
            "imgsz": self.cfg.imgsz,
            "epoch": epoch,
            "train_args": self.cfg.to_dict(),
            "hyp": self.hyp,
            "metrics": evaluation.result.to_dict() if evaluation is not None else {},
            "best_fitness": self.best_fitness,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    def save(self, epoch: int, evaluation: Any, finished: bool = False) -> None:
        """``last.pt`` (everything needed to resume) every epoch; ``best.pt`` when fitness improves."""
        payload = self._payload(epoch, evaluation)
        resume_state = {
            "model_state": {k: v.detach().cpu() for k, v in unwrap(self.model).state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "ema_updates": self.ema.updates,
            "scaler": self.scaler.state_dict() if self.amp else {},
            "rng": _rng_state(),
            "epochs_without_improvement": self.epochs_without_improvement,
            "finished": finished or self.stop,
            "time_used": self.budget.elapsed() if self.budget is not None else None,
            "first_plan": self.first_plan,
        }
        bad = non_finite_tensors(payload["state_dict"]) + non_finite_tensors(resume_state["model_state"])
        if bad:  # never replace a good checkpoint by a diverged one
            self._diverged(f"{len(bad)} tensors to save hold NaN or infinity (first: {bad[0]})")
        save_checkpoint({**payload, **resume_state}, self.wdir / "last.pt")
        if self.improved or not self.best_saved:
            save_checkpoint(payload, self.wdir / "best.pt")
            self.best_saved = True
        self.callbacks.fire("on_model_save", self)

    def final_validation(self) -> dict[str, Any]:
        """Score ``best.pt`` once more with plots and the per-class table; returns its metrics."""
        from efyolo.models.checkpoint import model_from_checkpoint
        from efyolo.evaluation.metrics import format_table
        from efyolo.utils.plotting import save_eval_plots
        from efyolo.engine.validator import evaluate, format_speed

        model = model_from_checkpoint(self.wdir / "best.pt").to(self.device).eval().fuse()
        evaluation = evaluate(model, self.val_loader, self.names, self.device, self.cfg.conf, self.cfg.iou,
                              self.cfg.max_det, progress=False)
        r = evaluation.result
        self._info(f"Validating {self.wdir / 'best.pt'}...")
        self._info(format_table(r, verbose=self.cfg.verbose))
        self._info(format_speed(evaluation.speed, evaluation.input_shapes))
        save_eval_plots(r, self.save_dir)
        self._info(f"Final mAP50 {r.map50:.4f}  mAP50-95 {r.map:.4f}  (best.pt, {r.n_images} val images)")
        self._info(f"Results saved to {self.save_dir}")
        return {**r.to_dict(), "speed": evaluation.speed}


def train(callbacks: Any = (), **kwargs: Any) -> TrainResult:
    """Train a detector from Python with the options of ``efyolo train`` (see :class:`TrainConfig`).

    Args:
        callbacks: objects with methods named after the events of :mod:`efyolo.training.callbacks`
            (or ``{event: function}`` mappings), fired after the built-in ones.
        kwargs: the options; ``quiet=True`` shows only warnings.

    Example::

        result = efyolo.train(data="data.yaml", model="yolov5s-efficientformer-l1", epochs=50, imgsz=640)
        print(result.metrics["map50"], result.best)
    """
    cfg = TrainConfig.from_kwargs(**kwargs)
    setup_logging(quiet=cfg.quiet)
    try:
        return Trainer(cfg, callbacks=callbacks).train()
    finally:
        ddp.cleanup()

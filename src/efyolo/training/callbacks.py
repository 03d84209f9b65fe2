"""Training events and the callbacks that react to them (the run's files are written by callbacks).

The trainer fires, on the main process only, in this order::

    on_train_start       setup done, run folder ready          (trainer.save_dir, .cfg, .names, ...)
    on_train_epoch_end   an epoch's optimisation done          (trainer.epoch, .train_losses)
    on_fit_epoch_end     the epoch validated (or not, --noval)  (trainer.epoch_metrics: one results.csv row)
    on_model_save        last.pt (and maybe best.pt) written   (trainer.wdir, .improved)
    on_train_end         best.pt validated a last time          (trainer.final_metrics)

A callback is any object with methods of those names (each takes the trainer; missing methods
are skipped; :class:`Callback` is a convenient base), or a mapping ``{event: function}``. Built-in
callbacks: :class:`ResultsCSV` (``results.csv``), :class:`TrainingPlots` (``labels.jpg``,
``results.png``) and :class:`TensorBoardLogger` (event files, when the ``tensorboard`` package is
installed: ``pip install "efyolo[loggers]"``). Pass your own with ``efyolo.train(callbacks=[...])``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from efyolo.errors import EfyoloError
from efyolo.utils.log import LOGGER

EVENTS = ("on_train_start", "on_train_epoch_end", "on_fit_epoch_end", "on_model_save", "on_train_end")
RESULT_COLUMNS = (
    "epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "precision", "recall", "mAP50", "mAP50-95",
    "val/box_loss", "val/obj_loss", "val/cls_loss", "lr/pg0", "lr/pg1", "lr/pg2", "time",
)


class Callback:
    """Base class: override the events you need; each receives the :class:`~efyolo.engine.trainer.Trainer`."""

    def on_train_start(self, trainer: Any) -> None: ...

    def on_train_epoch_end(self, trainer: Any) -> None: ...

    def on_fit_epoch_end(self, trainer: Any) -> None: ...

    def on_model_save(self, trainer: Any) -> None: ...

    def on_train_end(self, trainer: Any) -> None: ...


class _FromMapping(Callback):
    """``{event: function}`` as a callback; an unknown event name is an error (a typo would never fire)."""

    def __init__(self, functions: Mapping[str, Callable[[Any], None]]) -> None:
        unknown = sorted(set(functions) - set(EVENTS))
        if unknown:
            raise EfyoloError(f"callbacks: unknown event(s) {unknown}; events are {', '.join(EVENTS)}")
        self.functions = dict(functions)

    def __getattribute__(self, name: str) -> Any:
        if name in EVENTS:
            return self.functions.get(name, lambda trainer: None)
        return super().__getattribute__(name)


class Callbacks:
    """The ordered list of callbacks a trainer fires."""

    def __init__(self, callbacks: Iterable[Any] = ()) -> None:
        self.items: list[Any] = []
        for callback in callbacks:
            self.add(callback)

    def add(self, callback: Any) -> None:
        if isinstance(callback, Mapping):
            callback = _FromMapping(callback)
        if not any(callable(getattr(callback, event, None)) for event in EVENTS):
            raise EfyoloError(f"callback {callback!r} has none of the methods {', '.join(EVENTS)}")
        self.items.append(callback)

    def fire(self, event: str, trainer: Any) -> None:
        assert event in EVENTS, event
        for callback in self.items:
            method = getattr(callback, event, None)
            if callable(method):
                method(trainer)


# ---------------------------------------------------------------------------------------- built-in


class ResultsCSV(Callback):
    """``results.csv``: one row per epoch (:data:`RESULT_COLUMNS`).

    A fresh run starts a new file (``--exist-ok`` reuses a folder, not the old run's rows); a
    resumed run keeps exactly the rows of the epochs its ``last.pt`` has seen, so that a kill
    between a row and its checkpoint leaves no duplicate and the file equals an uninterrupted run's.
    """

    def on_train_start(self, trainer: Any) -> None:
        path = self.path(trainer)
        if trainer.resume_ckpt is None:
            path.unlink(missing_ok=True)
        elif path.exists():
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= trainer.start_epoch]
            if len(kept) != len(rows):
                tmp = path.with_name(f".{path.name}.tmp")
                with tmp.open("w", newline="") as f:
                    csv.writer(f).writerows(kept)
                tmp.replace(path)

    def on_fit_epoch_end(self, trainer: Any) -> None:
        path = self.path(trainer)
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(RESULT_COLUMNS)
            writer.writerow(
                [f"{v:.5g}" if isinstance(v, float) else v for v in (trainer.epoch_metrics[c] for c in RESULT_COLUMNS)]
            )

    @staticmethod
    def path(trainer: Any) -> Path:
        return Path(trainer.save_dir) / "results.csv"


class TrainingPlots(Callback):
    """``labels.jpg`` (the labels' classes, positions and sizes) at the start, ``results.png`` (every
    ``results.csv`` column per epoch) at the end."""

    def on_train_start(self, trainer: Any) -> None:
        from efyolo.utils.plotting import plot_labels

        if trainer.resume_ckpt is None:
            plot_labels(trainer.train_index.labels, trainer.names, Path(trainer.save_dir) / "labels.jpg")

    def on_train_end(self, trainer: Any) -> None:
        from efyolo.utils.plotting import plot_results

        plot_results(Path(trainer.save_dir) / "results.csv", Path(trainer.save_dir) / "results.png")


class TensorBoardLogger(Callback):
    """TensorBoard event files in the run folder: every ``results.csv`` column per epoch (losses,
    precision, recall, mAP50, mAP50-95, learning rates), step = epoch.

    Needs the ``tensorboard`` package (``pip install "efyolo[loggers]"``); without it the run says
    so once and writes no event files. A resumed run drops the events past the epoch it resumes
    from (``purge_step``), so the curves have no doubled epochs.
    """

    def __init__(self) -> None:
        self.writer: Any = None

    def on_train_start(self, trainer: Any) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            LOGGER.info('TensorBoard: not installed, no event files (pip install "efyolo[loggers]")')
            return
        purge = trainer.start_epoch + 1 if trainer.resume_ckpt is not None else None
        self.writer = SummaryWriter(log_dir=str(trainer.save_dir), purge_step=purge)
        LOGGER.info(f"TensorBoard: tensorboard --logdir {trainer.save_dir}")

    def on_fit_epoch_end(self, trainer: Any) -> None:
        if self.writer is None:
            return
        metrics = trainer.epoch_metrics
        step = int(metrics["epoch"])
        for key in RESULT_COLUMNS[1:-1]:
            value = metrics[key]
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def on_train_end(self, trainer: Any) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def default_callbacks(tensorboard: bool = True) -> list[Callback]:
    """The callbacks every run has: the CSV, the plots and (unless turned off) TensorBoard."""
    callbacks: list[Callback] = [ResultsCSV(), TrainingPlots()]
    if tensorboard:
        callbacks.append(TensorBoardLogger())
    return callbacks

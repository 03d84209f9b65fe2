"""A wall-clock budget for a training run (Ultralytics' ``time`` option, in hours).

A machine's speed is not known in advance (this project's 2-core development machine drifts by
+-15% within a day), so a run with a budget plans its number of epochs from the epochs it has
timed: after each epoch's training, the epochs that still fit are

    floor((budget - elapsed - reserve) / seconds_per_epoch)

where ``seconds_per_epoch`` is the mean epoch so far (training, validation and checkpoint), and
``reserve`` leaves room for the current epoch's validation and the final validation of ``best.pt``. The learning-rate schedule and ``close_mosaic`` follow the plan. Should
the machine slow down so much that even the planned epoch would overrun, the training stops inside
the epoch at :attr:`TimeBudget.train_deadline` and that epoch becomes the last.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

# Until a validation has been timed, assume it costs this fraction of an epoch's training.
_VAL_GUESS = 0.25
# Seconds kept aside for the end of the run besides the final validation itself (plots, tables).
_FINAL_EXTRA_S = 5.0


@dataclass
class TimeBudget:
    """The budget of one run.

    Attributes:
        seconds: the whole budget (setup, epochs and final validation).
        start: ``time.time()`` when the budget started; earlier sessions of a resumed run are
            accounted for by moving it back by the time they used.
        epoch_seconds: full cycle (train, validate, save) of each epoch timed in this session.
        val_seconds: the latest validation's duration (``None`` until one is timed).
    """

    seconds: float
    start: float
    epoch_seconds: list[float] = field(default_factory=list)
    val_seconds: float | None = None

    def elapsed(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.start

    def val_estimate(self, train_seconds: float) -> float:
        return self.val_seconds if self.val_seconds is not None else _VAL_GUESS * train_seconds

    def reserve(self, train_seconds: float) -> float:
        """Seconds to keep for one validation now and the final validation of ``best.pt``."""
        return 2.0 * self.val_estimate(train_seconds) + _FINAL_EXTRA_S

    def seconds_per_epoch(self, train_seconds: float) -> float:
        """The mean epoch so far, or before any is timed, ``train_seconds`` and a validation guess."""
        cycles = self.epoch_seconds or [train_seconds + self.val_estimate(train_seconds)]
        return sum(cycles) / len(cycles)

    def plan(self, epochs_done: int, train_seconds: float, planned: int, now: float | None = None) -> int:
        """Total epochs for the run, right after the training part of epoch ``epochs_done``.

        Args:
            epochs_done: epochs whose training has finished (including the one just trained).
            train_seconds: how long that epoch's training took.
            planned: the current plan. It shrinks as soon as it no longer fits, but grows only with a
                quarter of an epoch to spare: a plan that flips back and forth on the noise of the
                epoch times would shake the learning-rate schedule.

        Returns:
            At least ``epochs_done`` (which means: this epoch is the last).
        """
        per_epoch = self.seconds_per_epoch(train_seconds)
        left = self.seconds - self.elapsed(now) - self.reserve(train_seconds)
        fits = epochs_done + max(math.floor(left / per_epoch), 0)
        if fits > planned:
            fits = max(planned, epochs_done + max(math.floor(left / per_epoch - 0.25), 0))
        return fits

    def train_deadline(self, train_seconds: float) -> float:
        """``time.time()`` after which an epoch's training must stop to leave room for the rest."""
        return self.start + self.seconds - self.reserve(train_seconds)

"""``--time``: the epoch plan of a wall-clock budget, and runs that follow it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from efyolo import EfyoloError
from efyolo.data.synth import generate_dataset
from efyolo.training.time_budget import TimeBudget
from efyolo.training.config import TrainConfig
from efyolo.engine.trainer import train

TINY = dict(model="yolov5n", imgsz=64, batch=8, workers=0, patience=0, close_mosaic=1, cache=False)


def test_plan_fits_the_epochs_that_are_left() -> None:
    budget = TimeBudget(seconds=100.0, start=0.0, epoch_seconds=[10.0, 10.0], val_seconds=2.0)
    # left after this epoch's training: 100 - 30 - (2 validations of 2 s + 5 s) = 61 -> 6 epochs of 10 s
    assert budget.plan(epochs_done=3, train_seconds=8.0, planned=9, now=30.0) == 3 + 6
    assert budget.plan(epochs_done=3, train_seconds=8.0, planned=12, now=30.0) == 3 + 6  # shrinks at once
    # grows only with a quarter epoch to spare: 6.1 epochs fit, 5 are planned on top of the 3 done
    assert budget.plan(epochs_done=3, train_seconds=8.0, planned=5, now=30.0) == 3 + 5
    assert budget.plan(epochs_done=3, train_seconds=8.0, planned=5, now=27.0) == 3 + 6  # 6.4 fit
    # the mean epoch counts: (10 + 10 + 20) / 3 = 13.3 s -> 61 // 13.3 = 4
    budget.epoch_seconds.append(20.0)
    assert budget.plan(epochs_done=3, train_seconds=8.0, planned=9, now=30.0) == 3 + 4


def test_plan_before_any_timing_and_when_time_is_up() -> None:
    fresh = TimeBudget(seconds=100.0, start=0.0)
    # no epoch timed yet: train time + a validation guessed at a quarter of it (10 + 2.5 s per epoch);
    # reserve 2 x 2.5 + 5 = 10 s: (100 - 10 - 10) / 12.5 = 6.4 -> 6
    assert fresh.plan(epochs_done=1, train_seconds=10.0, planned=7, now=10.0) == 1 + 6
    assert fresh.plan(epochs_done=4, train_seconds=10.0, planned=7, now=99.0) == 4  # nothing fits: stop now
    assert fresh.train_deadline(10.0) == 100.0 - 10.0


def test_time_option_and_demo_defaults() -> None:
    demo = TrainConfig.from_kwargs()
    assert demo.time == 0.155 and demo.epochs == 11
    fixed = TrainConfig.from_kwargs(epochs=3)  # an explicit epoch count is kept as it is
    assert fixed.epochs == 3 and fixed.time is None
    assert TrainConfig.from_kwargs(epochs=3, time=0.5).time == 0.5
    assert TrainConfig.from_kwargs(data="x.yaml").time is None
    for bad in (0, -1.0, "1h"):
        with pytest.raises(EfyoloError, match="time"):
            TrainConfig.from_kwargs(data="x.yaml", time=bad)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth"), n_train=16, n_val=8, imgsz=64, seed=5)


def test_run_follows_the_plan(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    """The epochs grow to what the budget plans; the LR schedule and checkpoints follow the plan."""
    plans = iter([3, 3, 3])
    monkeypatch.setattr(TimeBudget, "plan", lambda self, epochs_done, train_seconds, planned, now=None: next(plans))
    result = train(data=str(tiny_data), epochs=1, time=1.0, project=str(tmp_path), name="run", **TINY)
    assert result.epochs_run == 3
    rows = list(csv.DictReader((result.save_dir / "results.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    lrs = [float(r["lr/pg0"]) for r in rows]
    assert lrs[0] > lrs[1] > lrs[2] > 0  # the decay spans the 3 planned epochs, not the first plan's 1
    last = torch.load(result.last, weights_only=True)
    assert last["finished"] and last["train_args"]["epochs"] == 3 and last["time_used"] > 0
    assert yaml.safe_load((result.save_dir / "args.yaml").read_text())["time"] == 1.0


def test_run_out_of_time_stops_inside_the_first_epoch(tiny_data: Path, tmp_path: Path) -> None:
    """A budget already spent by the setup: one batch, then validation, checkpoints and the final table."""
    result = train(data=str(tiny_data), epochs=5, time=1e-6, batch=4, project=str(tmp_path), name="run",
                   **{k: v for k, v in TINY.items() if k != "batch"})
    assert result.epochs_run == 1
    rows = list(csv.DictReader((result.save_dir / "results.csv").open()))
    assert len(rows) == 1 and float(rows[0]["mAP50"]) >= 0.0
    last = torch.load(result.last, weights_only=True)
    assert last["finished"] and last["train_args"]["epochs"] == 1
    assert result.best.exists() and "map50" in result.metrics


def test_resumed_run_keeps_its_budget(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    """A killed budgeted run resumes with its latest plan and the time it had already used."""
    from efyolo.engine.trainer import Trainer

    monkeypatch.setattr(TimeBudget, "plan", lambda self, epochs_done, train_seconds, planned, now=None: 3)
    original_save = Trainer.save

    def save_then_die(self, epoch, evaluation, finished=False):
        original_save(self, epoch, evaluation, finished)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(data=str(tiny_data), epochs=1, time=1.0, project=str(tmp_path), name="run", **TINY)
    last = torch.load(tmp_path / "run/weights/last.pt", weights_only=True)
    assert not last["finished"] and last["train_args"]["epochs"] == 3 and last["time_used"] > 0
    last["time_used"] = 1000.0  # as if the first session had run for 1000 s
    torch.save(last, tmp_path / "run/weights/last.pt")
    monkeypatch.setattr(Trainer, "save", original_save)

    seen = []

    def recording_plan(self, epochs_done, train_seconds, planned, now=None):
        seen.append((planned, self.elapsed(now)))
        return 3

    monkeypatch.setattr(TimeBudget, "plan", recording_plan)
    result = train(resume=str(tmp_path / "run/weights/last.pt"))
    assert result.epochs_run == 3 and len(seen) == 2
    assert seen[0][0] == 3  # the plan from the checkpoint
    assert 1000.0 < seen[0][1] < 1100.0  # the budget counts the first session's time

"""The trainer's events and callbacks (CSV, plots, TensorBoard, a user's own), the one logging
channel, the demo-settings line, and a caller's TrainConfig left as it was."""

from __future__ import annotations

import copy
import csv
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from efyolo import EfyoloError
from efyolo.cli import main
from efyolo.data.synth import generate_dataset
from efyolo.engine.trainer import Trainer, train
from efyolo.training.callbacks import EVENTS, RESULT_COLUMNS, Callback, Callbacks
from efyolo.training.config import TrainConfig

TINY = dict(model="yolov5n", imgsz=64, batch=8, workers=0, patience=0, close_mosaic=1, cache=False)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth"), n_train=16, n_val=8, imgsz=64, seed=3)


class Recorder(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.rows: list[dict] = []

    def on_train_start(self, trainer) -> None:
        self.seen.append(("on_train_start", trainer.start_epoch))
        assert (trainer.save_dir / "args.yaml").exists()

    def on_train_epoch_end(self, trainer) -> None:
        self.seen.append(("on_train_epoch_end", trainer.epoch))
        assert trainer.train_losses.shape == (3,)

    def on_fit_epoch_end(self, trainer) -> None:
        self.seen.append(("on_fit_epoch_end", trainer.epoch))
        self.rows.append(dict(trainer.epoch_metrics))

    def on_model_save(self, trainer) -> None:
        self.seen.append(("on_model_save", trainer.epoch))
        assert (trainer.wdir / "last.pt").exists()

    def on_train_end(self, trainer) -> None:
        self.seen.append(("on_train_end", trainer.epoch))
        assert "map50" in trainer.final_metrics


def test_events_fire_in_order_and_user_callbacks_see_the_rows(tiny_data, tmp_path) -> None:
    recorder, calls = Recorder(), []
    result = train(data=str(tiny_data), epochs=2, project=str(tmp_path), name="run", tensorboard=False,
                   callbacks=[recorder, {"on_train_end": lambda trainer: calls.append(trainer.final_metrics)}], **TINY)
    assert [e for e, _ in recorder.seen] == ["on_train_start"] + ["on_train_epoch_end", "on_fit_epoch_end",
                                                                  "on_model_save"] * 2 + ["on_train_end"]
    assert [r["epoch"] for r in recorder.rows] == [1, 2] and set(recorder.rows[0]) == set(RESULT_COLUMNS)
    with (result.save_dir / "results.csv").open() as f:  # the CSV callback wrote the same rows
        written = list(csv.DictReader(f))
    assert [float(r["mAP50"]) for r in written] == pytest.approx([r["mAP50"] for r in recorder.rows], abs=1e-4)
    assert len(calls) == 1 and calls[0]["map50"] == result.metrics["map50"]
    assert (result.save_dir / "results.png").exists() and (result.save_dir / "labels.jpg").exists()
    assert not list(result.save_dir.glob("events.out.tfevents*"))  # tensorboard=False


def test_tensorboard_event_files(tiny_data, tmp_path) -> None:
    pytest.importorskip("tensorboard", reason='TensorBoard is in the [loggers] extra: pip install "efyolo[loggers]"')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(data=str(tiny_data), epochs=2, project=str(tmp_path), name="tb", **TINY)
    assert list(result.save_dir.glob("events.out.tfevents*"))
    events = EventAccumulator(str(result.save_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/box_loss", "val/cls_loss", "mAP50", "mAP50-95", "precision", "recall", "lr/pg0"):
        assert tag in tags, tag
    assert [s.step for s in events.Scalars("mAP50")] == [1, 2]
    # --no-tensorboard turns it off from the command line
    assert main(["train", "--data", str(tiny_data), "--model", "yolov5n", "--imgsz", "64", "--batch", "8",
                 "--workers", "0", "--epochs", "1", "--project", str(tmp_path), "--name", "off", "--no-cache",
                 "--no-tensorboard"]) == 0
    assert not list((tmp_path / "off").glob("events.out.tfevents*"))


def test_bad_callbacks_are_refused() -> None:
    with pytest.raises(EfyoloError, match="unknown event"):
        Callbacks([{"on_epoch_end": print}])
    with pytest.raises(EfyoloError, match="has none of the methods"):
        Callbacks([object()])
    assert set(EVENTS) == {"on_train_start", "on_train_epoch_end", "on_fit_epoch_end", "on_model_save", "on_train_end"}


def test_the_callers_config_is_not_changed(tiny_data, tmp_path, monkeypatch) -> None:
    from efyolo.training.time_budget import TimeBudget

    monkeypatch.setattr(TimeBudget, "plan", lambda self, epochs_done, train_seconds, planned, now=None: 2)
    cfg = TrainConfig.from_kwargs(data=str(tiny_data), epochs=1, time=1.0, project=str(tmp_path), val=False,
                                  tensorboard=False, **TINY)
    before = copy.deepcopy(cfg.to_dict())
    trainer = Trainer(cfg)
    trainer.train()
    assert trainer.cfg.epochs == 2 and cfg.to_dict() == before  # re-planned in the trainer's copy only
    assert trainer.stride == 32 and trainer.val_loader.dataset.stride == 32  # from the model, not assumed


def test_demo_settings_are_said_when_the_user_names_a_model() -> None:
    note = TrainConfig.from_kwargs(model="yolov5s").demo_note()
    assert note.startswith("No --data: the built-in synthetic dataset, with the demo's settings")
    assert "imgsz 192" in note and "time 0.155" in note and "yolov5n-efficientformer" not in note
    assert "the demo" in TrainConfig.from_kwargs().demo_note()
    assert TrainConfig.from_kwargs(data="x.yaml").demo_note() == ""


def test_one_logging_channel(tiny_data, tmp_path, capsys, caplog) -> None:
    """The trainer's lines are INFO records of the efyolo logger; the CLI shows them on stdout and
    --quiet leaves only warnings."""
    args = ["train", "--data", str(tiny_data), "--model", "yolov5n", "--imgsz", "64", "--batch", "8", "--workers",
            "0", "--epochs", "1", "--project", str(tmp_path), "--no-cache", "--no-tensorboard"]
    with caplog.at_level(logging.INFO, logger="efyolo"):
        assert main(args + ["--name", "loud"]) == 0
    out = capsys.readouterr().out
    assert "Final mAP50" in out and "Next steps:" in out
    assert any("Final mAP50" in r.getMessage() and r.name == "efyolo" for r in caplog.records)
    assert main(args + ["--name", "quiet", "--quiet"]) == 0
    assert "Final mAP50" not in capsys.readouterr().out


def test_importing_efyolo_configures_no_logging() -> None:
    code = ("import logging, efyolo, efyolo.engine.trainer, efyolo.engine.validator, efyolo.engine.predictor; "
            "lg = logging.getLogger('efyolo'); print(len(lg.handlers), lg.level, len(logging.getLogger().handlers))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0", "0"]

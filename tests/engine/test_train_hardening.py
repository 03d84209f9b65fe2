"""Training never corrupts its run files: divergence, lr0 precedence, resumed/reused CSVs, file modes."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
import yaml

from efyolo import EfyoloError
from efyolo.cli import main
from efyolo.data.synth import generate_dataset
from efyolo.models.checkpoint import non_finite_tensors
from efyolo.engine.trainer import Trainer, train

TINY = dict(model="yolov5n", imgsz=64, batch=8, workers=0, patience=0, close_mosaic=1, cache=False)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth"), n_train=16, n_val=8, imgsz=64, seed=3)


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "results.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("val", [True, False])
def test_diverging_run_stops_with_one_error_and_finite_checkpoints(tiny_data, tmp_path, capsys, val) -> None:
    """lr0 1000 with SGD: weights grow huge but finite, so only an eval-mode forward overflows. The
    run must stop (exit 2) naming the learning rate, and never write NaN/inf into a checkpoint."""
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("lr0: 1000\n")
    args = ["train", "--data", str(tiny_data), "--model", "yolov5n", "--imgsz", "64", "--batch", "8",
            "--workers", "0", "--epochs", "3", "--optimizer", "SGD", "--hyp", str(hyp), "--project", str(tmp_path),
            "--name", "run", "--no-cache"] + ([] if val else ["--noval"])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "training diverged" in err and "learning rate" in err and "lr0 1000" in err
    for name in ("last.pt", "best.pt"):
        path = tmp_path / "run" / "weights" / name
        if path.exists():
            ckpt = torch.load(path, weights_only=True)
            assert not non_finite_tensors(ckpt["state_dict"]), name


def test_non_finite_weights_are_refused(tiny_data, tmp_path, capsys) -> None:
    model_run = train(data=str(tiny_data), epochs=1, project=str(tmp_path), name="ok", val=False, **TINY)
    ckpt = torch.load(model_run.best, weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.endswith("running_var"))
    ckpt["state_dict"][key][0] = float("inf")
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    assert main(["train", "--data", str(tiny_data), "--weights", str(bad), "--imgsz", "64", "--workers", "0",
                 "--epochs", "1", "--project", str(tmp_path), "--name", "ft"]) == 2
    err = capsys.readouterr().err
    assert "bad.pt" in err and "NaN or infinity" in err and key in err
    assert not (tmp_path / "ft").exists()  # refused before a run folder was made


def test_lr0_of_own_hyp_wins_under_optimizer_auto(tiny_data, tmp_path, capsys) -> None:
    """--optimizer auto chooses AdamW for a short run; an lr0 in the user's --hyp is still the one used,
    the log says where it came from, and hyp.yaml records the value used."""
    result = train(data=str(tiny_data), epochs=1, hyp={"lr0": 0.0005}, project=str(tmp_path), name="hyp",
                   val=False, **TINY)
    out = capsys.readouterr().out
    assert "AdamW(lr=0.0005 from the hyp file" in out
    assert yaml.safe_load((result.save_dir / "hyp.yaml").read_text())["lr0"] == 0.0005
    rows = _rows(result.save_dir)
    assert float(rows[0]["lr/pg0"]) <= 0.0005 + 1e-12
    # without it, the auto rule's value is used and recorded (not the SGD default 0.01 of hyp.default.yaml)
    result = train(data=str(tiny_data), epochs=1, project=str(tmp_path), name="auto", val=False, **TINY)
    recorded = yaml.safe_load((result.save_dir / "hyp.yaml").read_text())["lr0"]
    assert recorded == pytest.approx(0.002 * 5 / (4 + 6)) and "optimizer auto" in capsys.readouterr().out


def test_demo_lr0_yields_to_own_hyp() -> None:
    from efyolo.training.config import TrainConfig

    assert TrainConfig.from_kwargs().lr0 == 0.003  # the demo's
    assert TrainConfig.from_kwargs(hyp={"lr0": 0.02}).lr0 is None  # the user's hyp decides


def test_resumed_csv_equals_uninterrupted_and_stale_temps_go(tiny_data, tmp_path, monkeypatch) -> None:
    """Killed between the CSV row of epoch 2 and its last.pt: the resumed run's results.csv has each
    epoch once and equals an uninterrupted run's (but the wall-clock column); a killed writer's
    temporary checkpoint is removed."""
    straight = train(data=str(tiny_data), epochs=3, project=str(tmp_path), name="straight", **TINY)

    original_save = Trainer.save

    def die_before_second_save(self, epoch, evaluation, finished=False):
        if epoch == 1:
            raise KeyboardInterrupt  # the CSV row of epoch 2 is written, its last.pt is not
        original_save(self, epoch, evaluation, finished)

    monkeypatch.setattr(Trainer, "save", die_before_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(data=str(tiny_data), epochs=3, project=str(tmp_path), name="killed", **TINY)
    monkeypatch.setattr(Trainer, "save", original_save)
    run = tmp_path / "killed"
    assert [r["epoch"] for r in _rows(run)] == ["1", "2"]
    orphan = run / "weights" / ".last.pt.abc123.tmp"
    orphan.write_bytes(b"partial")
    train(resume=str(run / "weights" / "last.pt"), workers=0)
    assert not orphan.exists()
    resumed, reference = _rows(run), _rows(straight.save_dir)
    assert [r["epoch"] for r in resumed] == ["1", "2", "3"]
    for a, b in zip(resumed, reference):
        assert {k: v for k, v in a.items() if k != "time"} == {k: v for k, v in b.items() if k != "time"}


def test_exist_ok_starts_a_fresh_results_csv(tiny_data, tmp_path) -> None:
    train(data=str(tiny_data), epochs=2, project=str(tmp_path), name="same", **TINY)
    again = train(data=str(tiny_data), epochs=1, project=str(tmp_path), name="same", exist_ok=True,
                  val=False, **TINY)
    assert [r["epoch"] for r in _rows(again.save_dir)] == ["1"]
    assert torch.load(again.best, weights_only=True)["train_args"]["epochs"] == 1  # not the old run's best.pt


def test_weights_respect_the_umask_and_next_steps_are_printed(tiny_data, tmp_path, capsys) -> None:
    old = os.umask(0o022)
    try:
        result = train(data=str(tiny_data), epochs=1, project=str(tmp_path), name="mode", val=False, **TINY)
    finally:
        os.umask(old)
    for path in (result.best, result.last):
        assert path.stat().st_mode & 0o777 == 0o644, oct(path.stat().st_mode)
    out = capsys.readouterr().out
    assert f"efyolo val --weights {result.best} --data {tiny_data} --imgsz 64" in out
    assert f"efyolo export --weights {result.best} --format onnx --imgsz 64" in out
    assert "efyolo detect --weights" in out


def test_budget_cut_is_said_in_the_final_lines(tiny_data, tmp_path, capsys) -> None:
    train(data=str(tiny_data), epochs=5, time=1e-6, project=str(tmp_path), name="cut", **TINY)
    out = capsys.readouterr().out
    assert "time budget" in out and "trained 1 of the 5 epochs first planned" in out


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"epochs": -1}, "epochs must be at least 1"),
        ({"workers": -1}, "workers must be at least 0"),
        ({"batch": 0}, "batch must be at least 1"),
        ({"lr0": float("nan")}, "lr0 must be a positive finite number"),
        ({"imgsz": 100000}, "larger than the supported maximum"),
        ({"hyp": {"scale": -3}}, "'scale' must be in [0, 1)"),
        ({"hyp": {"mosaic": 5}}, "'mosaic' must be in [0, 1]"),
        ({"hyp": {"fliplr": 2}}, "'fliplr' must be in [0, 1]"),
        ({"hyp": {"lr0": -0.01}}, "'lr0' must be above 0"),
        ({"hyp": {"lr0": float("nan")}}, "'lr0' must be a finite number"),
    ],
)
def test_bad_options_fail_before_any_folder(tiny_data, tmp_path, kwargs, message) -> None:
    with pytest.raises(EfyoloError) as info:
        train(data=str(tiny_data), project=str(tmp_path), **{**TINY, **kwargs})
    assert message in str(info.value)
    assert not any(tmp_path.iterdir())  # no empty run folder left behind


def test_training_mAP_is_the_one_efyolo_val_gives(tiny_data, tmp_path, capsys) -> None:
    """The run's final validation and `efyolo val --weights best.pt` (default size: the checkpoint's)
    use one geometry, so a user checking the number gets the same one."""
    import json

    result = train(data=str(tiny_data), epochs=2, project=str(tmp_path), name="run", **TINY)
    capsys.readouterr()
    assert main(["val", "--data", str(tiny_data), "--weights", str(result.best), "--device", "cpu", "--workers", "0",
                 "--json", "--no-plots", "--project", str(tmp_path / "val")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["imgsz"] == 64
    assert metrics["n_predictions"] == result.metrics["n_predictions"] > 0
    assert metrics["map"] == pytest.approx(result.metrics["map"], abs=1e-6)
    assert metrics["map50"] == pytest.approx(result.metrics["map50"], abs=1e-6)

"""Training end to end: a few iterations, run files, resume after a kill, DDP under gloo, bad input."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from efyolo import EfyoloError
from efyolo.cli import main
from efyolo.data.synth import generate_dataset
from efyolo.training.config import TrainConfig, load_hyp
from efyolo.engine.trainer import RESULT_COLUMNS, train

TINY = dict(model="yolov5n", imgsz=64, batch=8, workers=0, patience=0, close_mosaic=1, cache=False)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth"), n_train=16, n_val=8, imgsz=64, seed=3)


def test_few_iterations_end_to_end(tiny_data: Path, tmp_path: Path) -> None:
    result = train(data=str(tiny_data), epochs=2, project=str(tmp_path), name="run", **TINY)
    run = tmp_path / "run"
    assert result.save_dir == run and result.epochs_run == 2
    for name in ("weights/last.pt", "weights/best.pt", "args.yaml", "hyp.yaml", "results.csv", "results.png",
                 "labels.jpg", "confusion_matrix.png"):
        assert (run / name).exists(), name
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert len(rows) == 2 and tuple(rows[0]) == RESULT_COLUMNS
    for col in ("mAP50", "mAP50-95", "precision", "recall", "train/box_loss", "val/obj_loss", "lr/pg0"):
        assert float(rows[-1][col]) == float(rows[-1][col])  # a number, not NaN
    ckpt = torch.load(run / "weights/best.pt", weights_only=True)  # plain data only
    assert ckpt["names"] == yaml.safe_load(tiny_data.read_text())["names"]
    assert "optimizer" not in ckpt
    last = torch.load(run / "weights/last.pt", weights_only=True)
    assert last["epoch"] == 1 and "optimizer" in last and last["finished"]
    assert {"map50", "map", "per_class"} <= set(result.metrics)
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["epochs"] == 2 and args["imgsz"] == 64


def _train_cmd(data: Path, project: Path, name: str, epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "efyolo", "train", "--data", str(data), "--model", "yolov5n", "--imgsz", "64",
        "--batch", "8", "--workers", "0", "--epochs", str(epochs), "--project", str(project), "--name", name,
        "--close-mosaic", "1", "--no-cache",
    ]


def test_resume_after_kill_matches_uninterrupted_run(tiny_data: Path, tmp_path: Path) -> None:
    epochs = 4
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_train_cmd(tiny_data, tmp_path, "killed", epochs), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "weights" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = torch.load(last, weights_only=True)["epoch"]
    assert interrupted_at < epochs - 1, "the run finished before it could be killed"

    # Resume from the command line in a fresh process, as a user would after the kill.
    subprocess.run([sys.executable, "-m", "efyolo", "train", "--resume", str(last), "--workers", "0"], env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed = torch.load(last, weights_only=True)
    subprocess.run(_train_cmd(tiny_data, tmp_path, "straight", epochs), env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    straight = torch.load(tmp_path / "straight" / "weights" / "last.pt", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == epochs - 1
    for key, value in straight["model_state"].items():
        torch.testing.assert_close(resumed["model_state"][key], value, msg=key)
    for key, value in straight["state_dict"].items():  # EMA weights
        torch.testing.assert_close(resumed["state_dict"][key], value, msg=key)
    rows = list(csv.DictReader((tmp_path / "killed" / "results.csv").open()))
    assert [int(r["epoch"]) for r in rows][-epochs + interrupted_at + 1:] == list(range(interrupted_at + 2, epochs + 1))


def test_ddp_two_cpu_processes_keep_identical_weights(tiny_data: Path, tmp_path: Path) -> None:
    script = tmp_path / "ddp_run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, torch
            from efyolo.training.ema import unwrap
            from efyolo.training.config import TrainConfig
            from efyolo.engine.trainer import Trainer
            cfg = TrainConfig(data={str(tiny_data)!r}, model="yolov5n", imgsz=64, batch=8, epochs=1,
                              workers=0, project={str(tmp_path / "runs")!r}, cache=False, device="cpu")
            trainer = Trainer(cfg)
            trainer.train()
            rank = int(os.environ["RANK"])
            torch.save(unwrap(trainer.model).state_dict(), {str(tmp_path)!r} + f"/rank{{rank}}.pt")
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(script)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    init = torch.load(tmp_path / "runs" / "exp" / "weights" / "last.pt", weights_only=True)
    # Parameters are identical (DDP all-reduces gradients); BatchNorm running statistics are
    # broadcast from rank 0 before each forward and then see each rank's own batch, as in YOLOv5.
    params = [k for k in w0 if "running_" not in k and "num_batches" not in k]
    assert len(params) > 100
    for key in params:
        assert torch.equal(w0[key], w1[key]), key
    for key, value in init["model_state"].items():
        assert torch.equal(w0[key], value), key  # rank 0 saved what it trained
    # only rank 0 wrote a run folder
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["exp"]


def test_bad_training_input(tmp_path: Path, tiny_data: Path, capsys) -> None:
    assert main(["train", "--data", str(tmp_path / "missing.yaml"), "--workers", "0"]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    bad_hyp = tmp_path / "hyp.yaml"
    bad_hyp.write_text("lr0: 0.01\nmosiac: 1.0\n")
    with pytest.raises(EfyoloError, match="unknown hyperparameter 'mosiac'"):
        load_hyp(bad_hyp)
    with pytest.raises(EfyoloError, match="unknown training option"):
        TrainConfig.from_kwargs(epocs=3)
    with pytest.raises(EfyoloError, match="autoanchor must be one of"):
        TrainConfig.from_kwargs(data="x.yaml", autoanchor="always")
    assert main(["train", "--data", str(tiny_data), "--model", "yolov5n", "--imgsz", "70", "--workers", "0",
                 "--project", str(tmp_path)]) == 2
    assert "multiple" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing.pt")]) == 2


def test_demo_defaults_only_without_data() -> None:
    demo = TrainConfig.from_kwargs()
    assert demo.data is None and demo.imgsz == 192 and "efficientformer" in demo.model
    assert demo.autoanchor == "refit"
    assert load_hyp(demo.hyp)["cls"] == 1.5 and load_hyp(demo.hyp)["lrf"] == 0.1
    assert load_hyp(TrainConfig.from_kwargs(hyp={"box": 0.1}).hyp)["cls"] == 0.5  # own hyp: own values
    real = TrainConfig.from_kwargs(data="x.yaml")
    assert real.imgsz == 640 and real.model == "yolov5s" and real.autoanchor == "check"
    assert real.hyp is None and load_hyp(real.hyp)["cls"] == 0.5  # YOLOv5's hyp.scratch-low
    assert TrainConfig.from_kwargs(imgsz=256).imgsz == 256


def test_tiny_run_learns(tmp_path: Path) -> None:
    """An mAP floor: without augmentation yolov5n must fit 4 images within 100 one-batch epochs."""
    data = generate_dataset(tmp_path / "d", n_train=4, n_val=1, imgsz=64, seed=11)
    # validate on the training images themselves: this checks learning, not generalisation
    cfg = yaml.safe_load(data.read_text())
    cfg["val"] = cfg["train"]
    data.write_text(yaml.safe_dump(cfg))
    no_aug = {k: 0.0 for k in ("hsv_h", "hsv_s", "hsv_v", "translate", "scale", "fliplr", "mosaic")}
    result = train(data=str(data), epochs=100, hyp=no_aug, lr0=0.01, project=str(tmp_path), name="fit", val=False,
                   **{**TINY, "batch": 4, "close_mosaic": 0})
    assert result.metrics["map50"] > 0.5, result.metrics["map50"]

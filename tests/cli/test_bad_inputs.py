"""A hostile user's inputs: each gets exit code 2 and one line naming the value, file or key.

The table covers the options of ``val``, ``detect`` and ``train``, broken hyperparameter files,
broken and malicious checkpoints, and unusable splits. Every case also checks that no traceback
is printed and (for commands that make run folders) that no empty run folder is left behind.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

import efyolo
from efyolo.cli import main
from efyolo.data.synth import generate_dataset
from efyolo.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    data = generate_dataset(root / "data", n_train=4, n_val=2, imgsz=64, seed=1)
    model = efyolo.build_model("yolov5n", nc=6)
    weights = save_checkpoint(
        {"model_config": model.yaml, "state_dict": model.state_dict(), "names": [str(i) for i in range(6)],
         "imgsz": 64},
        root / "w.pt",
    )
    files = {"root": root, "data": data, "weights": weights}
    # an empty train split and a val split whose only image cannot be decoded
    for name, content in (("empty", None), ("broken", b"not an image")):
        d = root / name
        (d / "images" / "train").mkdir(parents=True)
        (d / "images" / "val").mkdir(parents=True)
        if content is None:
            (d / "images" / "train" / "x.jpg").write_bytes(b"\xff\xd8 truncated garbage")
            Image.new("RGB", (32, 32)).save(d / "images" / "val" / "v.jpg")
        else:
            Image.new("RGB", (32, 32)).save(d / "images" / "train" / "t.jpg")
            (d / "images" / "val" / "v.jpg").write_bytes(content)
        (d / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [a, b, c, d, e, f]\n")
        files[name] = d / "data.yaml"
    # broken checkpoints
    base = torch.load(weights, weights_only=True)
    torch.save({**base, "state_dict": list(base["state_dict"].values())}, root / "list_state.pt")
    resume = {**base, "train_args": {"epochs": 3, "bogus_option": 1}, "epoch": 0, "optimizer": {},
              "model_state": base["state_dict"], "ema_updates": 0, "rng": {"torch": torch.get_rng_state(),
                                                                           "python": [0]}}
    torch.save(resume, root / "unknown_arg.pt")
    torch.save({k: v for k, v in {**resume, "train_args": {"epochs": 3}}.items() if k != "rng"}, root / "no_rng.pt")
    with open(root / "pickled.pt", "wb") as f:  # a class reference, as YOLOv5 checkpoints hold
        pickle.dump({"model": pickle.loads(pickle.dumps(Path("x")))}, f)
    for name, text in (("scale", "scale: -3\n"), ("lr0nan", "lr0: .nan\n"), ("lr0neg", "lr0: -0.01\n"),
                       ("mosaic", "mosaic: 5\n"), ("fliplr", "fliplr: 2\n"), ("typo", "mosiac: 1\n")):
        (root / f"hyp_{name}.yaml").write_text(text)
    return files


def _fmt(arg: str, env: dict[str, Path], project: Path) -> str:
    return arg.format(**{k: str(v) for k, v in env.items()}, project=str(project))


TRAIN = "train --data {data} --model yolov5n --imgsz 64 --batch 2 --workers 0 --epochs 1 --project {project}"
VAL = "val --data {data} --weights {weights} --device cpu --workers 0 --project {project}"
DETECT = "detect --weights {weights} --source {root}/data/images/val --device cpu --project {project}"

CASES = [
    # (command line, expected text in the one error line)
    (VAL + " --conf 2", "conf must be in [0, 1], got 2.0"),
    (VAL + " --iou -1", "iou must be in [0, 1], got -1.0"),
    (VAL + " --batch 0", "batch must be at least 1, got 0"),
    (VAL + " --workers -1", "workers must be at least 0, got -1"),
    (VAL + " --imgsz 100000", "larger than the supported maximum 8192"),
    ("val --data {broken} --weights {weights} --device cpu --workers 0 --project {project}",
     "split 'val' has no usable image (1 listed, 1 unreadable"),
    (DETECT + " --conf 2", "conf must be in [0, 1], got 2.0"),
    (DETECT + " --max-det 0", "max_det must be at least 1"),
    (TRAIN.replace("--workers 0", "--workers -1"), "workers must be at least 0, got -1"),
    (TRAIN + " --device mps", "--device 'mps': Apple MPS is not available"),
    (TRAIN + " --lr0 nan", "lr0 must be a positive finite number, got nan"),
    (TRAIN.replace("--epochs 1", "--epochs 0"), "epochs must be at least 1, got 0"),
    (TRAIN.replace("--epochs 1", "--epochs -1"), "epochs must be at least 1, got -1"),
    (TRAIN.replace("--imgsz 64", "--imgsz 100000"), "larger than the supported maximum 8192"),
    (TRAIN.replace("--imgsz 64", "--imgsz 70"), "imgsz 70 is not a positive multiple of the model stride 32"),
    (TRAIN + " --hyp {root}/hyp_scale.yaml", "hyp_scale.yaml: hyperparameter 'scale' must be in [0, 1), got -3"),
    (TRAIN + " --hyp {root}/hyp_lr0nan.yaml", "hyperparameter 'lr0' must be a finite number, got nan"),
    (TRAIN + " --hyp {root}/hyp_lr0neg.yaml", "hyperparameter 'lr0' must be above 0, got -0.01"),
    (TRAIN + " --hyp {root}/hyp_mosaic.yaml", "hyperparameter 'mosaic' must be in [0, 1], got 5"),
    (TRAIN + " --hyp {root}/hyp_fliplr.yaml", "hyperparameter 'fliplr' must be in [0, 1], got 2"),
    (TRAIN + " --hyp {root}/hyp_typo.yaml", "unknown hyperparameter 'mosiac'"),
    (TRAIN.replace("{data}", "{empty}"), "split 'train' has no usable image (1 listed, 1 unreadable"),
    (TRAIN.replace("{data}", "{root}/missing.yaml"), "missing.yaml not found"),
    (TRAIN + " --weights {root}/list_state.pt", "list_state.pt: 'state_dict' must be a mapping"),
    (TRAIN + " --weights {root}/pickled.pt", "pickled.pt is not an efyolo checkpoint"),
    ("train --resume {root}/unknown_arg.pt --workers 0", "unknown training option(s) ['bogus_option']"),
    ("train --resume {root}/no_rng.pt --workers 0", "no_rng.pt: not the last.pt of an unfinished run (missing 'rng')"),
    (VAL.replace("{weights}", "{root}/pickled.pt"), "pickled.pt is not an efyolo checkpoint"),
    ("export --weights {root}/list_state.pt --format torchscript", "list_state.pt: 'state_dict' must be a mapping"),
]


@pytest.mark.parametrize("line, message", CASES, ids=[c[0].split()[0] + ": " + c[1][:40] for c in CASES])
def test_bad_input_is_one_line_exit_2(env, tmp_path, capsys, line, message) -> None:
    project = tmp_path / "runs"
    code = main(_fmt(line, env, project).split())
    captured = capsys.readouterr()
    err_lines = [ln for ln in captured.err.strip().splitlines() if ln.strip()]
    assert code == 2, captured.err[-2000:]
    assert "Traceback" not in captured.err
    assert err_lines[-1].startswith(f"efyolo {line.split()[0]}: error: "), err_lines[-1]
    assert message in err_lines[-1], err_lines[-1]
    assert "weights_only" not in err_lines[-1]  # PyTorch's advice to load unsafely is never repeated
    assert not project.exists() or not any(project.iterdir()), "an argument error left a run folder behind"


def test_efyolo_alone_and_version(capsys) -> None:
    assert main([]) == 0
    assert "usage: efyolo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"efyolo {efyolo.__version__}"

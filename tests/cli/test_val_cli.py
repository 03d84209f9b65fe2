"""``efyolo val --pred`` and ``efyolo convert`` end to end, in-process."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efyolo.cli import main
from efyolo.utils.runs import increment_path


def make_dataset(root: Path, n_images: int = 12, seed: int = 0) -> tuple[Path, list[dict]]:
    """A small YOLO dataset (3 classes, class 2 never labelled) and noisy COCO-results predictions
    for it, including one for an image that is not in the split."""
    rng = np.random.default_rng(seed)
    preds = []
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for i in range(n_images):
        w, h = int(rng.integers(60, 200)), int(rng.integers(60, 200))
        Image.new("RGB", (w, h)).save(root / "images" / "val" / f"{i:06d}.png")
        rows = []
        for _ in range(int(rng.integers(0, 5))):
            c = int(rng.integers(0, 2))
            bw, bh = rng.uniform(0.05, 0.5, 2)
            xc, yc = rng.uniform(bw / 2, 1 - bw / 2), rng.uniform(bh / 2, 1 - bh / 2)
            rows.append(f"{c} {xc:.6f} {yc:.6f} {bw:.6f} {bh:.6f}")
            box = np.array([(xc - bw / 2) * w, (yc - bh / 2) * h, bw * w, bh * h])
            for _ in range(int(rng.integers(0, 3))):
                noisy = box + rng.normal(0, 0.1, 4) * np.r_[box[2:], box[2:]]
                label = c if rng.random() < 0.8 else int(rng.integers(0, 3))
                preds.append({"image_id": i, "category_id": label, "bbox": noisy.round(2).tolist(),
                              "score": round(float(rng.random()), 3)})
        if rows:
            (root / "labels" / "val" / f"{i:06d}.txt").write_text("\n".join(rows) + "\n")
        preds.append({"image_id": i, "category_id": int(rng.integers(0, 3)),
                      "bbox": [1.0, 2.0, 30.0, 20.0], "score": 0.05})
    preds.append({"image_id": 999, "category_id": 0, "bbox": [0, 0, 5, 5], "score": 0.9})
    (root / "data.yaml").write_text("path: .\ntrain: images/val\nval: images/val\nnames: [cat, dog, bird]\n")
    return root / "data.yaml", preds


def write_preds(path: Path, preds: list[dict]) -> Path:
    path.write_text(json.dumps(preds))
    return path


def test_val_json_agrees_with_pycocotools(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    coco = pytest.importorskip("pycocotools.coco")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")
    data, preds = make_dataset(tmp_path / "ds")
    pred_file = write_preds(tmp_path / "preds.json", preds)
    rc = main(["val", "--data", str(data), "--pred", str(pred_file), "--json", "--no-plots",
               "--project", str(tmp_path / "runs")])
    captured = capsys.readouterr()
    assert rc == 0
    assert len(captured.out.strip().splitlines()) == 1  # exactly one JSON object on stdout
    out = json.loads(captured.out)
    assert "Class" in captured.err and "mAP50-95" in captured.err  # the table went to stderr
    for key in ("map50", "map", "map75", "precision", "recall", "per_class"):
        assert key in out
    assert out["skipped_unknown_image"] == 1 and out["predictions"] == len(preds)
    assert [c["name"] for c in out["per_class"]] == ["cat", "dog", "bird"]
    assert out["per_class"][2]["instances"] == 0 and out["per_class"][2]["ap"] == -1

    # the same data through pycocotools: convert the split, drop the unknown image's entry
    assert main(["convert", "--from", "yolo", "--to", "coco", "--data", str(data), "--out",
                 str(tmp_path / "gt.json")]) == 0
    capsys.readouterr()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco.COCO(str(tmp_path / "gt.json"))
        dt = gt.loadRes([p for p in preds if p["image_id"] != 999])
        ev = cocoeval.COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert out["map"] == pytest.approx(ev.stats[0], abs=1e-4)
    assert out["map50"] == pytest.approx(ev.stats[1], abs=1e-4)
    assert out["map75"] == pytest.approx(ev.stats[2], abs=1e-4)
    for k in (0, 1):
        p = ev.eval["precision"][:, :, k, 0, -1]
        assert out["per_class"][k]["ap"] == pytest.approx(p.mean(), abs=1e-4)
        assert out["per_class"][k]["ap50"] == pytest.approx(p[0].mean(), abs=1e-4)


def test_val_on_coco_json_split_with_crowd_matches_pycocotools(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    coco = pytest.importorskip("pycocotools.coco")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")
    rng = np.random.default_rng(3)
    (tmp_path / "imgs").mkdir()
    gt = {"images": [], "categories": [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}], "annotations": []}
    preds = []
    for i in range(1, 9):
        Image.new("RGB", (120, 100)).save(tmp_path / "imgs" / f"{i:012d}.jpg")
        gt["images"].append({"id": i, "file_name": f"{i:012d}.jpg", "width": 120, "height": 100})
        for _ in range(int(rng.integers(1, 5))):
            cat = int(rng.choice([1, 5]))
            x, y = rng.uniform(0, 60, 2)
            bw, bh = rng.uniform(5, 55, 2)
            crowd = int(rng.random() < 0.25)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": cat,
                                      "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": crowd})
            for _ in range(int(rng.integers(1, 4))):  # several detections per object (crowds absorb them)
                box = np.array([x, y, bw, bh]) + rng.normal(0, 3, 4)
                preds.append({"image_id": i, "category_id": [1, 5].index(cat), "bbox": box.tolist(),
                              "score": float(rng.random())})
    (tmp_path / "ann.json").write_text(json.dumps(gt))
    (tmp_path / "data.yaml").write_text("val: ann.json\nval_images: imgs\n")
    pred_file = write_preds(tmp_path / "preds.json", preds)
    rc = main(["val", "--data", str(tmp_path / "data.yaml"), "--pred", str(pred_file), "--json", "--no-plots",
               "--project", str(tmp_path / "runs")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    with contextlib.redirect_stdout(io.StringIO()):
        ref_gt = coco.COCO(str(tmp_path / "ann.json"))
        ref_dt = ref_gt.loadRes([{**p, "category_id": [1, 5][p["category_id"]]} for p in preds])
        ev = cocoeval.COCOeval(ref_gt, ref_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    got = [out[k] for k in ("map", "map50", "map75", "map_small", "map_medium", "map_large")]
    np.testing.assert_allclose(got, ev.stats[:6], atol=1e-4)


def test_val_table_plots_and_run_numbering(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, preds = make_dataset(tmp_path / "ds", n_images=5)
    pred_file = write_preds(tmp_path / "preds.json", preds)
    args = ["val", "--data", str(data), "--pred", str(pred_file), "--project", str(tmp_path / "runs")]
    assert main([*args, "--verbose"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "Class" in line)
    assert header.split() == ["Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95"]
    assert any(line.split()[:1] == ["cat"] for line in out.splitlines())  # --verbose: per class
    exp = tmp_path / "runs" / "exp"
    for name in ("PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png", "confusion_matrix.png"):
        assert (exp / name).stat().st_size > 1000
    assert json.loads((exp / "metrics.json").read_text())["n_images"] == 5
    assert main([*args, "--no-plots"]) == 0
    assert main([*args, "--no-plots"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["exp", "exp2", "exp3"]
    assert main([*args, "--no-plots", "--name", "exp", "--exist-ok"]) == 0
    assert len(list((tmp_path / "runs").iterdir())) == 3


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[{]", "malformed JSON"),
        ('{"image_id": 1}', "expected a JSON list"),
        ('[{"image_id": 1, "category_id": 0, "bbox": [0, 0, 1, 1]}]', "entry 0: missing 'score'"),
        ('[{"image_id": 1, "category_id": 0, "bbox": [0, 0, 1], "score": 0.5}]', "entry 0: expected"),
        (None, "predictions file not found"),
    ],
)
def test_val_bad_predictions_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: str | None, match: str
) -> None:
    data, _ = make_dataset(tmp_path / "ds", n_images=2)
    pred_file = tmp_path / "preds.json"
    if content is not None:
        pred_file.write_text(content)
    rc = main(["val", "--data", str(data), "--pred", str(pred_file), "--project", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and match in err and str(pred_file) in err
    assert not (tmp_path / "runs").exists()  # nothing written for a failed run


def test_val_bad_data_and_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred_file = write_preds(tmp_path / "preds.json", [])
    assert main(["val", "--data", str(tmp_path / "missing.yaml"), "--pred", str(pred_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.yaml not found" in err
    assert main(["val", "--data", str(tmp_path / "missing.yaml"), "--weights", "w.pt"]) == 2
    assert "w.pt does not exist" in capsys.readouterr().err


def test_convert_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, _ = make_dataset(tmp_path / "ds", n_images=3)
    to_coco = ["convert", "--from", "yolo", "--to", "coco", "--data", str(data), "--out", str(tmp_path / "a.json")]
    assert main(to_coco) == 0
    assert "3 images" in capsys.readouterr().out
    images = tmp_path / "ds" / "images" / "val"
    args = ["convert", "--from", "coco", "--to", "yolo", "--json", str(tmp_path / "a.json"),
            "--images", str(images), "--out", str(tmp_path / "y"), "--copy-images"]
    assert main(args) == 0
    assert (tmp_path / "y" / "data.yaml").exists()
    assert not (tmp_path / "y" / "images" / "val" / "000000.png").is_symlink()  # --copy-images
    for name in [p.name for p in (tmp_path / "ds" / "labels" / "val").iterdir()]:
        a = np.loadtxt(tmp_path / "ds" / "labels" / "val" / name, ndmin=2)
        b = np.loadtxt(tmp_path / "y" / "labels" / "val" / name, ndmin=2)
        np.testing.assert_allclose(a, b, atol=2e-6)
    capsys.readouterr()
    assert main(["convert", "--from", "coco", "--to", "yolo", "--out", str(tmp_path / "z")]) == 2
    assert "--from coco needs --json and --images" in capsys.readouterr().err


def test_increment_path(tmp_path: Path) -> None:
    assert increment_path(tmp_path / "exp") == tmp_path / "exp"
    assert increment_path(tmp_path / "exp", mkdir=True).is_dir()
    assert increment_path(tmp_path / "exp", mkdir=True) == tmp_path / "exp2"
    assert increment_path(tmp_path / "exp", sep="_") == tmp_path / "exp_2"
    assert increment_path(tmp_path / "exp", exist_ok=True) == tmp_path / "exp"
    (tmp_path / "out.json").write_text("{}")
    assert increment_path(tmp_path / "out.json") == tmp_path / "out2.json"

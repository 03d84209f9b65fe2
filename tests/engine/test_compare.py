"""``efyolo compare``: the study end to end on a tiny set, its files, resume, --from-runs, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import efyolo
from efyolo.cli import main
from efyolo.data.synth import generate_dataset
from efyolo.engine.compare import compare, pareto_front
from efyolo.errors import EfyoloError

pytest.importorskip("onnxruntime", reason='ONNX Runtime is in the [export] extra')

MODELS = ["yolov5n", "yolov5n-efficientformer-l0"]
TINY = dict(imgsz=64, epochs=1, batch=8, formats="pytorch,onnx", runs=2, warmup=0, passes=2, threads=1,
            train_options={"workers": 0, "patience": 0, "close_mosaic": 0, "cache": False, "tensorboard": False,
                           "amp": False})


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth"), n_train=16, n_val=8, imgsz=64, seed=3)


@pytest.fixture(scope="module")
def study(tiny_data: Path, tmp_path_factory):
    project = tmp_path_factory.mktemp("compare")
    return compare(MODELS, data=str(tiny_data), project=str(project), name="study", quiet=True, **TINY)


def test_study_files_and_columns(study) -> None:
    for name in ("compare.csv", "compare.json", "pareto.png", "report.html", "compare_args.json"):
        assert (study.save_dir / name).is_file(), name
    rows = list(csv.DictReader((study.save_dir / "compare.csv").open()))
    assert [(r["model"], r["format"]) for r in rows] == [(m, f) for m in MODELS for f in ("pytorch", "onnx")]
    for column in ("params", "gflops", "size_mb", "map50", "map", "latency_ms", "latency_p10_ms", "latency_p90_ms",
                   "train_images_per_s", "train_minutes", "epochs", "pareto"):
        assert column in rows[0], column
    for r in rows:
        assert float(r["latency_ms"]) > 0 and float(r["size_mb"]) > 0 and r["status"] == "ok"
        assert float(r["train_images_per_s"]) > 0 and int(r["epochs"]) == 1
        assert float(r["latency_p10_ms"]) <= float(r["latency_ms"]) <= float(r["latency_p90_ms"])
    data = json.loads((study.save_dir / "compare.json").read_text())
    assert len(data["rows"]) == 4 and data["machine"]["cores"] and data["args"]["models"] == MODELS
    assert any(r["pareto"] for r in data["rows"])


def test_map_equals_efyolo_val_of_the_same_best_pt(study, tiny_data: Path, tmp_path: Path) -> None:
    row = next(r for r in study.rows if r.model == "yolov5n" and r.format == "pytorch")
    best = Path(row.run) / "weights" / "best.pt"
    metrics = efyolo.val(weights=str(best), data=str(tiny_data), project=str(tmp_path), plots=False, quiet=True)
    assert row.map == pytest.approx(metrics["map"], abs=1e-6)
    assert row.map50 == pytest.approx(metrics["map50"], abs=1e-6)


def test_report_html_is_self_contained(study) -> None:
    page = (study.save_dir / "report.html").read_text()
    assert page.count("<tr class=") == 4  # one row per model and format
    assert 'src="data:image/png;base64,' in page  # the plot is embedded
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert "sortable" in page and "addEventListener" in page


def test_from_runs_rebuilds_the_report_without_training(study, tmp_path: Path) -> None:
    again = compare(from_runs=[str(study.save_dir)], project=str(tmp_path), name="again", imgsz=64,
                    formats="pytorch,onnx", runs=2, warmup=0, passes=1, threads=1, quiet=True)
    got = {(r.model, r.format): r for r in again.rows}
    for r in study.rows:
        assert got[(r.model, r.format)].map == r.map
    assert not (again.save_dir / "runs").exists()  # nothing trained


def test_from_runs_never_writes_into_the_runs_it_reads(study, tmp_path: Path) -> None:
    run = study.save_dir / "runs" / "yolov5n"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    again = compare(from_runs=[str(run)], project=str(tmp_path), name="ts", imgsz=64, formats="torchscript",
                    runs=1, warmup=0, passes=1, threads=1, quiet=True)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing added or replaced
    (row,) = again.rows
    assert row.status == "ok" and (again.save_dir / "from_runs").is_dir()
    assert list((again.save_dir / "from_runs").glob("*/best.torchscript"))


def test_killed_study_resumes_and_never_redoes_a_finished_model(tiny_data: Path, tmp_path: Path) -> None:
    class Kill:
        def on_model_save(self, trainer) -> None:
            if "efficientformer" in str(trainer.cfg.model) and trainer.epoch == 0:
                raise KeyboardInterrupt  # as if the process were killed after the first epoch's last.pt

    options = {**TINY, "epochs": 2}
    with pytest.raises(KeyboardInterrupt):
        compare(MODELS, data=str(tiny_data), project=str(tmp_path), name="s", quiet=True, callbacks=[Kill()],
                **options)
    folder = tmp_path / "s"
    first = folder / "runs" / "yolov5n" / "compare_model.json"
    stamp = first.stat().st_mtime_ns
    assert not (folder / "runs" / "yolov5n-efficientformer-l0" / "compare_model.json").exists()
    result = compare(project=str(tmp_path), resume=True, quiet=True, runs=2, warmup=0, passes=1, threads=1)
    assert result.save_dir == folder
    assert first.stat().st_mtime_ns == stamp  # the finished model was not redone
    rows = list(csv.DictReader((folder / "runs" / "yolov5n-efficientformer-l0" / "results.csv").open()))
    assert len(rows) == 2  # epoch 1 from the killed run, epoch 2 from the resumed one
    assert {r.model for r in result.rows} == set(MODELS) and all(r.epochs == 2 for r in result.rows)


def test_unknown_model_is_named_before_any_training(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(EfyoloError, match="yolov5n-nonexistent"):
        compare(["yolov5n", "yolov5n-nonexistent"], data=str(tiny_data), project=str(tmp_path), name="x", **TINY)
    assert not (tmp_path / "x" / "runs").exists()


def test_missing_format_package_is_skipped_with_the_reason(study, tmp_path: Path, monkeypatch) -> None:
    import efyolo.engine.compare as compare_module

    real = compare_module.record_model

    def without_openvino(model, run_dir, best, data, formats, bench, device="cpu", **kw):
        import efyolo.export.exporter as exporter

        original = exporter.export_model

        def export(weights, fmt, **kw):
            if fmt == "openvino":
                raise EfyoloError('OpenVINO export needs the openvino package: pip install "efyolo[export]"')
            return original(weights, fmt, **kw)

        monkeypatch.setattr(exporter, "export_model", export)
        return real(model, run_dir, best, data, formats, bench, device, **kw)

    monkeypatch.setattr(compare_module, "record_model", without_openvino)
    result = compare(from_runs=[str(study.save_dir / "runs" / "yolov5n")], project=str(tmp_path), name="ov",
                     imgsz=64, formats="onnx,openvino", runs=1, warmup=0, passes=1, threads=1)
    status = {r.format: r.status for r in result.rows}
    assert status["onnx"] == "ok" and "efyolo[export]" in status["openvino"]


def test_unwritable_project_folder(tiny_data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a folder cannot be made below a file, whoever runs the test
    with pytest.raises(EfyoloError, match="cannot write"):
        compare(MODELS, data=str(tiny_data), project=str(blocker / "sub"), name="x", **TINY)
    assert blocker.read_text() == "not a folder"


def test_pareto_front() -> None:
    # (latency, mAP): the second is dominated by the first (slower, less accurate); ties are kept
    assert pareto_front([(10, 0.5), (12, 0.4), (20, 0.6), (20, 0.6), (5, 0.1)]) == [True, False, True, True, True]


def test_cli_errors_before_work(tmp_path: Path, capsys) -> None:
    assert main(["compare", "--models", "yolov5n,yolov5q", "--project", str(tmp_path)]) == 2
    assert "yolov5q" in capsys.readouterr().err
    assert main(["compare", "--project", str(tmp_path)]) == 2
    assert main(["compare", "--models", "yolov5n", "--formats", "tflite2", "--project", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())

"""The plotting module: every plot writes its image, and plotting leaves matplotlib's global state alone.

Plots are ``matplotlib.figure.Figure`` objects saved directly: importing
:mod:`efyolo.utils.plotting` imports no matplotlib, and making plots neither imports pyplot nor
switches the process's backend (a caller's interactive backend and open figures stay as they were).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from efyolo.evaluation.metrics import DetectionEvaluator, EvalResult
from efyolo.utils import plotting

PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff"
EVAL_FILES = ["PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png", "confusion_matrix.png"]

# A child process: build a result, check that the import pulled in no matplotlib, make every plot
# and drawing, then report what matplotlib looks like.
CHILD = textwrap.dedent(
    """
    import csv, json, sys
    from pathlib import Path
    import numpy as np
    from efyolo.evaluation.metrics import DetectionEvaluator

    out = Path(sys.argv[1])
    ev = DetectionEvaluator(2, ["a", "b"])
    ev.update(np.array([[0, 0, 10, 10], [20, 20, 40, 41]]), [0.9, 0.6], [0, 1],
              np.array([[0, 0, 10, 10], [20, 20, 40, 40]]), [0, 1])
    result = ev.compute()
    with open(out / "results.csv", "w", newline="") as f:
        csv.writer(f).writerows([["epoch", "train/box_loss", "metrics/mAP50"], [0, 0.2, 0.1], [1, 0.1, 0.3]])
    before = "matplotlib" in sys.modules

    import efyolo.utils.plotting as P

    after_import = "matplotlib" in sys.modules
    P.save_eval_plots(result, out)
    P.plot_results(out / "results.csv", out / "results.png")
    P.plot_labels([np.array([[0, 0.5, 0.5, 0.2, 0.3]])], ["a", "b"], out / "labels.jpg")
    img = np.zeros((64, 64, 3), np.uint8)
    P.draw_detections(img, np.array([[4, 4, 40, 40]]), np.array([0.9]), np.array([1]), ["a", "b"])
    P.crop_box(img, [4, 4, 40, 40])
    pyplot = "matplotlib.pyplot" in sys.modules  # before get_backend(), which may resolve (import) it

    import matplotlib

    print(json.dumps({"before": before, "after_import": after_import, "pyplot": pyplot,
                      "backend": matplotlib.get_backend()}))
    """
)


@pytest.fixture(scope="module")
def result() -> EvalResult:
    """Two images, three classes (``c`` without ground truth): a hit, a false positive, a miss."""
    ev = DetectionEvaluator(3, ["a", "b", "c"])
    gt = np.array([[0, 0, 10, 10], [20, 20, 40, 40]])
    ev.update(np.array([[50, 50, 60, 60], [0, 0, 10, 10], [21, 20, 40, 41]]), [0.9, 0.8, 0.6], [0, 0, 1], gt, [0, 1])
    ev.update(np.array([[0, 0, 10, 10]]), [0.7], [2], gt[:1], [0])
    return ev.compute()


def write_results_csv(path: Path, columns: list[str], epochs: int = 3) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for e in range(epochs):
            w.writerow([e if c == "epoch" else 0.1 * (e + 1) for c in columns])
    return path


def image_shape(path: Path, magic: bytes) -> tuple[int, ...]:
    """``(h, w, 3)`` of a non-empty image file that starts with ``magic``."""
    data = path.read_bytes()
    assert data.startswith(magic), path
    img = cv2.imread(str(path))
    assert img is not None, path
    return img.shape


@pytest.mark.parametrize("backend", [None, "svg"])
def test_plotting_imports_no_pyplot_and_keeps_the_backend(tmp_path: Path, backend: str | None) -> None:
    """``None``: matplotlib picks its backend itself (pyplot would resolve it); ``"svg"``: the user
    chose one, which must still be in force afterwards (no ``matplotlib.use("Agg")``)."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    if backend:
        env["MPLBACKEND"] = backend
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["before"] and not report["after_import"]  # the import stays cheap
    assert not report["pyplot"]
    if backend:
        assert report["backend"] == backend
    for name in [*EVAL_FILES, "results.png"]:
        image_shape(tmp_path / name, PNG)
    image_shape(tmp_path / "labels.jpg", JPEG)


def test_save_eval_plots_writes_every_plot(tmp_path: Path, result: EvalResult) -> None:
    out = tmp_path / "new" / "dir"  # made if missing
    paths = plotting.save_eval_plots(result, out)
    assert paths == [out / name for name in EVAL_FILES]
    for path in paths[:4]:
        assert image_shape(path, PNG) == (900, 1350, 3)  # 9 x 6 in at 150 dpi
    assert image_shape(paths[4], PNG) == (750, 900, 3)  # 4 labels with background: 6 x 5 in


def test_eval_plots_of_an_empty_evaluation(tmp_path: Path) -> None:
    """No images at all: empty axes, but every file is still written."""
    paths = plotting.save_eval_plots(DetectionEvaluator(2).compute(), tmp_path)
    assert all(image_shape(p, PNG) for p in paths)


def test_figure_functions_return_figures(result: EvalResult) -> None:
    from matplotlib.figure import Figure

    figs = [
        plotting.pr_curve_figure(result),
        *(plotting.metric_curve_figure(result, w) for w in ("f1", "precision", "recall")),
        plotting.confusion_matrix_figure(result, normalize=False),
        plotting.labels_figure([np.array([[0, 0.5, 0.5, 0.2, 0.3]])], ["a"]),
    ]
    assert all(isinstance(f, Figure) and f.axes for f in figs)
    # legend: one line per class with ground truth ("c" has none) and the mean
    legend = figs[0].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()][-1].startswith("all classes")
    assert len(legend.get_texts()) == 3


def test_plot_results(tmp_path: Path) -> None:
    columns = ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision",
               "metrics/recall", "metrics/mAP50", "lr/pg0", "time"]
    csv_path = write_results_csv(tmp_path / "results.csv", columns)
    out = plotting.plot_results(csv_path, str(tmp_path / "results.png"))
    assert out == tmp_path / "results.png"
    assert image_shape(out, PNG) == (672, 1920, 3)  # 6 panels: 2 rows of 5, 3.2 x 2.8 in at 120 dpi
    fig = plotting.results_figure(csv_path)
    assert [ax.get_title() for ax in fig.axes if ax.axison] == columns[1:7]  # not epoch, lr/*, time


def test_plot_results_with_nothing_to_plot(tmp_path: Path) -> None:
    assert plotting.plot_results(tmp_path / "missing.csv", tmp_path / "a.png") is None
    header_only = write_results_csv(tmp_path / "header.csv", ["epoch", "train/box_loss"], epochs=0)
    assert plotting.plot_results(header_only, tmp_path / "b.png") is None
    no_columns = write_results_csv(tmp_path / "bare.csv", ["epoch", "lr/pg0", "time"])
    assert plotting.plot_results(no_columns, tmp_path / "c.png") is None
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("labels", [
    [np.array([[0, 0.5, 0.5, 0.2, 0.3], [1, 0.2, 0.3, 0.1, 0.1]]), np.zeros((0, 5))],
    [np.zeros((0, 5)), np.zeros((0, 5))],  # no boxes at all
])
def test_plot_labels(tmp_path: Path, labels: list[np.ndarray]) -> None:
    out = plotting.plot_labels(labels, ["a", "b"], tmp_path / "labels.jpg")
    assert out == tmp_path / "labels.jpg"
    assert image_shape(out, JPEG) == (400, 1200, 3)  # 12 x 4 in at 100 dpi

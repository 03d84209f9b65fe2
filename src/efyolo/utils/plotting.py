"""Plots and drawings: evaluation plots, detections drawn on images, training plots.

Three parts:

* **Evaluation plots** (PNG): the precision-recall curve, F1/precision/recall against
  confidence and the confusion matrix of an evaluation result (:func:`save_eval_plots` writes
  them all; :class:`EvalResultLike` lists what they read from the result).
* **Drawing detections** (OpenCV, on ``uint8`` BGR arrays): stable class colours, line width and
  label sizes that follow the image size, :func:`draw_detections` and :func:`crop_box`.
* **Training plots**: :func:`plot_results` (``results.csv`` -> ``results.png``) and
  :func:`plot_labels` (a split's labels -> ``labels.jpg``).

Each plot has a ``*_figure`` function that returns a matplotlib :class:`~matplotlib.figure.Figure`
and a ``plot_*`` function that saves it and returns the file's path. Figures are made as
``Figure`` objects directly, never through pyplot: nothing global changes (no backend switch, no
figure registry, the caller's backend and open figures are left alone), it works without a
display, and matplotlib is imported only when a plot is made, so importing this module costs
numpy and OpenCV only. ``Figure.savefig`` picks the Agg canvas for PNG/JPEG by itself.
"""

from __future__ import annotations

import colorsys
import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(size: tuple[float, float], dpi: float) -> Figure:
    """A new figure of ``size`` inches that saves at ``dpi`` (so ``size * dpi`` pixels), tight layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=dpi, layout="tight")


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) at the figure's dpi, then release its artists."""
    path = Path(path)
    fig.savefig(path, dpi=fig.dpi)
    fig.clear()  # nothing else holds it (no figure registry); clearing frees the artists at once
    return path


# ---- evaluation plots

_EVAL_DPI = 150
_MAX_LEGEND = 20  # per-class lines are drawn without a legend above this many classes


class CurvesLike(Protocol):
    """The curves the evaluation plots read (:class:`efyolo.evaluation.metrics.Curves` has them)."""

    @property
    def conf(self) -> np.ndarray:
        """``[K]`` confidence thresholds, the x of the F1/P/R curves."""

    @property
    def precision(self) -> np.ndarray:
        """``[nc, K]`` precision per class at each threshold."""

    @property
    def recall(self) -> np.ndarray:
        """``[nc, K]`` recall per class at each threshold."""

    @property
    def f1(self) -> np.ndarray:
        """``[nc, K]`` F1 per class at each threshold."""

    @property
    def pr_recall(self) -> np.ndarray:
        """``[R]`` recall points of the precision-recall curve."""

    @property
    def pr_precision(self) -> np.ndarray:
        """``[nc, R]`` interpolated precision per class at those recall points (IoU 0.5)."""


class EvalResultLike(Protocol):
    """What the evaluation plots read from a result: :class:`efyolo.evaluation.metrics.EvalResult`
    has it all. (Typed structurally so that ``utils`` need not import ``evaluation``.)"""

    @property
    def names(self) -> Sequence[str]:
        """The ``nc`` class names."""

    @property
    def instances(self) -> np.ndarray:
        """``[nc]`` ground-truth boxes per class; classes with none are left out of the curves."""

    @property
    def ap50(self) -> np.ndarray:
        """``[nc]`` AP at IoU 0.5 per class (in the PR curve's legend)."""

    @property
    def map50(self) -> float:
        """mAP at IoU 0.5 (in the PR curve's legend)."""

    @property
    def conf_max_f1(self) -> float:
        """The confidence where the mean F1 peaks (in the F1/P/R curves' legend)."""

    @property
    def confusion_matrix(self) -> np.ndarray:
        """``[nc + 1, nc + 1]`` counts, rows predicted, columns true, last row/column background."""

    @property
    def curves(self) -> CurvesLike:
        """The curves, see :class:`CurvesLike`."""


def pr_curve_figure(result: EvalResultLike) -> Figure:
    """Precision-recall curve at IoU 0.5 (COCO's interpolated 101-point precision) per class and
    the mean over classes with ground truth."""
    curves, names = result.curves, result.names
    valid = result.instances > 0
    fig = _figure((9, 6), _EVAL_DPI)
    ax = fig.add_subplot()
    show = valid.sum() <= _MAX_LEGEND
    for k in np.flatnonzero(valid):
        label = f"{names[k]} {result.ap50[k]:.3f}" if show else None
        ax.plot(curves.pr_recall, curves.pr_precision[k], linewidth=1, label=label)
    if valid.any():
        mean = curves.pr_precision[valid].mean(axis=0)
        ax.plot(curves.pr_recall, mean, linewidth=3, color="blue", label=f"all classes {result.map50:.3f} mAP@0.5")
    _finish(ax, "Recall", "Precision", "Precision-Recall Curve")
    return fig


def metric_curve_figure(result: EvalResultLike, which: str) -> Figure:
    """``which`` in ``{"f1", "precision", "recall"}`` against confidence, per class and mean."""
    curves, names = result.curves, result.names
    y = {"f1": curves.f1, "precision": curves.precision, "recall": curves.recall}[which]
    ylabel = {"f1": "F1", "precision": "Precision", "recall": "Recall"}[which]
    valid = result.instances > 0
    fig = _figure((9, 6), _EVAL_DPI)
    ax = fig.add_subplot()
    show = valid.sum() <= _MAX_LEGEND
    for k in np.flatnonzero(valid):
        ax.plot(curves.conf, y[k], linewidth=1, label=names[k] if show else None)
    if valid.any():
        mean = y[valid].mean(axis=0)
        i = int(np.argmin(np.abs(curves.conf - result.conf_max_f1)))
        ax.plot(curves.conf, mean, linewidth=3, color="blue",
                label=f"all classes {mean[i]:.2f} at {result.conf_max_f1:.3f}")
    _finish(ax, "Confidence", ylabel, f"{ylabel}-Confidence Curve")
    return fig


def confusion_matrix_figure(result: EvalResultLike, normalize: bool = True) -> Figure:
    """The confusion matrix (rows predicted, columns true, last row/column background),
    columns normalised to sum to 1 when ``normalize``."""
    m = result.confusion_matrix.astype(float)
    if normalize:
        m = m / np.maximum(m.sum(axis=0, keepdims=True), 1e-9)
    labels: Sequence[str] = [*result.names, "background"]
    n = len(labels)
    fig = _figure((max(6, 0.35 * n + 3), max(5, 0.3 * n + 2.5)), _EVAL_DPI)
    ax = fig.add_subplot()
    im = ax.imshow(np.where(m > 0.005, m, np.nan), cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if n <= 30:
        ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        for (i, j), v in np.ndenumerate(m):
            if v > 0.005:
                ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center",
                        fontsize=7, color="white" if v > 0.5 * np.nanmax(m) else "black")
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title("Confusion Matrix" + (" (normalised by true class)" if normalize else ""))
    return fig


def plot_pr_curve(result: EvalResultLike, path: str | Path) -> Path:
    """Save :func:`pr_curve_figure` to ``path`` (1350x900 px); returns ``path``."""
    return _save(pr_curve_figure(result), path)


def plot_metric_curve(result: EvalResultLike, which: str, path: str | Path) -> Path:
    """Save :func:`metric_curve_figure` to ``path`` (1350x900 px); returns ``path``."""
    return _save(metric_curve_figure(result, which), path)


def plot_confusion_matrix(result: EvalResultLike, path: str | Path, normalize: bool = True) -> Path:
    """Save :func:`confusion_matrix_figure` to ``path``; returns ``path``."""
    return _save(confusion_matrix_figure(result, normalize), path)


def save_eval_plots(result: EvalResultLike, out_dir: str | Path) -> list[Path]:
    """All evaluation plots into ``out_dir`` (made if missing): ``PR_curve.png``, ``F1_curve.png``,
    ``P_curve.png``, ``R_curve.png``, ``confusion_matrix.png``; returns their paths in that order.

    ``result`` is an :class:`efyolo.evaluation.metrics.EvalResult` or anything with the
    attributes of :class:`EvalResultLike`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        plot_pr_curve(result, out_dir / "PR_curve.png"),
        plot_metric_curve(result, "f1", out_dir / "F1_curve.png"),
        plot_metric_curve(result, "precision", out_dir / "P_curve.png"),
        plot_metric_curve(result, "recall", out_dir / "R_curve.png"),
        plot_confusion_matrix(result, out_dir / "confusion_matrix.png"),
    ]


def _finish(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left", fontsize=8)


# ---- drawing detections (OpenCV)

_GOLDEN = 0.618033988749895  # hue step: consecutive class ids get well-separated hues
_FONT = cv2.FONT_HERSHEY_SIMPLEX
# Largest font scale per pixel of mean image side: 640 -> 0.67 and 1280 -> 1.33, the scales that
# YOLOv5's line_width / 3 gives there, so common sizes look as before while smaller images get
# proportionally smaller text instead of one fixed 21 px tag.
_SCALE_PER_PIXEL = 1 / 960
_MIN_SCALE = 0.2  # 5 px tall text (cv2.getTextSize), the smallest kept so tiny images still show a tag
_TAG_PAD = 3  # the tag is this many pixels taller than the text


def class_color(index: int) -> tuple[int, int, int]:
    """A stable, saturated BGR colour for class ``index`` (the same in every image and run)."""
    hue = (index * _GOLDEN) % 1.0
    sat = 0.75 if index % 2 == 0 else 0.95  # alternate so neighbouring hues also differ in tone
    r, g, b = colorsys.hsv_to_rgb(hue, sat, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def default_line_width(shape: Sequence[int]) -> int:
    """Box line width in pixels for an image of ``shape = (h, w, ...)``: 0.3% of its mean side, at least 2."""
    return max(round((shape[0] + shape[1]) / 2 * 0.003), 2)


def label_font(shape: Sequence[int], line_width: int) -> tuple[float, int]:
    """OpenCV font scale and stroke thickness for box labels on an image of ``shape = (h, w, ...)``.

    YOLOv5 sizes text from the line width alone (scale ``line_width / 3``), and the line width
    never drops below 2 px, so every image with a mean side under ~830 px got the same 21 px tall
    tag: a third of a 64 px image, covering its objects and the neighbouring tags. Here
    ``line_width / 3`` is capped by the image's mean side (:data:`_SCALE_PER_PIXEL`, at least
    :data:`_MIN_SCALE`), so the text shrinks with the image, while a thinner ``--line-width``
    still gives smaller text. Thickness follows the scale as YOLOv5's ``line_width - 1`` does
    for uncapped text.
    """
    cap = max((shape[0] + shape[1]) / 2 * _SCALE_PER_PIXEL, _MIN_SCALE)
    scale = min(line_width / 3, cap)
    return scale, max(round(3 * scale) - 1, 1)


def label_size(text: str, shape: Sequence[int], line_width: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of the filled tag that :func:`draw_box` puts behind ``text``."""
    scale, thickness = label_font(shape, line_width)
    (tw, th), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    return tw, th + _TAG_PAD


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on a BGR background (ITU-R 601 luma)."""
    b, g, r = bg
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def box_label(name: str, score: float, labels: bool = True, conf: bool = True) -> str:
    """The text drawn on a box: ``"person 0.87"``, ``"person"``, ``"0.87"`` or ``""``."""
    parts = ([name] if labels else []) + ([f"{score:.2f}"] if conf else [])
    return " ".join(parts)


def draw_box(
    img: np.ndarray,
    box: Sequence[float],
    color: tuple[int, int, int],
    text: str = "",
    line_width: int = 2,
) -> None:
    """Draw one ``xyxy`` box and its text (on a filled tag above the box, or inside at the top edge), in place.

    The text is sized for ``img`` by :func:`label_font`.
    """
    p1 = (int(box[0]), int(box[1]))
    p2 = (int(box[2]), int(box[3]))
    cv2.rectangle(img, p1, p2, color, thickness=line_width, lineType=cv2.LINE_AA)
    if not text:
        return
    font_scale, thickness = label_font(img.shape, line_width)
    tw, tag_h = label_size(text, img.shape, line_width)
    outside = p1[1] - tag_h >= 0  # room for the tag above the box?
    q2 = (p1[0] + tw, p1[1] - tag_h if outside else p1[1] + tag_h)
    cv2.rectangle(img, p1, q2, color, -1, cv2.LINE_AA)
    org = (p1[0], p1[1] - 2 if outside else p1[1] + tag_h - 1)
    cv2.putText(img, text, org, _FONT, font_scale, _text_color(color), thickness, cv2.LINE_AA)


def draw_detections(
    img: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    line_width: int | None = None,
    show_labels: bool = True,
    show_conf: bool = True,
) -> np.ndarray:
    """Draw detections on a copy of a BGR image.

    Args:
        img: ``uint8 [H, W, 3]`` BGR image (not modified).
        boxes: ``[N, 4]`` ``xyxy`` pixels of ``img``.
        scores: ``[N]`` confidences.
        labels: ``[N]`` class ids (indices into ``names``; unknown ids are drawn as numbers).
        names: class names.
        line_width: box line width in pixels (default :func:`default_line_width`); the text
            follows it up to a size set by the image (:func:`label_font`).
        show_labels: write the class name.
        show_conf: write the score.

    Returns:
        The annotated copy, ``uint8 [H, W, 3]`` BGR.
    """
    out = np.ascontiguousarray(img).copy()
    lw = line_width or default_line_width(out.shape)
    # lowest score first, so the most confident box ends up on top
    for i in np.argsort(np.asarray(scores), kind="stable"):
        c = int(labels[i])
        name = names[c] if 0 <= c < len(names) else str(c)
        draw_box(out, boxes[i], class_color(c), box_label(name, float(scores[i]), show_labels, show_conf), lw)
    return out


def crop_box(img: np.ndarray, box: Sequence[float], gain: float = 1.02, pad: int = 10) -> np.ndarray:
    """Cut a ``xyxy`` box out of an image, enlarged by ``gain`` and ``pad`` pixels and clipped to it.

    Returns:
        A copy of the region, at least 1x1 pixel.
    """
    h, w = img.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    bw, bh = (x2 - x1) * gain + pad, (y2 - y1) * gain + pad
    left = int(np.clip(cx - bw / 2, 0, w - 1))
    top = int(np.clip(cy - bh / 2, 0, h - 1))
    right = int(np.clip(cx + bw / 2, left + 1, w))
    bottom = int(np.clip(cy + bh / 2, top + 1, h))
    return img[top:bottom, left:right].copy()


# ---- training plots

_RESULTS_DPI = 120
_LABELS_DPI = 100


def results_figure(csv_path: str | Path) -> Figure | None:
    """One panel per column of ``results.csv`` (but ``epoch``, ``time`` and ``lr/*``), against the
    epoch, five panels a row; ``None`` when the file is missing or has no rows or nothing to plot."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        return None
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    columns = [c for c in rows[0] if c not in ("epoch", "time") and not c.startswith("lr/")]
    if not columns:
        return None
    epochs = [int(r["epoch"]) for r in rows]
    ncols = 5
    nrows = math.ceil(len(columns) / ncols)
    fig = _figure((3.2 * ncols, 2.8 * nrows), _RESULTS_DPI)
    axes = np.ravel(fig.subplots(nrows, ncols))
    for ax, col in zip(axes, columns):
        values = [float(r[col]) for r in rows]
        ax.plot(epochs, values, marker=".", linewidth=1.5)
        ax.set_title(col, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
    for ax in axes[len(columns):]:
        ax.axis("off")
    return fig


def labels_figure(labels: Sequence[np.ndarray], names: Sequence[str]) -> Figure:
    """Class histogram, box centres and box sizes (normalised) of a split's labels.

    ``labels`` holds one ``[n, 5]`` array of ``class x y w h`` rows (normalised ``xywh``) per image.
    """
    boxes = [lb for lb in labels if len(lb)]
    rows = np.concatenate(boxes, 0) if boxes else np.zeros((0, 5))
    fig = _figure((12, 4), _LABELS_DPI)
    axes = fig.subplots(1, 3)
    counts = np.bincount(rows[:, 0].astype(int), minlength=len(names)) if len(rows) else np.zeros(len(names))
    axes[0].bar(range(len(names)), counts, color="tab:blue")
    axes[0].set_xticks(range(len(names)), [str(n) for n in names], rotation=90 if len(names) > 10 else 0, fontsize=8)
    axes[0].set_ylabel("instances")
    if len(rows):
        axes[1].hist2d(rows[:, 1], rows[:, 2], bins=40, range=[[0, 1], [0, 1]], cmap="Blues")
        axes[2].hist2d(rows[:, 3], rows[:, 4], bins=40, range=[[0, 1], [0, 1]], cmap="Blues")
    axes[1].set_xlabel("x")
    axes[1].set_ylabel("y")
    axes[2].set_xlabel("width")
    axes[2].set_ylabel("height")
    fig.suptitle(f"{len(rows)} labels in {len(labels)} images")
    return fig


def plot_results(csv_path: str | Path, out: str | Path) -> Path | None:
    """Save :func:`results_figure` to ``out`` (``results.png``); returns ``out``, or ``None`` (and
    writes nothing) when there is nothing to plot."""
    fig = results_figure(csv_path)
    return None if fig is None else _save(fig, out)


def plot_labels(labels: Sequence[np.ndarray], names: Sequence[str], out: str | Path) -> Path:
    """Save :func:`labels_figure` to ``out`` (``labels.jpg``, 1200x400 px); returns ``out``."""
    return _save(labels_figure(labels, names), out)


# ---- study plots (efyolo compare)

_MARKERS = "osD^vP*Xh<>"


def pareto_figure(points: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """Accuracy against latency, one marker shape per format, the Pareto front drawn and labelled.

    Args:
        points: dicts with ``model``, ``format``, ``latency_ms``, ``map`` (mAP50-95) and ``pareto``
            (on the front); points without a latency or mAP are left out.
    """
    fig = _figure((10.0, 5.5), 120)
    ax = fig.add_subplot()
    shown = [p for p in points if p.get("latency_ms") is not None and p.get("map") is not None]
    formats = list(dict.fromkeys(p["format"] for p in shown))
    models = list(dict.fromkeys(p["model"] for p in shown))
    for i, fmt in enumerate(formats):
        group = [p for p in shown if p["format"] == fmt]
        colors = [tuple(c / 255 for c in class_color(models.index(p["model"]))[::-1]) for p in group]
        ax.scatter([p["latency_ms"] for p in group], [p["map"] for p in group], c=colors,
                   marker=_MARKERS[i % len(_MARKERS)], s=48, label=fmt, edgecolors="black", linewidths=0.5, zorder=3)
    front = sorted((p for p in shown if p.get("pareto")), key=lambda p: p["latency_ms"])
    if front:
        ax.step([p["latency_ms"] for p in front], [p["map"] for p in front], where="post", color="tab:red",
                linewidth=1.2, zorder=2, label="Pareto front")
        for p in front:
            ax.annotate(f"{p['model']} ({p['format']})", (p["latency_ms"], p["map"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=7)
    ax.set_xlabel("latency (ms, batch 1, median)")
    ax.set_ylabel("mAP50-95")
    ax.grid(alpha=0.3)
    ax.set_title(title or "mAP50-95 against latency")
    if formats:
        # marker shapes name the formats (and the front line); a second legend names the model colours
        ax.add_artist(ax.legend(fontsize=8, loc="lower right", title="format"))
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", linestyle="", markersize=7, markeredgecolor="black",
                          markerfacecolor=tuple(c / 255 for c in class_color(i)[::-1])) for i in range(len(models))]
        ax.legend(handles, models, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="model")
    return fig


def plot_pareto(points: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    return _save(pareto_figure(points, title), path)

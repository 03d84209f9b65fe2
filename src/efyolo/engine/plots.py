"""Evaluation plots: PR curve, F1/P/R-versus-confidence curves, confusion matrix (PNG files).

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), without
pyplot: nothing global changes (no backend switch, no figure registry), it works without a
display, and matplotlib is imported only when a plot is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from efyolo.engine.metrics import EvalResult

_MAX_LEGEND = 20  # per-class lines are drawn without a legend above this many classes


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, tight_layout=True)
    FigureCanvasAgg(fig)
    return fig


def plot_pr_curve(result: EvalResult, path: str | Path) -> Path:
    """Precision-recall curve at IoU 0.5 (COCO's interpolated 101-point precision) per class and
    the mean over classes with ground truth."""
    curves, names = result.curves, result.names
    valid = result.instances > 0
    fig = _figure((9, 6))
    ax = fig.add_subplot()
    show = valid.sum() <= _MAX_LEGEND
    for k in np.flatnonzero(valid):
        label = f"{names[k]} {result.ap50[k]:.3f}" if show else None
        ax.plot(curves.pr_recall, curves.pr_precision[k], linewidth=1, label=label)
    if valid.any():
        mean = curves.pr_precision[valid].mean(axis=0)
        ax.plot(curves.pr_recall, mean, linewidth=3, color="blue", label=f"all classes {result.map50:.3f} mAP@0.5")
    _finish(ax, "Recall", "Precision", "Precision-Recall Curve")
    return _save(fig, path)


def plot_metric_curve(result: EvalResult, which: str, path: str | Path) -> Path:
    """``which`` in ``{"f1", "precision", "recall"}`` against confidence, per class and mean."""
    curves, names = result.curves, result.names
    y = {"f1": curves.f1, "precision": curves.precision, "recall": curves.recall}[which]
    ylabel = {"f1": "F1", "precision": "Precision", "recall": "Recall"}[which]
    valid = result.instances > 0
    fig = _figure((9, 6))
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
    return _save(fig, path)


def plot_confusion_matrix(result: EvalResult, path: str | Path, normalize: bool = True) -> Path:
    """The confusion matrix (rows predicted, columns true, last row/column background),
    columns normalised to sum to 1 when ``normalize``."""
    m = result.confusion_matrix.astype(float)
    if normalize:
        m = m / np.maximum(m.sum(axis=0, keepdims=True), 1e-9)
    labels: Sequence[str] = [*result.names, "background"]
    n = len(labels)
    fig = _figure((max(6, 0.35 * n + 3), max(5, 0.3 * n + 2.5)))
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
    return _save(fig, path)


def save_eval_plots(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """All evaluation plots into ``out_dir``: ``PR_curve.png``, ``F1_curve.png``,
    ``P_curve.png``, ``R_curve.png``, ``confusion_matrix.png``."""
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


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=150)
    return path

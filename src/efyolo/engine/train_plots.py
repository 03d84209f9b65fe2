"""Training plots: ``results.png`` (losses and metrics per epoch) and ``labels.jpg`` (label overview)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_results(csv_path: str | Path, out: str | Path) -> Path | None:
    """One panel per column of ``results.csv`` (but ``epoch`` and ``time``), against the epoch."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        return None
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    columns = [c for c in rows[0] if c not in ("epoch", "time") and not c.startswith("lr/")]
    epochs = [int(r["epoch"]) for r in rows]
    plt = _pyplot()
    ncols = 5
    nrows = math.ceil(len(columns) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), tight_layout=True)
    for ax, col in zip(np.ravel(axes), columns):
        values = [float(r[col]) for r in rows]
        ax.plot(epochs, values, marker=".", linewidth=1.5)
        ax.set_title(col, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
    for ax in np.ravel(axes)[len(columns):]:
        ax.axis("off")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def plot_labels(labels: Sequence[np.ndarray], names: Sequence[str], out: str | Path) -> Path:
    """Class histogram, box centres and box sizes (normalised) of a split's labels."""
    rows = np.concatenate([lb for lb in labels if len(lb)], 0) if any(len(lb) for lb in labels) else np.zeros((0, 5))
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), tight_layout=True)
    counts = np.bincount(rows[:, 0].astype(int), minlength=len(names)) if len(rows) else np.zeros(len(names))
    axes[0].bar(range(len(names)), counts, color="tab:blue")
    axes[0].set_xticks(range(len(names)), [str(n) for n in names], rotation=90 if len(names) > 10 else 0, fontsize=8)
    axes[0].set_ylabel("instances")
    axes[1].hist2d(rows[:, 1], rows[:, 2], bins=40, range=[[0, 1], [0, 1]], cmap="Blues") if len(rows) else None
    axes[1].set_xlabel("x")
    axes[1].set_ylabel("y")
    axes[2].hist2d(rows[:, 3], rows[:, 4], bins=40, range=[[0, 1], [0, 1]], cmap="Blues") if len(rows) else None
    axes[2].set_xlabel("width")
    axes[2].set_ylabel("height")
    fig.suptitle(f"{len(rows)} labels in {len(labels)} images")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)

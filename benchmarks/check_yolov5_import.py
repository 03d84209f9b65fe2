"""efyolo's import of full-size YOLOv5 checkpoints against YOLOv5's own outputs (the 1e-4 target).

Step 1, with a venv holding YOLOv5 (see benchmarks/yolov5_reference.py):

    nice /work/y5env/bin/python benchmarks/yolov5_reference.py --out /tmp/y5ref \
        --cfg yolov5n yolov5s yolov5n6 yolov5s-ghost yolov5s-transformer --nc 80

Step 2, with efyolo's venv (no YOLOv5 needed, nothing unpickled unsafely):

    python benchmarks/check_yolov5_import.py /tmp/y5ref

For every ``NAME.pt`` / ``NAME_last.pt`` with its ``NAME_reference.npz``: read through
``load_checkpoint`` (the path every ``--weights`` takes), then the largest absolute difference from
YOLOv5's outputs for the eval decoded boxes (unfused and fused) and the training-mode per-level
logits, plus the read time. Prints a markdown table; exit status 1 when any difference exceeds 1e-4.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

from efyolo.models.checkpoint import load_checkpoint, model_from_checkpoint
from efyolo.models.yolov5_import import read_yolov5

TOL = 1e-4


def max_diff(a: torch.Tensor, b: np.ndarray) -> float:
    return float((a - torch.from_numpy(b)).abs().max())


def check(weights: Path, ref: dict[str, np.ndarray], prefix: str) -> dict[str, float | str]:
    t0 = time.perf_counter()
    ckpt = load_checkpoint(weights)
    read_s = time.perf_counter() - t0
    found = read_yolov5(weights)
    model = model_from_checkpoint(ckpt).eval()
    x = torch.from_numpy(ref["x"])
    with torch.no_grad():
        decoded = max_diff(model(x), ref[f"{prefix}decoded"])
        raw = copy.deepcopy(model).train()(x)
        train = max(max_diff(level, ref[f"{prefix}train_raw{i}"]) for i, level in enumerate(raw))
        fused = max_diff(copy.deepcopy(model).fuse().eval()(x), ref[f"{prefix}fused_decoded"])
    return {"file": weights.name, "weights": found.weights, "params": found.parameters, "read_s": read_s,
            "decoded": decoded, "train_raw": train, "fused": fused,
            "scale": float(np.abs(ref[f"{prefix}decoded"][..., :4]).max())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for npz in sorted(args.folder.glob("*_reference.npz")):
        name = npz.name.removesuffix("_reference.npz")
        with np.load(npz) as z:
            ref = {k: z[k] for k in z.files}
        for weights, prefix in ((args.folder / f"{name}.pt", ""), (args.folder / f"{name}_last.pt", "last_")):
            if weights.is_file():
                rows.append(check(weights, ref, prefix))
    print("| file | weights | params | read (s) | decoded max diff | training logits max diff | fused max diff |")
    print("|---|---|---:|---:|---:|---:|---:|")
    worst = 0.0
    for r in rows:
        worst = max(worst, r["decoded"], r["train_raw"], r["fused"])
        print(f"| {r['file']} | {r['weights']} | {r['params']:,} | {r['read_s']:.2f} | {r['decoded']:.2e} | "
              f"{r['train_raw']:.2e} | {r['fused']:.2e} |")
    print(f"\nworst difference {worst:.2e} (target {TOL:g}); decoded boxes are pixels of a "
          f"{rows[0]['scale']:.0f}-px-scale output" if rows else "no reference files found")
    return 0 if rows and worst <= TOL else 1


if __name__ == "__main__":
    sys.exit(main())

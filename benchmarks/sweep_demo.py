"""Sweep of training recipes for the built-in demo (`efyolo train` without --data).

The demo must reach its mAP target within a fixed CPU budget, so candidate recipes are compared at
equal cost (the same number of image-iterations at the same size). A CUDA machine runs many
candidates side by side, each a real `efyolo.train` run in its own process (float32, no AMP, so
that the numerics are the CPU's); the CPU then confirms the winner with the real command.

    python benchmarks/sweep_demo.py --device 0 --parallel 6 --out sweep.json
    python benchmarks/sweep_demo.py --only base,cls1.0 --device cpu --parallel 1

Each candidate is a name and overrides of the demo defaults (`efyolo.train` keyword arguments;
``hyp`` merges over the demo's hyperparameters; ``synth`` replaces the dataset parameters, with
``config`` a mapping of ``SynthConfig`` fields). The per-epoch mAP50 curve and the final mAP of `best.pt` are written to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Overrides of the current demo defaults (efyolo.training.config.DEMO_DEFAULTS); a candidate's
# "hyp" is merged over the demo's own hyp. Earlier sweeps and their results: docs/demo.md.
V1_DATA = {"max_objects": 12, "clutter": 6.0, "noise": 8.0, "blur_prob": 0.3, "min_contrast": 100.0,
           "jpeg_subsampling": "4:2:0"}
CANDIDATES: dict[str, dict[str, Any]] = {
    "base": {},
    "base-seed1": {"seed": 1},
    "base-seed2": {"seed": 2},
    "base-e20": {"epochs": 20},
    "cls1.0": {"hyp": {"cls": 1.0}},
    "cls2.0": {"hyp": {"cls": 2.0}},
    "cls0.5": {"hyp": {"cls": 0.5}},  # YOLOv5's class gain
    "lrf0.01": {"hyp": {"lrf": 0.01}},  # YOLOv5's final learning rate
    "lr2": {"lr0": 0.002},
    "close5": {"close_mosaic": 5},
    "v1-data": {"synth": {"imgsz": 192, "config": V1_DATA}},  # the harder synthetic set of SYNTH_VERSION 1
    "v2-data": {"synth": {"imgsz": 192, "config": {"jpeg_subsampling": "4:2:0"}}},  # SYNTH_VERSION 2
    "yolov5n": {"model": "yolov5n"},
    # The demo's budget fits ~13 epochs on the 2-core machine; seeds 0/1/2 gave 0.538/0.410/0.462 there.
    **{f"e13-seed{s}": {"epochs": 13, "seed": s} for s in (0, 1, 2, 3)},
    **{f"e13-cls1.0-seed{s}": {"epochs": 13, "seed": s, "hyp": {"cls": 1.0}} for s in (0, 1, 2, 3)},
}


def run_one(name: str, overrides: dict[str, Any], device: str, workers: int, threads: int, project: str) -> dict:
    """One `efyolo.train` run in this (child) process; returns its curve and final metrics."""
    import torch

    from efyolo.training.config import DEMO_DEFAULTS

    torch.set_num_threads(threads)
    overrides = dict(overrides)
    if "hyp" in overrides:
        overrides["hyp"] = {**DEMO_DEFAULTS.get("hyp", {}), **overrides["hyp"]}
    # A fixed epoch count (the demo's first plan), not the demo's time budget: runs that share a
    # machine must be compared at equal training, and a GPU would fit hundreds of epochs in 9 minutes.
    overrides.setdefault("epochs", DEMO_DEFAULTS["epochs"])
    from efyolo import train

    t0 = time.time()
    result = train(device=device, workers=workers, project=project, name=name, amp=False, **overrides)
    with open(result.save_dir / "results.csv", newline="") as f:
        curve = [round(float(row["mAP50"]), 4) for row in csv.DictReader(f)]
    return {
        "name": name, "overrides": overrides,
        "mAP50": round(float(result.metrics["map50"]), 4),
        "mAP50-95": round(float(result.metrics["map"]), 4),
        "curve": curve, "seconds": round(time.time() - t0, 1),
    }


def _launch(name: str, overrides: dict, args: argparse.Namespace, project: str) -> tuple[subprocess.Popen, str]:
    """Start one candidate in a fresh process (its DataLoader workers need a non-daemonic parent)."""
    out = os.path.join(project, f"{name}.json")
    spec = json.dumps([name, overrides, args.device, args.workers, args.threads, project, out])
    proc = subprocess.Popen([sys.executable, __file__, "--child", spec], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return proc, out


def _child(spec: str) -> None:
    name, overrides, device, workers, threads, project, out = json.loads(spec)
    try:
        result = run_one(name, overrides, device, workers, threads, project)
    except Exception as e:  # one broken candidate must not stop the sweep
        result = {"name": name, "error": f"{type(e).__name__}: {e}"}
    with open(out, "w") as f:
        json.dump(result, f)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma list of candidate names (default: all)")
    parser.add_argument("--device", default="0")
    parser.add_argument("--parallel", type=int, default=6, help="runs at once")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers per run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--out", default="sweep_demo.json")
    parser.add_argument("--epochs", type=int, default=None, help="override every candidate's epochs (smoke test)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return 0
    names = [n for n in args.only.split(",") if n] or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidates {unknown}; known: {list(CANDIDATES)}")

    # Generate every synthetic dataset once, here, before the runs race to the cache.
    from efyolo.data.synth import default_dataset
    from efyolo.training.config import DEMO_DEFAULTS

    for name in names:
        synth = {**DEMO_DEFAULTS["synth"], **CANDIDATES[name].get("synth", {})}
        default_dataset(**synth)

    results = []
    with tempfile.TemporaryDirectory(prefix="sweep-") as project:
        override = {"epochs": args.epochs, "close_mosaic": 0} if args.epochs else {}
        pending = [(n, {**CANDIDATES[n], **override}) for n in names]
        running: list[tuple[str, subprocess.Popen, str]] = []
        while pending or running:
            while pending and len(running) < args.parallel:
                name, overrides = pending.pop(0)
                running.append((name, *_launch(name, overrides, args, project)))
            time.sleep(1)
            for item in [r for r in running if r[1].poll() is not None]:
                running.remove(item)
                name, proc, out = item
                done = os.path.exists(out)
                r = json.loads(Path(out).read_text()) if done else {"name": name, "error": f"exit {proc.returncode}"}
                results.append(r)
                print(json.dumps(r), flush=True)
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=1)
    print(f"\n{'candidate':<14} {'mAP50':>6} {'mAP50-95':>8} {'s':>6}  curve (mAP50 per epoch)")
    for r in sorted(results, key=lambda r: -r.get("mAP50", -1)):
        if "error" in r:
            print(f"{r['name']:<14} error: {r['error']}")
        else:
            print(f"{r['name']:<14} {r['mAP50']:>6.3f} {r['mAP50-95']:>8.3f} {r['seconds']:>6.0f}  {r['curve']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

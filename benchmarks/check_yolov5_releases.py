"""Import every checkpoint that make_old_checkpoints.py wrote to a folder and compare its decoded
output with the YOLOv5 release's own (``old_reference.npz``); print one row per file.

    python benchmarks/check_yolov5_releases.py /tmp/y5all     # exit 1 if any file differs > 1e-4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from efyolo import EfyoloError
from efyolo.models.checkpoint import load_checkpoint, model_from_checkpoint


def check(folder: Path) -> int:
    info = json.loads((folder / "old_fixtures.json").read_text())
    failures = 0
    with np.load(folder / "old_reference.npz") as ref:
        print("| file | release | config | params | decoded max diff | fused max diff |")
        print("|---|---|---|---:|---:|---:|")
        for name, row in info.items():
            torch.manual_seed(0)
            x = torch.rand(*row["input"])
            expected = torch.from_numpy(ref[f"{name}/decoded"])
            try:
                model = model_from_checkpoint(load_checkpoint(folder / f"{name}.pt")).eval()
                with torch.no_grad():
                    diff = (model(x) - expected).abs().max().item()
                    fused = (model.fuse()(x) - expected).abs().max().item()
                cells = f"{diff:.2e} | {fused:.2e}"
                failures += diff > 1e-4
            except EfyoloError as err:
                cells = f"refused: {err} |"
                failures += 1
            print(f"| {name} | {row['release']} | {row['config']} | {row['parameters']:,} | {cells} |")
    return failures


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    sys.exit(1 if check(ap.parse_args().folder) else 0)

"""Latency of candidate EfficientFormer (V1) detector designs against yolov5n, before training any.

The design search behind ``efficientformer_n0`` (docs/compare.md, "Designing n0"): each candidate
is an EfficientFormer V1 backbone (stem, Meta4D pooling blocks, Meta3D attention at stride 32) with
other depths, widths, MLP expansions and attention sizes, registered for this process only, put
under yolov5n's neck and head (``yolov5n-efficientformer-<key>``), exported by ``efyolo export``'s
ONNX path at a fixed size and timed in ONNX Runtime in interleaved passes together with yolov5n,
l0 and n0, so that the machine's drifting speed falls on all of them alike. Only the candidates
that are as fast as yolov5n are worth an equal-time training run: ``--train-minutes M`` runs
``efyolo compare`` on the chosen models (built-in synthetic data at 320 px, batch 16, M minutes each,
latency at --imgsz), with the candidates registered in the same process.

Usage::

    python benchmarks/bench_efficientformer_variants.py                  # latency, 640x640, 2 threads
    python benchmarks/bench_efficientformer_variants.py --imgsz 320 --passes 10 --json variants.json
    python benchmarks/bench_efficientformer_variants.py --train-minutes 4 \
        --models yolov5n,yolov5n-efficientformer-n0,yolov5n-efficientformer-n0_ls1,yolov5n-efficientformer-cand_c_ls1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from efyolo.engine.benchmark import machine_info
from efyolo.engine.profiler import count_gflops
from efyolo.export.exporter import export_module, prepare_model
from efyolo.models import build_model
from efyolo.models.efficientformer import EfficientFormer
from efyolo.models.registry import BACKBONES

LIGHT_ATTENTION = {"num_heads": 4, "attn_ratio": 2, "vit_mlp_ratio": 2}  # n0's Meta3D
# key -> EfficientFormer arguments; l0 (1,1,3,2 / 24,48,112,224, expansion 4, 8 heads) is the start.
CANDIDATES: dict[str, dict[str, Any]] = {
    # yolov5n's backbone widths, one block fewer at stride 16
    "cand-a": dict(depths=(1, 1, 2, 2), widths=(32, 64, 128, 256), mlp_ratios=(2, 3, 3, 3), **LIGHT_ATTENTION),
    # l0 narrowed at stride 16/32
    "cand-b": dict(depths=(1, 1, 3, 2), widths=(24, 48, 96, 192), mlp_ratios=(2, 2, 3, 3), **LIGHT_ATTENTION),
    # yolov5n's widths without the stride-4 block
    "cand-c": dict(depths=(0, 1, 2, 2), widths=(32, 64, 128, 256), mlp_ratios=(2, 2, 3, 3), **LIGHT_ATTENTION),
    # l0 with lighter MLPs at stride 4/8 only
    "cand-d": dict(depths=(1, 1, 3, 2), widths=(24, 48, 112, 224), mlp_ratios=(2, 2, 4, 4)),
    # the two fast ones with every layer scale starting at 1 instead of the paper's 1e-5
    "cand-c-ls1": dict(depths=(0, 1, 2, 2), widths=(32, 64, 128, 256), mlp_ratios=(2, 2, 3, 3), ls_init=1.0, **LIGHT_ATTENTION),
    # n0 with a learnable depthwise token mixer (RepDWMixer, one depthwise conv after fuse())
    "n0-repdw": dict(depths=(0, 1, 3, 2), widths=(24, 48, 112, 224), mlp_ratios=(2, 2, 3, 3), token_mixer="repdw", **LIGHT_ATTENTION),
    # n0 with a second Meta4D block at stride 8
    "n0-d2": dict(depths=(0, 2, 3, 2), widths=(24, 48, 112, 224), mlp_ratios=(2, 2, 3, 3), **LIGHT_ATTENTION),
    # n0 with layer scales starting at 1e-2
    "n0-ls2": dict(depths=(0, 1, 3, 2), widths=(24, 48, 112, 224), mlp_ratios=(2, 2, 3, 3), ls_init=1e-2, **LIGHT_ATTENTION),
    "n0-ls1": dict(depths=(0, 1, 3, 2), widths=(24, 48, 112, 224), mlp_ratios=(2, 2, 3, 3), ls_init=1.0, **LIGHT_ATTENTION),
}
BASELINES = ("yolov5n", "yolov5n-efficientformer-l0", "yolov5n-efficientformer-n0")


def register_candidates() -> list[str]:
    """Register each candidate as backbone ``efficientformer_<key>`` (this process only)."""
    for key, spec in CANDIDATES.items():
        name = f"efficientformer_{key.replace('-', '_')}"
        if name in BACKBONES.names():
            continue

        def factory(weights: Any = None, drop_path_rate: float = 0.0, _spec=spec, _name=name, **kw: Any):
            return EfficientFormer(num_vit=1, drop_path_rate=drop_path_rate, name=_name, **_spec, **kw)

        BACKBONES.register(name)(factory)
    return [f"yolov5n-efficientformer-{key.replace('-', '_')}" for key in CANDIDATES]


def run(imgsz: int, threads: int, passes: int, runs_per_pass: int, warmup: int) -> dict[str, Any]:
    import onnxruntime as ort

    names = list(BASELINES) + register_candidates()
    torch.set_num_threads(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    sessions, rows = {}, {}
    with tempfile.TemporaryDirectory(prefix="efyolo-variants-") as tmp:
        for name in names:
            model = build_model(name, nc=80).eval()
            params = sum(p.numel() for p in model.parameters())
            gflops = count_gflops(model, torch.zeros(1, 3, imgsz, imgsz))
            path = export_module(
                prepare_model(model, torch.device("cpu")), "onnx", Path(tmp) / f"{name}.onnx",
                list(model.names), (imgsz, imgsz),
            )
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            rows[name] = {"model": name, "params_m": round(params / 1e6, 3), "gflops": round(gflops, 2),
                          "times": []}
        x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
        feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
        for name, s in sessions.items():
            for _ in range(warmup):
                s.run(None, feeds[name])
        for _ in range(passes):  # round robin: each pass times every model
            for name, s in sessions.items():
                for _ in range(runs_per_pass):
                    t0 = time.perf_counter()
                    s.run(None, feeds[name])
                    rows[name]["times"].append((time.perf_counter() - t0) * 1e3)
    for row in rows.values():
        times = row.pop("times")
        row["onnx_ms"] = round(statistics.median(times), 2)
        row["spec"] = CANDIDATES.get(row["model"].rsplit("-", 1)[-1].replace("_", "-"))
    return {"imgsz": imgsz, "threads": threads, "runs": passes * runs_per_pass, "machine": machine_info(),
            "rows": list(rows.values())}


def train_screen(models: list[str], minutes: float, imgsz: int, threads: int, project: Path) -> None:
    """Equal-time training of ``models`` through ``efyolo.compare`` (ONNX timing at ``imgsz``)."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; before torch threads start
    from efyolo import compare

    register_candidates()
    result = compare(models=models, time_each=minutes / 60, imgsz=320, batch=16, formats=["onnx"],
                     bench_imgsz=imgsz, threads=threads, project=project, name="screen")
    print(f"report: {result.save_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=6)
    parser.add_argument("--runs-per-pass", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--train-minutes", type=float, help="train --models this long each instead")
    parser.add_argument("--models", default="", help="comma list for --train-minutes")
    parser.add_argument("--project", type=Path, default=Path("runs/variants"))
    args = parser.parse_args()
    if args.train_minutes:
        train_screen(args.models.split(","), args.train_minutes, args.imgsz, args.threads, args.project)
        return
    result = run(args.imgsz, args.threads, args.passes, args.runs_per_pass, args.warmup)
    print(f"ONNX Runtime, {args.imgsz}x{args.imgsz}, batch 1, {args.threads} threads, median of {result['runs']} runs")
    print(f"{'model':34s} {'params (M)':>10s} {'GFLOPs':>7s} {'ms':>7s}")
    for row in result["rows"]:
        print(f"{row['model']:34s} {row['params_m']:10.3f} {row['gflops']:7.2f} {row['onnx_ms']:7.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

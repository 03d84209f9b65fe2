"""INT8 against float32: mAP50-95 and ONNX Runtime / OpenVINO latency of each model, one interleaved run.

    python benchmarks/bench_int8.py --weights runs/a/best.pt runs/b/best.pt --data data.yaml \
        --map-imgsz 320 --bench-imgsz 640 --threads 2 [--calib 300] [--variants default,keep-head]

For every checkpoint: export float32 ONNX and INT8 ONNX (one file per --variants entry) and
float32/INT8 OpenVINO at --map-imgsz, score each on the val split (COCO mAP50-95, batch 1); export
the same files at --bench-imgsz and time them batch 1 in --passes interleaved passes (median of
--runs calls per pass, the minimum over passes is reported next to the median). Prints a markdown table and
writes --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from efyolo.engine.benchmark import file_size_mb, machine_info, time_backend, torch_threads
from efyolo.engine.validator import validate_model
from efyolo.export.exporter import export_model
from efyolo.runtime.autobackend import load_backend

VARIANTS = {
    "default": {},  # the format's measured default: the head's final convs stay float in ONNX
    "all": {"keep_float": []},  # quantize the head's final convs too
    "keep-head": {"keep_float": ["head"]},
    "keep-softmax": {"keep_float": ["head", "softmax"]},
    "percentile": {"method": "percentile"},
    "entropy": {"method": "entropy"},
    "per-tensor": {"per_channel": False},
}


def files_for(weights: Path, out: Path, imgsz: int, data: str, calib: int, variants: list[str], ov: bool) -> dict:
    stem = weights.parent.parent.name
    files = {("onnx", "fp32"): export_model(weights, "onnx", imgsz=imgsz, output=out / f"{stem}-{imgsz}.onnx")}
    for v in variants:
        files[("onnx", f"int8 {v}")] = export_model(
            weights, "onnx", imgsz=imgsz, int8=True, data=data, calib=calib, int8_options=VARIANTS[v],
            output=out / f"{stem}-{imgsz}-int8-{v}.onnx")
    if ov:
        files[("openvino", "fp32")] = export_model(weights, "openvino", imgsz=imgsz, output=out / f"{stem}-{imgsz}_openvino_model")
        files[("openvino", "int8")] = export_model(weights, "openvino", imgsz=imgsz, int8=True, data=data, calib=calib,
                                                   output=out / f"{stem}-{imgsz}-int8_openvino_model")
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--map-imgsz", type=int, default=320)
    ap.add_argument("--bench-imgsz", type=int, default=640)
    ap.add_argument("--calib", type=int, default=300)
    ap.add_argument("--variants", default="default")
    ap.add_argument("--no-openvino", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--json", default="int8.json")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    rows = []
    with tempfile.TemporaryDirectory(prefix="efyolo-int8-") as tmp, torch_threads(args.threads):
        out, cpu = Path(tmp), torch.device("cpu")
        timed = {}
        for w in map(Path, args.weights):
            name = w.parent.parent.name
            small = files_for(w, out, args.map_imgsz, args.data, args.calib, variants, not args.no_openvino)
            big = files_for(w, out, args.bench_imgsz, args.data, min(args.calib, 64), variants, not args.no_openvino)
            for key, f in small.items():
                m = validate_model(f, args.data, imgsz=args.map_imgsz, batch=1, device="cpu", project=out / "val",
                                   plots=False, quiet=True)
                row = {"model": name, "format": key[0], "precision": key[1], "size_mb": file_size_mb(big[key]),
                       "map": round(m["map"], 4), "map50": round(m["map50"], 4), "ms": []}
                rows.append(row)
                timed[(name, *key)] = (load_backend(big[key], cpu), row)
        for _ in range(args.passes):  # interleaved: every file once per pass
            for backend, row in timed.values():
                row["ms"].append(time_backend(backend, (args.bench_imgsz, args.bench_imgsz), args.runs, 3))
    for r in rows:
        r["latency_ms"] = round(statistics.median(r["ms"]), 1)
        r["latency_min_ms"] = round(min(r["ms"]), 1)
    print(f"| model | format | precision | size MB (@{args.bench_imgsz}) | mAP50-95 @{args.map_imgsz} | mAP50 | "
          f"ms @{args.bench_imgsz} (median, min) | speed-up | delta mAP50-95 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["format"] == r["format"] and b["precision"] == "fp32")
        print(f"| {r['model']} | {r['format']} | {r['precision']} | {r['size_mb']} | {r['map']:.4f} | {r['map50']:.4f} | "
              f"{r['latency_ms']} ({r['latency_min_ms']}) | {base['latency_ms'] / r['latency_ms']:.2f}x | "
              f"{r['map'] - base['map']:+.4f} |")
    Path(args.json).write_text(json.dumps({"rows": rows, "machine": machine_info(), "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()

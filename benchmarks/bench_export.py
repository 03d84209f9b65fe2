"""ONNX Runtime latency of the exported models at 640x640, batch 1, and what each graph change buys.

The performance targets of the export issue (CPU, 2 threads, 640x640, batch 1):

* yolov5n / yolov5s through ONNX Runtime at most as slow as the reference YOLOv5 ONNX exports on
  the development machine (about 27 ms and 92 ms);
* the EfficientFormer models reach at least 80% of the GFLOP/s that yolov5s reaches
  (GFLOPs / latency).

For every model this exports one ONNX file per *variant*, each adding one change to the one before,
and times them all interleaved (every pass runs each model and variant once, so that a change of
machine load hits all of them alike):

    unfused     eval mode only (the tracer still folds BatchNorm into the convolutions)
    fused       + DetectionModel.fuse(): EfficientFormer's BatchNorms, LayerNorm affines,
                  attention scale and layer scales folded into convs/linears (mixer as lerp)
    const-bias  + attention bias materialised for the export size (efyolo.export.fold)
    dw-mixer    + pooling mixer as two depthwise 1x1 convs (efyolo.export.fold); this is what
                  `efyolo export --format onnx` writes
    slim        + onnxslim (`--simplify`)

Variants that change nothing for a model (the last three for plain YOLOv5) are skipped. GFLOPs
are 2 x MACs of convolutions and matmuls (torch.utils.flop_counter, unfused model, as
``efyolo profile``). The machine's load average is printed before and after: other work on a
2-core machine slows both runtimes, so compare numbers measured together.

Usage::

    python benchmarks/bench_export.py                      # yolov5n, yolov5s, yolov5s-efficientformer-l1
    python benchmarks/bench_export.py --threads 2 1 --runs 60 --json bench_export.json
    python benchmarks/bench_export.py --reference yolov5n=ref/yolov5n.onnx --reference yolov5s=ref/yolov5s.onnx

``--reference MODEL=FILE`` times an ONNX file made elsewhere (the reference YOLOv5's export of the same
architecture, say) in the same interleaved passes, as variant ``reference``, so that "at most as slow
as the reference on this machine" is measured at one moment rather than against a number from another
day: the speed of this 2-core machine varies by more than 1.5x between sessions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from efyolo.engine.benchmark import machine_info, matmul_gflops
from efyolo.engine.profiler import count_gflops
from efyolo.export.fold import materialize_attention_bias, rewrite_pool_mixers
from efyolo.export.onnx import export_onnx, simplify_onnx
from efyolo.models import build_model
from efyolo.models.attention_bias import BiasTableAttention

VARIANTS = ("unfused", "fused", "const-bias", "dw-mixer", "slim")
EF_ONLY = ("const-bias", "dw-mixer")


def export_variants(name: str, imgsz: int, folder: Path, variants: list[str]) -> tuple[float, dict[str, Path]]:
    """Export the cumulative variants of one model; returns (GFLOPs, {variant: onnx path})."""
    import onnx

    model = build_model(name).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.zeros(1, 3, imgsz, imgsz)
    gflops = count_gflops(model, x)
    has_attention = any(isinstance(m, BiasTableAttention) for m in model.modules())
    paths: dict[str, Path] = {}
    last: Path | None = None  # the previous variant's file
    for variant in VARIANTS[: max(VARIANTS.index(v) for v in variants) + 1]:
        if variant == "fused":
            model.fuse()
        elif variant == "const-bias":
            materialize_attention_bias(model, (imgsz, imgsz))
        elif variant == "dw-mixer":
            rewrite_pool_mixers(model)
        path = folder / f"{name}-{variant}.onnx"
        if variant == "slim":
            onnx.save(simplify_onnx(onnx.load(str(last))), str(path))
        else:
            export_onnx(model, x, path, {"format": "bench"})
        last = path
        if variant in variants and (has_attention or variant not in EF_ONLY):
            paths[variant] = path
    return gflops, paths


def session(path: Path, threads: int, optimized: Path | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Without this the worker threads of the session that just ran keep spinning while the next
    # (interleaved) session runs, and steal its cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def graph_stats(path: Path, threads: int, folder: Path) -> dict[str, int]:
    """Node count of the file, and of the graph ONNX Runtime runs (with its NCHWc layout reorders)."""
    import onnx

    optimized = folder / (path.stem + ".ort.onnx")
    session(path, threads, optimized)
    ops = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    return {
        "onnx_nodes": len(onnx.load(str(path)).graph.node),
        "ort_nodes": sum(ops.values()),
        "ort_reorders": ops["ReorderInput"] + ops["ReorderOutput"],
    }


def measure(sessions: dict[tuple[str, str], object], imgsz: int, runs: int, warmup: int) -> tuple[dict, dict]:
    """Interleaved timing: ``runs`` passes, each running every (model, variant) once, so that a change
    of machine load hits all of them alike. Returns per key the wall times and the process CPU
    times of its runs (ms; with several threads CPU time also counts the workers' spin-waiting)."""
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    wall: dict[tuple[str, str], list[float]] = {k: [] for k in sessions}
    cpu: dict[tuple[str, str], list[float]] = {k: [] for k in sessions}
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for key, s in sessions.items():
        for _ in range(warmup):
            s.run(None, feeds[key])
    for _ in range(runs):
        for key, s in sessions.items():
            c0, t0 = time.process_time(), time.perf_counter()
            s.run(None, feeds[key])
            wall[key].append((time.perf_counter() - t0) * 1e3)
            cpu[key].append((time.process_time() - c0) * 1e3)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="yolov5n,yolov5s,yolov5s-efficientformer-l1")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="ONNX Runtime intra-op threads")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--runs", type=int, default=40, help="timed runs per variant (interleaved)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--reference", action="append", default=[], metavar="MODEL=FILE",
                        help="also time this ONNX file (an export of MODEL made elsewhere) as variant 'reference'")
    args = parser.parse_args(argv)
    references = {}
    for item in args.reference:
        name, sep, file = item.partition("=")
        if not sep or not Path(file).is_file():
            parser.error(f"--reference {item!r}: expected MODEL=FILE with an existing ONNX file")
        references[name] = Path(file)
    models = [m for m in args.models.split(",") if m]
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    torch.set_num_threads(max(args.threads))

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        folder = Path(tmp)
        exported = {}
        for name in models:
            gflops, paths = export_variants(name, args.imgsz, folder, variants)
            if name in references:
                paths["reference"] = references[name]
            exported[name] = (gflops, paths)
            print(f"exported {name}: {', '.join(paths)}", file=sys.stderr)
        for threads in args.threads:
            sessions = {(n, v): session(p, threads) for n, (_, ps) in exported.items() for v, p in ps.items()}
            load_before = os.getloadavg()
            times, cpu_times = measure(sessions, args.imgsz, args.runs, args.warmup)
            load_after = os.getloadavg()
            for (name, variant), ts in times.items():
                gflops = exported[name][0]
                median = statistics.median(ts)
                cpu_ms = statistics.median(cpu_times[(name, variant)])
                results.append({
                    "model": name, "variant": variant, "threads": threads, "gflops": round(gflops, 2),
                    "median_ms": round(median, 1), "min_ms": round(min(ts), 1), "runs": len(ts),
                    "gflops_per_s": round(gflops / median * 1e3, 1), "cpu_ms": round(cpu_ms, 1),
                    "best_gflops_per_s": round(gflops / min(ts) * 1e3, 1),
                    **graph_stats(exported[name][1][variant], threads, folder),
                    "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in load_after],
                })
    print_table(results, args.imgsz)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_info(), "imgsz": args.imgsz, "results": results},
                                              indent=1))
    return 0


def print_table(results: list[dict], imgsz: int) -> None:
    header = (f"{'model':<28} {'variant':<10} {'thr':>3} {'GFLOPs':>7} {'median ms':>9} {'min ms':>7} "
              f"{'GFLOP/s':>8} {'cpu ms':>7} {'nodes':>5} {'ORT reorders':>12}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['model']:<28} {r['variant']:<10} {r['threads']:>3} {r['gflops']:>7.2f} {r['median_ms']:>9.1f} "
              f"{r['min_ms']:>7.1f} {r['gflops_per_s']:>8.1f} {r['cpu_ms']:>7.1f} {r['onnx_nodes']:>5} "
              f"{r['ort_reorders']:>12}")
    for threads in sorted({r["threads"] for r in results}):
        rows = [r for r in results if r["threads"] == threads]
        base = [r for r in rows if r["model"] == "yolov5s" and r["variant"] != "reference"]
        if base:
            ref = base[-1]  # yolov5s as exported by efyolo
            for r in rows:
                if "efficientformer" in r["model"]:
                    print(f"{threads} thread(s): {r['model']} {r['variant']}: "
                          f"{r['gflops_per_s'] / ref['gflops_per_s']:.0%} of yolov5s GFLOP/s by median latency "
                          f"({r['gflops_per_s']:.1f} vs {ref['gflops_per_s']:.1f}), "
                          f"{r['best_gflops_per_s'] / ref['best_gflops_per_s']:.0%} by best latency")
        for r in rows:
            if r["variant"] == "reference":
                ours = [o for o in rows if o["model"] == r["model"] and o["variant"] != "reference"][-1]
                print(f"{threads} thread(s): {r['model']}: efyolo ({ours['variant']}) {ours['median_ms']:.1f} ms vs "
                      f"reference {r['median_ms']:.1f} ms median ({ours['median_ms'] / r['median_ms']:.2f}x)")
        print(f"{threads} thread(s): load average before {rows[0]['load_before']}, after {rows[0]['load_after']}")
    m = machine_info()
    print(f"machine speed: {matmul_gflops():.0f} GFLOP/s (torch float32 2048x2048 matmul, "
          f"{torch.get_num_threads()} threads; the reference measurements' day: 158)")
    print(f"{imgsz}x{imgsz}, batch 1, ONNX Runtime {m.get('onnxruntime')} CPU provider; {m['cpu']} "
          f"({m['cores']} cores); torch {m['torch']}")


if __name__ == "__main__":
    sys.exit(main())

"""``efyolo benchmark``: size, mAP and latency of each export format, or the model-zoo comparison."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "benchmark",
        help="export to each format and compare size, mAP and latency; or compare zoo models",
        description="With --weights: export the checkpoint to each format (next to it), then print per "
        "format the file size, mAP50-95/mAP50 on --data's val split (if given) and the median batch-1 "
        "latency. With --models: params, GFLOPs, PyTorch and ONNX Runtime latency of untrained zoo models.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--weights", help="model checkpoint (.pt) to export and measure")
    what.add_argument("--models", nargs="+", action="extend",
                      help="zoo model names (comma lists allowed), e.g. yolov5n,yolov5s,yolov5s-efficientformer-l1")
    p.add_argument("--data", default=None, help="dataset YAML for the mAP columns (with --weights)")
    p.add_argument("--imgsz", type=int, nargs="+", default=None,
                   help="size: S or H W (default: the checkpoint's; 640 with --models)")
    p.add_argument("--formats", nargs="+", action="extend", default=None,
                   help="pytorch, torchscript, onnx, openvino, coreml, litert, ncnn, each optionally :fp16 or :int8 (onnx:int8); default: all but coreml")
    p.add_argument("--runs", type=int, default=20, help="timed runs, the median is reported (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every runtime (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu or a CUDA index such as 0 (default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table goes to stderr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from efyolo.engine.benchmark import DEFAULT_FORMATS, benchmark_formats, benchmark_models, format_report
    from efyolo.errors import EfyoloError

    out = sys.stderr if args.json else sys.stdout
    if args.models:
        if args.data or args.formats:
            raise EfyoloError("--data and --formats go with --weights, not --models")
        names = [n for item in args.models for n in item.split(",") if n]
        imgsz = args.imgsz if args.imgsz else 640
        report = benchmark_models(names, imgsz, runs=args.runs, warmup=args.warmup, threads=args.threads)
    else:
        formats = [f for item in (args.formats or DEFAULT_FORMATS) for f in item.split(",") if f]
        report = benchmark_formats(
            args.weights, args.data, args.imgsz, formats, runs=args.runs, warmup=args.warmup,
            threads=args.threads, device=args.device,
        )
    print(format_report(report), file=out)
    if args.json:
        print(json.dumps(report.as_dict()))
    return 0

"""``efyolo compare``: train, score, export and time several models the same way; one report."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="the backbone study: train each model alike, then mAP, size and latency side by side",
        description="Train every model of --models with the same data, recipe and budget (equal --epochs, or "
        "equal --time per model), score each best.pt with the COCO-exact evaluator, export it to each "
        "--formats and time every model and format in interleaved passes. Writes compare.csv, compare.json, "
        "pareto.png and a self-contained report.html into runs/compare/expN. Without --data: the built-in "
        "synthetic dataset. A killed study continues with --resume.",
    )
    p.add_argument("--models", nargs="+", action="extend", default=None,
                   help="model names (comma lists allowed), e.g. yolov5n,yolov5n-efficientformerv2-s0")
    p.add_argument("--from-runs", nargs="+", default=None, metavar="DIR",
                   help="build the report from existing training runs (or a compare folder) instead of training")
    p.add_argument("--data", default=None, help="dataset YAML (default: the built-in synthetic dataset)")
    p.add_argument("--imgsz", type=int, default=320, help="training size (default 320)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None, help="equal epochs per model (default 10)")
    budget.add_argument("--time", type=float, default=None, metavar="HOURS_EACH",
                        help="equal wall-clock hours of training per model (the fair budget on a CPU)")
    p.add_argument("--batch", type=int, default=16, help="training batch size (default 16)")
    p.add_argument("--formats", nargs="+", action="extend", default=None,
                   help="pytorch, torchscript, onnx, openvino, coreml (default pytorch,onnx)")
    p.add_argument("--bench-imgsz", type=int, nargs="+", default=None,
                   help="size exports are made and timed at: S or H W (default --imgsz)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every runtime while timing")
    p.add_argument("--runs", type=int, default=20, help="timed runs per model and format (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--passes", type=int, default=5, help="interleaved timing passes (default 5)")
    p.add_argument("--seed", type=int, default=0, help="training seed shared by every model (default 0)")
    p.add_argument("--workers", type=int, default=None, help="data-loading workers")
    p.add_argument("--device", default="cpu", help="cpu or a CUDA index such as 0 (default cpu)")
    p.add_argument("--project", default="runs/compare", help="parent folder of studies (default runs/compare)")
    p.add_argument("--name", default="exp", help="study folder name (default exp, numbered)")
    p.add_argument("--exist-ok", action="store_true", help="use --name as it is; continue a study found there")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="DIR",
                   help="continue the latest study under --project, or the one in DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from efyolo.engine.compare import compare
    from efyolo.engine.compare_report import format_table
    from efyolo.errors import EfyoloError

    if not (args.models or args.from_runs or args.resume):
        raise EfyoloError("compare: give --models (or --from-runs DIR..., or --resume)")
    if args.models and args.from_runs:
        raise EfyoloError("compare: --models trains new runs, --from-runs reads existing ones; give one")
    bench = args.bench_imgsz[0] if args.bench_imgsz and len(args.bench_imgsz) == 1 else args.bench_imgsz
    result = compare(
        models=args.models, data=args.data, imgsz=args.imgsz, epochs=args.epochs, time_each=args.time,
        batch=args.batch, formats=args.formats, threads=args.threads, seed=args.seed, project=args.project,
        name=args.name, exist_ok=args.exist_ok, resume=args.resume, from_runs=args.from_runs, bench_imgsz=bench,
        runs=args.runs, warmup=args.warmup, passes=args.passes, workers=args.workers, device=args.device,
        quiet=bool(getattr(args, "quiet", False)),
    )
    print(format_table(result.rows))
    print(f"Report: {result.files['report.html']}")
    return 0

"""``efyolo profile``: parameters, GFLOPs and latency of one model or of the model zoo."""

from __future__ import annotations

import argparse
import json
import sys

from efyolo.utils.log import LOGGER


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("profile", help="parameters, GFLOPs and latency of models")
    p.add_argument(
        "--model",
        nargs="+",
        action="extend",
        help="model names or YAML paths (repeatable, comma lists allowed; default: the model zoo)",
    )
    p.add_argument("--imgsz", type=int, nargs="+", default=[640], help="input size: S or H W (multiples of 32)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=10, help="timed forward passes (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or a CUDA index such as 0")
    p.add_argument("--half", action="store_true", help="time in float16 (CUDA only)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from efyolo.engine.profiler import format_table, profile_model, zoo_models
    from efyolo.utils.checks import check_imgsz
    from efyolo.utils.devices import select_device

    names = [n for item in (args.model or zoo_models()) for n in item.split(",") if n]
    imgsz = check_imgsz(args.imgsz, 32)
    device = select_device(args.device)
    if args.threads:
        import torch  # lazy: `efyolo --help` loads no torch

        torch.set_num_threads(args.threads)
    log = sys.stderr if args.json else sys.stdout
    profiles = []
    for name in names:
        profiles.append(
            profile_model(name, imgsz, args.batch, runs=args.runs, warmup=args.warmup, device=device, name=name,
                          half=args.half)
        )
        LOGGER.info(f"profiled {name}: {profiles[-1].latency_ms:.1f} ms")
    print(format_table(profiles), file=log)
    if args.json:
        dicts = [p.as_dict() for p in profiles]
        print(json.dumps(dicts[0] if len(dicts) == 1 else {"models": dicts}))
    return 0

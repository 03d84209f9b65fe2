"""``efyolo synth``: write the built-in synthetic shapes dataset in YOLO format."""

from __future__ import annotations

import argparse
import time

from efyolo.utils.log import LOGGER


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``synth`` and its arguments."""
    parser = subparsers.add_parser(
        "synth",
        help="write the synthetic shapes dataset (YOLO format, with its data YAML)",
        description="Write the built-in synthetic detection dataset: images/{train,val}, "
        "labels/{train,val} and data.yaml under --out. The same arguments give the same bytes.",
    )
    parser.add_argument(
        "--out", required=True, help="output folder (new, empty, or an earlier synth output)"
    )
    parser.add_argument(
        "--train", type=int, default=800, help="number of training images (default 800)"
    )
    parser.add_argument(
        "--val", type=int, default=200, help="number of validation images (default 200)"
    )
    parser.add_argument(
        "--imgsz", type=int, default=320, help="square image side in pixels (default 320)"
    )
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: inline below 4000 images, else one per CPU, up to 8)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Generate the dataset and print where it is."""
    from efyolo.data.synth import generate_dataset  # lazy: keep `efyolo --help` fast

    start = time.perf_counter()
    data = generate_dataset(
        args.out,
        n_train=args.train,
        n_val=args.val,
        imgsz=args.imgsz,
        seed=args.seed,
        workers=args.workers,
    )
    seconds = time.perf_counter() - start
    rate = (args.train + args.val) / max(seconds, 1e-9)
    LOGGER.info(
        f"wrote {args.train} train + {args.val} val images ({args.imgsz}x{args.imgsz}) "
        f"in {seconds:.1f} s ({rate:.0f} images/s)"
    )
    LOGGER.info(f"data: {data}")
    return 0

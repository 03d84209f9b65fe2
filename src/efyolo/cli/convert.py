"""``efyolo convert``: COCO instances JSON <-> YOLO label files."""

from __future__ import annotations

import argparse

from efyolo.errors import EfyoloError
from efyolo.utils.log import LOGGER

_EPILOG = """examples:
  efyolo convert --from coco --to yolo --json annotations/instances_val2017.json --images val2017 --out coco-yolo
      writes coco-yolo/images/val/ (symlinks; --copy-images to copy), coco-yolo/labels/val/*.txt
      and coco-yolo/data.yaml (category ids in ascending order become classes 0..K-1;
      crowd annotations are left out; boxes are normalised by the real image size)
  efyolo convert --from coco --to yolo --json D/annotations/val.json --images D/images/val --out D
      converts in place: the images stay as they are, D/labels/val/*.txt and D/data.yaml are written
  efyolo convert --from yolo --to coco --data data.yaml --split val --out val.json
      writes the split as a COCO instances JSON (category_id = class index; image id = file stem
      when all stems are numbers, else 1..N)

Inputs are never overwritten: --to yolo writes only inside --out, skips (with a warning) images
whose file_name is absolute or leaves --images, and refuses to replace a file it did not make;
--to coco refuses an --out that is the dataset YAML, a split source, an image or a label file.
Skipped images and dropped boxes are counted in the summary line and listed as warnings.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``convert`` and its arguments."""
    parser = subparsers.add_parser(
        "convert",
        help="convert datasets between COCO JSON and YOLO label files",
        description="Convert a COCO instances JSON into a YOLO dataset, or a split of a YOLO "
        "dataset into a COCO instances JSON.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--from", dest="src", required=True, choices=("coco", "yolo"), help="input format")
    parser.add_argument("--to", dest="dst", required=True, choices=("coco", "yolo"), help="output format")
    parser.add_argument("--json", help="COCO instances JSON (--from coco)")
    parser.add_argument("--images", help="folder the JSON's file_name entries are relative to (--from coco)")
    parser.add_argument("--data", help="dataset YAML (--from yolo)")
    parser.add_argument(
        "--split", default="val", help="split name: read (--from yolo) or written (--to yolo); default val"
    )
    parser.add_argument("--out", required=True, help="output: dataset folder (--to yolo) or JSON file (--to coco)")
    parser.add_argument("--copy-images", action="store_true", help="copy images instead of symlinking (--to yolo)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Convert and print one summary line."""
    if args.src == args.dst:
        raise EfyoloError(f"--from and --to are both {args.src}: nothing to convert")
    if args.src == "coco":
        missing = [flag for flag, v in (("--json", args.json), ("--images", args.images)) if not v]
        if missing:
            raise EfyoloError(f"--from coco needs {' and '.join(missing)}")
        from efyolo.data.convert import coco_to_yolo  # lazy: keep `efyolo --help` fast

        report = coco_to_yolo(args.json, args.images, args.out, split=args.split, copy_images=args.copy_images)
    else:
        if not args.data:
            raise EfyoloError("--from yolo needs --data DATA.yaml")
        from efyolo.data.convert import yolo_to_coco
        from efyolo.data.config import load_data_config

        report = yolo_to_coco(load_data_config(args.data), args.split, args.out)
    LOGGER.info(f"converted {args.src} -> {args.dst}: {report.summary()}")
    return 0

"""``efyolo convert``: COCO instances JSON <-> YOLO label files; YOLOv5 weights -> efyolo checkpoint."""

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

  efyolo convert --from yolov5 --weights yolov5s.pt [--out yolov5s_efyolo.pt]
      reads a YOLOv5 checkpoint without running any of its pickled code and writes an efyolo
      checkpoint (plain data; default name <stem>_efyolo.pt beside it); prints the architecture,
      classes, parameter count and whether the weights are the EMA. Every --weights option
      also takes the YOLOv5 file directly (converted in memory).

Inputs are never overwritten: --to yolo writes only inside --out, skips (with a warning) images
whose file_name is absolute or leaves --images, and refuses to replace a file it did not make;
--to coco refuses an --out that is the dataset YAML, a split source, an image or a label file.
Skipped images and dropped boxes are counted in the summary line and listed as warnings.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``convert`` and its arguments."""
    parser = subparsers.add_parser(
        "convert",
        help="convert datasets between COCO JSON and YOLO labels, or YOLOv5 weights to efyolo",
        description="Convert a COCO instances JSON into a YOLO dataset, a split of a YOLO "
        "dataset into a COCO instances JSON, or a YOLOv5 .pt checkpoint into an efyolo checkpoint.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--from", dest="src", required=True, choices=("coco", "yolo", "yolov5"),
                        help="input format (yolov5: a YOLOv5 .pt checkpoint)")
    parser.add_argument("--to", dest="dst", choices=("coco", "yolo", "efyolo"),
                        help="output format (coco/yolo for datasets; efyolo, the default, with --from yolov5)")
    parser.add_argument("--weights", help="YOLOv5 checkpoint (--from yolov5)")
    parser.add_argument("--json", help="COCO instances JSON (--from coco)")
    parser.add_argument("--images", help="folder the JSON's file_name entries are relative to (--from coco)")
    parser.add_argument("--data", help="dataset YAML (--from yolo)")
    parser.add_argument(
        "--split", default="val", help="split name: read (--from yolo) or written (--to yolo); default val"
    )
    parser.add_argument("--out", help="output: dataset folder (--to yolo), JSON file (--to coco) or checkpoint "
                        "(--from yolov5; default <stem>_efyolo.pt)")
    parser.add_argument("--copy-images", action="store_true", help="copy images instead of symlinking (--to yolo)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Convert and print one summary line."""
    if args.src == "yolov5":
        return _convert_weights(args)
    if args.dst is None or args.dst == "efyolo":
        raise EfyoloError(f"--from {args.src} needs --to {'yolo' if args.src == 'coco' else 'coco'}")
    if not args.out:
        raise EfyoloError(f"--from {args.src} needs --out")
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
        from efyolo.data.config import load_data_config
        from efyolo.data.convert import yolo_to_coco

        report = yolo_to_coco(load_data_config(args.data), args.split, args.out)
    LOGGER.info(f"converted {args.src} -> {args.dst}: {report.summary()}")
    return 0


def _convert_weights(args: argparse.Namespace) -> int:
    """``--from yolov5``: the safe import, then what was found and where it went."""
    if args.dst not in (None, "efyolo"):
        raise EfyoloError(f"--from yolov5 converts weights to an efyolo checkpoint; --to {args.dst} is for datasets")
    if not args.weights:
        raise EfyoloError("--from yolov5 needs --weights YOLOV5.pt")
    from efyolo.models.checkpoint import convert_yolov5

    out, found = convert_yolov5(args.weights, args.out)
    LOGGER.info(f"{args.weights}: {found.summary()}")
    LOGGER.info(f"wrote {out} (efyolo checkpoint, plain data; {args.weights} unchanged)")
    return 0

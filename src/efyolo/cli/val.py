"""``efyolo val``: COCO mAP of a predictions file (or, later, a model) on a dataset split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path



def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``val`` and its arguments."""
    parser = subparsers.add_parser(
        "val",
        help="evaluate detections on a dataset split (COCO mAP, YOLOv5's table and plots)",
        description="Score a COCO results file (--pred: a JSON list of {image_id, category_id, "
        "bbox [x, y, w, h] in pixels, score}; image_id = the image file's stem, an int when numeric; "
        "category_id = class index) or a model (--weights) against a split of a dataset YAML. "
        "mAP follows pycocotools' COCOeval exactly. Prints YOLOv5's table and writes PR/F1/P/R "
        "curves and the confusion matrix to --project/--name (runs/val/exp, exp2, ...).",
    )
    parser.add_argument("--data", required=True, help="dataset YAML (YOLO labels or a COCO JSON split)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred", metavar="PREDS.json", help="COCO results file to score")
    source.add_argument("--weights", help="model checkpoint to run over the split")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"), help="split to score (default val)")
    parser.add_argument("--verbose", action="store_true", help="one table row per class")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout (tables go to stderr)")
    parser.add_argument("--project", default="runs/val", help="parent of the run folder (default runs/val)")
    parser.add_argument("--name", default="exp", help="run folder name, numbered if taken (default exp)")
    parser.add_argument("--exist-ok", action="store_true", help="reuse --project/--name if it exists")
    parser.add_argument("--no-plots", action="store_true", help="skip the plots")
    parser.add_argument("--no-cache", action="store_true", help="rescan the split, ignore and do not write the cache")
    model = parser.add_argument_group("model options (with --weights)")
    model.add_argument("--imgsz", type=int, default=None,
                       help="inference size in pixels (default: the size the weights were trained or exported at)")
    model.add_argument("--rect", action="store_true",
                       help="pad each batch only to the stride multiple its images need (faster on non-square "
                            "images; default: every image letterboxed to imgsz x imgsz, as a fixed-shape export sees it)")
    model.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    model.add_argument("--conf", type=float, default=0.001, help="confidence threshold (default 0.001)")
    model.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    model.add_argument("--max-det", type=int, default=300, help="detections per image after NMS (default 300)")
    model.add_argument("--device", default="", help="cpu, 0, cuda:0, ... (default: best available)")
    model.add_argument("--half", action="store_true", help="float16 inference (CUDA only)")
    model.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    model.add_argument("--save-json", action="store_true", help="also write the predictions as a COCO results file")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table (or the JSON), save plots and metrics.json."""
    if args.weights:
        return _run_weights(args)
    from efyolo.data.config import load_data_config  # lazy: keep `efyolo --help` fast
    from efyolo.data.scan import scan_split
    from efyolo.evaluation.coco_results import read_coco_results, score_predictions
    from efyolo.evaluation.metrics import format_table
    from efyolo.utils.runs import increment_path
    from efyolo.engine.validator import check_split_usable
    from efyolo.utils.log import LOGGER

    cfg = load_data_config(args.data)
    preds = read_coco_results(args.pred)
    index = scan_split(cfg, args.split, cache=not args.no_cache)
    LOGGER.info(index.summary())
    check_split_usable(index, cfg.yaml_path)
    report = score_predictions(index, preds)
    result = report.result
    LOGGER.info(format_table(result, verbose=args.verbose))

    save_dir = increment_path(Path(args.project) / args.name, exist_ok=args.exist_ok, mkdir=True)
    payload = {
        **result.to_dict(),
        "data": str(cfg.yaml_path),
        "split": args.split,
        "predictions": report.n_predictions,
        "skipped_unknown_image": report.unknown_images,
        "skipped_bad_class": report.bad_classes,
        "save_dir": str(save_dir),
    }
    (save_dir / "metrics.json").write_text(json.dumps(payload, indent=1))
    if not args.no_plots:
        from efyolo.utils.plotting import save_eval_plots

        save_eval_plots(result, save_dir)
    LOGGER.info(f"Results saved to {save_dir}")
    if args.json:
        print(json.dumps(payload))
    return 0


def _run_weights(args: argparse.Namespace) -> int:
    """``--weights``: run the model over the split (letterboxed rectangular batches) and score it."""
    from efyolo.engine.validator import validate_model

    metrics = validate_model(
        args.weights, args.data, imgsz=args.imgsz, batch=args.batch, conf=args.conf, iou=args.iou,
        max_det=args.max_det, device=args.device, split=args.split, project=args.project, name=args.name,
        exist_ok=args.exist_ok, save_json=args.save_json, plots=not args.no_plots, verbose=args.verbose,
        cache=not args.no_cache, half=args.half, workers=args.workers, rect=args.rect,
    )
    if args.json:
        print(json.dumps(metrics))
    return 0

"""``efyolo detect``: run a trained model on images, folders, globs, videos or lists of paths.

Outputs in ``runs/detect/expN`` are named after the source files. Sources that share a file name
(``a/000000.jpg`` and ``b/000000.jpg``) would overwrite each other's outputs, so they are saved by
their path below the common folder of those sources (``expN/a/000000.jpg``,
``labels/a/000000.txt``, ``image_id`` ``"a/000000"``) and a file given twice gets ``_2``, ``_3``
(:func:`efyolo.engine.results.output_stems`); one ``Note:`` line says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from efyolo.utils.log import LOGGER


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("detect", help="detect objects in images and videos with a trained model")
    p.add_argument("--weights", required=True, help="model weights: a .pt checkpoint or an exported model (.onnx, .torchscript, *_openvino_model/)")
    p.add_argument(
        "--source", required=True, nargs="+",
        help="image, folder, glob, video (mp4/avi/mkv...), or .txt list of paths; several allowed. Outputs keep "
             "the file names; sources sharing a name are saved by their path below their common folder "
             "(a/x.jpg, b/x.jpg), a file given twice as x_2",
    )
    p.add_argument("--imgsz", type=int, nargs="+", default=None,
                   help="inference size: S or H W, multiples of the stride (default: the model's training size)")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default 0.25)")
    p.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image (default 300)")
    p.add_argument("--classes", type=int, nargs="+", default=None, help="keep only these class ids")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--device", default=None, help="cpu, or a CUDA index such as 0 (default: CUDA 0 if available)")
    p.add_argument("--half", action="store_true", help="float16 inference (CUDA only)")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--augment", action="store_true", help="test-time augmentation (scales and flips)")
    p.add_argument("--project", default="runs/detect", help="save results to PROJECT/NAME (default runs/detect)")
    p.add_argument("--name", default="exp", help="run name, numbered exp, exp2, ... (default exp)")
    p.add_argument("--exist-ok", action="store_true", help="reuse PROJECT/NAME instead of numbering a new one")
    p.add_argument("--line-width", type=int, default=None, help="box line width in pixels (default: from image size)")
    p.add_argument("--hide-labels", action="store_true", help="do not write class names on boxes")
    p.add_argument("--hide-conf", action="store_true", help="do not write scores on boxes")
    p.add_argument("--nosave", action="store_true", help="do not save annotated images/videos")
    p.add_argument("--save-txt", action="store_true", help="save YOLO-format labels/<stem>.txt")
    p.add_argument("--save-conf", action="store_true", help="append the score to --save-txt rows")
    p.add_argument("--save-json", action="store_true", help="save COCO-results predictions.json")
    p.add_argument("--save-crop", action="store_true", help="save box crops to crops/<class>/")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from efyolo.data.sources import Sources
    from efyolo.engine.predictor import Detector
    from efyolo.engine.results import ResultWriter, SpeedStats
    from efyolo.utils.runs import increment_path

    # sources and weights are checked before a run folder is numbered
    sources = Sources(args.source[0] if len(args.source) == 1 else args.source)
    detector = Detector(args.weights, device=args.device, half=args.half)
    save_dir = increment_path(Path(args.project) / args.name, exist_ok=args.exist_ok)
    writer = ResultWriter(
        save_dir, save_img=not args.nosave, save_txt=args.save_txt, save_conf=args.save_conf,
        save_json=args.save_json, save_crop=args.save_crop, line_width=args.line_width,
        hide_labels=args.hide_labels, hide_conf=args.hide_conf, source_paths=sources.paths,
    )
    results = detector.stream(
        sources, imgsz=args.imgsz, conf=args.conf, iou=args.iou, classes=args.classes,
        max_det=args.max_det, agnostic=args.agnostic_nms, augment=args.augment, batch=args.batch,
    )
    note = writer.collision_note() if writer.saves_anything else None
    if note:  # after the arguments are checked, before the per-image lines
        LOGGER.info(note)
    stats = SpeedStats()
    with writer:
        for result in results:
            writer.write(result)
            stats.add(result)
            LOGGER.info(result.log_line())
    LOGGER.info(stats.summary(args.batch))
    if sources.skipped:
        LOGGER.warning(f"{len(sources.skipped)} unreadable source(s) skipped: {', '.join(sources.skipped[:5])}")
    if writer.saves_anything and save_dir.exists():
        LOGGER.info(f"Results saved to {save_dir}")
    return 0

"""``efyolo train``: train a detector (the built-in synthetic dataset without --data)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a detector (default: the built-in synthetic dataset, a CPU-sized EfficientFormer model)",
        description="Train on a YOLO-format dataset YAML, or without --data on the built-in synthetic dataset "
        "(generated once into ~/.cache/efyolo) with a CPU-sized EfficientFormer detector. "
        "Multi-GPU/multi-process: torchrun --nproc_per_node N -m efyolo train ...",
    )
    # Defaults of None mean "the library's default" (TrainConfig), so Python and CLI agree.
    p.add_argument("--data", help="dataset YAML (default: the built-in synthetic dataset)")
    p.add_argument("--model", help="model name or YAML (default: yolov5s; without --data yolov5n-efficientformer-n0; "
                   "with --weights: the checkpoint's own model, or this one initialised from what fits)")
    p.add_argument("--imgsz", type=int, help="train/val image size (default 640; 192 without --data)")
    p.add_argument("--epochs", type=int, help="epochs (default 100; without --data 11, re-planned by --time)")
    p.add_argument("--time", type=float,
                   help="wall-clock budget in hours: re-plan the epochs to fit it (default none; without "
                        "--data and --epochs 0.155, i.e. 9.3 minutes)")
    p.add_argument("--batch", type=int, help="total batch size (default 16; 8 without --data)")
    p.add_argument("--device", help="cpu, 0 or 0,1 (default: CUDA 0 if available)")
    p.add_argument("--workers", type=int, help="DataLoader workers per process (default 2)")
    p.add_argument("--optimizer", choices=("auto", "SGD", "AdamW", "Adam"), help="default auto")
    p.add_argument("--lr0", type=float, help="initial learning rate (overrides the hyp file)")
    p.add_argument("--hyp", help="hyperparameter YAML with YOLOv5's keys (merged over the defaults)")
    p.add_argument("--weights", help="checkpoint to fine-tune from: efyolo's, or a YOLOv5 .pt (read safely)")
    p.add_argument("--backbone-weights", help="ImageNet backbone weights (official or timm EfficientFormer file)")
    p.add_argument("--freeze", help="freeze the first N model rows, or 'backbone'")
    p.add_argument("--patience", type=int, help="early stopping patience in epochs (default 50, 0 = off)")
    p.add_argument("--cos-lr", action="store_true", default=None, help="cosine learning-rate schedule")
    p.add_argument("--close-mosaic", type=int, help="epochs at the end without mosaic (default 5)")
    p.add_argument("--project", help="runs folder (default runs/train)")
    p.add_argument("--name", help="run name (default exp, numbered)")
    p.add_argument("--exist-ok", action="store_true", default=None, help="reuse project/name")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--resume", nargs="?", const=True, default=None, help="resume the latest run or the given last.pt")
    p.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm under DDP")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                   help="cache decoded images in RAM (default: when the dataset is small)")
    p.add_argument("--noval", dest="val", action="store_false", default=None, help="validate only the final epoch")
    p.add_argument("--autoanchor", choices=("check", "refit", "off"),
                   help="check: new anchors when BPR <= 0.98 (YOLOv5, default); refit: fit them to the labels "
                        "and keep them when better (demo default); off: keep the model's")
    p.add_argument("--verbose", action="store_true", default=None, help="per-class table at the end")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help='TensorBoard event files in the run folder (default on when the tensorboard package is '
                        'installed: pip install "efyolo[loggers]")')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from efyolo.engine.trainer import train

    options = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    freeze = options.get("freeze")
    if freeze is not None and freeze != "backbone":
        options["freeze"] = int(freeze) if freeze.lstrip("-").isdigit() else freeze
    train(**options)
    return 0

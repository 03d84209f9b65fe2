"""Running a model over a dataset split and scoring it with the COCO-exact evaluator.

:func:`evaluate` is the loop the trainer calls every epoch; :func:`validate_model` is
``efyolo val --weights`` (and ``Detector.val``): load a checkpoint, build rectangular batches,
evaluate, then print, plot and save.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from efyolo.data.coco_json import image_id_from_path
from efyolo.evaluation.coco_results import coco_result_rows, write_coco_results
from efyolo.evaluation.metrics import DetectionEvaluator, EvalResult
from efyolo.ops.boxes import scale_boxes, xywhn2xyxy
from efyolo.ops.nms import non_max_suppression
from efyolo.utils.log import LOGGER, setup_logging


@dataclass
class Evaluation:
    """What one pass over a split gives.

    Attributes:
        result: the metrics.
        speed: milliseconds per image for ``preprocess``, ``inference`` and ``nms``.
        loss: mean validation loss items ``(box, obj, cls)`` when a loss function was given.
        predictions: COCO-results dicts (only when asked for).
    """

    result: EvalResult
    speed: dict[str, float]
    loss: np.ndarray | None = None
    predictions: list[dict[str, Any]] = field(default_factory=list)
    input_shapes: list[tuple[int, int, int, int]] = field(default_factory=list)  # distinct [B, 3, H, W] run


@torch.no_grad()
def evaluate(
    model: Callable[[torch.Tensor], Any],
    dataloader: torch.utils.data.DataLoader,
    names: Sequence[str],
    device: torch.device | str = "cpu",
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
    half: bool = False,
    loss_fn: Callable | None = None,
    collect_json: bool = False,
    progress: bool = True,
    desc: str = "val",
    multi_label: bool = True,
) -> Evaluation:
    """Predict every image of ``dataloader`` and score against its ground truth.

    Args:
        model: an ``nn.Module`` in eval mode (``DetectionModel``) or any callable mapping a
            ``float [B, 3, H, W]`` batch in 0..1 to decoded predictions ``[B, N, 5 + nc]``.
        dataloader: over a :class:`efyolo.data.dataset.DetectionDataset` without augmentation.
        names: class names.
        loss_fn: ``(raw_outputs, targets) -> (loss, items)``; needs ``model.forward_train_and_eval``.
        collect_json: also return COCO-results dicts.
        multi_label: NMS keeps every class whose score ``objectness x class probability`` passes
            ``conf`` as its own detection (YOLOv5's val.py does; a box whose class is uncertain
            then still scores for its true class), not only the best class (what ``detect`` does).
    """
    device = torch.device(device)
    dataset = dataloader.dataset
    gt_by_path = {r.im_file: r for r in dataset.records}
    evaluator = DetectionEvaluator(len(names), names)
    times = np.zeros(3)
    loss_sum, n_images = None, 0
    predictions: list[dict[str, Any]] = []
    input_shapes: list[tuple[int, int, int, int]] = []
    dtype = torch.float16 if half else torch.float32
    for imgs, targets, paths, shapes in tqdm(dataloader, desc=desc, leave=False, disable=not progress):
        t0 = time.perf_counter()
        x = imgs.to(device, non_blocking=True).to(dtype) / 255.0
        if tuple(x.shape) not in input_shapes:
            input_shapes.append(tuple(x.shape))
        t1 = time.perf_counter()
        if loss_fn is not None:
            pred, raw = model.forward_train_and_eval(x)
            items = loss_fn(raw, targets.to(device))[1].detach().cpu().numpy()
            loss_sum = items if loss_sum is None else loss_sum + items
        else:
            pred = model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        dets = non_max_suppression(pred.float(), conf, iou, multi_label=multi_label, max_det=max_det)
        t3 = time.perf_counter()
        times += (t1 - t0, t2 - t1, t3 - t2)
        for det, path, (orig_shape, ratio_pad) in zip(dets, paths, shapes):
            det = det.cpu()
            boxes = scale_boxes(det[:, :4], x.shape[2:], orig_shape, ratio_pad).numpy()
            record = gt_by_path[path]
            h0, w0 = record.shape
            crowd = getattr(record, "crowd", None)
            gt = record.labels if crowd is None or not len(crowd) else np.concatenate([record.labels, crowd])
            is_crowd = np.arange(len(gt)) >= len(record.labels)  # COCO crowd regions, listed last
            gt_boxes = xywhn2xyxy(gt[:, 1:], w0, h0) if len(gt) else np.zeros((0, 4))
            evaluator.update(boxes, det[:, 4].numpy(), det[:, 5].numpy().astype(int), gt_boxes,
                             gt[:, 0].astype(int), gt_crowd=is_crowd)
            if collect_json:  # full precision: rounding scores creates ties that reorder COCO's matching
                predictions.extend(coco_result_rows(image_id_from_path(path), boxes, det[:, 4], det[:, 5]))
        n_images += len(paths)
    speed = dict(zip(("preprocess", "inference", "nms"), (times * 1e3 / max(n_images, 1)).tolist()))
    loss = loss_sum / max(len(dataloader), 1) if loss_sum is not None else None
    return Evaluation(evaluator.compute(), speed, loss, predictions, input_shapes)


def format_speed(speed: dict[str, float], shapes: Sequence[Sequence[int]]) -> str:
    """The speed line with the input shapes the model really ran on (``[B, 3, H, W]``, largest batch first)."""
    shapes = sorted({tuple(int(v) for v in s) for s in shapes}, reverse=True)
    if not shapes:
        where = "(no images)"
    elif len({s[2:] for s in shapes}) == 1:
        where = f"at shape {shapes[0]}"
    else:
        largest = max(shapes, key=lambda s: (s[2] * s[3], s[0]))
        where = f"at {len({s[2:] for s in shapes})} shapes up to {largest}"
    return (
        f"Speed: {speed['preprocess']:.1f}ms pre-process, {speed['inference']:.1f}ms inference, "
        f"{speed['nms']:.1f}ms NMS per image {where}"
    )


def validate_model(
    weights: str | Path | nn.Module,
    data: str | Path,
    imgsz: int | None = None,
    batch: int = 32,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
    device: str = "",
    split: str = "val",
    workers: int = 2,
    half: bool = False,
    project: str | Path = "runs/val",
    name: str = "exp",
    exist_ok: bool = False,
    save_json: bool = False,
    plots: bool = True,
    verbose: bool = False,
    cache: bool = True,
    rect: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """``efyolo val --weights``: evaluate a checkpoint (or an exported model) on a split of a dataset.

    Geometry (the same for every format by default): each image is resized so that its long side
    is ``imgsz`` and letterboxed into an ``imgsz x imgsz`` input, which is what a fixed-shape export
    sees, so a ``.pt`` file and its ``.onnx`` export score the same. ``rect=True`` instead pads each
    batch only to the smallest multiple of the stride that holds its images (images sorted by
    aspect ratio, as YOLOv5's val.py, but without its extra half-stride of padding): faster on
    non-square images, for PyTorch models and ``--dynamic`` exports.

    Args:
        imgsz: the inference size (default: the size the checkpoint was trained or exported at,
            else 640).
        quiet: log only warnings (the summary, table and speed lines are INFO messages on the
            ``efyolo`` logger).

    Returns:
        The metrics as a dict (``EvalResult.to_dict()`` plus ``speed``, ``imgsz`` and ``save_dir``).
    """
    from efyolo.data.config import load_data_config
    from efyolo.data.scan import scan_split
    from efyolo.data.dataset import DetectionDataset, build_dataloader
    from efyolo.utils.checks import DEFAULT_IMGSZ, check_imgsz, check_inference_options
    from efyolo.evaluation.metrics import format_table
    from efyolo.runtime.pytorch import PyTorchBackend
    from efyolo.runtime.autobackend import load_backend
    from efyolo.utils.log import quiet as quiet_log
    from efyolo.utils.runs import increment_path
    from efyolo.utils.devices import select_device
    from efyolo.errors import EfyoloError

    if quiet:
        with quiet_log():
            return validate_model(
                weights, data, imgsz=imgsz, batch=batch, conf=conf, iou=iou, max_det=max_det, device=device,
                split=split, workers=workers, half=half, project=project, name=name, exist_ok=exist_ok,
                save_json=save_json, plots=plots, verbose=verbose, cache=cache, rect=rect,
            )
    check_inference_options(conf=conf, iou=iou, batch=batch, max_det=max_det, workers=workers)
    dev = select_device(device)
    if isinstance(weights, nn.Module):
        backend = PyTorchBackend(weights, dev, half=half)
    else:
        backend = load_backend(weights, device=dev, half=half)
    stride = int(backend.stride)
    if imgsz is None:
        trained = getattr(backend, "imgsz", None)
        imgsz = max(trained) if isinstance(trained, (tuple, list)) else (trained or DEFAULT_IMGSZ)
    check_imgsz(imgsz, stride)
    # Exported models with a fixed input shape get square batches of that shape.
    fixed = getattr(backend, "fixed_shape", None)
    if rect and fixed is not None:
        raise EfyoloError(f"--rect: {weights} has a fixed input shape {tuple(fixed)}; export it with --dynamic")
    if getattr(backend, "end2end", False):
        LOGGER.warning(f"{weights} ends with NMS (exported with --nms): the confidence threshold and max_det "
                       "baked into its graph apply instead of --conf/--max-det, so its mAP is lower than the "
                       "model's; export without --nms to validate")
    cfg = load_data_config(data)
    index = scan_split(cfg, split, cache=cache)
    LOGGER.info(index.summary())
    check_split_usable(index, cfg.yaml_path)
    names = list(cfg.names)
    if backend.names and len(backend.names) != len(names):
        raise EfyoloError(f"weights {weights} predict {len(backend.names)} classes but {data} has {len(names)}")
    eval_shape = None
    if fixed is not None:  # [B, 3, H, W] of the export: images go in letterboxed to exactly H x W
        batch, eval_shape = fixed[0], (fixed[2], fixed[3])
        imgsz = max(eval_shape)
    dataset = DetectionDataset(index, imgsz, augment=False, rect=rect, batch_size=batch, stride=stride,
                               eval_shape=eval_shape, rect_pad=0.0)
    loader = build_dataloader(dataset, batch, workers, shuffle=False)
    evaluation = evaluate(backend, loader, names, dev, conf, iou, max_det, half=backend.fp16, collect_json=save_json)
    result = evaluation.result
    LOGGER.info(format_table(result, verbose=verbose))
    LOGGER.info(format_speed(evaluation.speed, evaluation.input_shapes))
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    metrics = {**result.to_dict(), "speed": evaluation.speed, "imgsz": imgsz, "rect": rect,
               "save_dir": str(save_dir), "data": str(data), "split": split}
    (save_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if save_json:
        write_coco_results(save_dir / "predictions.json", evaluation.predictions)
    if plots:
        from efyolo.utils.plotting import save_eval_plots

        save_eval_plots(result, save_dir)
    LOGGER.info(f"Results saved to {save_dir}")
    return metrics


def val(weights: str | Path | nn.Module, data: str | Path, **kwargs: Any) -> dict[str, Any]:
    """``efyolo.val(...)``: :func:`validate_model` as an entry point (shows its INFO lines unless ``quiet``)."""
    setup_logging(quiet=bool(kwargs.get("quiet", False)))
    return validate_model(weights, data, **kwargs)


def check_split_usable(index: Any, data: str | Path) -> None:
    """Refuse to score (or train on) a split with no usable image: its mAP would be a meaningless -1."""
    from efyolo.errors import EfyoloError

    if len(index) == 0:
        unreadable = f", {index.n_corrupt} unreadable" if index.n_corrupt else ""
        raise EfyoloError(
            f"{data}: split '{index.split}' has no usable image ({index.n_listed} listed{unreadable}; see the warnings)"
        )

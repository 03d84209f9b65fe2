"""``efyolo export``: write a checkpoint as ONNX, TorchScript, OpenVINO, CoreML, LiteRT or ncnn next to it."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to onnx, torchscript, openvino, coreml, litert (tflite) or ncnn",
        description="Export a trained checkpoint for deployment. The file is written next to the weights "
        "with the same stem (best.onnx, best.torchscript, best_openvino_model/, best.mlpackage, best.tflite, "
        "best_ncnn_model/; --int8 adds _int8: best_int8.onnx); class names, stride and image size are "
        "embedded, so `efyolo detect/val/benchmark --weights` and efyolo.Detector run it directly. "
        'Formats other than torchscript need: pip install "efyolo[export]" (LiteRT: "efyolo[litert]").',
    )
    p.add_argument("--weights", required=True, help="model checkpoint (.pt)")
    p.add_argument(
        "--format", nargs="+", default=["onnx"],
        help="onnx, torchscript, openvino, coreml, litert (alias tflite), ncnn; several or a comma list "
        "allowed (default onnx)",
    )
    p.add_argument("--imgsz", type=int, nargs="+", default=None,
                   help="input size: S or H W, multiples of the stride (default: the checkpoint's training size)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the fixed input shape (default 1)")
    p.add_argument("--dynamic", action="store_true", help="free batch and image size (onnx, openvino, torchscript)")
    p.add_argument("--simplify", action="store_true", help="simplify the ONNX graph with onnxslim")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset, 17 or newer (default 17)")
    p.add_argument("--half", action="store_true",
                   help="float16 (onnx/torchscript need --device 0; openvino, ncnn and litert store fp16 weights; "
                   "coreml fp16 compute)")
    p.add_argument("--int8", action="store_true",
                   help="INT8 post-training quantization calibrated on --data (onnx: ONNX Runtime QDQ; "
                   "openvino: NNCF; litert: full-integer); writes <stem>_int8.*")
    p.add_argument("--data", default=None, help="dataset YAML whose images calibrate --int8")
    p.add_argument("--calib", type=int, default=None,
                   help="calibration images for --int8 (default 300, or all when the split has fewer)")
    p.add_argument("--calib-split", default="train", help="split of --data to calibrate on (default train)")
    p.add_argument("--int8-reduce-range", action="store_true",
                   help="onnx --int8: 7-bit weights, for CPUs without VNNI (AVX2 only), where 8-bit "
                        "weights can saturate (docs/int8.md)")
    p.add_argument("--calib-method", default=None, choices=["minmax", "entropy", "percentile"],
                   help="--int8 activation-range method for onnx (default minmax)")
    p.add_argument("--nms", action="store_true",
                   help="end the graph with NMS: output [B, max-det, 6] x1,y1,x2,y2,score,class")
    p.add_argument("--conf", type=float, default=0.25, help="--nms score threshold (default 0.25)")
    p.add_argument("--iou", type=float, default=0.45, help="--nms IoU threshold (default 0.45)")
    p.add_argument("--max-det", type=int, default=300, help="--nms detections per image (default 300)")
    p.add_argument("--agnostic-nms", action="store_true", help="--nms across classes")
    p.add_argument("--device", default="cpu", help="where to trace: cpu or a CUDA index such as 0 (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from efyolo.export.exporter import NmsOptions, check_format, export_model

    formats = [check_format(f) for item in args.format for f in item.split(",") if f]
    nms = NmsOptions(args.conf, args.iou, args.max_det, args.agnostic_nms) if args.nms else False
    for fmt in formats:
        path = export_model(
            args.weights, fmt, imgsz=args.imgsz, batch=args.batch, dynamic=args.dynamic, simplify=args.simplify,
            opset=args.opset, half=args.half, nms=nms, device=args.device, int8=args.int8, data=args.data,
            calib=args.calib, calib_split=args.calib_split,
            int8_options=_int8_options(args),
        )
        print(path)
    return 0


def _int8_options(args: argparse.Namespace) -> dict | None:
    """The INT8 options the flags set (``None``: every default, measured in docs/int8.md)."""
    opts = {}
    if args.calib_method:
        opts["method"] = args.calib_method
    if args.int8_reduce_range:
        opts["reduce_range"] = True
    return opts or None

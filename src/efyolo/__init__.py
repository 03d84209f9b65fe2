"""efyolo: YOLOv5 object detection with EfficientFormer backbones.

Public API::

    import efyolo
    model = efyolo.build_model("yolov5s-efficientformer-l1", nc=6)
    backbone = efyolo.build_backbone("efficientformer_l1", weights="efficientformer_l1.pth")
    result = efyolo.train(data="data.yaml", model="yolov5s-efficientformer-l1", epochs=50)
    metrics = efyolo.val(result.best, data="data.yaml", imgsz=640)  # efyolo val --weights
    detections = efyolo.Detector(result.best)("image.jpg")
    onnx_file = efyolo.export.export_model(result.best, format="onnx")  # efyolo export
    study = efyolo.compare(["yolov5n", "yolov5n-timm:lcnet_100"], time_each=0.1)  # efyolo compare

The names are imported on first use, so ``import efyolo`` (and the ``efyolo`` command's start-up)
does not load torch, OpenCV or the training stack until they are needed.
"""

from typing import Any

from efyolo.errors import EfyoloError

__version__ = "0.1.0"
__all__ = [
    "Detector", "EfyoloError", "build_backbone", "build_model", "compare", "export", "train", "val", "__version__",
]

# public name -> "module" (same attribute name) or "module:attribute"
_LAZY = {
    "build_model": "efyolo.models",
    "build_backbone": "efyolo.models",
    "Detector": "efyolo.engine.predictor",
    "train": "efyolo.engine.trainer",
    "val": "efyolo.engine.validator:val",
    "compare": "efyolo.engine.compare",
    "export": "efyolo.export:",  # the package (efyolo.export.export_model); "module:" means the module itself
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, colon, attribute = _LAZY[name].partition(":")
        imported = importlib.import_module(module)
        return imported if colon and not attribute else getattr(imported, attribute or name)
    raise AttributeError(f"module 'efyolo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

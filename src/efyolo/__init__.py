"""efyolo: YOLOv5 object detection with EfficientFormer backbones.

Public API::

    import efyolo
    model = efyolo.build_model("yolov5s-efficientformer-l1", nc=6)
    backbone = efyolo.build_backbone("efficientformer_l1", weights="efficientformer_l1.pth")
    result = efyolo.train(data="data.yaml", model="yolov5s-efficientformer-l1", epochs=50)
    detections = efyolo.Detector(result.best)("image.jpg")
"""

from typing import Any

from efyolo.errors import EfyoloError
from efyolo.models import build_backbone, build_model

__version__ = "0.1.0"
__all__ = ["Detector", "EfyoloError", "build_backbone", "build_model", "train", "__version__"]


def __getattr__(name: str) -> Any:
    """Import the heavier parts (OpenCV, the training stack) only when they are used."""
    if name == "Detector":
        from efyolo.engine.predictor import Detector

        return Detector
    if name == "train":
        from efyolo.engine.trainer import train

        return train
    raise AttributeError(f"module 'efyolo' has no attribute {name!r}")

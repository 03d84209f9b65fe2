"""efyolo: YOLOv5 object detection with EfficientFormer backbones.

Public API::

    import efyolo
    model = efyolo.build_model("yolov5s-efficientformer-l1", nc=6)
    backbone = efyolo.build_backbone("efficientformer_l1", weights="efficientformer_l1.pth")
"""

from efyolo.errors import EfyoloError
from efyolo.models import build_backbone, build_model

__version__ = "0.1.0"
__all__ = ["EfyoloError", "build_backbone", "build_model", "__version__"]

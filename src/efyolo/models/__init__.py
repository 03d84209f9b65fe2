"""Models: YOLOv5 blocks, the Detect head, registered backbones and the YAML model builder."""

from efyolo.models import efficientformer as _efficientformer  # noqa: F401  (registers its backbones)
from efyolo.models.backbone import build_backbone
from efyolo.models.registry import BACKBONES
from efyolo.models.yolo import DetectionModel, build_model

__all__ = ["BACKBONES", "DetectionModel", "build_backbone", "build_model"]

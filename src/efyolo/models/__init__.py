"""Models: YOLOv5 blocks, the Detect head, registered backbones and the YAML model builder."""

from efyolo.models import efficientformer as _efficientformer  # noqa: F401  (registers its backbones)
from efyolo.models import timm_backbone as _timm_backbone  # noqa: F401  (registers timm:<name>)
from efyolo.models import efficientformer_v2 as _efficientformer_v2  # noqa: F401  (registers its backbones)
from efyolo.models.backbone import build_backbone
from efyolo.models.registry import BACKBONES
from efyolo.models.yolo import DetectionModel, build_model

__all__ = ["BACKBONES", "DetectionModel", "build_backbone", "build_model"]

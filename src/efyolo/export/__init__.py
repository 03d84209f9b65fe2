"""Export: ONNX, OpenVINO, TorchScript, CoreML, and the runtime backends that run the exported files.

Public API::

    from efyolo.export import export_model
    path = export_model("runs/train/exp/weights/best.pt", format="onnx", imgsz=640, simplify=True)
    efyolo.Detector(path)("image.jpg")  # any exported file runs behind the same Detector

Modules: :mod:`~efyolo.export.exporter` (checks the arguments, prepares the model, dispatches),
one module per format (:mod:`~efyolo.export.onnx`, :mod:`~efyolo.export.torchscript`,
:mod:`~efyolo.export.openvino`, :mod:`~efyolo.export.coreml`), :mod:`~efyolo.export.metadata`
(what every exported file carries), :mod:`~efyolo.export.nms_graph` (NMS inside the graph) and
:mod:`~efyolo.runtime.exported` (ONNX Runtime, OpenVINO and TorchScript runtimes).
"""

from typing import Any

__all__ = ["FORMATS", "export_model"]


def __getattr__(name: str) -> Any:
    """Import the exporter (and torch) only when it is used."""
    if name in __all__:
        from efyolo.export import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module 'efyolo.export' has no attribute {name!r}")

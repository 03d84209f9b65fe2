"""TorchScript export through ``torch.jit.trace``; metadata in the archive's ``_extra_files``."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from efyolo.export.formats import ExportFormat, ExportJob, register
from efyolo.export.nms_graph import EndToEnd
from efyolo.export.onnx import quiet_tracing
from efyolo.utils.files import temp_file_beside

EXTRA_FILE = "efyolo.json"  # name of the metadata entry inside the TorchScript archive


def export_torchscript(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    metadata: Mapping[str, Any],
    nms: Mapping[str, Any] | None = None,
) -> Path:
    """Trace ``model`` (fused, eval mode) on ``example`` and save it with the metadata.

    Shapes read in the forward are recorded as size operations, so the traced graph also runs at
    other batch sizes and image sizes; :mod:`efyolo.runtime.exported` enforces the traced shape
    unless the metadata says ``dynamic``.

    Args:
        nms: ``{"conf", "iou", "max_det", "agnostic"}`` to end the graph with NMS
            (torchvision's ``nms`` operator, which needs ``torchvision`` imported when loading).
    """
    path = Path(path)
    net = (EndToEnd(model, onnx=False, **nms) if nms else model).eval()
    with torch.no_grad(), quiet_tracing():
        traced = torch.jit.trace(net, example, strict=False, check_trace=False)
    fd, tmp = temp_file_beside(path)  # the umask's mode, not mkstemp's 0600
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # recent torch deprecates TorchScript (still supported)
            torch.jit.save(traced, tmp, _extra_files={EXTRA_FILE: json.dumps(dict(metadata))})
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def load_torchscript(path: str | Path, device: torch.device) -> tuple[torch.jit.ScriptModule, Any]:
    """Load an exported TorchScript file: ``(module, metadata JSON value or None)``.

    Raises:
        RuntimeError / ValueError: from ``torch.jit.load`` when the file is not TorchScript.
    """
    import torchvision  # noqa: F401  (registers torchvision::nms, used by --nms exports)

    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # as in export_torchscript
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    text = extra[EXTRA_FILE]
    return module.eval(), (json.loads(text) if text else None)


def write(job: ExportJob) -> Path:
    """The registered writer."""
    return export_torchscript(job.model, job.example, job.path, job.metadata, job.nms)


FORMAT = register(ExportFormat("torchscript", ".torchscript", write, dynamic=True, nms=True, half="cuda"))

"""The export-format registry: every format module describes itself here with :func:`register`.

A format is a name (plus aliases), where its output goes, what it can do (dynamic shapes, NMS in
the graph, float16, INT8) and the writer that turns a prepared model into files. The exporter,
the CLI's choices and the benchmark read this table, so adding a format is one module that calls
:func:`register` and one line in :data:`BUILTIN_MODULES`.

Writers take an :class:`ExportJob`: the fused, eval-mode model (attention biases already frozen
for fixed-size exports), an example input, the output path, the metadata to embed and the options.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from efyolo.errors import EfyoloError

# Imported on first use of the registry; each calls register() for its format(s).
BUILTIN_MODULES = (
    "efyolo.export.onnx",
    "efyolo.export.torchscript",
    "efyolo.export.openvino",
    "efyolo.export.coreml",
    "efyolo.export.litert",
    "efyolo.export.ncnn",
)


@dataclass
class ExportJob:
    """Everything a writer needs (see :func:`efyolo.export.exporter.export_module`)."""

    model: Any  # fused eval-mode DetectionModel
    example: Any  # torch.Tensor [B, 3, H, W] at the export shape
    path: Path
    metadata: Mapping[str, Any]
    opset: int | None = None
    dynamic: bool = False
    simplify: bool = False
    nms: Mapping[str, Any] | None = None  # {"conf", "iou", "max_det", "agnostic"}
    half: bool = False
    calibration: Any = None  # efyolo.export.calibration.CalibrationSet when int8
    int8_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Attributes:
        name: canonical name (``--format``).
        suffix: appended to the weights stem (``best`` -> ``best.onnx``, ``best_ncnn_model``).
        writer: ``writer(job) -> Path`` writing the file or folder at ``job.path``.
        aliases: other accepted names (``tflite`` for ``litert``).
        dynamic, nms: whether ``--dynamic`` / ``--nms`` are supported.
        half: ``"cuda"`` (float16 tracing needs a GPU), ``"cpu"`` (stored or computed in float16
            on any machine) or ``None`` (not supported).
        int8: whether ``--int8`` (post-training quantization with calibration) is supported.
        packages: importable modules the writer needs (for messages and skip reasons).
        extra: the pip extra that installs them.
        runs_here: whether efyolo has a runtime for it (CoreML needs Apple's runtime).
    """

    name: str
    suffix: str
    writer: Callable[[ExportJob], Path]
    aliases: tuple[str, ...] = ()
    dynamic: bool = False
    nms: bool = False
    half: str | None = None
    int8: bool = False
    packages: tuple[str, ...] = ()
    extra: str = "export"
    runs_here: bool = True


_REGISTRY: dict[str, ExportFormat] = {}
_ALIASES: dict[str, str] = {}
_loaded = False


def register(fmt: ExportFormat) -> ExportFormat:
    """Add ``fmt`` to the registry (a module-level call in its writer module); returns it."""
    _REGISTRY[fmt.name] = fmt
    for name in (fmt.name, *fmt.aliases):
        _ALIASES[name] = fmt.name
    return fmt


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def all_formats() -> dict[str, ExportFormat]:
    """Every registered format by canonical name, in registration order."""
    _load_builtins()
    return dict(_REGISTRY)


def get_format(name: str) -> ExportFormat:
    """The format called ``name`` or one of its aliases, any case.

    Raises:
        EfyoloError: unknown name (the message lists the formats).
    """
    _load_builtins()
    key = str(name).strip().lower()
    if key not in _ALIASES:
        choices = ", ".join(f"{f.name} ({'/'.join(f.aliases)})" if f.aliases else f.name for f in _REGISTRY.values())
        raise EfyoloError(f"unknown export format {name!r} (choose from {choices})")
    return _REGISTRY[_ALIASES[key]]


def precision_tag(fmt: str, half: bool = False, int8: bool = False) -> str:
    """What the file name says about precision: ``_int8`` for INT8 in every format, ``_fp16`` for a
    float16 LiteRT file (``best_fp16.tflite``); other float16 exports keep the plain name, as before."""
    if int8:
        return "_int8"
    return "_fp16" if half and fmt == "litert" else ""


def export_path(weights: str | Path, fmt: str, half: bool = False, int8: bool = False) -> Path:
    """Where the export of ``weights`` goes: next to it, same stem plus precision tag and the format's
    suffix (``best.pt`` -> ``best.onnx``, ``best_int8.onnx``, ``best_int8_openvino_model``)."""
    spec = get_format(fmt)
    weights = Path(weights)
    return weights.with_name(weights.stem + precision_tag(spec.name, half, int8) + spec.suffix)


def install_hint(spec: ExportFormat) -> str:
    return f'pip install "efyolo[{spec.extra}]"'


def describe(formats: Mapping[str, ExportFormat] | None = None) -> str:
    """One line per format for ``--help``: name, aliases, and what it supports."""
    rows = []
    for f in (formats or all_formats()).values():
        caps = [c for c, ok in (("dynamic", f.dynamic), ("nms", f.nms), ("half", f.half), ("int8", f.int8)) if ok]
        rows.append(f"{f.name}{' (' + ', '.join(f.aliases) + ')' if f.aliases else ''}: {', '.join(caps) or '-'}")
    return "; ".join(rows)

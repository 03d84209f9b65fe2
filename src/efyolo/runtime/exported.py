"""Runtime backends for exported models: ONNX Runtime, OpenVINO and TorchScript (LiteRT and ncnn in
:mod:`efyolo.runtime.litert` and :mod:`efyolo.runtime.ncnn`).

Each satisfies :class:`efyolo.runtime.autobackend.Backend` (``float32 [B, 3, H, W]`` in ``[0, 1]`` ->
``[B, N, 5 + nc]`` raw predictions, plus ``names``, ``stride``, ``fp16``, ``device``) and reads
everything else from the metadata embedded at export (:mod:`efyolo.export.metadata`), so
``Detector``, ``efyolo detect`` and ``efyolo val`` run them unchanged. Extra attributes:

* ``imgsz``: the export size, the detector's default inference size.
* ``fixed_shape``: ``(B, 3, H, W)`` for exports without ``--dynamic``, else ``None``. Any batch
  still works: a smaller image is padded right/bottom with the letterbox grey (which moves no
  box, since pixel coordinates start top-left), a batch is run in chunks of ``B`` with the last
  chunk filled with blank images whose outputs are dropped. A larger image raises.
* ``end2end``: the file ends with NMS (``--nms``); its ``[B, max_det, 6]`` rows are turned back
  into predictions (``objectness = score``, a one-hot class), on which efyolo's NMS keeps every
  row again, so callers need no special case.

:func:`find_backend` maps a weights path to the factory that opens it (used by
:func:`efyolo.runtime.autobackend.load_backend` for everything but ``.pt``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from efyolo.errors import EfyoloError
from efyolo.export.metadata import decode, precision, validate
from efyolo.export.requires import require
from efyolo.ops.boxes import xyxy2xywh
from efyolo.utils.log import LOGGER

PAD_VALUE = 114 / 255  # letterbox grey, as efyolo.data.augment.PAD_COLOR


def end2end_to_predictions(dets: torch.Tensor, nc: int) -> torch.Tensor:
    """``[B, K, 6]`` ``(x1, y1, x2, y2, score, class)`` -> ``[B, K, 5 + nc]`` predictions.

    Each row becomes pixel xywh, objectness ``score`` and class probability 1 for its class, so
    ``objectness x class probability`` is the score again; zero rows stay at score 0.
    """
    out = dets.new_zeros(*dets.shape[:2], 5 + nc)
    out[..., :4] = xyxy2xywh(dets[..., :4])
    out[..., 4] = dets[..., 4]
    cls = dets[..., 5].round().long().clamp_(0, nc - 1)
    out[..., 5:].scatter_(-1, cls.unsqueeze(-1), 1.0)
    return out


class ExportedBackend:
    """What the exported-model runtimes share: metadata, fixed-shape handling, end-to-end outputs.

    Subclasses set up their runtime and implement :meth:`forward` for a batch of exactly the
    model's input shape.
    """

    def __init__(
        self,
        meta: dict[str, Any],
        source: Path,
        device: torch.device,
        fixed_shape: tuple[int, int, int, int] | None,
        fp16: bool,
        half: bool,
    ) -> None:
        if half and not fp16:
            raise EfyoloError(f"{source} holds a float32 model; for --half export it with `efyolo export --half`")
        self.metadata = meta
        self.source = source
        self.names = [str(n) for n in meta["names"]]
        self.stride = int(meta["stride"])
        self.imgsz = tuple(int(v) for v in meta["imgsz"])
        self.fixed_shape = fixed_shape
        self.fp16 = fp16
        self.device = device
        self.end2end = bool(meta.get("nms"))
        self.precision = precision(meta)  # "fp32" | "fp16" | "int8"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the runtime on ``x`` (already in the model's dtype and, if fixed, shape)."""
        raise NotImplementedError

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in ``[0, 1]`` -> ``[B, N, 5 + nc]`` float32 predictions on :attr:`device`."""
        x = batch.to(self.device, torch.float16 if self.fp16 else torch.float32)
        y = (self._run_fixed(x) if self.fixed_shape else self.forward(x)).float()
        return end2end_to_predictions(y, len(self.names)) if self.end2end else y

    def _run_fixed(self, x: torch.Tensor) -> torch.Tensor:
        fb, _, fh, fw = self.fixed_shape
        b, _, h, w = x.shape
        if h > fh or w > fw:
            raise EfyoloError(
                f"{self.source} was exported for a fixed input of {fh}x{fw} (HxW), got {h}x{w}: "
                f"use --imgsz {fh if fh == fw else f'{fh} {fw}'} or re-export with --dynamic"
            )
        if (h, w) != (fh, fw):  # pad right/bottom: pixel coordinates of the image do not move
            x = F.pad(x, [0, fw - w, 0, fh - h], value=PAD_VALUE)
        outs = []
        for chunk in x.split(fb):
            n = chunk.shape[0]
            if n < fb:  # fill the last chunk with blank images, drop their outputs
                chunk = torch.cat((chunk, chunk.new_zeros(fb - n, *chunk.shape[1:])))
            outs.append(self.forward(chunk)[:n])
        return torch.cat(outs)


def _default_threads(threads: int | None) -> int:
    return int(threads) if threads else torch.get_num_threads()


def check_int8_onnx(path: Path) -> None:
    """Refuse an ONNX file whose metadata says INT8 but whose graph holds no quantized op (not an
    efyolo INT8 export: metadata copied onto another graph)."""
    try:
        import onnx
    except ImportError:  # running without the converter: trust the metadata
        return
    from efyolo.export.onnx_int8 import is_quantized

    if not is_quantized(onnx.load(str(path), load_external_data=False)):
        raise EfyoloError(f"{path}: its metadata says INT8 but the graph holds no quantized ops; "
                          "re-export it with `efyolo export --int8 --data ...`")


class OnnxRuntimeBackend(ExportedBackend):
    """An ``.onnx`` export on ONNX Runtime (CUDA provider when asked for and installed, else CPU).

    Args:
        path: the ``.onnx`` file.
        device: ``cpu`` or a CUDA device.
        half: require a float16 export.
        fuse: ignored (exports are fused already).
        threads: intra-op threads (default ``torch.get_num_threads()``).
    """

    def __init__(
        self, path: str | Path, device: torch.device, half: bool = False, fuse: bool = True, threads: int | None = None
    ) -> None:
        ort = require("onnxruntime", "running ONNX models")
        path = Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _default_threads(threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
            else:
                LOGGER.warning("onnxruntime has no CUDA provider (pip install onnxruntime-gpu); running %s on CPU", path)
                device = torch.device("cpu")
        try:
            session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as err:  # onnxruntime raises its own pybind exception types
            raise EfyoloError(f"{path} is not a readable ONNX model ({str(err).strip()[:200]})") from None
        meta = decode(session.get_modelmeta().custom_metadata_map, str(path))
        if precision(meta) == "int8":
            check_int8_onnx(path)
        inp = session.get_inputs()[0]
        shape = inp.shape  # ints, or names for dynamic axes
        fixed = tuple(int(d) for d in shape) if all(isinstance(d, int) for d in shape) else None
        super().__init__(meta, path, device, fixed, inp.type == "tensor(float16)", half)
        self.session = session
        self.threads = opts.intra_op_num_threads
        self.input_name = inp.name
        self.output_name = session.get_outputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.session.run([self.output_name], {self.input_name: x.detach().cpu().numpy()})[0]
        return torch.from_numpy(y).to(self.device)


class TorchScriptBackend(ExportedBackend):
    """A ``.torchscript`` export (traced module with the metadata in its ``_extra_files``)."""

    def __init__(self, path: str | Path, device: torch.device, half: bool = False, fuse: bool = True) -> None:
        from efyolo.export.torchscript import load_torchscript

        path = Path(path)
        try:
            module, meta = load_torchscript(path, device)
        except (RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise EfyoloError(f"{path} is not a readable TorchScript model ({first[:200]})") from None
        if meta is None:
            meta = decode({}, str(path))  # raises: no metadata
        meta = validate(meta, str(path))
        if meta.get("half") and device.type != "cuda":
            raise EfyoloError(f"{path} was exported with --half, which runs on CUDA only (got {device})")
        fixed = None if meta.get("dynamic") else (int(meta.get("batch", 1)), 3, *meta["imgsz"])
        super().__init__(meta, path, device, fixed, bool(meta.get("half")), half)
        self.module = module  # not `model`: Detector.model means an efyolo DetectionModel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(x)


class OpenVINOBackend(ExportedBackend):
    """An OpenVINO IR (``<stem>_openvino_model/`` or its ``.xml``) on the CPU plugin, float32 precision.

    Args:
        threads: inference threads (default ``torch.get_num_threads()``).
    """

    def __init__(
        self, path: str | Path, device: torch.device, half: bool = False, fuse: bool = True, threads: int | None = None
    ) -> None:
        ov = require("openvino", "running OpenVINO models")
        from efyolo.export.openvino import find_xml, read_metadata

        path = Path(path)
        xml = find_xml(path)
        core = ov.Core()
        try:
            ov_model = core.read_model(str(xml))
        except RuntimeError as err:
            raise EfyoloError(f"{xml} is not a readable OpenVINO model ({str(err).strip()[:200]})") from None
        meta = read_metadata(ov_model, xml)
        if device.type != "cpu":
            LOGGER.warning("efyolo runs OpenVINO models on its CPU plugin; ignoring device %s", device)
        self.threads = _default_threads(threads)
        config = {"INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(ov_model, "CPU", config)
        shape = ov_model.input(0).get_partial_shape()
        fixed = tuple(int(d.get_length()) for d in shape) if shape.is_static else None
        super().__init__(meta, path, torch.device("cpu"), fixed, False, half)
        self.request = self.compiled.create_infer_request()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.request.infer({0: np.ascontiguousarray(x.numpy())})
        return torch.from_numpy(np.array(result[self.compiled.output(0)]))


def _coreml_unavailable(path: Path, device: torch.device, half: bool = False, fuse: bool = True) -> ExportedBackend:
    raise EfyoloError(
        f"{path}: CoreML models run on Apple devices (Core ML), and efyolo has no CoreML runtime; "
        "run an .onnx, .torchscript or _openvino_model export with efyolo instead"
    )


def _plugin(module: str, cls: str) -> Callable[..., ExportedBackend]:
    """A factory that imports ``module`` (which subclasses :class:`ExportedBackend`) only when used."""

    def factory(path: Path, device: torch.device, half: bool = False, fuse: bool = True, **kw: Any) -> ExportedBackend:
        return getattr(importlib.import_module(module), cls)(path, device, half=half, fuse=fuse, **kw)

    return factory


_litert = _plugin("efyolo.runtime.litert", "LiteRTBackend")
_ncnn = _plugin("efyolo.runtime.ncnn", "NcnnBackend")


# weights suffix -> factory(path, device, half=..., fuse=..., threads=...)
EXPORTED_BACKENDS: dict[str, Callable[..., ExportedBackend]] = {
    ".onnx": OnnxRuntimeBackend,
    ".torchscript": TorchScriptBackend,
    ".xml": OpenVINOBackend,
    ".tflite": _litert,
    ".param": _ncnn,
    ".mlpackage": _coreml_unavailable,
    ".mlmodel": _coreml_unavailable,
}
OPENVINO_DIR_SUFFIX = "_openvino_model"
NCNN_DIR_SUFFIX = "_ncnn_model"


def find_backend(path: str | Path) -> Callable[..., ExportedBackend] | None:
    """The factory for an exported model at ``path`` (by suffix; a folder holding an OpenVINO
    ``.xml`` is OpenVINO, one named ``*_ncnn_model`` or holding a ``.param`` is ncnn), or ``None``
    if it is not an exported format."""
    path = Path(path)
    factory = EXPORTED_BACKENDS.get(path.suffix.lower())
    if factory is None and path.is_dir():
        if path.name.endswith(OPENVINO_DIR_SUFFIX) or any(path.glob("*.xml")):
            factory = OpenVINOBackend
        elif path.name.endswith(NCNN_DIR_SUFFIX) or any(path.glob("*.param")):
            factory = _ncnn
    return factory


def supported_suffixes() -> list[str]:
    """The weights suffixes that exported backends open (for messages)."""
    return sorted(set(EXPORTED_BACKENDS)) + [f"{OPENVINO_DIR_SUFFIX}/", f"{NCNN_DIR_SUFFIX}/"]

"""LiteRT (TFLite) runtime backend for ``.tflite`` exports (:mod:`efyolo.export.litert`).

The interpreter is ai-edge-litert's (``ai_edge_litert.interpreter``), else tflite-runtime's or
TensorFlow's ``tf.lite`` one when only those are installed: the metadata is read with the
standard library, so any of them runs an efyolo export.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from efyolo.errors import EfyoloError
from efyolo.export.requires import require
from efyolo.runtime.exported import ExportedBackend
from efyolo.utils.log import LOGGER


def interpreter_class() -> Any:
    """ai-edge-litert's ``Interpreter``; tflite-runtime's or TensorFlow's when it is missing.

    Raises:
        EfyoloError: none of them is installed (naming ai-edge-litert).
    """
    try:
        return require("ai_edge_litert.interpreter", "running LiteRT models", "litert").Interpreter
    except EfyoloError as missing:
        for module, attribute in (("tflite_runtime.interpreter", "Interpreter"), ("tensorflow", "lite")):
            try:
                found = getattr(importlib.import_module(module), attribute)
            except ImportError:
                continue
            return found if attribute == "Interpreter" else found.Interpreter
        raise missing from None


class LiteRTBackend(ExportedBackend):
    """A ``.tflite`` export on the LiteRT CPU interpreter (XNNPACK), fixed input shape.

    The input is ``float32 [B, 3, H, W]`` for every variant (float32, ``--half`` float16 weights,
    INT8 with quantization inside the graph); an input or output stored as int8/uint8 (a file
    quantized elsewhere) is quantized/dequantized here with its scale and zero point.

    Args:
        path: the ``.tflite`` file.
        device: ignored beyond a warning: the interpreter runs on the CPU.
        half: require a ``--half`` export (its input is float32 all the same).
        fuse: ignored (exports are fused already).
        threads: interpreter threads (default ``torch.get_num_threads()``).
    """

    def __init__(
        self, path: str | Path, device: torch.device, half: bool = False, fuse: bool = True, threads: int | None = None
    ) -> None:
        from efyolo.export.litert import read_metadata
        from efyolo.utils.capture import captured_output

        path = Path(path)
        interpreter = interpreter_class()
        self.threads = int(threads) if threads else torch.get_num_threads()
        if not path.is_file():
            raise EfyoloError(f"{path} is not a readable LiteRT (TFLite) model (no such file)")
        try:
            with captured_output():  # the interpreter prints "Created TensorFlow Lite XNNPACK delegate"
                runner = interpreter(model_path=str(path), num_threads=self.threads)
                runner.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise EfyoloError(f"{path} is not a readable LiteRT (TFLite) model ({first[:200]})") from None
        meta = read_metadata(path)
        if device.type != "cpu":
            LOGGER.warning("efyolo runs LiteRT models on the CPU interpreter; ignoring device %s", device)
        inp, out = runner.get_input_details()[0], runner.get_output_details()[0]
        fixed = tuple(int(d) for d in inp["shape"])  # [B, 3, H, W]: exports have a fixed shape
        # fp16=False: the input is float32 whatever the weights; --half asks for a float16-weights file
        super().__init__(meta, path, torch.device("cpu"), fixed, False, half and not meta.get("half"))
        self.interpreter = runner
        self.input_index, self.output_index = int(inp["index"]), int(out["index"])
        self.input_dtype, self.output_dtype = np.dtype(inp["dtype"]), np.dtype(out["dtype"])
        self.input_quant, self.output_quant = inp["quantization"], out["quantization"]  # (scale, zero point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        if self.input_dtype.kind in "iu":  # q = round(x / scale) + zero point, clipped to the type
            scale, zero = self.input_quant
            info = np.iinfo(self.input_dtype)
            arr = np.clip(np.round(arr / scale) + zero, info.min, info.max).astype(self.input_dtype)
        self.interpreter.set_tensor(self.input_index, arr)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output_index)  # a copy: the next invoke reuses the buffer
        if self.output_dtype.kind in "iu":
            scale, zero = self.output_quant
            y = (y.astype(np.float32) - zero) * scale
        return torch.from_numpy(np.asarray(y, dtype=np.float32))

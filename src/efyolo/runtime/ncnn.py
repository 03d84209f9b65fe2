"""ncnn runtime backend for ``<stem>_ncnn_model/`` exports (:mod:`efyolo.export.ncnn`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from efyolo.errors import EfyoloError
from efyolo.export.requires import require
from efyolo.runtime.exported import ExportedBackend
from efyolo.utils.log import LOGGER


class NcnnBackend(ExportedBackend):
    """An ncnn model folder (or its ``.param``) on ncnn's CPU path, one image per extraction.

    The input shape is fixed at the export size with batch 1 (``fixed_shape = (1, 3, H, W)``): the
    base class pads smaller images and runs a batch image by image.

    Threads: ``threads`` (default ``torch.get_num_threads()``) OpenMP threads inside ncnn's layers.

    Precision: a float32 export computes in float32: ncnn's defaults store activations and
    weights in float16 (and bf16 where the CPU has it) on CPUs that convert fast (x86 with F16C,
    ARM), so those options are turned off. An fp16 export (metadata ``half``) keeps ncnn's
    float16 storage. Inputs reach ncnn as float32 either way (ncnn converts them itself).

    Args:
        path: the ``_ncnn_model`` folder or its ``.param`` file.
        device: ignored beyond a warning: ncnn runs on the CPU here.
        half: require an fp16 export.
        fuse: ignored (exports are fused already).
        threads: ncnn threads.
    """

    def __init__(
        self, path: str | Path, device: torch.device, half: bool = False, fuse: bool = True, threads: int | None = None
    ) -> None:
        ncnn = require("ncnn", "running ncnn models")
        from efyolo.export.ncnn import find_ncnn_files, read_metadata
        from efyolo.utils.capture import captured_output

        path = Path(path)
        param, weights = find_ncnn_files(path)
        meta = read_metadata(param.parent)
        if device.type != "cpu":
            LOGGER.warning("efyolo runs ncnn models on the CPU; ignoring device %s", device)
        fp16 = bool(meta.get("half"))
        net = ncnn.Net()
        opt = net.opt  # options must be set before load_param: layers pick their kernels on load
        opt.num_threads = int(threads) if threads else torch.get_num_threads()
        opt.use_vulkan_compute = False
        opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = fp16
        opt.use_bf16_storage = False
        if hasattr(opt, "use_bf16_packed"):  # newer ncnn only
            opt.use_bf16_packed = False
        with captured_output() as out:  # ncnn prints why a load failed to stderr; both return 0 on success
            failed = param if net.load_param(str(param)) != 0 else weights if net.load_model(str(weights)) != 0 else None
        if failed is not None:
            said = out.text.strip().splitlines()[-1:]
            raise EfyoloError(f"{failed} is not a readable ncnn model" + (f" ({said[0][:200]})" if said else ""))
        inputs, outputs = list(net.input_names()), list(net.output_names())
        if len(inputs) != 1 or not outputs:
            raise EfyoloError(f"{param}: expected one input and an output blob, found {inputs} and {outputs}")
        h, w = (int(v) for v in meta["imgsz"])
        # inputs stay float32 (base fp16=False); `half` demands an fp16 export, which holds
        # exactly when the metadata says half, so the base only refuses a float32 export
        super().__init__(meta, path, torch.device("cpu"), (1, 3, h, w), False, half and not fp16)
        self.net = net
        self.threads = opt.num_threads
        self.precision = "fp16" if fp16 else "fp32"
        self.input_name, self.output_name = inputs[0], outputs[0]
        self._ncnn = ncnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``float32 [1, 3, H, W]`` -> ``float32 [1, N, 5 + nc]``."""
        image = np.ascontiguousarray(x[0].detach().cpu().numpy(), dtype=np.float32)  # (3, H, W): ncnn's c, h, w
        with self.net.create_extractor() as ex:
            ex.input(self.input_name, self._ncnn.Mat(image))
            ret, out = ex.extract(self.output_name)
            if ret != 0:
                raise EfyoloError(f"{self.source}: ncnn failed to compute {self.output_name} (error {ret})")
            y = np.array(out, dtype=np.float32, copy=True)  # (N, 5 + nc), out of ncnn's memory before it goes
        return torch.from_numpy(y).unsqueeze(0)  # ncnn has no batch axis: add it back

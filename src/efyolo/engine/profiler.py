"""Parameters, GFLOPs and CPU/GPU latency of a model (``efyolo profile``)."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from efyolo.errors import EfyoloError
from efyolo.utils.checks import check_imgsz

# The model zoo shown by `efyolo profile` without --model and in the README: YOLOv5, then each
# backbone family at the nano and small scales (timm pairings only where timm is installed).
ZOO = (
    "yolov5n",
    "yolov5s",
    "yolov5m",
    "yolov5l",
    "yolov5x",
    "yolov5n-efficientformer-n0",
    "yolov5n-efficientformer-l0",
    "yolov5s-efficientformer-l1",
    "yolov5s-efficientformer-l3",
    "yolov5s-efficientformer-l7",
    "yolov5n-efficientformerv2-s0",
    "yolov5s-efficientformerv2-s1",
    "yolov5s-efficientformerv2-s2",
    "yolov5s-efficientformerv2-l",
)
TIMM_ZOO = (
    "yolov5n-timm:mobilenetv3_large_100",
    "yolov5n-timm:lcnet_100",
    "yolov5n-timm:mobilenetv3_small_100",
    "yolov5n-timm:ghostnet_100",
)


def zoo_models() -> list[str]:
    """The zoo's model names; the timm pairings only when timm is importable."""
    import importlib.util

    return list(ZOO) + (list(TIMM_ZOO) if importlib.util.find_spec("timm") else [])


@dataclass
class Profile:
    model: str
    params: int
    gflops: float  # 2 x MACs of convolutions and matmuls (torch.utils.flop_counter)
    imgsz: list[int]  # [h, w]
    batch: int
    latency_ms: float  # median over `runs` timed forwards, fused model, eval mode
    latency_runs: int
    threads: int
    device: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_gflops(model: nn.Module, x: torch.Tensor) -> float:
    """GFLOPs (2 x multiply-accumulates) of one forward pass on ``x``."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def measure_latency(model: nn.Module, x: torch.Tensor, runs: int = 10, warmup: int = 3) -> float:
    """Median wall time of ``runs`` forward passes in milliseconds, after ``warmup`` passes."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def profile_model(
    model: str | Path | nn.Module,
    imgsz: int | Sequence[int] = 640,
    batch: int = 1,
    runs: int = 10,
    warmup: int = 3,
    device: str | torch.device = "cpu",
    name: str | None = None,
    half: bool = False,
) -> Profile:
    """Profile a model: parameter count (unfused), GFLOPs and median latency (fused, eval mode).

    Args:
        model: a model name or YAML path (built with ``build_model``) or a module.
        imgsz: input size, one int for square or ``(h, w)``; multiples of 32.
        batch: batch size of the timed input.
        runs: timed forward passes (the median is reported); at least 1.
        warmup: untimed passes before timing.
        device: ``"cpu"`` or a CUDA device.
        half: time in float16 (CUDA only; parameters and GFLOPs are counted as usual).
    """
    from efyolo.models import build_model

    if runs < 1 or batch < 1:
        raise EfyoloError(f"runs ({runs}) and batch ({batch}) must be positive")
    h, w = check_imgsz(imgsz, 32)
    label = name or (str(model) if not isinstance(model, nn.Module) else type(model).__name__)
    net = build_model(model) if not isinstance(model, nn.Module) else model
    device = torch.device(device)
    if half and device.type != "cuda":
        raise EfyoloError(f"half-precision profiling needs a CUDA device; got {device}")
    net = net.to(device).eval()
    params = sum(p.numel() for p in net.parameters())
    x = torch.zeros(batch, 3, h, w, device=device)
    gflops = count_gflops(net, x[:1])
    if hasattr(net, "fuse"):
        net.fuse()
    if half:
        net, x = net.half(), x.half()
    latency = measure_latency(net, x, runs=runs, warmup=warmup)
    return Profile(
        model=label,
        params=params,
        gflops=round(gflops, 3),
        imgsz=[h, w],
        batch=batch,
        latency_ms=round(latency, 2),
        latency_runs=runs,
        threads=torch.get_num_threads(),
        device=str(device) + (" fp16" if half else ""),
    )


def format_table(profiles: Sequence[Profile]) -> str:
    """A fixed-width table: model, params (M), GFLOPs, size, batch, latency."""
    width = max([30] + [len(p.model) for p in profiles])
    header = f"{'model':<{width}} {'params (M)':>10} {'GFLOPs':>8} {'imgsz':>9} {'batch':>5} {'latency (ms)':>12}"
    lines = [header, "-" * len(header)]
    for p in profiles:
        size = f"{p.imgsz[0]}x{p.imgsz[1]}"
        lines.append(
            f"{p.model:<{width}} {p.params / 1e6:>10.3f} {p.gflops:>8.2f} {size:>9} {p.batch:>5} {p.latency_ms:>12.1f}"
        )
    if profiles:
        lines.append(
            f"latency: median of {profiles[0].latency_runs} runs after warm-up, fused, eval mode, "
            f"{profiles[0].device}, {profiles[0].threads} threads (torch {torch.__version__})"
        )
    return "\n".join(lines)

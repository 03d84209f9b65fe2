"""``efyolo benchmark``: each export format's size, mAP and latency, and the model-zoo comparison.

Latency everywhere is the median of ``runs`` (default 20) timed batch-1 forward passes after
``warmup`` untimed ones, on a random ``[1, 3, H, W]`` input, through the same backend objects
that ``Detector`` uses; ONNX Runtime and OpenVINO get the same intra-op thread count as torch.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from efyolo.errors import EfyoloError

# a format, optionally with a precision: "onnx", "onnx:int8", "litert:fp16", "ncnn:fp16"
FORMATS = ("pytorch", "torchscript", "onnx", "openvino", "coreml", "litert", "ncnn")
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_FORMATS = ("pytorch", "torchscript", "onnx", "onnx:int8", "openvino", "openvino:int8", "litert",
                   "litert:fp16", "litert:int8", "ncnn", "ncnn:fp16")


def parse_format(item: str) -> tuple[str, str]:
    """``"onnx:int8"`` -> ``("onnx", "int8")``; a bare name is float32. Unknown names raise."""
    from efyolo.export.exporter import check_format

    name, _, prec = str(item).strip().lower().partition(":")
    prec = prec or "fp32"
    if prec not in PRECISIONS:
        raise EfyoloError(f"benchmark format {item!r}: precision must be one of {', '.join(PRECISIONS)}")
    return (name if name == "pytorch" else check_format(name)), prec


@dataclass
class FormatRow:
    """One line of the format table; ``None`` where the column does not apply (see ``status``)."""

    format: str
    precision: str = "fp32"
    file: str | None = None
    size_mb: float | None = None
    map: float | None = None  # mAP50-95 on the data's split
    map50: float | None = None
    latency_ms: float | None = None
    status: str = "ok"


@dataclass
class ZooRow:
    """One model of the zoo comparison (no weights: a freshly built, fused model)."""

    model: str
    params: int
    gflops: float  # 2 x MACs of convolutions and matmuls, unfused (as efyolo profile)
    pytorch_ms: float | None
    onnx_ms: float | None
    onnx_gflops_per_s: float | None  # gflops / onnx latency: how well the runtime uses the machine
    status: str = "ok"


@dataclass
class Report:
    """Rows plus the conditions they were measured under."""

    rows: list[Any]
    imgsz: list[int]
    batch: int
    runs: int
    warmup: int
    threads: int
    device: str
    machine: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    data: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows"] = [asdict(r) for r in self.rows]
        return out


def matmul_gflops(size: int = 2048, runs: int = 5) -> float:
    """The machine's float32 matrix-product speed in GFLOP/s (torch, current thread count).

    A calibration for benchmark records: the speed of a shared 2-core machine varies between days
    (the reference measurements' day: 158 GFLOP/s; 75-107 on 2026-11-28), and latencies from different days
    compare only after scaling by it.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    t0 = time.perf_counter()
    for _ in range(runs):
        a @ b
    return 2 * size**3 * runs / (time.perf_counter() - t0) / 1e9


def machine_info() -> dict[str, Any]:
    """CPU model, core count, load averages and library versions, for the record.

    Reads ``/proc/cpuinfo`` rather than calling ``platform.processor()``, which spawns ``uname``:
    a (v)forked child of a process holding OpenVINO and ONNX Runtime thread pools has crashed the
    parent here (SIGSEGV, reproducible in the test suite).
    """
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__}
    if hasattr(os, "getloadavg"):
        info["load_avg"] = [round(v, 2) for v in os.getloadavg()]
    for module in ("onnxruntime", "openvino"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            pass
    return info


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` torch CPU threads (restored afterwards); yields the count in use."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def file_size_mb(path: str | Path) -> float:
    """Size of a file, or of everything in a folder (OpenVINO, CoreML), in MB (1e6 bytes)."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 2)


def time_backend(backend: Any, imgsz: Sequence[int], runs: int, warmup: int) -> float:
    """Median batch-1 latency (ms) of ``backend`` on a random input of ``imgsz`` = ``(h, w)``."""
    from efyolo.engine.profiler import measure_latency

    x = torch.rand(1, 3, int(imgsz[0]), int(imgsz[1]), device=backend.device)
    return round(measure_latency(backend, x, runs=runs, warmup=warmup), 2)


def _check_runs(runs: int, warmup: int) -> None:
    if runs < 1 or warmup < 0:
        raise EfyoloError(f"runs ({runs}) must be positive and warmup ({warmup}) not negative")


def benchmark_formats(
    weights: str | Path,
    data: str | Path | None = None,
    imgsz: int | Sequence[int] | None = None,
    formats: Sequence[str] = DEFAULT_FORMATS,
    runs: int = 20,
    warmup: int = 5,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    split: str = "val",
) -> Report:
    """Export ``weights`` to each format (next to the weights), then measure each one.

    Args:
        weights: ``.pt`` checkpoint.
        data: dataset YAML for the mAP columns (``None``: no mAP).
        imgsz: size, one int or ``(h, w)`` (default: the checkpoint's).
        formats: from :data:`FORMATS` (``pytorch`` is the checkpoint itself).
        runs, warmup: timed and untimed forward passes.
        threads: CPU threads for torch, ONNX Runtime and OpenVINO (default torch's).
        device: ``cpu`` or a CUDA device (PyTorch, TorchScript and ONNX Runtime use it).
        split: the data split to score.

    Returns:
        A :class:`Report` of :class:`FormatRow`; a format that cannot run here (missing package,
        CoreML off macOS) keeps its row with the reason in ``status``.
    """
    from efyolo.utils.checks import check_imgsz
    from efyolo.runtime.autobackend import load_backend
    from efyolo.utils.devices import select_device
    from efyolo.export.exporter import export_model

    _check_runs(runs, warmup)
    jobs = [parse_format(f) for f in formats]
    dev = select_device(device)
    rows = []
    with torch_threads(threads) as n_threads:
        reference = load_backend(weights, dev)
        size = check_imgsz(imgsz if imgsz is not None else getattr(reference, "imgsz", None) or 640, reference.stride)
        for fmt, prec in jobs:
            row = FormatRow(fmt, prec)
            try:
                if prec == "int8" and data is None:
                    raise EfyoloError("INT8 needs --data to calibrate on")
                if fmt == "pytorch" and prec != "fp32":
                    raise EfyoloError("the PyTorch row is the float32 checkpoint")
                path = Path(weights) if fmt == "pytorch" else export_model(
                    weights, fmt, imgsz=size, device=dev, half=prec == "fp16", int8=prec == "int8", data=data,
                    output=bench_path(weights, fmt, prec))
                row.file, row.size_mb = str(path), file_size_mb(path)
                if fmt == "coreml":
                    row.status = "exported; CoreML runs on Apple devices only"
                    rows.append(row)
                    continue
                backend = reference if fmt == "pytorch" else load_backend(path, dev)
                row.latency_ms = time_backend(backend, size, runs, warmup)
                if data is not None:
                    metrics = _validate(path, data, size, dev, split)
                    row.map, row.map50 = round(metrics["map"], 4), round(metrics["map50"], 4)
            except EfyoloError as err:
                row.status = f"skipped: {err}"
            rows.append(row)
    return Report(rows, list(size), 1, runs, warmup, n_threads, str(dev), machine_info(), str(weights),
                  str(data) if data is not None else None)


def bench_path(weights: str | Path, fmt: str, prec: str) -> Path:
    """Benchmark exports go next to the weights with the precision in the name (``best_fp16_ncnn_model``)."""
    from efyolo.export.formats import get_format

    weights = Path(weights)
    tag = "" if prec == "fp32" else f"_{prec}"
    return weights.with_name(weights.stem + tag + get_format(fmt).suffix)


def _validate(path: Path, data: str | Path, size: tuple[int, int], device: torch.device, split: str) -> dict[str, Any]:
    """mAP of one exported file on ``split``, batch 1, nothing printed or kept."""
    from efyolo.engine.validator import validate_model

    with tempfile.TemporaryDirectory(prefix="efyolo-bench-") as tmp:
        return validate_model(
            path, data, imgsz=max(size), batch=1, device=str(device), split=split, project=tmp, plots=False,
            quiet=True,
        )


def benchmark_models(
    models: Sequence[str],
    imgsz: int | Sequence[int] = 640,
    runs: int = 20,
    warmup: int = 5,
    threads: int | None = None,
) -> Report:
    """The model-zoo comparison on CPU: params, GFLOPs, PyTorch and ONNX Runtime batch-1 latency.

    Models are built untrained (80 classes), fused, and exported to a temporary ONNX file at a
    fixed size (EfficientFormer's attention bias becomes a constant).
    """
    from efyolo.runtime.pytorch import PyTorchBackend
    from efyolo.engine.profiler import count_gflops
    from efyolo.utils.checks import check_imgsz
    from efyolo.export.exporter import prepare_model
    from efyolo.models import build_model

    _check_runs(runs, warmup)
    size = check_imgsz(list(imgsz) if not isinstance(imgsz, int) else imgsz, 32)
    cpu = torch.device("cpu")
    rows = []
    with torch_threads(threads) as n_threads:
        for name in models:
            model = build_model(name).eval()
            params = sum(p.numel() for p in model.parameters())
            gflops = count_gflops(model, torch.zeros(1, 3, *size))
            backend = PyTorchBackend(prepare_model(model, cpu), cpu, fuse=False, copy=False)
            row = ZooRow(name, params, round(gflops, 4), time_backend(backend, size, runs, warmup), None, None)
            try:
                row.onnx_ms = _onnx_latency(backend.model, size, runs, warmup, n_threads)
                row.onnx_gflops_per_s = round(gflops / row.onnx_ms * 1e3, 1)
            except EfyoloError as err:
                row.status = f"onnx skipped: {err}"
            rows.append(row)
    return Report(rows, list(size), 1, runs, warmup, n_threads, "cpu", machine_info())


def _onnx_latency(model: torch.nn.Module, size: tuple[int, int], runs: int, warmup: int, threads: int) -> float:
    from efyolo.runtime.exported import OnnxRuntimeBackend
    from efyolo.export.exporter import export_module

    with tempfile.TemporaryDirectory(prefix="efyolo-zoo-") as tmp:
        path = export_module(model, "onnx", Path(tmp) / "model.onnx", list(model.names), size)
        backend = OnnxRuntimeBackend(path, torch.device("cpu"), threads=threads)
        return time_backend(backend, size, runs, warmup)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: Report) -> str:
    """A fixed-width table of a :class:`Report` and a footer with the measuring conditions."""
    lines = []
    if report.rows and isinstance(report.rows[0], ZooRow):
        width = max([30] + [len(r.model) for r in report.rows])
        header = f"{'model':<{width}} {'params (M)':>10} {'GFLOPs':>8} {'PyTorch ms':>10} {'ONNX RT ms':>10} {'GFLOP/s':>8}"
        lines += [header, "-" * len(header)]
        for r in report.rows:
            lines.append(
                f"{r.model:<{width}} {r.params / 1e6:>10.3f} {r.gflops:>8.2f} {_fmt(r.pytorch_ms, '.1f'):>10} "
                f"{_fmt(r.onnx_ms, '.1f'):>10} {_fmt(r.onnx_gflops_per_s, '.1f'):>8}"
                + ("" if r.status == "ok" else f"  {r.status}")
            )
    else:
        header = f"{'format':<12} {'precision':<9} {'size (MB)':>9} {'mAP50-95':>8} {'mAP50':>7} {'latency (ms)':>12}  status"
        lines += [header, "-" * len(header)]
        for r in report.rows:
            lines.append(
                f"{r.format:<12} {r.precision:<9} {_fmt(r.size_mb, '.1f'):>9} {_fmt(r.map, '.4f'):>8} {_fmt(r.map50, '.4f'):>7} "
                f"{_fmt(r.latency_ms, '.1f'):>12}  {r.status}"
            )
    m = report.machine
    lines.append(
        f"latency: median of {report.runs} runs after {report.warmup} warm-up, batch {report.batch}, "
        f"{report.imgsz[0]}x{report.imgsz[1]}, {report.device}, {report.threads} threads; "
        f"{m.get('cpu', '?')} ({m.get('cores', '?')} cores, load {m.get('load_avg', '?')}), torch {m.get('torch', '?')}"
        + (f", onnxruntime {m['onnxruntime']}" if "onnxruntime" in m else "")
        + (f", openvino {m['openvino']}" if "openvino" in m else "")
    )
    return "\n".join(lines)

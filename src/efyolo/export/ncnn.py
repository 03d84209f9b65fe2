"""ncnn export through pnnx: TorchScript trace -> pnnx graph -> ncnn ``.param`` (text) + ``.bin``.

Layout of ``<stem>_ncnn_model/``: ``model.ncnn.param`` (the graph), ``model.ncnn.bin`` (the
weights, float16 with ``half``) and ``metadata.yaml`` (the efyolo metadata: ncnn files have no
place for it). The input blob is ``in0`` (``[3, H, W]``, ncnn has no batch axis), the output
``out0`` (``[N, 5 + nc]``).

pnnx runs its own binary on a trace of the model and leaves what it cannot convert in the graph
as layers ncnn does not know (``pnnx.Expression``, ``Tensor.slice``, ``aten::clamp_min``); those
are caught here, after conversion, and named. Three rewrites (same values) avoid them:

* the pooling mixers become depthwise convolutions (:func:`efyolo.export.fold.rewrite_pool_mixers`):
  pnnx has no ``aten::lerp``;
* EfficientFormerV2's strided query sample ``x[..., ::2, ::2]`` becomes a 1x1 max pool of stride 2
  (the same elements): ncnn's Crop has no step ("slice with step 2 is not supported");
* while tracing, the attention softmax floors its logits with ``clamp(min=...)``, which pnnx turns
  into ncnn's Clip, instead of ``clamp_min``, which it does not convert.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from efyolo.errors import EfyoloError
from efyolo.export.formats import ExportFormat, ExportJob, register
from efyolo.export.metadata import validate
from efyolo.export.onnx import quiet_tracing
from efyolo.export.requires import require
from efyolo.utils.capture import captured_output

PARAM, BIN, SIDECAR = "model.ncnn.param", "model.ncnn.bin", "metadata.yaml"
PARAM_MAGIC = "7767517"  # first line of every ncnn .param file
# pnnx output lines that carry a problem (the rest is progress: "############# pass_level2", ...)
_PROBLEM = re.compile(
    r"error|fail|not supported|unsupported|cannot|can't|invalid|abort|exception|segmentation", re.IGNORECASE
)


def last_problem(text: str) -> str | None:
    """The last line of pnnx/ncnn output that reports a problem, if any (settings echoes such as
    ``pnnxparam = ...`` hold paths and are skipped)."""
    lines = [ln.strip() for ln in text.splitlines()]
    problems = [ln for ln in lines if _PROBLEM.search(ln) and not re.match(r"^\w+ = ", ln)]
    return problems[-1] if problems else None


class StridedSampleQuery(nn.Module):
    """EfficientFormerV2's ``LocalGlobalQuery`` with ``x[..., ::2, ::2]`` as ``max_pool2d(x, 1, 2)``:
    a 1x1 window of stride 2 picks exactly those elements (``ceil(H/2) x ceil(W/2)``)."""

    def __init__(self, query: nn.Module) -> None:
        super().__init__()
        self.local = query.local  # depthwise conv3x3 s2
        self.proj = query.proj  # conv1x1 (+ BN, fused)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.local(x) + F.max_pool2d(x, 1, 2))


@torch.no_grad()
def rewrite_for_ncnn(model: nn.Module) -> int:
    """The module rewrites of the module docstring, in place (idempotent); returns how many."""
    from efyolo.export.fold import rewrite_pool_mixers
    from efyolo.models.efficientformer_v2 import LocalGlobalQuery

    count = rewrite_pool_mixers(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LocalGlobalQuery):
                setattr(parent, name, StridedSampleQuery(child))
                count += 1
    return count


@contextmanager
def softmax_floor_as_clip() -> Iterator[None]:
    """While tracing, :func:`~efyolo.models.attention_bias.softmax_without_subnormals` with
    ``clamp(min=-floor)`` (``aten::clamp``, ncnn Clip) in place of ``clamp_min`` (``aten::clamp_min``,
    which pnnx 20261020 leaves unconverted); the values are the same. Every efyolo module that
    imported the function by name gets the traceable one, and the original back afterwards."""
    from efyolo.models import attention_bias

    original: Callable[..., Tensor] = attention_bias.softmax_without_subnormals

    def traceable(logits: Tensor, dim: int = -1) -> Tensor:
        logits = logits - logits.amax(dim=dim, keepdim=True)  # the row maximum becomes 0
        return logits.clamp(min=-attention_bias.SOFTMAX_FLOOR).softmax(dim=dim)

    users = [
        m for name, m in list(sys.modules.items())
        if name.startswith("efyolo.") and getattr(m, "softmax_without_subnormals", None) is original
    ]
    for m in users:
        m.softmax_without_subnormals = traceable
    try:
        yield
    finally:
        for m in users:
            m.softmax_without_subnormals = original


def unsupported_layers(param: Path) -> dict[str, list[str]]:
    """``{layer type: [layer names]}`` of the layers in ``param`` that ncnn cannot run: pnnx's
    leftovers (types with ``.`` or ``::``: ``pnnx.Expression``, ``Tensor.slice``, ``aten::...``) and,
    when the ncnn package is installed, any type missing from its layer registry."""
    try:
        import ncnn

        def known(kind: str) -> bool:
            return ncnn.layer_to_index(kind) >= 0
    except ImportError:

        def known(kind: str) -> bool:
            return True  # the name test below still catches pnnx's leftovers
    bad: dict[str, list[str]] = {}
    for line in param.read_text(errors="replace").splitlines()[2:]:  # magic, "layers blobs", then layers
        fields = line.split()
        if len(fields) < 2:
            continue
        kind, name = fields[0], fields[1]
        if "." in kind or "::" in kind or not known(kind):
            bad.setdefault(kind, []).append(name)
    return bad


def export_ncnn(
    model: nn.Module,
    example: torch.Tensor,
    out_dir: str | Path,
    metadata: Mapping[str, Any],
    half: bool = False,
) -> Path:
    """Write the ncnn model folder ``out_dir`` (replacing an earlier ncnn export there).

    Args:
        model: fused eval-mode detector on CPU, float32, attention bias constant
            (:func:`efyolo.export.fold.materialize_attention_bias`); rewritten in place
            (:func:`rewrite_for_ncnn`).
        example: float32 ``[1, 3, H, W]`` at the export size (ncnn runs one image per call).
        metadata: written to ``metadata.yaml``.
        half: store the weights in float16 (half the file; the runtime then uses fp16 storage).

    Returns:
        ``out_dir``.

    Raises:
        EfyoloError: pnnx failed (naming its last error), left layers ncnn cannot run (naming
            them), or ``out_dir`` exists and is not an ncnn model folder.
    """
    pnnx = require("pnnx", "ncnn export")
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)  # before minutes of conversion
    rewrite_for_ncnn(model)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
        work, build = Path(tmp) / "pnnx", Path(tmp) / "model"  # pnnx's side files; the folder to publish
        work.mkdir()
        build.mkdir()  # not tmp itself: mkdir gives the umask's mode, TemporaryDirectory 0700
        pt = work / "model.pt"
        param, weights = build / PARAM, build / BIN
        error: Exception | None = None
        with captured_output() as out, torch.no_grad(), quiet_tracing(), softmax_floor_as_clip():
            try:
                pnnx.export(
                    model, str(pt), inputs=example, fp16=bool(half), check_trace=False,
                    ncnnparam=str(param), ncnnbin=str(weights), ncnnpy=str(work / "model_ncnn.py"),
                )
            except Exception as err:  # noqa: BLE001  (pnnx raises bare Exceptions, import and syntax errors)
                error = err
            finally:
                # convert() imports the generated PyTorch file under its path as a module name
                sys.modules.pop(str(work / "model_pnnx"), None)
        if not (param.is_file() and weights.is_file()):
            detail = last_problem(out.text) or (_first_line(error) if error else "no error reported")
            raise EfyoloError(f"pnnx could not convert the model to ncnn: {detail}")
        # An exception with both files written comes from pnnx's last step (re-importing the
        # PyTorch code it generated, which is invalid Python where an op was left unconverted):
        # the layer check names such ops.
        bad = unsupported_layers(param)
        if bad:
            layers = "; ".join(f"{kind} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                               for kind, names in bad.items())
            said = last_problem(out.text)
            raise EfyoloError(
                f"pnnx left layers ncnn cannot run: {layers}" + (f"; pnnx said: {said}" if said else "")
            )
        if param.read_text(errors="replace").split("\n", 1)[0].strip() != PARAM_MAGIC:
            raise EfyoloError(f"pnnx wrote {param.name} without the ncnn magic {PARAM_MAGIC}")
        (build / SIDECAR).write_text(yaml.safe_dump(dict(metadata), sort_keys=False))
        _publish(build, out_dir, Path(tmp) / "previous")
    return out_dir


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300]}" if text else type(err).__name__


def _is_ncnn_folder(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.param"))


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.exists() and not _is_ncnn_folder(out_dir):
        raise EfyoloError(f"{out_dir} exists and is not an ncnn model folder; move it away first")


def _publish(build: Path, out_dir: Path, aside: Path) -> None:
    """Rename ``build`` to ``out_dir``; an earlier export there is first moved ``aside`` (into the
    temporary folder, deleted with it) and put back if the rename fails, so ``out_dir`` always
    holds one whole model or nothing new."""
    _check_replaceable(out_dir)  # again: something may have appeared there during conversion
    if out_dir.exists():
        out_dir.rename(aside)
    try:
        build.rename(out_dir)
    except OSError:
        if aside.exists():
            aside.rename(out_dir)
        raise


def find_ncnn_files(path: str | Path) -> tuple[Path, Path]:
    """``(param, bin)`` of an ncnn model given as its folder or its ``.param`` file.

    Raises:
        EfyoloError: naming the folder and what is missing (no ``.param``, several, or no ``.bin``).
    """
    path = Path(path)
    if path.is_file():
        param, folder = path, path.parent
    else:
        folder = path
        if not folder.is_dir():
            raise EfyoloError(f"{folder}: no such ncnn model folder")
        params = sorted(folder.glob("*.ncnn.param")) or sorted(folder.glob("*.param"))
        if len(params) != 1:
            raise EfyoloError(f"{folder}: expected one ncnn .param file in the folder, found {len(params)}")
        param = params[0]
    weights = param.with_suffix(".bin")  # model.ncnn.param -> model.ncnn.bin
    if not weights.is_file():
        raise EfyoloError(f"{folder}: the ncnn weights {weights.name} (beside {param.name}) are missing")
    return param, weights


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """The validated efyolo metadata of an ncnn model folder (its ``metadata.yaml``).

    Raises:
        EfyoloError: naming the file when it is missing, not YAML, or not efyolo metadata.
    """
    sidecar = Path(folder) / SIDECAR
    if not sidecar.is_file():
        raise EfyoloError(
            f"{sidecar} is missing: the ncnn model carries no efyolo metadata (class names, stride); "
            "export it with `efyolo export`"
        )
    try:
        meta = yaml.safe_load(sidecar.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise EfyoloError(f"{sidecar} is not readable YAML ({str(err).strip().splitlines()[0]})") from None
    return validate(meta, str(sidecar))


def write(job: ExportJob) -> Path:
    """The registered writer (``--half``: float16 weights in the ``.bin``)."""
    if job.example.shape[0] != 1:
        raise EfyoloError("ncnn runs one image per call: export it with --batch 1")
    return export_ncnn(job.model, job.example, job.path, job.metadata, job.half)


FORMAT = register(ExportFormat("ncnn", "_ncnn_model", write, half="cpu", packages=("pnnx", "ncnn")))

"""Fine-tuning starts: copy the tensors of a checkpoint that fit a (possibly different) model.

Same architecture: every tensor whose name and shape match (the Detect convs drop out when the
class count changes). Different architecture (``--model yolov5s-efficientformerv2-s1 --weights
yolov5s.pt``): the two configs' rows are aligned from the end, where both have YOLOv5's neck and
Detect head, for as long as their module names agree (Detect, C3, Concat, Conv, ... back to SPPF).
A tensor ``model.{i}.<rest>`` of the source goes to ``model.{j}.<rest>`` of the aligned row and is
copied when the shapes match; the rows before the alignment (the source's own backbone) are left
alone, so the ``--backbone-weights`` file provides the backbone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_ROW_KEY = re.compile(r"^model\.(\d+)\.(.+)$")


@dataclass
class TransferReport:
    copied: int  # tensors copied
    total: int  # tensors of the target model
    rows: dict[int, int]  # source row -> target row, for the rows that were aligned
    same_architecture: bool

    def summary(self, source: str) -> str:
        line = f"Transferred {self.copied}/{self.total} tensors from {source}"
        if not self.same_architecture and self.rows:
            src, dst = sorted(self.rows), sorted(self.rows.values())
            line += (f" (another architecture: its rows {src[0]}-{src[-1]} (neck and head) matched to rows "
                     f"{dst[0]}-{dst[-1]}; the backbone is not taken from it)")
        return line


def config_rows(cfg: dict[str, Any]) -> list[str]:
    """The module name of every row (backbone then head): ``["Conv", "Conv", "C3", ...]``."""
    rows = [*(cfg.get("backbone") or []), *(cfg.get("head") or [])]
    return [str(r[2]).removeprefix("torch.") if isinstance(r, (list, tuple)) and len(r) == 4 else "?" for r in rows]


def align_rows(source: list[str], target: list[str]) -> dict[int, int]:
    """Pair rows from the end while the module names agree: ``{source row: target row}``."""
    pairs = {}
    i, j = len(source) - 1, len(target) - 1
    while i >= 0 and j >= 0 and source[i] == target[j]:
        pairs[i] = j
        i, j = i - 1, j - 1
    return pairs


def transfer_weights(model: nn.Module, state_dict: dict[str, torch.Tensor],
                     source_config: dict[str, Any] | None = None) -> TransferReport:
    """Load the tensors of ``state_dict`` that fit ``model`` (see the module docstring)."""
    own = model.state_dict()
    src_rows = config_rows(source_config) if source_config else None
    dst_rows = config_rows(model.yaml) if hasattr(model, "yaml") else None
    same = src_rows is None or dst_rows is None or src_rows == dst_rows
    rows: dict[int, int] = {}
    if same:
        renamed = dict(state_dict)
    else:
        rows = align_rows(src_rows, dst_rows)
        renamed = {}
        for key, tensor in state_dict.items():
            m = _ROW_KEY.match(key)
            if m and int(m.group(1)) in rows:
                renamed[f"model.{rows[int(m.group(1))]}.{m.group(2)}"] = tensor
    matched = {k: v for k, v in renamed.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    return TransferReport(copied=len(matched), total=len(own), rows=rows, same_architecture=same)

"""PyTorch DDP plumbing: the process's rank from torchrun's environment, and rank-0-only helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int  # global rank, -1 when not distributed
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank in (-1, 0)

    @property
    def enabled(self) -> bool:
        return self.rank >= 0


def dist_info() -> DistInfo:
    """Read ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` as set by ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistInfo(-1, -1, 1)
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), world)


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group: NCCL on GPUs, gloo on CPU."""
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s object on every rank (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

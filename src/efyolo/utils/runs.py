"""Run directories numbered like YOLOv5's: ``runs/val/exp``, ``exp2``, ``exp3``..."""

from __future__ import annotations

import itertools
from pathlib import Path


def increment_path(path: str | Path, exist_ok: bool = False, sep: str = "", mkdir: bool = False) -> Path:
    """The first free path among ``path``, ``path{sep}2``, ``path{sep}3``...

    Args:
        path: the wanted path, e.g. ``runs/val/exp``; an existing file keeps its suffix at the
            end (``out.json`` -> ``out2.json``).
        exist_ok: return ``path`` itself even when it exists.
        sep: put between the stem and the number.
        mkdir: create the resulting directory (with parents). Creation is what claims a number,
            so two processes started together get different directories.

    Returns:
        The path chosen.
    """
    path = Path(path)
    if exist_ok:
        if mkdir:
            path.mkdir(parents=True, exist_ok=True)
        return path
    stem, suffix = (path.with_suffix(""), path.suffix) if path.is_file() else (path, "")
    for n in itertools.count(1):
        candidate = path if n == 1 else Path(f"{stem}{sep}{n}{suffix}")
        if candidate.exists():
            continue
        if not mkdir:
            return candidate
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:  # taken meanwhile by another process
            continue
    raise AssertionError("unreachable")

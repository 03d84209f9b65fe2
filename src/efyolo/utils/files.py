"""Writing files safely: a temporary file beside the target, renamed into place, with normal permissions.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, so a checkpoint or an
export renamed from it would be unreadable to the user's group, unlike every other file the run
writes. :func:`temp_file_beside` gives the temporary file the mode a plain ``open(path, "w")``
would have (0666 less the umask) before anything is written to it.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` less the process umask."""
    with _UMASK_LOCK:  # os.umask can only be read by setting it; keep other threads out meanwhile
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def temp_file_beside(path: str | Path) -> tuple[int, str]:
    """``(fd, tmp)``: an open temporary file ``.<name>.<random>.tmp`` in ``path``'s folder.

    Same folder, so that ``os.replace(tmp, path)`` is an atomic rename; hidden name, so that a
    killed writer's leftover is recognisable (:func:`remove_stale_temps`).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())
    except (AttributeError, OSError):  # no fchmod (Windows): keep mkstemp's mode
        pass
    return fd, tmp


def remove_stale_temps(folder: str | Path, name: str) -> list[Path]:
    """Delete ``folder/.<name>.*.tmp`` left by a writer that was killed; returns what was removed.

    Only call this where no other process writes ``name`` at the same time (a run's own
    ``weights/`` folder, from the process that owns the run).
    """
    removed = []
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically, as :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any, indent: int | None = None) -> Path:
    """Write JSON to a temporary file next to ``path`` and rename it into place."""
    return write_text_atomic(path, json.dumps(data, indent=indent))

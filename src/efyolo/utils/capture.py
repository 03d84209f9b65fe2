"""Capturing what native code prints: converters (pnnx, litert-torch/MLIR) write to file descriptors
1 and 2 directly, past ``sys.stdout``, so silencing them and keeping their message for an error
needs the descriptors redirected."""

from __future__ import annotations

import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass


@dataclass
class Captured:
    """What native code and Python printed while :func:`captured_output` was active."""

    text: str = ""


@contextmanager
def captured_output() -> Iterator[Captured]:
    """Send file descriptors 1 and 2 to a temporary file and ``sys.stdout`` / ``sys.stderr`` to a
    buffer: a converter prints from Python (rich progress lines, ``logging``, tqdm bars) and from
    MLIR/absl C++. Python warnings are muted. Where descriptors 1/2 cannot be duplicated, only the
    Python-level output is captured."""
    captured = Captured()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        python = io.StringIO()  # sys.stdout need not be descriptor 1 (pytest, notebooks)
        try:
            saved = (os.dup(1), os.dup(2))
        except OSError:  # no descriptors 1/2 (a detached process): Python-level output only
            with redirect_stdout(python), redirect_stderr(python):
                yield captured
            captured.text = python.getvalue()
            return
        with tempfile.TemporaryFile() as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                with redirect_stdout(python), redirect_stderr(python):
                    yield captured
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
                log.seek(0)
                captured.text = python.getvalue() + log.read().decode(errors="replace")

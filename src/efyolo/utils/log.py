"""The one output channel: the ``efyolo`` logger.

Library code only ever calls ``LOGGER.info/warning(...)`` (progress bars stay tqdm, on stderr) and
never configures logging when it is imported. The entry points (the ``efyolo`` command,
``efyolo.train``, ``efyolo.val``) call :func:`setup_logging` when they start:

* the logger's level becomes INFO (WARNING with ``quiet``);
* if the application has configured no logging of its own (the root logger has no handler but
  pytest's capturing ones), two handlers are added: INFO lines to standard output, warnings and
  errors to standard error, as plain text. An application that configured logging gets the
  records through its own handlers (they propagate to the root as usual), nothing printed twice.

The streams are looked up when a record is written, not when the handler is made, so redirecting
``sys.stdout`` (pytest's ``capsys``, ``contextlib.redirect_stdout``) redirects efyolo's output too.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

LOGGER = logging.getLogger("efyolo")


class _ConsoleHandler(logging.StreamHandler):
    """A handler that writes to ``sys.stdout`` or ``sys.stderr`` as they are when it writes."""

    def __init__(self, stream_name: str, levels: tuple[int, int]) -> None:
        super().__init__(getattr(sys, stream_name))
        self.stream_name = stream_name
        self.levels = levels
        self.setFormatter(logging.Formatter("%(message)s"))
        self.addFilter(lambda record: levels[0] <= record.levelno < levels[1])

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = getattr(sys, self.stream_name)
        super().emit(record)


def _ours() -> list[_ConsoleHandler]:
    return [h for h in LOGGER.handlers if isinstance(h, _ConsoleHandler)]


def setup_logging(quiet: bool = False, info_to_stderr: bool = False) -> None:
    """Show efyolo's INFO messages (or only its warnings with ``quiet``); idempotent.

    Args:
        quiet: only warnings and errors.
        info_to_stderr: INFO lines to standard error too (for commands whose standard output is
            data, such as ``efyolo val --json``).
    """
    LOGGER.setLevel(logging.WARNING if quiet else logging.INFO)
    for handler in _ours():
        LOGGER.removeHandler(handler)
    if _application_logs():
        return  # records propagate to the application's own handlers
    LOGGER.addHandler(_ConsoleHandler("stderr" if info_to_stderr else "stdout", (logging.DEBUG, logging.WARNING)))
    LOGGER.addHandler(_ConsoleHandler("stderr", (logging.WARNING, logging.CRITICAL + 1)))


def _application_logs() -> bool:
    """Whether the root logger has a handler of the application's (pytest's capture handlers,
    which only record, do not count: under pytest efyolo prints as it does for a user)."""
    return any(not type(h).__module__.startswith("_pytest") for h in logging.getLogger().handlers)


def reset_logging() -> None:
    """Undo :func:`setup_logging` (tests; an application that wants the defaults back)."""
    for handler in _ours():
        LOGGER.removeHandler(handler)
    LOGGER.setLevel(logging.NOTSET)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Only warnings from efyolo inside the block (a benchmark's inner validations, say)."""
    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)

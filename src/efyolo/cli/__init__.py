"""The ``efyolo`` command line: a thin dispatcher over the library.

Each subcommand lives in its own module (``efyolo.cli.<name>``) exposing
``add_parser(subparsers)`` and ``run(args) -> int``. This module only parses the first word,
delegates, and maps :class:`efyolo.errors.EfyoloError` to one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Before torch is imported: let idle OpenMP threads sleep instead of spinning. On a 2-core machine
# the spinning threads starve the DataLoader workers and any other process: measured (2 cores,
# torch 2.14.1) training yolov5n-efficientformer-l0 at 256 went from 8.7 to 15.1 images/s, and
# `efyolo profile` of yolov5n beside another busy process from 2745 ms to 252 ms. A value set by
# the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from efyolo.errors import EfyoloError

# Subcommand name -> module under efyolo.cli. Modules are imported lazily so that
# `efyolo profile` does not pay for importing the training stack.
SUBCOMMANDS = {
    "profile": "efyolo.cli.profile",
    "val": "efyolo.cli.val",
    "convert": "efyolo.cli.convert",
    "synth": "efyolo.cli.synth",
    "train": "efyolo.cli.train",
    "detect": "efyolo.cli.detect",
    "export": "efyolo.cli.export",
    "benchmark": "efyolo.cli.benchmark",
    "compare": "efyolo.cli.compare",
}


def _available_subcommands() -> dict[str, object]:
    modules = {}
    for name, module_name in SUBCOMMANDS.items():
        try:
            modules[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:  # a real missing dependency inside the module
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    from efyolo import __version__

    parser = argparse.ArgumentParser(
        prog="efyolo", description="YOLOv5 object detection with EfficientFormer backbones.",
        epilog="`efyolo COMMAND --help` shows a command's options. Start with `efyolo train` "
        "(the built-in demo: synthetic data, no download).",
    )
    parser.add_argument("--version", action="version", version=f"efyolo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _available_subcommands().values():
        module.add_parser(subparsers)
    for sub in subparsers.choices.values():  # every command: one switch for the log's INFO lines
        sub.add_argument("-q", "--quiet", action="store_true", default=None,
                         help="show only warnings and errors (no progress lines)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `efyolo` alone: the usage and the commands, not an error
        parser.print_help()
        return 0
    from efyolo.utils.log import setup_logging

    # commands whose standard output is data (--json) keep their log lines on standard error
    setup_logging(quiet=bool(args.quiet), info_to_stderr=getattr(args, "json", None) is True)
    try:
        return int(args.func(args) or 0)
    except EfyoloError as err:
        print(f"efyolo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"efyolo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

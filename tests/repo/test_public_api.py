"""The public names stay importable from the top-level package, whatever moves inside it."""

from __future__ import annotations

import subprocess
import sys


def test_public_names_resolve() -> None:
    code = (
        "import efyolo, inspect\n"
        "assert callable(efyolo.train) and callable(efyolo.val) and inspect.isclass(efyolo.Detector)\n"
        "assert callable(efyolo.build_model) and callable(efyolo.build_backbone) and callable(efyolo.compare)\n"
        "assert callable(efyolo.export.export_model) and 'onnx' in efyolo.export.FORMATS\n"
        "assert issubclass(efyolo.EfyoloError, Exception) and efyolo.__version__\n"
        "assert sorted(dir(efyolo)) == sorted(efyolo.__all__)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_is_light() -> None:
    """``import efyolo`` and ``efyolo --help`` (every command's parser) load neither torch nor OpenCV."""
    code = ("import sys, efyolo, efyolo.cli; efyolo.cli.build_parser(); "
            "print('torch' in sys.modules, 'cv2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]

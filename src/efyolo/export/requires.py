"""Optional packages of the ``[export]`` extra, imported on demand with one clear message when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from efyolo.errors import EfyoloError


def require(module: str, purpose: str, extra: str = "export") -> ModuleType:
    """Import ``module`` or raise :class:`EfyoloError` naming the package and the install command.

    Args:
        module: importable name, e.g. ``"onnxruntime"``.
        purpose: what needs it, for the message, e.g. ``"ONNX export"``.
        extra: the pip extra that installs it (``export``, ``litert``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise EfyoloError(
            f"{purpose} needs the package '{module.split('.')[0]}' ({err}); "
            f'install it with: pip install "efyolo[{extra}]"'
        ) from None

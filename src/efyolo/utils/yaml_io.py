"""Reading a user's YAML file into a mapping, with one clear error naming the file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from efyolo.errors import EfyoloError


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """Parse ``path`` as YAML and return its top-level mapping.

    Args:
        path: the file.
        what: what the file is, for messages (``"model config"``, ``"dataset YAML"``, ...).

    Raises:
        EfyoloError: the file is missing, not text, not valid YAML (with the line), or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise EfyoloError(f"{what} {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise EfyoloError(f"{what} {path}{where}: malformed YAML ({problem})") from None
    except UnicodeDecodeError:
        raise EfyoloError(f"{what} {path} is not a text file") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise EfyoloError(f"{what} {path}: expected a mapping of keys, got {type(raw).__name__}")
    return raw


def read_json_file(path: str | Path, what: str) -> Any:
    """Parse a user's JSON file; one clear error naming the file (and line) when it cannot be read."""
    import json

    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise EfyoloError(f"{path}: {what} not found") from None
    except json.JSONDecodeError as err:
        raise EfyoloError(f"{path}: malformed JSON at line {err.lineno}: {err.msg}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise EfyoloError(f"{path}: cannot read: {err}") from None

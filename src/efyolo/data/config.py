"""The dataset YAML (YOLOv5's format) -> :class:`DataConfig`.

A dataset YAML looks like::

    path: ../datasets/shapes     # root; relative to this YAML's folder (default: the folder)
    train: images/train          # relative to path, or absolute
    val: [images/val, extra.txt] # a folder of images, a .txt list of image paths, or a list
    test: images/test            # optional
    names: [circle, square]      # or {0: circle, 1: square}
    nc: 2                        # optional; must agree with names

A split may also be a COCO instances JSON (``val: annotations/instances_val2017.json``); its images
folder is the key ``<split>_images`` (e.g. ``val_images: val2017``) or, without it, found by
convention (see :func:`efyolo.data.coco_json.coco_images_dir`). With only COCO splits, ``names`` may be
left out: the categories of the first JSON, in ascending id order, give the class names.

Every mistake (file missing, malformed YAML, missing key, a path that does not exist, names and nc
that disagree) raises :class:`~efyolo.errors.EfyoloError` naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from efyolo.errors import EfyoloError
from efyolo.utils.yaml_io import read_yaml_mapping

SPLITS = ("train", "val", "test")


@dataclass
class DataConfig:
    """A parsed dataset YAML.

    Attributes:
        yaml_path: the YAML file.
        root: the resolved ``path`` key (the YAML's folder when absent).
        names: class names, index = class id.
        splits: ``{"train": [sources], "val": [...], ...}`` for the splits present; each source is
            an absolute path to a folder, a ``.txt`` list or a COCO ``.json``.
        images_dirs: ``{split: folder}`` from the ``<split>_images`` keys (COCO JSON splits).
        raw: the YAML mapping as read.
    """

    yaml_path: Path
    root: Path
    names: list[str]
    splits: dict[str, list[Path]]
    images_dirs: dict[str, Path] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def nc(self) -> int:
        """Number of classes."""
        return len(self.names)

    def split_sources(self, split: str) -> list[Path]:
        """The sources of ``split``; :class:`EfyoloError` naming the key when it is absent."""
        if split not in self.splits:
            present = ", ".join(self.splits) or "none"
            raise EfyoloError(f"{self.yaml_path}: no '{split}' key (splits present: {present})")
        return self.splits[split]

    def is_coco(self, split: str) -> bool:
        """Whether ``split`` is a COCO instances JSON."""
        sources = self.split_sources(split)
        return len(sources) == 1 and sources[0].suffix.lower() == ".json"


def load_data_config(path: str | Path) -> DataConfig:
    """Read and check a dataset YAML.

    Args:
        path: the YAML file.

    Returns:
        The :class:`DataConfig`, with every split path resolved and checked to exist.

    Raises:
        EfyoloError: the file is missing or malformed, a key is missing or wrong, a path does not
            exist.
    """
    yaml_path = Path(path)
    raw = _read_yaml(yaml_path)
    root = _resolve_root(yaml_path, raw)
    splits = {s: _resolve_sources(yaml_path, root, s, raw[s]) for s in SPLITS if raw.get(s) is not None}
    if not splits:
        raise EfyoloError(f"{yaml_path}: no 'train', 'val' or 'test' key")
    images_dirs = {}
    for split in splits:
        key = f"{split}_images"
        if raw.get(key) is not None:
            images_dirs[split] = _existing(yaml_path, key, _join(root, raw[key]))
    names = _parse_names(yaml_path, raw, splits)
    return DataConfig(yaml_path, root, names, splits, images_dirs, raw)


def _read_yaml(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "dataset YAML")


def _join(root: Path, value: Any) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else root / p


def _existing(yaml_path: Path, key: str, p: Path) -> Path:
    if not p.exists():
        raise EfyoloError(f"{yaml_path}: '{key}': {p} does not exist")
    return p.resolve()


def _resolve_root(yaml_path: Path, raw: dict[str, Any]) -> Path:
    base = yaml_path.resolve().parent
    if raw.get("path") in (None, ""):
        return base
    return _existing(yaml_path, "path", _join(base, raw["path"]))


def _resolve_sources(yaml_path: Path, root: Path, split: str, value: Any) -> list[Path]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, (str, Path)) for v in items):
        raise EfyoloError(f"{yaml_path}: '{split}' must be a path or a list of paths, got {value!r}")
    sources = [_existing(yaml_path, split, _join(root, v)) for v in items]
    jsons = [s for s in sources if s.suffix.lower() == ".json"]
    if jsons and len(sources) > 1:
        raise EfyoloError(f"{yaml_path}: '{split}': a COCO JSON split must be a single file, got {len(sources)} paths")
    for s in sources:
        if s.is_file() and s.suffix.lower() not in (".txt", ".json"):
            raise EfyoloError(f"{yaml_path}: '{split}': {s} is neither a folder, a .txt list nor a .json file")
    return sources


def _parse_names(yaml_path: Path, raw: dict[str, Any], splits: dict[str, list[Path]]) -> list[str]:
    names = raw.get("names")
    if names is None:
        coco = [s[0] for s in splits.values() if len(s) == 1 and s[0].suffix.lower() == ".json"]
        if not coco:
            raise EfyoloError(f"{yaml_path}: no 'names' key (a list of class names or an {{id: name}} mapping)")
        from efyolo.data.coco_json import coco_class_names  # only COCO datasets pay for reading the JSON

        names = coco_class_names(coco[0])
    elif isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise EfyoloError(f"{yaml_path}: 'names': mapping keys must be 0..{len(names) - 1}, got {sorted(names)}")
        names = [names[i] for i in range(len(names))]
    elif not isinstance(names, list):
        raise EfyoloError(f"{yaml_path}: 'names' must be a list or an {{id: name}} mapping")
    if not names:
        raise EfyoloError(f"{yaml_path}: 'names' is empty")
    names = [str(n) for n in names]
    nc = raw.get("nc")
    if nc is not None and (not isinstance(nc, int) or nc != len(names)):
        raise EfyoloError(f"{yaml_path}: 'nc' is {nc} but 'names' has {len(names)} entries")
    return names

"""Reading COCO instances JSON files: the parts efyolo uses, checked, and the class order.

* Classes: category ids in ascending order become class indices ``0..K-1`` (so COCO's 80
  categories with ids 1..90 become 0..79); names come from the categories.
* Images of a split live in ``<images folder>/<file_name>``; :func:`coco_images_dir` finds the
  folder by convention when the dataset YAML has no ``<split>_images`` key.
* Image ids of COCO *results* files made by efyolo are the image file stems
  (:func:`image_id_from_path`).
"""

from __future__ import annotations
from pathlib import Path
from typing import Any
from efyolo.errors import EfyoloError
from efyolo.utils.yaml_io import read_json_file


def read_coco_json(path: str | Path) -> dict[str, Any]:
    """Load an instances JSON and check the parts we use (``images``, ``categories``, optional
    ``annotations``); :class:`EfyoloError` naming the file and the problem."""
    path = Path(path)
    data = read_json_file(path, "COCO JSON")
    if not isinstance(data, dict):
        raise EfyoloError(f"{path}: expected a COCO instances object with 'images' and 'categories'")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise EfyoloError(f"{path}: missing '{key}' list")
    if not isinstance(data.setdefault("annotations", []), list):
        raise EfyoloError(f"{path}: 'annotations' must be a list")
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise EfyoloError(f"{path}: images[{i}] needs 'id' and 'file_name'")
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
            raise EfyoloError(f"{path}: categories[{i}] needs an integer 'id'")
    if not data["categories"]:
        raise EfyoloError(f"{path}: 'categories' is empty")
    return data


def category_map(data: dict[str, Any]) -> tuple[dict[int, int], list[str]]:
    """``({category_id: class index}, names)`` with ids in ascending order."""
    cats = sorted(data["categories"], key=lambda c: c["id"])
    return {c["id"]: i for i, c in enumerate(cats)}, [str(c.get("name", c["id"])) for c in cats]


def coco_class_names(path: str | Path) -> list[str]:
    """Class names of a COCO JSON, in ascending category-id order."""
    return category_map(read_coco_json(path))[1]


def coco_images_dir(json_path: Path) -> Path | None:
    """The images folder of a COCO JSON found by convention (see the module docstring)."""
    name = json_path.stem.removeprefix("instances_")
    here, up = json_path.parent, json_path.parent.parent
    for cand in (up / "images" / name, up / name, here / "images" / name, here / name, here / "images"):
        if cand.is_dir():
            return cand
    return None


def image_id_from_path(path: str | Path) -> int | str:
    """The image id used in COCO results files: the file stem, as an int when it is all digits."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else stem

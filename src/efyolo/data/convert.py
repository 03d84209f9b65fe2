"""COCO instances JSON: as a dataset split, and conversion to and from YOLO label files.

As a split (``val: annotations/instances_val2017.json`` in the dataset YAML):

* Images: ``<images folder>/<file_name>``. The folder is the YAML key ``<split>_images``; without
  it, :func:`coco_images_dir` tries, for ``.../annotations/instances_val2017.json``,
  ``.../images/val2017``, ``.../val2017``, ``.../annotations/images/val2017``,
  ``.../annotations/val2017`` and ``.../annotations/images``, in that order.
* Classes: category ids in ascending order become class indices ``0..K-1`` (so COCO's 80
  categories with ids 1..90 become 0..79); names come from the YAML or from the categories.
* ``bbox`` ``[x, y, w, h]`` in pixels is normalised by the image entry's ``width``/``height``
  and checked with the same rules as YOLO label rows (:func:`efyolo.data.labels.clean_labels`),
  problems named ``<json>: annotation <id>``.
* ``iscrowd: 1`` annotations are kept apart as crowd regions (:attr:`ImageRecord.crowd`): not
  training targets, but ``efyolo val`` gives them to the evaluator, which ignores detections on
  them exactly as COCOeval does. Area ranges (AP small/medium/large) use the box area ``w * h``,
  not the JSON's (segmentation) ``area``, so on COCO itself only those three differ from
  COCOeval on the original JSON.

Conversion: :func:`coco_to_yolo` writes ``OUT/images/<split>/`` (symlinks to the images, or
copies), ``OUT/labels/<split>/*.txt`` and ``OUT/data.yaml`` (YOLO labels have no crowd regions:
they are left out); :func:`yolo_to_coco` writes one instances JSON for a split of any dataset,
with ``category_id`` = class index. Neither destroys an input: :func:`coco_to_yolo` writes only
inside ``OUT`` (an absolute or ``..`` ``file_name`` is skipped), leaves the images alone when
converting in place (``--images D/images/val --out D``) and refuses to replace a file it did not
make; :func:`yolo_to_coco` refuses an output that is the YAML, a source, an image or a label file.

Image ids: annotations whose ``image_id`` names no image are dropped with a problem line, and an
image entry repeating an earlier entry's id is skipped with one (the annotations cannot tell the
two apart, so they stay with the first), both as a split and when converting.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from efyolo.data.config import DataConfig, load_data_config
from efyolo.data.split import SplitIndex, log_problems
from efyolo.data.scan import scan_split
from efyolo.data.images import check_image, list_images
from efyolo.data.labels import clean_labels, img2label_paths
from efyolo.errors import EfyoloError
from efyolo.ops.boxes import xywhn2xyxy, xyxy2ltwh
from efyolo.data.coco_json import category_map, image_id_from_path, read_coco_json
from efyolo.data.coco_split import ann_id, ann_row, first_of_each_id, group_annotations
from efyolo.utils.files import write_json_atomic


@dataclass
class ConvertReport:
    """What a conversion wrote.

    Attributes:
        out: the main output (``data.yaml`` or the JSON).
        images: images converted.
        boxes: boxes written.
        skipped: images left out (missing, unreadable, a duplicate id, an unsafe ``file_name``).
        dropped: boxes left out: bad boxes or label rows, annotations of an unknown image id,
            and the annotations of skipped images (crowd annotations of listed images, which YOLO
            labels cannot hold, are left out without being counted).
        problems: one message per skipped image, dropped box or other oddity.
    """

    out: Path
    images: int = 0
    boxes: int = 0
    skipped: int = 0
    dropped: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the console, e.g. ``"2 images, 3 boxes -> out/data.yaml, 1 images skipped,
        2 boxes dropped, 3 problems (see warnings)"``."""
        line = f"{self.images} images, {self.boxes} boxes -> {self.out}"
        if self.skipped:
            line += f", {self.skipped} images skipped"
        if self.dropped:
            line += f", {self.dropped} boxes dropped"
        if self.problems:
            line += f", {len(self.problems)} problems (see warnings)"
        return line


@dataclass
class _Planned:
    """One image of a COCO -> YOLO conversion, checked and ready to write."""

    src: Path
    image_dst: Path
    label_file: Path
    labels: np.ndarray
    action: str = "create"  # what to do at image_dst: "create", "replace" (a symlink) or "keep"


def coco_to_yolo(
    json_path: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    split: str = "val",
    copy_images: bool = False,
) -> ConvertReport:
    """Convert a COCO instances JSON to a YOLO dataset.

    Writes ``OUT/images/<split>/<file_name>`` (a symlink to the image, or a copy),
    ``OUT/labels/<split>/<file_name stem>.txt`` for every image with boxes, and ``OUT/data.yaml``
    (created, or updated with this split when it exists with the same names). Crowd annotations
    are left out; bad boxes are dropped and reported.

    Boxes are normalised by the real image size (EXIF orientation applied), not by the JSON's
    ``width``/``height``, which are only compared with it. Skipped with a problem line: an image
    that is missing or unreadable, a later entry repeating an earlier image id (the annotations
    cannot tell them apart: they go to the first), a ``file_name`` that is absolute or leaves the
    images folder with ``..``, and an image whose label file another image already has.

    Nothing outside ``OUT`` is written, and no input is destroyed: an image destination that is
    the source itself (converting in place, ``images_dir`` = ``OUT/images/<split>``) is left as
    it is; an existing symlink is replaced; an existing regular file is kept when it is the same
    file as the source or byte-identical to it, and is otherwise an error. Every destination is
    checked before anything is written, so a refused conversion writes nothing.

    Args:
        json_path: the instances JSON.
        images_dir: folder that ``file_name`` entries are relative to.
        out_dir: the YOLO dataset root to write.
        split: split name used for the sub-folders and the YAML key.
        copy_images: copy the images instead of linking them.

    Returns:
        A :class:`ConvertReport` whose ``out`` is the data YAML.

    Raises:
        EfyoloError: a bad argument or JSON, or a destination that is an input or a foreign file.
    """
    json_path, images_dir, out_dir = Path(json_path), Path(images_dir), Path(out_dir)
    _check_split_name(split)
    if not images_dir.is_dir():
        raise EfyoloError(f"{images_dir}: images folder not found")
    if out_dir.exists() and not out_dir.is_dir():
        raise EfyoloError(f"{out_dir}: exists and is not a folder (--out is the YOLO dataset folder to write)")
    data = read_coco_json(json_path)
    cat_to_cls, names = category_map(data)
    yaml_path = out_dir / "data.yaml"
    inputs = _file_keys([json_path])
    _refuse_input(yaml_path, inputs)
    _check_existing_yaml(yaml_path, names)
    report = ConvertReport(yaml_path)
    plan = _plan_coco_to_yolo(json_path, data, images_dir, out_dir / "images" / split, out_dir / "labels" / split,
                              cat_to_cls, len(names), report)
    inputs.update(_file_keys(p.src for p in plan))
    for p in plan:
        p.action = _image_action(p.src, p.image_dst, copy_images, inputs)
        _refuse_input(p.label_file, inputs)
    for p in plan:
        _place_image(p.src, p.image_dst, copy_images, p.action)
        _write_label_file(p.label_file, p.labels)
    report.images = len(plan)
    report.boxes = sum(len(p.labels) for p in plan)
    _write_yaml(yaml_path, split, names)
    log_problems(report.problems)
    return report


def _plan_coco_to_yolo(
    json_path: Path,
    data: dict[str, Any],
    images_dir: Path,
    images_out: Path,
    labels_out: Path,
    cat_to_cls: dict[int, int],
    nc: int,
    report: ConvertReport,
) -> list[_Planned]:
    """The images to convert with their labels; what is left out goes to ``report``.

    Nothing is written here: the destinations are checked as a whole before the first write.
    """
    keep, problems = first_of_each_id(json_path, data["images"])
    report.problems.extend(problems)
    report.skipped += len(problems)
    entries = [data["images"][i] for i in keep]
    by_image, unknown = group_annotations(json_path, data["annotations"], {e["id"] for e in entries})
    report.problems.extend(unknown)
    report.dropped += len(unknown)
    boxes = {image_id: [a for a in anns if not a.get("iscrowd", 0)] for image_id, anns in by_image.items()}
    located = []
    for entry in entries:
        rel = _relative_file_name(entry["file_name"])
        if rel is None:
            _skip(report, f"{json_path}: image {entry['id']!r}: file_name {entry['file_name']!r} is absolute or "
                  "leaves the images folder, skipped", boxes.get(entry["id"], []))
        else:
            located.append((entry, rel, images_dir / rel))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        checked = list(pool.map(check_image, [str(src) for _, _, src in located]))
    plan: list[_Planned] = []
    label_owner: dict[Path, Any] = {}
    for (entry, rel, src), (shape, reason) in zip(located, checked):
        anns = boxes.get(entry["id"], [])
        label_file = (labels_out / rel).with_suffix(".txt")
        if shape is None:
            _skip(report, f"{src}: {reason}, skipped", anns)
        elif label_file in label_owner:
            _skip(report, f"{json_path}: image {entry['id']!r}: file_name {entry['file_name']!r} has the same label "
                  f"file as image {label_owner[label_file]!r} ({label_file}), skipped", anns)
        else:
            label_owner[label_file] = entry["id"]
            labels = _image_labels(json_path, entry, src, shape, anns, cat_to_cls, nc, report)
            plan.append(_Planned(src, images_out / rel, label_file, labels))
    return plan


def _skip(report: ConvertReport, problem: str, anns: list[dict[str, Any]]) -> None:
    """Leave an image out: one problem line, and its boxes counted as dropped."""
    report.problems.append(problem)
    report.skipped += 1
    report.dropped += len(anns)


def _image_labels(
    json_path: Path,
    entry: dict[str, Any],
    src: Path,
    shape: tuple[int, int],
    anns: list[dict[str, Any]],
    cat_to_cls: dict[int, int],
    nc: int,
    report: ConvertReport,
) -> np.ndarray:
    """The checked YOLO rows of one image, normalised by its real size ``shape`` (h, w).

    The real size wins over the JSON's ``width``/``height``: the boxes are pixels of the image
    as it is decoded, and a stale or hand-edited size in the JSON would scale every box wrongly.
    A disagreement is reported, since it often means the JSON belongs to other images.
    """
    h, w = shape
    given = (entry.get("width"), entry.get("height"))
    if any(given) and given != (w, h):
        report.problems.append(
            f"{json_path}: image {entry['id']!r}: size {given[0]}x{given[1]} in the JSON but {w}x{h} in {src}; "
            "boxes normalised by the image's size"
        )
    rows, where = [], []
    for ann in anns:
        row, reason = ann_row(ann, cat_to_cls, w, h)
        if reason:
            report.problems.append(f"{json_path}: annotation {ann_id(ann)}: {reason}")
            report.dropped += 1
        else:
            rows.append(row)
            where.append(f"{json_path}: annotation {ann_id(ann)}")
    labels, problems, dropped = clean_labels(np.array(rows, dtype=np.float64).reshape(-1, 5), where, nc)
    report.problems.extend(problems)
    report.dropped += dropped
    return labels


def _check_split_name(split: str) -> None:
    """The split becomes a folder name under ``OUT/images`` and ``OUT/labels``: a path there
    (``../x``, ``/x``) would put the output outside ``OUT``."""
    if not split or split in (".", "..") or "/" in split or os.sep in split or (os.altsep and os.altsep in split):
        raise EfyoloError(f"split {split!r}: must be a plain folder name (no '/', '.' or '..')")


def _relative_file_name(file_name: Any) -> Path | None:
    """``file_name`` as a normalised path inside the images folder, or None when it is empty,
    absolute or climbs out with ``..``.

    Joined to the output folders, such a name would make the converter link, copy or write
    outside ``OUT`` (an absolute name even replaces the whole path when joined).
    """
    rel = Path(os.path.normpath(str(file_name)))
    if rel.anchor or rel.parts[:1] in ((), ("..",)):
        return None
    return rel


_Key = tuple[int, int]


def _file_keys(paths: Any) -> dict[_Key, Path]:
    """``{(st_dev, st_ino): path}`` of existing files, for the entry itself and its target.

    Comparing device and inode (what :func:`os.path.samefile` does) sees through symlinks, hard
    links, ``..`` and case-insensitive names, where comparing path strings would not.
    """
    keys: dict[_Key, Path] = {}
    for path in paths:
        for stat_fn in (os.lstat, os.stat):
            try:
                st = stat_fn(path)
            except OSError:
                continue
            keys.setdefault((st.st_dev, st.st_ino), Path(path))
    return keys


def _refuse_input(dst: Path, inputs: dict[_Key, Path]) -> None:
    """EfyoloError when writing or deleting ``dst`` would touch one of the ``inputs``, or when
    ``dst`` is a folder (it is about to be written as a file)."""
    if dst.is_dir() and not dst.is_symlink():
        raise EfyoloError(f"{dst}: is a folder, expected a file to write; choose another --out")
    for key in _file_keys([dst]):
        if key in inputs:
            what = "is" if os.path.abspath(inputs[key]) == os.path.abspath(dst) else f"would overwrite {inputs[key]},"
            raise EfyoloError(f"{dst}: {what} an input of this conversion; choose another --out")


def _image_action(src: Path, dst: Path, copy: bool, inputs: dict[_Key, Path]) -> str:
    """What to do at an image destination: ``"create"``, ``"replace"`` or ``"keep"``.

    Only a symlink is ever replaced (it is what an earlier conversion made; its target is left
    alone). Kept: the source entry itself (an in-place conversion: unlinking it would delete the
    image), a link to the same file when linking, and a regular file that is the same file as the
    source or byte-identical to it. Anything else is somebody's file: an error, not a loss.
    """
    try:
        dst_stat = os.lstat(dst)
    except FileNotFoundError:
        return "create"
    if os.path.samestat(dst_stat, os.lstat(src)):
        return "keep"
    if stat.S_ISLNK(dst_stat.st_mode):
        if (dst_stat.st_dev, dst_stat.st_ino) in inputs:  # a link that is itself a source image
            raise EfyoloError(f"{dst}: would replace {inputs[dst_stat.st_dev, dst_stat.st_ino]}, an input of this "
                              "conversion; choose another --out")
        return "keep" if not copy and _same_file(src, dst) else "replace"
    if stat.S_ISREG(dst_stat.st_mode) and (_same_file(src, dst) or filecmp.cmp(src, dst, shallow=False)):
        return "keep"
    raise EfyoloError(f"{dst}: exists and is neither {src} nor a link to it; not replacing it "
                      "(remove it or choose another --out)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # a dangling link
        return False


def _place_image(src: Path, dst: Path, copy: bool, action: str) -> None:
    """Link (or copy) ``src`` to ``dst`` as decided by :func:`_image_action`."""
    if action == "keep":
        return
    try:
        if action == "replace":
            dst.unlink()  # a symlink: removes the link, never its target
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not copy:
            try:
                os.symlink(src.resolve(), dst)
                return
            except OSError:  # no symlinks here (some Windows setups): copy instead
                if os.path.lexists(dst):
                    raise
        shutil.copy2(src, dst)
    except OSError as err:
        raise EfyoloError(f"{dst}: cannot write the image: {err.strerror or err}") from None


def _write_label_file(label_file: Path, labels: np.ndarray) -> None:
    """Write the rows, or remove a stale label file of an earlier conversion when there are none.

    A symlink there is replaced by a file, not written through: the write must stay inside OUT.
    """
    try:
        if label_file.is_symlink() or (not len(labels) and label_file.exists()):
            label_file.unlink()
        if len(labels):
            label_file.parent.mkdir(parents=True, exist_ok=True)
            label_file.write_text(_label_text(labels))
    except OSError as err:
        raise EfyoloError(f"{label_file}: cannot write the labels: {err.strerror or err}") from None


def _label_text(labels: np.ndarray) -> str:
    return "".join(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels.tolist())


def _check_existing_yaml(yaml_path: Path, names: list[str]) -> None:
    """An existing ``OUT/data.yaml`` gets this split added: only when its classes are the same,
    or the other splits' labels would silently mean other classes."""
    if yaml_path.exists():
        existing = load_data_config(yaml_path)
        if existing.names != names:
            raise EfyoloError(f"{yaml_path}: exists with other class names {existing.names}; choose another --out")


def _write_yaml(yaml_path: Path, split: str, names: list[str]) -> None:
    """Create ``OUT/data.yaml``, or set this split, ``nc`` and ``names`` in the existing one
    (other keys are kept, so splits converted one by one end up in one YAML)."""
    data: dict[str, Any] = {}
    if yaml_path.exists():
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
    data[split] = f"images/{split}"
    data["nc"] = len(names)
    data["names"] = list(names)
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def yolo_to_coco(cfg: DataConfig, split: str, out_path: str | Path) -> ConvertReport:
    """Write a split of any dataset as a COCO instances JSON.

    Image ids are the file stems as ints when every stem is numeric and unique (so they agree with
    :func:`image_id_from_path`), otherwise 1..N. ``file_name`` is relative to the images' common
    folder; ``category_id`` is the class index; boxes are ``[x, y, w, h]`` in pixels.

    Raises:
        EfyoloError: ``out_path`` is a folder or one of the inputs (the dataset YAML, a split
            source, an image or label file of the split); any other existing file is replaced.
    """
    out_path = Path(out_path)
    _refuse_input(out_path, _file_keys([cfg.yaml_path, *(s for sources in cfg.splits.values() for s in sources)]))
    index = scan_split(cfg, split)
    if os.path.lexists(out_path):  # only an existing file can be an input: list them only then
        _refuse_input(out_path, _file_keys(_split_files(cfg, split, index)))
    ids = [image_id_from_path(f) for f in index.im_files]
    if not all(isinstance(i, int) for i in ids) or len(set(ids)) != len(ids):
        ids = list(range(1, len(ids) + 1))
    root = os.path.commonpath([os.path.dirname(f) for f in index.im_files]) if len(index) else ""
    images, annotations = [], []
    for image_id, rec in zip(ids, index):
        h, w = rec.shape
        images.append({"id": image_id, "file_name": os.path.relpath(rec.im_file, root), "width": w, "height": h})
        boxes = xyxy2ltwh(xywhn2xyxy(rec.labels[:, 1:].astype(np.float64), w, h))
        for c, (x, y, bw, bh) in zip(rec.labels[:, 0].astype(int).tolist(), boxes.tolist()):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": c,
                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0,
            })
    data = {
        "info": {"description": f"{cfg.yaml_path} split '{split}', written by efyolo"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k, "name": n} for k, n in enumerate(cfg.names)],
    }
    write_json_atomic(out_path, data)
    return ConvertReport(
        out_path, len(images), len(annotations), skipped=index.n_corrupt, dropped=index.n_dropped,
        problems=list(index.problems),
    )


def _split_files(cfg: DataConfig, split: str, index: SplitIndex) -> list[str]:
    """The image and label files a split is read from, unreadable images included.

    A COCO JSON split's unreadable images are not in the index; its JSON is a source already.
    """
    if cfg.is_coco(split):
        return index.im_files
    im_files = list_images(cfg.split_sources(split), f"{cfg.yaml_path}: '{split}'")
    return im_files + img2label_paths(im_files)



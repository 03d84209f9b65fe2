"""Inference inputs: paths, folders, globs, videos, ``.txt`` lists and in-memory images -> frames.

:class:`Sources` turns what a user passes to ``efyolo detect --source`` or to
``efyolo.Detector(...)(source)`` into an ordered stream of :class:`Frame` objects, each holding one
``uint8 [H, W, 3]`` BGR image (the layout ``cv2.imread`` gives).

Accepted sources (and lists/tuples mixing any of them):

* a path to an image (``IMAGE_SUFFIXES``, the list :mod:`efyolo.data.images` lists datasets with) or a video (``VIDEO_SUFFIXES``, read with OpenCV);
* a folder: its images and videos, sorted by name, not recursive;
* a glob pattern (``data/*.jpg``, ``data/**/*.png``), sorted; ``**`` searches each real folder
  once (a symlink back to a parent folder is not followed round in circles), and a file reached
  by several paths is used once, with one warning per pattern;
* a ``.txt`` file listing one path per line (relative paths are relative to the list's folder;
  blank lines and lines starting with ``#`` are ignored);
* a numpy image: ``uint8``, BGR ``[H, W, 3]``, BGRA ``[H, W, 4]`` or grey ``[H, W]``;
* a PIL image (any mode; converted to RGB, EXIF orientation applied, then to BGR);
* a torch tensor: RGB ``[3, H, W]`` or a batch ``[B, 3, H, W]``, ``uint8`` (0-255) or floating
  point (0-1, as ``torchvision.transforms.ToTensor`` gives); each image becomes one frame.

Image files are decoded with OpenCV, ignoring its own orientation handling, and then rotated or
flipped by their EXIF orientation tag (:func:`efyolo.data.images.exif_orientation` and
:func:`~efyolo.data.images.apply_orientation`, the code the dataset scan sizes images with), so the
result does not depend on the OpenCV version.

Errors: a path that does not exist, an empty folder, a glob that matches nothing, an unsupported
file type, or a single source that cannot be read raise :class:`EfyoloError` naming the path. When
several sources are given, an unreadable image or video (whatever the decoder does: returns
nothing or raises) is logged as a warning naming the file, skipped and recorded in
:attr:`Sources.skipped`; the rest are processed. A video that ends before the frame count its
container reports is used as far as it reads, with a warning ("read N of M frames").
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from efyolo.data.images import IMAGE_SUFFIXES, apply_orientation, exif_orientation
from efyolo.errors import EfyoloError
from efyolo.utils.log import LOGGER


VIDEO_SUFFIXES = frozenset(
    {".asf", ".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ts", ".wmv", ".webm"}
)
DEFAULT_FPS = 30.0  # used when a video container reports no frame rate

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Frame:
    """One image to run the detector on.

    Attributes:
        image: ``uint8 [H, W, 3]`` BGR, EXIF orientation applied.
        path: the file it came from, or ``image<index>`` for an in-memory image.
        index: position (0-based) of its source item among all items.
        total: number of source items (a video counts once).
        frame: 0-based frame number inside a video, ``None`` for still images.
        frames: the video's frame count as its container reports it (may be approximate).
        fps: the video's frame rate.
    """

    image: np.ndarray
    path: str
    index: int
    total: int
    frame: int | None = None
    frames: int | None = None
    fps: float | None = None

    @property
    def is_video(self) -> bool:
        return self.frame is not None


@dataclass(frozen=True)
class _Item:
    """One expanded source: an image file, a video file, or an already-decoded image."""

    kind: str  # "image" | "video" | "array"
    path: str
    array: np.ndarray | None = None


# --------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------


def _one_line(err: BaseException, limit: int = 200) -> str:
    """``Type: message`` on one line (OpenCV's messages span lines), cut to ``limit`` characters."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decode_image(path: str | Path) -> tuple[np.ndarray | None, str]:
    """Decode an image file: ``(uint8 [H, W, 3] BGR with EXIF orientation applied, "")`` or ``(None, reason)``.

    Decoders do not only return ``None`` on bad input: OpenCV raises ``cv2.error`` for a header
    that claims more than ``CV_IO_MAX_IMAGE_PIXELS`` pixels, and other failures surface as other
    exceptions. Every exception is turned into a reason so that one bad file among many is
    skipped with a warning that names it instead of ending the run.
    """
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # np.fromfile + imdecode copes with non-ASCII paths
        if not data.size:
            return None, "empty file"
        img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None:
            return None, "corrupt, or not an image OpenCV can decode"
        return apply_orientation(img, exif_orientation(path)), ""
    except Exception as err:  # noqa: BLE001  any decoder failure means "this file is unreadable"
        return None, _one_line(err)


def read_image(path: str | Path) -> np.ndarray | None:
    """Decode an image file to ``uint8 [H, W, 3]`` BGR with EXIF orientation applied; ``None`` if unreadable."""
    return decode_image(path)[0]


def load_image(path: str | Path) -> np.ndarray:
    """Like :func:`read_image`, but an unreadable file raises :class:`EfyoloError` naming it and why."""
    img, reason = decode_image(path)
    if img is None:
        raise EfyoloError(f"image {path} cannot be read ({reason})")
    return img


# --------------------------------------------------------------------------------------------
# In-memory images
# --------------------------------------------------------------------------------------------


def image_from_numpy(array: np.ndarray, name: str = "array") -> np.ndarray:
    """A ``uint8`` BGR ``[H, W, 3]`` copy of a numpy image (BGR, BGRA or grey), else :class:`EfyoloError`."""
    if array.dtype != np.uint8:
        raise EfyoloError(f"{name}: numpy images must be uint8 BGR as cv2.imread gives, got dtype {array.dtype}")
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    if array.ndim == 3 and array.shape[2] == 1:
        return cv2.cvtColor(array[:, :, 0], cv2.COLOR_GRAY2BGR)
    if array.ndim == 3 and array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array).copy()
    raise EfyoloError(f"{name}: expected a numpy image [H, W, 3] (BGR), [H, W, 4] or [H, W], got shape {array.shape}")


def image_from_pil(image: Image.Image) -> np.ndarray:
    """A PIL image -> ``uint8`` BGR ``[H, W, 3]``, EXIF orientation applied."""
    from PIL import ImageOps

    rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def images_from_tensor(tensor: torch.Tensor, name: str = "tensor") -> list[np.ndarray]:
    """RGB ``[3, H, W]`` or ``[B, 3, H, W]`` (uint8 0-255 or float 0-1) -> list of ``uint8`` BGR ``[H, W, 3]``."""
    t = tensor.detach().cpu()
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[1] not in (1, 3):
        raise EfyoloError(f"{name}: expected an RGB tensor [3, H, W] or [B, 3, H, W], got shape {tuple(tensor.shape)}")
    if t.is_floating_point():
        lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 0.0)
        if lo < 0 or hi > 1:
            raise EfyoloError(f"{name}: floating-point tensors must hold values in [0, 1] (got {lo:.3g}..{hi:.3g})")
        t = (t.float() * 255).round().to(torch.uint8)
    elif t.dtype != torch.uint8:
        raise EfyoloError(f"{name}: tensors must be uint8 (0-255) or floating point (0-1), got {t.dtype}")
    t = t.expand(-1, 3, -1, -1)  # grey -> 3 channels
    hwc = t.permute(0, 2, 3, 1).numpy()[..., ::-1]  # (B, H, W, 3) BGR
    return [np.ascontiguousarray(a) for a in hwc]


# --------------------------------------------------------------------------------------------
# Expansion of the user's source into items
# --------------------------------------------------------------------------------------------


def _suffix_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else None


def _media_in(paths: Sequence[str | Path]) -> list[_Item]:
    """The image/video files among ``paths``, sorted, as items (other files ignored)."""
    items = []
    for p in sorted(Path(p) for p in paths):
        kind = _suffix_kind(p)
        if kind and p.is_file():
            items.append(_Item(kind, str(p)))
    return items


def _supported() -> str:
    return f"images {', '.join(sorted(IMAGE_SUFFIXES))}; videos {', '.join(sorted(VIDEO_SUFFIXES))}"


def _expand_list_file(path: Path) -> list[_Item]:
    items = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry).expanduser()
        p = p if p.is_absolute() else path.parent / p
        where = f"{path}:{line_no}"
        if not p.is_file():
            raise EfyoloError(f"{where}: listed file {p} does not exist (or is not a file)")
        kind = _suffix_kind(p)
        if kind is None:
            raise EfyoloError(f"{where}: listed file {p} is not a supported image or video ({_supported()})")
        items.append(_Item(kind, str(p)))
    if not items:
        raise EfyoloError(f"source list {path} lists no files")
    return items


def _folders_below(root: str) -> tuple[list[str], list[str]]:
    """``root`` and every folder below it, each real folder once, for a ``**`` glob.

    Python's ``glob`` follows symlinked folders without noticing loops: a ``loop -> .`` link
    repeats every match ~40 times (until the kernel's symlink limit) and two such links make the
    walk exponential, which never finishes. Here a linked folder is searched only if its real
    folder has not been searched yet; plain folders go first, so a file is reached by its plain
    path rather than through a link. Hidden folders are skipped, as ``glob`` does.

    Returns:
        ``(folders, repeats)``: repeats are the linked folders skipped because they lead to a
        folder already searched.
    """
    folders, repeats, seen = [], [], set()
    plain, linked = [root], []
    while plain or linked:
        folder = plain.pop() if plain else linked.pop(0)
        real = os.path.realpath(folder or os.curdir)
        if real in seen:
            repeats.append(folder)
            continue
        seen.add(real)
        folders.append(folder)
        try:
            entries = sorted(os.scandir(folder or os.curdir), key=lambda e: e.name)
        except OSError:  # unreadable folder: glob skips it too
            continue
        for entry in entries:
            try:
                is_dir = not entry.name.startswith(".") and entry.is_dir()
            except OSError:
                continue
            if is_dir:
                (linked if entry.is_symlink() else plain).append(os.path.join(folder, entry.name))
    return folders, repeats


def _glob(pattern: str) -> tuple[list[str], list[str]]:
    """The paths matching ``pattern`` (``**`` = any folder depth), and the linked folders skipped.

    ``glob.glob`` without ``**``; the first ``**`` component is expanded by
    :func:`_folders_below` and the rest of the pattern matched in each folder (recursively, for
    more ``**``), so that symlink loops are searched once.
    """
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return glob.glob(pattern), []
    cut = parts.index("**")
    head = os.sep.join(parts[:cut]) or (os.sep if cut else "")  # "/**/x": the root, "**/x": here
    tail = os.sep.join(parts[cut + 1:]) or "*"  # a final "**" matches the files at every depth
    bases = glob.glob(head) if glob.has_magic(head) else [head]
    matches, repeats = [], []
    for base in bases:
        if base and not os.path.isdir(base):
            continue
        folders, skipped = _folders_below(base)
        repeats += skipped
        for folder in folders:
            found, skipped = _glob(os.path.join(glob.escape(folder), tail) if folder else tail)
            matches += found
            repeats += skipped
    return matches, repeats


def _unique_files(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """``paths`` with one path per real file (the one with the fewest folders), and the dropped ones.

    A glob can reach one file by several paths (a linked folder matched by ``*``, a symlinked
    file); running on it twice would only repeat work and outputs.
    """
    best: dict[str, str] = {}
    for p in sorted(set(paths), key=lambda p: (len(Path(p).parts), p)):
        best.setdefault(os.path.realpath(p), p)
    kept = set(best.values())
    unique = list(dict.fromkeys(p for p in paths if p in kept))  # a path matched twice (``**/**``) once
    return unique, sorted(p for p in set(paths) if p not in kept)


def _expand_glob(text: str, pattern: str) -> list[_Item]:
    """The media files matching ``pattern`` (the user's ``text`` expanded), each file once."""
    paths, repeats = _glob(pattern)
    paths, dropped = _unique_files(paths)
    skipped = sorted(set(repeats)) + dropped
    if skipped:  # one warning per pattern, however many links
        LOGGER.warning(
            f"WARNING: source pattern {text}: skipped {len(skipped)} path(s) leading to folders or files already "
            f"found (symlink loop or duplicate links), e.g. {skipped[0]}; each file is used once"
        )
    return _media_in(paths)


def _expand_path(source: str | Path) -> list[_Item]:
    text = str(source)
    path = Path(text).expanduser()
    if not path.exists() and _GLOB_CHARS & set(text):
        items = _expand_glob(text, str(path))
        if not items:
            raise EfyoloError(f"source pattern {text} matches no images or videos ({_supported()})")
        return items
    if not path.exists():
        raise EfyoloError(f"source {text} does not exist")
    if path.is_dir():
        items = _media_in(list(path.iterdir()))
        if not items:
            raise EfyoloError(f"source folder {text} contains no images or videos ({_supported()})")
        return items
    if path.suffix.lower() == ".txt":
        return _expand_list_file(path)
    kind = _suffix_kind(path)
    if kind is None:
        raise EfyoloError(f"source {text}: unsupported file type '{path.suffix}' ({_supported()})")
    return [_Item(kind, str(path))]


def _expand(source: Any, items: list[_Item]) -> None:
    """Append the items of one source (recursing into lists) to ``items``."""
    if isinstance(source, (str, Path)):
        items.extend(_expand_path(source))
    elif isinstance(source, (list, tuple)):
        if not source:
            raise EfyoloError("source: empty list")
        for s in source:
            _expand(s, items)
    elif isinstance(source, np.ndarray):
        name = f"image{len(items)}"
        items.append(_Item("array", name, image_from_numpy(source, name)))
    elif isinstance(source, Image.Image):
        items.append(_Item("array", f"image{len(items)}", image_from_pil(source)))
    elif isinstance(source, torch.Tensor):
        for img in images_from_tensor(source, f"tensor source {len(items)}"):
            items.append(_Item("array", f"image{len(items)}", img))
    else:
        raise EfyoloError(
            f"source: unsupported type {type(source).__name__} (expected a path, a numpy BGR image, "
            "a PIL image, a torch tensor or a list of those)"
        )


# --------------------------------------------------------------------------------------------
# The stream
# --------------------------------------------------------------------------------------------


def _warn_if_truncated(path: str, read: int, frames: int | None) -> None:
    """Warn when a video ended before the frame count its container reports.

    OpenCV's ``read()`` just returns ``False`` at a damaged or missing tail, so without this a
    cut-off download or an interrupted recording looks like a short, complete video. Without a
    reported count (``frames`` is ``None``) there is nothing to compare with and no warning.
    """
    if frames is not None and read < frames:
        LOGGER.warning(f"WARNING: video {path}: read {read} of {frames} frames (truncated or corrupt)")


class Sources:
    """The frames of a user's source, read lazily in order (videos frame by frame).

    Expanding the source (paths, folders, globs, lists) happens at construction, so a missing
    path fails before any work; files are decoded only while iterating.

    Attributes:
        skipped: paths of unreadable images or videos that were skipped (one warning each).
    """

    def __init__(self, source: Any) -> None:
        items: list[_Item] = []
        _expand(source, items)
        self.items = items
        self.skipped: list[str] = []

    def __len__(self) -> int:
        """Number of source items (a video counts once)."""
        return len(self.items)

    @property
    def paths(self) -> list[str]:
        """Each item's path (``image<i>`` for in-memory images), in order: what :class:`Frame.path` holds.

        Known before any file is read, so output names can be chosen for all items at once
        (:func:`efyolo.engine.results.output_stems`).
        """
        return [item.path for item in self.items]

    @property
    def has_video(self) -> bool:
        return any(item.kind == "video" for item in self.items)

    def _unreadable(self, item: _Item, what: str, reason: str = "empty, corrupt or unsupported encoding") -> None:
        """A single source that cannot be read is an error; one of several is skipped with a warning naming it."""
        if len(self.items) == 1:
            raise EfyoloError(f"{what} {item.path} cannot be read ({reason})")
        LOGGER.warning(f"WARNING: skipping {what} {item.path}: cannot be read ({reason})")
        self.skipped.append(item.path)

    def _video_frames(self, item: _Item, index: int) -> Iterator[Frame]:
        cap = cv2.VideoCapture(item.path)
        try:
            ok, img = cap.read() if cap.isOpened() else (False, None)
            if not ok:
                self._unreadable(item, "video")
                return
            frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
            fps = float(cap.get(cv2.CAP_PROP_FPS))
            fps = fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS
            k = 0
            while ok:
                yield Frame(img, item.path, index, len(self.items), frame=k, frames=frames, fps=fps)
                k += 1
                ok, img = cap.read()
            _warn_if_truncated(item.path, k, frames)
        finally:
            cap.release()

    def __iter__(self) -> Iterator[Frame]:
        self.skipped = []
        produced = 0
        for index, item in enumerate(self.items):
            if item.kind == "array":
                yield Frame(item.array, item.path, index, len(self.items))
            elif item.kind == "image":
                img, reason = decode_image(item.path)
                if img is None:
                    self._unreadable(item, "image", reason)
                    continue
                yield Frame(img, item.path, index, len(self.items))
            else:
                n = 0
                for frame in self._video_frames(item, index):
                    n += 1
                    yield frame
                if not n:  # skipped
                    continue
            produced += 1
        if self.items and not produced:
            raise EfyoloError(f"none of the {len(self.items)} sources could be read (first: {self.skipped[0]})")

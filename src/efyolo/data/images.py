"""Image files of a dataset split: listing them and checking that they can be read.

Listing follows YOLOv5: a folder is searched recursively for files with an image suffix
(``IMG_FORMATS``), a ``.txt`` file lists one image path per line (relative paths are relative to
the list's folder), and the result is sorted within each source.

Checking opens the file with PIL, verifies it and reads its size with the EXIF orientation applied
(``cv2.imread`` applies it too, so the size matches the decoded pixels and the YOLO labels, which
are relative to the upright image).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from PIL import Image, UnidentifiedImageError

from efyolo.errors import EfyoloError

IMG_FORMATS = frozenset({"bmp", "dib", "jpeg", "jpg", "jpe", "mpo", "png", "tif", "tiff", "webp", "pbm", "pgm", "ppm"})
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` has an image suffix (case-insensitive)."""
    return str(path).rpartition(".")[2].lower() in IMG_FORMATS


def list_images(sources: Sequence[Path], what: str = "split") -> list[str]:
    """All image paths of ``sources`` (folders and ``.txt`` lists), as absolute strings.

    Args:
        sources: existing folders or ``.txt`` files.
        what: name used in error messages (e.g. ``"data.yaml: 'val'"``).

    Raises:
        EfyoloError: a source holds no images.
    """
    files: list[str] = []
    for source in sources:
        if source.is_dir():
            found = sorted(
                os.path.join(dirpath, f)
                for dirpath, _, names in os.walk(source, followlinks=True)
                for f in names
                if is_image_file(f)
            )
        else:
            found = _read_list(source)
        if not found:
            raise EfyoloError(f"{what}: no images found in {source} (suffixes: {', '.join(sorted(IMG_FORMATS))})")
        files.extend(found)
    return files


def _read_list(path: Path) -> list[str]:
    """Image paths listed in a ``.txt`` file; blank lines and ``#`` comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise EfyoloError(f"{path}: cannot read image list: {err}") from None
    files = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or not is_image_file(line):
            continue
        p = Path(line).expanduser()
        files.append(os.path.normpath(p if p.is_absolute() else path.parent / p))
    return sorted(files)


def exif_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of a PIL image once its EXIF orientation is applied."""
    w, h = image.size
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the image unusable
        orientation = 1
    return (h, w) if orientation in _TRANSPOSED else (w, h)


def check_image(path: str) -> tuple[tuple[int, int] | None, str | None]:
    """Verify one image.

    Returns:
        ``((h, w), None)`` for a readable image (size after EXIF orientation), or
        ``(None, reason)`` for a missing, unreadable or corrupt one.
    """
    try:
        with Image.open(path) as im:
            im.verify()  # checks the file structure without decoding all pixels
        with Image.open(path) as im:  # verify() leaves the image unusable: reopen for the size
            w, h = exif_size(im)
    except FileNotFoundError:
        return None, "file not found"
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        return None, f"unreadable image ({type(err).__name__}: {err})"
    if w < 1 or h < 1:
        return None, f"empty image ({w}x{h})"
    return (h, w), None

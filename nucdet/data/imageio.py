"""Reading microscopy images into the BGR uint8 arrays detectron2 models take.

Grey, RGB, RGBA (alpha dropped), 16-bit and float images are all read; high bit depths
are scaled to 0..255 by their own 0.5/99.5 percentiles, so dim 16-bit fluorescence is not
flattened to black. TIFFs go through tifffile, everything else through OpenCV.

What is not one whole 2-D image is an ``ImageReadError`` naming the file, never a silently
wrong array: a truncated JPEG (which OpenCV decodes half grey with only a warning), a
multi-page or multi-series TIFF (a z-stack, a time series, pages written one by one), and
a plane stack whose first axis is not known to be colour. A channel-first TIFF whose
axes say so (``SYX`` planar RGB, ImageJ ``CYX``, at most 4 planes) is transposed to HxWxC.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


class ImageReadError(OSError):
    """An image file is missing or cannot be decoded."""


def read_raw(path: str | os.PathLike) -> np.ndarray:
    """Read an image as stored: HxW or HxWxC, original dtype, channels in RGB(A) order."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    if path.suffix.lower() in (".tif", ".tiff"):
        return _read_tiff(path)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(
            f"cannot read image {path}: not a decodable image file (truncated or corrupt?)"
        )
    if path.suffix.lower() in (".jpg", ".jpeg"):
        _check_jpeg_complete(path)
    if img.ndim == 3:
        code = cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB
        img = cv2.cvtColor(img, code)
    return img


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.series) > 1:
                raise ImageReadError(
                    f"{path}: multi-page TIFF with {len(tif.series)} images "
                    f"(shapes {[tuple(s.shape) for s in tif.series[:3]]}...); nucdet reads one "
                    "image per file: save each page as its own file"
                )
            series = tif.series[0]
            img = series.asarray()
            axes = series.axes
    except ImageReadError:
        raise
    except Exception as e:  # tifffile raises several types for corrupt files
        raise ImageReadError(f"cannot read image {path}: {e}") from e
    img = np.asarray(img)
    while img.ndim > 2 and img.shape[0] == 1 and axes[0] not in "YX":  # singleton leading axes
        img, axes = img[0], axes[1:]
    if axes in ("YX", "YXS"):
        return img
    if axes in ("SYX", "CYX") and img.shape[0] <= 4:  # channel-first, stated by the file
        return np.ascontiguousarray(np.moveaxis(img, 0, -1))
    raise ImageReadError(
        f"{path}: TIFF of shape {tuple(img.shape)} (axes {axes}): a stack of {img.shape[0]} "
        "pages/planes, not one image (channels-last HxWxC or one HxW plane); save the "
        "plane or colour image you want as its own file"
    )


def _check_jpeg_complete(path: Path) -> None:
    """Raise if a JPEG's data stops before its end-of-image marker (cut download)."""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64))
        tail = f.read()
    if b"\xff\xd9" in tail:
        return
    # No EOI near the end: either truncated, or data appended after a complete image.
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except OSError as e:
        raise ImageReadError(f"cannot read image {path}: truncated JPEG ({e})") from None


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Scale any dtype to uint8: uint8 unchanged, others by their 0.5/99.5 percentiles."""
    if img.dtype == np.uint8:
        return img
    img = img.astype(np.float32)
    lo, hi = np.percentile(img, (0.5, 99.5))
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((img - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read any supported image as HxWx3 uint8 in BGR order (detectron2's default format)."""
    img = to_uint8(read_raw(path))
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.ndim == 3 and img.shape[2] >= 3:
        img = np.ascontiguousarray(img[:, :, 2::-1])  # RGB(A) -> BGR, alpha dropped
    else:
        raise ImageReadError(f"unsupported image shape {img.shape} in {path}")
    return img


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file."""
    img = read_raw(path)
    return int(img.shape[0]), int(img.shape[1])

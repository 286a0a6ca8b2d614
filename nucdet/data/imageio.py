"""Reading microscopy images into the BGR uint8 arrays detectron2 models take.

Grey, RGB, RGBA (alpha dropped), 16-bit and float images are all read; high bit depths
are scaled to 0..255 by their own 0.5/99.5 percentiles, so dim 16-bit fluorescence is not
flattened to black. TIFFs go through tifffile, everything else through OpenCV.
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
        import tifffile

        try:
            img = tifffile.imread(path)
        except Exception as e:  # tifffile raises several types for corrupt files
            raise ImageReadError(f"cannot read image {path}: {e}") from e
        return np.asarray(img)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(f"cannot read image {path}: not a decodable image file")
    if img.ndim == 3:
        code = cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB
        img = cv2.cvtColor(img, code)
    return img


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

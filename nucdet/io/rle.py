"""Run-length encodings of binary masks.

Two families live here:

- Kaggle RLE strings (``"start length start length ..."``, 1-indexed starts). Sartorius
  orders pixels row-major (``order="C"``), DSB2018 column-major (``order="F"``); one codec
  serves both through ``order``.
- COCO compressed RLE dicts (``{"size": [h, w], "counts": str}``) through pycocotools.

Decoding validates its input and raises ``ValueError`` with the problem; callers add the
file/row context.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

ORDERS = ("C", "F")


def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise ValueError(f"RLE order must be 'C' (row-major) or 'F' (column-major), got {order!r}")


def rle_encode(mask: np.ndarray, order: str = "C", offset: int = 0) -> str:
    """Encode a 2-D binary mask as a Kaggle RLE string (1-indexed starts).

    ``offset`` is added to every start: encoding the band of rows ``y0:y1`` of a full
    mask in C order (or the columns ``x0:x1`` in F order) with ``offset = y0 * width``
    (``x0 * height``) gives the full mask's string without scanning the rest.
    """
    _check_order(order)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects a 2-D mask, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order=order)
    padded = np.concatenate([[False], flat, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = changes[0::2], changes[1::2]
    runs = np.empty(2 * len(starts), dtype=np.int64)
    runs[0::2] = starts + 1 + offset
    runs[1::2] = ends - starts
    return " ".join(map(str, runs.tolist()))


def coco_rle_to_kaggle(rle: dict, order: str = "C") -> str:
    """Kaggle RLE string of a full-image COCO RLE, encoding only the mask's row/column band."""
    _check_order(order)
    c_rle = _c_rle(rle)
    h, w = c_rle["size"]
    x, y, bw, bh = mask_utils.toBbox(c_rle)
    if bw == 0 or bh == 0:
        return ""
    m = mask_utils.decode(c_rle)
    if order == "C":
        y0, y1 = int(y), int(y + bh)
        return rle_encode(m[y0:y1], "C", offset=y0 * w)
    x0, x1 = int(x), int(x + bw)
    return rle_encode(m[:, x0:x1], "F", offset=x0 * h)


# pycocotools' area() allocates a throw-away np.array((n,), dtype=uint8): NumPy 2 raises
# OverflowError for n > 255 masks (NumPy 1 wrapped it silently, harmlessly). Chunks of 255.
_AREA_CHUNK = 255


def coco_rle_areas(rles: list[dict]) -> np.ndarray:
    """Pixel count of every COCO RLE (``counts`` str or bytes), (N,) int64, any N."""
    c = [_c_rle(r) for r in rles]
    out = np.zeros(len(c), np.int64)
    for a in range(0, len(c), _AREA_CHUNK):
        out[a : a + _AREA_CHUNK] = mask_utils.area(c[a : a + _AREA_CHUNK])
    return out


def _c_rle(rle: dict) -> dict:
    """The RLE with ``counts`` as pycocotools wants it (bytes for compressed strings)."""
    if isinstance(rle.get("counts"), str):
        return {"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}
    if isinstance(rle.get("counts"), list):
        h, w = rle["size"]
        return mask_utils.frPyObjects(rle, h, w)
    return rle


def rle_runs(rle: str | None, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Validated 0-based starts and lengths of a Kaggle RLE string over ``shape``.

    Raises ``ValueError`` on malformed input: non-integer tokens, an odd token count,
    starts below 1, non-positive lengths, runs past the end of the image or overlapping
    / unsorted runs. Empty, None and "nan" mean no pixel.
    """
    h, w = int(shape[0]), int(shape[1])
    n = h * w
    text = "" if rle is None else str(rle).strip()
    if not text or text.lower() == "nan":
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tokens = text.split()
    try:
        runs = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next((t for t in tokens if not t.lstrip("-").isdigit()), tokens[0])
        raise ValueError(f"RLE has a non-integer token {bad!r}") from None
    if len(runs) % 2:
        raise ValueError(f"RLE has an odd number of values ({len(runs)})")
    starts, lengths = runs[0::2] - 1, runs[1::2]
    if (starts < 0).any():
        raise ValueError("RLE start below 1 (starts are 1-indexed)")
    if (lengths <= 0).any():
        raise ValueError("RLE has a run length <= 0")
    ends = starts + lengths
    if ends.max() > n:
        raise ValueError(f"RLE runs past the end of the image ({int(ends.max())} > {h}x{w}={n})")
    if len(starts) > 1 and (starts[1:] < ends[:-1]).any():
        raise ValueError("RLE runs are unsorted or overlap")
    return starts, lengths


def rle_decode(rle: str | None, shape: tuple[int, int], order: str = "C") -> np.ndarray:
    """Decode a Kaggle RLE string into a boolean mask of ``shape`` (height, width).

    Validation as in ``rle_runs``.
    """
    _check_order(order)
    h, w = int(shape[0]), int(shape[1])
    starts, lengths = rle_runs(rle, (h, w))
    # Mark run boundaries and integrate: O(n) without a Python loop over runs.
    delta = np.zeros(h * w + 1, dtype=np.int32)
    np.add.at(delta, starts, 1)
    np.add.at(delta, starts + lengths, -1)
    return (np.cumsum(delta[:-1]) > 0).reshape((h, w), order=order)


def rle_to_indices(rle: str | None, shape: tuple[int, int], order: str = "C") -> np.ndarray:
    """Sorted column-major pixel indices (``col * h + row``) of a Kaggle RLE string.

    The sparse form of ``rle_decode``: no image-sized array (used by converters and
    submission readers on images with hundreds of instances).
    """
    _check_order(order)
    h, w = int(shape[0]), int(shape[1])
    starts, lengths = rle_runs(rle, (h, w))
    if starts.size == 0:
        return starts
    # Expand runs to pixel indices without a Python loop: arange minus per-run offsets.
    offsets = np.cumsum(lengths) - lengths
    flat = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - offsets, lengths)
    if order == "F":
        return flat
    rows, cols = np.divmod(flat, w)
    return np.sort(cols * h + rows)


def mask_to_coco_rle(mask: np.ndarray) -> dict:
    """Encode a binary HxW mask as a COCO compressed RLE with a JSON-safe ``counts`` str."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def crop_to_coco_rle(crop: np.ndarray, y0: int, x0: int, height: int, width: int) -> dict:
    """COCO RLE of a full ``height x width`` mask that is zero outside ``crop`` at (y0, x0).

    Only the band of columns the crop spans is scanned, so no full-image array is built.
    """
    ch, cw = crop.shape
    if y0 < 0 or x0 < 0 or y0 + ch > height or x0 + cw > width:
        raise ValueError(f"crop {crop.shape} at ({y0}, {x0}) outside image {(height, width)}")
    band = np.zeros((height, cw), dtype=bool, order="F")
    band[y0 : y0 + ch] = crop
    flat = band.ravel(order="F")
    padded = np.concatenate([[False], flat, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1]) + x0 * height
    # COCO counts alternate background/foreground runs, starting with background.
    bounds = np.concatenate([[0], changes, [height * width]])
    counts = np.diff(bounds).tolist()
    if len(counts) > 1 and counts[-1] == 0:  # the mask reaches the last pixel
        counts.pop()
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def coco_rle_to_mask(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (compressed or uncompressed counts) into a boolean HxW mask."""
    return mask_utils.decode(_c_rle(rle)).astype(bool)

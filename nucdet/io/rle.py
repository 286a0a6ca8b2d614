"""Run-length encodings of binary masks: the one home of every RLE codec in nucdet.

Two families live here:

- Kaggle RLE strings (``"start length start length ..."``, 1-indexed starts). Sartorius
  orders pixels row-major (``order="C"``), DSB2018 column-major (``order="F"``); one codec
  serves both through ``order``: ``rle_encode``, ``rle_decode``, ``rle_runs``,
  ``rle_to_indices``, ``coco_rle_to_kaggle``.
- COCO RLE dicts (``{"size": [h, w], "counts": ...}``; compressed counts as str or bytes,
  uncompressed as a list of run lengths; pixels column-major):

  - dense masks through pycocotools: ``mask_to_coco_rle``, ``coco_rle_to_mask``,
    ``coco_rle_areas``;
  - counts strings parsed in numpy (pycocotools' ``rleFrString``, vectorised over many
    strings, validated: pycocotools' C decoder trusts the counts and writes past its
    buffer when they sum to more than h*w): ``rle_counts`` (one RLE -> all run lengths,
    ``counts_to_runs`` -> its foreground runs), ``decode_rle_runs`` /
    ``decode_rle_pixels`` (many RLEs at once -> foreground runs / pixels, without a
    full-image array per mask), ``expand_runs`` (runs -> pixel indices);
  - encoders without a full-image array: ``sorted_indices_to_rle`` (sorted column-major
    pixel indices), ``crops_to_rles`` (bool crops placed in the image; numba kernels,
    the second one pycocotools' ``rleToString``, compiled on first use);
  - ``segmentation_to_rle``: polygon list, compressed or uncompressed RLE -> compressed
    RLE with a JSON-safe ``counts`` str, checked against the image size.

Decoding validates its input and raises ``ValueError`` with the problem; callers add the
file/row context. This module stops at codecs: what a mask means (instances, overlaps,
metrics) lives in ``nucdet.evaluation``, crops of a prediction in ``nucdet.inference``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
    flat = expand_runs(starts, lengths)
    if order == "F":
        return flat
    rows, cols = np.divmod(flat, w)
    return np.sort(cols * h + rows)


def mask_to_coco_rle(mask: np.ndarray) -> dict:
    """Encode a binary HxW mask as a COCO compressed RLE with a JSON-safe ``counts`` str."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def coco_rle_to_mask(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (compressed or uncompressed counts) into a boolean HxW mask."""
    return mask_utils.decode(_c_rle(rle)).astype(bool)


# ---- COCO RLE: runs and counts strings ---------------------------------------------------


def expand_runs(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Pixel indices of runs, run after run, without a Python loop: pixel k of the output
    is its run's start plus its offset inside the run (int64)."""
    starts = np.asarray(starts, np.int64)
    lengths = np.asarray(lengths, np.int64)
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(
        starts - (np.cumsum(lengths) - lengths), lengths
    )


def _parse_counts(
    joined: bytes, lens: np.ndarray, where: str = "mask {k}: "
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All run lengths of many concatenated compressed counts strings, validated.

    Implements pycocotools' ``rleFrString`` (5-bit groups, continuation bit 0x20, sign
    bit 0x10, counts from the third on stored as a difference to the count two places
    before) vectorised over all strings. Returns ``(cnts, owner, m, first)``: every run
    length, the index of its string, its position in the string and the position of its
    string's first count in ``cnts``. Errors name the string with ``where.format(k=...)``.
    """
    n = len(lens)
    buf = np.frombuffer(joined, dtype=np.uint8).astype(np.int64) - 48
    if buf.size == 0:
        z = np.zeros(0, np.int64)
        return z, z.copy(), z.copy(), z.copy()
    if buf.min() < 0 or buf.max() > 63:
        bad = int(np.flatnonzero((buf < 0) | (buf > 63))[0])
        k = int(np.searchsorted(np.cumsum(lens), bad, "right"))
        raise ValueError(
            where.format(k=k) + "RLE counts string has an invalid character (outside '0'..'o')"
        )
    is_end = (buf & 0x20) == 0
    string_end = np.cumsum(lens) - 1
    nonempty = lens > 0
    if not is_end[string_end[nonempty]].all():
        k = int(np.flatnonzero(nonempty & ~is_end[np.maximum(string_end, 0)])[0])
        raise ValueError(where.format(k=k) + "RLE counts string ends inside a number")
    tok_end = np.flatnonzero(is_end)
    tok_start = np.concatenate([[0], tok_end[:-1] + 1])
    tok_len = tok_end - tok_start + 1
    longest = int(tok_len.max())
    if longest > 12:
        bad = int(tok_end[np.flatnonzero(tok_len > 12)[0]])
        k = int(np.searchsorted(np.cumsum(lens), bad, "right"))
        raise ValueError(
            where.format(k=k) + "RLE counts string holds a number too large for an image"
        )
    # Value of every number, 5 bits per character, least significant first. Numbers are
    # 1-3 characters long, so a loop over character positions beats per-character arrays.
    d = buf & 0x1F
    x = d[tok_start]
    for j in range(1, longest):
        more = np.flatnonzero(tok_len > j)
        x[more] |= d[tok_start[more] + j] << (5 * j)
    neg = (buf[tok_end] & 0x10) != 0
    x[neg] -= np.left_shift(1, 5 * tok_len[neg])
    # cnts[m] = x[m] + cnts[m - 2] for m > 2 (m: position inside the string): running sums
    # along the odd (from m = 1) and even (from m = 2) positions of each string.
    if n == 1:  # one string (the mapper decodes masks one by one): no bookkeeping
        m = np.arange(len(x))
        owner = first = np.zeros(len(x), np.int64)
        cnts = x.copy()
        cnts[2::2] = np.cumsum(x[2::2])
        cnts[3::2] = x[1] + np.cumsum(x[3::2]) if len(x) > 3 else x[3::2]
    else:
        # Number -> its string (owner) and position m inside the string. Global stride-2
        # running sums minus their value just before the chain starts in the string.
        owner = np.repeat(np.arange(n), lens)[tok_end]
        ntok = np.bincount(owner, minlength=n)
        first = (np.cumsum(ntok) - ntok)[owner]
        m = np.arange(len(x)) - first
        run = np.empty_like(x)
        run[0::2] = np.cumsum(x[0::2])
        run[1::2] = np.cumsum(x[1::2])
        chain0 = np.minimum(first + 2 - (m & 1), len(x) - 1)
        cnts = run - (run[chain0] - x[chain0])
        cnts[m == 0] = x[m == 0]
    if (cnts < 0).any():
        k = int(owner[np.flatnonzero(cnts < 0)[0]])
        raise ValueError(where.format(k=k) + "RLE has a negative run length")
    return cnts, owner, m, first


def rle_counts(counts: str | bytes | list) -> np.ndarray:
    """All run lengths (background first, alternating) of one COCO RLE's ``counts``:
    a compressed string (str or bytes) or an uncompressed list, validated.

    Raises ``ValueError`` for characters outside pycocotools' alphabet, a truncated last
    value, a value longer than 12 characters or negative runs (see ``_parse_counts``).
    """
    if isinstance(counts, list):
        arr = np.asarray(counts)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise ValueError("uncompressed RLE counts must be a flat list of integers")
        out = arr.astype(np.int64)
        if (out < 0).any():
            raise ValueError("RLE has a negative run length")
        return out
    raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    return _parse_counts(raw, np.array([len(raw)], np.int64), where="")[0]


def counts_to_runs(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, lengths)`` of the foreground runs of ``rle_counts`` output (column-major
    starts; a zero-length run may appear where the counts hold one)."""
    ends = np.cumsum(counts)
    lengths = counts[1::2]
    return ends[0::2][: len(lengths)], lengths


def _rle_bytes(rle: Any, k: int, h: int, w: int) -> bytes:
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"mask {k}: not a COCO RLE dict with 'size' and 'counts'")
    if [int(v) for v in rle["size"]] != [h, w]:
        raise ValueError(f"mask {k}: size {list(rle['size'])} != {[h, w]}")
    counts = rle["counts"]
    if isinstance(counts, str):
        return counts.encode("ascii")
    if isinstance(counts, bytes):
        return counts
    if isinstance(counts, list):  # uncompressed RLE (COCO crowd annotations)
        return mask_utils.frPyObjects(rle, h, w)["counts"]
    raise ValueError(f"mask {k}: RLE counts of type {type(counts).__name__}")


def _joined_counts(rles: Sequence[dict], h: int, w: int) -> tuple[bytes, list[int]]:
    """All counts strings concatenated, and their lengths; validates sizes and types."""
    try:
        counts = [r["counts"] for r in rles]
        sizes = [r["size"] for r in rles]
    except (KeyError, TypeError):
        counts, sizes = [], None
    try:
        fast = sizes is not None and sizes.count([h, w]) + sizes.count((h, w)) == len(sizes)
    except ValueError:  # sizes given as numpy arrays: compare one by one below
        fast = False
    if fast:
        # Fast path: one C-level join when every mask has str (or bytes) counts.
        for empty in ("", b""):
            try:
                joined = empty.join(counts)
            except TypeError:
                continue
            if isinstance(joined, str):
                if not joined.isascii():
                    break  # the slow path names the mask
                joined = joined.encode("ascii")
            return joined, list(map(len, counts))
    strings = [_rle_bytes(r, k, h, w) for k, r in enumerate(rles)]
    return b"".join(strings), [len(s) for s in strings]


def decode_rle_runs(
    rles: Sequence[dict], height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground runs of many COCO RLEs at once, without expanding them to pixels.

    ``rles``: COCO RLE dicts of size ``(height, width)`` with compressed (str or bytes) or
    uncompressed counts. Returns ``(starts, lengths, owner)``: column-major start and
    length of every non-empty foreground run and the index of its mask, grouped by mask
    in input order, ascending within a mask. Raises ``ValueError`` naming the mask
    (``mask k: ...``) for a wrong size, malformed counts or counts covering more than
    ``height * width`` pixels.
    """
    n = len(rles)
    joined, lens_list = _joined_counts(rles, height, width)
    lens = np.asarray(lens_list, dtype=np.int64).reshape(n)
    cnts, owner, m, first = _parse_counts(joined, lens)
    if cnts.size == 0:
        return cnts, owner, m
    before = np.cumsum(cnts) - cnts  # pixels before each run, from the first string on
    start_in_img = before - before[first]
    total = start_in_img + cnts
    if (total > height * width).any():
        k = int(owner[np.flatnonzero(total > height * width)[0]])
        raise ValueError(f"mask {k}: RLE covers more than {height}x{width} pixels")
    fg = ((m & 1) == 1) & (cnts > 0)
    return start_in_img[fg], cnts[fg], owner[fg]


def decode_rle_pixels(
    rles: Sequence[dict], height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(pix, areas)``: column-major foreground pixels of many COCO RLEs, grouped by mask
    in input order (ascending within a mask), and the (N,) int64 mask areas. Validation
    as in ``decode_rle_runs``."""
    starts, lengths, owner = decode_rle_runs(rles, height, width)
    areas = np.bincount(owner, weights=lengths, minlength=len(rles)).astype(np.int64)
    return expand_runs(starts, lengths), areas


# ---- COCO RLE encoders without a full-image array ----------------------------------------


def sorted_indices_to_rle(idx_f: np.ndarray, height: int, width: int) -> dict[str, Any]:
    """COCO compressed RLE (``counts`` as str) of the pixels at sorted column-major indices.

    ``idx_f`` holds unique flat indices ``col * height + row`` in increasing order; the
    result equals ``mask_to_coco_rle`` of the dense mask.
    """
    n = height * width
    idx_f = np.asarray(idx_f, dtype=np.int64)
    if idx_f.size == 0:
        counts = [n]
    else:
        # A new run starts wherever the index jumps by more than one.
        breaks = np.flatnonzero(np.diff(idx_f) != 1) + 1
        starts = idx_f[np.concatenate([[0], breaks])]
        ends = idx_f[np.concatenate([breaks - 1, [idx_f.size - 1]])] + 1
        gaps = starts - np.concatenate([[0], ends[:-1]])
        counts_arr = np.empty(2 * len(starts) + 1, dtype=np.int64)
        counts_arr[0:-1:2] = gaps
        counts_arr[1::2] = ends - starts
        counts_arr[-1] = n - ends[-1]
        counts = counts_arr.tolist()
        if counts[-1] == 0:  # pycocotools' encoder omits a trailing empty run
            counts.pop()
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _rle_counts_kernel(flat, offsets, crop_boxes, height, width):  # pragma: no cover
    """Uncompressed COCO counts (column-major, starting with a background run) per crop."""
    n = len(crop_boxes)
    total_px = np.int64(height) * np.int64(width)
    # Pass 1: number of runs per crop, to size the output.
    nruns = np.zeros(n, np.int64)
    for i in range(n):
        x0 = crop_boxes[i, 0]
        y0 = crop_boxes[i, 1]
        cw = crop_boxes[i, 2] - x0
        ch = crop_boxes[i, 3] - y0
        base = offsets[i]
        end = np.int64(-2)
        k = 0
        for c in range(cw):
            for r in range(ch):
                if flat[base + r * cw + c]:
                    p = np.int64(x0 + c) * height + y0 + r
                    if p != end:
                        k += 1
                    end = p + 1
        nruns[i] = k
    cptr = np.zeros(n + 1, np.int64)
    for i in range(n):
        cptr[i + 1] = cptr[i] + 2 * nruns[i] + 1
    counts = np.zeros(cptr[-1], np.int64)
    used = np.zeros(n, np.int64)
    # Pass 2: runs as (start, end) in full-image column-major order -> alternating counts.
    for i in range(n):
        x0 = crop_boxes[i, 0]
        y0 = crop_boxes[i, 1]
        cw = crop_boxes[i, 2] - x0
        ch = crop_boxes[i, 3] - y0
        base = offsets[i]
        o = cptr[i]
        j = 0
        start = np.int64(-1)
        end = np.int64(-2)
        prev = np.int64(0)
        for c in range(cw):
            for r in range(ch):
                if flat[base + r * cw + c]:
                    p = np.int64(x0 + c) * height + y0 + r
                    if p != end:
                        if start >= 0:
                            counts[o + j] = start - prev
                            counts[o + j + 1] = end - start
                            j += 2
                            prev = end
                        start = p
                    end = p + 1
        if start >= 0:
            counts[o + j] = start - prev
            counts[o + j + 1] = end - start
            j += 2
            prev = end
        if prev < total_px or j == 0:
            counts[o + j] = total_px - prev
            j += 1
        used[i] = j
    return counts, cptr, used


def _compress_kernel(counts, cptr, used):  # pragma: no cover - compiled
    """pycocotools' ``rleToString`` for every count list: ASCII bytes and string offsets.

    Counts from the third on are stored as the difference to the count two places before;
    each value is written in 5-bit groups, low first, as chr(48 + group) with 0x20 set on
    all but the last group (0x10 of the last group is the sign).
    """
    n = len(used)
    sptr = np.zeros(n + 1, np.int64)
    out = np.empty(int(7 * used.sum()) + 1, np.uint8)
    p = 0
    for i in range(n):
        o = cptr[i]
        for j in range(used[i]):
            x = counts[o + j]
            if j > 2:
                x -= counts[o + j - 2]
            more = True
            while more:
                c = x & 0x1F
                x >>= 5
                more = (x != -1) if (c & 0x10) else (x != 0)
                if more:
                    c |= 0x20
                out[p] = c + 48
                p += 1
        sptr[i + 1] = p
    return out[:p], sptr


_KERNELS: tuple | None = None


def _encoder_kernels() -> tuple:
    """The compiled (counts, compress) kernels; numba is imported on the first call only."""
    global _KERNELS
    if _KERNELS is None:
        from nucdet.jit import njit_cached

        _KERNELS = (njit_cached(_rle_counts_kernel), njit_cached(_compress_kernel))
    return _KERNELS


def crops_to_rles(
    crops: Sequence[np.ndarray], boxes: np.ndarray, height: int, width: int
) -> list[dict]:
    """Full-image COCO RLEs (``counts`` as str) of bool crops placed at ``boxes``.

    ``boxes``: (N, 4) int half-open ``[x0, y0, x1, y1]`` inside the image, crop ``i`` of
    shape ``(y1 - y0, x1 - x0)``. Equal to ``mask_to_coco_rle`` of the full mask, without
    building it: runs are read column by column from the crop and offset to full-image
    column-major positions (runs crossing a column boundary merge, as in the full image),
    then compressed as pycocotools' ``rleToString`` does.
    """
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    n = len(crops)
    if n != len(boxes):
        raise ValueError(f"{n} crops but {len(boxes)} boxes")
    if n == 0:
        return []
    h, w = int(height), int(width)
    outside = (boxes[:, :2] < 0).any(axis=1) | (boxes[:, 2] > w) | (boxes[:, 3] > h)
    outside |= (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"crop box {i} {boxes[i].tolist()} is outside the {h}x{w} image")
    flat = np.concatenate([np.asarray(c, bool).ravel() for c in crops])
    hw = boxes[:, 2:] - boxes[:, :2]
    for i, c in enumerate(crops):
        if c.shape != (hw[i, 1], hw[i, 0]):
            raise ValueError(f"crop {i} has shape {c.shape}, box {boxes[i].tolist()}")
    offsets = np.concatenate([[0], np.cumsum(hw[:, 0] * hw[:, 1])]).astype(np.int64)
    counts_kernel, compress_kernel = _encoder_kernels()
    counts, cptr, used = counts_kernel(flat, offsets, boxes, h, w)
    text, sptr = compress_kernel(counts, cptr, used)
    text = text.tobytes().decode("ascii")
    bounds = sptr.tolist()
    return [{"size": [h, w], "counts": text[a:b]} for a, b in zip(bounds[:-1], bounds[1:])]


# ---- segmentations -----------------------------------------------------------------------


def segmentation_to_rle(segm: Any, height: int, width: int) -> dict[str, Any]:
    """COCO compressed RLE (``counts`` str) of a COCO ``segmentation``: a polygon list
    (rasterised by pycocotools), an uncompressed or a compressed RLE.

    Raises ``ValueError`` for an empty polygon list, an RLE whose ``size`` is not
    ``(height, width)`` or another type. Compressed counts are passed on as they are
    (``decode_rle_runs`` validates them).
    """
    if isinstance(segm, list):
        if not segm:
            raise ValueError("empty polygon list")
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if [int(v) for v in segm["size"]] != [height, width]:
            raise ValueError(f"mask size {list(segm['size'])} != image size {[height, width]}")
        if isinstance(segm["counts"], list):
            rle = mask_utils.frPyObjects(segm, height, width)
        else:
            rle = segm
    else:
        raise ValueError(f"unsupported segmentation of type {type(segm).__name__}")
    counts = rle["counts"]
    return {
        "size": [int(height), int(width)],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }

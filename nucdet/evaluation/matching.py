"""Pixel-exact overlaps between two sets of instances, as integer counts.

Every metric in this package starts from the same numbers: the pixel count of every
instance and of every non-empty pairwise intersection. They are computed here, sparsely
(only pairs that share a pixel) and exactly (int64 counts, never a float IoU matrix):

- both sets free of overlaps (label images, or mask lists whose masks do not overlap):
  one ``bincount`` over combined ``(a, b)`` keys of the pixels both sets cover;
- one set with overlapping masks: its per-instance pixel indices are looked up in the
  other set's label image;
- both with overlaps: pixels covered once in ``b`` go through a label image, the few
  pixels covered several times are joined explicitly.

Inputs are normalised to ``InstanceSet`` by ``as_instances``: label image (HxW int,
0 = background, arbitrary non-consecutive ids), dense (N, H, W) stack, list of COCO RLE
dicts, ``nucdet.structures.ImagePrediction``. COCO RLE strings are decoded straight to
pixel indices with vectorised numpy (no full-image array per instance), so an image with
800 instances costs milliseconds.

Pixels are indexed column-major (``x * H + y``), the order of COCO RLE. The module stops
at overlap counts; matching rules belong to each metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from nucdet.structures import ImagePrediction

# Above this many (a, b) cells a dense bincount table costs more than sorting the keys.
_DENSE_KEY_LIMIT = 1 << 22


class InstanceSet:
    """The instances of one image as pixel indices and/or a label image.

    Attributes:
        height, width: image size.
        areas: (N,) int64 pixel count of every instance.
        ids: (N,) int64 original label values (label images) or list positions.
        label: (H*W,) int32 column-major label image (instance ``i`` -> ``i + 1``), present
            whenever no two instances overlap; None otherwise.
        overlapping: True when some pixel belongs to two instances.
    """

    def __init__(
        self,
        height: int,
        width: int,
        areas: np.ndarray,
        *,
        label: np.ndarray | None = None,
        pix: np.ndarray | None = None,
        ids: np.ndarray | None = None,
        coverage: np.ndarray | None = None,
    ) -> None:
        self.height = int(height)
        self.width = int(width)
        self.areas = np.asarray(areas, dtype=np.int64)
        self.ids = np.arange(len(self.areas)) if ids is None else np.asarray(ids, np.int64)
        self.label = label
        self._pix = pix
        self._coverage = coverage
        self.overlapping = label is None
        if label is None and pix is None:
            raise ValueError("InstanceSet needs a label image or pixel indices")

    def __len__(self) -> int:
        return len(self.areas)

    def __repr__(self) -> str:
        kind = "overlapping" if self.overlapping else "non-overlapping"
        return f"InstanceSet({len(self)} {kind} instances, {self.height}x{self.width})"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def offsets(self) -> np.ndarray:
        """(N+1,) start of every instance in ``pixels()[0]``."""
        return np.concatenate([[0], np.cumsum(self.areas)])

    def pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """``(pix, inst)``: column-major pixel indices grouped by instance (ascending within
        an instance) and the instance index of each."""
        if self._pix is None:
            fg = np.flatnonzero(self.label)
            order = np.argsort(self.label[fg], kind="stable")
            self._pix = fg[order]
        inst = np.repeat(np.arange(len(self.areas)), self.areas)
        return self._pix, inst

    def coverage(self) -> np.ndarray:
        """(H*W,) number of instances covering each pixel (column-major)."""
        if self._coverage is None:
            if self.label is not None:
                self._coverage = (self.label > 0).astype(np.int32)
            else:
                self._coverage = np.bincount(self._pix, minlength=self.height * self.width)
        return self._coverage

    def instance_pixels(self, i: int) -> np.ndarray:
        """Column-major pixel indices of instance ``i``."""
        off = self.offsets
        return self.pixels()[0][off[i] : off[i + 1]]

    def coords(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` of the pixels of instance ``i``."""
        cols, rows = np.divmod(self.instance_pixels(i), self.height)
        return rows, cols

    def boxes(self) -> np.ndarray:
        """(N, 4) int64 inclusive boxes ``[row0, col0, row1, col1]``; -1 for empty instances."""
        out = np.full((len(self), 4), -1, dtype=np.int64)
        nonempty = np.flatnonzero(self.areas > 0)
        if len(nonempty) == 0:
            return out
        pix, _ = self.pixels()
        cols, rows = np.divmod(pix, self.height)
        starts = self.offsets[nonempty]
        out[nonempty, 0] = np.minimum.reduceat(rows, starts)
        out[nonempty, 1] = np.minimum.reduceat(cols, starts)
        out[nonempty, 2] = np.maximum.reduceat(rows, starts)
        out[nonempty, 3] = np.maximum.reduceat(cols, starts)
        return out

    def masks(self) -> np.ndarray:
        """Dense (N, H, W) bool stack. For tests and small images only."""
        out = np.zeros((len(self), self.width * self.height), dtype=bool)
        pix, inst = self.pixels()
        out[inst, pix] = True
        return out.reshape(len(self), self.width, self.height).transpose(0, 2, 1)


InstancesLike = InstanceSet | ImagePrediction | np.ndarray | Sequence[Any]


# ---- construction ------------------------------------------------------------------------


def _from_pixels(
    pix: np.ndarray, areas: np.ndarray, height: int, width: int, ids: np.ndarray | None = None
) -> InstanceSet:
    """Build from grouped pixel indices; derive a label image when nothing overlaps."""
    n = height * width
    if pix.size == 0:
        return InstanceSet(height, width, areas, label=np.zeros(n, np.int32), pix=pix, ids=ids)
    cov = np.bincount(pix, minlength=n)
    if cov.max() > 1:
        return InstanceSet(height, width, areas, pix=pix, ids=ids, coverage=cov)
    label = np.zeros(n, dtype=np.int32)
    label[pix] = np.repeat(np.arange(1, len(areas) + 1, dtype=np.int32), areas)
    return InstanceSet(height, width, areas, label=label, pix=pix, ids=ids)


def from_label_image(label: np.ndarray) -> InstanceSet:
    """Instances of a label image (0 = background, every other value one instance)."""
    lab = np.asarray(label)
    if lab.ndim != 2:
        raise ValueError(f"label image must be 2-D, got shape {lab.shape}")
    if lab.dtype == bool:
        raise TypeError(
            "a boolean 2-D array is a binary mask, not a label image: pass [mask] for one "
            "instance, or label the connected components yourself"
        )
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.issubdtype(lab.dtype, np.floating) or not np.all(np.mod(lab, 1) == 0):
            raise TypeError(f"label image must hold integers, got dtype {lab.dtype}")
    h, w = lab.shape
    flat = lab.flatten(order="F")  # a copy: the set never aliases the caller's array
    if flat.size == 0:
        return InstanceSet(h, w, np.zeros(0, np.int64), label=np.zeros(0, np.int32))
    mx = int(flat.max())
    if np.issubdtype(flat.dtype, np.signedinteger) or np.issubdtype(flat.dtype, np.floating):
        if flat.min() < 0:
            raise ValueError("label image has negative values")
    if mx <= 2 * flat.size + 65536:
        if not np.issubdtype(flat.dtype, np.integer) or flat.dtype.itemsize == 8:
            flat = flat.astype(np.int64)
        counts = np.bincount(flat)
        ids = np.flatnonzero(counts)
        ids = ids[ids != 0]
        if len(ids) == mx:  # already 1..n: no relabelling pass
            return InstanceSet(h, w, counts[ids], label=flat.astype(np.int32, copy=False), ids=ids)
        lut = np.zeros(mx + 1, dtype=np.int32)
        lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
        return InstanceSet(h, w, counts[ids], label=lut[flat], ids=ids)
    # Huge sparse ids (hashes, 64-bit labels): sort instead of a lookup table.
    ids, inv, counts = np.unique(flat, return_inverse=True, return_counts=True)
    inv = inv.astype(np.int32)
    if ids[0] == 0:
        return InstanceSet(h, w, counts[1:], label=inv, ids=ids[1:])
    return InstanceSet(h, w, counts, label=inv + 1, ids=ids)


def from_masks(masks: np.ndarray | Sequence[np.ndarray]) -> InstanceSet:
    """Instances of a dense (N, H, W) stack (non-zero = foreground); masks may overlap."""
    st = np.asarray(masks)
    if st.ndim != 3:
        raise ValueError(f"mask stack must be (N, H, W), got shape {st.shape}")
    n, h, w = st.shape
    inst, pix = np.nonzero(st.transpose(0, 2, 1).reshape(n, h * w))
    areas = np.bincount(inst, minlength=n).astype(np.int64)
    return _from_pixels(pix.astype(np.int64), areas, h, w)


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
        sizes = {tuple(r["size"]) for r in rles}
    except (KeyError, TypeError):
        sizes, counts = None, []
    if sizes is not None and (not sizes or sizes == {(h, w)}):
        # Fast path (one type for all masks): a few C-level joins, no per-mask Python work.
        if all(type(c) is str for c in counts):
            try:
                return "".join(counts).encode("ascii"), list(map(len, counts))
            except UnicodeEncodeError:
                pass  # the slow path names the mask
        elif all(type(c) is bytes for c in counts):
            return b"".join(counts), list(map(len, counts))
    strings = [_rle_bytes(r, k, h, w) for k, r in enumerate(rles)]
    return b"".join(strings), [len(s) for s in strings]


def decode_rle_pixels(
    rles: Sequence[dict], height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Column-major foreground pixel indices of many COCO RLEs at once.

    Returns ``(pix, areas)``: indices grouped by mask in input order, ascending within a
    mask, and the (N,) int64 area of each mask. Implements pycocotools' ``rleFrString``
    (5-bit groups, continuation bit 0x20, sign bit 0x10, counts from the third on stored
    as a difference to the count two places before) vectorised over all strings.
    """
    n = len(rles)
    joined, lens_list = _joined_counts(rles, height, width)
    lens = np.asarray(lens_list, dtype=np.int64).reshape(n)
    buf = np.frombuffer(joined, dtype=np.uint8).astype(np.int64) - 48
    if buf.size == 0:
        return np.zeros(0, np.int64), np.zeros(n, np.int64)
    if buf.min() < 0 or buf.max() > 63:
        bad = int(np.flatnonzero((buf < 0) | (buf > 63))[0])
        raise ValueError(
            f"mask {int(np.searchsorted(np.cumsum(lens), bad, 'right'))}: "
            "RLE counts string has an invalid character"
        )
    is_end = (buf & 0x20) == 0
    string_end = np.cumsum(lens) - 1
    nonempty = lens > 0
    if not is_end[string_end[nonempty]].all():
        k = int(np.flatnonzero(nonempty & ~is_end[np.maximum(string_end, 0)])[0])
        raise ValueError(f"mask {k}: RLE counts string ends inside a number")
    tok_end = np.flatnonzero(is_end)
    tok_start = np.concatenate([[0], tok_end[:-1] + 1])
    tok_len = tok_end - tok_start + 1
    if tok_len.max() > 12:
        raise ValueError("RLE counts string holds a number too large for an image")
    tok_of_char = np.repeat(np.arange(len(tok_end)), tok_len)
    shift = 5 * (np.arange(buf.size) - tok_start[tok_of_char])
    x = np.add.reduceat((buf & 0x1F) << shift, tok_start)
    neg = (buf[tok_end] & 0x10) != 0
    x[neg] -= np.left_shift(1, 5 * tok_len[neg])
    # Token -> string, and the token's position m inside its string.
    owner = np.repeat(np.arange(n), lens)[tok_end]
    ntok = np.bincount(owner, minlength=n)
    first_tok = np.cumsum(ntok) - ntok
    m = np.arange(len(x)) - first_tok[owner]
    cnts = x.copy()
    # cnts[m] = x[m] + cnts[m - 2] for m > 2: a running sum along each parity chain
    # (odd m from 1, even m from 2), restarted for every string.
    for chain in (m % 2 == 1, (m % 2 == 0) & (m >= 2)):
        idx = np.flatnonzero(chain)
        if idx.size == 0:
            continue
        vals = x[idx]
        cs = np.cumsum(vals)
        seg = owner[idx]
        seg_start = np.concatenate([[0], np.flatnonzero(np.diff(seg)) + 1])
        seg_len = np.diff(np.concatenate([seg_start, [idx.size]]))
        cnts[idx] = cs - np.repeat(cs[seg_start] - vals[seg_start], seg_len)
    if (cnts < 0).any():
        k = int(owner[np.flatnonzero(cnts < 0)[0]])
        raise ValueError(f"mask {k}: RLE has a negative run length")
    ends = np.cumsum(cnts)
    start_in_img = ends - cnts - (ends - cnts)[first_tok[owner]]
    total = np.bincount(owner, weights=cnts, minlength=n)
    if (total > height * width).any():
        k = int(np.flatnonzero(total > height * width)[0])
        raise ValueError(f"mask {k}: RLE covers {int(total[k])} pixels > {height}x{width}")
    fg = (m % 2 == 1) & (cnts > 0)
    starts, run_len, run_owner = start_in_img[fg], cnts[fg], owner[fg]
    areas = np.bincount(run_owner, weights=run_len, minlength=n).astype(np.int64)
    # Pixel k of the concatenated runs lies at its run's start plus its offset in the run.
    pix = np.arange(int(run_len.sum())) + np.repeat(
        starts - (np.cumsum(run_len) - run_len), run_len
    )
    return pix, areas


def from_rles(
    rles: Sequence[dict], height: int | None = None, width: int | None = None
) -> InstanceSet:
    """Instances of a list of COCO RLE dicts (compressed str/bytes or uncompressed counts)."""
    if height is None or width is None:
        if not rles:
            raise ValueError("an empty RLE list needs height and width")
        height, width = (int(v) for v in rles[0]["size"])
    pix, areas = decode_rle_pixels(rles, int(height), int(width))
    return _from_pixels(pix, areas, int(height), int(width))


def as_instances(obj: InstancesLike, shape: tuple[int, int] | None = None) -> InstanceSet:
    """Normalise any supported instance container to an ``InstanceSet``.

    Accepted: ``InstanceSet``; ``ImagePrediction``; 2-D integer label image; (N, H, W)
    mask stack; list of COCO RLE dicts; list of 2-D masks. ``shape`` (H, W) is needed only
    for an empty list.
    """
    if isinstance(obj, InstanceSet):
        return obj
    if isinstance(obj, ImagePrediction):
        return from_rles(obj.rles, obj.height, obj.width)
    if isinstance(obj, np.ndarray):
        if obj.ndim == 2:
            return from_label_image(obj)
        return from_masks(obj)
    if isinstance(obj, (list, tuple)):
        if len(obj) == 0:
            if shape is None:
                raise ValueError("an empty instance list needs the image shape")
            h, w = shape
            return InstanceSet(h, w, np.zeros(0, np.int64), label=np.zeros(h * w, np.int32))
        if isinstance(obj[0], dict):
            return from_rles(obj, *(shape if shape is not None else (None, None)))
        return from_masks(np.stack([np.asarray(m) for m in obj]))
    raise TypeError(f"cannot read instances from {type(obj).__name__}")


def as_instance_pair(a: InstancesLike, b: InstancesLike) -> tuple[InstanceSet, InstanceSet]:
    """Normalise two containers of the same image; an empty list takes the other's shape."""
    a_empty = isinstance(a, (list, tuple)) and len(a) == 0
    b_empty = isinstance(b, (list, tuple)) and len(b) == 0
    if a_empty and b_empty:  # nothing on either side: the image size does not matter
        return as_instances(a, (0, 0)), as_instances(b, (0, 0))
    if a_empty:
        b = as_instances(b)
        a = as_instances(a, b.shape)
    else:
        a = as_instances(a)
        b = as_instances(b, a.shape)
    if a.shape != b.shape:
        raise ValueError(f"instance sets of different image sizes: {a.shape} vs {b.shape}")
    return a, b


# ---- overlaps ----------------------------------------------------------------------------


@dataclass
class Overlaps:
    """Sparse pairwise intersections of two instance sets.

    ``ia[k], ib[k], inter[k]``: every pair with a non-empty intersection, sorted by
    ``(ia, ib)``; ``areas_a``/``areas_b``: all instance areas. Everything int64.
    """

    ia: np.ndarray
    ib: np.ndarray
    inter: np.ndarray
    areas_a: np.ndarray
    areas_b: np.ndarray

    @property
    def union(self) -> np.ndarray:
        return self.areas_a[self.ia] + self.areas_b[self.ib] - self.inter

    def iou(self) -> np.ndarray:
        """Float IoU of the listed pairs (for display; decisions use the integers)."""
        return self.inter / np.maximum(self.union, 1)

    def swapped(self) -> Overlaps:
        order = np.lexsort((self.ia, self.ib))
        return Overlaps(
            self.ib[order], self.ia[order], self.inter[order], self.areas_b, self.areas_a
        )


def _count_keys(keys: np.ndarray, na: int, nb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if keys.size == 0:
        z = np.zeros(0, np.int64)
        return z, z.copy(), z.copy()
    if na * nb <= _DENSE_KEY_LIMIT:
        table = np.bincount(keys, minlength=na * nb)
        nz = np.flatnonzero(table != 0)  # on a bool array: ~4x faster than on int64
        inter = table[nz]
    else:
        nz, inter = np.unique(keys, return_counts=True)
    ia, ib = np.divmod(nz, nb)
    return ia.astype(np.int64), ib.astype(np.int64), inter.astype(np.int64)


def _keys_through_label(
    pix: np.ndarray, inst: np.ndarray, label: np.ndarray, nb: int
) -> np.ndarray:
    lb = label[pix]
    keep = lb > 0
    return inst[keep].astype(np.int64) * nb + (lb[keep].astype(np.int64) - 1)


def pairwise_overlaps(a: InstancesLike, b: InstancesLike) -> Overlaps:
    """Exact pixel counts of every non-empty intersection between instances of a and b."""
    a, b = as_instance_pair(a, b)
    na, nb = len(a), len(b)
    if na == 0 or nb == 0:
        ia, ib, inter = _count_keys(np.zeros(0, np.int64), na, nb)
    elif a.label is not None and b.label is not None:
        both = (a.label > 0) & (b.label > 0)
        keys = (a.label[both].astype(np.int64) - 1) * nb + (b.label[both].astype(np.int64) - 1)
        ia, ib, inter = _count_keys(keys, na, nb)
    elif b.label is not None:
        pix, inst = a.pixels()
        ia, ib, inter = _count_keys(_keys_through_label(pix, inst, b.label, nb), na, nb)
    elif a.label is not None:
        return pairwise_overlaps(b, a).swapped()
    else:
        ia, ib, inter = _count_keys(_keys_both_overlapping(a, b), na, nb)
    return Overlaps(ia, ib, inter, a.areas, b.areas)


def _keys_both_overlapping(a: InstanceSet, b: InstanceSet) -> np.ndarray:
    nb = len(b)
    cov = b.coverage()
    pb, ibb = b.pixels()
    single = cov[pb] == 1
    label1 = np.zeros(b.height * b.width, dtype=np.int32)
    label1[pb[single]] = ibb[single] + 1
    pa, iaa = a.pixels()
    keys = [_keys_through_label(pa, iaa, label1, nb)]
    multi = cov[pa] > 1
    if multi.any():
        # Pixels that several b instances share: pair every a-pixel with each of them.
        order = np.argsort(pb[~single], kind="stable")
        pbm, ibm = pb[~single][order], ibb[~single][order]
        pam, iam = pa[multi], iaa[multi]
        lo = np.searchsorted(pbm, pam, side="left")
        c = cov[pam]
        rep = np.repeat(np.arange(len(pam)), c)
        pos = np.repeat(lo, c) + (np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c))
        keys.append(iam[rep].astype(np.int64) * nb + ibm[pos])
    return np.concatenate(keys)

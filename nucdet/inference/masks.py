"""Crop-level instance masks: paste box-relative grids, fuse them, convert to and from RLE.

Every instance is held as a crop of the image (``CropMasks``: an integer box and a small
array), never as a full-image array, so an image with 800 cells costs a few milliseconds
and a few megabytes whatever its size.

- ``paste_grids`` samples a box-relative MxM mask-head grid at the pixel centres of a crop
  with bilinear interpolation and zero padding, exactly as detectron2's
  ``paste_masks_in_image`` / ``_do_paste_mask`` does (``grid_sample``,
  ``align_corners=False``, float32 arithmetic in the same order, same crop extent
  ``floor(x0) - 1 .. ceil(x1) + 1``, and the fused multiply-adds of torch's AVX2/AVX512
  kernel): bit-identical to detectron2 on such CPUs (tested), within float rounding on
  others.
- ``fuse_grids`` pastes the grids of several detections (the members of a fused cluster)
  into one crop and averages them with weights, or lets them vote; fusion uses it.
- ``CropMasks.to_rles`` / ``rles_to_crops`` convert between crops and full-image COCO
  RLEs exactly, without a full-image array per instance (the codecs are
  ``nucdet.io.rle.crops_to_rles`` and ``decode_rle_pixels``).

The loops over crop pixels are compiled with numba (a dependency of ``ensemble-boxes``)
and cached on disk (``nucdet.jit.njit_cached``): the first call after an install compiles
for a few seconds, later processes load the cached code.
This module stops at masks: scores, classes and the choice of what to fuse live in
``nucdet.inference.fusion`` and ``nucdet.inference.postprocess``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nucdet.io.rle import crops_to_rles, decode_rle_pixels
from nucdet.jit import njit_cached
from nucdet.structures import ImagePrediction, RawDetections

__all__ = [
    "CropMasks",
    "fuse_grids",
    "paste_extent",
    "paste_grids",
    "raw_to_prediction",
    "rles_to_crops",
]


_F1 = np.float32(1.0)
_F2 = np.float32(2.0)
_FH = np.float32(0.5)
_F0 = np.float32(0.0)


@dataclass
class CropMasks:
    """Masks of one image, each as a crop: crop ``i`` covers ``[y0:y1, x0:x1]``.

    Attributes:
        boxes: (N, 4) int64 half-open crop boxes ``[x0, y0, x1, y1]`` inside the image.
        crops: N arrays of shape ``(y1 - y0, x1 - x0)``; bool masks or float32
            probabilities. Pixels outside a crop are 0.
        height, width: image size.
    """

    boxes: np.ndarray
    crops: list[np.ndarray]
    height: int
    width: int

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.int64).reshape(-1, 4)
        if len(self.boxes) != len(self.crops):
            raise ValueError(f"CropMasks: {len(self.boxes)} boxes but {len(self.crops)} crops")
        b = self.boxes
        bad = (
            (b[:, 0] < 0)
            | (b[:, 1] < 0)
            | (b[:, 2] > self.width)
            | (b[:, 3] > self.height)
            | (b[:, 2] < b[:, 0])
            | (b[:, 3] < b[:, 1])
        )
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"CropMasks: crop box {i} {b[i].tolist()} is not inside the "
                f"{self.height}x{self.width} image"
            )
        for i, (c, bb) in enumerate(zip(self.crops, b)):
            if c.shape != (bb[3] - bb[1], bb[2] - bb[0]):
                raise ValueError(f"CropMasks: crop {i} has shape {c.shape}, box {bb.tolist()}")

    def __len__(self) -> int:
        return len(self.crops)

    def select(self, keep: np.ndarray | Sequence[int]) -> CropMasks:
        """The crops at integer indices (or boolean mask) ``keep``."""
        keep = np.asarray(keep)
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
        return CropMasks(self.boxes[idx], [self.crops[i] for i in idx], self.height, self.width)

    def areas(self) -> np.ndarray:
        """Foreground pixel count of every crop, (N,) int64."""
        return np.array([np.count_nonzero(c) for c in self.crops], np.int64).reshape(-1)

    def threshold(self, thresh: float) -> CropMasks:
        """Bool crops ``prob >= thresh`` (detectron2's rule)."""
        return CropMasks(self.boxes, [c >= thresh for c in self.crops], self.height, self.width)

    def tight(self) -> CropMasks:
        """The same masks with every crop shrunk to its foreground's bounding box.

        An empty mask becomes a 0x0 crop at its old top-left corner.
        """
        boxes = self.boxes.copy()
        crops = []
        for i, c in enumerate(self.crops):
            rows = np.flatnonzero(c.any(axis=1))
            if rows.size == 0:
                boxes[i, 2:] = boxes[i, :2]
                crops.append(np.zeros((0, 0), c.dtype))
                continue
            cols = np.flatnonzero(c.any(axis=0))
            r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            boxes[i] = boxes[i, 0] + c0, boxes[i, 1] + r0, boxes[i, 0] + c1, boxes[i, 1] + r1
            crops.append(c[r0:r1, c0:c1])
        return CropMasks(boxes, crops, self.height, self.width)

    def to_rles(self) -> list[dict]:
        """Full-image COCO RLEs (``counts`` as str) of the bool crops."""
        return crops_to_rles(self.crops, self.boxes, self.height, self.width)

    def to_masks(self) -> np.ndarray:
        """Dense (N, H, W) stack, for tests and small images only."""
        out = np.zeros((len(self), self.height, self.width), bool)
        for i, (c, (x0, y0, x1, y1)) in enumerate(zip(self.crops, self.boxes)):
            out[i, y0:y1, x0:x1] = c
        return out

    @classmethod
    def from_masks(cls, masks: np.ndarray) -> CropMasks:
        """Tight crops of a dense (N, H, W) bool stack (tests and small images)."""
        masks = np.asarray(masks, bool)
        n, h, w = masks.shape
        full = np.tile(np.array([0, 0, w, h], np.int64), (n, 1))
        return cls(full, list(masks), h, w).tight()

    @classmethod
    def from_rles(cls, rles: Sequence[dict], height: int, width: int) -> CropMasks:
        """Tight bool crops of full-image COCO RLEs; see ``rles_to_crops``."""
        return rles_to_crops(rles, height, width)


# ---- pasting ------------------------------------------------------------------------------


def paste_extent(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """The integer crop detectron2 pastes a box's mask into, (N, 4) int64 ``[x0, y0, x1, y1)``.

    ``floor(x0) - 1 .. ceil(x1) + 1`` clipped to the image (``_do_paste_mask`` with
    ``skip_empty``): bilinear sampling reaches half a grid cell past the box, and
    detectron2 leaves every pixel outside this extent at 0.
    """
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    lo = np.maximum(np.floor(b[:, :2]) - 1, 0)
    hi = np.ceil(b[:, 2:]) + 1
    hi = np.minimum(hi, np.array([width, height], np.float32))
    out = np.concatenate([lo, hi], axis=1).astype(np.int64)
    out[:, 2:] = np.maximum(out[:, 2:], out[:, :2])
    return out


@njit_cached
def _axis_params(lo, hi, b0, b1, m):  # pragma: no cover - compiled
    """Bilinear taps along one axis for pixels lo..hi-1: two grid indices and weights.

    float32 arithmetic in torch's order: g = (p + 0.5 - b0) / (b1 - b0) * 2 - 1 (the grid
    detectron2 builds, one tensor op at a time), then grid_sample's unnormalize
    (g + 1) * (m / 2) - 0.5, which torch's AVX2/AVX512 CPU kernel evaluates as one fused
    multiply-add; the float32 product is exact in float64, so float64 emulates the fma.
    A tap outside the grid gets index 0 and weight 0 (zero padding: its term is 0 * w in
    torch and g * 0 here, both exactly 0).
    """
    n = hi - lo
    i0 = np.empty(n, np.int64)
    i1 = np.empty(n, np.int64)
    w0 = np.empty(n, np.float32)
    w1 = np.empty(n, np.float32)
    span = b1 - b0
    half_m = np.float64(np.float32(m) / _F2)
    for i in range(n):
        g = (np.float32(lo + i) + _FH - b0) / span * _F2 - _F1
        s = np.float32(np.float64(g + _F1) * half_m - 0.5)
        f = np.float32(np.floor(s))
        k = np.int64(f)
        frac = s - f
        ok0 = 0 <= k < m
        ok1 = 0 <= k + 1 < m
        i0[i] = k if ok0 else 0
        i1[i] = k + 1 if ok1 else 0
        w0[i] = (_F1 - frac) if ok0 else _F0
        w1[i] = frac if ok1 else _F0
    return i0, i1, w0, w1


@njit_cached
def _fuse_kernel(
    grids, rows, boxes, weights, ptr, crop_boxes, offsets, height, width, vote, vote_thresh
):  # pragma: no cover - compiled
    """Accumulate weighted pasted grids (or weighted votes) of each cluster into its crop.

    Cluster c owns members ptr[c]:ptr[c+1] (member k uses grid rows[k] and box k) and the
    flat output slice offsets[c]:offsets[c+1] laid out row-major over crop_boxes[c].
    """
    m = grids.shape[1]
    out = np.zeros(offsets[-1], np.float32)
    for c in range(len(ptr) - 1):
        cx0 = crop_boxes[c, 0]
        cy0 = crop_boxes[c, 1]
        cw = crop_boxes[c, 2] - cx0
        base = offsets[c]
        for k in range(ptr[c], ptr[c + 1]):
            bx0 = boxes[k, 0]
            by0 = boxes[k, 1]
            bx1 = boxes[k, 2]
            by1 = boxes[k, 3]
            if not (bx1 > bx0 and by1 > by0):
                continue  # degenerate box: nothing to sample (detectron2 drops these too)
            # detectron2's paste extent of the member, clipped to the cluster crop.
            ex0 = max(np.int64(np.floor(bx0)) - 1, 0, cx0)
            ey0 = max(np.int64(np.floor(by0)) - 1, 0, cy0)
            ex1 = min(np.int64(np.ceil(bx1)) + 1, width, crop_boxes[c, 2])
            ey1 = min(np.int64(np.ceil(by1)) + 1, height, crop_boxes[c, 3])
            if ex1 <= ex0 or ey1 <= ey0:
                continue
            xw, xe, ee, ww = _axis_params(ex0, ex1, bx0, bx1, m)
            yn, ys, ss, nn = _axis_params(ey0, ey1, by0, by1, m)
            wk = weights[k]
            g = grids[rows[k]]
            for r in range(ey1 - ey0):
                gn = g[yn[r]]
                gs = g[ys[r]]
                s_r = ss[r]
                n_r = nn[r]
                o = base + (ey0 + r - cy0) * cw + (ex0 - cx0)
                for q in range(ex1 - ex0):
                    # torch: nw_v*nw + ne_v*ne + sw_v*sw + se_v*se, the last three as fused
                    # multiply-adds (float64 holds each float32 product exactly).
                    v = gn[xw[q]] * (s_r * ee[q])
                    v = np.float32(np.float64(gn[xe[q]]) * np.float64(s_r * ww[q]) + v)
                    v = np.float32(np.float64(gs[xw[q]]) * np.float64(n_r * ee[q]) + v)
                    v = np.float32(np.float64(gs[xe[q]]) * np.float64(n_r * ww[q]) + v)
                    if vote:
                        if v >= vote_thresh:
                            out[o + q] += wk
                    else:
                        out[o + q] += wk * v
    return out


def _as_grid_inputs(grids: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    grids = np.ascontiguousarray(grids, np.float32)
    boxes = np.ascontiguousarray(np.asarray(boxes, np.float32).reshape(-1, 4))
    if grids.ndim != 3 or grids.shape[1] != grids.shape[2]:
        raise ValueError(f"mask grids must be (N, M, M), got shape {grids.shape}")
    if len(grids) != len(boxes):
        raise ValueError(f"{len(grids)} mask grids but {len(boxes)} boxes")
    return grids, boxes


def _split(flat: np.ndarray, offsets: np.ndarray, crop_boxes: np.ndarray) -> list[np.ndarray]:
    hs = (crop_boxes[:, 3] - crop_boxes[:, 1]).tolist()
    ws = (crop_boxes[:, 2] - crop_boxes[:, 0]).tolist()
    return [flat[offsets[i] : offsets[i + 1]].reshape(hs[i], ws[i]) for i in range(len(hs))]


def fuse_grids(
    grids: np.ndarray,
    boxes: np.ndarray,
    weights: np.ndarray,
    cluster_ptr: np.ndarray,
    crop_boxes: np.ndarray,
    height: int,
    width: int,
    *,
    mode: str = "avg",
    mask_thresh: float = 0.5,
    vote_frac: float = 0.5,
    rows: np.ndarray | None = None,
) -> CropMasks:
    """Fuse the pasted grids of each cluster into one bool mask in the cluster's crop.

    Args:
        grids: (G, M, M) probabilities; member ``k`` uses ``grids[rows[k]]`` (default
            ``rows = arange(n)``, so that no (n, M, M) copy is needed to pick members).
        boxes: (n, 4) member boxes xyxy in image pixels; the members of cluster ``c`` are
            ``cluster_ptr[c]:cluster_ptr[c + 1]``.
        weights: (n,) member weights (score x input weight); normalised per cluster.
        cluster_ptr: (K + 1,) int, non-decreasing, from 0 to n.
        crop_boxes: (K, 4) int crop of each cluster (e.g. the hull of its members'
            ``paste_extent``); a member contributes only inside its own extent.
        mode: ``"avg"``: weighted mean of probabilities ``>= mask_thresh``;
            ``"vote"``: members holding at least ``vote_frac`` of the cluster's weight
            have probability ``>= mask_thresh`` there.

    Returns bool ``CropMasks`` over ``crop_boxes``.
    """
    if mode not in ("avg", "vote"):
        raise ValueError(f"mask fusion mode must be 'avg' or 'vote', got {mode!r}")
    if not 0.0 < vote_frac <= 1.0:
        raise ValueError(f"vote_frac must be in (0, 1], got {vote_frac}")
    grids = np.ascontiguousarray(grids, np.float32)
    boxes = np.ascontiguousarray(np.asarray(boxes, np.float32).reshape(-1, 4))
    n = len(boxes)
    if grids.ndim != 3 or grids.shape[1] != grids.shape[2]:
        raise ValueError(f"mask grids must be (N, M, M), got shape {grids.shape}")
    rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    if len(rows) != n or (n and (rows.min() < 0 or rows.max() >= len(grids))):
        raise ValueError(f"rows must hold one grid index in 0..{len(grids) - 1} per box")
    ptr = np.asarray(cluster_ptr, np.int64)
    crop_boxes = np.asarray(crop_boxes, np.int64).reshape(-1, 4)
    if len(ptr) != len(crop_boxes) + 1 or ptr[0] != 0 or ptr[-1] != n or (np.diff(ptr) < 0).any():
        raise ValueError("cluster_ptr must rise from 0 to the number of members, one per crop")
    w = np.asarray(weights, np.float64).reshape(-1)
    if len(w) != n or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("member weights must be finite, >= 0 and one per box")
    # Normalise within each cluster in float64, so two identical members average to
    # exactly the member itself (0.5 * p + 0.5 * p == p).
    sizes = np.diff(ptr)
    totals = np.zeros(len(sizes))
    if n:
        nonempty = sizes > 0
        totals[nonempty] = np.add.reduceat(w, ptr[:-1][nonempty])
    owner = np.repeat(np.arange(len(sizes)), sizes)
    safe = np.where(totals > 0, totals, 1.0)[owner]
    norm = np.where(totals[owner] > 0, w / safe, 0.0)
    hw = crop_boxes[:, 2:] - crop_boxes[:, :2]
    offsets = np.concatenate([[0], np.cumsum(hw[:, 0] * hw[:, 1])]).astype(np.int64)
    flat = _fuse_kernel(
        grids,
        rows,
        boxes,
        norm.astype(np.float32),
        ptr,
        crop_boxes,
        offsets,
        int(height),
        int(width),
        mode == "vote",
        np.float32(mask_thresh),
    )
    if mode == "vote":
        # Normalised weights sum to 1 within float32 rounding; a unanimous vote must pass.
        binary = flat >= np.float32(vote_frac) - np.float32(1e-6)
    else:
        binary = flat >= np.float32(mask_thresh)
    return CropMasks(crop_boxes, _split(binary, offsets, crop_boxes), int(height), int(width))


def paste_grids(
    grids: np.ndarray,
    boxes: np.ndarray,
    height: int,
    width: int,
    crop_boxes: np.ndarray | None = None,
) -> CropMasks:
    """Paste each MxM grid into its box: float32 probability crops (detectron2 semantics).

    ``crop_boxes`` defaults to ``paste_extent(boxes)``; pixels of a given crop outside
    the box's own extent stay 0, as in detectron2.
    """
    grids, boxes = _as_grid_inputs(grids, boxes)
    n = len(grids)
    crop_boxes = (
        paste_extent(boxes, height, width)
        if crop_boxes is None
        else np.asarray(crop_boxes, np.int64).reshape(-1, 4)
    )
    hw = crop_boxes[:, 2:] - crop_boxes[:, :2]
    offsets = np.concatenate([[0], np.cumsum(hw[:, 0] * hw[:, 1])]).astype(np.int64)
    flat = _fuse_kernel(
        grids,
        np.arange(n, dtype=np.int64),
        boxes,
        np.ones(n, np.float32),
        np.arange(n + 1, dtype=np.int64),
        crop_boxes,
        offsets,
        int(height),
        int(width),
        False,
        np.float32(0.0),
    )
    return CropMasks(crop_boxes, _split(flat, offsets, crop_boxes), int(height), int(width))


def raw_to_prediction(
    raw: RawDetections, image_id: str = "", mask_thresh: float = 0.5
) -> ImagePrediction:
    """Paste, threshold (``>= mask_thresh``) and RLE-encode every detection of ``raw``."""
    crops = paste_grids(raw.mask_probs, raw.boxes, raw.height, raw.width).threshold(mask_thresh)
    return ImagePrediction(
        image_id, raw.height, raw.width, crops.to_rles(), raw.scores, raw.classes
    )


# ---- RLE ----------------------------------------------------------------------------------


def rles_to_crops(rles: Sequence[dict], height: int, width: int) -> CropMasks:
    """Tight bool crops of full-image COCO RLEs (compressed or not), no full-image array.

    Uses ``nucdet.io.rle.decode_rle_pixels`` (all strings decoded at once); an empty mask
    becomes a 0x0 crop at (0, 0).
    """
    n = len(rles)
    h, w = int(height), int(width)
    if n == 0:
        return CropMasks(np.zeros((0, 4), np.int64), [], h, w)
    pix, areas = decode_rle_pixels(rles, h, w)
    owner = np.repeat(np.arange(n), areas)
    xs, ys = np.divmod(pix, h)
    boxes = np.zeros((n, 4), np.int64)
    nz = np.flatnonzero(areas > 0)
    if len(nz):
        starts = (np.cumsum(areas) - areas)[nz]
        boxes[nz, 0] = np.minimum.reduceat(xs, starts)
        boxes[nz, 1] = np.minimum.reduceat(ys, starts)
        boxes[nz, 2] = np.maximum.reduceat(xs, starts) + 1
        boxes[nz, 3] = np.maximum.reduceat(ys, starts) + 1
    cw = boxes[:, 2] - boxes[:, 0]
    ch = boxes[:, 3] - boxes[:, 1]
    offsets = np.concatenate([[0], np.cumsum(cw * ch)]).astype(np.int64)
    flat = np.zeros(int(offsets[-1]), bool)
    flat[offsets[owner] + (ys - boxes[owner, 1]) * cw[owner] + (xs - boxes[owner, 0])] = True
    return CropMasks(boxes, _split(flat, offsets, boxes), h, w)

"""Fuse the detections of several models and TTA views of one image into one prediction.

Methods are picked by name from ``FUSION_METHODS`` (``fuse(..., method=name)``):

- ``wbf_mask_vote`` (default): weighted box fusion clusters the boxes of all inputs, and
  each cluster's masks are fused in the cluster's crop, by score-weighted averaging of the
  members' mask probabilities (``mask_mode="avg"``) or by a weighted pixel vote
  (``mask_mode="vote"``, ``vote_frac``). The cluster score is WBF's.
- ``wbf_mask_rerun``: weighted box fusion of the boxes as above, then every input's mask
  head is run again on the fused boxes (``mask_heads``: one callable per input, given by
  ``EnsemblePredictor``, which maps the boxes into that model's view and the grids back)
  and the probabilities are averaged with the input weights, then thresholded in the
  fused box: every model x view votes on every fused instance, also those it missed.
- ``nms``: greedy per-class box NMS over all inputs; survivors keep their own mask.
- ``mask_nms``: the same with mask IoU.

Inputs are ``RawDetections`` already mapped back to the original image (``tta.TTAView
.invert``), one per (model, view), with one weight each. The output is a ``FusionResult``:
an ``ImagePrediction`` (binary masks as full-image RLEs, sorted by score, overlaps NOT yet
removed: that is post-processing's job), the fused boxes, and the membership of every
fused instance as ``(input index, detection index)`` rows.

Weighted box fusion with membership (``wbf_clusters``, bit-identical to
``ensemble_boxes.weighted_boxes_fusion``) lives in ``nucdet.inference.wbf``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from nucdet.inference.fusion_semantic import fuse_unet_fg_reweight
from nucdet.inference.masks import CropMasks, fuse_grids, paste_extent, paste_grids
from nucdet.inference.wbf import WBFClusters, input_names, wbf_clusters
from nucdet.structures import ImagePrediction, RawDetections

logger = logging.getLogger(__name__)

__all__ = [
    "FUSION_METHODS",
    "FusionResult",
    "fuse",
    "fuse_mask_nms",
    "fuse_mask_rerun",
    "fuse_nms",
    "fuse_wbf_mask_vote",
    "validate_inputs",
]


@dataclass
class FusionResult:
    """Fused instances of one image.

    Attributes:
        prediction: fused instances, sorted by descending score; may overlap.
        boxes: (K, 4) float32 fused boxes xyxy in image pixels.
        members: K int64 arrays of shape (m, 2): ``(input index, detection index)`` of
            every input detection in the instance (for NMS methods: the survivor first,
            then the detections it suppressed).
    """

    prediction: ImagePrediction
    boxes: np.ndarray
    members: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prediction)


# ---- input validation ---------------------------------------------------------------------


def validate_inputs(
    raws: Sequence[RawDetections],
    weights: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Check inputs before fusion; returns the weights as a float64 array.

    Raises ``ValueError`` naming the input (``names[t]``, e.g. "model r50 / view hflip")
    when: image sizes differ, a box is not finite, has x1 < x0 or y1 < y0, or leaves the
    image; a score is not finite or outside [0, 1]; mask grids differ in size or are not
    finite; a weight is not finite or negative. Nothing is clipped.
    """
    if len(raws) == 0:
        raise ValueError("fusion needs at least one input")
    label = input_names(len(raws), names)
    w = np.ones(len(raws)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if len(w) != len(raws):
        raise ValueError(f"{len(w)} weights for {len(raws)} inputs ({', '.join(label)})")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    h, wd = raws[0].height, raws[0].width
    m = None
    for t, r in enumerate(raws):
        if (r.height, r.width) != (h, wd):
            raise ValueError(
                f"{label[t]}: image size {r.height}x{r.width} != {h}x{wd} of {label[0]} "
                "(invert TTA views before fusing)"
            )
        b = r.boxes
        if len(b) == 0:
            continue
        bad = ~np.isfinite(b).all(axis=1)
        bad |= (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
        bad |= (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > wd) | (b[:, 3] > h)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{label[t]}: box {i} {b[i].tolist()} is not finite, inverted or outside the "
                f"{h}x{wd} image ({int(bad.sum())} such boxes)"
            )
        s = r.scores
        if not (np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()):
            i = int(np.flatnonzero(~(np.isfinite(s) & (s >= 0) & (s <= 1)))[0])
            raise ValueError(f"{label[t]}: score {i} = {s[i]} is not in [0, 1]")
        mp = r.mask_probs
        if mp.ndim != 3 or mp.shape[1] != mp.shape[2]:
            raise ValueError(f"{label[t]}: mask_probs must be (N, M, M), got {mp.shape}")
        if m is None:
            m = mp.shape[1]
        elif mp.shape[1] != m:
            raise ValueError(f"{label[t]}: mask grids are {mp.shape[1]}x{mp.shape[1]}, not {m}x{m}")
        if len(mp):
            lo, hi = mp.min(), mp.max()  # NaN propagates through both; fast SIMD reductions
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise ValueError(f"{label[t]}: mask probabilities are not finite")
    return w


# ---- fusion methods -----------------------------------------------------------------------


def _concat(raws: Sequence[RawDetections]) -> tuple[np.ndarray, ...]:
    """All detections of all inputs, with their (input, index) origin."""
    t = np.concatenate([np.full(len(r), i, np.int64) for i, r in enumerate(raws)])
    j = np.concatenate([np.arange(len(r), dtype=np.int64) for r in raws])
    boxes = np.concatenate([r.boxes for r in raws], dtype=np.float32).reshape(-1, 4)
    scores = np.concatenate([r.scores for r in raws], dtype=np.float32)
    classes = np.concatenate([r.classes for r in raws], dtype=np.int64)
    m = next((r.mask_probs.shape[1] for r in raws if len(r)), 1)
    nonempty = [r.mask_probs for r in raws if len(r)]
    grids = (
        np.concatenate(nonempty, dtype=np.float32) if nonempty else np.zeros((0, m, m), np.float32)
    )
    return t, j, boxes, scores, classes, grids


def _empty_result(raws: Sequence[RawDetections], image_id: str) -> FusionResult:
    h, w = raws[0].height, raws[0].width
    return FusionResult(ImagePrediction(image_id, h, w), np.zeros((0, 4), np.float32), [])


def _clusters_in_pixels(
    raws: Sequence[RawDetections],
    w: np.ndarray,
    names: Sequence[str] | None,
    iou_thr: float,
    skip_box_thr: float,
    conf_type: str,
    verify: bool,
) -> tuple[np.ndarray, WBFClusters]:
    """``wbf_clusters`` of the inputs' boxes normalised by the image size; returns the
    (4,) xyxy scale back to pixels with the clusters."""
    h, wd = raws[0].height, raws[0].width
    scale = np.array([wd, h, wd, h], np.float64)
    cl = wbf_clusters(
        [r.boxes.astype(np.float64) / scale for r in raws],
        [r.scores for r in raws],
        [r.classes for r in raws],
        w,
        iou_thr=iou_thr,
        skip_box_thr=skip_box_thr,
        conf_type=conf_type,
        names=names,
        verify=verify,
    )
    return scale, cl


def fuse_wbf_mask_vote(
    raws: Sequence[RawDetections],
    weights: Sequence[float] | None = None,
    *,
    image_id: str = "",
    names: Sequence[str] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "box_and_model_avg",
    mask_thresh: float = 0.5,
    mask_mode: str = "avg",
    vote_frac: float = 0.5,
    verify: bool = False,
) -> FusionResult:
    """Weighted box fusion of all inputs, then mask fusion per cluster.

    Boxes are normalised by the image size and clustered by ``wbf_clusters`` (per class,
    ``iou_thr``, ``conf_type``). Each cluster's crop is the hull of its members'
    ``paste_extent``s (no member mask is cut at the fused box). Member weight = detection
    score x input weight. ``mask_mode="avg"``: a pixel is foreground when the weighted
    mean of the members' pasted probabilities is ``>= mask_thresh``; ``"vote"``: when
    members holding ``>= vote_frac`` of the cluster's weight have probability
    ``>= mask_thresh`` there. The fused score is WBF's.
    """
    w = validate_inputs(raws, weights, names)
    h, wd = raws[0].height, raws[0].width
    t, j, boxes, scores, classes, grids = _concat(raws)
    if len(t) == 0:
        return _empty_result(raws, image_id)
    scale, cl = _clusters_in_pixels(raws, w, names, iou_thr, skip_box_thr, conf_type, verify)
    if len(cl.boxes) == 0:
        return _empty_result(raws, image_id)
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in raws])])
    mem = np.concatenate(cl.members)
    flat = offsets[mem[:, 0]] + mem[:, 1]  # row of every member in the concatenation
    ptr = np.concatenate([[0], np.cumsum([len(m) for m in cl.members])]).astype(np.int64)
    ext = paste_extent(boxes[flat], h, wd)
    starts = ptr[:-1]
    crop_boxes = np.concatenate(
        [np.minimum.reduceat(ext[:, :2], starts), np.maximum.reduceat(ext[:, 2:], starts)], axis=1
    )
    member_w = scores[flat].astype(np.float64) * w[t[flat]]
    crops = fuse_grids(
        grids,
        boxes[flat],
        member_w,
        ptr,
        crop_boxes,
        h,
        wd,
        mode=mask_mode,
        mask_thresh=mask_thresh,
        vote_frac=vote_frac,
        rows=flat,
    )
    pred = ImagePrediction(image_id, h, wd, crops.to_rles(), cl.scores, cl.labels)
    fused_boxes = (cl.boxes * scale).astype(np.float32)
    return FusionResult(pred, fused_boxes, cl.members)


MaskHead = Callable[[np.ndarray, np.ndarray], np.ndarray]


def fuse_mask_rerun(
    raws: Sequence[RawDetections],
    weights: Sequence[float] | None = None,
    *,
    mask_heads: Sequence[MaskHead] | None = None,
    image_id: str = "",
    names: Sequence[str] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "box_and_model_avg",
    mask_thresh: float = 0.5,
    verify: bool = False,
) -> FusionResult:
    """Weighted box fusion of the boxes, then every input's mask head on the fused boxes.

    ``mask_heads[i](boxes, classes)`` returns the (K, M, M) mask probabilities input i's
    model gives the K fused xyxy ``boxes`` (original image pixels) of classes
    ``classes``, on each box's grid in the original orientation. A fused instance's mask:
    the input-weighted mean of those grids, pasted into the fused box, ``>= mask_thresh``.
    Boxes, scores, classes and membership are ``wbf_clusters``' (as ``wbf_mask_vote``).
    """
    w = validate_inputs(raws, weights, names)
    if mask_heads is None or len(mask_heads) != len(raws):
        raise ValueError(
            f"wbf_mask_rerun needs one mask head per input: {len(raws)} inputs, "
            f"{0 if mask_heads is None else len(mask_heads)} mask heads (ensemble_infer.py "
            "passes them; plain RawDetections cannot re-run a model)"
        )
    h, wd = raws[0].height, raws[0].width
    if sum(len(r) for r in raws) == 0:
        return _empty_result(raws, image_id)
    scale, cl = _clusters_in_pixels(raws, w, names, iou_thr, skip_box_thr, conf_type, verify)
    if len(cl.boxes) == 0:
        return _empty_result(raws, image_id)
    fused = (cl.boxes * scale).astype(np.float32)
    total = None
    for head, wt in zip(mask_heads, w):
        grids = np.asarray(head(fused, cl.labels), np.float64)
        if grids.ndim != 3 or len(grids) != len(fused):
            raise ValueError(f"a mask head returned {grids.shape} grids for {len(fused)} boxes")
        total = wt * grids if total is None else total + wt * grids
    avg = (total / w.sum()).astype(np.float32)
    crops = paste_grids(avg, fused, h, wd).threshold(mask_thresh)
    pred = ImagePrediction(image_id, h, wd, crops.to_rles(), cl.scores, cl.labels)
    return FusionResult(pred, fused, cl.members)


# Methods that need the models again (``mask_heads``), not only their detections.
NEEDS_MASK_HEADS = frozenset({"wbf_mask_rerun"})


def _box_iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    xa = np.maximum(boxes[:, 0], box[0])
    ya = np.maximum(boxes[:, 1], box[1])
    xb = np.minimum(boxes[:, 2], box[2])
    yb = np.minimum(boxes[:, 3], box[3])
    inter = np.maximum(xb - xa, 0) * np.maximum(yb - ya, 0)
    union = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = union + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@dataclass
class _Pool:
    """All detections of all inputs, ranked for the NMS baselines."""

    t: np.ndarray  # input index
    j: np.ndarray  # detection index in its input
    boxes: np.ndarray
    ranked: np.ndarray  # score x input weight / max weight, in [0, 1]
    classes: np.ndarray
    grids: np.ndarray
    order: np.ndarray  # indices by descending ranked score (stable)


def _pool(raws, weights, names) -> _Pool:
    w = validate_inputs(raws, weights, names)
    t, j, boxes, scores, classes, grids = _concat(raws)
    ranked = (scores.astype(np.float64) * w[t] / w.max()).astype(np.float32)
    return _Pool(t, j, boxes, ranked, classes, grids, np.argsort(-ranked, kind="stable"))


def _nms_result(
    raws, image_id: str, pool: _Pool, kept: list[int], suppressed_by: np.ndarray, crops: CropMasks
) -> FusionResult:
    """The survivors ``kept`` (pool indices) with their masks ``crops`` (same order)."""
    if not kept:
        return _empty_result(raws, image_id)
    h, wd = raws[0].height, raws[0].width
    idx = np.asarray(kept, np.int64)
    members = []
    for i in kept:
        rows = [i, *np.flatnonzero(suppressed_by == i).tolist()]
        members.append(np.stack([pool.t[rows], pool.j[rows]], axis=1))
    pred = ImagePrediction(image_id, h, wd, crops.to_rles(), pool.ranked[idx], pool.classes[idx])
    return FusionResult(pred, pool.boxes[idx].copy(), members)


def fuse_nms(
    raws: Sequence[RawDetections],
    weights: Sequence[float] | None = None,
    *,
    image_id: str = "",
    names: Sequence[str] | None = None,
    iou_thr: float = 0.5,
    mask_thresh: float = 0.5,
) -> FusionResult:
    """Baseline: greedy per-class box NMS over all inputs (box IoU > ``iou_thr`` suppressed).

    Detections are ranked by score x input weight / max weight (the output score); each
    survivor keeps its own box and pasted mask.
    """
    pool = _pool(raws, weights, names)
    suppressed_by = np.full(len(pool.t), -1, np.int64)
    alive = np.ones(len(pool.t), bool)
    kept: list[int] = []
    for i in pool.order.tolist():
        if not alive[i]:
            continue
        kept.append(i)
        alive[i] = False
        cand = np.flatnonzero(alive & (pool.classes == pool.classes[i]))
        if len(cand):
            hit = cand[_box_iou_one(pool.boxes[i], pool.boxes[cand]) > iou_thr]
            suppressed_by[hit] = i
            alive[hit] = False
    h, wd = raws[0].height, raws[0].width
    idx = np.asarray(kept, np.int64)
    crops = paste_grids(pool.grids[idx], pool.boxes[idx], h, wd).threshold(mask_thresh)
    return _nms_result(raws, image_id, pool, kept, suppressed_by, crops)


def fuse_mask_nms(
    raws: Sequence[RawDetections],
    weights: Sequence[float] | None = None,
    *,
    image_id: str = "",
    names: Sequence[str] | None = None,
    iou_thr: float = 0.5,
    mask_thresh: float = 0.5,
) -> FusionResult:
    """Baseline: greedy per-class NMS on mask IoU (> ``iou_thr`` suppressed), on crops.

    Ranking and scores as ``fuse_nms``; every detection's mask is pasted at
    ``mask_thresh`` first, and empty masks are dropped.
    """
    pool = _pool(raws, weights, names)
    h, wd = raws[0].height, raws[0].width
    crops = paste_grids(pool.grids, pool.boxes, h, wd).threshold(mask_thresh).tight()
    areas = crops.areas()
    suppressed_by = np.full(len(pool.t), -1, np.int64)
    kept: list[int] = []
    kb = np.zeros((0, 4), np.int64)
    for i in pool.order.tolist():
        if areas[i] == 0:
            continue
        bi = crops.boxes[i]
        near = np.flatnonzero(
            (kb[:, 0] < bi[2]) & (kb[:, 2] > bi[0]) & (kb[:, 1] < bi[3]) & (kb[:, 3] > bi[1])
        )
        for q in near.tolist():
            k = kept[q]
            if pool.classes[k] != pool.classes[i]:
                continue
            inter = _intersection(crops, i, k)
            if inter / (areas[i] + areas[k] - inter) > iou_thr:
                suppressed_by[i] = k
                break
        else:
            kept.append(i)
            kb = np.vstack([kb, bi[None]])
    return _nms_result(raws, image_id, pool, kept, suppressed_by, crops.select(kept))


def _intersection(crops: CropMasks, a: int, b: int) -> int:
    """Pixels shared by masks ``a`` and ``b``, from the overlap of their crops."""
    ba, bb = crops.boxes[a], crops.boxes[b]
    x0, y0 = max(ba[0], bb[0]), max(ba[1], bb[1])
    x1, y1 = min(ba[2], bb[2]), min(ba[3], bb[3])
    if x1 <= x0 or y1 <= y0:
        return 0
    ca = crops.crops[a][y0 - ba[1] : y1 - ba[1], x0 - ba[0] : x1 - ba[0]]
    cb = crops.crops[b][y0 - bb[1] : y1 - bb[1], x0 - bb[0] : x1 - bb[0]]
    return int(np.count_nonzero(ca & cb))


FUSION_METHODS: dict[str, Callable[..., FusionResult]] = {
    "wbf_mask_vote": fuse_wbf_mask_vote,
    "wbf_mask_rerun": fuse_mask_rerun,
    "nms": fuse_nms,
    "mask_nms": fuse_mask_nms,
    "unet_fg_reweight": fuse_unet_fg_reweight,  # nucdet.inference.fusion_semantic
}


def fuse(
    raws: Sequence[RawDetections],
    weights: Sequence[float] | None = None,
    *,
    method: str = "wbf_mask_vote",
    **kwargs,
) -> FusionResult:
    """Fuse ``raws`` (one per model x view, in original-image coordinates) by ``method``.

    ``kwargs`` go to the method (``image_id``, ``names``, ``iou_thr``, ``mask_thresh``, and
    for ``wbf_mask_vote`` also ``conf_type``, ``skip_box_thr``, ``mask_mode``,
    ``vote_frac``, ``verify``; ``wbf_mask_rerun`` needs ``mask_heads``).
    """
    if method not in FUSION_METHODS:
        raise KeyError(f"unknown fusion method {method!r}; known: {sorted(FUSION_METHODS)}")
    return FUSION_METHODS[method](raws, weights, **kwargs)

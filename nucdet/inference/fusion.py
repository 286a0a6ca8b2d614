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

Weighted box fusion. ``ensemble_boxes.weighted_boxes_fusion`` returns no membership and
takes ~0.25 s for 8 x 500 boxes, so ``wbf_clusters`` re-implements its algorithm exactly:
same prefiltering, same score sort (numpy ``argsort``), same greedy matching (best IoU >
``iou_thr`` against the running fused boxes, ties to the earliest cluster), same float32
running sums and rescaled confidences, same final sort. Its boxes, scores and labels are
bit-identical to the library's (tested on random and TTA-like inputs; ``verify=True``
re-runs the library and raises on any difference). The matching loop is compiled with
numba and looks only at clusters in the grid cells a box touches, which finds every
cluster with a positive overlap, so the choice is the library's. Only the confidence
types that keep scores <= 1 are accepted: ``box_and_model_avg`` and
``absent_model_aware_avg`` (the library's default ``avg`` exceeds 1 when one model puts
several boxes in a cluster, as TTA views do).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from nucdet.inference.fusion_semantic import fuse_unet_fg_reweight
from nucdet.inference.masks import (
    CropMasks,
    fuse_grids,
    njit_cached,
    paste_extent,
    paste_grids,
)
from nucdet.structures import ImagePrediction, RawDetections

logger = logging.getLogger(__name__)
# ensemble_boxes' float arithmetic follows NumPy's scalar promotion rules (see _wbf_kernel).
_NUMPY2 = int(np.__version__.split(".")[0]) >= 2

__all__ = [
    "CONF_TYPES",
    "FUSION_METHODS",
    "FusionResult",
    "WBFClusters",
    "fuse",
    "fuse_mask_nms",
    "fuse_mask_rerun",
    "fuse_nms",
    "fuse_wbf_mask_vote",
    "validate_inputs",
    "wbf_clusters",
]

CONF_TYPES = ("box_and_model_avg", "absent_model_aware_avg")


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


@dataclass
class WBFClusters:
    """Output of ``wbf_clusters``: ``weighted_boxes_fusion``'s result plus membership.

    Attributes:
        boxes: (K, 4) float64 normalised fused boxes, scores (K,) float64, labels (K,)
            int64, in the library's output order.
        members: K int64 arrays (m, 2) of ``(input index, box index)``, in the order the
            boxes joined the cluster (descending weighted score).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    members: list[np.ndarray]


# ---- input validation ---------------------------------------------------------------------


def _names(n: int, names: Sequence[str] | None) -> list[str]:
    if names is None:
        return [f"input {t}" for t in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} names for {n} inputs")
    return [str(s) for s in names]


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
    label = _names(len(raws), names)
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


# ---- weighted box fusion with membership --------------------------------------------------


@njit_cached
def _wbf_kernel(b, s, w, thr, gx, gy, f64_divide):  # pragma: no cover - compiled
    """ensemble_boxes' clustering loop for one label, boxes sorted by descending score.

    ``f64_divide``: the library's ``box[4:] /= conf`` (a float32 array by a float64 scalar)
    runs in float64 under NumPy 2's scalar promotion (NEP 50) and in float32 under NumPy 1.

    Returns the cluster of every box, the clusters' fused boxes and the two stored fields
    the library's final rescaling reads (score field and weight field of its rows).
    """
    n = b.shape[0]
    cbox = np.empty((n, 4))  # fused boxes as the library stores them (float64)
    acc = np.zeros((n, 4), np.float32)  # running float32 sums of score * coordinate
    conf = np.zeros(n)
    wsum = np.zeros(n)
    cnt = np.zeros(n, np.int64)
    f_score = np.empty(n)
    f_weight = np.empty(n)
    hull = np.empty((n, 4), np.int64)  # grid cells each cluster is registered in
    cluster_of = np.empty(n, np.int64)
    stamp = np.full(n, -1, np.int64)
    head = np.full(gx * gy, -1, np.int64)
    cap = max(16, 8 * n)
    ent = np.empty(cap, np.int64)
    nxt = np.empty(cap, np.int64)
    n_ent = 0
    k_count = 0
    for i in range(n):
        x0 = b[i, 0]
        y0 = b[i, 1]
        x1 = b[i, 2]
        y1 = b[i, 3]
        area_b = (x1 - x0) * (y1 - y0)
        cx0 = min(max(np.int64(x0 * gx), 0), gx - 1)
        cx1 = min(max(np.int64(x1 * gx), 0), gx - 1)
        cy0 = min(max(np.int64(y0 * gy), 0), gy - 1)
        cy1 = min(max(np.int64(y1 * gy), 0), gy - 1)
        best = -1
        best_iou = thr
        for cx in range(cx0, cx1 + 1):
            for cy in range(cy0, cy1 + 1):
                e = head[cx * gy + cy]
                while e >= 0:
                    k = ent[e]
                    e = nxt[e]
                    if stamp[k] == i:
                        continue
                    stamp[k] = i
                    # bb_iou_array of find_matching_box_fast, operation for operation.
                    xa = max(cbox[k, 0], x0)
                    ya = max(cbox[k, 1], y0)
                    xb = min(cbox[k, 2], x1)
                    yb = min(cbox[k, 3], y1)
                    inter = max(xb - xa, 0.0) * max(yb - ya, 0.0)
                    area_a = (cbox[k, 2] - cbox[k, 0]) * (cbox[k, 3] - cbox[k, 1])
                    iou = inter / (area_a + area_b - inter)
                    # np.argmax takes the first maximum; then "<= thr" means no match.
                    if iou > thr and (best < 0 or iou > best_iou or (iou == best_iou and k < best)):
                        best = k
                        best_iou = iou
        if best >= 0:
            k = best
            sc = s[i]
            for j in range(4):
                acc[k, j] = np.float32(np.float64(acc[k, j]) + sc * b[i, j])
            conf[k] += sc
            wsum[k] += w[i]
            cnt[k] += 1
            # NumPy 1: float32 box / float32(conf), exact via float64 (53 >= 2 * 24 + 2
            # bits); NumPy 2: float64 division, rounded to the float32 array.
            fconf = conf[k] if f64_divide else np.float64(np.float32(conf[k]))
            for j in range(4):
                cbox[k, j] = np.float64(np.float32(np.float64(acc[k, j]) / fconf))
            f_score[k] = np.float64(np.float32(conf[k] / cnt[k]))
            f_weight[k] = np.float64(np.float32(wsum[k]))
        else:
            k = k_count
            k_count += 1
            sc = s[i]
            for j in range(4):
                cbox[k, j] = b[i, j]
                acc[k, j] = np.float32(sc * b[i, j])
            conf[k] = sc
            wsum[k] = w[i]
            cnt[k] = 1
            f_score[k] = sc
            f_weight[k] = w[i]
            hull[k, 0] = gx  # empty hull: every cell is new
            hull[k, 1] = gy
            hull[k, 2] = -1
            hull[k, 3] = -1
        cluster_of[i] = k
        # Register the cluster in the cells of its (possibly moved) box not yet covered.
        nx0 = min(max(np.int64(cbox[k, 0] * gx), 0), gx - 1)
        nx1 = min(max(np.int64(cbox[k, 2] * gx), 0), gx - 1)
        ny0 = min(max(np.int64(cbox[k, 1] * gy), 0), gy - 1)
        ny1 = min(max(np.int64(cbox[k, 3] * gy), 0), gy - 1)
        hx0 = hull[k, 0]
        hy0 = hull[k, 1]
        hx1 = hull[k, 2]
        hy1 = hull[k, 3]
        if nx0 < hx0 or ny0 < hy0 or nx1 > hx1 or ny1 > hy1:
            ux0 = min(nx0, hx0)
            uy0 = min(ny0, hy0)
            ux1 = max(nx1, hx1)
            uy1 = max(ny1, hy1)
            for cx in range(ux0, ux1 + 1):
                for cy in range(uy0, uy1 + 1):
                    if hx0 <= cx <= hx1 and hy0 <= cy <= hy1:
                        continue
                    if n_ent == cap:
                        cap *= 2
                        ent2 = np.empty(cap, np.int64)
                        nxt2 = np.empty(cap, np.int64)
                        ent2[:n_ent] = ent[:n_ent]
                        nxt2[:n_ent] = nxt[:n_ent]
                        ent = ent2
                        nxt = nxt2
                    cell = cx * gy + cy
                    ent[n_ent] = k
                    nxt[n_ent] = head[cell]
                    head[cell] = n_ent
                    n_ent += 1
            hull[k, 0] = ux0
            hull[k, 1] = uy0
            hull[k, 2] = ux1
            hull[k, 3] = uy1
    return cluster_of, cbox[:k_count].copy(), f_score[:k_count].copy(), f_weight[:k_count].copy()


def _model_sets(mem_t: np.ndarray, starts: np.ndarray, n_in: int) -> tuple[list, np.ndarray]:
    """The distinct sets of inputs present in clusters (bool rows) and each cluster's set."""
    k = len(starts) - 1
    if n_in <= 62:  # one int64 bitmask per cluster
        keys = np.bitwise_or.reduceat(np.left_shift(np.int64(1), mem_t), starts[:-1])
        uniq, inv = np.unique(keys, return_inverse=True)
        rows = [(np.right_shift(u, np.arange(n_in)) & 1).astype(bool) for u in uniq]
        return rows, inv.reshape(-1)
    owner = np.repeat(np.arange(k), np.diff(starts))
    table = np.zeros((k, n_in), bool)
    table[owner, mem_t] = True
    uniq, inv = np.unique(table, axis=0, return_inverse=True)
    return list(uniq), inv.reshape(-1)


def _grid_size(extent: np.ndarray) -> int:
    # About one typical box per cell: a box then touches ~4 cells of ~a few clusters each.
    med = float(np.median(extent)) if len(extent) else 1.0
    return int(min(max(1.0 / max(med, 1e-6), 1.0), 256.0))


def wbf_clusters(
    boxes_list: Sequence[np.ndarray],
    scores_list: Sequence[np.ndarray],
    labels_list: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    *,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "box_and_model_avg",
    names: Sequence[str] | None = None,
    verify: bool = False,
) -> WBFClusters:
    """``ensemble_boxes.weighted_boxes_fusion`` on normalised boxes, with membership.

    Same arguments and results as the library (``allows_overflow`` does not apply to the
    accepted ``conf_type``s). Boxes must already lie in [0, 1] with x1 >= x0, y1 >= y0
    (``ValueError`` naming the input otherwise: the library would clip with a warning).
    Zero-area boxes and scores below ``skip_box_thr`` are dropped, as the library does.
    ``verify=True`` also runs the library and raises ``RuntimeError`` on any difference.
    """
    if conf_type not in CONF_TYPES:
        raise ValueError(
            f"conf_type must be one of {CONF_TYPES} (scores stay <= 1), got {conf_type!r}"
        )
    if not 0.0 <= iou_thr <= 1.0:
        raise ValueError(f"iou_thr must be in [0, 1], got {iou_thr}")
    n_in = len(boxes_list)
    label = _names(n_in, names)
    if not (len(scores_list) == len(labels_list) == n_in):
        raise ValueError(
            f"{n_in} box arrays, {len(scores_list)} score arrays, {len(labels_list)} label arrays"
        )
    weights_arr = np.ones(n_in) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if len(weights_arr) != n_in:
        raise ValueError(f"{len(weights_arr)} weights for {n_in} inputs")
    parts = []
    for t in range(n_in):
        b = np.asarray(boxes_list[t], np.float64).reshape(-1, 4)
        s = np.asarray(scores_list[t]).reshape(-1)
        lab = np.asarray(labels_list[t]).reshape(-1)
        if not (len(b) == len(s) == len(lab)):
            raise ValueError(f"{label[t]}: {len(b)} boxes, {len(s)} scores, {len(lab)} labels")
        bad = ~np.isfinite(b).all(axis=1) | (b < 0).any(axis=1) | (b > 1).any(axis=1)
        bad |= (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{label[t]}: normalised box {i} {b[i].tolist()} is not finite, inverted or "
                "outside [0, 1]"
            )
        if not np.isfinite(s.astype(np.float64)).all():
            raise ValueError(f"{label[t]}: scores are not finite")
        # prefilter_boxes: drop low scores and zero-area boxes; score becomes score * weight.
        keep = ~(s < skip_box_thr) & ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) != 0.0)
        j = np.flatnonzero(keep)
        parts.append((t, j, b[j], s[j].astype(np.float64) * weights_arr[t], lab[j]))
    out = _cluster_parts(parts, weights_arr, iou_thr, conf_type)
    if verify:
        _verify(
            out, boxes_list, scores_list, labels_list, weights_arr, iou_thr, skip_box_thr, conf_type
        )
    return out


def _cluster_parts(
    parts: list[tuple], weights: np.ndarray, iou_thr: float, conf_type: str
) -> WBFClusters:
    """The library's clustering and rescaling of prefiltered boxes, label by label."""
    n_in = len(weights)
    all_lab = np.concatenate([p[4] for p in parts]).astype(np.int64) if parts else np.zeros(0)
    if len(all_lab) == 0:
        return WBFClusters(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), [])
    all_t = np.concatenate([np.full(len(p[1]), p[0], np.int64) for p in parts])
    all_j = np.concatenate([p[1] for p in parts]).astype(np.int64)
    all_b = np.concatenate([p[2] for p in parts])
    all_s = np.concatenate([p[3] for p in parts])
    all_w = weights[all_t]
    _, first = np.unique(all_lab, return_index=True)
    label_order = all_lab[np.sort(first)]  # dict insertion order of prefilter_boxes
    w_total = weights.sum()
    sum_cache: dict[bytes, float] = {}
    rows_label, rows_score, rows_box, members = [], [], [], []
    for lab in label_order:
        sel = np.flatnonzero(all_lab == lab)
        order = sel[all_s[sel].argsort()[::-1]]
        ob = np.ascontiguousarray(all_b[order])
        cluster_of, cbox, f_score, f_weight = _wbf_kernel(
            ob,
            np.ascontiguousarray(all_s[order]),
            np.ascontiguousarray(all_w[order]),
            float(iou_thr),
            _grid_size(ob[:, 2] - ob[:, 0]),
            _grid_size(ob[:, 3] - ob[:, 1]),
            _NUMPY2,
        )
        k = len(cbox)
        by_cluster = np.argsort(cluster_of, kind="stable")  # join order within a cluster
        sizes = np.bincount(cluster_of, minlength=k)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        mem_t = all_t[order][by_cluster]
        mem_j = all_j[order][by_cluster]
        n_c = sizes.astype(np.float64)
        # The library's rescaled confidence, vectorised: the same float64 operations in the
        # same order per cluster. The weight sum over the present (box_and_model_avg) or
        # absent (absent_model_aware_avg) inputs is a numpy sum over the same array as the
        # library's, computed once per distinct set of inputs.
        uniq, inv = _model_sets(mem_t, starts, n_in)
        model_sum = np.empty(len(uniq))
        for u, present in enumerate(uniq):
            key = present.tobytes()
            if key not in sum_cache:
                chosen = present if conf_type == "box_and_model_avg" else ~present
                sum_cache[key] = weights[np.flatnonzero(chosen)].sum()
            model_sum[u] = sum_cache[key]
        if conf_type == "box_and_model_avg":
            scores = f_score * n_c / f_weight * model_sum[inv] / w_total
        else:  # absent_model_aware_avg
            scores = f_score * n_c / (f_weight + model_sum[inv])
        pairs = np.stack([mem_t, mem_j], axis=1)
        bounds = starts.tolist()
        members.extend(pairs[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
        rows_label.append(np.full(k, float(lab)))
        rows_score.append(scores)
        rows_box.append(cbox)
    scores = np.concatenate(rows_score)
    final = scores.argsort()[::-1]  # the library's final sort, on the same array
    return WBFClusters(
        np.concatenate(rows_box)[final],
        scores[final],
        np.concatenate(rows_label)[final].astype(np.int64),
        [members[i] for i in final],
    )


def _verify(
    out, boxes_list, scores_list, labels_list, weights, iou_thr, skip_box_thr, conf_type
) -> None:
    from ensemble_boxes import weighted_boxes_fusion

    rb, rs, rl = weighted_boxes_fusion(
        [np.asarray(b, np.float64) for b in boxes_list],
        list(scores_list),
        list(labels_list),
        weights=weights,
        iou_thr=iou_thr,
        skip_box_thr=skip_box_thr,
        conf_type=conf_type,
    )
    same = (
        len(rb) == len(out.boxes)
        and np.array_equal(rb, out.boxes)
        and np.array_equal(rs, out.scores)
        and np.array_equal(np.asarray(rl, np.int64), out.labels)
    )
    if not same:
        raise RuntimeError(
            f"wbf_clusters differs from ensemble_boxes.weighted_boxes_fusion "
            f"({len(out.boxes)} vs {len(rb)} boxes)"
        )


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

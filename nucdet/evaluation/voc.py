"""VOC-style AP at IoU 0.5 with all-point interpolation (matterport ``compute_ap``).

The semantics of matterport Mask R-CNN's ``utils.compute_matches`` / ``compute_ap``, which
one seed used for its 0.75 DSB2018 validation number:

- predictions are visited by decreasing score (ties: input order);
- each prediction takes the unmatched ground-truth object with the highest mask IoU,
  provided IoU >= threshold (non-strict, as matterport) and the classes agree; when its
  best candidate is already matched it tries the next one, a class mismatch moves on to
  the next candidate too (candidates of equal IoU: lower GT index first);
- each ground-truth object is matched at most once;
- precision/recall after every prediction, precision made monotone from the right, AP =
  sum over recall steps of (recall step) x precision (all-point interpolation).

IoU decisions use integer pixel counts (``inter * q >= p * union`` for threshold p/q).
Empty images (matterport gives NaN): no GT and no prediction -> 1.0; no GT but some
predictions -> 0.0; GT but no prediction -> 0.0. The dataset number is the mean of the
image APs, as the seed computed it.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import numpy as np
from tqdm import tqdm

from nucdet.evaluation.mapiou import as_fractions, iou_above
from nucdet.evaluation.matching import InstancesLike, as_instance_pair, pairwise_overlaps
from nucdet.structures import ImagePrediction


def voc_matches(
    gt: InstancesLike,
    pred: InstancesLike,
    scores: np.ndarray | None = None,
    *,
    gt_classes: np.ndarray | None = None,
    pred_classes: np.ndarray | None = None,
    iou_threshold: float | Fraction = 0.5,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy score-ordered matching. Returns ``(order, pred_match, n_gt)``: prediction
    indices by decreasing score, the GT index matched by each of them (-1: none), and
    the number of GT objects. Scores and classes default to an ``ImagePrediction``'s."""
    if scores is None and isinstance(pred, ImagePrediction):
        scores = pred.scores
    if pred_classes is None and isinstance(pred, ImagePrediction):
        pred_classes = pred.classes
    if gt_classes is None and isinstance(gt, ImagePrediction):
        gt_classes = gt.classes
    g, p = as_instance_pair(gt, pred)
    n_gt, n_pred = len(g), len(p)
    if scores is None:
        if n_pred:
            raise ValueError("VOC AP needs prediction scores")
        scores = np.zeros(0)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != n_pred:
        raise ValueError(f"{n_pred} predictions but {len(scores)} scores")
    gt_cls = np.zeros(n_gt, np.int64) if gt_classes is None else np.asarray(gt_classes)
    pred_cls = np.zeros(n_pred, np.int64) if pred_classes is None else np.asarray(pred_classes)
    thr = as_fractions([iou_threshold])[0]

    ov = pairwise_overlaps(p, g)  # a = predictions, b = ground truth
    union = ov.union
    ok = iou_above(ov.inter, union, thr, strict=False)
    ia, ib, inter, union = ov.ia[ok], ov.ib[ok], ov.inter[ok], union[ok]
    # Candidates of each prediction by decreasing IoU (float order is exact here: distinct
    # ratios of pixel counts differ by far more than a rounding error), then GT index.
    iou = inter / union
    order_c = np.lexsort((ib, -iou, ia))
    ia, ib = ia[order_c], ib[order_c]
    start = np.searchsorted(ia, np.arange(n_pred + 1))

    order = np.argsort(-scores, kind="stable")
    gt_taken = np.zeros(n_gt, dtype=bool)
    pred_match = np.full(n_pred, -1, dtype=np.int64)
    for rank, i in enumerate(order):
        for j in ib[start[i] : start[i + 1]]:
            if gt_taken[j] or pred_cls[i] != gt_cls[j]:
                continue
            gt_taken[j] = True
            pred_match[rank] = j
            break
    return order, pred_match, n_gt


def ap_from_matches(pred_match: np.ndarray, n_gt: int) -> float:
    """All-point interpolated AP from score-ordered match flags (matterport's formula)."""
    n_pred = len(pred_match)
    if n_gt == 0:
        return 1.0 if n_pred == 0 else 0.0
    if n_pred == 0:
        return 0.0
    hit = np.cumsum(pred_match > -1)
    precisions = np.concatenate([[0.0], hit / np.arange(1, n_pred + 1), [0.0]])
    recalls = np.concatenate([[0.0], hit / n_gt, [1.0]])
    precisions = np.maximum.accumulate(precisions[::-1])[::-1]
    steps = np.flatnonzero(recalls[:-1] != recalls[1:]) + 1
    return float(np.sum((recalls[steps] - recalls[steps - 1]) * precisions[steps]))


def voc_ap_image(
    gt: InstancesLike,
    pred: InstancesLike,
    scores: np.ndarray | None = None,
    *,
    gt_classes: np.ndarray | None = None,
    pred_classes: np.ndarray | None = None,
    iou_threshold: float | Fraction = 0.5,
) -> float:
    """VOC AP of one image (see the module docstring)."""
    _, pred_match, n_gt = voc_matches(
        gt,
        pred,
        scores,
        gt_classes=gt_classes,
        pred_classes=pred_classes,
        iou_threshold=iou_threshold,
    )
    return ap_from_matches(pred_match, n_gt)


def voc_ap_dataset(
    items: Iterable[tuple[str, InstancesLike, ImagePrediction]],
    *,
    iou_threshold: float | Fraction = 0.5,
    progress: bool = False,
) -> dict[str, Any]:
    """Mean of the image APs over ``(image_id, gt, pred)`` triples; ``pred`` carries the
    scores (``ImagePrediction``); classes are compared when ``gt`` is an
    ``ImagePrediction`` too. Returns ``{"mean", "n_images", "per_image"}``."""
    per_image: dict[str, float] = {}
    for image_id, gt, pred in tqdm(items, desc="VOC AP", disable=not progress):
        per_image[image_id] = voc_ap_image(gt, pred, iou_threshold=iou_threshold)
    values = list(per_image.values())
    return {
        "mean": float(np.mean(values)) if values else float("nan"),
        "n_images": len(values),
        "per_image": per_image,
    }

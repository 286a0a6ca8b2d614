"""Property test (hypothesis) of the Kaggle MaP-IoU against a brute-force reference: random
shapes, random and overlapping masks (predictions drawn as perturbed copies of the ground
truth, duplicates, empty masks), dense masks and COCO RLEs as input."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nucdet.evaluation.mapiou import map_iou_image
from nucdet.io.rle import mask_to_coco_rle

THRESHOLDS = [Fraction(p, 100) for p in range(50, 100, 5)]


def brute_force_map_iou(gt: list[np.ndarray], pred: list[np.ndarray]) -> Fraction:
    """The definition, literally: IoU as an exact fraction per pair, IoU > t strictly, the
    largest one-to-one matching by trying every assignment, precision TP/(TP+FP+FN)
    averaged over t; 1 for an image with neither objects nor predictions."""
    if not gt and not pred:
        return Fraction(1)
    iou = {}
    for i, g in enumerate(gt):
        for j, p in enumerate(pred):
            union = int((g | p).sum())
            iou[i, j] = Fraction(int((g & p).sum()), union) if union else None
    total = Fraction(0)
    for t in THRESHOLDS:
        best = 0
        small, large = (gt, pred) if len(gt) <= len(pred) else (pred, gt)
        for perm in itertools.permutations(range(len(large)), len(small)):
            pairs = [(a, b) if small is gt else (b, a) for a, b in enumerate(perm)]
            best = max(best, sum(1 for p in pairs if iou[p] is not None and iou[p] > t))
        tp = best
        total += Fraction(tp, tp + (len(pred) - tp) + (len(gt) - tp))
    return total / len(THRESHOLDS)


@st.composite
def image(draw):
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    n_gt = draw(st.integers(0, 4))
    gt = [draw(arrays(bool, (h, w))) for _ in range(n_gt)]
    pred = []
    for _ in range(draw(st.integers(0, 4))):
        if gt and draw(st.booleans()):  # a perturbed copy of a GT mask: IoU near the thresholds
            base = gt[draw(st.integers(0, n_gt - 1))]
            flips = draw(arrays(bool, (h, w))) & draw(arrays(bool, (h, w)))  # ~1/4 of pixels
            pred.append(base ^ (flips & draw(arrays(bool, (h, w)))))
        else:
            pred.append(draw(arrays(bool, (h, w))))
    if pred and draw(st.booleans()):
        pred.append(pred[0].copy())  # an exact duplicate prediction
    return (h, w), gt, pred


@settings(max_examples=200, deadline=None, database=None)
@given(image())
def test_map_iou_matches_brute_force(sample):
    shape, gt, pred = sample
    expected = float(brute_force_map_iou(gt, pred))
    as_masks = map_iou_image(
        np.array(gt).reshape(-1, *shape), np.array(pred).reshape(-1, *shape)
    )
    assert abs(as_masks - expected) < 1e-12
    empty = np.zeros((0, *shape), bool)
    as_rles = map_iou_image(
        [mask_to_coco_rle(m) for m in gt] if gt else empty,
        [mask_to_coco_rle(m) for m in pred] if pred else empty,
    )
    assert abs(as_rles - expected) < 1e-12

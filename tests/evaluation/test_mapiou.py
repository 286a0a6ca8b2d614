"""Kaggle MaP-IoU: hand-computed cases and a brute-force reference on random instance sets."""

from __future__ import annotations

import math
from fractions import Fraction
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from nucdet.evaluation.mapiou import (
    KAGGLE_THRESHOLDS,
    map_iou_dataset,
    map_iou_image,
    map_iou_per_threshold,
    match_counts,
)
from nucdet.evaluation.matching import pairwise_overlaps
from nucdet.structures import ImagePrediction

T = [Fraction(p, 100) for p in range(50, 100, 5)]


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _disc_counts(r: int, k: int) -> tuple[int, int]:
    """Area of the lattice disc x^2 + y^2 <= r^2 and its overlap with a copy shifted by k
    columns, counted row by row: row dy spans x in [-s, s] with s = isqrt(r^2 - dy^2); the
    shifted row spans [k - s, k + s], so the rows share max(0, 2s + 1 - k) pixels."""
    area = inter = 0
    for dy in range(-r, r + 1):
        s = math.isqrt(r * r - dy * dy)
        area += 2 * s + 1
        inter += max(0, 2 * s + 1 - k)
    return area, inter


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, 5, 7, 12])
def test_two_discs_shifted_by_k_pixels(k):
    r = 10
    area, inter = _disc_counts(r, k)
    union = 2 * area - inter
    gt = _disc(40, 50, 20, 20, r).astype(np.int32)
    pred = _disc(40, 50, 20, 20 + k, r).astype(np.int32) * 5  # another label id
    passed = sum(inter * t.denominator > t.numerator * union for t in T)
    # One object each: a match gives precision 1 (TP 1), a miss gives 0 (FP 1 + FN 1).
    assert map_iou_image(gt, pred) == pytest.approx(passed / 10)
    expected = [1.0 if inter / union > float(t) else 0.0 for t in T]
    np.testing.assert_array_equal(map_iou_per_threshold(gt, pred), expected)


def test_shift_values_by_hand():
    # r = 10: the lattice disc has 317 pixels; a 1-column shift keeps 317 - 21 = 296
    # (each of the 21 rows loses one pixel), IoU 296 / 338 = 0.876 -> 8 thresholds pass.
    assert _disc_counts(10, 0) == (317, 317)
    assert _disc_counts(10, 1) == (317, 296)
    gt = _disc(30, 30, 15, 15, 10)
    assert map_iou_image(gt.astype(int), np.roll(gt, 1, axis=1).astype(int)) == 0.8


def test_iou_exactly_at_threshold_is_not_a_match():
    gt = np.zeros((8, 8), np.int32)
    gt[0:4, 0:4] = 1  # 16 px
    pred = np.zeros((8, 8), np.int32)
    pred[0:4, 0:3] = 1  # 12 px inside: IoU = 12 / 16 = 0.75 exactly
    # IoU > t for t = .50 .. .70 (5 thresholds), not at .75 (strict) -> 5 / 10.
    assert map_iou_image(gt, pred) == 0.5
    assert map_iou_per_threshold(gt, pred)[5] == 0.0
    # Cellpose-style IoU >= t also matches at 0.75 -> 6 / 10.
    assert map_iou_image(gt, pred, strict=False) == 0.6
    half = np.zeros((8, 8), np.int32)
    half[0:4, 0:2] = 1  # IoU = 8 / 16 = 0.5 exactly: no threshold passes
    assert map_iou_image(gt, half) == 0.0


def test_split_cell():
    gt = np.zeros((12, 12), np.int32)
    gt[0:10, 0:10] = 1
    pred = np.zeros((12, 12), np.int32)
    pred[0:10, 0:6] = 1  # 60 px: IoU 0.6 with the cell
    pred[0:10, 6:10] = 2  # 40 px: IoU 0.4
    # t = .50, .55: TP 1, FP 1, FN 0 -> 1/2; t >= .60: TP 0, FP 2, FN 1 -> 0.
    np.testing.assert_allclose(map_iou_per_threshold(gt, pred), [0.5, 0.5] + [0.0] * 8)
    assert map_iou_image(gt, pred) == pytest.approx(0.1)


def test_merged_pair():
    gt = np.zeros((12, 22), np.int32)
    gt[0:10, 0:12] = 1  # 120 px
    gt[0:10, 12:20] = 2  # 80 px
    pred = (gt > 0).astype(np.int32)  # one 200 px object: IoU 0.6 and 0.4
    # t = .50, .55: TP 1, FP 0, FN 1 -> 1/2; then TP 0, FP 1, FN 2 -> 0.
    assert map_iou_image(gt, pred) == pytest.approx(0.1)


def test_empty_conventions():
    gt = np.zeros((6, 6), np.int32)
    gt[0:2, 0:2] = 1
    gt[3:5, 3:5] = 2
    empty = np.zeros((6, 6), np.int32)
    assert map_iou_image(gt, empty) == 0.0  # GT, no prediction
    assert map_iou_image(empty, gt) == 0.0  # prediction, no GT
    assert map_iou_image(empty, empty) == 1.0  # neither
    assert map_iou_image([], []) == 1.0
    assert map_iou_image(gt, []) == 0.0
    c = match_counts(gt, [])
    assert (c.fn == 2).all() and (c.fp == 0).all()


def test_duplicate_prediction_is_one_tp_and_one_fp():
    gt = np.zeros((6, 6), bool)
    gt[1:4, 1:4] = True
    # Two identical predictions: both have IoU 1 with the one object. Counting candidate
    # pairs would give TP 2; one-to-one matching gives TP 1, FP 1 -> 1/2 everywhere.
    assert map_iou_image(gt.astype(int), np.stack([gt, gt])) == 0.5


def test_inputs_rles_and_image_prediction():
    gt = np.zeros((10, 10), np.int32)
    gt[0:5, 0:5] = 3
    gt[6:9, 6:9] = 8
    masks = np.stack([gt == 3, gt == 8])
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    pred = ImagePrediction("a", 10, 10, rles, [0.9, 0.8], [0, 0])
    for p in (rles, pred, masks):
        assert map_iou_image(gt, p) == 1.0


def test_dataset_mean_and_groups():
    a = np.zeros((6, 6), np.int32)
    a[0:3, 0:3] = 1
    b = np.zeros((6, 6), np.int32)
    b[0:3, 0:2] = 1  # IoU 6/9 = 0.667 with a -> 4 thresholds (.50 .. .65) -> 0.4
    empty = np.zeros((6, 6), np.int32)
    res = map_iou_dataset(
        [("i1", a, a), ("i2", a, b), ("i3", a, empty), ("i4", empty, empty)],
        groups={"i1": "astro", "i2": "astro", "i3": "cort"},
    )
    assert res["per_image"] == {"i1": 1.0, "i2": pytest.approx(0.4), "i3": 0.0, "i4": 1.0}
    assert res["mean"] == pytest.approx((1.0 + 0.4 + 0.0 + 1.0) / 4)
    assert res["n_images"] == 4
    assert res["groups"]["astro"]["mean"] == pytest.approx(0.7)
    assert res["groups"]["cort"]["mean"] == 0.0
    assert res["groups"]["unknown"]["n_images"] == 1
    assert res["per_threshold"][0] == pytest.approx(3 / 4)
    assert res["per_threshold"][-1] == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="twice"):
        map_iou_dataset([("i1", a, a), ("i1", a, a)])
    assert np.isnan(map_iou_dataset([])["mean"])


# ---- brute-force reference -----------------------------------------------------------


def _brute_force_score(gt_masks: np.ndarray, pred_masks: np.ndarray) -> list[float]:
    """Dense per-pair IoU with Python ints, exhaustive one-to-one matching."""
    ng, npred = len(gt_masks), len(pred_masks)
    inter = [[int(np.logical_and(g, p).sum()) for p in pred_masks] for g in gt_masks]
    union = [[int(np.logical_or(g, p).sum()) for p in pred_masks] for g in gt_masks]
    out = []
    for t in T:
        ok = [
            [union[i][j] > 0 and Fraction(inter[i][j], union[i][j]) > t for j in range(npred)]
            for i in range(ng)
        ]

        @cache
        def best(i: int, used: int, ok=ok) -> int:
            if i == ng:
                return 0
            top = best(i + 1, used)  # GT i unmatched
            for j in range(npred):
                if ok[i][j] and not used >> j & 1:
                    top = max(top, 1 + best(i + 1, used | 1 << j))
            return top

        tp = best(0, 0)
        out.append(1.0 if ng == npred == 0 else tp / (ng + npred - tp))
    return out


def _perturb(rng, m):
    out = m.copy()
    if rng.random() < 0.5:
        out = np.roll(out, int(rng.integers(-1, 2)), axis=int(rng.integers(0, 2)))
    flips = rng.random(m.shape) < rng.uniform(0, 0.15)
    return out ^ flips


def _random_case(rng):
    h, w = (int(v) for v in rng.integers(6, 14, 2))
    ng = int(rng.integers(0, 6))
    gt = np.zeros((ng, h, w), bool)
    for k in range(ng):
        y0, x0 = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
        gt[k, y0 : y0 + int(rng.integers(2, 6)), x0 : x0 + int(rng.integers(2, 6))] = True
    if rng.random() < 0.5 and ng:  # non-overlapping GT through a label image
        lab = np.zeros((h, w), np.int64)
        for k in range(ng):
            lab[gt[k]] = 10 * k + 3
        ids = [i for i in np.unique(lab) if i]
        gt = np.stack([lab == i for i in ids]) if ids else np.zeros((0, h, w), bool)
        gt_obj = lab
    else:
        gt_obj = gt
    preds = [_perturb(rng, g) for g in gt if rng.random() < 0.85]
    preds += [_perturb(rng, g) for g in gt if rng.random() < 0.25]  # overlapping duplicates
    for _ in range(int(rng.integers(0, 3))):  # spurious objects
        m = np.zeros((h, w), bool)
        y0, x0 = int(rng.integers(0, h - 1)), int(rng.integers(0, w - 1))
        m[y0 : y0 + int(rng.integers(1, 5)), x0 : x0 + int(rng.integers(1, 5))] = True
        preds.append(m)
    preds = [p for p in preds if p.any()]
    rng.shuffle(preds)
    pred = np.stack(preds) if preds else np.zeros((0, h, w), bool)
    if len(pred) and rng.random() < 0.5:
        pred_obj = [mask_utils.encode(np.asfortranarray(p.astype(np.uint8))) for p in pred]
    else:
        pred_obj = pred
    return gt_obj, gt, pred_obj, pred


def test_against_brute_force_on_random_sets():
    rng = np.random.default_rng(2024)
    n_overlapping = n_general = 0
    for case in range(300):
        gt_obj, gt, pred_obj, pred = _random_case(rng)
        expected = _brute_force_score(gt, pred)
        got = map_iou_per_threshold(gt_obj, pred_obj)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12, err_msg=f"case {case}")
        assert map_iou_image(gt_obj, pred_obj) == pytest.approx(np.mean(expected))
        n_overlapping += bool(len(pred)) and pred.sum(0).max() > 1
        counts = match_counts(gt_obj, pred_obj)
        n_general += bool((counts.tp > 0).any())
    # The sample must exercise the overlapping-prediction path and real matches.
    assert n_overlapping >= 50 and n_general >= 150


def test_thresholds_are_exact_fractions():
    assert KAGGLE_THRESHOLDS[5] == Fraction(3, 4)
    gt = np.zeros((1, 10, 10), bool)
    gt[0, 0:10, 0:10] = True
    pred = np.zeros((1, 10, 10), bool)
    pred[0, 0:10, 0:7] = True  # IoU 70 / 100 = 0.7 exactly
    assert map_iou_per_threshold(gt, pred, thresholds=[0.7]).tolist() == [0.0]
    assert map_iou_per_threshold(gt, pred, thresholds=[0.7], strict=False).tolist() == [1.0]
    assert map_iou_per_threshold(gt, pred, thresholds=[0.69]).tolist() == [1.0]


SHARED_DSB = Path(__file__).resolve().parents[3] / "shared" / "data" / "dsb2018" / "stage1_train"


def test_real_dsb_masks_match_pycocotools_iou():
    """Optional real-data check: exact overlaps equal pycocotools' IoU on DSB nuclei."""
    if not SHARED_DSB.is_dir():
        pytest.skip("../shared/data/dsb2018 not present")
    import cv2

    rng = np.random.default_rng(0)
    for sample in sorted(SHARED_DSB.iterdir())[:5]:
        masks = [cv2.imread(str(f), 0) > 0 for f in sorted((sample / "masks").glob("*.png"))]
        gt = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
        pred = []  # eroded by 0-2 pixels (stays free of overlaps), 10% dropped
        for m in masks:
            k = int(rng.integers(0, 3))
            m2 = cv2.erode(m.astype(np.uint8), np.ones((2 * k + 1, 2 * k + 1), np.uint8))
            if m2.any() and rng.random() > 0.1:
                pred.append(mask_utils.encode(np.asfortranarray(m2)))
        iou = np.asarray(mask_utils.iou(gt, pred, [0] * len(pred)))
        ov = pairwise_overlaps(gt, pred)
        dense = np.zeros((len(gt), len(pred)))
        dense[ov.ia, ov.ib] = ov.inter / ov.union
        np.testing.assert_allclose(dense, iou, rtol=0, atol=1e-12, err_msg=sample.name)
        expected = [
            (iou > t).sum() / (len(gt) + len(pred) - (iou > t).sum())
            for t in np.arange(0.5, 1.0, 0.05)
        ]  # no overlaps on either side: counting IoU > t is exact
        assert map_iou_image(gt, pred) == pytest.approx(np.mean(expected), abs=1e-12)

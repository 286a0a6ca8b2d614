"""VOC AP at IoU 0.5 (matterport compute_ap semantics) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from nucdet.evaluation.voc import ap_from_matches, voc_ap_dataset, voc_ap_image, voc_matches
from nucdet.io.rle import mask_to_coco_rle
from nucdet.structures import ImagePrediction


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_tiny_case_by_hand():
    h, w = 20, 30
    g1, g2, g3 = _box(h, w, 0, 4, 0, 4), _box(h, w, 0, 4, 10, 14), _box(h, w, 10, 14, 0, 4)
    gt = np.stack([g1, g2, g3])
    p1 = g1  # score .9: IoU 1 with g1 -> TP
    p2 = _box(h, w, 15, 18, 20, 25)  # score .8: touches nothing -> FP
    p3 = _box(h, w, 0, 4, 10, 12)  # score .7: IoU 8/16 = 0.5 with g2 -> TP (IoU >= 0.5)
    p4 = g1  # score .6: duplicate of g1, already matched -> FP
    pred = np.stack([p4, p2, p1, p3])  # input order differs from score order
    scores = np.array([0.6, 0.8, 0.9, 0.7])
    # Matches by score: T F T F. precision 1, 1/2, 2/3, 1/2; recall 1/3, 1/3, 2/3, 2/3.
    # Monotone precision at the recall steps 0 -> 1/3 -> 2/3 -> 1: 1, 2/3, 0.
    # AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 0 = 5/9.
    assert voc_ap_image(gt, pred, scores) == pytest.approx(5 / 9)
    order, match, n_gt = voc_matches(gt, pred, scores)
    assert order.tolist() == [2, 1, 3, 0] and match.tolist() == [0, -1, 1, -1] and n_gt == 3


def test_next_best_candidate_and_class_mismatch():
    h, w = 10, 20
    g1 = _box(h, w, 0, 5, 0, 5)  # 25 px
    g2 = _box(h, w, 0, 5, 4, 9)  # 25 px, overlaps g1 on a column
    gt = np.stack([g1, g2])
    a = g1.copy()  # score .9 -> g1
    b = _box(h, w, 0, 5, 1, 7)  # 30 px: IoU 20/35 with g1 (taken), 15/40 with g2 -> FP
    c = _box(h, w, 0, 5, 3, 9)  # 30 px: IoU 10/45 with g1, 25/30 with g2 -> TP
    pred = np.stack([a, b, c])
    assert voc_matches(gt, pred, [0.9, 0.8, 0.7])[1].tolist() == [0, -1, 1]
    # Overlapping GT (cols 0-4 and 1-5): x (cols 0-5) has IoU 25/30 with both. Alone it
    # takes g1 (equal IoU: lower index); after e has taken g1 it falls back to g2.
    o1, o2 = _box(h, w, 0, 5, 0, 5), _box(h, w, 0, 5, 1, 6)
    x = _box(h, w, 0, 5, 0, 6)
    gt2 = np.stack([o1, o2])
    assert voc_matches(gt2, x[None], [0.5])[1].tolist() == [0]
    assert voc_matches(gt2, np.stack([x, o1.copy()]), [0.5, 0.9])[1].tolist() == [0, 1]
    # A class mismatch skips the candidate: AP = 0 for a single wrong-class detection.
    assert voc_ap_image(g1[None], g1[None], [1.0], gt_classes=[0], pred_classes=[1]) == 0.0
    assert voc_ap_image(g1[None], g1[None], [1.0], gt_classes=[1], pred_classes=[1]) == 1.0


def test_empty_cases_and_formula():
    g = _box(8, 8, 0, 3, 0, 3)[None]
    none = np.zeros((0, 8, 8), bool)
    assert voc_ap_image(none, none, []) == 1.0
    assert voc_ap_image(none, g, [0.5]) == 0.0
    assert voc_ap_image(g, none, []) == 0.0
    # Two GT, predictions T, T: recall 1/2 -> 1 at precision 1 -> AP 1.
    assert ap_from_matches(np.array([0, 1]), 2) == 1.0
    # F, T with 1 GT: precision 0, 1/2; recall 0, 1 -> AP 1/2.
    assert ap_from_matches(np.array([-1, 0]), 1) == 0.5
    with pytest.raises(ValueError, match="scores"):
        voc_ap_image(g, g)


def test_dataset_mean_with_image_predictions():
    h, w = 8, 8
    g = _box(h, w, 0, 3, 0, 3)
    gt = ImagePrediction("a", h, w, [mask_to_coco_rle(g)], [1.0], [0])
    hit = ImagePrediction("a", h, w, [mask_to_coco_rle(g)], [0.9], [0])
    wrong_class = ImagePrediction("b", h, w, [mask_to_coco_rle(g)], [0.9], [1])
    res = voc_ap_dataset([("a", gt, hit), ("b", gt, wrong_class)])
    assert res["per_image"] == {"a": 1.0, "b": 0.0} and res["mean"] == 0.5

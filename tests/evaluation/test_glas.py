"""GlaS object F1 / Dice / Hausdorff: hand-computed cases and a dense reference that
follows the challenge's Matlab code line by line on random label images."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import directed_hausdorff

from nucdet.evaluation.glas import glas_counts, glas_dataset, glas_image


def _lab(h, w, *boxes):
    out = np.zeros((h, w), np.int32)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        out[y0:y1, x0:x1] = k + 1
    return out


def test_detection_f1_by_hand():
    gt = _lab(20, 20, (0, 4, 0, 4), (10, 15, 10, 14))  # 16 px, 20 px
    pred = np.zeros((20, 20), np.int32)
    pred[0:3, 0:4] = 1  # 12 of g1's 16 px: > 50% -> TP
    pred[10:15, 10:12] = 2  # 10 of g2's 20 px: exactly 50%, not more -> FP (g2 FN)
    pred[18:20, 18:20] = 3  # touches nothing -> FP
    c = glas_counts(gt, pred)
    assert (c.tp, c.fp, c.fn) == (1, 2, 1)
    # Precision 1/3, recall 1/2: F1 = 2 * (1/6) / (5/6) = 0.4.
    assert c.f1() == pytest.approx(0.4)


def test_object_dice_by_hand():
    gt = _lab(10, 10, (0, 4, 0, 4), (6, 8, 6, 8))  # 16 px, 4 px
    pred = _lab(10, 10, (0, 4, 0, 2))  # 8 px inside g1: Dice 2*8/24 = 2/3
    # Segmented side: one object, Dice 2/3. GT side: 16/20 * 2/3 + 4/20 * 0 = 8/15.
    # Object Dice = (2/3 + 8/15) / 2 = 0.6.
    assert glas_image(gt, pred)["ObjDice"] == pytest.approx(0.6)


def test_object_hausdorff_by_hand():
    gt = _lab(6, 6, (0, 1, 0, 1))  # the pixel (0, 0)
    pred = _lab(6, 6, (0, 1, 0, 4))  # row 0, cols 0-3: H = 3
    assert glas_image(gt, pred)["ObjHausdorff"] == pytest.approx(3.0)
    pred2 = np.zeros((6, 6), np.int32)
    pred2[0, 0:2] = 1  # H(g, s1) = 1
    pred2[3, 4] = 2  # no overlap: nearest GT by Hausdorff is g, at distance 5
    # Segmented side: (2 * 1 + 1 * 5) / 3 = 7/3; GT side: g's best overlap is s1 -> 1.
    assert glas_image(gt, pred2)["ObjHausdorff"] == pytest.approx((7 / 3 + 1) / 2)


def test_touching_objects_are_not_merged():
    gt = _lab(8, 12, (0, 6, 0, 5), (0, 6, 5, 10))  # two touching objects
    pred = gt.copy()
    pred[gt == 1] = 7
    pred[gt == 2] = 3
    # As instances: both found exactly. Binarise-and-relabel would give one object.
    assert glas_image(gt, pred) == {"F1": 1.0, "ObjDice": 1.0, "ObjHausdorff": 0.0}


def test_empty_cases():
    empty = np.zeros((5, 5), np.int32)
    one = _lab(5, 5, (0, 2, 0, 2))
    assert glas_image(empty, empty) == {"F1": 1.0, "ObjDice": 1.0, "ObjHausdorff": 0.0}
    for a, b in ((empty, one), (one, empty)):
        r = glas_image(a, b)
        assert r["F1"] == 0.0 and r["ObjDice"] == 0.0 and r["ObjHausdorff"] == float("inf")


def test_dataset_pools_counts_and_weights_over_all_objects():
    big_gt = _lab(10, 10, (0, 6, 0, 6))  # 36 px
    big_pred = _lab(10, 10, (0, 6, 0, 3))  # 18 px inside: TP? 18/36 = 0.5 -> no. Dice 2/3
    small_gt = _lab(10, 10, (0, 2, 0, 2))  # 4 px
    small_pred = small_gt.copy()  # Dice 1
    res = glas_dataset([("a", big_gt, big_pred), ("b", small_gt, small_pred)])
    # TP 1 (image b), FP 1, FN 1 -> F1 = 2 / 4.
    assert (res["TP"], res["FP"], res["FN"]) == (1, 1, 1) and res["F1"] == 0.5
    # Pooled Dice: GT side (36 * 2/3 + 4 * 1) / 40 = 0.7; pred side (18 * 2/3 + 4) / 22.
    assert res["ObjDice"] == pytest.approx((0.7 + 16 / 22) / 2)
    # The mean of per-image values would differ: (2/3 + 1) / 2.
    assert res["per_image"]["a"]["ObjDice"] == pytest.approx(2 / 3)


# ---- reference: the official Matlab algorithm, dense ----------------------------------


def _mode_nonzero(values):
    values = values[values > 0]
    if values.size == 0:
        return 0
    ids, counts = np.unique(values, return_counts=True)
    return int(ids[np.argmax(counts)])  # Matlab mode: the smallest of the most frequent


def _haus(a, b):
    pa, pb = np.argwhere(a), np.argwhere(b)
    return max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])


def _official(S, G):
    ls = [v for v in np.unique(S) if v]
    lg = [v for v in np.unique(G) if v]
    tp = 0
    for s in ls:
        gi = _mode_nonzero(G[S == s])
        if gi and np.logical_and(S == s, G == gi).sum() / (G == gi).sum() > 0.5:
            tp += 1
    fp, fn = len(ls) - tp, len(lg) - tp
    f1 = 2 * tp / (2 * tp + fp + fn)

    def side(A, B, la, lb, metric):
        total = (A > 0).sum()
        acc = 0.0
        for a in la:
            ma = A == a
            bi = _mode_nonzero(B[ma])
            if bi:
                mb = B == bi
            elif metric == "dice":
                mb = np.zeros_like(ma)
            else:
                mb = B == min(lb, key=lambda v: _haus(ma, B == v))
            if metric == "dice":
                val = 2 * np.logical_and(ma, mb).sum() / (ma.sum() + mb.sum())
            else:
                val = _haus(ma, mb)
            acc += ma.sum() / total * val
        return acc

    dice = (side(S, G, ls, lg, "dice") + side(G, S, lg, ls, "dice")) / 2
    haus = (side(S, G, ls, lg, "haus") + side(G, S, lg, ls, "haus")) / 2
    return f1, dice, haus


def _random_label(rng, h, w, n):
    lab = np.zeros((h, w), np.int32)
    for _ in range(n):
        y, x = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
        lab[y : y + int(rng.integers(2, 8)), x : x + int(rng.integers(2, 8))] = rng.integers(1, 40)
    return lab


def test_against_official_algorithm_on_random_label_images():
    rng = np.random.default_rng(11)
    done = 0
    while done < 60:
        h, w = int(rng.integers(10, 24)), int(rng.integers(10, 24))
        G = _random_label(rng, h, w, int(rng.integers(1, 6)))
        S = np.roll(G, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
        S = np.where(rng.random((h, w)) < 0.1, 0, S)
        S = S + (_random_label(rng, h, w, 1) * (S == 0) if rng.random() < 0.5 else 0)
        if not S.any():
            continue
        f1, dice, haus = _official(S, G)
        got = glas_image(G, S)
        assert got["F1"] == pytest.approx(f1), done
        assert got["ObjDice"] == pytest.approx(dice), done
        assert got["ObjHausdorff"] == pytest.approx(haus), done
        done += 1

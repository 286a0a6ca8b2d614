"""Counting error per image and per dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nucdet.evaluation.counting import count_dataset, count_error


def test_count_error_by_hand():
    lab = np.zeros((6, 6), np.int32)
    lab[0:2, 0:2] = 4
    lab[3:5, 3:5] = 9
    masks = np.zeros((3, 6, 6), bool)  # three predictions, one of them empty
    masks[0, 0:2, 0:2] = masks[1, 3:5, 3:5] = True
    r = count_error(lab, masks)
    assert r == {"n_gt": 2, "n_pred": 3, "error": 1, "abs_error": 1, "rel_error": 0.5}
    assert count_error(4, 1)["error"] == -3
    assert math.isnan(count_error(0, 2)["rel_error"])
    with pytest.raises(ValueError):
        count_error(-1, 0)


def test_count_dataset():
    res = count_dataset([("a", 4, 6), ("b", 10, 5), ("c", 0, 1)])
    assert res["ME"] == pytest.approx((2 - 5 + 1) / 3)
    assert res["MAE"] == pytest.approx((2 + 5 + 1) / 3)
    assert res["MRE"] == pytest.approx((0.5 + 0.5) / 2)  # image c has no GT: left out
    assert (res["n_gt"], res["n_pred"], res["n_images"]) == (14, 12, 3)
    assert math.isnan(count_dataset([])["MAE"])

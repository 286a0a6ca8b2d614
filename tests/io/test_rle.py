"""RLE codecs: hand-computed strings, both pixel orders, round trips, malformed input."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from nucdet.io.rle import (
    coco_rle_areas,
    coco_rle_to_kaggle,
    coco_rle_to_mask,
    crop_to_coco_rle,
    mask_to_coco_rle,
    rle_decode,
    rle_encode,
    rle_to_indices,
)


def test_hand_computed_row_and_column_major():
    # 3x4 mask, pixels (0,1) (0,2) (1,2) (2,0):
    # row-major flat: idx 1,2,6,8 -> runs (2,2) (7,1) (9,1)
    # column-major flat (x*3+y): (0,1)->3 (0,2)->6 (1,2)->7 (2,0)->2 -> idx 2,3,6,7 -> (3,2) (7,2)
    m = np.zeros((3, 4), bool)
    m[0, 1] = m[0, 2] = m[1, 2] = m[2, 0] = True
    assert rle_encode(m, "C") == "2 2 7 1 9 1"
    assert rle_encode(m, "F") == "3 2 7 2"
    assert (rle_decode("2 2 7 1 9 1", (3, 4), "C") == m).all()
    assert (rle_decode("3 2 7 2", (3, 4), "F") == m).all()


def test_sartorius_decode_is_reshape_without_transpose():
    # Row-major: the first 4 pixels are the first image row.
    m = rle_decode("1 4", (3, 4), "C")
    assert m[0].all() and not m[1:].any()


@pytest.mark.parametrize("order", ["C", "F"])
def test_round_trip_random(order):
    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = rng.integers(1, 30, size=2)
        m = rng.random((h, w)) < rng.random()
        assert (rle_decode(rle_encode(m, order), (h, w), order) == m).all()


def test_empty_and_full():
    assert rle_encode(np.zeros((2, 2), bool)) == ""
    assert not rle_decode("", (2, 2)).any()
    assert rle_encode(np.ones((2, 3), bool)) == "1 6"


@pytest.mark.parametrize(
    "bad, msg",
    [
        ("1 2 3", "odd"),
        ("0 2", "below 1"),
        ("1 0", "<= 0"),
        ("5 3", "past the end"),
        ("1 3 2 1", "overlap"),
        ("a 1", "non-integer"),
    ],
)
def test_malformed(bad, msg):
    with pytest.raises(ValueError, match=msg):
        rle_decode(bad, (2, 3))


def test_coco_helpers_match_pycocotools():
    rng = np.random.default_rng(1)
    for _ in range(50):
        h, w = rng.integers(1, 20, size=2)
        m = rng.random((h, w)) < 0.4
        rle = mask_to_coco_rle(m)
        ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert rle["counts"] == ref["counts"].decode()
        assert (coco_rle_to_mask(rle) == m).all()
        for order in "CF":
            assert coco_rle_to_kaggle(rle, order) == rle_encode(m, order)


def test_crop_to_coco_rle_equals_full_encoding():
    rng = np.random.default_rng(2)
    for _ in range(500):
        h, w = rng.integers(1, 15, size=2)
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        crop = rng.random((rng.integers(1, h - y0 + 1), rng.integers(1, w - x0 + 1))) < 0.6
        full = np.zeros((h, w), bool)
        full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        assert crop_to_coco_rle(crop, y0, x0, h, w) == mask_to_coco_rle(full)
    with pytest.raises(ValueError, match="outside"):
        crop_to_coco_rle(np.ones((3, 3), bool), 2, 0, 4, 4)


@pytest.mark.parametrize("order", ["C", "F"])
def test_rle_to_indices_is_the_sparse_decode(order):
    rng = np.random.default_rng(3)
    for _ in range(100):
        h, w = (int(v) for v in rng.integers(1, 12, 2))
        m = rng.random((h, w)) < 0.4
        idx = rle_to_indices(rle_encode(m, order), (h, w), order)
        assert np.array_equal(idx, np.flatnonzero(m.ravel(order="F")))  # column-major
    with pytest.raises(ValueError, match="past the end"):
        rle_to_indices("5 3", (2, 3), order)


def test_areas_of_more_than_255_masks():
    """pycocotools' area() of > 255 masks raises under NumPy 2; ours counts any number,
    equal to the pixel sums, and so do the prediction and ground-truth structures."""
    from nucdet.evaluation.groundtruth import GtDataset, GtImage
    from nucdet.structures import ImagePrediction

    rng = np.random.default_rng(0)
    masks = rng.random((300, 12, 17)) < rng.random((300, 1, 1))
    rles = [mask_to_coco_rle(m) for m in masks]
    expected = masks.reshape(300, -1).sum(1)
    np.testing.assert_array_equal(coco_rle_areas(rles), expected)
    pred = ImagePrediction("x", 12, 17, rles=rles, scores=np.ones(300), classes=np.zeros(300, int))
    np.testing.assert_array_equal(pred.areas(), expected)
    im = GtImage("x", 1, "x.png", 12, 17, rles, np.zeros(300, np.int64), np.zeros(300, bool))
    gt = GtDataset([im], ["nucleus"])
    areas = [a["area"] for a in gt.to_coco()["annotations"]]
    assert areas == expected.tolist()
    assert coco_rle_areas([]).shape == (0,)

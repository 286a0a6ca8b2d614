"""RLE codecs: hand-computed strings, both pixel orders, round trips, malformed input.

References are independent: hand-computed strings, pycocotools' own encoder and decoder,
brute-force run lengths, dense masks."""

import numpy as np
import pytest
from conftest import encode_masks
from pycocotools import mask as mask_utils

from nucdet.io.rle import (
    coco_rle_areas,
    coco_rle_to_kaggle,
    coco_rle_to_mask,
    counts_to_runs,
    crops_to_rles,
    decode_rle_pixels,
    decode_rle_runs,
    expand_runs,
    mask_to_coco_rle,
    rle_counts,
    rle_decode,
    rle_encode,
    rle_to_indices,
    segmentation_to_rle,
    sorted_indices_to_rle,
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


def _crop_rle(crop: np.ndarray, y0: int, x0: int, h: int, w: int) -> dict:
    """``crops_to_rles`` of one crop with its top-left corner at (y0, x0)."""
    box = [[x0, y0, x0 + crop.shape[1], y0 + crop.shape[0]]]
    return crops_to_rles([crop], np.array(box), h, w)[0]


def test_crop_rle_equals_full_encoding():
    rng = np.random.default_rng(2)
    for _ in range(500):
        h, w = rng.integers(1, 15, size=2)
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        crop = rng.random((rng.integers(1, h - y0 + 1), rng.integers(1, w - x0 + 1))) < 0.6
        full = np.zeros((h, w), bool)
        full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        assert _crop_rle(crop, y0, x0, h, w) == mask_to_coco_rle(full)
    with pytest.raises(ValueError, match="outside"):
        _crop_rle(np.ones((3, 3), bool), 2, 0, 4, 4)
    with pytest.raises(ValueError, match="outside"):
        crops_to_rles([np.ones((1, 1), bool)], [[-1, 0, 0, 1]], 4, 4)


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


# ---- COCO counts strings and the batched decoder -------------------------------------------


def _dense(pix: np.ndarray, areas: np.ndarray, h: int, w: int) -> np.ndarray:
    """(N, H, W) masks of decode_rle_pixels' column-major pixels, mask by mask."""
    out = np.zeros((len(areas), w * h), bool)
    out[np.repeat(np.arange(len(areas)), areas), pix] = True
    return out.reshape(len(areas), w, h).transpose(0, 2, 1)


def _runs_f(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO counts by brute force: alternating run lengths in column order."""
    flat = mask.ravel(order="F").astype(int)
    counts, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(n)
            cur, n = v, 0
        n += 1
    counts.append(n)
    return counts


def test_rle_counts_parses_pycocotools_strings():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (5, 7), (40, 30), (300, 200)]:
        for density in (0.0, 0.05, 0.5, 0.95):
            m = rng.random(shape) < density
            if shape == (300, 200):
                m[:] = False
                m[10:290, 5:190] = True  # long runs: multi-character values
            enc = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            got = rle_counts(enc["counts"]).tolist()
            assert got == _runs_f(m)
            assert rle_counts(enc["counts"].decode()).tolist() == got
            assert rle_counts(got).tolist() == got


@pytest.mark.parametrize("bad", ["0a~", "P", "@", "3\x7f"])
def test_rle_counts_rejects_garbage(bad):
    with pytest.raises(ValueError):
        rle_counts(bad)


def test_rle_decoder_matches_pycocotools_on_random_masks():
    rng = np.random.default_rng(0)
    for trial in range(150):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        n = int(rng.integers(1, 6))
        masks = rng.random((n, h, w)) < rng.random()
        rles = encode_masks(masks, as_str=bool(trial % 2))
        pix, areas = decode_rle_pixels(rles, h, w)
        assert areas.tolist() == [int(m.sum()) for m in masks]
        got = _dense(pix, areas, h, w)
        ref = np.stack([mask_utils.decode(r) for r in rles]).astype(bool)
        np.testing.assert_array_equal(got, ref)


def test_rle_decoder_long_runs_and_negative_deltas():
    # Large images give multi-character numbers; alternating long/short runs give
    # negative differences to the count two places before (the sign bit path).
    h, w = 1000, 1200
    m = np.zeros((h, w), bool)
    m[:, 3] = True  # one run of 1000
    m[500:501, 10] = True  # then a run of 1 after a long gap
    m[:, 600:1100] = True  # a run of 500000
    m[7, 1199] = True
    rles = encode_masks(m[None])
    np.testing.assert_array_equal(_dense(*decode_rle_pixels(rles, h, w), h, w)[0], m)
    assert decode_rle_pixels(rles, h, w)[1].tolist() == [int(m.sum())]


def test_rle_uncompressed_counts_and_bytes():
    m = np.zeros((5, 4), bool)
    m[1:3, 1:3] = True
    # Column-major runs: 6 bg, 2 fg, 3 bg, 2 fg, rest bg.
    unc = {"size": [5, 4], "counts": [6, 2, 3, 2, 7]}
    comp = encode_masks(m[None], as_str=False)[0]
    for r in (unc, comp):
        np.testing.assert_array_equal(_dense(*decode_rle_pixels([r], 5, 4), 5, 4)[0], m)
    # Mixed counts types and numpy sizes take the per-mask path: same result.
    as_str = {"size": np.array([5, 4]), "counts": comp["counts"].decode("ascii")}
    got = _dense(*decode_rle_pixels([unc, comp, as_str], 5, 4), 5, 4)
    np.testing.assert_array_equal(got, np.stack([m] * 3))


def test_rle_errors_name_the_mask():
    good = encode_masks(np.ones((1, 4, 4), bool))[0]
    with pytest.raises(ValueError, match="mask 1: size"):
        decode_rle_pixels([good, {"size": [4, 5], "counts": good["counts"]}], 4, 4)
    with pytest.raises(ValueError, match="mask 1"):
        decode_rle_pixels([good, {"size": [4, 4], "counts": "0 1"}], 4, 4)
    with pytest.raises(ValueError, match="covers"):
        decode_rle_pixels([{"size": [4, 4], "counts": [3, 20]}], 4, 4)
    with pytest.raises(ValueError, match="not a COCO RLE"):
        decode_rle_pixels([good, "1 2"], 4, 4)


def test_decode_rle_runs_are_the_foreground_runs():
    # 4x3 column-major: pixels 1-2 and 5-8 of mask 0, nothing in mask 1, pixel 11 of mask 2.
    masks = np.zeros((3, 12), bool)
    masks[0, [1, 2, 5, 6, 7, 8]] = True
    masks[2, 11] = True
    rles = encode_masks(masks.reshape(3, 3, 4).transpose(0, 2, 1))
    starts, lengths, owner = decode_rle_runs(rles, 4, 3)
    assert starts.tolist() == [1, 5, 11]
    assert lengths.tolist() == [2, 4, 1]
    assert owner.tolist() == [0, 0, 2]
    assert expand_runs(starts, lengths).tolist() == [1, 2, 5, 6, 7, 8, 11]
    # One RLE's counts (1 bg, 2 fg, 2 bg, 4 fg, 3 bg) -> the same runs of mask 0.
    assert rle_counts(rles[0]["counts"]).tolist() == [1, 2, 2, 4, 3]
    assert [a.tolist() for a in counts_to_runs(rle_counts(rles[0]["counts"]))] == [[1, 5], [2, 4]]
    assert expand_runs(np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == []
    assert [len(a) for a in decode_rle_runs([], 4, 3)] == [0, 0, 0]


# ---- encoders without a full-image array --------------------------------------------------


def test_sorted_indices_match_dense_encoder():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 5), (17, 23), (64, 48)]:
        for density in (0.0, 0.1, 0.5, 1.0):
            m = rng.random(shape) < density
            if density == 1.0:
                m[:] = True
            idx = np.flatnonzero(m.ravel(order="F"))
            assert sorted_indices_to_rle(idx, *shape) == mask_to_coco_rle(m)


def test_crops_to_rles_equals_full_mask_encoding():
    rng = np.random.default_rng(2)
    cases = 0
    for _ in range(400):
        h, w = (int(v) for v in rng.integers(1, 14, 2))
        x0 = int(rng.integers(0, w + 1))
        x1 = int(rng.integers(x0, w + 1))
        y0 = int(rng.integers(0, h + 1))
        y1 = int(rng.integers(y0, h + 1))
        if rng.random() < 0.2:  # full-height crops: runs continue across columns
            y0, y1 = 0, h
        crop = rng.random((y1 - y0, x1 - x0)) < rng.choice([0.0, 0.3, 0.8, 1.0])
        full = np.zeros((h, w), bool)
        full[y0:y1, x0:x1] = crop
        got = crops_to_rles([crop], np.array([[x0, y0, x1, y1]]), h, w)[0]
        assert got == mask_to_coco_rle(full), (h, w, x0, y0, x1, y1)
        cases += 1
    assert cases == 400
    # Whole image on, single pixel at the last position, and an empty list.
    assert crops_to_rles([np.ones((3, 4), bool)], [[0, 0, 4, 3]], 3, 4)[0] == mask_to_coco_rle(
        np.ones((3, 4), bool)
    )
    last = np.zeros((3, 4), bool)
    last[2, 3] = True
    assert crops_to_rles([np.ones((1, 1), bool)], [[3, 2, 4, 3]], 3, 4)[0] == mask_to_coco_rle(last)
    assert crops_to_rles([], np.zeros((0, 4)), 3, 4) == []


# ---- segmentations -------------------------------------------------------------------------


def test_segmentation_to_rle_of_every_form():
    m = np.zeros((6, 7), bool)
    m[1:4, 2:6] = True
    ref = mask_to_coco_rle(m)
    comp = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    unc = {"size": [6, 7], "counts": rle_counts(comp["counts"]).tolist()}
    for seg in (ref, comp, unc):
        assert segmentation_to_rle(seg, 6, 7) == ref
    poly = [[2.0, 1.0, 6.0, 1.0, 6.0, 4.0, 2.0, 4.0]]
    ref_poly = mask_utils.merge(mask_utils.frPyObjects(poly, 6, 7))
    assert segmentation_to_rle(poly, 6, 7)["counts"] == ref_poly["counts"].decode()
    with pytest.raises(ValueError, match="empty polygon"):
        segmentation_to_rle([], 6, 7)
    with pytest.raises(ValueError, match=r"mask size \[6, 7\] != image size \[7, 6\]"):
        segmentation_to_rle(ref, 7, 6)
    with pytest.raises(ValueError, match="unsupported segmentation of type str"):
        segmentation_to_rle("1 2", 6, 7)

"""Pairwise overlap counting and instance normalisation (nucdet.evaluation.matching).

References are independent: pycocotools' own decoder for instances read from RLEs (the
RLE decoder itself is tested in tests/io/test_rle.py), and dense per-pair pixel counting
with Python ints for the sparse overlap paths.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import encode_masks
from pycocotools import mask as mask_utils

from nucdet.evaluation.matching import (
    as_instances,
    from_label_image,
    from_masks,
    from_rles,
    pairwise_overlaps,
)
from nucdet.structures import ImagePrediction


def _dense_pairs(a: np.ndarray, b: np.ndarray) -> dict[tuple[int, int], int]:
    """All non-empty intersections, counted pixel by pixel with Python ints."""
    out = {}
    for i, ma in enumerate(a):
        for j, mb in enumerate(b):
            n = int(np.logical_and(ma, mb).sum())
            if n:
                out[(i, j)] = n
    return out


def test_from_rles_matches_pycocotools_on_random_masks():
    rng = np.random.default_rng(0)
    for trial in range(150):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        n = int(rng.integers(1, 6))
        masks = rng.random((n, h, w)) < rng.random()
        rles = encode_masks(masks, as_str=bool(trial % 2))
        s = from_rles(rles, h, w)
        assert s.areas.tolist() == [int(m.sum()) for m in masks]
        ref = np.stack([mask_utils.decode(r) for r in rles]).astype(bool)
        np.testing.assert_array_equal(s.masks(), ref)


def test_from_rles_long_runs_and_negative_deltas():
    # Large images give multi-character numbers; alternating long/short runs give
    # negative differences to the count two places before (the sign bit path).
    h, w = 1000, 1200
    m = np.zeros((h, w), bool)
    m[:, 3] = True  # one run of 1000
    m[500:501, 10] = True  # then a run of 1 after a long gap
    m[:, 600:1100] = True  # a run of 500000
    m[7, 1199] = True
    np.testing.assert_array_equal(from_rles(encode_masks(m[None])).masks()[0], m)


def test_rle_uncompressed_counts_and_bytes():
    m = np.zeros((5, 4), bool)
    m[1:3, 1:3] = True
    # Column-major runs: 6 bg, 2 fg, 3 bg, 2 fg, rest bg.
    unc = {"size": [5, 4], "counts": [6, 2, 3, 2, 7]}
    comp = encode_masks(m[None], as_str=False)[0]
    for r in (unc, comp):
        np.testing.assert_array_equal(from_rles([r]).masks()[0], m)
    # Mixed counts types and numpy sizes take the per-mask path: same result.
    as_str = {"size": np.array([5, 4]), "counts": comp["counts"].decode("ascii")}
    np.testing.assert_array_equal(from_rles([unc, comp, as_str]).masks(), np.stack([m] * 3))


def test_label_image_ids_dtypes_and_rejections():
    lab = np.zeros((6, 7), np.uint16)
    lab[0:2, 0:3] = 7
    lab[3:6, 4:7] = 60000
    lab[5, 0] = 3
    s = from_label_image(lab)
    assert s.ids.tolist() == [3, 7, 60000]
    assert s.areas.tolist() == [1, 6, 9]
    assert not s.overlapping
    np.testing.assert_array_equal(s.masks()[2], lab == 60000)
    huge = lab.astype(np.int64) * 10**12
    assert from_label_image(huge).areas.tolist() == [1, 6, 9]
    assert from_label_image(lab.astype(np.float32)).ids.tolist() == [3, 7, 60000]
    with pytest.raises(TypeError, match="binary mask"):
        from_label_image(lab > 0)
    with pytest.raises(ValueError, match="negative"):
        from_label_image(-lab.astype(np.int32))
    with pytest.raises(TypeError, match="integers"):
        from_label_image(lab + 0.5)


def test_label_image_is_copied():
    lab = np.asfortranarray(np.array([[1, 0], [0, 2]], np.int32))
    s = from_label_image(lab)
    lab[:] = 0
    assert s.areas.tolist() == [1, 1] and int(s.label.sum()) == 3


def test_all_input_forms_agree():
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 5, size=(9, 11))
    masks = np.stack([lab == k for k in range(1, 5)])
    rles = encode_masks(masks)
    pred = ImagePrediction("x", 9, 11, rles, np.ones(4), np.zeros(4))
    ref = from_label_image(lab).masks()
    for obj in (lab, masks, rles, pred, list(masks)):
        np.testing.assert_array_equal(as_instances(obj).masks(), ref)


def _random_masks(rng, n, h, w):
    """Random rectangles and speckled blobs; they may overlap."""
    out = np.zeros((n, h, w), bool)
    for k in range(n):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = y0 + rng.integers(1, h // 2 + 2), x0 + rng.integers(1, w // 2 + 2)
        out[k, y0:y1, x0:x1] = True
        if rng.random() < 0.3:
            out[k] &= rng.random((h, w)) < 0.8
    return out


def _non_overlapping(masks):
    lab = np.zeros(masks.shape[1:], np.int64)
    for k, m in enumerate(masks):
        lab[m] = k + 1
    kept = [lab == k + 1 for k in range(len(masks))]
    kept = [m for m in kept if m.any()]
    return lab, np.stack(kept) if kept else np.zeros((0, *masks.shape[1:]), bool)


@pytest.mark.parametrize(
    "kind_a,kind_b", [("label", "label"), ("list", "label"), ("label", "list"), ("list", "list")]
)
def test_sparse_overlaps_equal_dense_counting(kind_a, kind_b):
    rng = np.random.default_rng(sum(map(ord, kind_a + kind_b)))
    seen = set()
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(4, 16, 2))
        sets = []
        for kind in (kind_a, kind_b):
            masks = _random_masks(rng, int(rng.integers(0, 7)), h, w)
            if kind == "label":
                lab, masks = _non_overlapping(masks)
                sets.append((lab, masks))
            else:
                sets.append((encode_masks(masks) if len(masks) else [], masks))
        (obj_a, ma), (obj_b, mb) = sets
        if isinstance(obj_a, list) and not obj_a and isinstance(obj_b, list) and not obj_b:
            continue
        if isinstance(obj_a, list) and not obj_a:
            obj_a = np.zeros((0, h, w), bool)
        if isinstance(obj_b, list) and not obj_b:
            obj_b = np.zeros((0, h, w), bool)
        ov = pairwise_overlaps(obj_a, obj_b)
        seen.add((as_instances(obj_a).overlapping, as_instances(obj_b).overlapping))
        got = {(int(i), int(j)): int(n) for i, j, n in zip(ov.ia, ov.ib, ov.inter)}
        assert got == _dense_pairs(ma, mb)
        assert ov.areas_a.tolist() == [int(m.sum()) for m in ma]
        assert ov.areas_b.tolist() == [int(m.sum()) for m in mb]
    # Every code path (run join, label lookup either way, both overlapping) is exercised.
    if kind_a == kind_b == "list":
        assert seen == {(False, False), (False, True), (True, False), (True, True)}


def test_overlapping_sets_are_detected_and_counted():
    m = np.zeros((3, 6, 6), bool)
    m[0, 0:4, 0:4] = True
    m[1, 2:6, 2:6] = True  # overlaps mask 0 on a 2x2 block
    m[2, 0:4, 0:4] = True  # duplicate of mask 0
    s = from_masks(m)
    assert s.overlapping and s.label is None
    assert s.coverage().max() == 3
    ov = pairwise_overlaps(s, s)
    got = {(int(i), int(j)): int(n) for i, j, n in zip(ov.ia, ov.ib, ov.inter)}
    assert got == _dense_pairs(m, m)
    assert got[(0, 1)] == 4 and got[(0, 2)] == 16


def test_boxes_and_coords():
    lab = np.zeros((5, 6), np.int32)
    lab[1:3, 2:5] = 4
    lab[4, 0] = 9
    s = from_label_image(lab)
    assert s.boxes().tolist() == [[1, 2, 2, 4], [4, 0, 4, 0]]
    rows, cols = s.coords(1)
    assert rows.tolist() == [4] and cols.tolist() == [0]
    e = from_masks(np.zeros((2, 3, 3), bool))
    assert e.boxes().tolist() == [[-1] * 4, [-1] * 4]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="different image sizes"):
        pairwise_overlaps(np.zeros((3, 4), int), np.zeros((4, 3), int))


def test_long_overlap_chains_fall_back_to_the_pixel_path():
    # 20 masks in one column, each overlapping the next: 20 layers of disjoint runs, more
    # than the layered join takes, so the pixel path must give the same counts.
    a = np.zeros((20, 24, 3), bool)
    for i in range(20):
        a[i, i : i + 3, 0] = True
    b = np.roll(a, 1, axis=1)
    from nucdet.evaluation.matching import _disjoint_layers

    assert _disjoint_layers(from_masks(a)) is None
    assert len(_disjoint_layers(from_masks(a), max_layers=64)) == 20
    ov = pairwise_overlaps(a, b)
    got = {(int(i), int(j)): int(n) for i, j, n in zip(ov.ia, ov.ib, ov.inter)}
    assert got == _dense_pairs(a, b)

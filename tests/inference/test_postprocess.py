"""Post-processing: thresholds and areas per class, majority class, overlap removal in
score order by index, hole filling, fragment removal, config wiring, empty images."""

from __future__ import annotations

import numpy as np
import pytest

from nucdet.inference.postprocess import (
    majority_class_of,
    postprocess,
    postprocess_from_cfg,
)
from nucdet.io.rle import mask_to_coco_rle
from nucdet.structures import ImagePrediction

H, W = 40, 50


def _pred(masks, scores, classes=None):
    masks = np.asarray(masks, bool)
    classes = np.zeros(len(masks), np.int64) if classes is None else classes
    return ImagePrediction("p", H, W, [mask_to_coco_rle(m) for m in masks], scores, classes)


def _rect(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_score_threshold_and_min_area_per_class():
    masks = [_rect(0, 0, 10, 10), _rect(20, 0, 30, 10), _rect(0, 20, 5, 25), _rect(20, 20, 30, 30)]
    pred = _pred(masks, [0.30, 0.50, 0.90, 0.20], np.array([0, 1, 0, 1]))
    out = postprocess(pred, score_thresh=[0.25, 0.45])
    np.testing.assert_array_equal(out.scores, np.float32([0.9, 0.5, 0.3]))  # score order
    np.testing.assert_array_equal(out.classes, [0, 1, 0])
    # min_area per class: class 0 needs 50 px (the 5x5 square has 25), class 1 needs 1.
    out = postprocess(pred, score_thresh=0.25, min_area=[50, 1])
    np.testing.assert_array_equal(out.masks(), np.stack([masks[1], masks[0]]))
    # a threshold equal to the score keeps it (score >= thresh)
    assert len(postprocess(pred, score_thresh=0.5, remove_overlap=False)) == 2
    with pytest.raises(ValueError, match="score_thresh has 2 values"):
        postprocess(_pred(masks[:1], [0.5], np.array([2])), score_thresh=[0.1, 0.2])


def test_majority_class():
    assert majority_class_of(np.array([0, 1, 1, 2]), np.array([0.9, 0.1, 0.1, 0.9])) == 1
    # tie on count -> larger summed score
    assert majority_class_of(np.array([0, 1, 1, 0]), np.array([0.9, 0.5, 0.5, 0.2])) == 0
    # tie on count and score -> lower class index
    assert majority_class_of(np.array([2, 1]), np.array([0.5, 0.5])) == 1
    masks = [_rect(0, 0, 5, 5), _rect(10, 0, 15, 5), _rect(20, 0, 25, 5)]
    pred = _pred(masks, [0.3, 0.6, 0.4], np.array([2, 0, 2]))
    # Majority 2 first, then class 2's threshold 0.35 applies to all.
    out = postprocess(pred, majority_class=True, score_thresh=[0.9, 0.9, 0.35])
    np.testing.assert_array_equal(out.classes, [2, 2])
    np.testing.assert_array_equal(out.scores, np.float32([0.6, 0.4]))


def test_overlap_removal_by_score_order_and_index():
    a = _rect(0, 0, 20, 20)
    b = _rect(10, 10, 30, 30)  # overlaps a in a 10x10 square
    c = _rect(25, 25, 35, 35)  # overlaps b in 5x5
    # b and c have the same score: they are visited by index (b first), never looked up by
    # score value (which would give c the mask of b).
    pred = _pred([a, b, c], [0.9, 0.5, 0.5])
    out = postprocess(pred)
    m = out.masks()
    np.testing.assert_array_equal(m[0], a)
    np.testing.assert_array_equal(m[1], b & ~a)
    np.testing.assert_array_equal(m[2], c & ~b)
    np.testing.assert_array_equal(out.scores, np.float32([0.9, 0.5, 0.5]))
    # The same with the input in another order: the output follows the scores.
    out = postprocess(_pred([c, b, a], [0.5, 0.5, 0.9]))
    np.testing.assert_array_equal(out.masks(), np.stack([a, c & ~a, b & ~a & ~c]))
    # min_area is checked after the removal (b keeps 300 of its 400 px < 350), and a
    # dropped instance frees its pixels (c keeps all 100).
    out = postprocess(_pred([a, b, c], [0.9, 0.5, 0.5], np.array([0, 1, 0])), min_area=[0, 350])
    np.testing.assert_array_equal(out.masks(), np.stack([a, c]))
    # without removal, masks are returned untouched
    out = postprocess(pred, remove_overlap=False)
    np.testing.assert_array_equal(out.masks(), np.stack([a, b, c]))


def test_no_output_pixel_belongs_to_two_instances():
    rng = np.random.default_rng(0)
    masks = np.zeros((60, H, W), bool)
    for k in range(60):
        y, x = rng.integers(0, H - 8), rng.integers(0, W - 8)
        masks[k, y : y + rng.integers(2, 12), x : x + rng.integers(2, 12)] = True
    scores = rng.choice([0.3, 0.5, 0.7], 60)  # many exact ties
    pred = _pred(masks, scores, rng.integers(0, 3, 60))
    for kw in [{}, {"fill_holes": True}, {"min_fragment": 4}, {"majority_class": True}]:
        out = postprocess(pred, **kw)
        assert out.masks().sum(axis=0).max() == 1
        assert len(out) > 20
        # every kept mask is a subset of its own input mask (no hole filling here
        # can add pixels to solid rectangles)
        assert (np.diff(out.scores) <= 0).all()


def test_fill_holes_and_fragments():
    ring = _rect(5, 5, 20, 20) & ~_rect(9, 9, 15, 15)
    out = postprocess(_pred([ring], [0.9]), fill_holes=True)
    np.testing.assert_array_equal(out.masks()[0], _rect(5, 5, 20, 20))
    # a hole that another, higher-scored instance occupies stays with that instance
    inner = _rect(10, 10, 14, 14)
    out = postprocess(_pred([ring, inner], [0.5, 0.9]), fill_holes=True)
    np.testing.assert_array_equal(out.masks()[0], inner)
    np.testing.assert_array_equal(out.masks()[1], _rect(5, 5, 20, 20) & ~inner)
    # fragments: a 30 px body and a 3 px piece; a diagonal neighbour is connected
    m = _rect(0, 0, 6, 5) | _rect(30, 30, 33, 31)
    m[5, 6] = True  # touches the body only diagonally: 8-connected, kept
    out = postprocess(_pred([m], [0.9]), min_fragment=4)
    expected = _rect(0, 0, 6, 5)
    expected[5, 6] = True
    np.testing.assert_array_equal(out.masks()[0], expected)
    # overlap removal can cut a mask in two: the small piece goes
    big = _rect(0, 10, 30, 14)
    wall = _rect(2, 0, 4, 40)
    out = postprocess(_pred([wall, big], [0.9, 0.5]), min_fragment=10)
    np.testing.assert_array_equal(out.masks()[1], _rect(4, 10, 30, 14))


def test_empty_inputs_and_everything_filtered():
    empty = ImagePrediction("e", H, W)
    out = postprocess(empty, score_thresh=0.5, majority_class=True, fill_holes=True)
    assert len(out) == 0 and (out.image_id, out.height, out.width) == ("e", H, W)
    pred = _pred([_rect(0, 0, 3, 3), np.zeros((H, W), bool)], [0.2, 0.9])
    assert len(postprocess(pred, score_thresh=0.5)) == 0  # the only survivor is empty


def test_postprocess_from_cfg():
    from detectron2.config import get_cfg

    from nucdet.config import add_nucdet_config

    cfg = add_nucdet_config(get_cfg())
    cfg.POSTPROCESS.SCORE_THRESH = [0.15, 0.35, 0.55]
    cfg.POSTPROCESS.MIN_AREA = [75, 150, 75]
    cfg.POSTPROCESS.MAJORITY_CLASS = True
    cfg.POSTPROCESS.FILL_HOLES = True
    cfg.POSTPROCESS.MIN_FRAGMENT = 5
    fn = postprocess_from_cfg(cfg)
    masks = [_rect(0, 0, 10, 10), _rect(20, 0, 30, 10), _rect(0, 20, 8, 28)]
    pred = _pred(masks, [0.5, 0.3, 0.6], np.array([1, 1, 0]))
    out = fn(pred)
    # majority class 1: threshold 0.35 drops 0.3; min area 150 px for class 1 drops all
    assert len(out) == 0
    cfg.POSTPROCESS.MIN_AREA = [0]
    out = postprocess_from_cfg(cfg)(pred)
    np.testing.assert_array_equal(out.scores, np.float32([0.6, 0.5]))
    np.testing.assert_array_equal(out.classes, [1, 1])

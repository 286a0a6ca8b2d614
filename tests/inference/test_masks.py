"""Crop-level masks: pasting equals detectron2's, RLEs decoded to crops equal pycocotools'
on the full mask, fusion of pasted grids by hand (crops -> RLE: tests/io/test_rle.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.layers.mask_ops import _do_paste_mask, paste_masks_in_image
from inference_synth import soft_raw

from nucdet.inference.masks import (
    CropMasks,
    fuse_grids,
    paste_extent,
    paste_grids,
    raw_to_prediction,
    rles_to_crops,
)
from nucdet.io.rle import mask_to_coco_rle
from nucdet.structures import ImagePrediction, RawDetections


def _random_boxes(rng, n, h, w):
    x0 = rng.uniform(-3, w, n)
    y0 = rng.uniform(-3, h, n)
    # Sizes from sub-pixel to more than twice the grid (where detectron2's crop extent,
    # not the bilinear support, decides which pixels can be non-zero).
    bw = np.exp(rng.uniform(np.log(0.3), np.log(80), n))
    bh = np.exp(rng.uniform(np.log(0.3), np.log(80), n))
    b = np.stack([x0, y0, x0 + bw, y0 + bh], axis=1).astype(np.float32)
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    return b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]


def test_paste_matches_detectron2_do_paste_mask():
    rng = np.random.default_rng(0)
    h, w = 50, 70
    boxes = _random_boxes(rng, 160, h, w)
    grids = rng.random((len(boxes), 28, 28)).astype(np.float32)
    got = paste_grids(grids, boxes, h, w)
    assert len(got) == len(boxes) > 120
    worst = 0.0
    for i in range(len(boxes)):
        ref, (ys, xs) = _do_paste_mask(
            torch.from_numpy(grids[i : i + 1, None]), torch.from_numpy(boxes[i : i + 1]), h, w
        )
        assert got.boxes[i].tolist() == [xs.start, ys.start, xs.stop, ys.stop]
        worst = max(worst, float(np.abs(got.crops[i] - ref[0].numpy()).max()))
    # Bit-identical on CPUs where torch's grid_sample uses fused multiply-adds (AVX2 and
    # later); other builds differ by float rounding only.
    assert worst <= 2e-6


def test_raw_to_prediction_matches_paste_masks_in_image():
    rng = np.random.default_rng(1)
    h, w = 40, 60
    boxes = _random_boxes(rng, 80, h, w)
    grids = rng.random((len(boxes), 28, 28)).astype(np.float32)
    raw = RawDetections(boxes, rng.random(len(boxes)), np.zeros(len(boxes)), grids, h, w)
    pred = raw_to_prediction(raw, "img", 0.5)
    masks = pred.masks()
    ref = paste_masks_in_image(torch.from_numpy(grids), torch.from_numpy(boxes), (h, w), 0.5)
    probs = paste_masks_in_image(torch.from_numpy(grids), torch.from_numpy(boxes), (h, w), -1)
    # Pixels within float rounding of the threshold may go either way on other CPUs.
    undecided = np.abs(probs.numpy().astype(np.float32) / 255 - 0.5) < 1 / 255
    assert (masks == ref.numpy())[~undecided].all()
    assert pred.image_id == "img" and len(pred) == len(boxes)
    np.testing.assert_array_equal(pred.scores, raw.scores)


def test_paste_extent_is_detectron2s():
    boxes = np.array([[0.2, 0.7, 5.5, 6.0], [10.0, 3.0, 20.0, 9.99], [58.5, 38.1, 60, 40]])
    np.testing.assert_array_equal(
        paste_extent(boxes, 40, 60), [[0, 0, 7, 7], [9, 2, 21, 11], [57, 37, 60, 40]]
    )


def test_rles_to_crops_round_trip_and_tight_boxes():
    rng = np.random.default_rng(3)
    h, w = 30, 41
    masks = np.zeros((6, h, w), bool)
    for k in range(5):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        masks[k, y : y + rng.integers(1, 9), x : x + rng.integers(1, 9)] = True
        masks[k] &= rng.random((h, w)) < 0.8
    masks[4, :, 10] = True  # a full column
    rles = [mask_to_coco_rle(m) for m in masks]  # mask 5 is empty
    crops = rles_to_crops(rles, h, w)
    np.testing.assert_array_equal(crops.to_masks(), masks)
    pred = ImagePrediction("x", h, w, rles, np.ones(6), np.zeros(6))
    xywh = pred.boxes_xywh()[:5]
    np.testing.assert_array_equal(crops.boxes[:5, :2], xywh[:, :2])
    np.testing.assert_array_equal(crops.boxes[:5, 2:] - crops.boxes[:5, :2], xywh[:, 2:])
    assert crops.crops[5].shape == (0, 0)
    np.testing.assert_array_equal(crops.areas(), masks.sum(axis=(1, 2)))
    # and back to the very same RLEs
    assert crops.to_rles() == rles
    assert len(rles_to_crops([], h, w)) == 0


def test_fuse_grids_by_hand():
    """Two constant grids in integer boxes (grid size = box size: pasting is exact)."""
    h, w = 20, 20
    ones = np.ones((2, 6, 6), np.float32)
    boxes = np.array([[2, 2, 8, 8], [4, 3, 10, 9]], np.float32)  # second shifted by (2, 1)
    crop = np.array([[1, 1, 11, 10]])  # hull of both paste extents
    a = np.zeros((h, w), bool)
    a[2:8, 2:8] = True
    b = np.zeros((h, w), bool)
    b[3:9, 4:10] = True
    cases = [
        # weights 3:1 -> only-a pixels 0.75, only-b pixels 0.25
        (dict(mode="avg", mask_thresh=0.5), a),
        (dict(mode="avg", mask_thresh=0.8), a & b),
        (dict(mode="vote", vote_frac=0.5), a),
        (dict(mode="vote", vote_frac=0.76), a & b),
        (dict(mode="vote", vote_frac=0.2), a | b),
    ]
    for kwargs, expected in cases:
        fused = fuse_grids(ones, boxes, [3.0, 1.0], [0, 2], crop, h, w, **kwargs)
        np.testing.assert_array_equal(fused.to_masks()[0], expected, err_msg=str(kwargs))
    # A unanimous vote passes even though normalised weights sum to 1 only approximately.
    fused = fuse_grids(ones, boxes, [0.7, 0.1], [0, 2], crop, h, w, mode="vote", vote_frac=1.0)
    np.testing.assert_array_equal(fused.to_masks()[0], a & b)


def test_fuse_grids_identical_members_equal_the_member():
    rng = np.random.default_rng(4)
    raw = soft_raw(rng, 40, 50, 10)
    single = paste_grids(raw.mask_probs, raw.boxes, 40, 50).threshold(0.5)
    twice = np.repeat(np.arange(10), 2)
    fused = fuse_grids(
        raw.mask_probs[twice],
        raw.boxes[twice],
        np.repeat(raw.scores, 2),
        np.arange(0, 21, 2),
        single.boxes,
        40,
        50,
    )
    assert fused.to_rles() == single.to_rles()


def test_zero_instances_everywhere():
    empty = paste_grids(np.zeros((0, 28, 28)), np.zeros((0, 4)), 10, 12)
    assert len(empty) == 0 and empty.to_rles() == []
    fused = fuse_grids(np.zeros((0, 28, 28)), np.zeros((0, 4)), [], [0], np.zeros((0, 4)), 10, 12)
    assert len(fused) == 0
    raw = RawDetections(np.zeros((0, 4)), [], [], np.zeros((0, 28, 28)), 10, 12)
    pred = raw_to_prediction(raw, "e")
    assert len(pred) == 0 and (pred.height, pred.width) == (10, 12)


def test_crop_masks_validation():
    with pytest.raises(ValueError, match="not inside"):
        CropMasks(np.array([[0, 0, 5, 5]]), [np.zeros((5, 5), bool)], 4, 4)
    with pytest.raises(ValueError, match="shape"):
        CropMasks(np.array([[0, 0, 2, 3]]), [np.zeros((2, 2), bool)], 4, 4)
    with pytest.raises(ValueError, match="mode"):
        fuse_grids(
            np.zeros((1, 2, 2)), np.zeros((1, 4)), [1], [0, 1], [[0, 0, 1, 1]], 2, 2, mode="max"
        )

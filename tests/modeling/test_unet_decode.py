"""Watershed decoding of synthetic probability maps, and the box + grid records."""

import numpy as np
import pytest
from scipy import ndimage

from nucdet.inference.masks import paste_grids
from nucdet.modeling.unet_decode import (
    box_grids,
    labels_to_detections,
    resample_matrix,
    watershed_instances,
)
from nucdet.modeling.unet_targets import pixel_targets

H, W = 64, 80


def discs():
    """Radius-12 discs centred 24 px apart on row 32: they touch along column 37/38."""
    yy, xx = np.mgrid[:H, :W]
    a = (yy - 32) ** 2 + (xx - 25) ** 2 <= 144
    b = ((yy - 32) ** 2 + (xx - 49) ** 2 <= 144) & ~a
    return a, b


def iou(x, y):
    return (x & y).sum() / (x | y).sum()


def soft_maps(a, b, with_boundary=True):
    """Blurred, not-quite-certain maps, as a trained network gives them."""
    t = pixel_targets(np.stack([a, b]), boundary_width=2.0)
    fg = ndimage.gaussian_filter(0.05 + 0.9 * t.fg, 1.0)
    boundary = ndimage.gaussian_filter(0.9 * t.boundary, 1.0) if with_boundary else 0 * fg
    return fg, boundary, ndimage.gaussian_filter(t.distance, 1.0)


@pytest.mark.parametrize("with_boundary", [True, False])
def test_two_touching_discs_give_two_instances(with_boundary):
    a, b = discs()
    assert (a | b)[32, 37] and (a | b)[32, 38]  # they do touch
    labels = watershed_instances(*soft_maps(a, b, with_boundary))
    assert labels.max() == 2
    found = [labels == k for k in (1, 2)]
    best = sorted(max(iou(f, d) for f in found) for d in (a, b))
    assert best[0] > 0.9


def test_pieces_without_a_marker_and_min_area():
    fg = np.zeros((20, 20), np.float32)
    fg[2:4, 2:4] = 0.9  # 4 px, distance below the marker threshold everywhere
    fg[10:18, 10:18] = 0.9
    dist = np.zeros_like(fg)
    dist[12:16, 12:16] = 1.0
    labels = watershed_instances(fg, np.zeros_like(fg), dist)
    assert labels.max() == 2 and set(np.unique(labels[2:4, 2:4])) == {2}
    assert (labels[10:18, 10:18] == 1).all()
    assert watershed_instances(fg, 0 * fg, dist, min_area=5).max() == 1
    assert watershed_instances(0 * fg, 0 * fg, dist).max() == 0


def test_grids_paste_back_exactly_when_fine_enough():
    a, b = discs()
    labels = np.zeros((H, W), np.int32)
    labels[a], labels[b] = 1, 2
    fg = np.where(a | b, 0.8, 0.1).astype(np.float32)
    fg[a] = 0.9
    det = labels_to_detections(labels, fg, grid_size=56)  # boxes are 25 px: 56 >= 2 * 25
    np.testing.assert_array_equal(det.boxes[0], [13, 20, 38, 45])  # tight, x1/y1 exclusive
    np.testing.assert_allclose(det.scores, [0.9, 0.8], rtol=1e-6)
    crops = paste_grids(det.grids, det.boxes, H, W)
    probs = np.zeros((2, H, W), np.float32)
    for i, (x0, y0, x1, y1) in enumerate(crops.boxes.tolist()):
        probs[i, y0:y1, x0:x1] = crops.crops[i]
    np.testing.assert_allclose(probs[0], np.where(a, 0.9, 0.0), atol=1e-6)
    np.testing.assert_allclose(probs[1], np.where(b, 0.8, 0.0), atol=1e-6)
    # Mask R-CNN's 28 grid: area-averaged, still close at the 0.5 threshold
    coarse = paste_grids(labels_to_detections(labels, fg, grid_size=28).grids, det.boxes, H, W)
    masks = coarse.threshold(0.5).to_masks()
    assert iou(masks[0], a) > 0.95 and iou(masks[1], b) > 0.95


def test_classes_from_the_class_map():
    labels = np.zeros((8, 8), np.int32)
    labels[:4], labels[4:] = 1, 2
    probs = np.zeros((3, 8, 8), np.float32)
    probs[2, :4], probs[0, :4] = 0.7, 0.3
    probs[1, 4:] = 1.0
    det = labels_to_detections(labels, np.ones((8, 8), np.float32), probs, grid_size=4)
    assert det.classes.tolist() == [2, 1]


def test_resample_matrix_rows_are_weights():
    for n, m in [(5, 28), (14, 28), (15, 28), (40, 28), (28, 28)]:
        r = resample_matrix(n, m)
        assert r.shape == (m, n)
        np.testing.assert_allclose(r.sum(axis=1), 1.0, rtol=1e-6)
    # nearest: cell j copies pixel floor((j + 0.5) * 5 / 28)
    assert resample_matrix(5, 28).argmax(axis=1).tolist() == [
        int((j + 0.5) * 5 / 28) for j in range(28)
    ]


def test_box_grids_sample_at_cell_centres():
    ramp = np.tile(np.arange(100, dtype=np.float32) / 100, (20, 1))  # fg[y, x] = x / 100
    g = box_grids(ramp, np.array([[10, 0, 20, 10]]), 10)
    # cell b's centre is at x = 10 + b + 0.5, the centre of pixel 10 + b
    np.testing.assert_allclose(g[0], np.tile((10 + np.arange(10)) / 100, (10, 1)), atol=1e-6)
    assert box_grids(ramp, np.zeros((0, 4)), 7).shape == (0, 7, 7)

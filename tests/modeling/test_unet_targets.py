"""U-Net targets computed by hand on two touching discs and at the image border."""

import numpy as np
import pytest

from nucdet.modeling.unet_targets import pixel_targets

H, W = 21, 31


def two_touching_discs():
    """Radius-5 discs centred at (10, 10) and (10, 20): they touch on row 10 between
    columns 15 (first disc) and 16 (second; its pixel at column 15 belongs to the first)."""
    yy, xx = np.mgrid[:H, :W]
    a = (yy - 10) ** 2 + (xx - 10) ** 2 <= 25
    b = ((yy - 10) ** 2 + (xx - 20) ** 2 <= 25) & ~a
    return a, b


def brute_force(masks):
    """Rim (a 4-neighbour in the image outside the own mask) and the normalised distance
    to the nearest pixel outside the own mask, pixel by pixel."""
    rim = np.zeros((H, W), bool)
    dist = np.zeros((H, W))
    for m in masks:
        outside = np.argwhere(~m)
        for y, x in np.argwhere(m):
            for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < H and 0 <= xx < W and not m[yy, xx]:
                    rim[y, x] = True
        d = np.zeros((H, W))
        for y, x in np.argwhere(m):
            d[y, x] = np.sqrt(((outside - [y, x]) ** 2).sum(axis=1)).min()
        dist = np.maximum(dist, d / d.max())
    return rim, dist


def test_touching_discs_by_hand():
    a, b = two_touching_discs()
    assert a[10, 15] and b[10, 16] and not b[10, 15]
    t = pixel_targets(np.stack([a, b]), boundary_width=1.0, classes=np.array([0, 2]))
    rim, dist = brute_force([a, b])
    np.testing.assert_array_equal(t.fg, (a | b).astype(np.float32))
    np.testing.assert_array_equal(t.boundary.astype(bool), rim)
    # the contact: boundary on both sides; the centres and the outside are not
    assert t.boundary[10, 15] == 1 and t.boundary[10, 16] == 1
    assert t.boundary[10, 10] == 0 and t.boundary[10, 20] == 0 and t.boundary[0, 0] == 0
    # the discs' left and right rims, the top of the first
    assert t.boundary[10, 5] == 1 and t.boundary[10, 25] == 1 and t.boundary[5, 10] == 1
    np.testing.assert_allclose(t.distance, dist, rtol=1e-6)
    assert t.distance[10, 10] == 1.0 and t.distance[10, 20] == 1.0  # centres
    # rim pixel (10, 5): 1 px from the outside; the centre's nearest outside pixel is
    # (15, 11), sqrt(5**2 + 1**2) away
    assert t.distance[10, 5] == pytest.approx(1 / np.sqrt(26))
    assert t.classes[10, 10] == 0 and t.classes[10, 20] == 2 and t.classes[0, 0] == -1


def test_wider_rim_and_contested_pixels():
    a, b = two_touching_discs()
    t = pixel_targets(np.stack([a, b]), boundary_width=2.0)
    # 2 px: the pixels one further in (distance 2 to the outside) join the rim
    assert t.boundary[10, 14] == 1 and t.boundary[10, 17] == 1 and t.boundary[10, 13] == 0
    both = pixel_targets(np.stack([a, a | b]))
    assert both.boundary[10, 10] == 1  # claimed twice: boundary
    assert both.classes[10, 10] == -1


def test_image_border_is_not_a_boundary():
    m = np.zeros((1, 10, 10), bool)
    m[0, :5] = True  # a band cut by the top, left and right image borders
    t = pixel_targets(m, boundary_width=1.0)
    np.testing.assert_array_equal(np.flatnonzero(t.boundary.any(axis=1)), [4])
    assert t.distance[0, 0] == 1.0 and t.distance[4, 0] == pytest.approx(1 / 5)


def test_empty_and_bad_input():
    t = pixel_targets(np.zeros((0, 4, 6), bool))
    assert t.fg.shape == (4, 6) and not t.fg.any() and (t.classes == -1).all()
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        pixel_targets(np.zeros((4, 6), bool))
    with pytest.raises(ValueError, match="classes"):
        pixel_targets(np.zeros((2, 4, 6), bool), classes=np.array([0]))

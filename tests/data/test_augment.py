"""Deterministic transforms of nucdet.data.augment: pixels, coordinates, inverses, values."""

from __future__ import annotations

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import transforms as T

from nucdet.config import add_nucdet_config
from nucdet.data.augment import (
    GaussianBlurTransform,
    GaussianNoiseTransform,
    IntensityTransform,
    RandomGaussianBlur,
    RandomIntensity,
    RandomRot90,
    RandomScale,
    Rot90Transform,
    build_augmentations,
)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rot90_pixels_coords_and_inverse(k):
    h, w = 5, 8
    img = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    t = Rot90Transform(h, w, k)
    out = t.apply_image(img)
    assert np.array_equal(out, np.rot90(img, k))
    assert out.shape[:2] == t.output_shape()
    assert np.array_equal(t.inverse().apply_image(out), img)
    # every pixel centre goes where the pixel goes
    for r, c in [(0, 0), (1, 6), (4, 7), (2, 3)]:
        one = np.zeros((h, w), np.uint8)
        one[r, c] = 1
        rr, cc = np.argwhere(t.apply_segmentation(one))[0]
        xy = t.apply_coords(np.array([[c + 0.5, r + 0.5]]))
        assert np.allclose(xy, [[cc + 0.5, rr + 0.5]])
        assert np.allclose(t.inverse().apply_coords(xy), [[c + 0.5, r + 0.5]])
    # boxes: the tight box of a rotated rectangle
    box = np.array([[1.0, 2.0, 4.0, 5.0]])  # x0, y0, x1, y1: cols 1..3, rows 2..4
    m = np.zeros((h, w), bool)
    m[2:5, 1:4] = True
    ys, xs = np.nonzero(np.rot90(m, k))
    assert np.allclose(t.apply_box(box), [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]])


def test_intensity_values_by_hand():
    img = np.full((2, 2, 3), 50, np.uint8)
    assert (IntensityTransform(brightness=2.0).apply_image(img) == 100).all()
    assert (IntensityTransform(brightness=10.0).apply_image(img) == 255).all()  # clipped
    two = np.zeros((1, 2, 3), np.uint8)
    two[0, 0], two[0, 1] = 100, 200  # grey mean 150
    out = IntensityTransform(contrast=0.5).apply_image(two)
    assert out[0, 0].tolist() == [125] * 3 and out[0, 1].tolist() == [175] * 3
    colour = np.array([[[0, 0, 255]]], np.uint8)  # pure red in BGR, grey = 0.299 * 255
    grey = 0.299 * 255
    out = IntensityTransform(saturation=0.0).apply_image(colour)
    assert out.tolist() == [[[round(grey)] * 3]]
    out = IntensityTransform(saturation=0.5).apply_image(colour)
    assert out.tolist() == [[[round(grey / 2), round(grey / 2), round(255 - (255 - grey) / 2)]]]
    assert isinstance(IntensityTransform(2.0).inverse(), T.NoOpTransform)


def test_blur_and_noise():
    flat = np.full((9, 9, 3), 77, np.uint8)
    assert np.array_equal(GaussianBlurTransform(1.5).apply_image(flat), flat)
    dot = np.zeros((9, 9, 3), np.uint8)
    dot[4, 4] = 255
    out = GaussianBlurTransform(1.0).apply_image(dot)
    assert out[4, 4, 0] < 255 and out[4, 5, 0] > 0 and out[3, 4, 0] == out[5, 4, 0]
    img = np.full((64, 64, 3), 128, np.uint8)
    n1 = GaussianNoiseTransform(8.0, seed=3).apply_image(img)
    assert np.array_equal(n1, GaussianNoiseTransform(8.0, seed=3).apply_image(img))
    assert not np.array_equal(n1, GaussianNoiseTransform(8.0, seed=4).apply_image(img))
    assert abs(n1.astype(float).std() - 8.0) < 0.5 and abs(n1.mean() - 128) < 0.5


def test_random_augmentations_draw_in_range():
    np.random.seed(0)
    img = np.zeros((10, 20, 3), np.uint8)
    ks = {RandomRot90().get_transform(img).__class__.__name__ for _ in range(40)}
    assert ks == {"NoOpTransform", "Rot90Transform"}
    for _ in range(20):
        t = RandomIntensity((0.5, 0.7), (1.0, 1.0), (1.2, 1.3)).get_transform(img)
        assert 0.5 <= t.brightness <= 0.7 and t.contrast == 1.0 and 1.2 <= t.saturation <= 1.3
        s = RandomScale(0.5, 2.0).get_transform(img)
        assert isinstance(s, T.NoOpTransform) or 5 <= s.new_h <= 20
    assert all(
        isinstance(RandomGaussianBlur(0.0).get_transform(img), T.NoOpTransform) for _ in range(9)
    )
    with pytest.raises(ValueError, match="probability"):
        RandomGaussianBlur(1.5)
    with pytest.raises(ValueError, match="brightness"):
        RandomIntensity(brightness=(2.0, 1.0))


def test_build_augmentations_from_config():
    cfg = add_nucdet_config(get_cfg())
    cfg.INPUT.MIN_SIZE_TRAIN = (0,)
    cfg.INPUT.MIN_SIZE_TEST = 0
    names = [type(a).__name__ for a in build_augmentations(cfg, True)]
    assert names == ["RandomFlip", "RandomFlip", "RandomRot90"]  # defaults: flips + rot90
    assert build_augmentations(cfg, False) == []
    cfg.INPUT.MIN_SIZE_TRAIN = (512,)
    cfg.INPUT.AUG.SCALE_JITTER = (0.8, 1.2)
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.AUG.ROT90 = False
    cfg.INPUT.AUG.HFLIP_PROB = 0.0
    cfg.INPUT.AUG.CONTRAST = (0.9, 1.1)
    cfg.INPUT.AUG.BLUR_PROB = 0.2
    cfg.INPUT.AUG.NOISE_PROB = 0.2
    cfg.INPUT.MIN_SIZE_TEST = 520
    names = [type(a).__name__ for a in build_augmentations(cfg, True)]
    assert names == [
        "ResizeShortestEdge",
        "RandomScale",
        "RandomCrop",
        "RandomFlip",
        "RandomIntensity",
        "RandomGaussianBlur",
        "RandomGaussianNoise",
    ]
    assert [type(a).__name__ for a in build_augmentations(cfg, False)] == ["ResizeShortestEdge"]

"""The Otsu + watershed baseline on synthetic images whose nuclei are known exactly."""

import numpy as np
import pytest
from baseline_watershed import foreground_mask, to_grey, watershed_instances

from nucdet.evaluation.mapiou import map_iou_image


def squares_image(bright_nuclei: bool) -> tuple[np.ndarray, np.ndarray]:
    """64x64 image with three separate 11x11 squares; returns (grey, GT label image)."""
    gt = np.zeros((64, 64), np.int32)
    gt[5:16, 5:16] = 1
    gt[30:41, 10:21] = 2
    gt[40:51, 45:56] = 3
    on, off = (200.0, 50.0) if bright_nuclei else (50.0, 200.0)
    return np.where(gt > 0, on, off), gt


def two_touching_discs() -> tuple[np.ndarray, np.ndarray]:
    """Two radius-8 discs whose centres are 14 px apart (they overlap on a thin lens)."""
    yy, xx = np.mgrid[:40, :60]
    a = (yy - 20) ** 2 + (xx - 20) ** 2 <= 64
    b = (yy - 20) ** 2 + (xx - 34) ** 2 <= 64
    return np.where(a | b, 220.0, 30.0), np.stack([a, b])


@pytest.mark.parametrize("bright", [True, False], ids=["fluorescence", "stained"])
def test_separate_squares_found_exactly(bright):
    grey, gt = squares_image(bright)
    fg, inverted = foreground_mask(grey, sigma=0)
    # 3 * 121 = 363 of 4096 px are nuclei: the dark-nuclei image must be inverted
    assert inverted is (not bright)
    assert fg.sum() == 363
    labels = watershed_instances(grey, sigma=0)
    assert labels.max() == 3
    for k in (1, 2, 3):
        ids = np.unique(labels[gt == k])
        assert len(ids) == 1 and ids[0] > 0
        assert (labels == ids[0]).sum() == 121
    assert map_iou_image(gt, labels) == 1.0


def test_touching_discs_are_split_at_the_neck():
    grey, masks = two_touching_discs()
    labels = watershed_instances(grey, sigma=0)
    assert labels.max() == 2
    # each centre in its own label, every foreground pixel labelled
    la, lb = labels[20, 20], labels[20, 34]
    assert la > 0 and lb > 0 and la != lb
    assert ((labels > 0) == (masks[0] | masks[1])).all()
    # the split follows the symmetry axis x = 27: each side is exact
    for lab, m, side in ((la, masks[0], np.arange(60) < 27), (lb, masks[1], np.arange(60) > 27)):
        assert ((labels == lab) & side[None, :]).sum() == (m & side[None, :]).sum()
    # By hand: a disc (d^2 <= 64) has 197 px; the lens both share is 1 + 7 + 1 px in columns
    # 26, 27, 28, so the union is 385 px. Column 27 (7 px) goes to one side: that label is
    # 189 + 7 = 196 px (IoU 196/197), the other 197 - 8 = 189 px (IoU 189/197 = 0.959).
    # Both IoUs exceed 0.95, the highest Kaggle threshold: MaP-IoU exactly 1.
    assert sorted([(labels == la).sum(), (labels == lb).sum()]) == [189, 196]
    assert map_iou_image(masks, labels) == 1.0


def test_blank_and_grey_conversion():
    assert watershed_instances(np.full((16, 16), 7.0)).max() == 0
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 30, 60, 90
    assert (to_grey(bgr) == 60).all()
    with pytest.raises(ValueError, match="2-D"):
        foreground_mask(np.zeros((4, 4, 3)))


def test_tune_scores_each_setting_like_a_single_run(registered):
    """Every row of the grid equals the score of that setting run alone on the same images
    (here all 8 images of the bundled validation split), and rows come best first."""
    from baseline_watershed import score_dataset, tune

    grid = {"sigma": (0.0, 1.0), "min_size": (10,), "seed_spacing": (0.5,)}
    rows = tune("dsb2018_sample_val", 8, grid)
    assert [r["MaP-IoU"] for r in rows] == sorted((r["MaP-IoU"] for r in rows), reverse=True)
    assert {r["sigma"] for r in rows} == {0.0, 1.0}
    # no parameters: the module's tuned defaults, recorded with the result
    default = score_dataset("dsb2018_sample_val")
    assert default["params"] == {"sigma": 0.25, "min_size": 30, "seed_spacing": 0.5}
    for r in rows:
        alone = score_dataset("dsb2018_sample_val", sigma=r["sigma"], min_size=10, seed_spacing=0.5)
        assert alone["n_images"] == 8
        # same images in another order: equal up to the summation order
        assert r["MaP-IoU"] == pytest.approx(alone["MaP-IoU"], rel=1e-12)
        assert r["fluorescence"] == pytest.approx(alone["per_modality"]["fluorescence"], rel=1e-12)

"""unet_fg_reweight: a U-Net's foreground re-weights Mask R-CNN masks; values by hand."""

import numpy as np
import pytest

from nucdet.inference.fusion import FUSION_METHODS, fuse
from nucdet.inference.fusion_semantic import foreground_map, fuse_unet_fg_reweight
from nucdet.structures import RawDetections

H, W = 40, 40


def rcnn():
    """One detection, box [10, 30) x [10, 30), mask probability 0.6 everywhere in it (a
    uniform 28 grid pastes exactly to 0.6 on the box's pixels, 0 outside)."""
    return RawDetections(np.array([[10, 10, 30, 30]]), [0.9], [0], np.full((1, 28, 28), 0.6), H, W)


def unet():
    """Foreground 1.0 on the left half of that box only."""
    return RawDetections(np.array([[10, 10, 20, 30]]), [0.95], [0], np.ones((1, 28, 28)), H, W)


def mask_of(result):
    return result.prediction.masks()[0]


def test_registered_by_name():
    assert FUSION_METHODS["unet_fg_reweight"] is fuse_unet_fg_reweight


def test_foreground_map_by_hand():
    f = foreground_map([unet()], [1.0])
    expected = np.zeros((H, W), np.float32)
    expected[10:30, 10:20] = 1.0
    np.testing.assert_allclose(f, expected, atol=1e-6)


@pytest.mark.parametrize(("mode", "alpha"), [("avg", 0.5), ("mul", 1.0), ("mul", 0.5)])
def test_right_half_without_foreground_is_cut(mode, alpha):
    # avg: left (0.6 + 1) / 2 = 0.8 kept, right 0.6 / 2 = 0.3 cut; mul: left 0.6, right 0
    res = fuse(
        [rcnn(), unet()],
        [1.0, 1.0],
        method="unet_fg_reweight",
        names=["rcnn/identity", "unet/identity"],
        fg_models=["unet"],
        mode=mode,
        alpha=alpha,
    )
    expected = np.zeros((H, W), bool)
    expected[10:30, 10:20] = True
    np.testing.assert_array_equal(mask_of(res), expected)
    assert res.prediction.scores.tolist() == pytest.approx([0.9])  # WBF of the R-CNN input
    assert res.members[0].tolist() == [[0, 0]]  # input 0 (the R-CNN), its detection 0


def test_alpha_zero_is_mask_rcnn_alone():
    res = fuse_unet_fg_reweight(
        [unet(), rcnn()], names=["unet/a", "rcnn/a"], fg_models=["unet"], alpha=0.0
    )
    assert mask_of(res)[10:30, 10:30].all() and mask_of(res).sum() == 400
    assert res.members[0].tolist() == [[1, 0]]  # indices of the caller's inputs


def test_bad_settings_name_the_problem():
    raws = [rcnn(), unet()]
    names = ["rcnn/identity", "unet/identity"]
    with pytest.raises(ValueError, match="fg_models"):
        fuse_unet_fg_reweight(raws, names=names)
    with pytest.raises(ValueError, match="match none"):
        fuse_unet_fg_reweight(raws, names=names, fg_models=["nope"])
    with pytest.raises(ValueError, match="instance models"):
        fuse_unet_fg_reweight(raws, names=names, fg_models=["rcnn", "unet"])
    with pytest.raises(ValueError, match="mode"):
        fuse_unet_fg_reweight(raws, names=names, fg_models=["unet"], mode="max")

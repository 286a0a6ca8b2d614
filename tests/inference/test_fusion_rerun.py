"""Mask-head re-run fusion (``wbf_mask_rerun``): boxes fused by WBF (checked against
ensemble-boxes), every input's mask head on the fused boxes, probabilities averaged with
the input weights; the view plumbing (boxes into each view, grids back) on a real model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG
from detectron2.modeling import build_model
from ensemble_boxes import weighted_boxes_fusion

from nucdet.config import build_cfg
from nucdet.inference.ensemble import EnsemblePredictor, EnsembleSpec, ModelSpec
from nucdet.inference.fusion import FUSION_METHODS, fuse
from nucdet.inference.pipeline import InputImage
from nucdet.inference.tta import build_view, forward_boxes
from nucdet.structures import RawDetections

H, W = 20, 24
M = 28


def _raw(boxes, scores):
    n = len(boxes)
    return RawDetections(
        np.asarray(boxes, np.float32), scores, np.zeros(n), np.zeros((n, M, M)), H, W
    )


def _box_mask(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize(
    "name",
    ["identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "scale:1.5",
     "hflip+rot90", "transpose+scale:0.75+vflip"],
)  # fmt: skip
def test_forward_boxes_inverts_the_view(name):
    view = build_view(name)
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 1, (20, 4)) * [W, H, W, H]
    boxes = np.concatenate([np.minimum(xy[:, :2], xy[:, 2:]), np.maximum(xy[:, :2], xy[:, 2:])], 1)
    vh, vw = view.view_size(H, W)
    there = forward_boxes(view, boxes, (H, W))
    assert (there[:, 2] >= there[:, 0]).all() and (there[:, 3] >= there[:, 1]).all()
    assert there.max() <= max(vh, vw) + 1e-9
    back = view.invert(
        RawDetections(there, np.ones(20), np.zeros(20), np.zeros((20, 2, 2)), vh, vw), (H, W)
    )
    np.testing.assert_allclose(back.boxes, boxes, atol=1e-4)


def test_mask_rerun_averages_every_input_on_the_fused_boxes():
    # Input 0 finds two objects, input 1 only the first (slightly shifted box).
    raws = [
        _raw([[2, 2, 10, 10], [14, 12, 22, 18]], [0.9, 0.7]),
        _raw([[2, 3, 10, 11]], [0.8]),
    ]
    calls = []

    def head(p):
        def run(boxes, classes):
            calls.append((boxes.copy(), classes.copy()))
            return np.full((len(boxes), M, M), p, np.float32)

        return run

    assert "wbf_mask_rerun" in FUSION_METHODS
    res = fuse(raws, [1.0, 1.0], method="wbf_mask_rerun", mask_heads=[head(0.9), head(0.3)])
    # Boxes and scores: ensemble-boxes' WBF on the normalised boxes.
    scale = np.array([W, H, W, H])
    ref_boxes, ref_scores, _ = weighted_boxes_fusion(
        [r.boxes / scale for r in raws],
        [r.scores for r in raws],
        [r.classes for r in raws],
        weights=[1.0, 1.0],
        iou_thr=0.55,
        conf_type="box_and_model_avg",
    )
    np.testing.assert_allclose(res.boxes, ref_boxes * scale, atol=1e-4)
    np.testing.assert_allclose(res.prediction.scores, ref_scores, atol=1e-6)
    # Both heads ran on the same fused boxes, also the one input 1 missed.
    assert len(calls) == 2 and len(calls[0][0]) == 2
    np.testing.assert_array_equal(calls[0][0], res.boxes)
    np.testing.assert_array_equal(calls[1][0], res.boxes)
    # Mean grid 0.6. Pasting (detectron2's grid_sample, zero outside the grid) gives a pixel
    # at grid coordinate u = (centre - x0) / (x1 - x0) * 28 - 0.5 the value 0.6 for
    # 0 <= u <= 27 and 0.6 * (1 + u) just outside: kept (>= 0.5) when u >= -1/6. Fused
    # box 0 is [2, 2.4706, 10, 10.4706] (y's weighted by the scores 0.9 / 0.8): row 2 has
    # u = (2.5 - 2.4706) / 8 * 28 - 0.5 = -0.397: out; rows 3..9 and columns 2..9 are in
    # (column 2: u = 1.25). Box 1 is input 0's own [14, 12, 22, 18]: all of it.
    masks = res.prediction.masks()
    np.testing.assert_allclose(res.boxes[0], [2, 4.2 / 1.7, 10, 17.8 / 1.7], atol=1e-5)
    np.testing.assert_array_equal(masks[0], _box_mask(2, 3, 10, 10))
    np.testing.assert_array_equal(masks[1], _box_mask(14, 12, 22, 18))
    # Weights 1 and 3: (0.9 + 3 * 0.3) / 4 = 0.45 < 0.5: no pixel.
    low = fuse(raws, [1.0, 3.0], method="wbf_mask_rerun", mask_heads=[head(0.9), head(0.3)])
    assert low.prediction.areas().tolist() == [0, 0]
    with pytest.raises(ValueError, match="one mask head per input"):
        fuse(raws, method="wbf_mask_rerun")


OPTS = [
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "30",
]  # fmt: skip


def test_mask_rerun_through_two_view_chains_on_a_real_model(tmp_path):
    """Views ``vflip`` and ``hflip+rot180`` show the model the same image through different
    transform chains; re-running the mask head on the fused boxes, through each chain
    (boxes into the view, grids back), must give the masks of the plain ``vflip`` view."""
    torch.manual_seed(0)
    model = build_model(build_cfg(TINY_CONFIG, OPTS))
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(30.0)  # spread the scores
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    rng = np.random.default_rng(5)
    image = rng.normal(50, 20, (64, 80, 3))
    image[10:30, 20:44] += 120
    image[40:58, 50:70] += 90
    image = image.clip(0, 255).astype(np.uint8)
    member = ModelSpec("m", config=str(TINY_CONFIG), weights=str(weights), opts=OPTS)
    item = InputImage("x", "x.png")
    post = {"REMOVE_OVERLAP": False, "SCORE_THRESH": [0.0]}
    plain = EnsemblePredictor(EnsembleSpec([member], ["vflip"], postprocess=post))
    rerun = EnsemblePredictor(
        EnsembleSpec(
            [member], ["vflip", "hflip+rot180"], {"method": "wbf_mask_rerun"}, postprocess=post
        )
    )
    ref = plain.fused(image, item)
    got = rerun.fused(image, item)
    assert len(got) == len(ref) > 5
    ref_masks = ref.masks().reshape(len(ref), -1)
    ious = []
    for m in got.masks().reshape(len(got), -1):
        inter = (ref_masks & m).sum(1)
        union = (ref_masks | m).sum(1)
        ious.append(np.max(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))
    assert min(ious) > 0.95

"""Scale TTA views are real with a fixed test resize (``INPUT.MIN_SIZE_TEST`` > 0).

A seeded random tiny model runs through ``EnsemblePredictor`` (the ``ensemble_infer.py``
path). Hooks on the model record what the network is given: the input size of every view
(expected sizes worked out by hand from detectron2's ResizeShortestEdge rule) and the boxes
and mask grids the mask head receives / returns in the network frame. The inverted
detections must be those boxes scaled to the original pixels, with the same grids.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG
from detectron2.modeling import build_model

from nucdet.config import build_cfg
from nucdet.inference.ensemble import EnsemblePredictor, EnsembleSpec, ModelSpec
from nucdet.inference.masks import paste_grids
from nucdet.inference.pipeline import InputImage

OPTS = [
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "50",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "1000",
]  # fmt: skip
H, W = 100, 120


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(build_cfg(TINY_CONFIG, OPTS))
    path = tmp_path_factory.mktemp("scale_tta") / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def _image():
    rng = np.random.default_rng(3)
    img = rng.normal(60, 20, (H, W, 1)).repeat(3, axis=2)
    img[30:60, 40:80] += 120
    return img.clip(0, 255).astype(np.uint8)


def _predictor(weights, views, extra=()):
    spec = EnsembleSpec(
        [ModelSpec("m", config=str(TINY_CONFIG), weights=weights, opts=[*OPTS, *extra])],
        views=views,
    )
    return EnsemblePredictor(spec)


def _record(model):
    """Hooks: network input sizes, and (boxes, grids) of every mask-head call."""
    sizes, heads = [], []
    model.proposal_generator.register_forward_pre_hook(
        lambda mod, args: sizes.append(tuple(args[0].image_sizes[0]))
    )

    def mask_head(mod, args, out):
        heads.append(
            (args[1][0].pred_boxes.tensor.numpy().copy(), out[0].pred_masks[:, 0].numpy().copy())
        )

    model.roi_heads.mask_head.register_forward_hook(mask_head)
    return sizes, heads


def test_scale_views_change_the_network_input(weights):
    ens = _predictor(weights, ["identity", "scale:0.75", "scale:1.5", "hflip+scale:1.5"])
    sizes, _ = _record(ens.members[0][1].model)
    raws, _, names = ens.raw_views(_image(), InputImage("x", "x.png"))
    # ResizeShortestEdge: identity 100x120 -> short edge 64: scale 0.64 -> (64, 76.8 -> 77).
    # scale:0.75 -> view 75x90, short edge 48 -> 0.64 -> (48, 57.6 -> 58);
    # scale:1.5 -> view 150x180, short edge 96 -> 0.64 -> (96, 115.2 -> 115).
    assert sizes == [(64, 77), (48, 58), (96, 115), (96, 115)]
    assert names == ["m/identity", "m/scale:0.75", "m/scale:1.5", "m/hflip+scale:1.5"]
    assert all((r.height, r.width) == (H, W) for r in raws)


def test_without_fixed_resize_the_view_size_is_the_input(weights):
    ens = _predictor(weights, ["identity", "scale:1.5"], ["INPUT.MIN_SIZE_TEST", "0"])
    sizes, _ = _record(ens.members[0][1].model)
    ens.raw_views(_image(), InputImage("x", "x.png"))
    assert sizes == [(H, W), (150, 180)]


@pytest.mark.parametrize("view", ["scale:1.5", "scale:0.75"])
def test_scale_view_inverse_maps_detections_to_the_original_pixels(weights, view):
    ens = _predictor(weights, [view])
    sizes, heads = _record(ens.members[0][1].model)
    (raw,), _, _ = ens.raw_views(_image(), InputImage("x", "x.png"))
    (nh, nw) = sizes[0]
    boxes = np.concatenate([b for b, _ in heads])
    grids = np.concatenate([g for _, g in heads])
    assert len(raw) == len(boxes) > 0
    # Network frame -> original frame: x * W / nw, y * H / nh (clipped to the image).
    expect = boxes * np.array([W / nw, H / nh, W / nw, H / nh], np.float32)
    expect[:, 0::2] = expect[:, 0::2].clip(0, W)
    expect[:, 1::2] = expect[:, 1::2].clip(0, H)
    np.testing.assert_allclose(raw.boxes, expect, rtol=0, atol=2e-3)
    np.testing.assert_array_equal(raw.mask_probs, grids)
    # So the pasted masks are the network's masks on the original pixel grid.
    ours = paste_grids(raw.mask_probs, raw.boxes, H, W).threshold(0.5).to_rles()
    ref = paste_grids(grids, expect, H, W).threshold(0.5).to_rles()
    same = sum(a == b for a, b in zip(ours, ref))
    assert same >= len(ref) - 1  # at most a sub-1e-3-pixel box difference flips an edge


def test_predictor_refuses_a_scale_that_empties_the_image(weights):
    ens = _predictor(weights, ["identity"])
    with pytest.raises(ValueError, match="MIN_SIZE_TEST"):
        ens.members[0][1].raw(_image(), scale=0.001)

"""TEST.PRECISION bf16 in the Predictor: valid fp32 outputs, close to fp32's where the model
is confident; fp32 stays DefaultPredictor's to the pixel (tests/inference/test_predictor.py).

On a CPU without bf16 units (this project's AMD EPYC) bf16 is emulated: slower, same values.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import blob_image, tiny_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, pairwise_iou

from nucdet.inference.predictor import Predictor, precision_from_cfg

SMALL = [
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "200",
    "TEST.DETECTIONS_PER_IMAGE", "30",
    "POSTPROCESS.SKIP_MASKS_BELOW_THRESH", "False",
]  # fmt: skip
SHAPE = (64, 88)
# bf16 keeps 8 significant bits: each activation is rounded by up to 2**-9 (0.2 %). Box
# deltas are decoded in fp32, so a coordinate moves by (relative delta error) x (box size,
# under 30 px here) / the delta weights (10, 5): a few tenths of a percent of error per
# layer stays far below a quarter pixel (measured: under 0.01 px on this model).
BOX_ATOL_PX = 0.25
SCORE_ATOL = 0.01  # the box predictor runs in fp32; its input carries the bf16 error
# Mask probabilities: sigmoid of bf16 logits; the sigmoid's slope is at most 1/4, so a
# logit error of ~0.1 (a few percent of logits of a few units) moves them by 0.025.
MASK_PROB_ATOL = 0.03
CONFIDENT = 0.9


@pytest.fixture(scope="module")
def predictors(tmp_path_factory):
    """fp32 and bf16 Predictors of one seeded tiny model whose top detections are
    confident (class logits scaled up, as in test_predictor.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*SMALL))
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(30.0)
    path = tmp_path_factory.mktemp("bf16") / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    out = {
        p: Predictor(tiny_cfg(*SMALL, "MODEL.WEIGHTS", str(path), "TEST.PRECISION", p))
        for p in ("fp32", "bf16")
    }
    yield out
    torch.set_num_threads(before)


def test_bf16_outputs_are_valid_fp32_arrays(predictors):
    p = predictors["bf16"]
    assert p.precision == "bf16" and predictors["fp32"].precision == "fp32"
    raw = p.raw(blob_image(SHAPE))
    assert len(raw.scores) == 30  # TEST.DETECTIONS_PER_IMAGE: the cap is reached
    for a in (raw.boxes, raw.scores, raw.mask_probs):
        assert a.dtype == np.float32 and np.isfinite(a).all()
    assert raw.mask_probs.shape == (30, 28, 28)
    assert ((raw.mask_probs >= 0) & (raw.mask_probs <= 1)).all()
    pred = p(blob_image(SHAPE), "img")
    assert (pred.height, pred.width) == SHAPE and len(pred) == 30
    assert pred.scores.dtype == np.float32
    assert pred.masks().shape == (30, *SHAPE)
    # The mask head re-run (fusion) runs in bf16 too and gives fp32 grids.
    _, head = p.raw_with_mask_head(blob_image(SHAPE))
    grids = head(raw.boxes[:3], raw.classes[:3])
    assert grids.dtype == np.float32 and grids.shape == (3, 28, 28)


def test_bf16_close_to_fp32_on_confident_detections(predictors):
    a = predictors["fp32"].raw(blob_image(SHAPE))
    b = predictors["bf16"].raw(blob_image(SHAPE))
    confident = np.flatnonzero(a.scores >= CONFIDENT)
    assert len(confident) >= 10  # the comparison must cover something
    iou = pairwise_iou(Boxes(torch.from_numpy(a.boxes)), Boxes(torch.from_numpy(b.boxes)))
    iou = iou.numpy()
    match = iou.argmax(1)
    # A random-init model gives clusters of near-duplicate boxes; where two of them overlap
    # by an IoU next to the NMS threshold, rounding may keep the other one: nearly all
    # (here 28 of 30), not all, confident detections must reappear.
    found = iou[confident, match[confident]] > 0.99
    assert found.mean() >= 0.9, f"{(~found).sum()} of {len(found)} not found in bf16"
    worst = 0.0
    for i in confident[found]:
        j = match[i]
        assert a.classes[i] == b.classes[j]
        np.testing.assert_allclose(b.boxes[j], a.boxes[i], atol=BOX_ATOL_PX, rtol=0)
        assert abs(float(b.scores[j]) - float(a.scores[i])) <= SCORE_ATOL
        worst = max(worst, float(np.abs(b.mask_probs[j] - a.mask_probs[i]).max()))
    # Mask probabilities, compared before the threshold: a random-init mask head puts most
    # of them next to 0.5, where any rounding flips the thresholded pixel.
    assert worst <= MASK_PROB_ATOL
    # bf16 scores keep fp32's resolution near 1 (the box predictor runs in fp32): the top
    # detections do not collapse to ties at 1.0.
    top = np.sort(b.scores)[::-1][: len(confident)]
    assert len(np.unique(top)) == len(top) and top.max() < 1.0


def test_precision_from_cfg_on_this_machine(caplog):
    from nucdet.config import CPU_BF16_FLAGS, read_cpuinfo

    has_units = any(f in read_cpuinfo()[1] for f in CPU_BF16_FLAGS)
    assert precision_from_cfg(tiny_cfg()) == "fp32"  # the default changes nothing
    assert precision_from_cfg(tiny_cfg("TEST.PRECISION", "auto")) == (
        "bf16" if has_units else "fp32"
    )
    with pytest.raises(ValueError, match="TEST.PRECISION"):
        precision_from_cfg(tiny_cfg("TEST.PRECISION", "half"))
    with caplog.at_level(logging.INFO, logger="nucdet.inference.predictor"):
        Predictor(tiny_cfg("TEST.PRECISION", "auto", "MODEL.RPN.POST_NMS_TOPK_TEST", "77"))
    # Logged once per process and setting (possibly already by an earlier test).
    from nucdet.inference.predictor import _log_precision

    assert _log_precision.cache_info().currsize >= 1

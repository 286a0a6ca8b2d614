"""nucdet's Predictor against detectron2's DefaultPredictor with the same weights.

Small models at seeded random init (classifier weights scaled so that scores spread over
(0, 1)) give hundreds of detections with ragged random masks on small random images; many
mask probabilities sit next to the 0.5 threshold, so pixel identity is a sharp check.
Compared: boxes, scores, classes (all detections, same order) and every mask pixel; with
the mask-score floor, masks above the floor and the post-processed outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, blob_image
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from nucdet.config import build_cfg
from nucdet.inference.masks import raw_to_prediction
from nucdet.inference.postprocess import postprocess_from_cfg
from nucdet.inference.predictor import (
    Predictor,
    find_weights,
    mask_score_floor_from_cfg,
    paste_detectron2,
    paste_is_exact,
)
from nucdet.io.rle import mask_to_coco_rle
from nucdet.structures import ImagePrediction

SMALL = [
    "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "1000",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "400",
    "TEST.DETECTIONS_PER_IMAGE", "200",
    "POSTPROCESS.MAJORITY_CLASS", "True",
]  # fmt: skip
# GroupNorm, 4conv1fc box head and a class-agnostic mask head: the other code paths.
GN = [
    "MODEL.RESNETS.NORM", "GN",
    "MODEL.FPN.NORM", "GN",
    "MODEL.ROI_BOX_HEAD.NUM_CONV", "2",
    "MODEL.ROI_BOX_HEAD.NUM_FC", "1",
    "MODEL.ROI_BOX_HEAD.CONV_DIM", "32",
    "MODEL.ROI_BOX_HEAD.NORM", "GN",
    "MODEL.ROI_MASK_HEAD.NORM", "GN",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "True",
]  # fmt: skip
# Per-class post-processing thresholds whose minimum splits each model's detections.
ARCHS = {
    "bn_2fc": SMALL + ["POSTPROCESS.SCORE_THRESH", "[0.75, 0.8, 0.7]"],
    "gn_conv_agnostic": SMALL + GN + ["POSTPROCESS.SCORE_THRESH", "[0.75, 0.65, 0.8]"],
}
SHAPE = (64, 88)
NO_FLOOR = float("-inf")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small convolutions on a shared 2-core machine run 3-4x faster on one thread; the
    comparison runs both predictors with the same setting either way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=sorted(ARCHS))
def weights(request, tmp_path_factory):
    """(arch options, weights file) of a seeded random model with spread scores."""
    opts = ARCHS[request.param]
    cfg = build_cfg(TINY_CONFIG, opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        # Initial class logits are ~0.01: scaled up, scores spread over (0, 1) like a
        # trained model's rather than all sitting near one value.
        model.roi_heads.box_predictor.cls_score.weight.mul_(30.0)
    path = tmp_path_factory.mktemp(request.param) / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return opts, str(path)


@pytest.fixture(scope="module")
def reference(weights):
    """DefaultPredictor's instances for (config options, image shape), once per model."""
    cache: dict = {}

    def get(extra: tuple[str, ...] = (), shape: tuple[int, int] = SHAPE):
        if (extra, shape) not in cache:
            predictor = DefaultPredictor(_cfg(weights, *extra))
            cache[extra, shape] = predictor(blob_image(shape))["instances"]
        return cache[extra, shape]

    return get


@pytest.fixture(scope="module")
def predictor(weights):
    """A nucdet Predictor per config options, once per model (the floor is reset)."""
    cache: dict = {}

    def get(extra: tuple[str, ...] = (), floor: float | None = None) -> Predictor:
        if extra not in cache:
            cache[extra] = Predictor(_cfg(weights, *extra))
            # Several mask-head calls per image, the last one ragged.
            cache[extra].mask_batch = 64
        p = cache[extra]
        p.mask_score_floor = mask_score_floor_from_cfg(p.cfg) if floor is None else floor
        return p

    return get


def _cfg(weights, *extra: str):
    opts, path = weights
    cfg = build_cfg(TINY_CONFIG, [*opts, "MODEL.WEIGHTS", path, *extra])
    cfg.freeze()
    return cfg


def _as_prediction(inst, image_id: str = "") -> ImagePrediction:
    masks = inst.pred_masks.numpy()
    return ImagePrediction(
        image_id,
        masks.shape[1],
        masks.shape[2],
        [mask_to_coco_rle(m) for m in masks],
        inst.scores.numpy(),
        inst.pred_classes.numpy(),
    )


def _assert_same_prediction(a: ImagePrediction, b: ImagePrediction) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.classes, b.classes)
    for i, (ra, rb) in enumerate(zip(a.rles, b.rles)):
        assert ra == rb, f"mask {i} differs"


def test_all_masks_identical_to_default_predictor(reference, predictor):
    ref = reference()
    ref_masks = ref.pred_masks.numpy()
    ours = predictor(floor=NO_FLOOR)
    pred = ours(blob_image(SHAPE), "img")
    # A meaningful comparison: hundreds of detections, most with a non-empty mask.
    assert len(ref) > 150
    assert (ref_masks.sum((1, 2)) > 0).mean() > 0.5
    assert (pred.height, pred.width) == SHAPE and pred.image_id == "img"
    np.testing.assert_array_equal(pred.masks(), ref_masks)
    _assert_same_prediction(pred, _as_prediction(ref, "img"))
    raw = ours.raw(blob_image(SHAPE))
    np.testing.assert_array_equal(raw.boxes, ref.pred_boxes.tensor.numpy())
    np.testing.assert_array_equal(raw.scores, ref.scores.numpy())
    np.testing.assert_array_equal(raw.classes, ref.pred_classes.numpy())
    # The identity is a sharp check: many mask probabilities sit next to the threshold.
    shifted = raw_to_prediction(raw, "img", 0.5 + 1e-3).masks()
    assert (shifted != ref_masks).sum() > 20
    # The fallback paste (where the numba one is not bit-exact) is detectron2's own.
    part = raw.select(np.arange(0, len(raw), 4))  # every 4th: detectron2 pastes slowly
    crops = paste_detectron2(part.mask_probs, part.boxes, raw.height, raw.width)
    np.testing.assert_array_equal(crops.threshold(0.5).to_masks(), ref_masks[::4])
    assert isinstance(paste_is_exact(), bool)


def test_rgb_odd_size_and_resize_identical(weights, reference, predictor):
    """Channel swap, odd image size and a test-time resize (boxes scaled back)."""
    if weights[0] is not ARCHS["bn_2fc"]:
        pytest.skip("pre-processing is architecture-independent: checked on one model")
    extra = ("INPUT.FORMAT", "RGB", "INPUT.MIN_SIZE_TEST", "90", "INPUT.MAX_SIZE_TEST", "150")
    shape = (55, 81)
    ref = reference(extra, shape)
    ours = predictor(extra, NO_FLOOR)
    assert ours.aug.get_transform(blob_image(shape)).new_h == 90
    pred = ours(blob_image(shape))
    assert len(ref) > 100
    np.testing.assert_array_equal(pred.scores, ref.scores.numpy())
    np.testing.assert_array_equal(pred.classes, ref.pred_classes.numpy())
    np.testing.assert_array_equal(pred.masks(), ref.pred_masks.numpy())


def test_mask_floor_same_after_postprocess(reference, predictor):
    ours = predictor()
    floor = mask_score_floor_from_cfg(ours.cfg)
    assert floor == ours.mask_score_floor == min(ours.cfg.POSTPROCESS.SCORE_THRESH)
    ref_inst = reference()
    ref = _as_prediction(ref_inst, "a")
    pred = ours(blob_image(SHAPE), "a")
    above = ref.scores.astype(np.float64) >= floor
    # The floor must split the detections for this test to mean anything.
    assert 30 < above.sum() < len(ref) - 30
    np.testing.assert_array_equal(pred.scores, ref.scores)
    np.testing.assert_array_equal(pred.classes, ref.classes)
    got = pred.masks()
    np.testing.assert_array_equal(got[above], ref_inst.pred_masks.numpy()[above])
    assert not got[~above].any()
    post = postprocess_from_cfg(ours.cfg)
    final = post(pred)
    assert len(final) > 10
    _assert_same_prediction(final, post(ref))


@pytest.mark.parametrize("keep", [0, 1])
def test_mask_floor_keeping_few_or_none(reference, predictor, keep):
    """The mask head on no region or a single one (batch-size edge cases)."""
    ref = reference()
    scores = np.sort(ref.scores.numpy().astype(np.float64))[::-1]
    floor = scores[keep - 1] if keep else scores[0] + 1e-3
    pred = predictor(floor=float(floor))(blob_image(SHAPE))
    above = ref.scores.numpy() >= floor
    assert above.sum() == keep
    got = pred.masks()
    np.testing.assert_array_equal(got[above], ref.pred_masks.numpy()[above])
    assert not got[~above].any()
    np.testing.assert_array_equal(pred.scores, ref.scores.numpy())


def test_no_detections(weights, predictor):
    if weights[0] is not ARCHS["bn_2fc"]:
        pytest.skip("architecture-independent: checked on one model")
    extra = ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.0")
    image = blob_image((40, 40))
    assert len(DefaultPredictor(_cfg(weights, *extra))(image)["instances"]) == 0
    for floor in (NO_FLOOR, 0.5):
        pred = predictor(extra, floor)(image, "e")
        assert len(pred) == 0 and (pred.height, pred.width) == (40, 40)


def test_floor_from_cfg_and_errors(weights, predictor, tmp_path):
    cfg = _cfg(weights, "POSTPROCESS.SKIP_MASKS_BELOW_THRESH", "False")
    assert mask_score_floor_from_cfg(cfg) == NO_FLOOR
    with pytest.raises(ValueError, match="mask_thresh"):
        predictor()(blob_image((32, 32)), mask_thresh=0.0)
    with pytest.raises(FileNotFoundError, match="no weights"):
        find_weights(tmp_path)
    (tmp_path / "model_0000009.pth").write_bytes(b"")
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    assert find_weights(tmp_path) == tmp_path / "model_0000009.pth"
    (tmp_path / "model_final.pth").write_bytes(b"")
    assert find_weights(tmp_path) == tmp_path / "model_final.pth"

"""Fusion: self-fusion is the identity, hand-computed fusion of shifted copies, TTA views
fused back exactly, NMS baselines, input validation and empty inputs (WBF itself:
test_wbf.py)."""

from __future__ import annotations

import numpy as np
import pytest
from inference_synth import block_instances, lattice_raw, raw_from_masks, tight_box

from nucdet.inference.fusion import FUSION_METHODS, fuse, fuse_wbf_mask_vote
from nucdet.inference.masks import raw_to_prediction
from nucdet.inference.tta import build_views, run_views
from nucdet.structures import RawDetections

# The library warns about the zero-area boxes the inputs contain on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Zero area box skipped")


@pytest.mark.parametrize("conf_type", ["box_and_model_avg", "absent_model_aware_avg"])
@pytest.mark.parametrize("mask_mode", ["avg", "vote"])
def test_fusing_a_model_with_itself_returns_its_detections(conf_type, mask_mode):
    rng = np.random.default_rng(7)
    raw = lattice_raw(rng, 100, 140)
    expected = raw_to_prediction(raw, "img").select(np.argsort(-raw.scores))
    for inputs in ([raw], [raw, raw]):
        res = fuse(inputs, image_id="img", conf_type=conf_type, mask_mode=mask_mode)
        pred = res.prediction
        assert len(pred) == len(raw) > 20
        np.testing.assert_array_equal(pred.scores, expected.scores)
        np.testing.assert_array_equal(pred.classes, expected.classes)
        np.testing.assert_allclose(res.boxes, raw.boxes[np.argsort(-raw.scores)], atol=1e-4)
        assert pred.rles == expected.rles
        order = np.argsort(-raw.scores)
        for k, mem in enumerate(res.members):
            # Equal scores join in the library's (unstable) sort order: compare as sets.
            assert sorted(mem.tolist()) == [[t, int(order[k])] for t in range(len(inputs))]


def _squares(offset, scores):
    """Three 12x12 squares (integer boxes, all-ones grids of size 12) shifted by offset."""
    base = np.array([[10, 10, 22, 22], [40, 12, 52, 24], [20, 40, 32, 52]], np.float32)
    boxes = base + np.array([offset[0], offset[1], offset[0], offset[1]], np.float32)
    return RawDetections(boxes, scores, [0, 0, 0], np.ones((3, 12, 12), np.float32), 64, 64)


def _square_masks(boxes):
    out = np.zeros((len(boxes), 64, 64), bool)
    for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        out[k, y0:y1, x0:x1] = True
    return out


def test_two_models_with_shifted_copies_by_hand():
    sa = np.array([0.9, 0.8, 0.7], np.float32)
    sb = np.array([0.6, 0.6, 0.6], np.float32)
    a = _squares((0, 0), sa)
    b = _squares((2, 1), sb)  # IoU 110/178 = 0.62 > 0.55: each pair is one cluster
    ma, mb = _square_masks(a.boxes), _square_masks(b.boxes)
    fa, fb = sa.astype(np.float64), sb.astype(np.float64)
    expected_boxes = (fa[:, None] * a.boxes + fb[:, None] * b.boxes) / (fa + fb)[:, None]
    res = fuse([a, b], [1, 1], image_id="x")
    np.testing.assert_allclose(res.boxes, expected_boxes, atol=1e-4)
    np.testing.assert_allclose(res.prediction.scores, (fa + fb) / 2, rtol=1e-6)
    assert [m.tolist() for m in res.members] == [[[0, k], [1, k]] for k in range(3)]
    # Pixels of a only: weight sa / (sa + sb) = 0.6, 0.57, 0.54 >= 0.5; of b only: < 0.5.
    np.testing.assert_array_equal(res.prediction.masks(), ma)
    # At 0.65 only the pixels both squares cover (probability 1) remain.
    res = fuse([a, b], [1, 1], mask_thresh=0.65)
    np.testing.assert_array_equal(res.prediction.masks(), ma & mb)
    res = fuse([a, b], [1, 1], mask_mode="vote", vote_frac=0.5)
    np.testing.assert_array_equal(res.prediction.masks(), ma)
    res = fuse([a, b], [1, 1], mask_mode="vote", vote_frac=1.0)
    np.testing.assert_array_equal(res.prediction.masks(), ma & mb)
    res = fuse([a, b], [1, 1], mask_mode="vote", vote_frac=0.3)
    np.testing.assert_array_equal(res.prediction.masks(), ma | mb)
    # Model weights 1:3 turn the vote: b's pixels now carry 3*0.6 / (3*0.6 + sa) > 0.5.
    res = fuse([a, b], [1, 3])
    np.testing.assert_array_equal(res.prediction.masks(), mb)
    # A third model that found nothing: scores scale by the present weight, 2/3.
    empty = RawDetections(np.zeros((0, 4)), [], [], np.zeros((0, 12, 12)), 64, 64)
    res = fuse([a, b, empty], [1, 1, 1])
    np.testing.assert_allclose(res.prediction.scores, (fa + fb) / 2 * 2 / 3, rtol=1e-6)
    res = fuse([a, b, empty], [1, 1, 1], conf_type="absent_model_aware_avg")
    np.testing.assert_allclose(res.prediction.scores, (fa + fb) / 3, rtol=1e-6)


def test_tta_views_fuse_back_to_the_identity_prediction():
    """A stand-in detector reading a label image, run on 6 views: fusion returns exactly
    the instances (boxes, masks, scores) of the identity view."""
    rng = np.random.default_rng(8)
    masks, _ = block_instances(rng, 64, 96, 8)
    label = np.zeros((64, 96), np.int32)
    for k, m in enumerate(masks):
        label[m] = k + 1

    def predict(img):
        lab = img[:, :, 0].astype(np.int64)
        ids = np.unique(lab[lab > 0])
        inst = np.stack([lab == k for k in ids])
        return raw_from_masks(inst, np.stack([tight_box(m) for m in inst]), 1 - ids / 20)

    image = np.repeat(label[:, :, None], 3, axis=2).astype(np.uint8)
    views = build_views(["identity", "hflip", "vflip", "rot90", "rot180", "rot270"])
    raws = run_views(predict, image, views)
    res = fuse(raws, names=[v.name for v in views])
    assert len(res) == 8
    np.testing.assert_array_equal(res.prediction.masks(), masks)
    np.testing.assert_allclose(res.prediction.scores, 1 - np.arange(1, 9) / 20, rtol=1e-6)
    assert all(sorted(m[:, 0].tolist()) == list(range(6)) for m in res.members)


def test_nms_baselines():
    g = np.ones((2, 28, 28), np.float32)
    a = RawDetections([[0, 0, 10, 10], [30, 30, 40, 40]], [0.9, 0.5], [0, 0], g, 50, 50)
    b = RawDetections([[1, 0, 11, 10], [31, 30, 41, 40]], [0.8, 0.6], [0, 1], g, 50, 50)
    res = fuse([a, b], method="nms")
    # Box IoU 90/110 > 0.5 suppresses b[0]; b[1] has another class and stays.
    assert [m.tolist() for m in res.members] == [[[0, 0], [1, 0]], [[1, 1]], [[0, 1]]]
    np.testing.assert_allclose(res.prediction.scores, [0.9, 0.6, 0.5])
    np.testing.assert_array_equal(res.boxes[0], [0, 0, 10, 10])
    # Input weights rank the detections (score x weight / max weight).
    res = fuse([a, b], [1, 2], method="nms")
    assert res.members[0].tolist() == [[1, 0], [0, 0]]
    np.testing.assert_allclose(res.prediction.scores[0], 0.8)
    # Same boxes, complementary half masks: box NMS keeps one, mask NMS both.
    left = np.zeros((1, 28, 28), np.float32)
    left[:, :, :14] = 1
    c = RawDetections([[0, 0, 20, 20]], [0.9], [0], left, 50, 50)
    d = RawDetections([[0, 0, 20, 20]], [0.8], [0], left[:, :, ::-1], 50, 50)
    assert len(fuse([c, d], method="nms")) == 1
    res = fuse([c, d], method="mask_nms")
    assert len(res) == 2
    assert not (res.prediction.masks()[0] & res.prediction.masks()[1]).any()
    assert len(fuse([c, c], method="mask_nms")) == 1


def _heads(method, n):
    """What a method needs besides the detections: for the methods that re-run the mask
    heads, heads giving every box a 0.9 grid; for ``unet_fg_reweight``, input 0 as the
    foreground model (``fg/...``) and the others as instance models."""
    from nucdet.inference.fusion import NEEDS_MASK_HEADS

    if method == "unet_fg_reweight":
        return {
            "fg_models": ["fg"],
            "names": ["fg/identity"] + [f"r{i}/identity" for i in range(1, n)],
        }
    if method not in NEEDS_MASK_HEADS:
        return {}
    return {"mask_heads": [lambda b, c: np.full((len(b), 28, 28), 0.9, np.float32)] * n}


@pytest.mark.parametrize("method", sorted(FUSION_METHODS))
def test_zero_detections(method):
    empty = RawDetections(np.zeros((0, 4)), [], [], np.zeros((0, 28, 28)), 30, 40)
    res = fuse([empty, empty], method=method, image_id="e", **_heads(method, 2))
    assert len(res) == 0 and res.boxes.shape == (0, 4)
    assert (res.prediction.image_id, res.prediction.height, res.prediction.width) == ("e", 30, 40)
    one = RawDetections([[2, 2, 9, 9]], [0.7], [0], np.ones((1, 28, 28)), 30, 40)
    res = fuse([empty, one], method=method, **_heads(method, 2))
    assert len(res) == 1 and res.members[0].tolist() == [[1, 0]]


def test_input_validation_names_the_input():
    g = np.ones((1, 28, 28), np.float32)
    ok = RawDetections([[1, 1, 5, 5]], [0.5], [0], g, 20, 30)
    names = ["r50/identity", "r50/hflip"]

    def bad(**kw):
        d = dict(boxes=[[1, 1, 5, 5]], scores=[0.5], classes=[0], mask_probs=g, height=20, width=30)
        d.update(kw)
        return RawDetections(**d)

    cases = [
        (bad(boxes=[[1, 1, 31, 5]]), "r50/hflip: box 0"),
        (bad(boxes=[[-0.5, 1, 5, 5]]), "r50/hflip: box 0"),
        (bad(boxes=[[5, 1, 1, 5]]), "inverted"),
        (bad(boxes=[[np.nan, 1, 5, 5]]), "not finite"),
        (bad(scores=[1.5]), "score 0"),
        (bad(height=21), "image size"),
        (bad(mask_probs=np.ones((1, 14, 14))), "mask grids"),
    ]
    for raw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            fuse_wbf_mask_vote([ok, raw], names=names)
    with pytest.raises(ValueError, match="weights"):
        fuse([ok, ok], [1, 2, 3])
    with pytest.raises(KeyError, match="unknown fusion method"):
        fuse([ok], method="soft_nms")


@pytest.mark.parametrize("method", sorted(FUSION_METHODS))
def test_fused_then_postprocessed_output_never_overlaps(method):
    from inference_synth import soft_raw

    from nucdet.inference.postprocess import postprocess

    rng = np.random.default_rng(9)
    raws = [soft_raw(rng, 60, 80, 40) for _ in range(3)]  # crowded: masks overlap a lot
    res = fuse(raws, [1.0, 0.5, 2.0], method=method, **_heads(method, 3))
    assert res.prediction.masks().sum(axis=0).max() > 1  # fusion itself leaves overlaps
    out = postprocess(res.prediction)
    assert len(out) > 10
    assert out.masks().sum(axis=0).max() == 1

"""TTA views: every view maps boxes and masks back to the original image pixel-exactly."""

from __future__ import annotations

import numpy as np
import pytest
from inference_synth import block_instances, raw_from_masks, soft_raw, tight_box

from nucdet.inference.masks import paste_grids, raw_to_prediction
from nucdet.inference.tta import VIEW_REGISTRY, build_view, build_views, run_views
from nucdet.structures import RawDetections

H, W = 48, 64  # not square, so quarter turns change the frame size

EXACT_VIEWS = [
    "identity",
    "hflip",
    "vflip",
    "rot90",
    "rot180",
    "rot270",
    "transpose",
    "scale:2",
    "scale:0.5",
    "hflip+rot90",
    "vflip+scale:2",
    "rot90+scale:0.5",
    "rot270+hflip+vflip",
]


def _view_detections(view, masks):
    """Transform the masks with the view and read detections off the transformed masks."""
    vmasks = np.stack([view.apply_mask(m) for m in masks])
    # The view of a box is the tight box of the view of the filled box region.
    vboxes = np.stack([tight_box(view.apply_mask(_filled(b, masks.shape[1:]))) for b in BOXES])
    return vmasks, vboxes


def _filled(box, shape):
    out = np.zeros(shape, bool)
    out[box[1] : box[3], box[0] : box[2]] = True
    return out


RNG = np.random.default_rng(0)
MASKS, BOXES = block_instances(RNG, H, W, 5)


@pytest.mark.parametrize("name", EXACT_VIEWS)
def test_view_round_trip_is_pixel_exact(name):
    view = build_view(name)
    image = RNG.integers(0, 255, (H, W, 3), dtype=np.uint8)
    vimage = view.apply(image)
    assert vimage.shape[:2] == view.view_size(H, W)
    assert vimage.flags.c_contiguous
    vmasks, vboxes = _view_detections(view, MASKS)
    assert vmasks.shape[1:] == vimage.shape[:2]
    raw_view = raw_from_masks(vmasks, vboxes, classes=np.arange(len(MASKS)))
    back = view.invert(raw_view, (H, W))
    assert (back.height, back.width) == (H, W)
    np.testing.assert_array_equal(back.boxes, BOXES.astype(np.float32))
    np.testing.assert_array_equal(back.classes, np.arange(len(MASKS)))
    np.testing.assert_array_equal(back.scores, raw_view.scores)
    pasted = raw_to_prediction(back, "x", 0.5).masks()
    np.testing.assert_array_equal(pasted, MASKS)


@pytest.mark.parametrize("name", [n for n in EXACT_VIEWS if "scale" not in n])
def test_geometric_views_commute_with_pasting(name):
    """Float boxes, smooth grids: paste in the view then transform back == invert then paste.

    The pasted probabilities agree to float rounding; the mask grid is rotated with the
    image (a wrong orientation would differ by far more on these asymmetric grids).
    """
    view = build_view(name)
    rng = np.random.default_rng(1)
    vh, vw = view.view_size(H, W)
    raw_view = soft_raw(rng, vh, vw, 12)
    probs_view = paste_grids(raw_view.mask_probs, raw_view.boxes, vh, vw)
    back = view.invert(raw_view)
    probs = paste_grids(back.mask_probs, back.boxes, H, W)
    # Transform each pasted view-frame probability image back with the inverse view.
    inverse = {
        "rot90": "rot270",
        "rot270": "rot90",
        "hflip+rot90": "hflip+rot90",
        "rot270+hflip+vflip": "rot270",
    }
    inv = build_view(inverse.get(name, name))
    confident = 0
    for i in range(len(raw_view)):
        full_view = np.zeros((vh, vw), np.float32)
        x0, y0, x1, y1 = probs_view.boxes[i]
        full_view[y0:y1, x0:x1] = probs_view.crops[i]
        expected = inv.apply_mask(full_view)
        got = np.zeros((H, W), np.float32)
        x0, y0, x1, y1 = probs.boxes[i]
        got[y0:y1, x0:x1] = probs.crops[i]
        np.testing.assert_allclose(got, expected, atol=1e-5)
        confident += int((expected > 0.5).sum())
    assert confident > 100


def test_inverse_table_used_above_is_right():
    img = np.arange(H * W).reshape(H, W)
    for a, b in [
        ("rot90", "rot270"),
        ("hflip+rot90", "hflip+rot90"),
        ("rot270+hflip+vflip", "rot270"),
    ]:
        np.testing.assert_array_equal(build_view(b).apply(build_view(a).apply(img)), img)


def test_scale_view_boxes_and_sizes():
    view = build_view("scale:1.25")
    assert view.view_size(H, W) == (60, 80)
    raw = RawDetections(
        [[0, 0, 80, 60], [10, 5, 25, 20]],
        [0.9, 0.8],
        [0, 0],
        np.zeros((2, 28, 28), np.float32),
        60,
        80,
    )
    back = view.invert(raw, (H, W))
    np.testing.assert_array_equal(back.boxes, [[0, 0, 64, 48], [8, 4, 20, 16]])
    # Rounded sizes: the box at the view's edge still lands exactly on the image edge.
    odd = build_view("scale:1.3")
    vh, vw = odd.view_size(47, 63)
    raw = RawDetections([[0, 0, vw, vh]], [0.9], [0], np.zeros((1, 28, 28), np.float32), vh, vw)
    np.testing.assert_array_equal(odd.invert(raw, (47, 63)).boxes, [[0, 0, 63, 47]])
    with pytest.raises(ValueError, match="original image size"):
        view.invert(raw)
    with pytest.raises(ValueError, match="view"):
        view.invert(raw, (H, W))  # a 47x63-view is not the view of a 48x64 image


def test_run_views_with_a_predictor_that_reads_the_image():
    """A stand-in detector that reads instances off a label image: every view agrees."""
    label = np.zeros((H, W), np.int32)
    for k, m in enumerate(MASKS):
        label[m] = k + 1

    def predict(img):
        lab = img[:, :, 0].astype(np.int64)
        ids = [k for k in range(1, len(MASKS) + 1) if (lab == k).any()]
        # Square box of side 16 around each instance's 2x2-block bounding box.
        boxes = np.array([tight_box(lab == k) for k in ids])
        masks = np.stack([lab == k for k in ids])
        return raw_from_masks(masks, boxes, classes=np.array(ids) - 1)

    image = np.repeat(label[:, :, None], 3, axis=2).astype(np.uint8)
    views = build_views(["identity", "hflip", "vflip", "rot90", "rot180", "rot270"])
    outs = run_views(predict, image, views)
    for out in outs:
        order = np.argsort(out.classes)
        np.testing.assert_array_equal(out.boxes[order], outs[0].boxes[np.argsort(outs[0].classes)])
        pred = raw_to_prediction(out.select(order))
        np.testing.assert_array_equal(pred.label_image(), _relabel(label, out.classes[order]))


def _relabel(label, classes):
    out = np.zeros_like(label)
    for i, c in enumerate(classes):
        out[label == c + 1] = i + 1
    return out


def test_empty_detections_invert():
    for name in ["hflip", "rot90", "scale:2"]:
        view = build_view(name)
        vh, vw = view.view_size(H, W)
        raw = RawDetections(np.zeros((0, 4)), [], [], np.zeros((0, 28, 28)), vh, vw)
        back = view.invert(raw, (H, W))
        assert len(back) == 0 and (back.height, back.width) == (H, W)


def test_registry_and_errors():
    assert {"identity", "hflip", "vflip", "rot90", "rot180", "rot270", "scale"} <= set(
        VIEW_REGISTRY
    )
    with pytest.raises(KeyError, match="unknown TTA view"):
        build_view("rot45")
    with pytest.raises(ValueError, match="factor"):
        build_view("scale")
    with pytest.raises(ValueError, match="not a number"):
        build_view("scale:big")
    with pytest.raises(ValueError, match="no argument"):
        build_view("hflip:2")
    with pytest.raises(ValueError, match="duplicate"):
        build_views(["hflip", "hflip"])
    # A geometric view checks the frame size it is given.
    raw = RawDetections(np.zeros((0, 4)), [], [], np.zeros((0, 28, 28)), H, W)
    with pytest.raises(ValueError, match="view"):
        build_view("rot90").invert(raw, (H, W))

"""NucleiUNet on CPU without weights: output shapes for both encoders, the training losses
from the mapper's instances (BitMasks and polygons), a tiny overfit, and its output as the
Predictor's RawDetections (the record TTA, fusion and post-processing take)."""

import contextlib

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances, PolygonMasks

from nucdet.config import build_cfg
from nucdet.inference.predictor import Predictor
from nucdet.modeling.unet import NucleiUNet


@contextlib.contextmanager
def one_torch_thread():
    """torch single-threaded for a block (tests/engine/single_thread.py's helper: on the
    shared 2-core machine two OpenMP threads are several times slower than one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


TINY = ["MODEL.DEVICE", "cpu"]


def unet_cfg(repo, *opts):
    return build_cfg(repo / "configs" / "cpu" / "unet_GN_tiny.yaml", [*TINY, *opts])


def disc_batch(h=48, w=56):
    yy, xx = np.mgrid[:h, :w]
    a = (yy - 24) ** 2 + (xx - 18) ** 2 <= 64
    b = ((yy - 24) ** 2 + (xx - 34) ** 2 <= 64) & ~a
    img = np.full((3, h, w), 40, np.uint8)
    img[:, a | b] = 200
    inst = Instances((h, w))
    inst.gt_masks = BitMasks(torch.from_numpy(np.stack([a, b])))
    inst.gt_classes = torch.zeros(2, dtype=torch.int64)
    return [{"image": torch.from_numpy(img), "instances": inst, "height": h, "width": w}], (a, b)


def test_plain_unet_shapes_and_odd_sizes(repo):
    torch.manual_seed(0)
    model = build_model(unet_cfg(repo))
    assert isinstance(model, NucleiUNet) and model.num_classes == 1
    x = torch.zeros(2, 3, 36, 44)  # padded by preprocess_image to a multiple of 4
    out = model.logits(x)
    assert out["fg"].shape == out["boundary"].shape == out["distance"].shape == (2, 36, 44)
    model.eval()
    with torch.no_grad():
        d = {"image": torch.zeros(3, 37, 45, dtype=torch.uint8), "height": 74, "width": 90}
        inst = model([d])[0]["instances"]
    assert inst.image_size == (74, 90)  # scaled to the input's height/width, masks pasted
    assert inst.pred_masks.shape[1:] == (74, 90) and inst.pred_masks.dtype == torch.bool


def test_resnet_encoder_and_classes(repo):
    cfg = unet_cfg(
        repo,
        "MODEL.UNET.ENCODER", "resnet",
        "MODEL.UNET.CHANNELS", "[8, 16]",
        "MODEL.UNET.DECODER_CHANNELS", "[8, 16, 16, 16, 16]",
        "MODEL.RESNETS.DEPTH", "18",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.RESNETS.NORM", "GN",
        "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    )  # fmt: skip
    model = build_model(cfg)
    # detectron2's ResNet names, so that model-zoo / ImageNet weights match
    names = {n for n, _ in model.named_parameters()}
    assert "encoder.backbone.stem.conv1.weight" in names
    assert "encoder.backbone.res2.0.conv1.weight" in names
    out = model.logits(torch.zeros(1, 3, 64, 64))
    assert out["fg"].shape == (1, 64, 64) and out["classes"].shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="DECODER_CHANNELS"):
        build_model(unet_cfg(repo, "MODEL.UNET.DECODER_CHANNELS", "[8]"))


def test_losses_from_bitmasks_and_polygons(repo):
    torch.manual_seed(0)
    model = build_model(unet_cfg(repo))
    batch, _ = disc_batch()
    losses = model(batch)
    assert set(losses) == {"loss_fg", "loss_boundary", "loss_distance"}
    square = [[np.array([8, 8, 24, 8, 24, 24, 8, 24], np.float64)]]
    inst = Instances((48, 56))
    inst.gt_masks = PolygonMasks(square)
    inst.gt_classes = torch.zeros(1, dtype=torch.int64)
    targets = model._targets([{**batch[0], "instances": inst}], model.preprocess_image(batch))
    assert targets["fg"][0, 16, 16] == 1 and targets["fg"][0, 30, 30] == 0
    assert targets["valid"][0].all()  # 48 x 56 needs no padding at stride 4


def test_tiny_overfit_loss_decreases(repo):
    torch.manual_seed(0)
    model = build_model(unet_cfg(repo))
    batch, (a, b) = disc_batch()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    totals = []
    with one_torch_thread():
        for _ in range(40):
            loss = sum(model(batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            totals.append(float(loss))
    assert totals[-1] < 0.6 * totals[0]
    assert np.mean(totals[-5:]) < np.mean(totals[:5])


def test_predictor_gives_raw_detections(repo):
    torch.manual_seed(0)
    cfg = unet_cfg(repo)
    model = build_model(cfg)
    predictor = Predictor(cfg, model=model)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)
    raw = predictor.raw(image)
    m = cfg.MODEL.UNET.DECODE.MASK_GRID
    assert raw.mask_probs.shape == (len(raw), m, m)
    assert (raw.boxes[:, 2] <= 52).all() and (raw.boxes[:, 3] <= 40).all()
    assert ((raw.scores >= 0.5) & (raw.scores <= 1)).all()  # mean probability >= FG_THRESH
    pred = predictor(image, "img")
    assert len(pred) == len(raw) and pred.height == 40
    # the U-Net's "mask head": its foreground map in any box, on the same grid
    raw2, head = predictor.raw_with_mask_head(image)
    np.testing.assert_array_equal(raw2.boxes, raw.boxes)
    assert head(np.array([[0, 0, 10, 10]], np.float32), np.zeros(1)).shape == (1, m, m)


def test_decoding_swept_on_stored_maps_equals_the_configured_model(repo):
    """``Predictor.raw_from_unet_maps`` (one forward pass, then any decoding settings, as
    bench_accuracy --sweep-unet uses it) gives exactly what a model configured with those
    settings (``MODEL.UNET.DECODE.*``) gives; unknown keys are refused."""
    torch.manual_seed(0)
    cfg = unet_cfg(repo)
    model = build_model(cfg)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)
    settings = [
        {"fg_thresh": 0.45, "boundary_thresh": 0.6, "marker_thresh": 0.1, "min_marker_area": 2},
        {"fg_thresh": 0.55, "boundary_thresh": 0.4, "marker_thresh": 0.3, "min_marker_area": 4},
    ]
    with one_torch_thread():
        predictor = Predictor(cfg, model=model)
        maps = predictor.unet_maps(image)
        counts = []
        for dec in settings:
            swept = predictor.raw_from_unet_maps(maps, 40, 52, dec)
            opts = [x for k, v in dec.items() for x in (f"MODEL.UNET.DECODE.{k.upper()}", str(v))]
            cfg2 = unet_cfg(repo, *opts)
            other = build_model(cfg2)
            other.load_state_dict(model.state_dict())
            ref = Predictor(cfg2, model=other).raw(image)
            assert len(swept) == len(ref)
            for field in ("boxes", "scores", "classes", "mask_probs"):
                np.testing.assert_array_equal(getattr(swept, field), getattr(ref, field))
            counts.append(len(ref))
    # the settings matter on this image (else the equality above would be vacuous)
    assert counts[0] != counts[1] and min(counts) > 0, counts
    with pytest.raises(KeyError, match="fg_thres"):
        predictor.raw_from_unet_maps(maps, 40, 52, {"fg_thres": 0.5})

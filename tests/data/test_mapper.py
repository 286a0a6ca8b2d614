"""NucleiDatasetMapper: for every augmentation the output masks equal the same transform applied
to the original masks (computed here independently with numpy), boxes are the boxes of those
masks, crops drop empty instances, images of every kind are read right, bad input fails."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from nucdet.config import add_nucdet_config
from nucdet.data.augment import (
    GaussianBlurTransform,
    GaussianNoiseTransform,
    IntensityTransform,
    Rot90Transform,
)
from nucdet.data.imageio import ImageReadError
from nucdet.data.mapper import (
    MAPPER_REGISTRY,
    NucleiDatasetMapper,
    build_mapper,
    decode_window,
)
from nucdet.io.rle import mask_to_coco_rle

H, W = 40, 60


def _masks() -> list[np.ndarray]:
    """Two overlapping cells, a corner cell, a one-pixel cell, an edge strip, a cell far right."""
    ms = [np.zeros((H, W), bool) for _ in range(6)]
    ms[0][5:15, 5:20] = True
    ms[1][10:20, 15:25] = True  # overlaps ms[0]
    ms[2][0:4, 0:3] = True
    ms[3][30, 40] = True
    ms[4][H - 2 :, 10:50] = True
    yy, xx = np.mgrid[:H, :W]
    ms[5] = (yy - 20) ** 2 / 36 + (xx - 52) ** 2 / 16 <= 1
    return ms


CLASSES = [0, 1, 0, 1, 1, 0]


def _cfg(**aug) -> object:
    cfg = add_nucdet_config(get_cfg())
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.MIN_SIZE_TRAIN = (0,)
    cfg.INPUT.MIN_SIZE_TEST = 0
    a = cfg.INPUT.AUG
    a.HFLIP_PROB, a.VFLIP_PROB, a.ROT90 = 0.0, 0.0, False
    for key, value in aug.items():
        if key.startswith("CROP"):
            cfg.INPUT.CROP.ENABLED = True
            cfg.INPUT.CROP.TYPE = "absolute"
            cfg.INPUT.CROP.SIZE = value
        elif key in ("MIN_SIZE_TRAIN", "MAX_SIZE_TRAIN"):
            setattr(cfg.INPUT, key, value)
        else:
            setattr(a, key, value)
    return cfg


@pytest.fixture
def sample(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), img)
    annos = []
    for m, c in zip(_masks(), CLASSES):
        ys, xs = np.nonzero(m)
        annos.append(
            {
                "bbox": [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": c,
                "segmentation": mask_to_coco_rle(m),
                "iscrowd": 0,
            }
        )
    d = {"file_name": str(path), "height": H, "width": W, "image_id": 1, "annotations": annos}
    return d, img


def _numpy_apply(t: T.Transform, arr: np.ndarray, is_mask: bool) -> np.ndarray | None:
    """The transform redone with plain numpy (None: no independent value for the image)."""
    if isinstance(t, T.HFlipTransform):
        return np.flip(arr, 1)
    if isinstance(t, T.VFlipTransform):
        return np.flip(arr, 0)
    if isinstance(t, Rot90Transform):
        return np.rot90(arr, t.k)
    if isinstance(t, T.CropTransform):
        return arr[t.y0 : t.y0 + t.h, t.x0 : t.x0 + t.w]
    if isinstance(t, T.ResizeTransform):
        if not is_mask:
            return None  # bilinear image resize: not redone here
        if t.new_h > t.h:  # integer upscale: nearest = repeat
            r = t.new_h // t.h
            assert (t.new_h, t.new_w) == (t.h * r, t.w * r)
            return np.repeat(np.repeat(arr, r, 0), r, 1)
        r = t.h // t.new_h  # integer downscale: pixel centres sample index i * r + r // 2
        assert (t.h, t.w) == (t.new_h * r, t.new_w * r)
        return arr[r // 2 :: r, r // 2 :: r]
    if isinstance(t, (IntensityTransform, GaussianBlurTransform, GaussianNoiseTransform)):
        return arr if is_mask else None
    if isinstance(t, T.NoOpTransform):
        return arr
    raise AssertionError(f"no numpy reference for {t}")


def _check_output(out: dict, img: np.ndarray) -> tuple[int, int]:
    """Compare masks, boxes, classes (and geometric image pixels) with the numpy reference."""
    transforms = out["transforms"].transforms
    expected, exp_img = [], img
    for m in _masks():
        for t in transforms:
            m = _numpy_apply(t, m, True)
        expected.append(m)
    for t in transforms:
        exp_img = None if exp_img is None else _numpy_apply(t, exp_img, False)
    inst = out["instances"]
    keep = [k for k, m in enumerate(expected) if m.any()]
    got = inst.gt_masks.tensor.numpy()
    assert got.shape == (len(keep), *out["image"].shape[1:])
    for g, k in zip(got, keep):
        assert np.array_equal(g, expected[k])
    boxes = []
    for k in keep:
        ys, xs = np.nonzero(expected[k])
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    assert inst.gt_boxes.tensor.tolist() == [[float(v) for v in b] for b in boxes]
    assert inst.gt_classes.tolist() == [CLASSES[k] for k in keep]
    if exp_img is not None:
        assert np.array_equal(out["image"].numpy().transpose(1, 2, 0), exp_img)
    return len(keep), len(expected) - len(keep)


GEOMETRIC = {
    "hflip": dict(HFLIP_PROB=1.0),
    "vflip": dict(VFLIP_PROB=1.0),
    "rot90": dict(ROT90=True),
    "crop": dict(CROP=(24, 20)),
    "scale_up": dict(SCALE_JITTER=(2.0, 2.0)),
    "scale_down": dict(SCALE_JITTER=(0.5, 0.5)),
    "resize_shortest_edge": dict(MIN_SIZE_TRAIN=(80,), MAX_SIZE_TRAIN=1000),
    "brightness": dict(BRIGHTNESS=(0.5, 1.5)),
    "contrast": dict(CONTRAST=(0.5, 1.5)),
    "saturation": dict(SATURATION=(0.5, 1.5)),
    "blur": dict(BLUR_PROB=1.0, BLUR_SIGMA=(0.5, 2.0)),
    "noise": dict(NOISE_PROB=1.0, NOISE_STD=(2.0, 8.0)),
    "all": dict(
        HFLIP_PROB=0.5,
        VFLIP_PROB=0.5,
        ROT90=True,
        CROP=(24, 32),
        SCALE_JITTER=(2.0, 2.0),
        BRIGHTNESS=(0.8, 1.2),
        CONTRAST=(0.8, 1.2),
        SATURATION=(0.8, 1.2),
        BLUR_PROB=0.5,
        NOISE_PROB=0.5,
    ),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_every_augmentation_moves_masks_like_numpy(sample, name):
    d, img = sample
    mapper = NucleiDatasetMapper(
        **{
            **NucleiDatasetMapper.from_config(_cfg(**GEOMETRIC[name]), True),
            "record_transforms": True,
        }
    )
    kinds, dropped = set(), 0
    for seed in range(12):
        np.random.seed(seed)
        out = mapper(d)
        applied = [t for t in out["transforms"].transforms if not isinstance(t, T.NoOpTransform)]
        kinds |= {(type(t).__name__, getattr(t, "k", None)) for t in applied}
        dropped += _check_output(out, img)[1]
        assert "annotations" not in out
    if name == "rot90":
        assert {k for _, k in kinds} == {1, 2, 3}
    elif name in ("crop", "all"):
        assert dropped > 0  # some crops lost instances, and they were dropped
    elif name not in ("resize_shortest_edge",):
        assert kinds, "the augmentation never fired"


def test_photometric_augmentations_change_the_image_only(sample):
    d, img = sample
    cfg = _cfg(BRIGHTNESS=(1.5, 1.5))
    out = NucleiDatasetMapper(cfg, True)(d)
    assert np.array_equal(
        out["image"].numpy().transpose(1, 2, 0), np.clip(np.rint(img * 1.5), 0, 255)
    )


def test_crop_cuts_boxes_to_the_masks(sample):
    d, img = sample
    mapper = NucleiDatasetMapper(
        is_train=True, augmentations=[T.CropTransform(10, 8, 12, 10)], record_transforms=True
    )
    out = mapper(d)
    # rows 8..17, cols 10..21: ms[0] (rows 5-14, cols 5-19) and ms[1] (rows 10-19, cols 15-24)
    assert out["instances"].gt_boxes.tensor.tolist() == [
        [0.0, 0.0, 10.0, 7.0],
        [5.0, 2.0, 12.0, 10.0],
    ]
    assert _check_output(out, img) == (2, 4)


def test_test_mode_resizes_only(sample):
    d, img = sample
    cfg = _cfg(**GEOMETRIC["all"])
    out = build_mapper(cfg, is_train=False)(d)
    assert "instances" not in out and "annotations" not in out
    assert np.array_equal(out["image"].numpy().transpose(1, 2, 0), img)
    cfg.INPUT.MIN_SIZE_TEST = 80
    cfg.INPUT.MAX_SIZE_TEST = 1000
    out = build_mapper(cfg, is_train=False)(d)
    assert tuple(out["image"].shape) == (3, 80, 120)


def test_rgb_format_and_registry(sample):
    d, img = sample
    cfg = _cfg()
    cfg.INPUT.FORMAT = "RGB"
    out = build_mapper(cfg, True)(d)
    assert np.array_equal(out["image"].numpy().transpose(1, 2, 0), img[:, :, ::-1])
    cfg.INPUT.MAPPER = "DatasetMapper"
    assert isinstance(build_mapper(cfg, True), DatasetMapper)
    cfg.INPUT.MAPPER = "NoSuchMapper"
    with pytest.raises(KeyError, match="NoSuchMapper"):
        build_mapper(cfg, True)
    assert "NucleiDatasetMapper" in MAPPER_REGISTRY
    cfg = _cfg()
    cfg.INPUT.MASK_FORMAT = "polygon"
    with pytest.raises(ValueError, match="MASK_FORMAT"):
        build_mapper(cfg, True)


def _expected_16bit(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a.astype(np.float32), (0.5, 99.5))
    return np.clip((a.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["grey", "rgb", "rgba", "grey16_png", "grey16_tif", "rgb_tif"])
def test_image_kinds_read_as_bgr(tmp_path, kind):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 255, (H, W), dtype=np.uint8)
    rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    g16 = rng.integers(0, 4000, (H, W), dtype=np.uint16)
    path = tmp_path / ("img.tif" if kind.endswith("tif") else "img.png")
    if kind == "grey":
        cv2.imwrite(str(path), grey)
        expected = np.stack([grey] * 3, 2)
    elif kind == "rgb":
        cv2.imwrite(str(path), rgb[:, :, ::-1])  # cv2 writes BGR -> file holds rgb
        expected = rgb[:, :, ::-1]
    elif kind == "rgba":
        alpha = rng.integers(0, 255, (H, W, 1), dtype=np.uint8)
        cv2.imwrite(str(path), np.concatenate([rgb[:, :, ::-1], alpha], 2))
        expected = rgb[:, :, ::-1]
    elif kind == "grey16_png":
        cv2.imwrite(str(path), g16)
        expected = np.stack([_expected_16bit(g16)] * 3, 2)
    elif kind == "grey16_tif":
        tifffile.imwrite(path, g16)
        expected = np.stack([_expected_16bit(g16)] * 3, 2)
    else:
        tifffile.imwrite(path, rgb)  # tifffile stores RGB as given
        expected = rgb[:, :, ::-1]
    d = {"file_name": str(path), "height": H, "width": W, "image_id": 1, "annotations": []}
    out = NucleiDatasetMapper(_cfg(), True)(d)
    assert out["image"].dtype == torch.uint8
    assert np.array_equal(out["image"].numpy().transpose(1, 2, 0), expected)
    assert len(out["instances"]) == 0


def test_bad_input_raises_naming_the_file(sample, tmp_path):
    d, _ = sample
    mapper = NucleiDatasetMapper(_cfg(), True)
    with pytest.raises(ImageReadError, match="missing.png"):
        mapper({**d, "file_name": str(tmp_path / "missing.png")})
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="bad.png"):
        mapper({**d, "file_name": str(bad)})
    with pytest.raises(ValueError, match="img.png.*41x60"):
        mapper({**d, "height": 41})
    big = np.zeros((H + 1, W), bool)
    big[0, 0] = True
    anno = {**d["annotations"][0], "segmentation": mask_to_coco_rle(big)}
    with pytest.raises(ValueError, match="img.png.*mask size"):
        mapper({**d, "annotations": [anno]})


def test_decode_window_equals_decode_then_crop():
    rng = np.random.default_rng(5)
    for _ in range(30):
        h, w = rng.integers(5, 40, size=2)
        m = rng.random((h, w)) < rng.uniform(0, 0.6)
        rle = mask_to_coco_rle(m)
        rle = {"size": rle["size"], "counts": rle["counts"].encode()}
        ch, cw = rng.integers(1, h + 1), rng.integers(1, w + 1)
        y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        got = decode_window(rle, T.CropTransform(x0, y0, cw, ch))
        assert np.array_equal(got, m[y0 : y0 + ch, x0 : x0 + cw])

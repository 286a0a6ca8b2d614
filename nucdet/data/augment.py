"""Augmentations for cell images: deterministic transforms, random choices in augmentations.

Transforms (``T.Transform`` subclasses) do exactly what their parameters say, so a test,
a TTA view or a debugging session can replay or invert them:

- ``Rot90Transform(h, w, k)``: rotation by ``k * 90`` degrees counter-clockwise (as
  ``np.rot90``); its inverse is the rotation by ``-k``.
- ``IntensityTransform(brightness, contrast, saturation)``: ``img * b``, then contrast
  around the mean grey level, then saturation around each pixel's grey level.
- ``GaussianBlurTransform(sigma)`` and ``GaussianNoiseTransform(std, seed)``.

Photometric transforms leave coordinates and masks untouched; their inverse is a no-op
(nothing geometric to undo). The random parameters are drawn in the matching
``T.Augmentation.get_transform`` (``RandomRot90``, ``RandomIntensity``,
``RandomGaussianBlur``, ``RandomGaussianNoise``, ``RandomScale``) from NumPy's global
generator, which detectron2 seeds per data-loader worker.

``build_augmentations(cfg, is_train)`` assembles the list from ``cfg.INPUT``: resize
(``MIN_SIZE_*``/``MAX_SIZE_*``; a size of 0 keeps the native size), scale jitter, random
crop (``INPUT.CROP``), flips, rot90, intensity, blur, noise, in that order. Geometric
transforms and the crop come first so that the per-pixel photometric work is done on the
crop only. At test time only the resize is applied.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from detectron2.data import transforms as T
from PIL import Image

# Grey-level weights in BGR channel order (ITU-R 601-2 luma, as PIL's "L" conversion).
GREY_BGR = np.array([0.114, 0.587, 0.299], np.float32)


def _to_dtype(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Clip to 0..255 and, for uint8 input, round back to uint8."""
    out = np.clip(out, 0, 255)
    if like.dtype == np.uint8:
        return np.rint(out).astype(np.uint8)
    return out.astype(like.dtype, copy=False)


def _grey(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 3:
        return img @ GREY_BGR
    return img[..., 0] if img.ndim == 3 else img


class Rot90Transform(T.Transform):
    """Rotate by ``k * 90`` degrees counter-clockwise (``np.rot90(img, k)``)."""

    def __init__(self, h: int, w: int, k: int):
        super().__init__()
        self._set_attributes({"h": int(h), "w": int(w), "k": int(k) % 4})

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        assert img.shape[:2] == (self.h, self.w), (img.shape, (self.h, self.w))
        return np.ascontiguousarray(np.rot90(img, self.k, axes=(0, 1)))

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        # Continuous (x, y) with pixel i covering [i, i + 1): a CCW quarter turn maps
        # (x, y) -> (y, w - x) and the image becomes w x h.
        x, y = coords[:, 0].copy(), coords[:, 1].copy()
        if self.k == 1:
            coords[:, 0], coords[:, 1] = y, self.w - x
        elif self.k == 2:
            coords[:, 0], coords[:, 1] = self.w - x, self.h - y
        elif self.k == 3:
            coords[:, 0], coords[:, 1] = self.h - y, x
        return coords

    def output_shape(self) -> tuple[int, int]:
        return (self.w, self.h) if self.k % 2 else (self.h, self.w)

    def inverse(self) -> T.Transform:
        h, w = self.output_shape()
        return Rot90Transform(h, w, -self.k)


class PhotometricTransform(T.Transform):
    """A transform of pixel values only: coordinates and masks pass unchanged, and there is
    nothing to undo geometrically (the inverse is a no-op)."""

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> T.Transform:
        return T.NoOpTransform()


class IntensityTransform(PhotometricTransform):
    """Brightness (scale), contrast (around the mean grey) and saturation (around grey)."""

    def __init__(self, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0):
        super().__init__()
        self._set_attributes(
            {
                "brightness": float(brightness),
                "contrast": float(contrast),
                "saturation": float(saturation),
            }
        )

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        out = img.astype(np.float32)
        if self.brightness != 1.0:
            out *= self.brightness
        if self.contrast != 1.0:
            mean = float(_grey(out).mean())
            out = (out - mean) * self.contrast + mean
        if self.saturation != 1.0 and out.ndim == 3 and out.shape[2] == 3:
            grey = _grey(out)[..., None]
            out = (out - grey) * self.saturation + grey
        return _to_dtype(out, img)


class GaussianBlurTransform(PhotometricTransform):
    """Gaussian blur with standard deviation ``sigma`` pixels (OpenCV, reflected border)."""

    def __init__(self, sigma: float):
        super().__init__()
        self._set_attributes({"sigma": float(sigma)})

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if self.sigma <= 0:
            return img
        return cv2.GaussianBlur(img, (0, 0), self.sigma).reshape(img.shape)


class GaussianNoiseTransform(PhotometricTransform):
    """Add N(0, std^2) noise; the noise field is fixed by ``seed`` (same seed, same noise)."""

    def __init__(self, std: float, seed: int):
        super().__init__()
        self._set_attributes({"std": float(std), "seed": int(seed)})

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if self.std <= 0:
            return img
        rng = np.random.default_rng(self.seed)
        noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(self.std)
        return _to_dtype(img.astype(np.float32) + noise, img)


def _check_range(name: str, lo_hi: Sequence[float], low: float = 0.0) -> tuple[float, float]:
    lo, hi = (float(v) for v in lo_hi)
    if not low <= lo <= hi:
        raise ValueError(f"{name} must be (min, max) with {low} <= min <= max, got {lo_hi}")
    return lo, hi


def _check_prob(name: str, p: float) -> float:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return float(p)


class RandomRot90(T.Augmentation):
    """Rotate by k * 90 degrees with k uniform in 0..3."""

    def get_transform(self, image: np.ndarray) -> T.Transform:
        k = int(np.random.randint(4))
        if k == 0:
            return T.NoOpTransform()
        return Rot90Transform(image.shape[0], image.shape[1], k)


class RandomIntensity(T.Augmentation):
    """Brightness, contrast and saturation factors, each uniform in its (min, max) range."""

    def __init__(
        self,
        brightness: Sequence[float] = (1.0, 1.0),
        contrast: Sequence[float] = (1.0, 1.0),
        saturation: Sequence[float] = (1.0, 1.0),
    ):
        super().__init__()
        self.ranges = [
            _check_range("brightness", brightness),
            _check_range("contrast", contrast),
            _check_range("saturation", saturation),
        ]

    def get_transform(self, image: np.ndarray) -> T.Transform:
        b, c, s = (float(np.random.uniform(lo, hi)) for lo, hi in self.ranges)
        return IntensityTransform(b, c, s)


class RandomGaussianBlur(T.Augmentation):
    """With probability ``prob``, blur with sigma uniform in ``sigma``."""

    def __init__(self, prob: float, sigma: Sequence[float] = (0.5, 1.5)):
        super().__init__()
        self.prob = _check_prob("blur probability", prob)
        self.sigma = _check_range("blur sigma", sigma)

    def get_transform(self, image: np.ndarray) -> T.Transform:
        if np.random.uniform() >= self.prob:
            return T.NoOpTransform()
        return GaussianBlurTransform(float(np.random.uniform(*self.sigma)))


class RandomGaussianNoise(T.Augmentation):
    """With probability ``prob``, add noise with std uniform in ``std`` (0..255 scale)."""

    def __init__(self, prob: float, std: Sequence[float] = (0.0, 8.0)):
        super().__init__()
        self.prob = _check_prob("noise probability", prob)
        self.std = _check_range("noise std", std)

    def get_transform(self, image: np.ndarray) -> T.Transform:
        if np.random.uniform() >= self.prob:
            return T.NoOpTransform()
        std = float(np.random.uniform(*self.std))
        return GaussianNoiseTransform(std, int(np.random.randint(2**31 - 1)))


class RandomScale(T.Augmentation):
    """Resize by a factor uniform in ``(min_scale, max_scale)`` (masks: nearest)."""

    def __init__(self, min_scale: float, max_scale: float):
        super().__init__()
        self.scale = _check_range("scale jitter", (min_scale, max_scale), low=1e-3)

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        s = float(np.random.uniform(*self.scale))
        new_h, new_w = max(1, round(h * s)), max(1, round(w * s))
        if (new_h, new_w) == (h, w):
            return T.NoOpTransform()
        return T.ResizeTransform(h, w, new_h, new_w, Image.BILINEAR)


def build_augmentations(cfg, is_train: bool) -> list[T.Augmentation]:
    """The augmentation list for ``cfg`` (see module docstring for the order)."""
    aug_cfg = cfg.INPUT.AUG
    if not is_train:
        sizes = (
            tuple(cfg.INPUT.MIN_SIZE_TEST)
            if isinstance(cfg.INPUT.MIN_SIZE_TEST, (list, tuple))
            else (cfg.INPUT.MIN_SIZE_TEST,)
        )
        if not any(sizes):
            return []
        return [T.ResizeShortestEdge(sizes, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    augs: list[T.Augmentation] = []
    if any(cfg.INPUT.MIN_SIZE_TRAIN):
        augs.append(
            T.ResizeShortestEdge(
                cfg.INPUT.MIN_SIZE_TRAIN,
                cfg.INPUT.MAX_SIZE_TRAIN,
                cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
            )
        )
    if tuple(aug_cfg.SCALE_JITTER) != (1.0, 1.0):
        augs.append(RandomScale(*aug_cfg.SCALE_JITTER))
    if cfg.INPUT.CROP.ENABLED:
        augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    if _check_prob("INPUT.AUG.HFLIP_PROB", aug_cfg.HFLIP_PROB) > 0:
        augs.append(T.RandomFlip(aug_cfg.HFLIP_PROB, horizontal=True, vertical=False))
    if _check_prob("INPUT.AUG.VFLIP_PROB", aug_cfg.VFLIP_PROB) > 0:
        augs.append(T.RandomFlip(aug_cfg.VFLIP_PROB, horizontal=False, vertical=True))
    if aug_cfg.ROT90:
        augs.append(RandomRot90())
    ranges = (aug_cfg.BRIGHTNESS, aug_cfg.CONTRAST, aug_cfg.SATURATION)
    if any(tuple(r) != (1.0, 1.0) for r in ranges):
        augs.append(RandomIntensity(*ranges))
    if aug_cfg.BLUR_PROB > 0:
        augs.append(RandomGaussianBlur(aug_cfg.BLUR_PROB, aug_cfg.BLUR_SIGMA))
    if aug_cfg.NOISE_PROB > 0:
        augs.append(RandomGaussianNoise(aug_cfg.NOISE_PROB, aug_cfg.NOISE_STD))
    return augs

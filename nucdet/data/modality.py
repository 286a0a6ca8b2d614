"""Image modality computed from the pixels: ``fluorescence``, ``brightfield`` or ``stained``.

The DSB2018 labels (``samples.json`` of the bundled sample) come from the community's
metadata, which a Kaggle download or a test folder does not have. Two statistics of the
image separate the three classes on all 551 images of the DSB2018 stage1 training set
here and on the 34 of the bundled sample (``tests/data/test_modality.py`` checks them):

- colour: the mean absolute deviation of the channels from their mean; grey images
  (fluorescence, brightfield) have 0, stained tissue (H&E and similar) 4.5-43;
- background: the median grey level; fluorescence has a dark background (0-44),
  brightfield and stained slides a light one (130-231).

``stained`` when colour > ``COLOR_THRESH``, else ``fluorescence`` when the median is below
``DARK_THRESH``, else ``brightfield``. Used for routing images to ensemble members
(``nucdet.inference.ensemble``) and for stratifying folds without ``samples.json``
(``nucdet.data.register``). It is a rule for these three families, not a classifier of
every microscope image.
"""

from __future__ import annotations

import numpy as np

MODALITIES = ("fluorescence", "brightfield", "stained")
COLOR_THRESH = 2.0
DARK_THRESH = 100.0


def image_modality(image: np.ndarray) -> str:
    """Modality of an (H, W) or (H, W, C) uint8 image (channel order does not matter)."""
    img = np.asarray(image, np.float32)
    if img.ndim == 3 and img.shape[2] >= 3:
        img = img[:, :, :3]
        color = float(np.abs(img - img.mean(axis=2, keepdims=True)).mean())
        grey = img.mean(axis=2)
    elif img.ndim in (2, 3):
        color, grey = 0.0, img.reshape(img.shape[0], img.shape[1], -1).mean(axis=2)
    else:
        raise ValueError(f"image_modality: expected an (H, W[, C]) image, got {img.shape}")
    if color > COLOR_THRESH:
        return "stained"
    return "fluorescence" if float(np.median(grey)) < DARK_THRESH else "brightfield"


# Image keys computable from the pixels alone: key -> (function, the values it can give).
COMPUTED_KEYS = {"modality": (image_modality, MODALITIES)}

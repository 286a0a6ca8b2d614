"""Overlays: instance outlines drawn over an image, predictions beside ground truth."""

from __future__ import annotations

import numpy as np
from skimage.segmentation import find_boundaries

PRED_COLOR = (0, 255, 255)  # yellow (BGR)
GT_COLOR = (0, 200, 0)  # green (BGR)


def draw_outlines(
    image_bgr: np.ndarray, labels: np.ndarray, color: tuple[int, int, int] = PRED_COLOR
) -> np.ndarray:
    """Copy of ``image_bgr`` with the inner outline of every instance of a label image."""
    out = image_bgr.copy()
    out[find_boundaries(labels, mode="inner")] = color
    return out


def prediction_overlay(
    image_bgr: np.ndarray, pred_labels: np.ndarray, gt_labels: np.ndarray | None = None
) -> np.ndarray:
    """Predicted outlines; with ground truth, GT outlines on the left, predictions right."""
    pred = draw_outlines(image_bgr, pred_labels, PRED_COLOR)
    if gt_labels is None:
        return pred
    gap = np.full((image_bgr.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([draw_outlines(image_bgr, gt_labels, GT_COLOR), gap, pred], axis=1)

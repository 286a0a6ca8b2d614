"""Per-pixel U-Net training targets from instance masks: foreground, boundary, distance.

``pixel_targets(masks, boundary_width)`` turns the (N, H, W) instance masks of one image
(what the nucdet mappers put in ``Instances.gt_masks``) into three (H, W) maps:

- ``fg``: 1 where any instance is;
- ``boundary``: 1 on the inner rim of every instance: its pixels within
  ``boundary_width`` (Euclidean) of a pixel outside it, where another instance counts as
  outside; so the line where two nuclei touch is boundary on both sides, and the image
  border is not a boundary (a nucleus cut by a crop continues past it). Pixels claimed by
  two instances are boundary too;
- ``distance``: inside each instance, the Euclidean distance to its outside divided by
  the instance's largest one (1 at its centre, about 1 / radius on its rim); 0 elsewhere.
- ``classes``: the class of the instance covering each pixel, -1 on background and on
  contested pixels.

Work is per instance on its box crop (scipy's distance transform), never one full-image
array per instance beyond the input. Pure numpy/scipy: no torch, no detectron2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["PixelTargets", "pixel_targets"]


@dataclass
class PixelTargets:
    """The (H, W) float32 maps of ``pixel_targets`` (module docstring) and int64 classes."""

    fg: np.ndarray
    boundary: np.ndarray
    distance: np.ndarray
    classes: np.ndarray


def _inside_distance(crop: np.ndarray, at_border: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Euclidean distance of every pixel of the bool ``crop`` to the nearest pixel outside
    it; sides of the crop on the image border (top, bottom, left, right) continue the
    mask past the border (edge padding), the other sides are outside (zero padding)."""
    top, bottom, left, right = at_border
    p = np.pad(crop, 1, mode="edge")
    if not top:
        p[0] = False
    if not bottom:
        p[-1] = False
    if not left:
        p[:, 0] = False
    if not right:
        p[:, -1] = False
    if p.all():  # no outside pixel at all: the whole image is one instance
        return np.full(crop.shape, np.inf)
    return ndimage.distance_transform_edt(p)[1:-1, 1:-1]


def pixel_targets(
    masks: np.ndarray, boundary_width: float = 1.0, classes: np.ndarray | None = None
) -> PixelTargets:
    """Targets of one image from its (N, H, W) bool instance masks (module docstring).

    ``boundary_width``: rim width in pixels (1: the pixels with a 4-neighbour outside).
    ``classes``: (N,) instance classes (default all 0).
    """
    masks = np.asarray(masks, bool)
    if masks.ndim != 3:
        raise ValueError(f"instance masks must be (N, H, W), got shape {masks.shape}")
    if boundary_width <= 0:
        raise ValueError(f"boundary_width must be > 0, got {boundary_width}")
    n, h, w = masks.shape
    cls = np.zeros(n, np.int64) if classes is None else np.asarray(classes, np.int64).reshape(-1)
    if len(cls) != n:
        raise ValueError(f"{n} instance masks but {len(cls)} classes")
    count = masks.sum(axis=0, dtype=np.int32) if n else np.zeros((h, w), np.int32)
    fg = (count > 0).astype(np.float32)
    boundary = (count > 1).astype(np.float32)
    distance = np.zeros((h, w), np.float32)
    class_map = np.full((h, w), -1, np.int64)
    for i in range(n):
        rows = np.flatnonzero(masks[i].any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(masks[i].any(axis=0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        # One pixel of context, so that a neighbour touching the box edge is seen.
        ey0, ey1, ex0, ex1 = max(y0 - 1, 0), min(y1 + 1, h), max(x0 - 1, 0), min(x1 + 1, w)
        crop = masks[i, ey0:ey1, ex0:ex1]
        d = _inside_distance(crop, (ey0 == 0, ey1 == h, ex0 == 0, ex1 == w))
        inside = crop
        rim = inside & (d <= boundary_width)
        boundary[ey0:ey1, ex0:ex1][rim] = 1.0
        finite = d[inside][np.isfinite(d[inside])]
        dmax = float(finite.max()) if finite.size else 1.0
        dist = np.where(inside, np.minimum(d, dmax) / dmax, 0.0).astype(np.float32)
        region = distance[ey0:ey1, ex0:ex1]
        np.maximum(region, dist, out=region)
        own = inside & (count[ey0:ey1, ex0:ex1] == 1)
        class_map[ey0:ey1, ex0:ex1][own] = cls[i]
    return PixelTargets(fg, boundary, distance, class_map)

"""Decode U-Net maps into instances: marker-controlled watershed, then box + grid records.

``watershed_instances(fg, boundary, distance, ...)`` -> (H, W) int32 label image:

1. mask: ``fg >= fg_thresh``;
2. markers: the 8-connected pieces of ``mask & (boundary < boundary_thresh) &
   (distance >= marker_thresh)`` of at least ``min_marker_area`` pixels (the instance
   cores the boundary head separates, where two nuclei touch);
3. ``skimage.segmentation.watershed`` of the elevation ``boundary - distance`` from the
   markers inside the mask; foreground pieces no marker reaches become instances of
   their own (a small nucleus whose core fell under the thresholds is not lost);
4. instances under ``min_area`` pixels are dropped.

``labels_to_detections(labels, fg, class_probs, grid_size)`` gives every instance the
record Mask R-CNN produces (``RawDetections`` fields): a tight box ``[x0, y0, x1, y1]``
(pixel edges, x1 exclusive), a score (mean foreground probability over its pixels), a
class (largest mean class probability; 0 without classes) and an MxM box-relative grid
holding the foreground probability on the instance's pixels and 0 elsewhere (not on its
neighbours), resampled so that detectron2's bilinear pasting (``paste_grids``) gives back
the instance's probabilities: exactly when ``grid_size >= 2 * box side`` (nearest
neighbour up-sampling: both bilinear taps of every pixel centre fall on copies of that
pixel), by area averaging otherwise (as smooth as a Mask R-CNN grid). Thresholding the
pasted grid at ``POSTPROCESS.MASK_THRESH`` <= ``fg_thresh`` gives the instance back.

``box_grids(fg, boxes, grid_size)`` samples the foreground map on the MxM grid of any
boxes (bilinear, at the grid cells' centres): the U-Net's answer when fusion re-runs
"mask heads" on fused boxes (``wbf_mask_rerun``) or asks for its foreground in other
models' boxes.

Pure numpy / scipy / scikit-image; the model (``nucdet.modeling.unet``) calls it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

__all__ = [
    "DecodedInstances",
    "box_grids",
    "labels_to_detections",
    "resample_matrix",
    "watershed_instances",
]

_EIGHT = np.ones((3, 3), bool)


def watershed_instances(
    fg: np.ndarray,
    boundary: np.ndarray,
    distance: np.ndarray,
    *,
    fg_thresh: float = 0.5,
    boundary_thresh: float = 0.5,
    marker_thresh: float = 0.3,
    min_marker_area: int = 4,
    min_area: int = 0,
) -> np.ndarray:
    """(H, W) int32 labels 1..K of the instances in the probability maps (module docstring).

    All maps are (H, W) in [0, 1]; labels are numbered in raster order of their first
    pixel (marker instances first, then the unreached pieces).
    """
    fg = np.asarray(fg, np.float32)
    boundary = np.asarray(boundary, np.float32)
    distance = np.asarray(distance, np.float32)
    if fg.ndim != 2 or boundary.shape != fg.shape or distance.shape != fg.shape:
        raise ValueError(
            f"fg, boundary and distance must be (H, W) maps of one shape, got "
            f"{fg.shape}, {boundary.shape}, {distance.shape}"
        )
    mask = fg >= fg_thresh
    if not mask.any():
        return np.zeros(fg.shape, np.int32)
    core = mask & (boundary < boundary_thresh) & (distance >= marker_thresh)
    markers, k = ndimage.label(core, structure=_EIGHT)
    if k and min_marker_area > 1:
        sizes = np.bincount(markers.ravel(), minlength=k + 1)
        small = sizes < min_marker_area
        small[0] = False
        markers[small[markers]] = 0
        markers, k = ndimage.label(markers > 0, structure=_EIGHT)
    if k:
        labels = watershed(boundary - distance, markers, mask=mask).astype(np.int32)
    else:
        labels = np.zeros(fg.shape, np.int32)
    rest, r = ndimage.label(mask & (labels == 0), structure=_EIGHT)
    if r:
        labels[rest > 0] = rest[rest > 0] + labels.max()
    if min_area > 1 and labels.max():
        sizes = np.bincount(labels.ravel())
        small = sizes < min_area
        small[0] = False
        labels[small[labels]] = 0
    # Consecutive numbering 1..K (watershed and the drops above leave gaps).
    used = np.unique(labels)
    used = used[used > 0]
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[used] = np.arange(1, len(used) + 1, dtype=np.int32)
    return lut[labels]


def resample_matrix(n: int, m: int) -> np.ndarray:
    """(m, n) float32 matrix taking n pixels along one axis to m grid cells.

    Nearest neighbour (cell j copies pixel ``floor((j + 0.5) * n / m)``) when
    ``m >= 2 * n``: detectron2's bilinear paste of such a grid at pixel centres returns
    every pixel's value (module docstring). Area averaging otherwise.
    """
    if n < 1 or m < 1:
        raise ValueError(f"resample_matrix needs n, m >= 1, got {n}, {m}")
    out = np.zeros((m, n), np.float32)
    if m >= 2 * n:
        src = np.minimum(((np.arange(m) + 0.5) * n / m).astype(np.int64), n - 1)
        out[np.arange(m), src] = 1.0
        return out
    # Cell j covers [j, j + 1) * n / m in pixel units: weight = overlap / cell length.
    edges = np.arange(m + 1) * (n / m)
    lo, hi = edges[:-1, None], edges[1:, None]
    px = np.arange(n)[None, :]
    overlap = np.clip(np.minimum(hi, px + 1) - np.maximum(lo, px), 0, None)
    return (overlap / (n / m)).astype(np.float32)


@dataclass
class DecodedInstances:
    """Instances of one image as Mask R-CNN's raw output (``RawDetections`` fields)."""

    boxes: np.ndarray  # (N, 4) float32 xyxy, pixel edges
    scores: np.ndarray  # (N,) float32 mean foreground probability
    classes: np.ndarray  # (N,) int64
    grids: np.ndarray  # (N, M, M) float32 box-relative foreground probability


def labels_to_detections(
    labels: np.ndarray,
    fg: np.ndarray,
    class_probs: np.ndarray | None = None,
    grid_size: int = 28,
) -> DecodedInstances:
    """Boxes, scores, classes and MxM grids of labels 1..K (module docstring).

    ``class_probs``: (C, H, W) per-pixel class probabilities, or None (all class 0).
    """
    labels = np.asarray(labels)
    fg = np.asarray(fg, np.float32)
    if labels.shape != fg.shape:
        raise ValueError(f"labels {labels.shape} and fg {fg.shape} differ in shape")
    if grid_size < 1:
        raise ValueError(f"grid_size must be >= 1, got {grid_size}")
    k = int(labels.max()) if labels.size else 0
    m = int(grid_size)
    boxes = np.zeros((k, 4), np.float32)
    scores = np.zeros(k, np.float32)
    classes = np.zeros(k, np.int64)
    grids = np.zeros((k, m, m), np.float32)
    cache: dict[int, np.ndarray] = {}

    def mat(n: int) -> np.ndarray:
        if n not in cache:
            cache[n] = resample_matrix(n, m)
        return cache[n]

    for i, sl in enumerate(ndimage.find_objects(labels.astype(np.int32), max_label=k)):
        if sl is None:
            raise ValueError(f"label {i + 1} of 1..{k} is empty: labels must be consecutive")
        own = labels[sl] == i + 1
        prob = np.where(own, fg[sl], 0.0).astype(np.float32)
        ys, xs = sl
        boxes[i] = xs.start, ys.start, xs.stop, ys.stop
        scores[i] = float(fg[sl][own].mean())
        if class_probs is not None:
            classes[i] = int(class_probs[(slice(None), *sl)][:, own].mean(axis=1).argmax())
        grids[i] = mat(prob.shape[0]) @ prob @ mat(prob.shape[1]).T
    return DecodedInstances(boxes, scores, classes, grids)


def box_grids(fg: np.ndarray, boxes: np.ndarray, grid_size: int) -> np.ndarray:
    """(K, M, M) float32 samples of the (H, W) map ``fg`` in each xyxy box (pixel edges).

    Cell (a, b) of box ``[x0, y0, x1, y1]`` is sampled at its centre,
    ``x = x0 + (b + 0.5) * (x1 - x0) / M`` (and likewise y), bilinearly between pixel
    centres (pixel i's centre is at i + 0.5), the border pixels extended outwards.
    """
    fg = np.asarray(fg, np.float32)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    m = int(grid_size)
    if fg.ndim != 2:
        raise ValueError(f"fg must be an (H, W) map, got shape {fg.shape}")
    if len(boxes) == 0:
        return np.zeros((0, m, m), np.float32)
    t = (np.arange(m) + 0.5) / m
    xs = boxes[:, 0:1] + t[None] * (boxes[:, 2:3] - boxes[:, 0:1]) - 0.5  # (K, M)
    ys = boxes[:, 1:2] + t[None] * (boxes[:, 3:4] - boxes[:, 1:2]) - 0.5
    yy = np.broadcast_to(ys[:, :, None], (len(boxes), m, m))
    xx = np.broadcast_to(xs[:, None, :], (len(boxes), m, m))
    out = ndimage.map_coordinates(fg, [yy.ravel(), xx.ravel()], order=1, mode="nearest")
    return out.reshape(len(boxes), m, m).astype(np.float32)

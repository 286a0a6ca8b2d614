"""Post-processing of one image's prediction before it is written.

``postprocess(pred, ...)`` runs, in this order:

1. ``majority_class``: every instance takes the class held by most instances of the
   image (Sartorius: one cell type per image). Ties go to the larger summed score, then
   to the lower class index.
2. ``score_thresh``: keep ``score >= thresh[class]`` (one value, or one per class).
3. Instances are visited in descending score order (stable: equal scores keep their
   input order; the order is a list of indices, never a lookup by score value). For
   each: ``fill_holes`` (``scipy.ndimage.binary_fill_holes`` on its crop), then with
   ``remove_overlap`` the pixels already taken by a higher-scored instance are removed
   (one HxW occupancy image for the whole image), then with ``min_fragment`` every
   8-connected piece smaller than that is dropped, and the instance is kept only if at
   least ``min_area[class]`` pixels (and at least one) remain. Only kept instances
   occupy pixels, so a dropped instance does not cut the ones below it.

The output lists the kept instances in descending score order with their final masks;
with ``remove_overlap`` no pixel belongs to two of them. All work is on crops
(``nucdet.inference.masks.CropMasks``), never one full-image array per instance.
``postprocess_from_cfg(cfg)`` builds the same from ``cfg.POSTPROCESS.*``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from scipy import ndimage

from nucdet.inference.masks import CropMasks, rles_to_crops
from nucdet.structures import ImagePrediction

__all__ = [
    "majority_class_of",
    "per_class",
    "postprocess",
    "postprocess_crops",
    "postprocess_from_cfg",
]

_EIGHT = np.ones((3, 3), bool)


def per_class(value: float | Sequence[float], classes: np.ndarray, key: str) -> np.ndarray:
    """``value`` (one number or one per class) looked up for every entry of ``classes``."""
    v = np.atleast_1d(np.asarray(value, np.float64))
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"{key}: expected one value or one per class, got {value!r}")
    if len(v) == 1:
        return np.full(len(classes), v[0])
    if len(classes) and (classes.min() < 0 or classes.max() >= len(v)):
        raise ValueError(
            f"{key} has {len(v)} values but a prediction has class {int(classes.max())} "
            "(one value per class in thing_classes order, or a single value)"
        )
    return v[classes]


def majority_class_of(classes: np.ndarray, scores: np.ndarray) -> int:
    """The class held by most instances; ties -> larger summed score -> lower index."""
    classes = np.asarray(classes, np.int64)
    if len(classes) == 0:
        raise ValueError("majority_class of an image without instances")
    labels, counts = np.unique(classes, return_counts=True)
    sums = np.array([scores[classes == c].astype(np.float64).sum() for c in labels])
    # lexsort: last key is primary; np.unique sorted labels ascending, so the first of
    # equal (count, sum) is the lowest class index.
    best = np.lexsort((np.arange(len(labels)), -sums, -counts))[0]
    return int(labels[best])


def postprocess_crops(
    crops: CropMasks,
    scores: np.ndarray,
    classes: np.ndarray,
    *,
    score_thresh: float | Sequence[float] = 0.0,
    min_area: float | Sequence[float] = 0,
    majority_class: bool = False,
    remove_overlap: bool = True,
    fill_holes: bool = False,
    min_fragment: int = 0,
) -> tuple[np.ndarray, CropMasks, np.ndarray]:
    """``postprocess`` on crops: returns ``(kept input indices, final crops, classes)``.

    The indices point into the inputs, in the output (descending score) order; the crops
    are the final tight masks and ``classes`` the (possibly relabelled) classes of the
    kept instances.
    """
    scores = np.asarray(scores, np.float32).reshape(-1)
    classes = np.asarray(classes, np.int64).reshape(-1)
    n = len(crops)
    if not (len(scores) == len(classes) == n):
        raise ValueError(f"{n} masks, {len(scores)} scores, {len(classes)} classes")
    if min_fragment < 0:
        raise ValueError(f"min_fragment must be >= 0, got {min_fragment}")
    empty = (np.zeros(0, np.int64), crops.select(np.zeros(0, np.int64)), np.zeros(0, np.int64))
    if n == 0:
        return empty
    if majority_class:
        classes = np.full(n, majority_class_of(classes, scores), np.int64)
    thresh = per_class(score_thresh, classes, "score_thresh")
    min_px = per_class(min_area, classes, "min_area")
    cand = np.flatnonzero(scores >= thresh)
    order = cand[np.argsort(-scores[cand], kind="stable")]
    occupied = np.zeros((crops.height, crops.width), bool) if remove_overlap else None
    kept: list[int] = []
    kept_crops: list[np.ndarray] = []
    kept_boxes: list[np.ndarray] = []
    for i in order.tolist():
        x0, y0, x1, y1 = crops.boxes[i].tolist()
        m = np.asarray(crops.crops[i], bool)
        if m.size == 0:
            continue
        if fill_holes:
            m = ndimage.binary_fill_holes(m)
        if occupied is not None:
            m = m & ~occupied[y0:y1, x0:x1]
        if min_fragment > 1:
            lab, n_lab = ndimage.label(m, structure=_EIGHT)
            if n_lab:
                sizes = np.bincount(lab.ravel(), minlength=n_lab + 1)
                small = sizes < min_fragment
                small[0] = True
                m = ~small[lab]
        area = int(np.count_nonzero(m))
        if area == 0 or area < min_px[i]:
            continue
        if occupied is not None:
            occupied[y0:y1, x0:x1] |= m
        kept.append(i)
        kept_crops.append(m)
        kept_boxes.append(crops.boxes[i])
    if not kept:
        return empty
    idx = np.asarray(kept, np.int64)
    out = CropMasks(np.stack(kept_boxes), kept_crops, crops.height, crops.width).tight()
    return idx, out, classes[idx]


def postprocess(
    pred: ImagePrediction,
    *,
    score_thresh: float | Sequence[float] = 0.0,
    min_area: float | Sequence[float] = 0,
    majority_class: bool = False,
    remove_overlap: bool = True,
    fill_holes: bool = False,
    min_fragment: int = 0,
) -> ImagePrediction:
    """Threshold, relabel, clean and de-overlap one image's prediction (module docstring)."""
    crops = rles_to_crops(pred.rles, pred.height, pred.width)
    idx, out, classes = postprocess_crops(
        crops,
        pred.scores,
        pred.classes,
        score_thresh=score_thresh,
        min_area=min_area,
        majority_class=majority_class,
        remove_overlap=remove_overlap,
        fill_holes=fill_holes,
        min_fragment=min_fragment,
    )
    return ImagePrediction(
        pred.image_id, pred.height, pred.width, out.to_rles(), pred.scores[idx], classes
    )


def postprocess_from_cfg(cfg) -> Callable[[ImagePrediction], ImagePrediction]:
    """``postprocess`` with the settings of ``cfg.POSTPROCESS`` (see ``nucdet.config``).

    ``POSTPROCESS.MASK_THRESH`` is not read here: it applies when masks are pasted or
    fused, before this step.
    """
    p = cfg.POSTPROCESS
    return partial(
        postprocess,
        score_thresh=np.atleast_1d(np.asarray(p.SCORE_THRESH, np.float64)).tolist(),
        min_area=np.atleast_1d(np.asarray(p.MIN_AREA, np.float64)).tolist(),
        majority_class=bool(p.MAJORITY_CLASS),
        remove_overlap=bool(p.REMOVE_OVERLAP),
        fill_holes=bool(p.FILL_HOLES),
        min_fragment=int(p.MIN_FRAGMENT),
    )

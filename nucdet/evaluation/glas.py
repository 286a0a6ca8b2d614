"""GlaS (MICCAI 2015 gland segmentation challenge) object-level metrics.

Definitions follow the challenge's evaluation page and its official Matlab code
(``F1score.m``, ``ObjectDice.m``, ``ObjectHausdorff.m``), applied to the instances as
given (never binarised and relabelled, which would merge touching objects):

- Detection F1: every segmented object S is paired with the ground-truth object G*(S)
  it overlaps most; S is a TP when it covers more than half of G*(S)
  (``|S & G*| / |G*| > 0.5``, strict as in the code), otherwise a FP. A ground-truth
  object no TP covers is a FN. F1 = 2 TP / (2 TP + FP + FN).
- Object Dice: (sum_S w_S Dice(G*(S), S) + sum_G w~_G Dice(G, S*(G))) / 2 with
  w_S = |S| / sum |S| and w~_G = |G| / sum |G|; an object without an overlapping
  counterpart scores Dice 0.
- Object Hausdorff: the same weighting of the Hausdorff distance between pixel sets
  (Euclidean, over all pixels of both objects); an object without an overlapping
  counterpart is paired with the counterpart at the smallest Hausdorff distance.

"Overlaps most" ties go to the lowest index (for label images the smallest id, like
Matlab's ``mode``). Dataset numbers use the challenge's pooling: F1 from the TP/FP/FN
summed over images, and object Dice / Hausdorff weighted over all objects of the dataset
(the sets G and S of the definition are unions over images). Per-image values are
reported too.

Empty cases (as the official code where it defines them): no objects on either side ->
F1 1, Dice 1, Hausdorff 0; objects on one side only -> F1 0, Dice 0, Hausdorff inf.
Zero-area instances (empty masks) are dropped first: they have no pixels to evaluate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import distance_transform_edt
from tqdm import tqdm

from nucdet.evaluation.matching import (
    InstanceSet,
    InstancesLike,
    Overlaps,
    as_instance_pair,
    pairwise_overlaps,
)


@dataclass
class GlasCounts:
    """Sums of one image (or a dataset) from which every GlaS number follows."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    area_gt: int = 0  # sum of |G|
    area_pred: int = 0  # sum of |S|
    dice_gt: float = 0.0  # sum of |G| Dice(G, S*(G))
    dice_pred: float = 0.0  # sum of |S| Dice(G*(S), S)
    haus_gt: float = 0.0  # sum of |G| H(G, S*(G))
    haus_pred: float = 0.0  # sum of |S| H(G*(S), S)

    def __add__(self, other: GlasCounts) -> GlasCounts:
        return GlasCounts(
            *(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__)
        )

    def f1(self) -> float:
        if self.tp + self.fp + self.fn == 0:
            return 1.0
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn)

    def object_dice(self) -> float:
        if self.area_gt == 0 and self.area_pred == 0:
            return 1.0
        if self.area_gt == 0 or self.area_pred == 0:
            return 0.0
        return (self.dice_pred / self.area_pred + self.dice_gt / self.area_gt) / 2

    def object_hausdorff(self) -> float:
        if self.area_gt == 0 and self.area_pred == 0:
            return 0.0
        if self.area_gt == 0 or self.area_pred == 0:
            return float("inf")
        return (self.haus_pred / self.area_pred + self.haus_gt / self.area_gt) / 2

    def as_dict(self) -> dict[str, float]:
        return {
            "F1": self.f1(),
            "ObjDice": self.object_dice(),
            "ObjHausdorff": self.object_hausdorff(),
        }


def _best_partner(ov: Overlaps, n: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    """For every instance of ``side`` ("a" or "b"): the counterpart with the largest
    intersection (-1 if none; ties -> lowest index) and that intersection."""
    key, other = (ov.ia, ov.ib) if side == "a" else (ov.ib, ov.ia)
    partner = np.full(n, -1, dtype=np.int64)
    inter = np.zeros(n, dtype=np.int64)
    if len(key):
        order = np.lexsort((other, -ov.inter, key))
        first = np.unique(key[order], return_index=True)[1]
        rows = order[first]
        partner[key[rows]] = other[rows]
        inter[key[rows]] = ov.inter[rows]
    return partner, inter


class _Hausdorff:
    """Exact Hausdorff distances between instances of two sets, cached by pair."""

    def __init__(self, g: InstanceSet, p: InstanceSet) -> None:
        self.g, self.p = g, p
        self.gbox, self.pbox = g.boxes(), p.boxes()
        self.cache: dict[tuple[int, int], float] = {}

    def __call__(self, i: int, j: int) -> float:
        if (i, j) not in self.cache:
            self.cache[(i, j)] = self._compute(i, j)
        return self.cache[(i, j)]

    def _compute(self, i: int, j: int) -> float:
        gr, gc = self.g.coords(i)
        pr, pc = self.p.coords(j)
        r0, c0 = min(gr.min(), pr.min()), min(gc.min(), pc.min())
        r1, c1 = max(gr.max(), pr.max()), max(gc.max(), pc.max())
        # Both objects lie inside the crop, so the nearest pixel of either is in it too:
        # the distance transforms of the crop are exact.
        shape = (int(r1 - r0 + 1), int(c1 - c0 + 1))
        mg = np.zeros(shape, bool)
        mp = np.zeros(shape, bool)
        mg[gr - r0, gc - c0] = True
        mp[pr - r0, pc - c0] = True
        to_g = distance_transform_edt(~mg)
        to_p = distance_transform_edt(~mp)
        return float(max(to_g[mp].max(), to_p[mg].max()))

    def nearest(self, k: int, side: str) -> float:
        """Smallest Hausdorff distance from instance k of ``side`` to any instance of the
        other set. Candidates are visited by the gap between bounding boxes, a lower bound
        of the Hausdorff distance, and the search stops once the bound exceeds the best."""
        mine, theirs = (self.gbox, self.pbox) if side == "g" else (self.pbox, self.gbox)
        b = mine[k]
        dr = np.maximum(0, np.maximum(theirs[:, 0] - b[2], b[0] - theirs[:, 2]))
        dc = np.maximum(0, np.maximum(theirs[:, 1] - b[3], b[1] - theirs[:, 3]))
        bound = np.hypot(dr, dc)
        best = float("inf")
        for m in np.argsort(bound, kind="stable"):
            if bound[m] >= best:
                break
            d = self(k, int(m)) if side == "g" else self(int(m), k)
            best = min(best, d)
        return best


def _drop_empty(s: InstanceSet) -> InstanceSet:
    if (s.areas > 0).all():
        return s
    return s.select(s.areas > 0)


def glas_counts(gt: InstancesLike, pred: InstancesLike, *, hausdorff: bool = True) -> GlasCounts:
    """GlaS sums of one image; ``hausdorff=False`` skips the (slower) distance terms."""
    g, p = as_instance_pair(gt, pred)
    g, p = _drop_empty(g), _drop_empty(p)
    ng, npred = len(g), len(p)
    out = GlasCounts(area_gt=int(g.areas.sum()), area_pred=int(p.areas.sum()))
    if ng == 0 or npred == 0:
        out.fp, out.fn = npred, ng
        if hausdorff and (ng or npred):
            out.haus_gt = float("inf") if ng else 0.0
            out.haus_pred = float("inf") if npred else 0.0
        return out
    ov = pairwise_overlaps(g, p)
    g_of_p, inter_p = _best_partner(ov, npred, "b")
    p_of_g, inter_g = _best_partner(ov, ng, "a")

    matched_p = g_of_p >= 0
    tp_mask = matched_p & (2 * inter_p > g.areas[np.maximum(g_of_p, 0)])
    out.tp = int(tp_mask.sum())
    out.fp = npred - out.tp
    out.fn = ng - len(np.unique(g_of_p[tp_mask]))

    dice_p = np.zeros(npred)
    dice_p[matched_p] = 2 * inter_p[matched_p] / (p.areas[matched_p] + g.areas[g_of_p[matched_p]])
    matched_g = p_of_g >= 0
    dice_g = np.zeros(ng)
    dice_g[matched_g] = 2 * inter_g[matched_g] / (g.areas[matched_g] + p.areas[p_of_g[matched_g]])
    out.dice_pred = float((p.areas * dice_p).sum())
    out.dice_gt = float((g.areas * dice_g).sum())

    if hausdorff:
        h = _Hausdorff(g, p)
        haus_p = [
            h(int(g_of_p[j]), j) if g_of_p[j] >= 0 else h.nearest(j, "p") for j in range(npred)
        ]
        haus_g = [h(i, int(p_of_g[i])) if p_of_g[i] >= 0 else h.nearest(i, "g") for i in range(ng)]
        out.haus_pred = float(np.dot(p.areas, haus_p))
        out.haus_gt = float(np.dot(g.areas, haus_g))
    return out


def glas_image(gt: InstancesLike, pred: InstancesLike) -> dict[str, float]:
    """``{"F1", "ObjDice", "ObjHausdorff"}`` of one image."""
    return glas_counts(gt, pred).as_dict()


def glas_dataset(
    items: Iterable[tuple[str, InstancesLike, InstancesLike]],
    *,
    hausdorff: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """GlaS metrics pooled over ``(image_id, gt, pred)`` triples (challenge weighting).

    Returns ``{"F1", "ObjDice", "ObjHausdorff", "TP", "FP", "FN", "n_images",
    "per_image": {image_id: {"F1", "ObjDice", "ObjHausdorff"}}}``.
    """
    total = GlasCounts()
    per_image: dict[str, dict[str, float]] = {}
    for image_id, gt, pred in tqdm(items, desc="GlaS", disable=not progress):
        c = glas_counts(gt, pred, hausdorff=hausdorff)
        per_image[image_id] = c.as_dict()
        total = total + c
    out: dict[str, Any] = total.as_dict()
    if not hausdorff:
        del out["ObjHausdorff"]
        for v in per_image.values():
            del v["ObjHausdorff"]
    out.update(TP=total.tp, FP=total.fp, FN=total.fn, n_images=len(per_image))
    out["per_image"] = per_image
    return out

"""Kaggle MaP-IoU, the leaderboard metric of Sartorius, DSB2018 and TGS Salt.

Definition (the Kaggle DSB2018 / Sartorius evaluation pages): at each threshold t in
0.50, 0.55, ..., 0.95 a prediction matches a ground-truth object when IoU > t (strictly);
matching is one-to-one;
TP = matched pairs, FP = unmatched predictions, FN = unmatched ground-truth objects and
precision(t) = TP / (TP + FP + FN). The image score is the mean of precision(t) over the
thresholds; the dataset score is the mean of the image scores.

Empty images:

- no ground truth and no prediction: precision 1.0 at every threshold (score 1.0), the
  convention of the DSB2018/Sartorius scoring (nothing to find, nothing wrongly found);
- no ground truth but some predictions: 0.0 (every prediction is a FP);
- ground truth but no prediction: 0.0 (every object is a FN).

Exactness: IoU is never formed as a float. With ``t = p/q`` as an exact fraction (0.75 =
3/4) the test ``inter / union > p / q`` is evaluated as ``inter * q > p * union`` on int64
pixel counts, so no threshold decision flips through rounding.

Cellpose's ``average_precision`` uses the same ratio with ``IoU >= t``; pass
``strict=False`` to reproduce it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from tqdm import tqdm

from nucdet.evaluation.matching import InstancesLike, Overlaps, as_instance_pair, pairwise_overlaps

KAGGLE_THRESHOLDS: tuple[Fraction, ...] = tuple(Fraction(p, 100) for p in range(50, 100, 5))


def as_fractions(thresholds: Iterable[float | Fraction]) -> tuple[Fraction, ...]:
    """Exact fractions of decimal thresholds (0.75 -> 3/4, not the nearest binary float)."""
    out = []
    for t in thresholds:
        f = t if isinstance(t, Fraction) else Fraction(str(t))
        if not 0 <= f <= 1:
            raise ValueError(f"IoU threshold {t} outside [0, 1]")
        out.append(f)
    return tuple(out)


def iou_above(inter: np.ndarray, union: np.ndarray, t: Fraction, strict: bool = True) -> np.ndarray:
    """``inter / union > t`` (or ``>=``) decided on integers."""
    lhs = inter * t.denominator
    rhs = union * t.numerator
    return lhs > rhs if strict else lhs >= rhs


def _matching_size(ia: np.ndarray, ib: np.ndarray) -> int:
    """Size of a maximum one-to-one matching in the bipartite graph with edges (ia, ib)."""
    if len(ia) == 0:
        return 0
    ua, ia_c = np.unique(ia, return_inverse=True)
    ub, ib_c = np.unique(ib, return_inverse=True)
    if len(ua) == len(ia) and len(ub) == len(ib):
        return len(ia)  # every node has one edge: the edges are the matching
    graph = csr_matrix((np.ones(len(ia), np.int8), (ia_c, ib_c)), shape=(len(ua), len(ub)))
    return int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())


def true_positives(
    ov: Overlaps, thresholds: Sequence[Fraction] = KAGGLE_THRESHOLDS, strict: bool = True
) -> np.ndarray:
    """(T,) number of one-to-one matches at each threshold.

    Why one-to-one needs care: for IoU > 0.5 a prediction P can pass with at most one
    ground-truth object G when the G do not overlap (IoU(P, G) > 1/2 needs
    |P & G| > |P| / 2, and two disjoint G cannot both hold more than half of P); the same
    holds the other way round. With both sets free of overlaps the candidate pairs
    therefore already form a matching and counting them is exact (Kaggle's own scorer
    relies on it). Overlapping masks (Sartorius training annotations, raw model outputs)
    or thresholds below 0.5 break that: a duplicate prediction would be counted twice. So
    the candidates are checked, and whenever a node has two of them, the size of a
    maximum one-to-one matching (Hopcroft-Karp) is taken: the best any one-to-one
    assignment can do, as stardist's ``matching`` does.
    """
    if len(ov.inter) == 0:
        return np.zeros(len(thresholds), dtype=np.int64)
    union = ov.union
    loosest = min(thresholds)
    cand = iou_above(ov.inter, union, loosest, strict)
    ia, ib, inter, union = ov.ia[cand], ov.ib[cand], ov.inter[cand], union[cand]
    unique = len(np.unique(ia)) == len(ia) and len(np.unique(ib)) == len(ib)
    tp = np.empty(len(thresholds), dtype=np.int64)
    for k, t in enumerate(thresholds):
        ok = iou_above(inter, union, t, strict)
        # A subset of a matching is a matching: the unique case needs no graph search.
        tp[k] = int(ok.sum()) if unique else _matching_size(ia[ok], ib[ok])
    return tp


@dataclass
class MatchCounts:
    """TP per threshold and the object counts of one image."""

    n_gt: int
    n_pred: int
    tp: np.ndarray
    thresholds: tuple[Fraction, ...] = KAGGLE_THRESHOLDS

    @property
    def fp(self) -> np.ndarray:
        return self.n_pred - self.tp

    @property
    def fn(self) -> np.ndarray:
        return self.n_gt - self.tp

    def precision(self) -> np.ndarray:
        """(T,) TP / (TP + FP + FN); 1.0 when the image has neither objects nor predictions."""
        denom = self.tp + self.fp + self.fn
        if self.n_gt == 0 and self.n_pred == 0:
            return np.ones(len(self.thresholds))
        return self.tp / denom

    def score(self) -> float:
        return float(self.precision().mean())


def match_counts(
    gt: InstancesLike,
    pred: InstancesLike,
    *,
    thresholds: Iterable[float | Fraction] = KAGGLE_THRESHOLDS,
    strict: bool = True,
) -> MatchCounts:
    """Match the instances of one image; any ``matching.as_instances`` input on each side."""
    g, p = as_instance_pair(gt, pred)
    th = as_fractions(thresholds)
    tp = true_positives(pairwise_overlaps(g, p), th, strict)
    return MatchCounts(len(g), len(p), tp, th)


def map_iou_per_threshold(
    gt: InstancesLike,
    pred: InstancesLike,
    *,
    thresholds: Iterable[float | Fraction] = KAGGLE_THRESHOLDS,
    strict: bool = True,
) -> np.ndarray:
    """(T,) float64 precision TP / (TP + FP + FN) of one image at each threshold."""
    return match_counts(gt, pred, thresholds=thresholds, strict=strict).precision()


def map_iou_image(
    gt: InstancesLike,
    pred: InstancesLike,
    *,
    thresholds: Iterable[float | Fraction] = KAGGLE_THRESHOLDS,
    strict: bool = True,
) -> float:
    """MaP-IoU of one image (mean precision over the thresholds); see the module docstring
    for the empty-image convention."""
    return match_counts(gt, pred, thresholds=thresholds, strict=strict).score()


def summarize_counts(
    counts: Mapping[str, MatchCounts], groups: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Dataset MaP-IoU from per-image ``MatchCounts`` (see ``map_iou_dataset``)."""

    def _summary(ids: Sequence[str]) -> dict[str, Any]:
        if not ids:
            return {"mean": float("nan"), "per_threshold": [], "n_images": 0}
        prec = np.stack([counts[i].precision() for i in ids])
        return {
            "mean": float(prec.mean(axis=1).mean()),
            "per_threshold": prec.mean(axis=0).tolist(),
            "n_images": len(ids),
        }

    ids = list(counts)
    out = _summary(ids)
    out["thresholds"] = [float(t) for t in next(iter(counts.values())).thresholds] if ids else []
    out["per_image"] = {i: counts[i].score() for i in ids}
    out["groups"] = {}
    if groups is not None:
        by_group: dict[str, list[str]] = {}
        for i in ids:
            by_group.setdefault(str(groups.get(i, "unknown")), []).append(i)
        out["groups"] = {g: _summary(v) for g, v in sorted(by_group.items())}
    return out


def map_iou_dataset(
    pairs: Iterable[tuple[str, InstancesLike, InstancesLike]]
    | Mapping[str, tuple[InstancesLike, InstancesLike]],
    *,
    groups: Mapping[str, str] | None = None,
    thresholds: Iterable[float | Fraction] = KAGGLE_THRESHOLDS,
    strict: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """MaP-IoU of a dataset: the mean over images of the image scores.

    Args:
        pairs: ``(image_id, gt, pred)`` triples, or a mapping ``image_id -> (gt, pred)``.
        groups: optional ``image_id -> group`` (cell type, modality) for a breakdown;
            images missing from it fall in group ``"unknown"``.

    Returns:
        ``{"mean": float, "per_threshold": [T floats], "n_images": int, "thresholds":
        [T floats], "per_image": {image_id: score}, "counts": {image_id: MatchCounts},
        "groups": {group: {"mean", "per_threshold", "n_images"}}}``. ``mean`` is NaN for
        an empty dataset.
    """
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    counts: dict[str, MatchCounts] = {}
    th = as_fractions(thresholds)
    for item in tqdm(items, desc="MaP-IoU", disable=not progress):
        if isinstance(pairs, Mapping):
            image_id, (gt, pred) = item
        else:
            image_id, gt, pred = item
        if image_id in counts:
            raise ValueError(f"image id {image_id!r} appears twice")
        counts[image_id] = match_counts(gt, pred, thresholds=th, strict=strict)
    out = summarize_counts(counts, groups)
    out["counts"] = counts
    return out

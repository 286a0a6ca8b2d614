"""Counting error: how many objects a model finds compared with the ground truth.

Per image: ``error = n_pred - n_gt`` (signed: positive = over-counting), ``abs_error``
and ``rel_error = |n_pred - n_gt| / n_gt`` (NaN when the image has no ground-truth object:
a relative error of nothing is undefined). Dataset: mean signed error (ME), mean absolute
error (MAE) and mean relative error over the images that have ground truth (MRE).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from nucdet.evaluation.matching import InstancesLike, as_instances


def _count(x: int | InstancesLike) -> int:
    if isinstance(x, (int, np.integer)):
        if x < 0:
            raise ValueError(f"object count {x} < 0")
        return int(x)
    if isinstance(x, (list, tuple)):
        return len(x)
    return len(as_instances(x))


def count_error(gt: int | InstancesLike, pred: int | InstancesLike) -> dict[str, float]:
    """``{"n_gt", "n_pred", "error", "abs_error", "rel_error"}`` of one image; each side is
    a count or any instance container."""
    n_gt, n_pred = _count(gt), _count(pred)
    err = n_pred - n_gt
    return {
        "n_gt": n_gt,
        "n_pred": n_pred,
        "error": err,
        "abs_error": abs(err),
        "rel_error": abs(err) / n_gt if n_gt else float("nan"),
    }


def count_dataset(
    items: Iterable[tuple[str, int | InstancesLike, int | InstancesLike]],
) -> dict[str, Any]:
    """``{"ME", "MAE", "MRE", "n_gt", "n_pred", "n_images", "per_image"}`` over
    ``(image_id, gt, pred)`` triples."""
    per_image = {i: count_error(g, p) for i, g, p in items}
    rows = list(per_image.values())
    rel = [r["rel_error"] for r in rows if r["n_gt"]]
    nan = float("nan")
    return {
        "ME": float(np.mean([r["error"] for r in rows])) if rows else nan,
        "MAE": float(np.mean([r["abs_error"] for r in rows])) if rows else nan,
        "MRE": float(np.mean(rel)) if rel else nan,
        "n_gt": sum(r["n_gt"] for r in rows),
        "n_pred": sum(r["n_pred"] for r in rows),
        "n_images": len(rows),
        "per_image": per_image,
    }

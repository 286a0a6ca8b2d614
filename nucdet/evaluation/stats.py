"""Statistics for comparing two methods scored on the same images.

``paired_difference``: the mean per-image difference ``a - b`` of two per-image scores
(e.g. MaP-IoU of a model and of the watershed baseline), with a 95% paired bootstrap
interval: the images are resampled with replacement (``n_boot`` times, fixed seed), so
the interval reflects how much the comparison depends on which images were picked.
Pairing by image removes the image-to-image spread that both methods share.

Plain numpy on ``{image_id: score}`` dicts; what the scores are is the caller's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def paired_difference(
    per_a: Mapping[str, float], per_b: Mapping[str, float], n_boot: int = 10000, seed: int = 0
) -> dict[str, Any]:
    """Mean per-image difference ``a - b`` over the images both score, with a 95% paired
    bootstrap interval and the number of images where ``a`` is better / worse.

    Returns ``{"mean", "ci95": [lo, hi], "better", "worse", "n"}`` (ties are neither
    better nor worse). No image in common is an error.
    """
    ids = sorted(set(per_a) & set(per_b))
    if not ids:
        raise ValueError(
            f"paired_difference: no image scored by both ({len(per_a)} and {len(per_b)} images)"
        )
    d = np.array([per_a[i] - per_b[i] for i in ids], np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(d.mean()), "ci95": [float(lo), float(hi)],
            "better": int((d > 0).sum()), "worse": int((d < 0).sum()), "n": len(d)}  # fmt: skip

"""Speed of Kaggle MaP-IoU on one 520x704 image with ~800 cells, side by side.

    .venv/bin/python benchmarks/bench_mapiou.py [--repeats 20] [--seed 0] [--skip-dense]

Compared in one run, on the same synthetic ground truth and perturbed prediction:

- nucdet, label images in (``map_iou_image(gt_label, pred_label)``): bincount path;
- nucdet, COCO RLE lists in (the ``NucleiEvaluator`` / submission path);
- pycocotools: ``mask.iou`` on the same RLEs (float IoU matrix), then IoU > t counting;
- dense reference: one-hot float32 (H*W x N) matrices, intersections by a matrix
  product (done in pixel chunks to bound memory; the flops are those of the full
  product), as the slow seeds did.

All four must give the same score; times are the best of ``--repeats`` runs (the dense
reference runs once) and ratios are relative to nucdet on label images.

A second table takes overlapping predictions (every predicted cell dilated by 2 px, as
raw model outputs are): nucdet vs pycocotools IoU followed by a maximum one-to-one
matching (plain IoU > t counting is no longer exact there), plus nucdet with overlaps on
both sides.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
from pycocotools import mask as mask_utils
from scipy.ndimage import binary_dilation
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from nucdet.evaluation.mapiou import map_iou_image
from nucdet.evaluation.matching import from_label_image, from_rles

H, W = 520, 704
THRESHOLDS = np.arange(0.5, 1.0, 0.05)


def _ellipse(label: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float, v: int):
    r = int(np.ceil(max(ry, rx))) + 1
    y0, y1 = max(0, int(cy) - r), min(H, int(cy) + r + 1)
    x0, x1 = max(0, int(cx) - r), min(W, int(cx) + r + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    c, s = np.cos(angle), np.sin(angle)
    u = ((yy - cy) * c + (xx - cx) * s) / ry
    w = (-(yy - cy) * s + (xx - cx) * c) / rx
    label[y0:y1, x0:x1][u * u + w * w <= 1] = v


def synthetic_pair(
    seed: int = 0, n_rows: int = 25, n_cols: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """GT label image with ~800 touching ellipses and a prediction that shifts, rescales,
    drops (5%) and invents (3%) cells."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((H, W), np.int32)
    pred = np.zeros((H, W), np.int32)
    dy, dx = H / n_rows, W / n_cols
    k = p = 0
    for i in range(n_rows):
        for j in range(n_cols):
            cy, cx = (i + 0.5) * dy + rng.uniform(-3, 3), (j + 0.5) * dx + rng.uniform(-3, 3)
            ry, rx, a = rng.uniform(6, 11), rng.uniform(6, 11), rng.uniform(0, np.pi)
            k += 1
            _ellipse(gt, cy, cx, ry, rx, a, k)
            if rng.random() < 0.05:
                continue
            p += 1
            sy, sx = rng.normal(0, 1.2, 2)
            f = rng.uniform(0.85, 1.15)
            _ellipse(pred, cy + sy, cx + sx, ry * f, rx * f, a + rng.normal(0, 0.2), p)
    for _ in range(int(0.03 * n_rows * n_cols)):
        p += 1
        _ellipse(pred, rng.uniform(0, H), rng.uniform(0, W), 5, 5, 0.0, p)
    return _relabel(gt), _relabel(pred)


def _relabel(lab: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..n (painting order can hide whole cells)."""
    ids = np.unique(lab)
    lut = np.zeros(lab.max() + 1, np.int32)
    lut[ids] = np.arange(len(ids))
    return lut[lab]


def to_rles(lab: np.ndarray) -> list[dict]:
    n = int(lab.max())
    stack = np.zeros((H, W, n), np.uint8, order="F")
    for k in range(n):
        stack[:, :, k] = lab == k + 1
    rles = mask_utils.encode(stack)
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def _score_from_iou(iou: np.ndarray, n_gt: int, n_pred: int) -> float:
    """IoU > t counting (exact for non-overlapping sets, see nucdet.evaluation.mapiou)."""
    out = []
    for t in THRESHOLDS:
        tp = int((iou > t).sum())
        out.append(tp / (n_gt + n_pred - tp))
    return float(np.mean(out))


def pycocotools_score(gt_rles: list[dict], pred_rles: list[dict]) -> float:
    iou = mask_utils.iou(pred_rles, gt_rles, [0] * len(gt_rles))
    return _score_from_iou(np.asarray(iou), len(gt_rles), len(pred_rles))


def pycocotools_matching_score(gt_rles: list[dict], pred_rles: list[dict]) -> float:
    """pycocotools IoU, then a maximum one-to-one matching per threshold (needed once
    predictions overlap: one GT may pass with two predictions)."""
    iou = np.asarray(mask_utils.iou(pred_rles, gt_rles, [0] * len(gt_rles)))
    out = []
    for t in THRESHOLDS:
        graph = csr_matrix(iou > t)
        tp = int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())
        out.append(tp / (len(gt_rles) + len(pred_rles) - tp))
    return float(np.mean(out))


def dilate_rles(lab: np.ndarray, px: int = 2) -> list[dict]:
    """Every instance dilated by ``px`` pixels: neighbours now overlap (raw model output)."""
    n = int(lab.max())
    stack = np.zeros((H, W, n), np.uint8, order="F")
    for k in range(n):
        stack[:, :, k] = binary_dilation(lab == k + 1, iterations=px)
    rles = mask_utils.encode(stack)
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def dense_score(gt: np.ndarray, pred: np.ndarray, chunk: int = 1 << 16) -> float:
    """One-hot float32 (H*W x N) matrices and a matrix product, chunked over pixels."""
    ng, npred = int(gt.max()), int(pred.max())
    g, p = gt.ravel(), pred.ravel()
    inter = np.zeros((ng, npred), np.float32)
    eye_g, eye_p = np.arange(1, ng + 1), np.arange(1, npred + 1)
    for s in range(0, g.size, chunk):
        a = (g[s : s + chunk, None] == eye_g).astype(np.float32)
        b = (p[s : s + chunk, None] == eye_p).astype(np.float32)
        inter += a.T @ b
    area_g = np.bincount(g, minlength=ng + 1)[1:].astype(np.float32)
    area_p = np.bincount(p, minlength=npred + 1)[1:].astype(np.float32)
    iou = inter / (area_g[:, None] + area_p[None, :] - inter)
    return _score_from_iou(iou, ng, npred)


def best_time(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    value, times = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return min(times), value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-dense", action="store_true", help="leave out the slow reference")
    args = ap.parse_args()

    gt, pred = synthetic_pair(args.seed)
    gt_rles, pred_rles = to_rles(gt), to_rles(pred)
    n_gt, n_pred = int(gt.max()), int(pred.max())
    assert not from_label_image(gt).overlapping
    runs = [
        ("nucdet, label images", lambda: map_iou_image(gt, pred), args.repeats),
        ("nucdet, COCO RLE lists", lambda: map_iou_image(gt_rles, pred_rles), args.repeats),
        (
            "pycocotools mask.iou + counting",
            lambda: pycocotools_score(gt_rles, pred_rles),
            args.repeats,
        ),
    ]
    if not args.skip_dense:
        runs.append(("dense float32 one-hot matmul", lambda: dense_score(gt, pred), 1))

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"image {H}x{W}: {n_gt} GT cells, {n_pred} predicted; python "
        f"{platform.python_version()}, numpy {np.__version__}; {os.cpu_count()} CPUs, "
        f"load average {load}"
    )
    _table(runs)

    # Raw model outputs overlap: the same GT against every predicted cell dilated by 2 px.
    over = dilate_rles(pred)
    print(
        f"\noverlapping predictions (each predicted cell dilated by 2 px, up to "
        f"{int(from_rles(over, H, W).coverage().max())} masks on a pixel):"
    )
    _table(
        [
            ("nucdet, COCO RLE lists", lambda: map_iou_image(gt_rles, over), args.repeats),
            ("nucdet, both sets overlapping", lambda: map_iou_image(over, over), args.repeats),
            (
                "pycocotools mask.iou + max matching",
                lambda: pycocotools_matching_score(gt_rles, over),
                args.repeats,
            ),
        ]
    )


def _table(runs: list[tuple[str, Callable[[], float], int]]) -> None:
    results = []
    for name, fn, reps in runs:
        t, value = best_time(fn, reps)
        results.append((name, t, value, reps))
    base_t, base_v = results[0][1], results[0][2]
    print(f"| method | MaP-IoU | time (ms) | x {results[0][0]} | runs |")
    print("|---|---|---|---|---|")
    for name, t, value, reps in results:
        if "both sets" not in name:  # that row scores a different pair
            assert abs(value - base_v) < 1e-9, f"{name} gives {value}, nucdet {base_v}"
        print(f"| {name} | {value:.6f} | {t * 1e3:.2f} | {t / base_t:.2f} | best of {reps} |")


if __name__ == "__main__":
    main()

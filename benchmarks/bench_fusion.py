"""Speed of ensemble + TTA fusion on one 520x704 image: 2 models x 4 views x ~500 cells.

    .venv/bin/python benchmarks/bench_fusion.py [--repeats 10] [--seed 0] [--cells 500]

Synthetic input: ~500 elliptic cells; each of 2 "models" x 4 views (identity, hflip,
vflip, rot90) detects 95% of them with jittered boxes, soft 28x28 mask grids and a few
false positives, in the view's own frame (as a model run on the view image returns them).

Compared in one run, on the same input:

- nucdet: ``TTAView.invert`` of the 8 inputs + ``fuse(method="wbf_mask_vote")`` ->
  ``ImagePrediction`` with RLE masks (WBF clustering with membership, masks fused in
  cluster crops, crops encoded to RLE);
- full-image: the same inversion and the same WBF clusters, but every member pasted into
  its own full HxW float32 array, the arrays of a cluster averaged with the same weights,
  thresholded and encoded with ``mask_to_coco_rle`` (the way the seeds handled masks);
- the box part alone through ``ensemble_boxes.weighted_boxes_fusion`` (the library has
  no membership; shown for its speed).

The nucdet and full-image outputs must be identical (RLE for RLE). Times: best and
median of ``--repeats`` runs (the full-image path runs ``--full-repeats`` times).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from ensemble_boxes import weighted_boxes_fusion

from nucdet.inference.fusion import fuse
from nucdet.inference.masks import paste_extent, paste_grids
from nucdet.inference.tta import build_view
from nucdet.inference.wbf import wbf_clusters
from nucdet.io.rle import mask_to_coco_rle
from nucdet.structures import ImagePrediction, RawDetections

H, W = 520, 704
M = 28
VIEWS = ["identity", "hflip", "vflip", "rot90"]
INVERSE = {"identity": "identity", "hflip": "hflip", "vflip": "vflip", "rot90": "rot270"}


def synthetic_cells(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 5) ellipses (cy, cx, ry, rx, angle) on a jittered lattice filling the image."""
    rows = int(round(np.sqrt(n * H / W)))
    cols = int(np.ceil(n / rows))
    cy, cx = np.mgrid[0:rows, 0:cols]
    cy = (cy.ravel()[:n] + 0.5) * H / rows + rng.uniform(-3, 3, n)
    cx = (cx.ravel()[:n] + 0.5) * W / cols + rng.uniform(-3, 3, n)
    ry = rng.uniform(6, 11, n)
    rx = rng.uniform(6, 11, n)
    return np.stack([cy, cx, ry, rx, rng.uniform(0, np.pi, n)], axis=1)


def detections(rng: np.random.Generator, cells: np.ndarray, model_bias: float) -> RawDetections:
    """One model's detections in the original frame: jittered boxes, soft grids, FPs."""
    keep = rng.random(len(cells)) < 0.95
    c = cells[keep]
    cy, cx, ry, rx, a = c.T
    # Tight box of the rotated ellipse, jittered.
    hy = np.sqrt((ry * np.cos(a)) ** 2 + (rx * np.sin(a)) ** 2)
    hx = np.sqrt((ry * np.sin(a)) ** 2 + (rx * np.cos(a)) ** 2)
    boxes = np.stack([cx - hx, cy - hy, cx + hx, cy + hy], axis=1)
    boxes += rng.normal(model_bias, 0.8, boxes.shape)
    n_fp = int(0.03 * len(cells))
    fx, fy = rng.uniform(0, W - 20, n_fp), rng.uniform(0, H - 20, n_fp)
    fp = np.stack([fx, fy, fx + rng.uniform(5, 20, n_fp), fy + rng.uniform(5, 20, n_fp)], 1)
    boxes = np.concatenate([boxes, fp])
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, W)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, H)
    # Grid value = ellipse membership of each grid cell centre (sigmoid of the distance).
    t = (np.arange(M) + 0.5) / M
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    gx = boxes[:, 0, None] + t[None] * bw[:, None]  # (n, M) x of grid columns
    gy = boxes[:, 1, None] + t[None] * bh[:, None]
    ccy = np.concatenate([cy, fy + 10])
    ccx = np.concatenate([cx, fx + 10])
    cry = np.concatenate([ry, np.full(n_fp, 6.0)])
    crx = np.concatenate([rx, np.full(n_fp, 6.0)])
    ca = np.concatenate([a, np.zeros(n_fp)])
    dy = gy[:, :, None] - ccy[:, None, None]
    dx = gx[:, None, :] - ccx[:, None, None]
    cos, sin = np.cos(ca)[:, None, None], np.sin(ca)[:, None, None]
    u = (dy * cos + dx * sin) / cry[:, None, None]
    v = (-dy * sin + dx * cos) / crx[:, None, None]
    d = np.sqrt(u * u + v * v)
    grids = 1 / (1 + np.exp((d - 1) * 8)) + rng.normal(0, 0.05, d.shape)
    scores = np.concatenate([rng.uniform(0.5, 1.0, len(c)), rng.uniform(0.05, 0.4, n_fp)])
    classes = np.zeros(len(boxes), np.int64)
    return RawDetections(boxes, scores, classes, np.clip(grids, 0, 1), H, W)


def view_inputs(seed: int, n_cells: int) -> list[tuple[str, RawDetections]]:
    """The 8 inputs in their views' frames, as (view name, detections)."""
    rng = np.random.default_rng(seed)
    cells = synthetic_cells(rng, n_cells)
    out = []
    for model in range(2):
        for name in VIEWS:
            raw = detections(rng, cells, model_bias=0.3 * model)
            # Original frame -> view frame: the inverse view's invert() does the forward map.
            out.append((name, build_view(INVERSE[name]).invert(raw)))
    return out


def nucdet_fusion(inputs, weights):
    raws = [build_view(name).invert(raw, (H, W)) for name, raw in inputs]
    return fuse(raws, weights, image_id="bench").prediction


def full_image_fusion(inputs, weights, mask_thresh: float = 0.5):
    """Same clusters; every member as a full HxW float32 array, averaged per cluster."""
    raws = [build_view(name).invert(raw, (H, W)) for name, raw in inputs]
    norm = [r.boxes.astype(np.float64) / [W, H, W, H] for r in raws]
    cl = wbf_clusters(norm, [r.scores for r in raws], [r.classes for r in raws], weights)
    rles = []
    for mem in cl.members:
        acc = []
        ws = []
        for t, j in mem.tolist():
            r = raws[t]
            crop = paste_grids(r.mask_probs[j : j + 1], r.boxes[j : j + 1], H, W)
            full = np.zeros((H, W), np.float32)
            x0, y0, x1, y1 = crop.boxes[0]
            full[y0:y1, x0:x1] = crop.crops[0]
            acc.append(full)
            ws.append(float(r.scores[j]) * weights[t])
        w = np.asarray(ws) / np.sum(ws)
        mean = np.zeros((H, W), np.float32)
        for a, wk in zip(acc, w.astype(np.float32)):
            mean += wk * a
        rles.append(mask_to_coco_rle(mean >= np.float32(mask_thresh)))
    return ImagePrediction("bench", H, W, rles, cl.scores, cl.labels)


def library_boxes(inputs, weights):
    raws = [build_view(name).invert(raw, (H, W)) for name, raw in inputs]
    return weighted_boxes_fusion(
        [r.boxes.astype(np.float64) / [W, H, W, H] for r in raws],
        [r.scores for r in raws],
        [r.classes for r in raws],
        weights=weights,
        conf_type="box_and_model_avg",
    )


def timed(fn, repeats: int):
    times = []
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times), float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--full-repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cells", type=int, default=500)
    args = ap.parse_args()

    inputs = view_inputs(args.seed, args.cells)
    weights = np.array([1.0] * 4 + [0.8] * 4)
    n_det = sum(len(r) for _, r in inputs)

    t = time.perf_counter()
    nucdet_fusion(inputs, weights)  # numba: load (or compile) the kernels once
    first = time.perf_counter() - t

    # Stage breakdown of the nucdet path.
    raws = [build_view(name).invert(raw, (H, W)) for name, raw in inputs]
    _, inv_best, _ = timed(
        lambda: [build_view(n).invert(r, (H, W)) for n, r in inputs], args.repeats
    )
    norm = [r.boxes.astype(np.float64) / [W, H, W, H] for r in raws]
    _, wbf_best, _ = timed(
        lambda: wbf_clusters(norm, [r.scores for r in raws], [r.classes for r in raws], weights),
        args.repeats,
    )
    ours, ours_best, ours_med = timed(lambda: nucdet_fusion(inputs, weights), args.repeats)
    full, full_best, full_med = timed(lambda: full_image_fusion(inputs, weights), args.full_repeats)
    lib, lib_best, lib_med = timed(lambda: library_boxes(inputs, weights), 3)

    same = ours.rles == full.rles and np.array_equal(ours.scores, full.scores)
    same_boxes = len(lib[0]) == len(ours)
    areas = ours.areas()
    ext = paste_extent(np.concatenate([r.boxes for r in raws]), H, W)
    crop_px = int(((ext[:, 2] - ext[:, 0]) * (ext[:, 3] - ext[:, 1])).sum())

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"numpy {np.__version__}"
    )
    print(
        f"input: 2 models x 4 views ({', '.join(VIEWS)}), {n_det} detections, "
        f"{args.cells} cells, {H}x{W}; {len(ours)} fused instances (median area "
        f"{int(np.median(areas))} px); member crops {crop_px / 1e6:.2f} Mpx"
    )
    print(
        f"outputs identical (nucdet vs full-image): {same}; "
        f"same instance count as ensemble_boxes: {same_boxes}"
    )
    print(f"first call (numba kernels loaded/compiled): {first * 1000:.0f} ms\n")
    print("| implementation | best ms / image | median ms | x nucdet (best) |")
    print("|---|---:|---:|---:|")
    rows = [
        ("nucdet: invert 8 views + wbf_mask_vote -> RLE", ours_best, ours_med),
        ("  of which: invert 8 views", inv_best, None),
        ("  of which: WBF clusters with membership", wbf_best, None),
        ("full-image masks (same clusters), HxW float per member", full_best, full_med),
        ("ensemble_boxes.weighted_boxes_fusion, boxes only", lib_best, lib_med),
    ]
    for name, best, med in rows:
        med_s = f"{med * 1000:.1f}" if med is not None else ""
        ratio = f"{best / ours_best:.1f}" if med is not None else ""
        print(f"| {name} | {best * 1000:.1f} | {med_s} | {ratio} |")


if __name__ == "__main__":
    main()

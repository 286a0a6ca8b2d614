"""Synthetic instances for the inference tests: masks with exactly known geometry.

``block_instances`` draws square-boxed instances made of 2x2 pixel blocks at even
positions, so that every flip, quarter turn and the scales 2 and 1/2 map them to pixel
grids exactly; ``raw_from_masks`` turns masks into ``RawDetections`` whose box-relative
grid is the mask's crop at its integer box (grid size = box size), which pastes back
pixel-exactly.
"""

from __future__ import annotations

import numpy as np

from nucdet.structures import RawDetections


def block_instances(
    rng: np.random.Generator, height: int, width: int, n: int, box: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` non-overlapping instances: (n, H, W) bool masks and their (n, 4) int boxes.

    Every box is ``box x box`` with even corners; the mask inside is a random pattern of
    2x2 blocks that touches all four box edges (so the box is the tight box).
    """
    assert height % 2 == 0 and width % 2 == 0 and box % 2 == 0
    slot = box + 4  # a 2-pixel margin each side, so instances never touch
    rows, cols = (height - 2) // slot, (width - 2) // slot
    if n > rows * cols:
        raise ValueError(f"{n} instances of {box}px do not fit in {height}x{width}")
    masks = np.zeros((n, height, width), bool)
    boxes = np.zeros((n, 4), np.int64)
    for k, s in enumerate(rng.choice(rows * cols, n, replace=False)):
        y0 = 2 + (s // cols) * slot + 2 * rng.integers(0, 2)
        x0 = 2 + (s % cols) * slot + 2 * rng.integers(0, 2)
        b = box // 2
        pat = rng.random((b, b)) < 0.6
        pat[0, rng.integers(b)] = pat[-1, rng.integers(b)] = True
        pat[rng.integers(b), 0] = pat[rng.integers(b), -1] = True
        masks[k, y0 : y0 + box, x0 : x0 + box] = np.kron(pat, np.ones((2, 2), bool))
        boxes[k] = [x0, y0, x0 + box, y0 + box]
    return masks, boxes


def tight_box(mask: np.ndarray) -> np.ndarray:
    """Integer half-open tight box [x0, y0, x1, y1] of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.int64)


def raw_from_masks(
    masks: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray | None = None,
    classes: np.ndarray | None = None,
) -> RawDetections:
    """Detections whose grid is the mask crop at its (square, same-size) integer box."""
    n, h, w = masks.shape
    boxes = np.asarray(boxes, np.int64)
    side = boxes[:, 2] - boxes[:, 0]
    assert (side == boxes[:, 3] - boxes[:, 1]).all() and (side == side[0]).all()
    grids = (
        np.stack([m[y0:y1, x0:x1] for m, (x0, y0, x1, y1) in zip(masks, boxes)]).astype(np.float32)
        if n
        else np.zeros((0, 1, 1), np.float32)
    )
    return RawDetections(
        boxes.astype(np.float32),
        np.linspace(0.9, 0.5, n) if scores is None else scores,
        np.zeros(n, np.int64) if classes is None else classes,
        grids,
        h,
        w,
    )


def soft_raw(rng: np.random.Generator, height: int, width: int, n: int, m: int = 28):
    """Random detections with float boxes anywhere in the image and smooth mask grids."""
    x0 = rng.uniform(0, width - 4, n)
    y0 = rng.uniform(0, height - 4, n)
    bw = rng.uniform(3, 30, n)
    bh = rng.uniform(3, 30, n)
    boxes = np.stack(
        [x0, y0, np.minimum(x0 + bw, width), np.minimum(y0 + bh, height)], axis=1
    ).astype(np.float32)
    yy, xx = np.mgrid[0:m, 0:m] / (m - 1)
    cy, cx = rng.uniform(0.3, 0.7, (2, n))
    r = rng.uniform(0.3, 0.5, n)
    d = np.hypot(yy[None] - cy[:, None, None], (xx[None] - cx[:, None, None]) * 1.3)
    grids = 1 / (1 + np.exp((d - r[:, None, None]) * 25))
    grids = grids * rng.uniform(0.8, 1.0, (n, m, m))  # asymmetric, so orientation matters
    return RawDetections(
        boxes,
        rng.uniform(0.05, 1, n),
        rng.integers(0, 2, n),
        grids.astype(np.float32),
        height,
        width,
    )


def lattice_raw(rng: np.random.Generator, height: int, width: int, step: int = 20, m: int = 28):
    """``soft_raw``-like detections on a lattice: boxes of one class never overlap."""
    ys, xs = np.mgrid[0 : height - step + 1 : step, 0 : width - step + 1 : step]
    n = ys.size
    x0 = xs.ravel() + rng.uniform(0.5, 3, n)
    y0 = ys.ravel() + rng.uniform(0.5, 3, n)
    boxes = np.stack(
        [x0, y0, x0 + rng.uniform(6, step - 4, n), y0 + rng.uniform(6, step - 4, n)], axis=1
    ).astype(np.float32)
    soft = soft_raw(rng, height, width, n, m)
    scores = rng.permutation(np.linspace(0.95, 0.1, n))  # distinct scores
    return RawDetections(boxes, scores, soft.classes, soft.mask_probs, height, width)

#!/usr/bin/env python
"""Classical nuclei baseline: Otsu threshold + distance-transform watershed (scikit-image).

The reference a trained model has to beat. For one image:

1. grey = mean of the colour channels, smoothed with a Gaussian (``sigma``, px);
2. Otsu threshold ``t``; foreground = ``grey > t``. **Polarity rule**: nuclei are a
   minority of the field of view, so when ``grey > t`` covers more than half of the image
   the nuclei are the DARK side (stained tissue, brightfield: dark nuclei on a bright
   background) and the foreground becomes ``grey <= t``;
3. holes filled, objects smaller than ``min_size`` px removed;
4. the typical nucleus radius ``r`` is estimated from the median area ``A`` of the
   connected components (``r = sqrt(A / pi)``); seeds are the maxima of the Euclidean
   distance transform (smoothed with sigma ``r / 4`` to merge plateaus) at least
   ``max(2, r * seed_spacing)`` px apart, one maximum per component at least;
5. watershed of the negative distance from the seeds inside the foreground; the label
   image (0 = background) is the prediction.

The defaults (``sigma`` 0.25, ``min_size`` 30, ``seed_spacing`` 0.5) were chosen on
TRAINING images with ``--tune 110 --dataset dsb2018_fold0_train`` (grid ``TUNE_GRID``), as
the model's test settings are: the baseline gets the same chance to fit the data.

Every image is scored with the Kaggle MaP-IoU (``nucdet.evaluation.mapiou``), overall and
per modality:

    NUCDET_DATASETS=/work/shared/data .venv/bin/python benchmarks/baseline_watershed.py \
        --dataset dsb2018_fold0_val [--output output/accuracy/baseline]

``--output`` writes ``baseline_metrics.json`` (overall, per modality, per image).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed
from tqdm import tqdm

logger = logging.getLogger(__name__)


# Defaults chosen with ``--tune 110 --dataset dsb2018_fold0_train`` (best of TUNE_GRID on
# training images: MaP-IoU 0.439 there, against 0.408 for the earlier sigma 1 / min_size 10)
SIGMA, MIN_SIZE, SEED_SPACING = 0.25, 30, 0.5


def foreground_mask(grey: np.ndarray, sigma: float = SIGMA) -> tuple[np.ndarray, bool]:
    """Otsu foreground of a grey image and whether it was inverted (dark nuclei).

    Returns ``(mask, inverted)``. A constant image has no foreground.
    """
    grey = np.asarray(grey, np.float64)
    if grey.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {grey.shape}")
    smooth = gaussian(grey, sigma=sigma, preserve_range=True) if sigma > 0 else grey
    if smooth.max() == smooth.min():
        return np.zeros(grey.shape, bool), False
    t = threshold_otsu(smooth)
    fg = smooth > t
    # Nuclei cover less than half of a field of view: a bright majority is background.
    inverted = bool(fg.mean() > 0.5)
    if inverted:
        fg = ~fg
    return fg, inverted


def watershed_instances(
    grey: np.ndarray,
    *,
    sigma: float = SIGMA,
    min_size: int = MIN_SIZE,
    seed_spacing: float = SEED_SPACING,
) -> np.ndarray:
    """Instance label image (int32, 0 = background) of a grey image; see module docstring."""
    return split_foreground(foreground_mask(grey, sigma)[0], min_size, seed_spacing)


def split_foreground(fg: np.ndarray, min_size: int, seed_spacing: float) -> np.ndarray:
    """Steps 3-5 of the module docstring on a foreground mask: instance label image."""
    fg = ndi.binary_fill_holes(fg)
    fg = remove_small_objects(fg, min_size=min_size)
    components, n = ndi.label(fg)
    if n == 0:
        return np.zeros(fg.shape, np.int32)
    areas = np.bincount(components.ravel())[1:]
    radius = float(np.sqrt(np.median(areas) / np.pi))
    dist = ndi.distance_transform_edt(fg)
    if radius >= 4:
        dist = ndi.gaussian_filter(dist, radius / 4)
    peaks = peak_local_max(
        dist,
        min_distance=max(2, int(round(radius * seed_spacing))),
        labels=components,
        num_peaks_per_label=np.inf,
        exclude_border=False,
    )
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # a component without a peak (e.g. flat after smoothing) still gets one seed
    seeded = np.unique(components[markers > 0])
    for lab in np.setdiff1d(np.arange(1, n + 1), seeded):
        ys, xs = np.nonzero(components == lab)
        k = int(np.argmax(dist[ys, xs]))
        markers[ys[k], xs[k]] = markers.max() + 1
    labels = watershed(-dist, markers, mask=fg)
    return labels.astype(np.int32)


def to_grey(image_bgr: np.ndarray) -> np.ndarray:
    """Channel mean of an HxWx3 image (grey images are read as three equal channels)."""
    return np.asarray(image_bgr, np.float64).mean(axis=2)


def _load(dataset: str, n_images: int | None = None):
    """``(gt, groups, greys)`` of a registered dataset, or of a stratified subset of
    ``n_images`` of it (``_common.stratified_subset``: every rare modality first)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from nucdet.data.imageio import read_image
    from nucdet.data.register import register_all
    from nucdet.evaluation.groundtruth import GtDataset

    register_all()
    dicts = DatasetCatalog.get(dataset)
    if n_images:
        from _common import stratified_subset

        dicts = stratified_subset(dicts, n_images)
    gt = GtDataset.from_dataset_dicts(
        dicts, list(MetadataCatalog.get(dataset).get("thing_classes", ["nucleus"])), source=dataset
    )
    _, groups = gt.groups("modality")
    greys = {im.image_id: to_grey(read_image(im.file_name)) for im in gt.images}
    return gt, groups, greys


def score_dataset(dataset: str, **params: Any) -> dict[str, Any]:
    """Baseline MaP-IoU on a registered dataset: overall, per modality and per image.
    ``params`` (``sigma``, ``min_size``, ``seed_spacing``) default to the module's tuned
    values; the effective ones are returned under ``"params"``."""
    from nucdet.evaluation.mapiou import map_iou_dataset

    params = {"sigma": SIGMA, "min_size": MIN_SIZE, "seed_spacing": SEED_SPACING, **params}
    gt, groups, greys = _load(dataset)
    inverted: dict[str, bool] = {}
    pairs = []
    t0 = time.perf_counter()
    for im in tqdm(gt.images, desc=f"watershed {dataset}"):
        fg, inverted[im.image_id] = foreground_mask(greys[im.image_id], params["sigma"])
        labels = split_foreground(fg, params["min_size"], params["seed_spacing"])
        pairs.append((im.image_id, im.instances(), labels))
    seconds = time.perf_counter() - t0
    res = map_iou_dataset(pairs, groups=groups)
    return {
        "dataset": dataset,
        "params": params,
        "MaP-IoU": res["mean"],
        "n_images": res["n_images"],
        "per_modality": {g: v["mean"] for g, v in res["groups"].items()},
        "n_per_modality": {g: v["n_images"] for g, v in res["groups"].items()},
        "inverted_per_modality": {
            g: sum(inverted[i] for i in inverted if groups.get(i) == g) for g in res["groups"]
        },
        "seconds": round(seconds, 1),
        "per_image": res["per_image"],
    }


TUNE_GRID = {
    "sigma": (0.0, 0.25, 0.5, 1.0, 2.0),
    "min_size": (10, 30, 60),
    "seed_spacing": (0.35, 0.5, 0.75),
}


def tune(dataset: str, n_images: int, grid: dict[str, tuple] = TUNE_GRID) -> list[dict[str, Any]]:
    """MaP-IoU of every parameter combination of ``grid`` on ``n_images`` (stratified) of
    ``dataset``, best first: the baseline's parameters are chosen on TRAINING images, as
    the model's test settings are."""
    import itertools

    from nucdet.evaluation.mapiou import map_iou_dataset

    gt, groups, greys = _load(dataset, n_images)
    rows = []
    combos = list(itertools.product(*grid.values()))
    for values in tqdm(combos, desc=f"tune watershed on {len(gt)} images of {dataset}"):
        params = dict(zip(grid, values))
        pairs = [
            (im.image_id, im.instances(), watershed_instances(greys[im.image_id], **params))
            for im in gt.images
        ]
        res = map_iou_dataset(pairs, groups=groups)
        per = {g: v["mean"] for g, v in res["groups"].items()}
        rows.append({**params, "MaP-IoU": res["mean"], **per})
    return sorted(rows, key=lambda r: -r["MaP-IoU"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dataset", default="dsb2018_fold0_val")
    ap.add_argument("--output", help="folder for baseline_metrics.json")
    ap.add_argument("--sigma", type=float, default=SIGMA)
    ap.add_argument("--min-size", type=int, default=MIN_SIZE)
    ap.add_argument("--seed-spacing", type=float, default=SEED_SPACING)
    ap.add_argument(
        "--tune", type=int, metavar="N",
        help="score the parameter grid on N stratified images of --dataset (use the training "
        "fold) and print it best first, instead of scoring one setting",
    )  # fmt: skip
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.tune:
        rows = tune(args.dataset, args.tune)
        for r in rows:
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in r.items()))  # fmt: skip
        if args.output:
            from nucdet.io.atomic import atomic_write_json

            Path(args.output).mkdir(parents=True, exist_ok=True)
            tuning = {"dataset": args.dataset, "n_images": args.tune, "rows": rows}
            atomic_write_json(Path(args.output) / "baseline_tuning.json", tuning)
        return {"rows": rows}
    out = score_dataset(
        args.dataset, sigma=args.sigma, min_size=args.min_size, seed_spacing=args.seed_spacing
    )
    summary = {k: v for k, v in out.items() if k != "per_image"}
    logger.info("baseline: %s", json.dumps(summary))
    if args.output:
        from nucdet.io.atomic import atomic_write_json

        Path(args.output).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.output) / "baseline_metrics.json", out)
    return out


if __name__ == "__main__":
    main()

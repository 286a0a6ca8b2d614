"""All nucdet metrics on one dataset: shared by ``NucleiEvaluator`` and the scoring CLI.

``evaluate_predictions`` takes a ``GtDataset`` and one ``ImagePrediction`` per evaluated
image and returns detectron2-style results plus per-image rows:

- ``segm``: ``MaP-IoU`` (fraction in [0, 1], as on the Kaggle leaderboard) and
  ``MaP-IoU-<group>`` per group; with "coco": ``AP, AP50, AP75, APs, APm, APl`` and
  ``AP-<class>`` in percent, detectron2's ``COCOEvaluator`` convention.
- ``bbox`` (with "coco"): the same COCO numbers on boxes. Predictions carry masks only,
  so boxes on both sides are the tight boxes of the masks.
- ``count``: ``MAE, ME, MRE, n_gt, n_pred`` (always: it costs nothing).
- ``voc`` (with "voc"): ``AP50``, mean of the image APs (fraction).
- ``glas`` (with "glas"): ``F1, ObjDice, ObjHausdorff`` pooled the challenge's way.

Which predictions each metric sees: COCO AP and VOC AP rank by score and take every
prediction (up to ``max_dets`` per image for COCO). MaP-IoU, GlaS and counting score a
final segmentation: predictions with ``score >= score_thresh``, then ``postprocess`` (for
example overlap removal) when given.

Images are scored one by one (``score_image``), on ``workers`` processes
(``nucdet.parallel.map_items``; the scores are the same for any number of workers).
"""

from __future__ import annotations

import csv
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from nucdet.evaluation.coco_ap import STAT_NAMES, coco_evaluate, prediction_to_results
from nucdet.evaluation.counting import count_error
from nucdet.evaluation.glas import GlasCounts, glas_counts
from nucdet.evaluation.groundtruth import GtDataset, GtImage
from nucdet.evaluation.mapiou import MatchCounts, match_counts, summarize_counts
from nucdet.evaluation.voc import voc_ap_image
from nucdet.io.atomic import atomic_open
from nucdet.parallel import map_items
from nucdet.structures import ImagePrediction

logger = logging.getLogger(__name__)

METRICS = ("map_iou", "coco", "voc", "glas", "count")

Postprocess = Callable[[ImagePrediction], ImagePrediction]


def check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    return tuple(metrics)


def _check_prediction(gt: GtDataset, pred: ImagePrediction) -> None:
    if pred.image_id not in gt.by_id:
        raise KeyError(f"prediction for unknown image id {pred.image_id!r}")
    im = gt.by_id[pred.image_id]
    if (pred.height, pred.width) != (im.height, im.width):
        raise ValueError(
            f"image {pred.image_id}: prediction size {pred.height}x{pred.width} != "
            f"ground-truth size {im.height}x{im.width} ({im.file_name})"
        )


def score_image(
    task: tuple[GtImage, ImagePrediction, str | None],
    *,
    metrics: Sequence[str],
    score_thresh: float = 0.0,
    postprocess: Postprocess | None = None,
    key: str | None = None,
) -> tuple[dict[str, Any], MatchCounts | None, GlasCounts | None]:
    """The per-image row (see ``evaluate_predictions``) of ``(gt image, prediction,
    group)``, with its MaP-IoU match counts and GlaS counts (None when not computed)."""
    im, pred, group = task
    gt_inst = im.instances()
    final = pred.select(pred.scores >= score_thresh)
    if postprocess is not None:
        final = postprocess(final)
    row: dict[str, Any] = {"image_id": im.image_id}
    if key is not None:
        row[key] = group
    row.update(count_error(len(gt_inst), len(final)))
    c = g = None
    if "map_iou" in metrics:
        c = match_counts(gt_inst, final)
        row["map_iou"] = c.score()
        for t, v in zip(c.thresholds, c.precision()):
            row[f"p@{float(t):.2f}"] = float(v)
    if "voc" in metrics:
        row["voc_ap50"] = voc_ap_image(gt_inst, pred)
    if "glas" in metrics:
        g = glas_counts(gt_inst, final)
        row.update({f"glas_{k}": v for k, v in g.as_dict().items()})
    return row, c, g


def evaluate_predictions(
    gt: GtDataset,
    predictions: Mapping[str, ImagePrediction],
    *,
    metrics: Sequence[str] = ("map_iou", "coco"),
    max_dets: int = 1000,
    score_thresh: float = 0.0,
    postprocess: Postprocess | None = None,
    group_key: str | None = "auto",
    progress: bool = False,
    workers: int | None = 0,
) -> tuple[OrderedDict[str, dict[str, float]], list[dict[str, Any]]]:
    """Score ``predictions`` (image_id -> ImagePrediction) on the images they cover.

    Returns ``(results, rows)``: results as described in the module docstring, and one
    dict per image (id, group, object counts, MaP-IoU and its per-threshold precision,
    counting error, and the VOC / GlaS values when computed), in dataset order.
    ``workers``: processes scoring images (0 = serial, the default: the trainer's
    evaluation shares the machine with training; None = every core). ``postprocess`` must
    then pickle (``postprocess_from_cfg``'s partial does).
    """
    metrics = check_metrics(metrics)
    for p in predictions.values():
        _check_prediction(gt, p)
    images = [im for im in gt.images if im.image_id in predictions]
    key, groups = gt.groups(group_key)

    score = partial(
        score_image,
        metrics=metrics,
        score_thresh=score_thresh,
        postprocess=postprocess,
        key=key,
    )
    tasks = [(im, predictions[im.image_id], groups.get(im.image_id, "")) for im in images]
    scored = map_items(score, tasks, workers, desc="evaluate" if progress else None)
    counts: dict[str, MatchCounts] = {}
    glas_total = GlasCounts()
    rows: list[dict[str, Any]] = []
    for im, (row, c, g) in zip(images, scored):
        if c is not None:
            counts[im.image_id] = c
        if g is not None:
            glas_total = glas_total + g
        rows.append(row)

    results: OrderedDict[str, dict[str, float]] = OrderedDict()
    segm: dict[str, float] = {}
    if "map_iou" in metrics:
        summary = summarize_counts(counts, groups if key is not None else None)
        segm["MaP-IoU"] = summary["mean"]
        for name, s in summary["groups"].items():
            segm[f"MaP-IoU-{name}"] = s["mean"]
    bbox: dict[str, float] = {}
    if "coco" in metrics:
        coco_gt = gt.to_coco()
        dets: list[dict[str, Any]] = []
        for im in images:
            dets += prediction_to_results(predictions[im.image_id], im.coco_id, gt.category_ids)
        ids = [im.coco_id for im in images]
        for iou_type, out in (("segm", segm), ("bbox", bbox)):
            stats = coco_evaluate(coco_gt, dets, iou_type=iou_type, max_dets=max_dets, img_ids=ids)
            out.update({k: 100 * stats[k] for k in STAT_NAMES})
            out.update({k: 100 * v for k, v in stats.items() if k.startswith("AP-")})
    if segm:
        results["segm"] = segm
    if bbox:
        results["bbox"] = bbox
    n = len(rows)
    results["count"] = {
        "MAE": float(np.mean([r["abs_error"] for r in rows])) if n else float("nan"),
        "ME": float(np.mean([r["error"] for r in rows])) if n else float("nan"),
        "MRE": float(np.nanmean([r["rel_error"] for r in rows]))
        if any(r["n_gt"] for r in rows)
        else float("nan"),
        "n_gt": float(sum(r["n_gt"] for r in rows)),
        "n_pred": float(sum(r["n_pred"] for r in rows)),
    }
    if "voc" in metrics:
        results["voc"] = {
            "AP50": float(np.mean([r["voc_ap50"] for r in rows])) if n else float("nan")
        }
    if "glas" in metrics:
        results["glas"] = glas_total.as_dict()
    return results, rows


def write_rows_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Per-image rows to CSV, atomically; columns in first-seen order."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

"""``NucleiEvaluator``: the detectron2 ``DatasetEvaluator`` that runs the nucdet metrics,
and ``build_evaluators``: the evaluators named by ``TEST.EVALUATORS``.

Used by the trainer's evaluation hook and by ``--eval-only``. ``process`` turns every
model output into a compact ``ImagePrediction`` (COCO RLE per instance), keyed by the
input's dataset ``image_id``; ``evaluate`` gathers them from all ranks, loads the ground
truth of the registered dataset (images named by ``nucdet.data.coco.image_keys``, so images
sharing a file stem are fine), writes ``coco_instances_results.json`` (dataset image and
category ids, as detectron2's ``COCOEvaluator`` does) and calls
``nucdet.evaluation.suite.evaluate_predictions`` (see there for the result keys:
``segm/MaP-IoU`` selects the best checkpoint).

``EVALUATORS`` names the choices: ``nuclei`` (this one) and ``coco`` (detectron2's stock
``COCOEvaluator`` with ``max_dets_per_image = TEST.EVAL_MAX_DETS``); several names give a
``MergedEvaluators``. With both, COCO AP comes from detectron2's evaluator only and the
nuclei one keeps MaP-IoU and the rest, so every result key has one source.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm
from pycocotools import mask as mask_utils

from nucdet.evaluation.coco_ap import prediction_to_results
from nucdet.evaluation.groundtruth import GtDataset
from nucdet.evaluation.suite import (
    Postprocess,
    check_metrics,
    evaluate_predictions,
    write_rows_csv,
)
from nucdet.io.atomic import atomic_write_json
from nucdet.structures import ImagePrediction

RESULTS_NAME = "coco_instances_results.json"  # detectron2's COCOEvaluator file name

logger = logging.getLogger(__name__)


def instances_to_prediction(instances: Any, image_id: str) -> ImagePrediction:
    """detectron2 ``Instances`` (full-image ``pred_masks``, ``scores``, ``pred_classes``)
    -> ``ImagePrediction`` with compressed RLE masks."""
    if not instances.has("pred_masks"):
        raise ValueError(f"image {image_id}: the model output has no pred_masks")
    instances = instances.to("cpu")
    masks = instances.pred_masks.numpy().astype(bool, copy=False)
    h, w = instances.image_size
    if masks.ndim != 3 or masks.shape[1:] != (h, w):
        raise ValueError(
            f"image {image_id}: pred_masks of shape {tuple(masks.shape)} are not full-image "
            f"masks of {h}x{w} (paste the mask-head output first)"
        )
    if len(masks):
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        for r in rles:
            r["counts"] = r["counts"].decode("ascii")
    else:
        rles = []
    return ImagePrediction(
        image_id,
        int(h),
        int(w),
        list(rles),
        instances.scores.numpy(),
        instances.pred_classes.numpy(),
    )


class NucleiEvaluator(DatasetEvaluator):
    """MaP-IoU, COCO AP (uncapped), counting and optionally VOC AP / GlaS on a dataset.

    Args:
        dataset_name: a dataset registered in ``DatasetCatalog`` whose dicts carry
            ``annotations`` (COCO RLE or polygon ``segmentation``, contiguous
            ``category_id``); ``MetadataCatalog`` gives ``thing_classes``. A ``modality``
            or ``cell_type`` key in the dicts adds a per-group breakdown.
        output_dir: if given, ``per_image_metrics.csv`` and (``write_results``)
            ``coco_instances_results.json`` are written there (atomically).
        max_dets: detections per image kept by COCO AP (pycocotools' default is 100).
        metrics: any of "map_iou", "coco", "voc", "glas" ("count" is always reported).
        score_thresh: MaP-IoU/GlaS/counting use predictions with score >= this.
        postprocess: optional ``ImagePrediction -> ImagePrediction`` applied after the
            score threshold for those metrics (COCO/VOC AP use all raw predictions).
        distributed: gather predictions from all ranks; only rank 0 returns results.
        write_results: write the COCO results file (off when detectron2's
            ``COCOEvaluator`` writes it into the same folder).
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        output_dir: str | None = None,
        max_dets: int = 1000,
        metrics: Sequence[str] = ("map_iou", "coco"),
        score_thresh: float = 0.0,
        postprocess: Postprocess | None = None,
        distributed: bool = True,
        write_results: bool = True,
    ) -> None:
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.max_dets = int(max_dets)
        self.metrics = check_metrics([m for m in metrics if m != "count"])
        self.score_thresh = float(score_thresh)
        self.postprocess = postprocess
        self.distributed = distributed
        self.write_results = write_results
        self._predictions: list[tuple[Any, ImagePrediction]] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            # Keyed by the dataset's image_id (the file stem is not unique in every dataset).
            key = inp["image_id"] if "image_id" in inp else Path(inp["file_name"]).stem
            self._predictions.append((key, instances_to_prediction(out["instances"], str(key))))

    def _gather(self) -> list[tuple[Any, ImagePrediction]] | None:
        if not self.distributed:
            return self._predictions
        comm.synchronize()
        gathered = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        return list(itertools.chain(*gathered))

    def evaluate(self) -> OrderedDict[str, dict[str, float]]:
        predictions = self._gather()
        if predictions is None:
            return OrderedDict()
        if not predictions:
            logger.warning("%s: NucleiEvaluator received no predictions", self.dataset_name)
            return OrderedDict()
        gt = GtDataset.from_registered(self.dataset_name)
        by_id: dict[str, ImagePrediction] = {}
        for key, p in predictions:
            im = gt.by_source_id.get(key) or gt.by_id.get(str(key))
            if im is None:
                raise KeyError(
                    f"{self.dataset_name}: a prediction for image_id {key!r}, which is not in "
                    "the dataset"
                )
            if im.image_id in by_id:
                raise ValueError(f"{self.dataset_name}: image {im.file_name} was evaluated twice")
            p.image_id = im.image_id
            by_id[im.image_id] = p
        missing = [im.image_id for im in gt.images if im.image_id not in by_id]
        if missing:
            logger.warning(
                "%s: %d of %d images have no prediction and are left out (e.g. %s)",
                self.dataset_name,
                len(missing),
                len(gt),
                missing[:3],
            )
        results, rows = evaluate_predictions(
            gt,
            by_id,
            metrics=self.metrics,
            max_dets=self.max_dets,
            score_thresh=self.score_thresh,
            postprocess=self.postprocess,
        )
        if self.output_dir:
            write_rows_csv(Path(self.output_dir) / "per_image_metrics.csv", rows)
            if self.write_results:
                dets: list[dict] = []
                for im in gt.images:
                    if im.image_id in by_id:
                        dets += prediction_to_results(
                            by_id[im.image_id], im.coco_id, gt.category_ids
                        )
                atomic_write_json(Path(self.output_dir) / RESULTS_NAME, dets)
        for task, values in results.items():
            logger.info(
                "%s %s: %s",
                self.dataset_name,
                task,
                ", ".join(f"{k}={v:.4f}" for k, v in values.items()),
            )
        return copy.deepcopy(results)


class MergedEvaluators(DatasetEvaluators):
    """``DatasetEvaluators`` whose results are merged per task (``segm`` of two evaluators
    becomes one dict); a metric reported twice is an error naming it."""

    def evaluate(self) -> OrderedDict[str, dict[str, float]]:
        results: OrderedDict[str, dict[str, float]] = OrderedDict()
        for evaluator in self._evaluators:
            for task, values in (evaluator.evaluate() or {}).items():
                merged = results.setdefault(task, {})
                clash = sorted(set(merged) & set(values))
                if clash:
                    raise ValueError(
                        f"two evaluators report {task}/{clash[0]}: select one (TEST.EVALUATORS)"
                    )
                merged.update(values)
        return results


def _nuclei(cfg: Any, dataset_name: str, output_dir: str | None, postprocess, names) -> Any:
    metrics = tuple(cfg.TEST.METRICS)
    if "coco" in names:  # COCO AP from detectron2's evaluator only (one source per key)
        metrics = tuple(m for m in metrics if m != "coco")
    return NucleiEvaluator(
        dataset_name,
        output_dir=output_dir,
        max_dets=cfg.TEST.EVAL_MAX_DETS,
        metrics=metrics,
        postprocess=postprocess,
        write_results="coco" not in names,
    )


def _coco(cfg: Any, dataset_name: str, output_dir: str | None, postprocess, names) -> Any:
    return COCOEvaluator(
        dataset_name,
        tasks=("bbox", "segm"),
        output_dir=output_dir,
        max_dets_per_image=cfg.TEST.EVAL_MAX_DETS,
    )


EVALUATORS = {"nuclei": _nuclei, "coco": _coco}


def build_evaluators(
    cfg: Any,
    dataset_name: str,
    output_dir: str | None = None,
    postprocess: Postprocess | None = None,
) -> DatasetEvaluator:
    """The evaluators named by ``cfg.TEST.EVALUATORS`` (see the module docstring)."""
    names = [str(n) for n in cfg.TEST.EVALUATORS]
    unknown = [n for n in names if n not in EVALUATORS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"TEST.EVALUATORS {names}: give distinct names from {sorted(EVALUATORS)}")
    built = [EVALUATORS[n](cfg, dataset_name, output_dir, postprocess, names) for n in names]
    return built[0] if len(built) == 1 else MergedEvaluators(built)

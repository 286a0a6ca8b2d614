"""``NucleiEvaluator``: the detectron2 ``DatasetEvaluator`` that runs the nucdet metrics.

Used by the trainer's evaluation hook and by ``--eval-only``. ``process`` turns every
model output into a compact ``ImagePrediction`` (COCO RLE per instance, id =
``Path(file_name).stem``); ``evaluate`` gathers them from all ranks, loads the ground
truth of the registered dataset and calls ``nucdet.evaluation.suite.evaluate_predictions``
(see there for the result keys: ``segm/MaP-IoU`` selects the best checkpoint).
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
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from pycocotools import mask as mask_utils

from nucdet.evaluation.groundtruth import GtDataset
from nucdet.evaluation.suite import (
    Postprocess,
    check_metrics,
    evaluate_predictions,
    write_rows_csv,
)
from nucdet.structures import ImagePrediction

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
        output_dir: if given, ``per_image_metrics.csv`` is written there (atomically).
        max_dets: detections per image kept by COCO AP (pycocotools' default is 100).
        metrics: any of "map_iou", "coco", "voc", "glas" ("count" is always reported).
        score_thresh: MaP-IoU/GlaS/counting use predictions with score >= this.
        postprocess: optional ``ImagePrediction -> ImagePrediction`` applied after the
            score threshold for those metrics (COCO/VOC AP use all raw predictions).
        distributed: gather predictions from all ranks; only rank 0 returns results.
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
    ) -> None:
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.max_dets = int(max_dets)
        self.metrics = check_metrics([m for m in metrics if m != "count"])
        self.score_thresh = float(score_thresh)
        self.postprocess = postprocess
        self.distributed = distributed
        self._predictions: list[ImagePrediction] = []

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        dataset_name: str,
        output_dir: str | None = None,
        postprocess: Postprocess | None = None,
    ) -> NucleiEvaluator:
        """Settings from ``TEST.EVAL_MAX_DETS`` and ``TEST.METRICS``."""
        return cls(
            dataset_name,
            output_dir=output_dir,
            max_dets=cfg.TEST.EVAL_MAX_DETS,
            metrics=tuple(cfg.TEST.METRICS),
            postprocess=postprocess,
        )

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            image_id = Path(inp["file_name"]).stem
            self._predictions.append(instances_to_prediction(out["instances"], image_id))

    def _gather(self) -> list[ImagePrediction] | None:
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
        by_id: dict[str, ImagePrediction] = {}
        for p in predictions:
            if p.image_id in by_id:
                raise ValueError(f"image id {p.image_id!r} was evaluated twice")
            by_id[p.image_id] = p
        meta = MetadataCatalog.get(self.dataset_name)
        gt = GtDataset.from_dataset_dicts(
            DatasetCatalog.get(self.dataset_name),
            list(meta.get("thing_classes", ["object"])),
            source=self.dataset_name,
        )
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
        for task, values in results.items():
            logger.info(
                "%s %s: %s",
                self.dataset_name,
                task,
                ", ".join(f"{k}={v:.4f}" for k, v in values.items()),
            )
        return copy.deepcopy(results)

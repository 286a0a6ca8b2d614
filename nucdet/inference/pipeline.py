"""The inference job shared by ``infer.py`` and ``ensemble_infer.py``.

Inputs are a folder of images or a registered dataset; each image goes through the
predictor, post-processing and the submission writer, streaming with a progress bar.
When the dataset has ground truth, the Kaggle MaP-IoU is computed per image and overall;
overlays (image + predicted outlines, GT beside when known) are drawn for the first N.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from nucdet.data.imageio import read_image
from nucdet.io.atomic import atomic_write_bytes, atomic_write_json
from nucdet.io.writers import make_writer
from nucdet.structures import ImagePrediction
from nucdet.visualize import prediction_overlay

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SUBMISSION_NAMES = {
    "kaggle": "submission.csv",
    "dsb": "submission_dsb.csv",
    "coco": "coco_results.json",
}


@dataclass
class InputImage:
    """One image to predict: its submission id, path and (if known) GT annotations."""

    image_id: str
    file_name: str
    annotations: list[dict] | None = None
    extra: dict | None = None


def folder_inputs(folder: str | os.PathLike) -> list[InputImage]:
    """Every image file directly in ``folder`` (or in DSB ``<id>/images/``), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:  # DSB layout
        files = sorted(folder.glob("*/images/*.png"))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return [InputImage(p.stem, str(p)) for p in files]


def dataset_inputs(name: str) -> list[InputImage]:
    """Images of a registered dataset, with their annotations."""
    from detectron2.data import DatasetCatalog

    if name not in DatasetCatalog.list():
        raise KeyError(f"dataset {name!r} is not registered; known: {DatasetCatalog.list()}")
    out = []
    for d in DatasetCatalog.get(name):
        extra = {k: d[k] for k in ("modality", "cell_type") if k in d}
        out.append(
            InputImage(Path(d["file_name"]).stem, d["file_name"], d.get("annotations"), extra)
        )
    return out


def gt_rles(annotations: list[dict], height: int, width: int) -> list[dict]:
    """GT masks of dataset annotations as COCO RLEs (RLE or polygon segmentations)."""
    from pycocotools import mask as mask_utils

    rles = []
    for a in annotations:
        seg = a["segmentation"]
        if isinstance(seg, list):
            rles.append(mask_utils.merge(mask_utils.frPyObjects(seg, height, width)))
        elif isinstance(seg.get("counts"), list):
            rles.append(mask_utils.frPyObjects(seg, height, width))
        else:
            rles.append(seg)
    return rles


def _labels(rles: list[dict], h: int, w: int) -> np.ndarray:
    return ImagePrediction("", h, w, rles, np.zeros(len(rles)), np.zeros(len(rles))).label_image()


def run_inference(
    inputs: list[InputImage],
    predict: Callable[[np.ndarray, str], ImagePrediction],
    output_dir: str | os.PathLike,
    fmt: str = "kaggle",
    postprocess: Callable[[ImagePrediction], ImagePrediction] | None = None,
    num_overlays: int = 8,
) -> dict:
    """Predict every input, write the submission, overlays and ``metrics.json``.

    Returns the metrics dict (``MaP-IoU`` only when every input has annotations).
    """
    from nucdet.evaluation.mapiou import map_iou_image

    output_dir = Path(output_dir)
    (output_dir / "overlays").mkdir(parents=True, exist_ok=True)
    scores: dict[str, float] = {}
    counts: dict[str, int] = {}
    with make_writer(fmt, output_dir / SUBMISSION_NAMES[fmt]) as writer:
        for k, item in enumerate(tqdm(inputs, desc="infer")):
            image = read_image(item.file_name)
            pred = predict(image, item.image_id)
            if postprocess is not None:
                pred = postprocess(pred)
            writer.add(pred)
            counts[item.image_id] = len(pred)
            gt = None
            if item.annotations is not None:
                gt = gt_rles(item.annotations, pred.height, pred.width)
                scores[item.image_id] = float(map_iou_image(gt, pred.rles))
            if k < num_overlays:
                over = prediction_overlay(
                    image,
                    pred.label_image(),
                    None if gt is None else _labels(gt, pred.height, pred.width),
                )
                ok, png = cv2.imencode(".png", over)
                atomic_write_bytes(output_dir / "overlays" / f"{item.image_id}.png", png.tobytes())
    metrics: dict = {
        "images": len(inputs),
        "instances": int(sum(counts.values())),
        "submission": str(output_dir / SUBMISSION_NAMES[fmt]),
    }
    if scores and len(scores) == len(inputs):
        metrics["MaP-IoU"] = float(np.mean(list(scores.values())))
        metrics["per_image"] = scores
    atomic_write_json(output_dir / "metrics.json", metrics, indent=1)
    return metrics

"""The inference job shared by ``infer.py`` and ``ensemble_infer.py``.

Inputs are a folder of images or a registered dataset; each image goes through the
predictor (models x views, fusion, post-processing: ``nucdet.inference.ensemble``) and
into the submission, streaming with a progress bar.

Resumable: every finished image is appended to ``predictions.jsonl`` in the output folder
(flushed and fsynced). A rerun with the same output folder reads it back (a torn last line
from a kill is ignored), predicts only the remaining images, and writes the submission,
in input order, atomically: the same file an uninterrupted run writes. The file's first
line is the run's fingerprint (``run_fingerprint``: the predictor's settings and the input
list); predictions of another run are never reused: a mismatch is a ``StaleOutputError``
unless ``force`` (then they are discarded). An image that cannot be read stops the run
with an error naming it (every earlier prediction stays in the file), or with
``skip_unreadable`` is left out of the submission and listed in the metrics under
``skipped_unreadable``. When the inputs
have ground truth, the Kaggle MaP-IoU is computed per image and overall; overlays (image
+ predicted outlines, GT beside when known) are drawn for chosen images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from nucdet.data.imageio import ImageReadError, read_image
from nucdet.io.atomic import atomic_open, atomic_write_bytes, atomic_write_json
from nucdet.io.rle import segmentation_to_rle
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
PARTIAL_NAME = "predictions.jsonl"
HEADER_KEY = "nucdet_run"  # key of the fingerprint line that starts PARTIAL_NAME


class StaleOutputError(ValueError):
    """The output folder holds predictions of another run."""


@dataclass
class InputImage:
    """One image to predict: its submission id, path and (if known) GT annotations.

    ``coco_id`` is the dataset's COCO image id (the COCO results file uses it).
    """

    image_id: str
    file_name: str
    annotations: list[dict] | None = None
    extra: dict | None = None
    coco_id: int | None = None


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
    """Images of a registered dataset, with their annotations and metadata, named and
    numbered by ``nucdet.data.coco.image_keys`` (as the evaluators and scorer do)."""
    from detectron2.data import DatasetCatalog

    from nucdet.data.coco import image_keys
    from nucdet.data.register import require_registered

    require_registered(name, "--dataset")
    dicts = DatasetCatalog.get(name)
    names, coco_ids = image_keys(
        [d["file_name"] for d in dicts], [d.get("image_id") for d in dicts], name
    )
    out = []
    for d, image_id, coco_id in zip(dicts, names, coco_ids):
        extra = {k: d[k] for k in ("modality", "cell_type", "sample_id") if k in d}
        out.append(InputImage(image_id, d["file_name"], d.get("annotations"), extra, coco_id))
    return out


def dataset_category_ids(name: str) -> dict[int, int] | None:
    """Contiguous class -> COCO category id of a registered dataset (from detectron2's
    ``thing_dataset_id_to_contiguous_id``), or None when the dataset does not say."""
    from detectron2.data import MetadataCatalog

    id_map = MetadataCatalog.get(name).get("thing_dataset_id_to_contiguous_id")
    return {int(k): int(c) for c, k in id_map.items()} if id_map else None


def gt_rles(annotations: list[dict], height: int, width: int) -> list[dict]:
    """GT masks of dataset annotations as COCO RLEs (RLE or polygon segmentations)."""
    return [segmentation_to_rle(a["segmentation"], height, width) for a in annotations]


def _labels(rles: list[dict], h: int, w: int) -> np.ndarray:
    return ImagePrediction("", h, w, rles, np.zeros(len(rles)), np.zeros(len(rles))).label_image()


def _to_record(pred: ImagePrediction) -> dict:
    return {
        "image_id": pred.image_id,
        "height": pred.height,
        "width": pred.width,
        "rles": [
            {
                "size": list(r["size"]),
                "counts": r["counts"].decode() if isinstance(r["counts"], bytes) else r["counts"],
            }
            for r in pred.rles
        ],
        "scores": pred.scores.tolist(),
        "classes": pred.classes.tolist(),
    }


def _from_record(rec: dict) -> ImagePrediction:
    return ImagePrediction(
        rec["image_id"], rec["height"], rec["width"], rec["rles"], rec["scores"], rec["classes"]
    )


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def run_fingerprint(inputs: Sequence[InputImage], run_key: dict | None = None) -> dict:
    """What identifies a run's predictions: one digest per part of ``run_key`` (the
    predictor's settings: models, weights, views, fusion, post-processing) plus one of the
    input list (ids and resolved paths), and their combined ``run`` digest."""
    parts = {k: _digest(v) for k, v in (run_key or {}).items()}
    parts["inputs"] = _digest([[i.image_id, str(Path(i.file_name).resolve())] for i in inputs])
    return {"run": _digest(parts), "parts": parts}


def read_partial(path: Path) -> tuple[dict | None, dict[str, ImagePrediction]]:
    """The fingerprint line and the predictions already written by an interrupted run
    (a torn last line is ignored). The fingerprint is None for a file without one."""
    done: dict[str, ImagePrediction] = {}
    header = None
    if not path.is_file():
        return header, done
    with open(path) as f:
        for n, line in enumerate(f):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s: ignoring a torn line (interrupted write)", path)
                continue
            if n == 0 and HEADER_KEY in rec:
                header = rec[HEADER_KEY]
                continue
            done[rec["image_id"]] = _from_record(rec)
    return header, done


def _check_same_run(path: Path, old: dict | None, new: dict, force: bool) -> bool:
    """True when the predictions in ``path`` may be reused; raise (or, with ``force``,
    return False) when they belong to another run."""
    if old is not None and old.get("run") == new["run"]:
        return True
    if old is None:
        why = "it has no run fingerprint (written by an older nucdet, or not by this tool)"
    else:
        differ = sorted(
            k for k in set(old.get("parts", {})) | set(new["parts"])
            if old.get("parts", {}).get(k) != new["parts"].get(k)
        )
        why = f"they differ in: {', '.join(differ)}"
    if force:
        logger.warning("%s: predictions of another run discarded (--force): %s", path, why)
        return False
    raise StaleOutputError(
        f"output folder {path.parent} holds predictions of another run ({path.name}: {why}); "
        "use --force to predict again into it, or another --output"
    )


def run_inference(
    inputs: list[InputImage],
    predict: Callable[[np.ndarray, InputImage], ImagePrediction],
    output_dir: str | os.PathLike,
    fmt: str = "kaggle",
    num_overlays: int = 8,
    overlay_ids: Sequence[str] = (),
    category_ids: dict[int, int] | None = None,
    run_key: dict | None = None,
    force: bool = False,
    skip_unreadable: bool = False,
) -> dict:
    """Predict every input, write the submission, overlays and ``metrics.json``.

    Resumes from ``output_dir/predictions.jsonl`` when it was written by the same run
    (``run_key``: JSON-able settings of ``predict``; see module docstring). Returns the
    metrics dict (``MaP-IoU`` only when every predicted input has annotations). The COCO
    results file uses the inputs' ``coco_id`` (dataset inputs) and ``category_ids``
    (contiguous class -> COCO id; default k + 1).
    """
    from nucdet.evaluation.mapiou import map_iou_image

    ids = [i.image_id for i in inputs]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ValueError(f"image ids appear twice in the inputs: {sorted(dup)[:5]}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    partial = output_dir / PARTIAL_NAME
    fingerprint = run_fingerprint(inputs, run_key)
    old, done = read_partial(partial)
    if partial.is_file() and (old is not None or done):
        if not _check_same_run(partial, old, fingerprint, force):
            done = {}
    if done:
        logger.info("resuming: %d of %d images already predicted", len(done), len(inputs))
    # Rewrite the partial file without a torn tail before appending to it.
    with atomic_open(partial, "w") as f:
        f.write(json.dumps({HEADER_KEY: fingerprint}) + "\n")
        for image_id in ids:
            if image_id in done:
                f.write(json.dumps(_to_record(done[image_id])) + "\n")
    show = set(overlay_ids) | set(ids[:num_overlays])
    skipped: list[dict] = []
    with open(partial, "a") as f:
        for item in tqdm(inputs, desc="infer"):
            if item.image_id in done:
                continue
            try:
                image = read_image(item.file_name)
            except ImageReadError as e:
                if not skip_unreadable:
                    raise ImageReadError(
                        f"{e} (image {item.image_id!r}; the {len(done)} predictions made so far "
                        f"are kept in {partial} and a rerun resumes from them; "
                        "--skip-unreadable leaves unreadable images out)"
                    ) from None
                logger.warning("skipping unreadable image %s: %s", item.file_name, e)
                skipped.append({"image_id": item.image_id, "file": item.file_name, "error": str(e)})
                continue
            pred = predict(image, item)
            # The overlay before the record: a kill between the two re-predicts the image
            # (same overlay again) instead of leaving it without its overlay on resume.
            if item.image_id in show:
                gt = None
                if item.annotations is not None:
                    gt = _labels(
                        gt_rles(item.annotations, pred.height, pred.width), pred.height, pred.width
                    )
                over = prediction_overlay(image, pred.label_image(), gt)
                _, png = cv2.imencode(".png", over)
                atomic_write_bytes(output_dir / "overlays" / f"{item.image_id}.png", png.tobytes())
            f.write(json.dumps(_to_record(pred)) + "\n")
            f.flush()
            os.fsync(f.fileno())
            done[item.image_id] = pred
    scores: dict[str, float] = {}
    writer_args = {}
    if fmt == "coco":
        coco_ids = {i.image_id: i.coco_id for i in inputs if i.coco_id is not None}
        writer_args = {"image_ids": coco_ids, "category_ids": category_ids}
    predicted = [item for item in inputs if item.image_id in done]
    with make_writer(fmt, output_dir / SUBMISSION_NAMES[fmt], **writer_args) as writer:
        for item in predicted:
            pred = done[item.image_id]
            writer.add(pred)
            if item.annotations is not None:
                gt = gt_rles(item.annotations, pred.height, pred.width)
                scores[item.image_id] = float(map_iou_image(gt, pred.rles))
    metrics: dict = {
        "images": len(predicted),
        "instances": int(sum(len(done[i.image_id]) for i in predicted)),
        "submission": str(output_dir / SUBMISSION_NAMES[fmt]),
    }
    if skipped:
        metrics["skipped_unreadable"] = skipped
    if scores and len(scores) == len(predicted):
        metrics["MaP-IoU"] = float(np.mean(list(scores.values())))
        groups: dict[str, list[float]] = {}
        for item in predicted:
            for key in ("modality", "cell_type"):
                if item.extra and key in item.extra:
                    groups.setdefault(f"MaP-IoU-{item.extra[key]}", []).append(
                        scores[item.image_id]
                    )
        metrics.update({k: float(np.mean(v)) for k, v in sorted(groups.items())})
        metrics["per_image"] = scores
    atomic_write_json(output_dir / "metrics.json", metrics, indent=1)
    return metrics

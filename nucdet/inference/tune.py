"""Tune per-class score thresholds on validation predictions to maximise Kaggle MaP-IoU.

``tune_score_thresholds(preds, gts, num_classes=...)`` does coordinate ascent: for each
class in turn, every candidate threshold is scored (the other classes fixed) with the
full post-processing (``nucdet.inference.postprocess``: majority class, minimum areas,
overlap removal, ...) and the dataset MaP-IoU (mean of
``nucdet.evaluation.mapiou.map_iou_image`` over images), and the best is kept; rounds
repeat until nothing changes. A threshold only changes which instances of its class
survive, so each image is re-scored only when its kept set changes (results are cached
per image by the number of kept instances per class), and masks are decoded once.

``write_thresholds(yaml_path, thresholds)`` stores the result in an ensemble (or model)
YAML under ``POSTPROCESS.SCORE_THRESH``, keeping the file's other keys; written
atomically. Command line (COCO results JSON as written by ``nucdet.io.writers``, with its
``.images.json`` beside it, against a COCO ground-truth JSON; images matched by file stem,
categories by id)::

    python -m nucdet.inference.tune --pred out/coco_results.json --gt val.json \
        --yaml configs/ensembles/sartorius.yaml --min-area 75 150 75 --majority-class
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from nucdet.inference.masks import CropMasks, rles_to_crops
from nucdet.inference.postprocess import majority_class_of, postprocess_crops
from nucdet.io.atomic import atomic_open
from nucdet.structures import ImagePrediction

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_CANDIDATES", "TuneResult", "main", "tune_score_thresholds", "write_thresholds"]

DEFAULT_CANDIDATES: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))


@dataclass
class TuneResult:
    """Tuned thresholds (one per class), the score they reach and the starting score."""

    thresholds: list[float]
    score: float
    baseline: float
    history: list[dict] = field(default_factory=list)


class _Image:
    """One validation image, decoded once; scores cached by its kept set."""

    def __init__(self, pred: ImagePrediction, gt: Any, majority: bool, num_classes: int):
        self.pred = pred
        self.gt = gt
        self.crops: CropMasks = rles_to_crops(pred.rles, pred.height, pred.width)
        self.scores = pred.scores
        self.classes = pred.classes.copy()
        if majority and len(self.classes):
            self.classes[:] = majority_class_of(self.classes, self.scores)
        if len(self.classes) and self.classes.max() >= num_classes:
            raise ValueError(
                f"image {pred.image_id}: class {int(self.classes.max())} >= num_classes "
                f"{num_classes}"
            )
        self.present = set(np.unique(self.classes).tolist())
        self.cache: dict[tuple, float] = {}

    def key(self, thresholds: np.ndarray) -> tuple:
        keep = self.scores >= thresholds[self.classes]
        return tuple(np.bincount(self.classes[keep], minlength=len(thresholds)).tolist())


def tune_score_thresholds(
    preds: Sequence[ImagePrediction],
    gts: Sequence[Any],
    *,
    num_classes: int,
    candidates: Sequence[float] = DEFAULT_CANDIDATES,
    init: float | Sequence[float] = 0.5,
    rounds: int = 3,
    metric: Callable[[Any, Any], float] | None = None,
    min_area: float | Sequence[float] = 0,
    majority_class: bool = False,
    remove_overlap: bool = True,
    fill_holes: bool = False,
    min_fragment: int = 0,
    progress: bool = True,
) -> TuneResult:
    """Per-class score thresholds maximising mean ``metric(gt, post-processed pred)``.

    Args:
        preds: raw (not yet thresholded) predictions of the validation images.
        gts: ground truth of the same images, anything ``metric`` accepts (for the default
            ``map_iou_image``: a list of COCO RLEs, a label image, an ``ImagePrediction``).
        num_classes: number of classes (length of the result).
        candidates: thresholds tried for every class.
        init: starting thresholds (one value or one per class).
        rounds: maximum passes over the classes.
        metric: ``(gt, pred) -> float``; default Kaggle MaP-IoU.
        min_area ... min_fragment: the post-processing settings of the submission
            (``postprocess``); the tuned thresholds are optimal for them.

    A candidate replaces the current threshold only if it scores strictly higher; among
    equal best candidates the lowest wins.
    """
    if metric is None:
        from nucdet.evaluation.mapiou import map_iou_image as metric
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions but {len(gts)} ground truths")
    if not preds:
        raise ValueError("no validation images to tune on")
    cands = sorted({float(c) for c in candidates})
    th = np.atleast_1d(np.asarray(init, np.float64)).copy()
    if len(th) == 1:
        th = np.full(num_classes, th[0])
    if len(th) != num_classes:
        raise ValueError(f"init has {len(th)} values for {num_classes} classes")
    images = [
        _Image(p, g, majority_class, num_classes)
        for p, g in tqdm(zip(preds, gts), total=len(preds), desc="decode", disable=not progress)
    ]
    post = dict(
        min_area=min_area,
        remove_overlap=remove_overlap,
        fill_holes=fill_holes,
        min_fragment=min_fragment,
    )

    def image_score(im: _Image, thresholds: np.ndarray) -> float:
        key = im.key(thresholds)
        if key not in im.cache:
            idx, crops, classes = postprocess_crops(
                im.crops, im.scores, im.classes, score_thresh=thresholds.tolist(), **post
            )
            out = ImagePrediction(
                im.pred.image_id,
                im.pred.height,
                im.pred.width,
                crops.to_rles(),
                im.scores[idx],
                classes,
            )
            im.cache[key] = float(metric(im.gt, out))
        return im.cache[key]

    per_image = np.array([image_score(im, th) for im in images])
    baseline = float(per_image.mean())
    history: list[dict] = [
        {"round": 0, "class": None, "thresholds": th.tolist(), "score": baseline}
    ]
    for r in range(1, rounds + 1):
        changed = False
        for c in range(num_classes):
            affected = [k for k, im in enumerate(images) if c in im.present]
            if not affected:
                continue
            best_t, best_score = th[c], float(per_image.mean())
            best_scores = None
            for t in tqdm(cands, desc=f"round {r} class {c}", disable=not progress, leave=False):
                trial = th.copy()
                trial[c] = t
                scores = per_image.copy()
                scores[affected] = [image_score(images[k], trial) for k in affected]
                s = float(scores.mean())
                history.append({"round": r, "class": c, "thresholds": trial.tolist(), "score": s})
                if s > best_score:
                    best_t, best_score, best_scores = t, s, scores
            if best_scores is not None and best_t != th[c]:
                th[c] = best_t
                per_image = best_scores
                changed = True
            logger.info(
                "round %d class %d: threshold %.3f, MaP-IoU %.5f", r, c, th[c], per_image.mean()
            )
        if not changed:
            break
    return TuneResult([float(v) for v in th], float(per_image.mean()), baseline, history)


def write_thresholds(
    yaml_path: str | Path,
    thresholds: Sequence[float],
    key: str = "POSTPROCESS.SCORE_THRESH",
) -> None:
    """Set ``key`` (dotted) to ``thresholds`` in ``yaml_path``, keeping its other keys.

    Creates the file if missing; written atomically (comments in the file are not kept).
    """
    path = Path(yaml_path)
    data: dict = {}
    if path.exists():
        with open(path) as f:
            loaded = yaml.safe_load(f)
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: top level is not a mapping")
        data = loaded or {}
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ValueError(f"{path}: key {p!r} of {key!r} is not a mapping")
        node = child
    node[parts[-1]] = [round(float(v), 4) for v in thresholds]
    with atomic_open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)


# ---- command line -------------------------------------------------------------------------


def _load_pairs(pred_json: Path, gt_json: Path) -> tuple[list[ImagePrediction], list, int]:
    """Predictions and GT RLEs of the GT images, matched by file stem."""
    from nucdet.data.coco import load_coco
    from nucdet.inference.pipeline import gt_rles

    gt = load_coco(gt_json)
    cat_ids = sorted(c["id"] for c in gt["categories"])
    contiguous = {cid: k for k, cid in enumerate(cat_ids)}
    images_json = pred_json.with_name(pred_json.stem + ".images.json")
    if not images_json.is_file():
        raise FileNotFoundError(f"{images_json} (image list written beside {pred_json}) missing")
    pred_images = {im["file_name"]: im for im in load_coco(images_json)}
    results = load_coco(pred_json)
    by_image: dict[int, list[dict]] = {}
    for det in results:
        by_image.setdefault(det["image_id"], []).append(det)
    anns: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    preds, gts = [], []
    for im in gt["images"]:
        stem = Path(im["file_name"]).stem
        if stem not in pred_images:
            raise KeyError(f"{pred_json}: no prediction for GT image {stem!r}")
        h, w = int(im["height"]), int(im["width"])
        dets = by_image.get(pred_images[stem]["id"], [])
        try:
            classes = [contiguous[d["category_id"]] for d in dets]
        except KeyError as e:
            raise KeyError(f"{pred_json}: category_id {e} not in {gt_json} categories") from None
        preds.append(
            ImagePrediction(
                stem, h, w, [d["segmentation"] for d in dets], [d["score"] for d in dets], classes
            )
        )
        gts.append(gt_rles(anns.get(im["id"], []), h, w))
    return preds, gts, len(cat_ids)


def main(argv: Sequence[str] | None = None) -> TuneResult:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pred", required=True, type=Path, help="COCO results JSON of validation")
    ap.add_argument("--gt", required=True, type=Path, help="COCO ground-truth JSON")
    ap.add_argument("--yaml", required=True, type=Path, help="YAML to write thresholds into")
    ap.add_argument("--key", default="POSTPROCESS.SCORE_THRESH")
    ap.add_argument("--candidates", type=float, nargs="+", default=list(DEFAULT_CANDIDATES))
    ap.add_argument("--init", type=float, nargs="+", default=[0.5])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-area", type=float, nargs="+", default=[0])
    ap.add_argument("--majority-class", action="store_true")
    ap.add_argument("--keep-overlap", action="store_true", help="do not remove overlaps")
    ap.add_argument("--fill-holes", action="store_true")
    ap.add_argument("--min-fragment", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    preds, gts, num_classes = _load_pairs(args.pred, args.gt)
    res = tune_score_thresholds(
        preds,
        gts,
        num_classes=num_classes,
        candidates=args.candidates,
        init=args.init if len(args.init) > 1 else args.init[0],
        rounds=args.rounds,
        min_area=args.min_area,
        majority_class=args.majority_class,
        remove_overlap=not args.keep_overlap,
        fill_holes=args.fill_holes,
        min_fragment=args.min_fragment,
    )
    write_thresholds(args.yaml, res.thresholds, args.key)
    logger.info(
        "MaP-IoU %.5f -> %.5f with %s=%s written to %s",
        res.baseline,
        res.score,
        args.key,
        res.thresholds,
        args.yaml,
    )
    return res


if __name__ == "__main__":
    main()

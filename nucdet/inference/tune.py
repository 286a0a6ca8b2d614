"""Tune per-class score thresholds on validation predictions to maximise Kaggle MaP-IoU.

``tune_score_thresholds(preds, gts, num_classes=...)`` does coordinate ascent: for each
class in turn, every candidate threshold is scored (the other classes fixed) with the
full post-processing (``nucdet.inference.postprocess``: majority class, minimum areas,
overlap removal, ...) and the dataset MaP-IoU (mean of
``nucdet.evaluation.mapiou.map_iou_image`` over images), and the best is kept; rounds
repeat until nothing changes. A threshold only changes which instances of its class
survive, so each image is re-scored only when its kept set changes (results are cached
per image by the number of kept instances per class), and masks are decoded once.

``tune_postprocess`` tunes the per-class minimum areas (``area_candidates``) and the
majority-class rule (``majority_class=(False, True)``) too, in the same ascent.

``write_postprocess(yaml_path, values)`` stores the result where the file's reader looks:
an ensemble YAML's ``postprocess:`` (``EnsembleSpec.from_yaml`` accepts it) or a model
config's ``POSTPROCESS:``, keeping the file's other keys; written atomically.

Command line (COCO results JSON as written by ``nucdet.io.writers``, with its
``.images.json`` beside it, against a COCO ground-truth JSON; images matched by name,
categories by id). Several ``--pred`` files are out-of-fold predictions (fold k's model
on fold k's held-out images, e.g. ``infer.py --dataset sartorius_fold{k}_val --format
coco``), assembled into one set scored against the full GT (or one ``--gt`` per fold)::

    python -m nucdet.inference.tune --pred out/coco_results.json --gt val.json \
        --yaml configs/ensembles/sartorius_r50_x101_tta.yaml --min-area 75 150 75 \
        --majority-class
    python -m nucdet.inference.tune --pred oof/fold{0,1,2,3,4}/coco_results.json \
        --gt sartorius.json --yaml ens.yaml --tune-min-area 0 50 75 100 150 --tune-majority
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

__all__ = [
    "DEFAULT_CANDIDATES",
    "PostprocessTuneResult",
    "TuneResult",
    "load_out_of_fold",
    "main",
    "tune_postprocess",
    "tune_score_thresholds",
    "write_postprocess",
    "write_thresholds",
]

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
    res = tune_postprocess(
        preds,
        gts,
        num_classes=num_classes,
        score_candidates=candidates,
        init=init,
        rounds=rounds,
        metric=metric,
        min_area=min_area,
        area_candidates=(),
        majority_class=(majority_class,),
        remove_overlap=remove_overlap,
        fill_holes=fill_holes,
        min_fragment=min_fragment,
        progress=progress,
    )
    return TuneResult(res.thresholds, res.score, res.baseline, res.history)


@dataclass
class PostprocessTuneResult(TuneResult):
    """``TuneResult`` plus the tuned minimum areas and majority-class rule."""

    min_area: list[float] = field(default_factory=list)
    majority_class: bool = False

    def postprocess(self) -> dict[str, Any]:
        """The ``POSTPROCESS`` keys they set (the ensemble YAML's ``postprocess``)."""
        return {
            "SCORE_THRESH": [round(float(v), 4) for v in self.thresholds],
            "MIN_AREA": [round(float(v), 4) for v in self.min_area],
            "MAJORITY_CLASS": bool(self.majority_class),
        }


def _per_class(value: float | Sequence[float], num_classes: int, name: str) -> np.ndarray:
    out = np.atleast_1d(np.asarray(value, np.float64)).copy()
    if len(out) == 1:
        out = np.full(num_classes, out[0])
    if len(out) != num_classes:
        raise ValueError(f"{name} has {len(out)} values for {num_classes} classes")
    return out


def tune_postprocess(
    preds: Sequence[ImagePrediction],
    gts: Sequence[Any],
    *,
    num_classes: int,
    score_candidates: Sequence[float] = DEFAULT_CANDIDATES,
    area_candidates: Sequence[float] = (),
    majority_class: Sequence[bool] = (False,),
    init: float | Sequence[float] = 0.5,
    min_area: float | Sequence[float] = 0,
    rounds: int = 3,
    metric: Callable[[Any, Any], float] | None = None,
    remove_overlap: bool = True,
    fill_holes: bool = False,
    min_fragment: int = 0,
    progress: bool = True,
) -> PostprocessTuneResult:
    """Per-class score thresholds, per-class minimum areas and the majority-class rule
    that maximise mean ``metric(gt, post-processed pred)``.

    For every value of ``majority_class`` tried (``(False, True)`` tunes the rule), a
    coordinate ascent over the classes' thresholds (``score_candidates``) and, when
    ``area_candidates`` is given, their minimum areas, starting from ``init`` /
    ``min_area``, in rounds until nothing changes. A candidate replaces the current value
    only if it scores strictly higher (equal best: the lowest wins); the rule with the
    higher final score wins (a tie: the first tried).
    """
    if metric is None:
        from nucdet.evaluation.mapiou import map_iou_image as metric
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions but {len(gts)} ground truths")
    if not preds:
        raise ValueError("no validation images to tune on")
    if not majority_class:
        raise ValueError("majority_class: give the rule values to try, e.g. (False, True)")
    th0 = _per_class(init, num_classes, "init")
    area0 = _per_class(min_area, num_classes, "min_area")
    spaces = {
        "score": sorted({float(c) for c in score_candidates}),
        "area": sorted({float(c) for c in area_candidates}),
    }
    post = dict(remove_overlap=remove_overlap, fill_holes=fill_holes, min_fragment=min_fragment)
    best: PostprocessTuneResult | None = None
    for majority in dict.fromkeys(bool(m) for m in majority_class):
        images = [
            _Image(p, g, majority, num_classes)
            for p, g in tqdm(zip(preds, gts), total=len(preds), desc="decode", disable=not progress)
        ]

        def image_score(im: _Image, values: dict[str, np.ndarray]) -> float:
            key = (im.key(values["score"]), tuple(values["area"][sorted(im.present)].tolist()))
            if key not in im.cache:
                idx, crops, classes = postprocess_crops(
                    im.crops,
                    im.scores,
                    im.classes,
                    score_thresh=values["score"].tolist(),
                    min_area=values["area"].tolist(),
                    **post,
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

        values = {"score": th0.copy(), "area": area0.copy()}
        per_image = np.array([image_score(im, values) for im in images])
        baseline = float(per_image.mean())
        history: list[dict] = [
            {"round": 0, "class": None, "thresholds": th0.tolist(), "score": baseline}
        ]
        for r in range(1, rounds + 1):
            changed = False
            for c in range(num_classes):
                affected = [k for k, im in enumerate(images) if c in im.present]
                if not affected:
                    continue
                for what in ("score", "area"):
                    best_v, best_score = values[what][c], float(per_image.mean())
                    best_scores = None
                    for v in tqdm(
                        spaces[what],
                        desc=f"round {r} class {c} {what}",
                        disable=not progress,
                        leave=False,
                    ):
                        trial = {k: a.copy() for k, a in values.items()}
                        trial[what][c] = v
                        scores = per_image.copy()
                        scores[affected] = [image_score(images[k], trial) for k in affected]
                        sc = float(scores.mean())
                        history.append(
                            {
                                "round": r,
                                "class": c,
                                "thresholds": trial["score"].tolist(),
                                "min_area": trial["area"].tolist(),
                                "majority_class": majority,
                                "score": sc,
                            }
                        )
                        if sc > best_score:
                            best_v, best_score, best_scores = v, sc, scores
                    if best_scores is not None and best_v != values[what][c]:
                        values[what][c] = best_v
                        per_image = best_scores
                        changed = True
                logger.info(
                    "round %d class %d: threshold %.3f, min area %g, MaP-IoU %.5f",
                    r,
                    c,
                    values["score"][c],
                    values["area"][c],
                    per_image.mean(),
                )
            if not changed:
                break
        res = PostprocessTuneResult(
            [float(v) for v in values["score"]],
            float(per_image.mean()),
            baseline,
            history,
            [float(v) for v in values["area"]],
            majority,
        )
        if best is None or res.score > best.score:
            best = res
    assert best is not None
    return best


def _section(data: dict) -> str:
    return "postprocess" if "models" in data else "POSTPROCESS"


def read_postprocess(yaml_path: str | Path) -> dict[str, Any]:
    """The ``POSTPROCESS`` keys an ensemble / config YAML sets itself ({} if none)."""
    path = Path(yaml_path)
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level is not a mapping")
    node = data.get(_section(data)) or {}
    if not isinstance(node, dict):
        raise ValueError(f"{path}: key {_section(data)!r} is not a mapping")
    return node


def _read_mapping(path: Path) -> dict:
    """The YAML mapping in ``path`` ({} when the file is missing or empty)."""
    if not path.exists():
        return {}
    with open(path) as f:
        loaded = yaml.safe_load(f)
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"{path}: top level is not a mapping")
    return loaded or {}


def write_postprocess(yaml_path: str | Path, values: dict[str, Any]) -> None:
    """Write ``POSTPROCESS`` keys into ``yaml_path``, keeping its other keys, in the form
    its reader takes: an ensemble YAML (it has ``models``; ``nucdet.inference.ensemble``)
    gets them under ``postprocess:``, any other file (a model config, or a new file) under
    ``POSTPROCESS:``. Written atomically (comments in the file are not kept)."""
    path = Path(yaml_path)
    data = _read_mapping(path)
    section = _section(data)
    node = data.setdefault(section, {}) if data.get(section) is not None else None
    if node is None:
        node = data[section] = {}
    if not isinstance(node, dict):
        raise ValueError(f"{path}: key {section!r} is not a mapping")
    node.update(values)
    with atomic_open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)


def write_thresholds(
    yaml_path: str | Path,
    thresholds: Sequence[float],
    key: str = "POSTPROCESS.SCORE_THRESH",
) -> None:
    """Set ``key`` (dotted) to ``thresholds`` in ``yaml_path``, keeping its other keys.

    Creates the file if missing; written atomically (comments in the file are not kept).
    For the file an entry point reads, use ``write_postprocess`` (it picks the ensemble
    or config form).
    """
    path = Path(yaml_path)
    data = _read_mapping(path)
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


def _load_pairs(pred_json: Path, gt: Any) -> dict[str, tuple[ImagePrediction, list]]:
    """name -> (prediction, GT RLEs) for the images of a COCO results file written by
    ``nucdet.io.writers.CocoJsonWriter`` (its ``.images.json`` lists every image, with or
    without detections), matched to ``gt`` (a ``GtDataset``) by image name
    (``nucdet.data.coco.image_keys``: file stem, or image id when stems collide)."""
    from nucdet.data.coco import load_coco

    images_json = pred_json.with_name(pred_json.stem + ".images.json")
    if not images_json.is_file():
        raise FileNotFoundError(f"{images_json} (image list written beside {pred_json}) missing")
    contiguous = {cid: k for k, cid in enumerate(gt.category_ids)}
    by_image: dict[Any, list[dict]] = {}
    for det in load_coco(pred_json):
        by_image.setdefault(det["image_id"], []).append(det)
    out = {}
    for im in load_coco(images_json):
        name = str(im["file_name"])
        if name not in gt.by_id:
            raise KeyError(f"{images_json}: image {name!r} is not in the ground truth")
        ref = gt.by_id[name]
        dets = by_image.get(im["id"], [])
        try:
            classes = [contiguous[d["category_id"]] for d in dets]
        except KeyError as e:
            raise KeyError(f"{pred_json}: category_id {e} not in the GT categories") from None
        pred = ImagePrediction(
            name,
            ref.height,
            ref.width,
            [d["segmentation"] for d in dets],
            [d["score"] for d in dets],
            classes,
        )
        out[name] = (pred, ref.instances().rles)
    return out


def load_out_of_fold(
    pred_files: Sequence[Path], gt_files: Sequence[Path]
) -> tuple[list[ImagePrediction], list, int]:
    """Assemble out-of-fold predictions: K results files (fold k's model on fold k's
    held-out images) against one GT file covering all of them, or one GT file per results
    file. Every GT image must be predicted exactly once (errors name the image and files).
    Returns ``(predictions, GT RLEs, number of classes)`` in GT order."""
    from nucdet.data.coco import load_coco
    from nucdet.evaluation.groundtruth import GtDataset

    if len(gt_files) not in (1, len(pred_files)):
        raise ValueError(
            f"give one --gt, or one per --pred ({len(pred_files)}), not {len(gt_files)}"
        )
    gts = [GtDataset.from_coco(load_coco(g), source=str(g)) for g in gt_files]
    if len({tuple(g.class_names) for g in gts}) > 1:
        raise ValueError(f"the GT files {list(map(str, gt_files))} have different categories")
    preds, rles, seen = [], [], {}
    for k, pred_file in enumerate(pred_files):
        gt = gts[k if len(gts) > 1 else 0]
        pairs = _load_pairs(Path(pred_file), gt)
        for name in pairs:
            key = (k if len(gts) > 1 else 0, name)
            if key in seen:
                raise ValueError(f"image {name!r} is predicted in {seen[key]} and in {pred_file}")
            seen[key] = pred_file
        if len(gts) > 1:
            missing = [im.image_id for im in gt.images if im.image_id not in pairs]
            if missing:
                raise KeyError(f"{pred_file}: no prediction for GT images {missing[:3]}")
        for im in gt.images:
            if im.image_id in pairs:
                preds.append(pairs[im.image_id][0])
                rles.append(pairs[im.image_id][1])
    if len(gts) == 1:
        missing = [im.image_id for im in gts[0].images if (0, im.image_id) not in seen]
        if missing:
            raise KeyError(
                f"{gt_files[0]}: {len(missing)} GT image(s) in none of the --pred files "
                f"(e.g. {missing[:3]})"
            )
    return preds, rles, len(gts[0].class_names)


def main(argv: Sequence[str] | None = None) -> TuneResult:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--pred",
        required=True,
        type=Path,
        nargs="+",
        help="COCO results JSON(s); several = out-of-fold (fold k's model on fold k)",
    )
    ap.add_argument(
        "--gt", required=True, type=Path, nargs="+", help="COCO GT JSON: one, or one per --pred"
    )
    ap.add_argument("--yaml", required=True, type=Path, help="ensemble or config YAML to update")
    ap.add_argument("--key", help="write only the thresholds, under this dotted key")
    ap.add_argument("--candidates", type=float, nargs="+", default=list(DEFAULT_CANDIDATES))
    ap.add_argument("--init", type=float, nargs="+", default=[0.5])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--min-area",
        type=float,
        nargs="+",
        help="(starting) min area; default the YAML's POSTPROCESS MIN_AREA, else 0",
    )
    ap.add_argument(
        "--tune-min-area", type=float, nargs="+", default=[], help="min area candidates"
    )
    ap.add_argument(
        "--majority-class",
        action="store_true",
        help="use the majority rule (default: the YAML's MAJORITY_CLASS)",
    )
    ap.add_argument("--tune-majority", action="store_true", help="try the rule on and off")
    ap.add_argument("--keep-overlap", action="store_true", help="do not remove overlaps")
    ap.add_argument("--fill-holes", action="store_true")
    ap.add_argument("--min-fragment", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    # Tune for the settings the YAML will be used with: its own unless given here.
    current = read_postprocess(args.yaml)
    min_area = args.min_area or current.get("MIN_AREA", [0])
    min_area = list(min_area) if isinstance(min_area, (list, tuple)) else [min_area]
    majority = args.majority_class or bool(current.get("MAJORITY_CLASS", False))
    preds, gts, num_classes = load_out_of_fold(args.pred, args.gt)
    res = tune_postprocess(
        preds,
        gts,
        num_classes=num_classes,
        score_candidates=args.candidates,
        area_candidates=args.tune_min_area,
        majority_class=(False, True) if args.tune_majority else (majority,),
        init=args.init if len(args.init) > 1 else args.init[0],
        min_area=min_area if len(min_area) > 1 else min_area[0],
        rounds=args.rounds,
        remove_overlap=not args.keep_overlap,
        fill_holes=args.fill_holes,
        min_fragment=args.min_fragment,
    )
    if args.key:
        write_thresholds(args.yaml, res.thresholds, args.key)
    else:  # all three: the thresholds are optimal for these areas and this rule
        write_postprocess(args.yaml, res.postprocess())
    logger.info(
        "MaP-IoU %.5f -> %.5f on %d images with %s written to %s",
        res.baseline,
        res.score,
        len(preds),
        res.postprocess(),
        args.yaml,
    )
    return res


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Accuracy side by side on one validation fold: classical baseline vs trained recipe vs
flip TTA vs a 2-model ensemble, Kaggle MaP-IoU overall and per modality.

The commands behind benchmarks/RESULTS.md (two models of the recipe, trained with
``benchmarks/train_recipe.py`` into ``output/accuracy/r60_seed{1,2}``)::

    export NUCDET_DATASETS=../shared/data OMP_NUM_THREADS=1
    M="--model-dir output/accuracy/r60_seed1/train"
    M2="--second-model-dir output/accuracy/r60_seed2/train"
    python benchmarks/bench_accuracy.py $M --sweep-train 44 --output sweep_train.json
    python benchmarks/bench_accuracy.py $M $M2 --sweep-methods 44 \
        --output sweep_methods.json INPUT.MIN_SIZE_TEST 576
    python benchmarks/bench_accuracy.py $M $M2 --settings sweep_methods.json \
        --work output/accuracy/bench INPUT.MIN_SIZE_TEST 576

Methods (each model's ``model_final.pth``, i.e. the end of its schedule; ``model_best.pth``
was picked on a subset of this same fold and would flatter it):

- ``watershed``: ``benchmarks/baseline_watershed.py``, computed in this run;
- ``recipe@train-settings``: ``infer.py`` with the first model and the test settings it
  was evaluated with during training (its ``config.yaml``);
- ``recipe``: the same with the test-time overrides given after the flags (``KEY VALUE``,
  chosen on TRAINING images with ``--sweep-train``) and its ``--settings`` row; the
  overrides go to every method below, each with its own ``--settings`` row;
- ``recipe+flipTTA``: ``ensemble_infer.py``, the first model on the identity, horizontal
  and vertical flip views, ``wbf_mask_vote`` fusion;
- ``second``: ``infer.py`` with the second model alone (so the ensemble has a reference);
- ``ensemble``: ``ensemble_infer.py``, both models, identity view, ``wbf_mask_vote``;
- ``ensemble+flipTTA``: both models x the three views;
- ``recipe+flipTTA+rerun``: the members of ``recipe+flipTTA`` fused by ``wbf_mask_rerun``
  (fused boxes, then the model's mask head re-run on them in every view, probabilities
  averaged), with ``recipe+flipTTA``'s post-processing (``OTHER_FUSION``).

Every model method writes a DSB submission (``ImageId,EncodedPixels``) under ``--work``;
this script runs the command only when the submission is missing (``--force`` deletes the
method's output folder and redoes it),
records the command and its wall time, reads every submission back with
``nucdet.io.readers.read_dsb_csv`` and scores all methods with the same
``nucdet.evaluation.mapiou.map_iou_dataset`` (groups = modality). Overlaps are removed by
score for every method. Prints a Markdown table (MaP-IoU, the ratio to the baseline and
the paired per-image difference with a bootstrap interval) and writes the JSON.

Test settings are chosen WITHOUT looking at the validation fold, on N images of the
training fold (``--sweep-dataset``, default ``dsb2018_fold0_train``; ``systematic_sample``:
evenly spaced by folder hash, so the modality mix is the fold's own):

- ``--sweep-train N``: the first model's test size (``INPUT.MIN_SIZE_TEST``), box NMS
  (``MODEL.ROI_HEADS.NMS_THRESH_TEST``), mask threshold (``POSTPROCESS.MASK_THRESH``),
  score threshold and minimum area, one model pass per (size, NMS); table to stdout and
  ``--output``. The chosen size/NMS are then given as ``KEY VALUE`` to every method;
- ``--sweep-methods N [KEY VALUE ...]``: with those model settings, every method (single
  models, flip TTA, ensembles: fused exactly as ``ensemble_infer.py`` fuses) gets its own
  mask threshold, score threshold and minimum area (fused scores are not on the scale of
  one model's scores); ``--settings`` that JSON then applies each method's best row.

``--compare A.json:METHOD B.json:METHOD`` prints the same paired difference between rows
of two result files (e.g. a model of one run against a model of another) and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from baseline_watershed import score_dataset  # a sibling script: benchmarks/ is on sys.path

from nucdet.evaluation.stats import paired_difference

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_accuracy")
MODALITIES = ("fluorescence", "stained", "brightfield")
FLIP_VIEWS = "identity,hflip,vflip"
SUBMISSION = "submission_dsb.csv"
# the fusion of every fused method, in its ensemble YAML and in --sweep-methods alike
FUSION = {"method": "wbf_mask_vote", "iou_thr": 0.55, "conf_type": "box_and_model_avg"}
# (model index, view) members of each model method; one identity member = plain infer.py
METHOD_MEMBERS: dict[str, list[tuple[int, str]]] = {
    "recipe": [(0, "identity")],
    "recipe+flipTTA": [(0, v) for v in FLIP_VIEWS.split(",")],
    "second": [(1, "identity")],
    "ensemble": [(0, "identity"), (1, "identity")],
    "ensemble+flipTTA": [(m, v) for m in (0, 1) for v in FLIP_VIEWS.split(",")],
    # the same members as recipe+flipTTA, fused by re-running the mask head on the fused boxes
    "recipe+flipTTA+rerun": [(0, v) for v in FLIP_VIEWS.split(",")],
    # across families (first model Mask R-CNN, second a NucleiUNet): the Mask R-CNN masks
    # re-weighted by the U-Net's foreground (FUSION_OF below)
    "fg_reweight": [(0, "identity"), (1, "identity")],
    "fg_reweight+flipTTA": [(m, v) for m in (0, 1) for v in FLIP_VIEWS.split(",")],
}
# methods whose fusion differs from FUSION in more than the method (their YAML and their
# --sweep-methods fusion alike); "alpha" is chosen on training images (FG_ALPHAS)
FUSION_OF: dict[str, dict[str, Any]] = {
    name: {"method": "unet_fg_reweight", "fg_models": ["m1"], "alpha": 0.5, "mode": "avg"}
    for name in ("fg_reweight", "fg_reweight+flipTTA")
}
FG_ALPHAS = (0.25, 0.5, 0.75)
# methods fused otherwise than FUSION["method"]; --sweep-methods cannot re-run mask heads on
# stored detections, so each takes the post-processing chosen for the method named here
OTHER_FUSION: dict[str, tuple[str, str]] = {
    "recipe+flipTTA+rerun": ("wbf_mask_rerun", "recipe+flipTTA"),
}


def ensemble_yaml(
    path: Path,
    model_dirs: list[Path],
    views: str,
    fusion_method: str | None = None,
    fusion: dict[str, Any] | None = None,
    model_opts: list[list[str]] | None = None,
) -> Path:
    """An ensemble spec (equal weights, each model's ``model_final.pth``) for
    ``ensemble_infer.py --ensemble``; ``fusion_method`` replaces ``FUSION["method"]``,
    ``fusion`` updates the fusion settings; ``model_opts[i]``: model i's own opts."""
    spec = {
        "models": [
            {
                "name": f"m{i}",
                "config": str(d / "config.yaml"),
                "weights": str(d / "model_final.pth"),
                "weight": 1.0,
                **({"opts": list(model_opts[i])} if model_opts and model_opts[i] else {}),
            }
            for i, d in enumerate(model_dirs)
        ],
        "views": views.split(","),
        "fusion": {
            **FUSION,
            **({"method": fusion_method} if fusion_method else {}),
            **(fusion or {}),
        },
        "format": "dsb",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    from nucdet.io.atomic import atomic_open

    with atomic_open(path, "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    return path


def method_commands(
    dataset: str,
    work: Path,
    first: Path,
    second: Path | None,
    opts: list[str],
    per_method: dict[str, list[str]] | None = None,
    second_opts: list[str] | None = None,
    per_method_fusion: dict[str, dict[str, Any]] | None = None,
) -> dict[str, list[str]]:
    """Command producing each model method's submission (``<work>/<method>/``); ``opts``
    (test-time ``KEY VALUE`` overrides) go to every command but ``recipe@train-settings``,
    then ``second_opts`` to the second model only (e.g. a U-Net's decoding chosen by
    ``--sweep-unet``), then ``per_method[name]`` (the post-processing chosen for that
    method on training images by ``--sweep-methods``, with ``per_method_fusion[name]``,
    its fusion settings, e.g. ``alpha``)."""
    py = sys.executable
    per_method = per_method or {}
    per_method_fusion = per_method_fusion or {}
    model_opts = [[], list(second_opts or [])]

    def single(model: Path, out: str, name: str, index: int = 0) -> list[str]:
        extra = [] if name == "recipe@train-settings" else [
            *opts, *model_opts[index], *per_method.get(name, [])]  # fmt: skip
        return [py, "infer.py", "--model-dir", str(model), "--weights",
                str(model / "model_final.pth"), "--dataset", dataset, "--output",
                str(work / out), "--format", "dsb", "--overlays", "0", *extra]  # fmt: skip

    def ensemble(
        models: list[Path], used: list[int], views: list[str], out: str, name: str
    ) -> list[str]:
        method, settings_of = OTHER_FUSION.get(name, (None, name))
        fusion = {**FUSION_OF.get(name, {}), **per_method_fusion.get(settings_of, {})}
        spec = ensemble_yaml(work / f"{out}.yaml", models, ",".join(views), method, fusion,
                             [model_opts[i] for i in used])  # fmt: skip
        return [py, "ensemble_infer.py", "--ensemble", str(spec), "--dataset", dataset,
                "--output", str(work / out), "--format", "dsb", "--overlays", "0",
                *opts, *per_method.get(settings_of, [])]  # fmt: skip

    models = [first] if second is None else [first, second]
    cmds = {
        "recipe@train-settings": single(first, "recipe_train_settings", "recipe@train-settings")
    }
    for name, members in METHOD_MEMBERS.items():
        if max(m for m, _ in members) >= len(models):
            continue
        out = name.lower().replace("+", "_")  # recipe+flipTTA -> recipe_fliptta
        if len(members) == 1 and members[0][1] == "identity":
            cmds[name] = single(models[members[0][0]], out, name, members[0][0])
        else:
            used = list(dict.fromkeys(m for m, _ in members))
            views = list(dict.fromkeys(v for _, v in members))
            cmds[name] = ensemble([models[m] for m in used], used, views, out, name)
    return cmds


def settings_opts(sweep: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    """The best row of each method of a ``sweep_methods`` result as ``KEY VALUE`` opts."""
    return {
        name: postprocess_opts(rows[0]["mask_thresh"], rows[0]["score_thresh"], rows[0]["min_area"])
        for name, rows in sweep.items()
    }


def postprocess_opts(mask_thresh: float, score_thresh: float, min_area: int) -> list[str]:
    """``KEY VALUE`` opts of one post-processing row (``POSTPROCESS.*``; the score threshold
    and minimum area as one-element lists, one value for every class)."""
    return [
        "POSTPROCESS.MASK_THRESH", str(mask_thresh),
        "POSTPROCESS.SCORE_THRESH", f"[{score_thresh}]",
        "POSTPROCESS.MIN_AREA", f"[{min_area}]",
    ]  # fmt: skip


def settings_fusion(sweep: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The fusion settings (``alpha``) of each method's best ``sweep_methods`` row that
    has them."""
    return {name: {"alpha": rows[0]["alpha"]} for name, rows in sweep.items()
            if "alpha" in rows[0]}  # fmt: skip


def score_submission(path: Path, gt: Any, groups: dict[str, str]) -> dict[str, Any]:
    from nucdet.evaluation.mapiou import map_iou_dataset
    from nucdet.io.readers import read_dsb_csv

    preds = read_dsb_csv(path, gt.images)
    res = map_iou_dataset(
        [(im.image_id, im.instances(), preds[im.image_id]) for im in gt.images], groups=groups
    )
    return {
        "MaP-IoU": res["mean"],
        "per_modality": {g: v["mean"] for g, v in res["groups"].items()},
        "per_threshold": res["per_threshold"],
        "instances": sum(len(p.rles) for p in preds.values()),
        "per_image": res["per_image"],
    }


def systematic_sample(dicts: list[dict], n_images: int) -> list[dict]:
    """``n_images`` evenly spaced images of ``dicts`` sorted by file name (the folder hash:
    unrelated to content), so the modality mix is the dataset's own."""
    ordered = sorted(dicts, key=lambda d: d["file_name"])
    step = max(1, len(ordered) // max(1, n_images))
    return ordered[::step][:n_images]


def _sample_gt(dataset: str, n_images: int):
    """``(gt, groups)``: ground truth of ``systematic_sample(dataset, n_images)`` and each
    image's modality."""
    from detectron2.data import DatasetCatalog

    from nucdet.evaluation.groundtruth import GtDataset

    dicts = DatasetCatalog.get(dataset)
    keep = {d["file_name"] for d in systematic_sample(dicts, n_images)}
    gt = GtDataset.from_dataset_dicts([d for d in dicts if d["file_name"] in keep], ["nucleus"])
    _, groups = gt.groups("modality")
    return gt, groups


def _score_postprocessed(
    scores: dict[tuple, dict[str, float]],
    key: tuple,
    pred: Any,
    im: Any,
    score_thresh: list[float],
    min_areas: list[int],
) -> None:
    """Score ``pred`` of image ``im`` after post-processing with every (score threshold,
    minimum area) into ``scores[(*key, st, ma)][image_id]``."""
    from nucdet.evaluation.mapiou import map_iou_image
    from nucdet.inference.postprocess import postprocess

    for st in score_thresh:
        for ma in min_areas:
            kept = postprocess(pred, score_thresh=[st], min_area=[ma], remove_overlap=True)
            scores.setdefault((*key, st, ma), {})[im.image_id] = map_iou_image(im.instances(), kept)


def _summary(per: dict[str, float], groups: dict[str, str]) -> dict[str, float]:
    """Mean MaP-IoU over the images of ``per``, overall and per modality."""
    import numpy as np

    row = {"MaP-IoU": float(np.mean(list(per.values())))}
    for m in MODALITIES:
        v = [x for i, x in per.items() if groups.get(i) == m]
        row[m] = float(np.mean(v)) if v else float("nan")
    return row


def sweep_settings(
    model_dir: Path,
    dataset: str,
    n_images: int,
    nms: list[float],
    mask_thresh: list[float],
    score_thresh: list[float],
    sizes: list[int] | None = None,
    min_areas: list[int] | None = None,
) -> list[dict[str, Any]]:
    """MaP-IoU of every (test size, nms, mask_thresh, score_thresh, min_area) on
    ``n_images`` of ``dataset`` (``systematic_sample``); one model pass per (size, nms);
    rows sorted best first."""
    from tqdm import tqdm

    from nucdet.config import build_cfg
    from nucdet.data.imageio import read_image
    from nucdet.inference.masks import raw_to_prediction
    from nucdet.inference.predictor import Predictor

    gt, groups = _sample_gt(dataset, n_images)
    sizes = sizes or [build_cfg(str(model_dir / "config.yaml"), []).INPUT.MIN_SIZE_TEST]
    min_areas = min_areas or [0]
    scores: dict[tuple, dict[str, float]] = {}
    for size in sizes:
        for t_nms in nms:
            cfg = build_cfg(
                str(model_dir / "config.yaml"),
                ["MODEL.WEIGHTS", str(model_dir / "model_final.pth"),
                 "MODEL.ROI_HEADS.NMS_THRESH_TEST", str(t_nms),
                 "INPUT.MIN_SIZE_TEST", str(size)],
            )  # fmt: skip
            predictor = Predictor(cfg)
            for im in tqdm(gt.images, desc=f"sweep size {size} nms {t_nms}"):
                raw = predictor.raw(read_image(im.file_name))
                for mt in mask_thresh:
                    pred = raw_to_prediction(raw, im.image_id, mt)
                    _score_postprocessed(
                        scores, (size, t_nms, mt), pred, im, score_thresh, min_areas
                    )
    rows = [
        {"size": size, "nms": t_nms, "mask_thresh": mt, "score_thresh": st, "min_area": ma,
         **_summary(per, groups)}
        for (size, t_nms, mt, st, ma), per in scores.items()
    ]  # fmt: skip
    return sorted(rows, key=lambda r: -r["MaP-IoU"])


def sweep_methods(
    model_dirs: list[Path],
    dataset: str,
    n_images: int,
    opts: list[str],
    mask_thresh: list[float],
    score_thresh: list[float],
    min_areas: list[int],
    second_opts: list[str] | None = None,
    only: list[str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Per model method (``METHOD_MEMBERS``, or those of ``only``): MaP-IoU of every
    (mask_thresh, score_thresh, min_area) on ``n_images`` of ``dataset``
    (``systematic_sample``), rows best first; ``unet_fg_reweight`` methods also try every
    ``alpha`` of ``FG_ALPHAS``.

    Every model runs once per view and image that a method needs (test-time ``opts``
    applied, then ``second_opts`` to the second model; all masks kept); each method fuses
    its members exactly as ``ensemble_infer.py`` does (``FUSION`` updated by
    ``FUSION_OF``, the settings of ``ensemble_yaml``; a single member is pasted, not
    fused), so a fused method's score threshold is chosen on the fused scores it will be
    used with."""
    from tqdm import tqdm

    from nucdet.config import build_cfg
    from nucdet.data.imageio import read_image
    from nucdet.inference.fusion import fuse
    from nucdet.inference.masks import raw_to_prediction
    from nucdet.inference.predictor import Predictor
    from nucdet.inference.tta import build_views

    gt, groups = _sample_gt(dataset, n_images)
    methods = {
        k: v
        for k, v in METHOD_MEMBERS.items()
        if max(m for m, _ in v) < len(model_dirs) and k not in OTHER_FUSION
    }
    if only:
        unknown = [k for k in only if k not in methods]
        if unknown:
            raise KeyError(f"--methods: {unknown} cannot be swept; sweepable: {list(methods)}")
        methods = {k: methods[k] for k in only}
    model_opts = [[], list(second_opts or [])]
    predictors = [
        Predictor(build_cfg(str(d / "config.yaml"),
                            ["MODEL.WEIGHTS", str(d / "model_final.pth"), *opts, *model_opts[i]]))
        for i, d in enumerate(model_dirs)
    ]  # fmt: skip
    views = {v.name: v for v in build_views(FLIP_VIEWS.split(","))}
    needed = sorted({mv for members in methods.values() for mv in members})
    scores: dict[tuple, dict[str, float]] = {}
    for im in tqdm(gt.images, desc=f"sweep methods on {dataset}"):
        image = read_image(im.file_name)
        h, w = image.shape[:2]
        raws = {(m, v): views[v].invert(predictors[m].raw(views[v].apply(image)), (h, w))
                for m, v in needed}  # fmt: skip
        for method, members in methods.items():
            spec = {**FUSION, **FUSION_OF.get(method, {})}
            alphas = FG_ALPHAS if spec["method"] == "unet_fg_reweight" else (None,)
            for alpha in alphas:
                fusion = {k: v for k, v in spec.items() if k != "method"}
                if alpha is not None:
                    fusion["alpha"] = alpha
                for mt in mask_thresh:
                    if len(members) == 1:
                        pred = raw_to_prediction(raws[members[0]], im.image_id, mt)
                    else:
                        pred = fuse([raws[k] for k in members], [1.0] * len(members),
                                    method=spec["method"], image_id=im.image_id,
                                    names=[f"m{m}/{v}" for m, v in members], mask_thresh=mt,
                                    **fusion).prediction  # fmt: skip
                    key = (method, alpha, mt)
                    _score_postprocessed(scores, key, pred, im, score_thresh, min_areas)
    out: dict[str, list[dict[str, Any]]] = {}
    for (method, alpha, mt, st, ma), per in scores.items():
        row = {"mask_thresh": mt, "score_thresh": st, "min_area": ma, **_summary(per, groups)}
        if alpha is not None:
            row = {"alpha": alpha, **row}
        out.setdefault(method, []).append(row)
    return {k: sorted(v, key=lambda r: -r["MaP-IoU"]) for k, v in out.items()}


# the --sweep-unet grid: decoding (MODEL.UNET.DECODE) x post-processing
UNET_DECODE_GRID: dict[str, list[Any]] = {
    "fg_thresh": [0.4, 0.5, 0.6],
    "boundary_thresh": [0.3, 0.5, 0.7],
    "marker_thresh": [0.2, 0.35, 0.5],
}
UNET_MASK_THRESH = [0.3, 0.4, 0.5]
UNET_SCORE_THRESH = [0.0, 0.6, 0.7]
UNET_MIN_AREAS = [0, 15, 30]


def sweep_unet_decode(
    model_dir: Path,
    dataset: str,
    n_images: int,
    opts: list[str],
    grid: dict[str, list[Any]] | None = None,
    mask_thresh: list[float] | None = None,
    score_thresh: list[float] | None = None,
    min_areas: list[int] | None = None,
) -> list[dict[str, Any]]:
    """A NucleiUNet's decoding (``grid``: ``MODEL.UNET.DECODE`` keywords, default
    ``UNET_DECODE_GRID``) x post-processing (mask threshold of the pasted grids, score
    threshold, minimum area): MaP-IoU of every combination on ``n_images`` of ``dataset``
    (``systematic_sample``), one forward pass per image (``Predictor.unet_maps``), rows best
    first, each with the ``opts`` that select it (``unet_opts``)."""
    import itertools

    from tqdm import tqdm

    from nucdet.config import build_cfg
    from nucdet.data.imageio import read_image
    from nucdet.inference.masks import raw_to_prediction
    from nucdet.inference.predictor import Predictor

    grid = dict(grid or UNET_DECODE_GRID)
    gt, groups = _sample_gt(dataset, n_images)
    cfg = build_cfg(str(model_dir / "config.yaml"),
                    ["MODEL.WEIGHTS", str(model_dir / "model_final.pth"), *opts])  # fmt: skip
    if cfg.MODEL.META_ARCHITECTURE != "NucleiUNet":
        raise ValueError(f"--sweep-unet: {model_dir} is a {cfg.MODEL.META_ARCHITECTURE}, "
                         "not a NucleiUNet")  # fmt: skip
    predictor = Predictor(cfg)
    combos = [dict(zip(grid, c)) for c in itertools.product(*grid.values())]
    scores: dict[tuple, dict[str, float]] = {}
    for im in tqdm(gt.images, desc=f"sweep U-Net decoding on {dataset}"):
        image = read_image(im.file_name)
        maps = predictor.unet_maps(image)
        for dec in combos:
            raw = predictor.raw_from_unet_maps(maps, image.shape[0], image.shape[1], dec)
            for mt in mask_thresh or UNET_MASK_THRESH:
                pred = raw_to_prediction(raw, im.image_id, mt)
                _score_postprocessed(scores, (tuple(dec.values()), mt), pred, im,
                                     score_thresh or UNET_SCORE_THRESH,
                                     min_areas or UNET_MIN_AREAS)  # fmt: skip
    rows = []
    for (dec, mt, st, ma), per in scores.items():
        decode = dict(zip(grid, dec))
        row = {**decode, "mask_thresh": mt, "score_thresh": st, "min_area": ma}
        rows.append({**row, **_summary(per, groups), "opts": unet_opts(decode, mt, st, ma)})
    return sorted(rows, key=lambda r: -r["MaP-IoU"])


def unet_opts(
    decode: dict[str, Any], mask_thresh: float, score_thresh: float, min_area: int
) -> list[str]:
    """``KEY VALUE`` opts of a U-Net's decoding (``MODEL.UNET.DECODE.*``, from its
    lower-case keywords) and post-processing."""
    out = [x for k, v in decode.items() for x in (f"MODEL.UNET.DECODE.{k.upper()}", str(v))]
    return out + postprocess_opts(mask_thresh, score_thresh, min_area)


def table(results: dict[str, dict[str, Any]], n_per: dict[str, int]) -> str:
    """Markdown table: MaP-IoU overall and per modality, ratio and paired difference to the
    watershed (each result's ``vs_watershed``: mean, 95% bootstrap interval, images
    better/worse)."""
    base = results["watershed"]
    head = ["method", "overall", *(f"{m} ({n_per.get(m, 0)})" for m in MODALITIES),
            "vs watershed", "difference [95% CI], images better/worse"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [f"{r['MaP-IoU']:.3f}"]
        cells += [f"{r['per_modality'].get(m, float('nan')):.3f}" for m in MODALITIES]
        cells.append(f"{r['MaP-IoU'] / base['MaP-IoU']:.2f}x")
        if name == "watershed":
            cells.append("-")
        else:
            d = r["vs_watershed"]
            cells.append(f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}], "
                         f"{d['better']}/{d['worse']}")  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(spec_a: str, spec_b: str) -> dict[str, Any]:
    """``paired_difference`` of two rows of result JSON files written by this script, each
    given as ``FILE:METHOD`` (e.g. a row of this run against a row of an earlier run on
    the same images); ``METHOD`` may be ``watershed``."""
    per = [_per_image(spec)[0] for spec in (spec_a, spec_b)]
    if set(per[0]) != set(per[1]):
        raise ValueError(f"--compare: {spec_a} and {spec_b} scored different images")
    return paired_difference(per[0], per[1])


def _per_image(spec: str) -> tuple[dict[str, float], dict | None]:
    """``(per-image scores, modality_of or None)`` of ``FILE:METHOD``: a row of a result
    file of this script, or with METHOD ``-`` a file of one result with a top-level
    ``per_image`` (``infer.py``'s ``metrics.json``, ``bench_cellpose.py``'s
    ``cellpose_metrics.json``)."""
    path, sep, method = spec.rpartition(":")
    if not sep:
        raise ValueError(f"--compare {spec!r}: expected FILE:METHOD")
    data = json.loads(Path(path).read_text())
    if method == "-":
        if "per_image" not in data:
            raise KeyError(f"--compare {spec!r}: {path} has no top-level per_image")
        return data["per_image"], data.get("modality_of")
    results = data["results"]
    if method not in results:
        raise KeyError(f"--compare {spec!r}: {path} has no method {method!r}; "
                       f"it has {list(results)}")  # fmt: skip
    return results[method]["per_image"], data.get("modality_of")


def compare_by_modality(spec_a: str, spec_b: str) -> dict[str, dict[str, Any]]:
    """``compare`` within each modality: the images of each group of the ``modality_of``
    map (image id -> modality) that result files of this script record; the first file
    that has one is used, and a file without one is an error only if neither has it."""
    per, modality_of = [], None
    for spec in (spec_a, spec_b):
        scores, mods = _per_image(spec)
        per.append(scores)
        modality_of = modality_of or mods
    if modality_of is None:
        raise ValueError(f"--compare: neither {spec_a} nor {spec_b} records modality_of")
    missing = sorted(set(per[0]) - set(modality_of))
    if missing:
        raise KeyError(f"--compare: no modality for images {missing[:5]} ({len(missing)})")
    out = {}
    for m in sorted(set(modality_of[i] for i in per[0])):
        ids = [i for i in per[0] if modality_of[i] == m]
        out[m] = paired_difference({i: per[0][i] for i in ids}, {i: per[1][i] for i in ids})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dataset", default="dsb2018_fold0_val")
    ap.add_argument(
        "--model-dir", help="the recipe's training OUTPUT_DIR (required but with --compare)"
    )
    ap.add_argument("--second-model-dir", help="second model for the ensemble")
    ap.add_argument("--work", default=str(REPO / "output/accuracy/bench"))
    ap.add_argument("--output", default=str(REPO / "benchmarks/results/accuracy.json"))
    ap.add_argument("--methods", help="comma-separated subset of the model methods to run")
    ap.add_argument("--force", action="store_true", help="recompute existing submissions")
    ap.add_argument("--sweep-train", type=int, help="N: sweep test settings on N train images")
    ap.add_argument("--sweep-dataset", default="dsb2018_fold0_train")
    ap.add_argument(
        "--sweep-methods",
        type=int,
        metavar="N",
        help="N: choose each method's post-processing on N training images",
    )
    ap.add_argument("--settings", help="JSON written by --sweep-methods: per-method settings")
    ap.add_argument(
        "--sweep-unet", type=int, metavar="N",
        help="N: choose a NucleiUNet's (--model-dir) decoding and post-processing on N "
        "training images",
    )  # fmt: skip
    ap.add_argument(
        "--unet-grid",
        help="--sweep-unet grid as JSON: lists of MODEL.UNET.DECODE keywords (default "
        "UNET_DECODE_GRID) and of mask_thresh / score_thresh / min_area",
    )
    ap.add_argument(
        "--second-opts", default="",
        help="test-time KEY VALUE overrides of the second model only, one quoted string "
        "(e.g. a U-Net's decoding: the 'opts' of the best --sweep-unet row)",
    )  # fmt: skip
    ap.add_argument(
        "--compare", nargs=2, metavar="FILE:METHOD",
        help="print the paired per-image difference A - B of two rows of result JSONs, exit",
    )  # fmt: skip
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="test-time KEY VALUE overrides")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.compare:
        d = compare(*args.compare)
        print(f"{args.compare[0]} - {args.compare[1]}: {d['mean']:+.4f} "
              f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}], better/worse {d['better']}/"
              f"{d['worse']} of {d['n']}")  # fmt: skip
        try:
            groups = compare_by_modality(*args.compare)
        except ValueError as e:  # older result files: overall only
            logger.info("%s", e)
            groups = {}
        for m, g in groups.items():
            print(f"  {m}: {g['mean']:+.4f} [{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}], "
                  f"better/worse {g['better']}/{g['worse']} of {g['n']}")  # fmt: skip
        return {**d, "per_modality": groups}
    if not args.model_dir:
        ap.error("--model-dir is required (except with --compare)")
    second_opts = shlex.split(args.second_opts)
    if len(second_opts) % 2:
        ap.error(f"--second-opts: KEY VALUE pairs, got {len(second_opts)} words")
    if args.sweep_unet:
        from nucdet.data.register import register_all
        from nucdet.io.atomic import atomic_write_json

        register_all()
        t0 = time.perf_counter()
        grid = json.loads(args.unet_grid) if args.unet_grid else {}
        if not isinstance(grid, dict):
            ap.error(f"--unet-grid: a JSON object of non-empty lists, got {args.unet_grid}")
        bad = [k for k, v in grid.items() if not isinstance(v, list) or not v]
        if bad:
            ap.error(f"--unet-grid: a JSON object of non-empty lists; not lists: {bad}")
        post = {k: grid.pop(k, default) for k, default in (
            ("mask_thresh", UNET_MASK_THRESH), ("score_thresh", UNET_SCORE_THRESH),
            ("min_area", UNET_MIN_AREAS))}  # fmt: skip
        grid = grid or dict(UNET_DECODE_GRID)
        rows = sweep_unet_decode(
            Path(args.model_dir).resolve(), args.sweep_dataset, args.sweep_unet, list(args.opts),
            grid, post["mask_thresh"], post["score_thresh"], post["min_area"],
        )  # fmt: skip
        for r in rows[:10]:
            print(" ".join(f"{k}={v:.3f}" for k, v in r.items() if k != "opts"))
        print("best:", " ".join(rows[0]["opts"]))
        out = {"model": args.model_dir, "dataset": args.sweep_dataset, "n_images": args.sweep_unet,
               "test_opts": list(args.opts), "grid": grid, "postprocess_grid": post,
               "seconds": round(time.perf_counter() - t0, 1), "rows": rows}  # fmt: skip
        atomic_write_json(args.output, out, indent=1)
        return out
    if args.sweep_train:
        from nucdet.data.register import register_all
        from nucdet.io.atomic import atomic_write_json

        register_all()
        t0 = time.perf_counter()
        rows = sweep_settings(
            Path(args.model_dir).resolve(), args.sweep_dataset, args.sweep_train,
            nms=[0.3], mask_thresh=[0.5, 0.4], score_thresh=[0.6, 0.7, 0.8],
            sizes=[512, 576, 640, 768], min_areas=[0, 15, 30],
        )  # fmt: skip
        for r in rows:
            print(" ".join(f"{k}={v:.3f}" for k, v in r.items()))
        out = {"model": args.model_dir, "dataset": args.sweep_dataset, "n_images": args.sweep_train,
               "seconds": round(time.perf_counter() - t0, 1), "rows": rows}  # fmt: skip
        atomic_write_json(args.output, out, indent=1)
        return out
    if args.sweep_methods:
        from nucdet.data.register import register_all
        from nucdet.io.atomic import atomic_write_json

        register_all()
        t0 = time.perf_counter()
        dirs = [Path(d).resolve() for d in (args.model_dir, args.second_model_dir) if d]
        methods = sweep_methods(
            dirs, args.sweep_dataset, args.sweep_methods, list(args.opts),
            mask_thresh=[0.5, 0.4], score_thresh=[0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97],
            min_areas=[0, 15, 30], second_opts=second_opts,
            only=args.methods.split(",") if args.methods else None,
        )  # fmt: skip
        for name, rows in methods.items():
            print(name, " ".join(f"{k}={v:.3f}" for k, v in rows[0].items()))
        out = {"models": [str(d) for d in dirs], "dataset": args.sweep_dataset,
               "n_images": args.sweep_methods, "test_opts": list(args.opts),
               "second_opts": second_opts,
               "seconds": round(time.perf_counter() - t0, 1), "methods": methods}  # fmt: skip
        atomic_write_json(args.output, out, indent=1)
        return out

    from detectron2.data import DatasetCatalog, MetadataCatalog

    from nucdet.data.register import register_all
    from nucdet.evaluation.groundtruth import GtDataset
    from nucdet.io.atomic import atomic_write_json

    register_all()
    work = Path(args.work).resolve()
    first = Path(args.model_dir).resolve()
    second = Path(args.second_model_dir).resolve() if args.second_model_dir else None
    for d in filter(None, (first, second)):
        if not (d / "model_final.pth").is_file():
            raise FileNotFoundError(f"{d}: no model_final.pth (is the training finished?)")

    gt = GtDataset.from_dataset_dicts(
        DatasetCatalog.get(args.dataset),
        list(MetadataCatalog.get(args.dataset).get("thing_classes", ["nucleus"])),
        source=args.dataset,
    )
    _, groups = gt.groups("modality")
    n_per = {m: sum(1 for g in groups.values() if g == m) for m in MODALITIES}

    out: dict[str, Any] = {
        "dataset": args.dataset,
        "n_images": len(gt),
        "n_per_modality": n_per,
        "modality_of": dict(sorted(groups.items())),
        "models": [str(first), str(second) if second else None],
        "machine": {"cpus": os.cpu_count(), "load_at_start": os.getloadavg()},
        "commands": {},
        "seconds": {},
        "results": {},
    }
    t0 = time.perf_counter()
    base = score_dataset(args.dataset)
    out["seconds"]["watershed"] = round(time.perf_counter() - t0, 1)
    out["commands"]["watershed"] = f"benchmarks/baseline_watershed.py --dataset {args.dataset}"
    out["results"]["watershed"] = {
        k: base[k] for k in ("MaP-IoU", "per_modality", "per_image") if k in base
    }

    per_method = per_method_fusion = None
    if args.settings:
        sweep = json.loads(Path(args.settings).read_text())
        per_method = settings_opts(sweep["methods"])
        per_method_fusion = settings_fusion(sweep["methods"])
        if sweep.get("second_opts", []) != second_opts:
            raise ValueError(
                f"--settings {args.settings} was swept with --second-opts "
                f"{sweep.get('second_opts', [])}, this run has {second_opts}: its settings "
                "were not chosen for these models"
            )
        out["settings"] = {"file": args.settings, "per_method": per_method,
                           "per_method_fusion": per_method_fusion}  # fmt: skip
    cmds = method_commands(args.dataset, work, first, second, list(args.opts), per_method,
                           second_opts, per_method_fusion)  # fmt: skip
    out["test_opts"] = list(args.opts)
    out["second_opts"] = second_opts
    wanted = args.methods.split(",") if args.methods else list(cmds)
    for name in wanted:
        if name not in cmds:
            raise KeyError(f"--methods: unknown method {name!r}; known: {list(cmds)}")
        cmd = cmds[name]
        sub = Path(cmd[cmd.index("--output") + 1]) / SUBMISSION
        out["commands"][name] = " ".join(cmd)
        if args.force and sub.parent.is_dir():
            # infer.py / ensemble_infer.py resume a complete output of the same settings
            # (they cannot see a change of nucdet's code): --force starts from nothing.
            logger.info("%s: --force: removing %s", name, sub.parent)
            shutil.rmtree(sub.parent)
        if args.force or not sub.is_file():
            logger.info("%s: %s", name, " ".join(cmd))
            t = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=REPO)
            out["seconds"][name] = round(time.perf_counter() - t, 1)
        else:
            logger.info("%s: reusing %s", name, sub)
        res = score_submission(sub, gt, groups)
        res["vs_watershed"] = paired_difference(res["per_image"], base["per_image"])
        out["results"][name] = res
    out["machine"]["load_at_end"] = os.getloadavg()
    md = table(out["results"], n_per)
    out["table"] = md
    print(md)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, out, indent=1)
    return out


if __name__ == "__main__":
    main()

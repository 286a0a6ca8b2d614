"""Models x TTA views -> one prediction per image: the predictor behind both entry points.

An ``EnsembleSpec`` lists models (a training output directory, or a config + weights,
each with a fusion weight and an optional routing rule), TTA views, the fusion method
and post-processing. ``infer.py`` is the same thing with one model and the identity view.

YAML form (``configs/ensembles/*.yaml``; paths relative to the working directory)::

    models:
      - {name: r18a, model_dir: output/dsb/r18a, weight: 1.0}
      - {name: r18b, config: configs/x.yaml, weights: output/b/model_best.pth,
         opts: [MODEL.ROI_HEADS.SCORE_THRESH_TEST, "0.2"],
         route: {key: modality, values: [fluorescence]}}   # or route: {ids_file: ids.txt}
    views: [identity, hflip, vflip]
    fusion: {method: wbf_mask_vote, iou_thr: 0.55, conf_type: box_and_model_avg}
    postprocess: {SCORE_THRESH: [0.5], MIN_AREA: [10]}       # POSTPROCESS.* overrides
    format: kaggle
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from detectron2.config import CfgNode
from detectron2.utils.logger import setup_logger

from nucdet.engine.defaults import build_cfg
from nucdet.inference.fusion import FUSION_METHODS, fuse
from nucdet.inference.masks import raw_to_prediction
from nucdet.inference.pipeline import (
    SUBMISSION_NAMES,
    InputImage,
    dataset_category_ids,
    dataset_inputs,
    folder_inputs,
    run_inference,
)
from nucdet.inference.postprocess import postprocess_from_cfg
from nucdet.inference.predictor import Predictor, find_weights
from nucdet.inference.tta import build_views
from nucdet.structures import ImagePrediction, RawDetections


@dataclass
class ModelSpec:
    """One member of an ensemble."""

    name: str
    model_dir: str | None = None
    config: str | None = None
    weights: str | None = None
    weight: float = 1.0
    opts: list[str] = field(default_factory=list)
    route: dict[str, Any] | None = None

    def build_cfg(self, extra_opts: Sequence[str] = ()) -> CfgNode:
        if self.model_dir is None and (self.config is None or self.weights is None):
            raise ValueError(f"model {self.name!r}: give model_dir, or config and weights")
        config = self.config or str(Path(self.model_dir) / "config.yaml")
        cfg = build_cfg(config, [str(o) for o in [*self.opts, *extra_opts]])
        cfg.MODEL.WEIGHTS = str(self.weights or find_weights(self.model_dir))
        return cfg

    def routed_ids(self) -> set[str] | None:
        if not self.route or "ids_file" not in self.route:
            return None
        path = Path(self.route["ids_file"])
        if not path.is_file():
            raise FileNotFoundError(f"model {self.name!r}: route ids_file {path} not found")
        return {ln.strip() for ln in path.read_text().splitlines() if ln.strip()}


@dataclass
class EnsembleSpec:
    """Models, views, fusion and post-processing of an inference job."""

    models: list[ModelSpec]
    views: list[str] = field(default_factory=lambda: ["identity"])
    fusion: dict[str, Any] = field(default_factory=lambda: {"method": "wbf_mask_vote"})
    postprocess: dict[str, Any] = field(default_factory=dict)
    format: str = "kaggle"

    @classmethod
    def from_dict(cls, d: dict, source: str = "") -> EnsembleSpec:
        known = {"models", "views", "fusion", "postprocess", "format"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"{source}: unknown ensemble keys {sorted(unknown)}; known: {sorted(known)}"
            )
        if not d.get("models"):
            raise ValueError(f"{source}: 'models' is empty")
        models = []
        for i, m in enumerate(d["models"]):
            try:
                models.append(ModelSpec(**{"name": f"model{i}", **m}))
            except TypeError as e:
                raise ValueError(f"{source}: models[{i}]: {e}") from None
        fusion = dict(d.get("fusion") or {"method": "wbf_mask_vote"})
        if fusion.get("method", "wbf_mask_vote") not in FUSION_METHODS:
            raise ValueError(
                f"{source}: unknown fusion method {fusion.get('method')!r}; "
                f"known: {sorted(FUSION_METHODS)}"
            )
        return cls(
            models,
            list(d.get("views") or ["identity"]),
            fusion,
            dict(d.get("postprocess") or {}),
            d.get("format", "kaggle"),
        )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> EnsembleSpec:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ensemble file not found: {path}")
        return cls.from_dict(yaml.safe_load(path.read_text()) or {}, str(path))


class EnsemblePredictor:
    """Runs every routed model on every view of an image, fuses, post-processes."""

    def __init__(self, spec: EnsembleSpec, extra_opts: Sequence[str] = ()):
        self.spec = spec
        self.views = build_views(spec.views)
        self.members = []
        for m in spec.models:
            self.members.append((m, Predictor(m.build_cfg(extra_opts)), m.routed_ids()))
        cfg = self.members[0][1].cfg.clone()
        cfg.defrost()
        for key, value in spec.postprocess.items():
            if key not in cfg.POSTPROCESS:
                raise KeyError(f"unknown postprocess key {key!r}; known: {list(cfg.POSTPROCESS)}")
            cfg.POSTPROCESS[key] = value
        self.cfg = cfg
        self.mask_thresh = float(cfg.POSTPROCESS.MASK_THRESH)
        self.postprocess = postprocess_from_cfg(cfg)

    def _routed(self, model: ModelSpec, ids: set[str] | None, item: InputImage) -> bool:
        if ids is not None:
            return item.image_id in ids
        if model.route and "key" in model.route:
            value = (item.extra or {}).get(model.route["key"])
            return value in model.route.get("values", [])
        return True

    def raw_views(
        self, image: np.ndarray, item: InputImage
    ) -> tuple[list[RawDetections], list[float], list[str]]:
        """Every routed model's detections on every view, in the original frame."""
        h, w = image.shape[:2]
        raws, weights, names = [], [], []
        for model, predictor, ids in self.members:
            if not self._routed(model, ids, item):
                continue
            for view in self.views:
                raw = predictor.raw(view.apply(image), scale=view.scale)
                raws.append(view.invert(raw, (h, w)))
                weights.append(model.weight)
                names.append(f"{model.name}/{view.name}")
        return raws, weights, names

    def fused(self, image: np.ndarray, item: InputImage) -> ImagePrediction:
        """Every routed model on every view, fused; before post-processing."""
        raws, weights, names = self.raw_views(image, item)
        if not raws:
            raise ValueError(f"image {item.image_id}: no model is routed to it")
        return fuse_views(raws, weights, names, self.spec.fusion, item.image_id, self.mask_thresh)

    def __call__(self, image: np.ndarray, item: InputImage) -> ImagePrediction:
        return self.postprocess(self.fused(image, item))


def fuse_views(
    raws: Sequence[RawDetections],
    weights: Sequence[float],
    names: Sequence[str],
    fusion: dict[str, Any],
    image_id: str,
    mask_thresh: float,
) -> ImagePrediction:
    """One prediction from the detections of several models / views (``fusion``: the
    ensemble's ``{method, ...options}``); a single input is only pasted."""
    if len(raws) == 1:  # one model, one view: nothing to fuse
        return raw_to_prediction(raws[0], image_id, mask_thresh)
    options = {k: v for k, v in fusion.items() if k != "method"}
    return fuse(
        raws,
        weights,
        method=fusion.get("method", "wbf_mask_vote"),
        image_id=image_id,
        names=names,
        mask_thresh=mask_thresh,
        **options,
    ).prediction


class ViewsModel:
    """A loaded detectron2 model run on TTA views and fused, called like the model.

    ``train_net.py --eval-only`` with ``TEST.AUG.ENABLED`` evaluates it through detectron2's
    ``inference_on_dataset``: each input's ``file_name`` is read at full size (the loader's
    resized ``image`` is not used), every view goes through ``Predictor.raw`` and its
    inverse, the views are fused (``fusion``, default ``wbf_mask_vote``), and the output is
    ``{"instances": Instances}`` with full-image masks, before post-processing (the
    evaluator post-processes, as it does for the plain model).
    """

    def __init__(
        self,
        cfg: CfgNode,
        model: Any,
        views: Sequence[str],
        fusion: dict[str, Any] | None = None,
    ):
        self.predictor = Predictor(cfg, model=model)
        self.views = build_views(list(views))
        self.fusion = dict(fusion or {"method": "wbf_mask_vote"})
        self.mask_thresh = float(cfg.POSTPROCESS.MASK_THRESH)

    def __call__(self, inputs: list[dict]) -> list[dict]:
        import torch
        from detectron2.structures import Boxes, Instances

        from nucdet.data.imageio import read_image

        outputs = []
        for d in inputs:
            image = read_image(d["file_name"])
            h, w = image.shape[:2]
            raws = [
                v.invert(self.predictor.raw(v.apply(image), scale=v.scale), (h, w))
                for v in self.views
            ]
            names = [v.name for v in self.views]
            pred = fuse_views(
                raws, [1.0] * len(raws), names, self.fusion, str(d["file_name"]), self.mask_thresh
            )
            inst = Instances((h, w))
            boxes = pred.boxes_xywh().astype(np.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
            inst.pred_boxes = Boxes(torch.from_numpy(boxes))
            inst.scores = torch.from_numpy(pred.scores)
            inst.pred_classes = torch.from_numpy(pred.classes)
            inst.pred_masks = torch.from_numpy(pred.masks())
            outputs.append({"instances": inst})
        return outputs


def run_ensemble(
    spec: EnsembleSpec,
    output: str | os.PathLike,
    *,
    dataset: str | None = None,
    input_dir: str | os.PathLike | None = None,
    num_overlays: int = 8,
    overlay_ids: Sequence[str] = (),
    opts: Sequence[str] = (),
) -> dict:
    """Register datasets, build the predictor, run the (resumable) inference job."""
    from nucdet.data.register import register_all

    if (dataset is None) == (input_dir is None):
        raise ValueError("give exactly one of a dataset name or an input folder")
    predictor = EnsemblePredictor(spec, opts)
    register_all(predictor.cfg)
    inputs = dataset_inputs(dataset) if dataset else folder_inputs(input_dir)
    return run_inference(
        inputs,
        predictor,
        output,
        fmt=spec.format,
        num_overlays=num_overlays,
        overlay_ids=overlay_ids,
        category_ids=dataset_category_ids(dataset) if dataset else None,
    )


def add_io_arguments(ap: argparse.ArgumentParser, default_format: str | None = "kaggle") -> None:
    """The input / output flags shared by infer.py and ensemble_infer.py."""
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="folder of images (or DSB <id>/images/ layout)")
    src.add_argument("--dataset", help="registered dataset name")
    ap.add_argument("--output", required=True, help="output folder")
    ap.add_argument("--format", default=default_format, choices=sorted(SUBMISSION_NAMES))
    ap.add_argument("--overlays", type=int, default=8, help="overlay PNGs for the first N images")
    ap.add_argument("--overlay-ids", default="", help="comma-separated image ids to overlay")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")


def run_from_args(spec: EnsembleSpec, args: argparse.Namespace) -> dict:
    """Run the job described by ``spec`` and the shared flags; log the summary."""
    setup_logger(name="nucdet")
    metrics = run_ensemble(
        spec,
        args.output,
        dataset=args.dataset,
        input_dir=args.input,
        num_overlays=args.overlays,
        overlay_ids=[i for i in args.overlay_ids.split(",") if i],
        opts=args.opts,
    )
    summary = {k: v for k, v in metrics.items() if k != "per_image"}
    logging.getLogger("nucdet").info("results: %s", json.dumps(summary))
    return metrics

"""Models x TTA views -> one prediction per image: the predictor behind both entry points.

An ``EnsembleSpec`` lists models (a training output directory, or a config + weights,
each with a fusion weight and an optional routing rule), TTA views, the fusion method
and post-processing. ``infer.py`` is the same thing with one model and the identity view;
the command-line side of both (flags, the job, sharding) is ``nucdet.inference.cli``.

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

Precedence, lowest first: each model's config (and its ``opts``), the YAML's
``postprocess``, the command line's ``KEY VALUE`` options. A command-line
``POSTPROCESS.<KEY>`` that differs from the YAML's value wins, with a warning naming both.

Routing (``route``; a model without one sees every image): ``{key: K, values: [...]}``
runs the model on images whose ``K`` is one of the values: ``K`` from the dataset's
metadata, or, for keys computable from the pixels (``modality``:
``nucdet.data.modality``), from the image itself, so routes work on a folder of images
(the Kaggle test set) too. ``{ids_file: F}`` runs it on the image ids listed in F. A route
that can never match is an error: a value the key cannot take, an ids file naming none of
the inputs, a key that is neither in an input's metadata nor computable.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from detectron2.config import CfgNode

from nucdet.config import build_cfg
from nucdet.data.modality import COMPUTED_KEYS
from nucdet.inference.fusion import FUSION_METHODS, NEEDS_MASK_HEADS, fuse
from nucdet.inference.masks import raw_to_prediction
from nucdet.inference.pipeline import InputImage
from nucdet.inference.postprocess import postprocess_from_cfg
from nucdet.inference.predictor import Predictor, find_weights
from nucdet.inference.tta import build_views, forward_boxes, invert_grids
from nucdet.structures import ImagePrediction, RawDetections

logger = logging.getLogger(__name__)


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

    def check_route(self, source: str = "") -> None:
        """Reject a malformed route or one that can never match (see module docstring)."""
        r = self.route
        if r is None:
            return
        where = f"{source}: model {self.name!r}: route {r}"
        if not isinstance(r, dict) or set(r) not in ({"ids_file"}, {"key", "values"}):
            raise ValueError(f"{where}: give {{key: K, values: [...]}} or {{ids_file: F}}")
        if "key" in r:
            values = r["values"]
            if not isinstance(values, list) or not values:
                raise ValueError(f"{where}: 'values' must be a non-empty list")
            if r["key"] in COMPUTED_KEYS:
                possible = COMPUTED_KEYS[r["key"]][1]
                never = [v for v in values if v not in possible]
                if never:
                    raise ValueError(
                        f"{where}: {r['key']} is never {never} (it is one of {list(possible)})"
                    )

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
            models[-1].check_route(source)
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
        cli = {str(k): v for k, v in zip(extra_opts[0::2], extra_opts[1::2])}
        for key, value in spec.postprocess.items():
            if key not in cfg.POSTPROCESS:
                raise KeyError(f"unknown postprocess key {key!r}; known: {list(cfg.POSTPROCESS)}")
            if f"POSTPROCESS.{key}" in cli:  # already merged into cfg: the command line wins
                if cfg.POSTPROCESS[key] != value:
                    logger.warning(
                        "POSTPROCESS.%s: the command line's %s wins over the ensemble YAML's %s",
                        key,
                        cfg.POSTPROCESS[key],
                        value,
                    )
                continue
            cfg.POSTPROCESS[key] = value
        self.cfg = cfg
        self.mask_thresh = float(cfg.POSTPROCESS.MASK_THRESH)
        self.postprocess = postprocess_from_cfg(cfg)

    def run_key(self) -> dict[str, Any]:
        """Everything that changes a prediction, for the resume fingerprint of
        ``run_inference``: each model's config, weights file contents, fusion weight and
        routing, the views, the fusion and the post-processing settings."""
        key: dict[str, Any] = {}
        for model, predictor, ids in self.members:
            cfg = predictor.cfg.clone()
            cfg.defrost()
            cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR = "", ""  # identified by content below
            key[f"{model.name}.config"] = cfg.dump()
            key[f"{model.name}.weights"] = _file_identity(predictor.cfg.MODEL.WEIGHTS)
            key[f"{model.name}.weight_and_route"] = [
                model.weight,
                model.route,
                sorted(ids) if ids is not None else None,
            ]
        key["views"] = list(self.spec.views)
        key["fusion"] = dict(self.spec.fusion)
        key["postprocess"] = self.cfg.POSTPROCESS.dump()
        return key

    def check_routes(self, inputs: Sequence[InputImage]) -> None:
        """Before predicting: every route can match some input (module docstring)."""
        for model, _, ids in self.members:
            if ids is not None and not ids & {i.image_id for i in inputs}:
                raise ValueError(
                    f"model {model.name!r}: route ids_file {model.route['ids_file']} names "
                    f"none of the {len(inputs)} input images (e.g. {inputs[0].image_id!r}): "
                    "the model would never run"
                )
            if model.route and "key" in model.route:
                key = model.route["key"]
                lacking = [i for i in inputs if key not in (i.extra or {})]
                if lacking and key not in COMPUTED_KEYS:
                    raise ValueError(
                        f"model {model.name!r}: route key {key!r} is not in the metadata of "
                        f"{len(lacking)} input image(s) (e.g. {lacking[0].image_id!r}) and "
                        f"cannot be computed from the pixels (computable: "
                        f"{sorted(COMPUTED_KEYS)})"
                    )

    def route_value(self, key: str, image: np.ndarray, item: InputImage) -> Any:
        """The image's ``key``: its metadata value, else computed from the pixels."""
        extra = item.extra or {}
        if key in extra:
            return extra[key]
        if key in COMPUTED_KEYS:
            return COMPUTED_KEYS[key][0](image)
        raise ValueError(
            f"image {item.image_id}: route key {key!r} is not in its metadata and cannot be "
            f"computed from the pixels (computable: {sorted(COMPUTED_KEYS)})"
        )

    def routed(self, image: np.ndarray, item: InputImage) -> list[str]:
        """Names of the models that run on this image."""
        out, values = [], {}
        for model, _, ids in self.members:
            if ids is not None:
                ok = item.image_id in ids
            elif model.route and "key" in model.route:
                key = model.route["key"]
                if key not in values:
                    values[key] = self.route_value(key, image, item)
                ok = values[key] in model.route["values"]
            else:
                ok = True
            if ok:
                out.append(model.name)
        return out

    def raw_views(
        self, image: np.ndarray, item: InputImage, mask_heads: list | None = None
    ) -> tuple[list[RawDetections], list[float], list[str]]:
        """Every routed model's detections on every view, in the original frame.

        With a ``mask_heads`` list, one callable per (model, view) is appended to it:
        fused boxes in the original frame -> that model's mask probabilities in that view,
        mapped back to the original orientation (mask-head re-run fusion).
        """
        h, w = image.shape[:2]
        raws, weights, names = [], [], []
        routed = self.routed(image, item)
        for model, predictor, _ in self.members:
            if model.name not in routed:
                continue
            for view in self.views:
                if mask_heads is None:
                    raw = predictor.raw(view.apply(image), scale=view.scale)
                else:
                    raw, head = predictor.raw_with_mask_head(view.apply(image), scale=view.scale)
                    mask_heads.append(
                        lambda boxes, classes, view=view, head=head: invert_grids(
                            view, head(forward_boxes(view, boxes, (h, w)), classes)
                        )
                    )
                raws.append(view.invert(raw, (h, w)))
                weights.append(model.weight)
                names.append(f"{model.name}/{view.name}")
        return raws, weights, names

    def fused(self, image: np.ndarray, item: InputImage) -> ImagePrediction:
        """Every routed model on every view, fused; before post-processing."""
        rerun = self.spec.fusion.get("method", "wbf_mask_vote") in NEEDS_MASK_HEADS
        heads: list | None = [] if rerun else None
        raws, weights, names = self.raw_views(image, item, heads)
        if not raws:
            raise ValueError(f"image {item.image_id}: no model is routed to it")
        return fuse_views(
            raws, weights, names, self.spec.fusion, item.image_id, self.mask_thresh, heads
        )

    def __call__(self, image: np.ndarray, item: InputImage) -> ImagePrediction:
        return self.postprocess(self.fused(image, item))


def fuse_views(
    raws: Sequence[RawDetections],
    weights: Sequence[float],
    names: Sequence[str],
    fusion: dict[str, Any],
    image_id: str,
    mask_thresh: float,
    mask_heads: Sequence[Any] | None = None,
) -> ImagePrediction:
    """One prediction from the detections of several models / views (``fusion``: the
    ensemble's ``{method, ...options}``; ``mask_heads`` for the methods that re-run the
    mask heads); a single input is only pasted."""
    if len(raws) == 1:  # one model, one view: nothing to fuse
        return raw_to_prediction(raws[0], image_id, mask_thresh)
    options = {k: v for k, v in fusion.items() if k != "method"}
    if fusion.get("method", "wbf_mask_vote") in NEEDS_MASK_HEADS:
        options["mask_heads"] = mask_heads
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


def _file_identity(path: str) -> str:
    """sha256 of a weights file's bytes ("" for none; the string itself if not local)."""
    if not path or not os.path.isfile(path):
        return str(path)
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()

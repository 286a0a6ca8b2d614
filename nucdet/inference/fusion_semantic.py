"""Cross-family fusion: a U-Net's foreground probability re-weights Mask R-CNN's masks.

``fuse_unet_fg_reweight`` (``FUSION_METHODS["unet_fg_reweight"]``; ensemble YAML
``fusion: {method: unet_fg_reweight, fg_models: [unet], alpha: 0.5, mode: avg}``):

1. The inputs are split by model name (the part of ``names[t]`` before ``/``, as
   ``EnsemblePredictor`` names them ``model/view``): those of ``fg_models`` are the
   foreground sources, the others the instance sources.
2. Foreground map: every foreground input's detections are pasted (``paste_grids``) and
   the largest probability per pixel kept (a U-Net's grids hold its foreground probability
   on each instance's pixels, so this is its foreground map where it found instances; 0
   elsewhere, i.e. under its ``MODEL.UNET.DECODE.FG_THRESH``: lower that threshold in the
   member's ``opts`` to keep more of the map); the maps of several views / models are
   averaged with the input weights.
3. The instance inputs are clustered by weighted box fusion (``wbf_clusters``, as
   ``wbf_mask_vote``: per class, ``iou_thr``, ``conf_type``), and each cluster's mask
   probability is the score x weight mean of its members' pasted probabilities in the
   hull of their paste extents.
4. Each cluster's probability ``p`` is combined with the foreground ``f`` on its pixels:
   ``mode="avg"``: ``(1 - alpha) * p + alpha * f``; ``mode="mul"``: ``p * f ** alpha``
   (``alpha`` 1: the product; 0: Mask R-CNN alone); the mask is ``>= mask_thresh``.
   Boxes, scores, classes and membership are WBF's of the instance inputs.

Instances come only from the instance sources: the foreground sources decide which of
their pixels are cell. Same output as every fusion method (``FusionResult``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nucdet.inference.masks import CropMasks, paste_extent, paste_grids
from nucdet.structures import ImagePrediction, RawDetections

__all__ = ["SEMANTIC_MODES", "foreground_map", "fuse_unet_fg_reweight"]

SEMANTIC_MODES = ("avg", "mul")


def foreground_map(raws: Sequence[RawDetections], weights: Sequence[float]) -> np.ndarray:
    """(H, W) float32 weighted mean over ``raws`` of the per-pixel largest pasted
    probability of each input's detections (step 2 of the module docstring)."""
    h, w = raws[0].height, raws[0].width
    total = np.zeros((h, w), np.float64)
    for raw, wt in zip(raws, weights):
        one = np.zeros((h, w), np.float32)
        crops = paste_grids(raw.mask_probs, raw.boxes, h, w)
        for (x0, y0, x1, y1), c in zip(crops.boxes.tolist(), crops.crops):
            np.maximum(one[y0:y1, x0:x1], c, out=one[y0:y1, x0:x1])
        total += wt * one
    return (total / float(np.sum(weights))).astype(np.float32)


def _split_inputs(
    names: Sequence[str] | None, n: int, fg_models: Sequence[str]
) -> tuple[list[int], list[int]]:
    if not fg_models:
        raise ValueError(
            "unet_fg_reweight needs fg_models: the names of the models whose foreground "
            "re-weights the others' masks (fusion: {method: unet_fg_reweight, fg_models: [..]})"
        )
    if names is None:
        raise ValueError("unet_fg_reweight needs the input names ('model/view') to find fg_models")
    models = [str(s).split("/", 1)[0] for s in names]
    fg = [t for t in range(n) if models[t] in set(fg_models)]
    inst = [t for t in range(n) if models[t] not in set(fg_models)]
    if not fg:
        raise ValueError(
            f"unet_fg_reweight: fg_models {list(fg_models)} match none of the inputs "
            f"{sorted(set(models))} (a model routed away from this image?)"
        )
    if not inst:
        raise ValueError(
            f"unet_fg_reweight: every input is a foreground model ({list(fg_models)}); "
            "it needs instance models (Mask R-CNN) to re-weight"
        )
    return fg, inst


def fuse_unet_fg_reweight(
    raws: Sequence[RawDetections],
    weights: Sequence[float] | None = None,
    *,
    fg_models: Sequence[str] = (),
    alpha: float = 0.5,
    mode: str = "avg",
    image_id: str = "",
    names: Sequence[str] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "box_and_model_avg",
    mask_thresh: float = 0.5,
    verify: bool = False,
):
    """Instance masks of the non-``fg_models`` inputs re-weighted by the ``fg_models``'
    foreground probability (module docstring). Returns a ``FusionResult``."""
    # Imported here: fusion.py registers this function in FUSION_METHODS.
    from nucdet.inference.fusion import FusionResult, validate_inputs
    from nucdet.inference.wbf import wbf_clusters

    if mode not in SEMANTIC_MODES:
        raise ValueError(f"unet_fg_reweight mode must be one of {SEMANTIC_MODES}, got {mode!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"unet_fg_reweight alpha must be in [0, 1], got {alpha}")
    w = validate_inputs(raws, weights, names)
    fg_idx, inst_idx = _split_inputs(names, len(raws), fg_models)
    h, wd = raws[0].height, raws[0].width
    empty = FusionResult(ImagePrediction(image_id, h, wd), np.zeros((0, 4), np.float32), [])
    inst_raws = [raws[t] for t in inst_idx]
    if sum(len(r) for r in inst_raws) == 0:
        return empty
    scale = np.array([wd, h, wd, h], np.float64)
    cl = wbf_clusters(
        [r.boxes.astype(np.float64) / scale for r in inst_raws],
        [r.scores for r in inst_raws],
        [r.classes for r in inst_raws],
        w[inst_idx],
        iou_thr=iou_thr,
        skip_box_thr=skip_box_thr,
        conf_type=conf_type,
        names=[names[t] for t in inst_idx] if names is not None else None,
        verify=verify,
    )
    if len(cl.boxes) == 0:
        return empty
    fg = foreground_map([raws[t] for t in fg_idx], w[fg_idx])
    masks, crop_boxes = [], []
    for mem in cl.members:
        grids = np.stack([inst_raws[t].mask_probs[j] for t, j in mem.tolist()])
        boxes = np.stack([inst_raws[t].boxes[j] for t, j in mem.tolist()])
        mw = np.array([inst_raws[t].scores[j] * w[inst_idx[t]] for t, j in mem.tolist()])
        ext = paste_extent(boxes, h, wd)
        crop = np.concatenate([ext[:, :2].min(axis=0), ext[:, 2:].max(axis=0)])
        pasted = paste_grids(grids, boxes, h, wd, crop_boxes=np.tile(crop, (len(mem), 1)))
        norm = mw / mw.sum() if mw.sum() > 0 else np.full(len(mw), 1.0 / len(mw))
        p = sum(float(c) * x.astype(np.float64) for c, x in zip(norm, pasted.crops))
        x0, y0, x1, y1 = crop.tolist()
        f = fg[y0:y1, x0:x1].astype(np.float64)
        q = (1.0 - alpha) * p + alpha * f if mode == "avg" else p * f**alpha
        masks.append(q >= mask_thresh)
        crop_boxes.append(crop)
    crops = CropMasks(np.array(crop_boxes, np.int64), masks, h, wd)
    pred = ImagePrediction(image_id, h, wd, crops.to_rles(), cl.scores, cl.labels)
    members = [np.stack([np.asarray(inst_idx)[m[:, 0]], m[:, 1]], axis=1) for m in cl.members]
    return FusionResult(pred, (cl.boxes * scale).astype(np.float32), members)

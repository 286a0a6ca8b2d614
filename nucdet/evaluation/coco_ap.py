"""COCO AP (segm and bbox) through pycocotools, with a detection cap fit for nuclei.

pycocotools keeps the 100 best detections per image by default, and its ``summarize``
reads AP at ``maxDets == 100`` whatever ``params.maxDets`` says (it returns -1 when 100
is not in the list). Nuclei images hold 300-800+ objects, so both would give wrong
numbers. Here ``params.maxDets = [1, 10, max_dets]`` (default 1000) and every AP/AR
statistic is read at the largest cap, the way detectron2's ``COCOevalMaxDets`` does; with
``max_dets=100`` the numbers are pycocotools' own ``stats``.

Values are fractions in [0, 1] (pycocotools' scale); statistics pycocotools leaves
undefined (-1: no ground truth in that area range or category) are NaN. pycocotools'
progress prints are swallowed; nothing is printed.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from nucdet.structures import ImagePrediction

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def coco_api(gt: Mapping[str, Any] | COCO) -> COCO:
    """A pycocotools ``COCO`` index over a COCO instance dict (``iscrowd`` defaults to 0)."""
    if isinstance(gt, COCO):
        return gt
    data = dict(gt)
    anns = []
    for k, a in enumerate(data.get("annotations", [])):
        a = dict(a)
        a.setdefault("iscrowd", 0)
        a.setdefault("id", k + 1)
        if a["id"] == 0:  # COCOeval uses annotation id 0 for "unmatched"
            raise ValueError("COCO annotation ids must be >= 1")
        anns.append(a)
    data["annotations"] = anns
    with _quiet():
        api = COCO()
        api.dataset = data
        api.createIndex()
    return api


def prediction_to_results(
    pred: ImagePrediction, image_id: int, category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """COCO results entries of one image (contiguous class k -> ``category_ids[k]``)."""
    if len(pred) == 0:
        return []
    if pred.classes.max() >= len(category_ids) or pred.classes.min() < 0:
        raise ValueError(
            f"image {pred.image_id}: class index {int(pred.classes.max())} outside the "
            f"{len(category_ids)} categories"
        )
    boxes = pred.boxes_xywh()
    out = []
    for k, rle in enumerate(pred.rles):
        counts = rle["counts"]
        out.append(
            {
                "image_id": int(image_id),
                "category_id": int(category_ids[int(pred.classes[k])]),
                "score": float(pred.scores[k]),
                "segmentation": {
                    "size": list(rle["size"]),
                    "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
                },
                "bbox": [float(v) for v in boxes[k]],
            }
        )
    return out


def _load_results(api: COCO, results: Sequence[Mapping[str, Any]], iou_type: str) -> COCO:
    known = set(api.getImgIds())
    dets = []
    for k, r in enumerate(results):
        if r.get("image_id") not in known:
            raise ValueError(f"result {k}: image_id {r.get('image_id')!r} is not in the GT")
        d = dict(r)  # loadRes writes area/bbox/id into the dicts: keep the caller's intact
        if iou_type == "segm":
            if "segmentation" not in d:
                raise ValueError(f"result {k}: no 'segmentation' for segm evaluation")
            # Without a bbox, loadRes takes the area from the mask (COCO's area ranges).
            d.pop("bbox", None)
        elif "bbox" not in d:
            if "segmentation" not in d:
                raise ValueError(f"result {k}: neither 'bbox' nor 'segmentation'")
        dets.append(d)
    if dets:
        with _quiet():
            return api.loadRes(dets)
    empty = COCO()
    empty.dataset = {
        "images": list(api.dataset.get("images", [])),
        "categories": copy.deepcopy(api.dataset.get("categories", [])),
        "annotations": [],
    }
    with _quiet():
        empty.createIndex()
    return empty


def _stat(e: COCOeval, ap: bool, iou: float | None = None, area: str = "all", m: int = -1):
    p = e.params
    s = e.eval["precision"] if ap else e.eval["recall"]
    if iou is not None:
        s = s[np.flatnonzero(np.isclose(p.iouThrs, iou))]
    a = p.areaRngLbl.index(area)
    s = s[..., a, m]
    valid = s[s > -1]
    return float(valid.mean()) if valid.size else float("nan")


def coco_evaluate(
    gt: Mapping[str, Any] | COCO,
    results: Sequence[Mapping[str, Any]],
    *,
    iou_type: str = "segm",
    max_dets: int = 1000,
    img_ids: Sequence[int] | None = None,
    fast: bool = True,
) -> dict[str, float]:
    """COCO AP of ``results`` (COCO results entries) against ``gt`` (COCO dict or API).

    Args:
        iou_type: "segm" or "bbox".
        max_dets: detections kept per image (the highest scores), default 1000.
        img_ids: evaluate on these image ids only (default: all GT images).
        fast: use detectron2's C++ ``COCOeval_opt`` when available (same numbers,
            seconds instead of minutes on images with hundreds of objects).

    Returns:
        ``AP, AP50, AP75, APs, APm, APl`` (at ``max_dets``), ``AR@1``, ``AR@10``,
        ``AR@<max_dets>`` and ``AP-<category name>`` for every category, as fractions.
    """
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    if max_dets < 1:
        raise ValueError(f"max_dets must be >= 1, got {max_dets}")
    api = coco_api(gt)
    dt = _load_results(api, results, iou_type)
    cls = COCOeval
    if fast:
        try:
            from detectron2.evaluation.fast_eval_api import COCOeval_opt as cls
        except ImportError:
            cls = COCOeval
    with _quiet():
        e = cls(api, dt, iou_type)
        e.params.maxDets = [1, min(10, max_dets), max_dets]
        if img_ids is not None:
            e.params.imgIds = sorted(int(i) for i in img_ids)
        e.evaluate()
        e.accumulate()
    out = {
        "AP": _stat(e, True),
        "AP50": _stat(e, True, iou=0.5),
        "AP75": _stat(e, True, iou=0.75),
        "APs": _stat(e, True, area="small"),
        "APm": _stat(e, True, area="medium"),
        "APl": _stat(e, True, area="large"),
        "AR@1": _stat(e, False, m=0),
        f"AR@{min(10, max_dets)}": _stat(e, False, m=1),
        f"AR@{max_dets}": _stat(e, False, m=2),
    }
    precision = e.eval["precision"]  # (iou, recall, category, area, maxdets)
    for k, cat_id in enumerate(e.params.catIds):
        name = api.cats[cat_id]["name"]
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[f"AP-{name}"] = float(p.mean()) if p.size else float("nan")
    return out

"""COCO AP: equal to pycocotools' own COCOeval, and not truncated at 100 detections."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from nucdet.evaluation.coco_ap import coco_evaluate, prediction_to_results
from nucdet.io.rle import mask_to_coco_rle
from nucdet.structures import ImagePrediction


def _square_grid(n: int, cell: int = 6, size: int = 4, cols: int = 25):
    """n non-overlapping size x size squares on a grid; returns (h, w, masks)."""
    rows = (n + cols - 1) // cols
    h, w = rows * cell, cols * cell
    masks = np.zeros((n, h, w), bool)
    for k in range(n):
        y, x = (k // cols) * cell, (k % cols) * cell
        masks[k, y : y + size, x : x + size] = True
    return h, w, masks


def _gt_dict(images, categories=("nucleus",)):
    """images: list of (h, w, masks, category indices)."""
    out = {"images": [], "annotations": [], "categories": []}
    out["categories"] = [{"id": k + 1, "name": n} for k, n in enumerate(categories)]
    for i, (h, w, masks, cats) in enumerate(images):
        out["images"].append({"id": i + 1, "file_name": f"im{i}.png", "height": h, "width": w})
        for m, c in zip(masks, cats):
            rle = mask_to_coco_rle(m)
            ys, xs = np.nonzero(m)
            out["annotations"].append(
                {
                    "id": len(out["annotations"]) + 1,
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "segmentation": rle,
                    "area": int(m.sum()),
                    "bbox": [
                        float(xs.min()),
                        float(ys.min()),
                        float(xs.max() - xs.min() + 1),
                        float(ys.max() - ys.min() + 1),
                    ],
                    "iscrowd": 0,
                }
            )
    return out


def _pycocotools_stats(gt, results, iou_type, max_dets=(1, 10, 100)):
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = gt
        api.createIndex()
        dt = api.loadRes([dict(r) for r in results])
        e = COCOeval(api, dt, iou_type)
        e.params.maxDets = list(max_dets)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def _random_dataset(seed: int):
    rng = np.random.default_rng(seed)
    images, results = [], []
    for i in range(3):
        h, w = 40, 48
        n = int(rng.integers(3, 9))
        masks = np.zeros((n, h, w), bool)
        for k in range(n):
            y, x = int(rng.integers(0, h - 12)), int(rng.integers(0, w - 12))
            masks[k, y : y + int(rng.integers(3, 12)), x : x + int(rng.integers(3, 12))] = True
        cats = rng.integers(0, 2, n)
        images.append((h, w, masks, cats))
        dets = []
        for k in range(n):
            if rng.random() < 0.8:
                m = np.roll(masks[k], int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
                dets.append((m, cats[k] if rng.random() < 0.9 else 1 - cats[k]))
        for _ in range(int(rng.integers(0, 4))):
            m = np.zeros((h, w), bool)
            y, x = int(rng.integers(0, h - 6)), int(rng.integers(0, w - 6))
            m[y : y + 5, x : x + 5] = True
            dets.append((m, int(rng.integers(0, 2))))
        rles = [mask_to_coco_rle(m) for m, _ in dets]
        pred = ImagePrediction(f"im{i}", h, w, rles, rng.random(len(dets)), [c for _, c in dets])
        results += prediction_to_results(pred, i + 1, [1, 2])
    return _gt_dict(images, ("a", "b")), results


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
@pytest.mark.parametrize("fast", [False, True])
def test_equals_pycocotools_with_the_same_cap(iou_type, fast):
    for seed in range(3):
        gt, results = _random_dataset(seed)
        ref_results = results
        if iou_type == "segm":  # what coco_evaluate does: mask area, not box area
            ref_results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        ref = _pycocotools_stats(gt, ref_results, iou_type)
        got = coco_evaluate(gt, results, iou_type=iou_type, max_dets=100, fast=fast)
        names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR@1", "AR@10", "AR@100"]
        for name, value in zip(names, ref[:9]):
            if value == -1:
                assert np.isnan(got[name]), name
            else:
                assert got[name] == pytest.approx(value, abs=1e-12), (seed, name)
        assert set(got) >= {"AP-a", "AP-b"}


def test_500_objects_are_not_truncated():
    h, w, masks = _square_grid(500)
    gt = _gt_dict([(h, w, masks, [0] * 500)])
    # 500 perfect detections with distinct scores.
    pred = ImagePrediction(
        "im0", h, w, [mask_to_coco_rle(m) for m in masks], np.linspace(1, 0.5, 500), [0] * 500
    )
    results = prediction_to_results(pred, 1, [1])
    full = coco_evaluate(gt, results, max_dets=1000)
    capped = coco_evaluate(gt, results, max_dets=100)
    # Cap 1000: every object found at precision 1 -> AP 1. Cap 100: the 100 best detections
    # reach recall 100/500 = 0.2 at precision 1, so 21 of COCO's 101 recall points
    # (0.00 .. 0.20) have precision 1 and the rest 0 -> AP = 21/101.
    assert full["AP"] == 1.0 and full["AP50"] == 1.0 and full["AR@1000"] == 1.0
    assert capped["AP"] == pytest.approx(21 / 101)
    assert capped["AR@100"] == pytest.approx(0.2)
    assert capped["AP"] < full["AP"]
    # The same via pycocotools' own stats at the default cap of 100.
    assert _pycocotools_stats(gt, [dict(r) for r in results], "segm")[0] == pytest.approx(21 / 101)


def test_cap_1000_matches_detectron2_maxdets_evaluator():
    from detectron2.evaluation.coco_evaluation import COCOevalMaxDets

    h, w, masks = _square_grid(300)
    gt = _gt_dict([(h, w, masks, [0] * 300)])
    rng = np.random.default_rng(5)
    shifted = [np.roll(m, int(rng.integers(-1, 2)), axis=1) for m in masks]
    pred = ImagePrediction(
        "im0", h, w, [mask_to_coco_rle(m) for m in shifted], rng.random(300), [0] * 300
    )
    results = [
        {k: v for k, v in r.items() if k != "bbox"} for r in prediction_to_results(pred, 1, [1])
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = gt
        api.createIndex()
        e = COCOevalMaxDets(api, api.loadRes([dict(r) for r in results]), "segm")
        e.params.maxDets = [1, 10, 1000]
        e.evaluate()
        e.accumulate()
        e.summarize()
    got = coco_evaluate(gt, results, max_dets=1000, fast=False)
    assert got["AP"] == pytest.approx(e.stats[0], abs=1e-12)
    assert got["AP75"] == pytest.approx(e.stats[2], abs=1e-12)


def test_no_detections_and_unknown_images():
    h, w, masks = _square_grid(3)
    gt = _gt_dict([(h, w, masks, [0, 0, 0])])
    res = coco_evaluate(gt, [], max_dets=1000)
    assert res["AP"] == 0.0
    bad = [
        {"image_id": 7, "category_id": 1, "score": 1.0, "segmentation": mask_to_coco_rle(masks[0])}
    ]
    with pytest.raises(ValueError, match="result 0: image_id 7"):
        coco_evaluate(gt, bad)
    cls_bad = ImagePrediction("im0", h, w, [mask_to_coco_rle(masks[0])], [1.0], [3])
    with pytest.raises(ValueError, match="class index 3"):
        prediction_to_results(cls_bad, 1, [1])

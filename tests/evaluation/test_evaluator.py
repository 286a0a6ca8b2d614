"""NucleiEvaluator on a registered tiny synthetic dataset with hand-made model outputs.

Expected values are worked out by hand in the comments (MaP-IoU and COCO AP).
"""

from __future__ import annotations

import csv
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, Instances

from nucdet.evaluation.evaluator import NucleiEvaluator, instances_to_prediction
from nucdet.io.rle import mask_to_coco_rle

H, W = 10, 12


def _box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


A1, A2 = _box(0, 3, 0, 3), _box(5, 9, 6, 10)  # image a: two objects
B1 = _box(2, 6, 2, 6)  # image b: one 4x4 object, annotated as a polygon
B_PRED = _box(2, 6, 2, 5)  # 4x3 inside it: IoU 12/16 = 0.75 exactly
SPURIOUS = _box(8, 10, 0, 2)


def _ann(mask, polygon=None):
    ys, xs = np.nonzero(mask)
    return {
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
        "bbox_mode": BoxMode.XYXY_ABS,
        "category_id": 0,
        "segmentation": polygon if polygon is not None else mask_to_coco_rle(mask),
        "iscrowd": 0,
    }


def _dicts():
    # The polygon traces the outer edges of pixels 2..5 (rows and columns): exactly B1.
    poly = [[2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]]
    return [
        {
            "file_name": "/x/img_a.png",
            "image_id": 0,
            "height": H,
            "width": W,
            "modality": "fluo",
            "annotations": [_ann(A1), _ann(A2)],
        },
        {
            "file_name": "/x/img_b.png",
            "image_id": 1,
            "height": H,
            "width": W,
            "modality": "brightfield",
            "annotations": [_ann(B1, poly)],
        },
        {
            "file_name": "/x/img_c.png",
            "image_id": 2,
            "height": H,
            "width": W,
            "modality": "fluo",
            "annotations": [],
        },
    ]


@pytest.fixture()
def dataset_name():
    name = f"nucdet_test_evaluator_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, _dicts)
    MetadataCatalog.get(name).set(thing_classes=["nucleus"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _output(masks, scores):
    inst = Instances((H, W))
    inst.pred_masks = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, H, W), bool))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.zeros(len(masks), dtype=torch.int64)
    return {"instances": inst}


def test_polygon_is_the_expected_mask():
    from nucdet.io.rle import coco_rle_to_mask, segmentation_to_rle

    poly = _dicts()[1]["annotations"][0]["segmentation"]
    np.testing.assert_array_equal(coco_rle_to_mask(segmentation_to_rle(poly, H, W)), B1)


def _run(evaluator):
    evaluator.reset()
    inputs = [{"file_name": d["file_name"], "image_id": d["image_id"]} for d in _dicts()]
    evaluator.process(
        inputs[:2], [_output([A2, A1], [0.8, 0.9]), _output([B_PRED, SPURIOUS], [0.9, 0.3])]
    )
    evaluator.process(inputs[2:], [_output([], [])])
    return evaluator.evaluate()


def test_evaluator_values_by_hand(dataset_name, tmp_path):
    ev = NucleiEvaluator(dataset_name, output_dir=str(tmp_path), score_thresh=0.5)
    res = _run(ev)
    # MaP-IoU (spurious mask has score 0.3 < 0.5 and is dropped):
    #   a: both exact -> 1. b: IoU 0.75 passes t = .50 .. .70 (5 of 10) -> 0.5.
    #   c: no GT, no prediction -> 1. Mean (1 + 0.5 + 1) / 3.
    assert res["segm"]["MaP-IoU"] == pytest.approx(2.5 / 3)
    assert res["segm"]["MaP-IoU-fluo"] == pytest.approx(1.0)
    assert res["segm"]["MaP-IoU-brightfield"] == pytest.approx(0.5)
    # COCO segm AP (all predictions, IoU >= t): 3 GT objects. For t <= 0.75 every object
    # is found and the spurious detection ranks last -> AP 1 (6 thresholds). For t > 0.75
    # the ranked list is TP(a, .9) FP(b, .9) TP(a, .8) FP(.3): recall 1/3 at precision 1,
    # 2/3 at 2/3 -> (34 * 1 + 33 * 2/3) / 101 = 56/101 (4 thresholds).
    assert res["segm"]["AP"] == pytest.approx(100 * (6 + 4 * 56 / 101) / 10)
    assert res["segm"]["AP50"] == pytest.approx(100.0)
    assert res["segm"]["AP75"] == pytest.approx(100.0)
    assert res["segm"]["AP-nucleus"] == pytest.approx(res["segm"]["AP"])
    assert set(res["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    # Counting after the threshold: 2 + 1 + 0 predicted for 2 + 1 + 0 objects.
    assert res["count"]["MAE"] == 0.0 and res["count"]["n_pred"] == 3.0
    with open(tmp_path / "per_image_metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image_id"] for r in rows] == ["img_a", "img_b", "img_c"]
    assert [float(r["map_iou"]) for r in rows] == [1.0, 0.5, 1.0]
    assert rows[1]["modality"] == "brightfield" and rows[1]["p@0.75"] == "0.0"


def test_postprocess_and_extra_metrics(dataset_name):
    def drop_all_but_best(p):
        return p.select(np.argsort(-p.scores)[:1])

    ev = NucleiEvaluator(
        dataset_name,
        metrics=("map_iou", "voc", "glas"),
        postprocess=drop_all_but_best,
        distributed=False,
    )
    res = _run(ev)
    # a keeps only its best prediction (A1): TP 1, FN 1 -> 1/2 at every t. b: its best is
    # B_PRED -> 0.5 as before. c -> 1. Mean (0.5 + 0.5 + 1) / 3.
    assert res["segm"]["MaP-IoU"] == pytest.approx(2 / 3)
    assert "AP" not in res["segm"] and "bbox" not in res
    # VOC on raw predictions: a -> 1; b: TP then FP, 1 GT -> 1; c: empty -> 1.
    assert res["voc"]["AP50"] == pytest.approx(1.0)
    assert set(res["glas"]) == {"F1", "ObjDice", "ObjHausdorff"}
    assert res["count"]["n_pred"] == 2.0


def test_unknown_image_and_bad_outputs(dataset_name):
    ev = NucleiEvaluator(dataset_name)
    ev.reset()
    assert ev.evaluate() == {}  # nothing processed: nothing to report (as COCOEvaluator)
    ev.process([{"file_name": "/x/other.png"}], [_output([A1], [0.9])])
    with pytest.raises(KeyError, match="other"):
        ev.evaluate()
    inst = Instances((H, W))
    inst.scores = torch.ones(1)
    inst.pred_classes = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="pred_masks"):
        instances_to_prediction(inst, "x")
    with pytest.raises(ValueError, match="unknown metrics"):
        NucleiEvaluator(dataset_name, metrics=("map",))


def test_instances_to_prediction_roundtrip():
    out = _output([A1, B1], [0.7, 0.4])["instances"]
    p = instances_to_prediction(out, "img")
    np.testing.assert_array_equal(p.masks(), np.stack([A1, B1]))
    assert p.scores.tolist() == pytest.approx([0.7, 0.4]) and p.classes.tolist() == [0, 0]

"""One prediction set scored three ways: pycocotools' COCOeval, detectron2's COCOEvaluator
and nucdet (NucleiEvaluator, the scoring CLI, the inference job's COCO file).

The dataset is what breaks naive id handling: a COCO file whose images all share the file
stem (``<sample>/image.png``, the per-sample label layout), whose image ids are neither
1..N nor in file order (101, 205, 7) and whose category ids are not contiguous (3, 7).
Image 7 gets more than 100 detections, so COCO AP at 100 and at 1000 detections per image
differ, and each setting is compared with the same ``maxDets`` everywhere.
"""

from __future__ import annotations

import json
import uuid

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from nucdet.data.register import register_coco
from nucdet.evaluation import score
from nucdet.evaluation.evaluator import NucleiEvaluator, build_evaluators
from nucdet.inference.pipeline import dataset_category_ids, dataset_inputs, run_inference
from nucdet.io.rle import mask_to_coco_rle
from nucdet.structures import ImagePrediction

H, W = 40, 48
IMAGE_IDS = (101, 205, 7)
CAT_IDS = (3, 7)  # class 0 = "alpha" (COCO id 3), class 1 = "beta" (COCO id 7)


def _rect(y0, x0, h, w):
    m = np.zeros((H, W), bool)
    m[y0 : y0 + h, x0 : x0 + w] = True
    return m


# Per image: ground truth (mask, class) and predictions (mask, class, score).
GT = {
    101: [(_rect(2, 2, 8, 8), 0), (_rect(20, 20, 10, 12), 1), (_rect(5, 30, 6, 6), 0)],
    205: [(_rect(10, 10, 12, 12), 1), (_rect(28, 2, 8, 14), 0)],
    7: [(_rect(30, 30, 8, 8), 0)],
}


def _predictions() -> dict[int, list[tuple[np.ndarray, int, float]]]:
    return {
        101: [
            (_rect(2, 2, 8, 7), 0, 0.9),  # IoU 56/64
            (_rect(21, 20, 10, 12), 1, 0.8),  # IoU 108/132
            (_rect(5, 30, 6, 6), 1, 0.7),  # right place, wrong class
            (_rect(34, 0, 4, 4), 0, 0.95),  # false positive above the others
        ],
        205: [
            (_rect(10, 10, 12, 11), 1, 0.85),
            (_rect(28, 4, 8, 12), 0, 0.6),  # IoU 96/112
            (_rect(0, 40, 5, 5), 1, 0.3),
        ],
        # 120 spurious 2x2 detections, then the one true object ranked 121st: found with
        # maxDets 1000, lost with maxDets 100.
        7: [(_rect(2 * (k // 12), 2 * (k % 12), 2, 2), 0, 0.9 - k * 0.001) for k in range(120)]
        + [(_rect(30, 30, 8, 8), 0, 0.5)],
    }


@pytest.fixture()
def dataset(tmp_path):
    """COCO file + image files, registered under a fresh name."""
    images, anns = [], []
    for sample, image_id in zip(("s1", "s2", "s3"), IMAGE_IDS):
        (tmp_path / "images" / sample).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "images" / sample / "image.png"), np.zeros((H, W, 3), np.uint8))
        images.append({"id": image_id, "file_name": f"{sample}/image.png", "height": H, "width": W})
        for mask, cls in GT[image_id]:
            ys, xs = np.nonzero(mask)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": CAT_IDS[cls],
                    "segmentation": mask_to_coco_rle(mask),
                    "area": int(mask.sum()),
                    "bbox": [
                        int(xs.min()),
                        int(ys.min()),
                        int(np.ptp(xs)) + 1,
                        int(np.ptp(ys)) + 1,
                    ],
                    "iscrowd": 0,
                }
            )
    cats = [{"id": 3, "name": "alpha"}, {"id": 7, "name": "beta"}]
    gt_json = tmp_path / "gt.json"
    gt_json.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    name = f"nucdet_test_interop_{uuid.uuid4().hex[:8]}"
    register_coco(name, gt_json, tmp_path / "images")
    yield name, gt_json
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _instances(preds):
    masks = np.stack([m for m, _, _ in preds])
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    inst = Instances((H, W))
    inst.pred_masks = torch.from_numpy(masks)
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.scores = torch.tensor([s for _, _, s in preds], dtype=torch.float32)
    inst.pred_classes = torch.tensor([c for _, c, _ in preds], dtype=torch.int64)
    return inst


def _run(evaluator, name):
    preds = _predictions()
    evaluator.reset()
    for d in DatasetCatalog.get(name):
        evaluator.process([d], [{"instances": _instances(preds[d["image_id"]])}])
    return evaluator.evaluate()


def _pycocotools_ap(gt_json, results_json, max_dets):
    """AP@[.5:.95] in percent from pycocotools' own COCOeval, read at ``max_dets``."""
    gt = COCO(str(gt_json))
    e = COCOeval(gt, gt.loadRes(str(results_json)), "segm")
    e.params.maxDets = [1, 10, max_dets]
    e.evaluate()
    e.accumulate()
    p = e.eval["precision"][:, :, :, 0, -1]  # (iou, recall, class, area "all", maxDets[-1])
    if max_dets == 100:  # pycocotools' own summary reads exactly this number
        e.summarize()
        assert 100 * e.stats[0] == pytest.approx(100 * p[p > -1].mean(), abs=1e-9)
    return 100 * float(p[p > -1].mean())


@pytest.mark.parametrize("max_dets", [100, 1000])
def test_one_prediction_file_scored_three_ways(dataset, tmp_path, max_dets):
    name, gt_json = dataset
    out = tmp_path / f"nucdet_{max_dets}"
    ours = _run(
        NucleiEvaluator(name, output_dir=str(out), max_dets=max_dets, distributed=False), name
    )
    results_json = out / "coco_instances_results.json"
    written = json.loads(results_json.read_text())
    assert {r["image_id"] for r in written} == set(IMAGE_IDS)
    assert {r["category_id"] for r in written} == set(CAT_IDS)

    d2_dir = tmp_path / f"d2_{max_dets}"
    theirs = _run(
        COCOEvaluator(
            name,
            tasks=("segm",),
            distributed=False,
            output_dir=str(d2_dir),
            max_dets_per_image=max_dets,
        ),
        name,
    )
    reference = _pycocotools_ap(gt_json, results_json, max_dets)
    cli = score.run(
        score.build_parser().parse_args(
            ["--submission", str(results_json), "--format", "coco", "--gt", str(gt_json)]
            + ["--max-dets", str(max_dets)]
        )
    )
    cli_dataset = score.run(
        score.build_parser().parse_args(
            ["--submission", str(results_json), "--format", "coco", "--dataset", name]
            + ["--max-dets", str(max_dets)]
        )
    )
    assert 5 < reference < 95  # a real ranking problem, not all-or-nothing
    assert theirs["segm"]["AP"] == pytest.approx(reference, abs=1e-6)
    assert ours["segm"]["AP"] == pytest.approx(reference, abs=1e-6)
    assert cli["results"]["segm"]["AP"] == pytest.approx(reference, abs=1e-6)
    assert cli_dataset["results"]["segm"]["AP"] == pytest.approx(reference, abs=1e-6)
    # detectron2's own results file scores the same with pycocotools.
    d2_file = d2_dir / "coco_instances_results.json"
    assert _pycocotools_ap(gt_json, d2_file, max_dets) == pytest.approx(reference, abs=1e-6)


def test_maxdets_matters_here(dataset, tmp_path):
    """The fixture is built so that the detection cap changes AP (else the test above
    could not tell the two settings apart)."""
    name, gt_json = dataset
    _run(NucleiEvaluator(name, output_dir=str(tmp_path), distributed=False), name)
    f = tmp_path / "coco_instances_results.json"
    assert _pycocotools_ap(gt_json, f, 1000) > _pycocotools_ap(gt_json, f, 100) + 0.1


def test_evaluators_selected_by_config_and_merged(dataset, tmp_path):
    from nucdet.config import add_nucdet_config

    name, gt_json = dataset
    from detectron2.config import get_cfg

    cfg = add_nucdet_config(get_cfg())
    cfg.TEST.EVALUATORS = ["nuclei", "coco"]
    both = build_evaluators(cfg, name, output_dir=str(tmp_path))
    assert isinstance(both, DatasetEvaluators)
    res = _run(both, name)
    # MaP-IoU from nucdet, AP from detectron2 (once), both under "segm".
    assert {"MaP-IoU", "AP", "AP-alpha", "AP-beta"} <= set(res["segm"])
    ref = _pycocotools_ap(gt_json, tmp_path / "coco_instances_results.json", 1000)
    assert res["segm"]["AP"] == pytest.approx(ref, abs=1e-6)
    cfg.TEST.EVALUATORS = ["coco"]
    assert isinstance(build_evaluators(cfg, name, output_dir=str(tmp_path)), COCOEvaluator)
    cfg.TEST.EVALUATORS = ["cocoo"]
    with pytest.raises(ValueError, match="TEST.EVALUATORS"):
        build_evaluators(cfg, name)


def test_inference_job_writes_dataset_ids(dataset, tmp_path):
    """The inference job on a dataset whose stems collide: COCO results carry the dataset's
    image and category ids (pycocotools reads them against the GT file), and the CSV ids
    are the dataset image ids."""
    name, gt_json = dataset
    preds = _predictions()
    inputs = dataset_inputs(name)
    assert [i.coco_id for i in inputs] == list(IMAGE_IDS)
    assert [i.image_id for i in inputs] == [str(i) for i in IMAGE_IDS]

    def predict(image, item):
        p = preds[item.coco_id]
        return ImagePrediction(
            item.image_id,
            H,
            W,
            [mask_to_coco_rle(m) for m, _, _ in p],
            [s for _, _, s in p],
            [c for _, c, _ in p],
        )

    run_inference(
        inputs,
        predict,
        tmp_path / "coco",
        fmt="coco",
        num_overlays=0,
        category_ids=dataset_category_ids(name),
    )
    f = tmp_path / "coco" / "coco_results.json"
    ours = _run(NucleiEvaluator(name, output_dir=str(tmp_path / "ev"), distributed=False), name)
    assert _pycocotools_ap(gt_json, f, 1000) == pytest.approx(ours["segm"]["AP"], abs=1e-6)
    metrics = run_inference(inputs, predict, tmp_path / "csv", fmt="kaggle", num_overlays=0)
    assert set(metrics["per_image"]) == {"101", "205", "7"}
    rows = (tmp_path / "csv" / "submission.csv").read_text().splitlines()
    assert {r.split(",")[0] for r in rows[1:]} == {"101", "205", "7"}


def test_stock_coco_evaluator_on_a_predefined_dataset(registered, tmp_path):
    """detectron2's COCOEvaluator on a lazily built nucdet dataset (no json_file: it
    converts the dicts itself) gives AP 100 for the ground truth as predictions."""
    from pycocotools import mask as mask_utils

    name = "dsb2018_sample_val"
    dicts = DatasetCatalog.get(name)[:3]
    evaluator = COCOEvaluator(
        name, tasks=("segm",), distributed=False, output_dir=str(tmp_path), max_dets_per_image=1000
    )
    evaluator.reset()
    for d in dicts:
        h, w = d["height"], d["width"]
        masks = np.stack(
            [mask_utils.decode(a["segmentation"]).astype(bool) for a in d["annotations"]]
        )
        inst = Instances((h, w))
        inst.pred_masks = torch.from_numpy(masks)
        inst.pred_boxes = Boxes(torch.zeros((len(masks), 4)))
        inst.scores = torch.linspace(1, 0.5, len(masks))
        inst.pred_classes = torch.zeros(len(masks), dtype=torch.int64)
        evaluator.process([d], [{"instances": inst}])
    res = evaluator.evaluate(img_ids=[d["image_id"] for d in dicts])
    assert res["segm"]["AP"] == pytest.approx(100.0)

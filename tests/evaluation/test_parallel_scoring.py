"""Scoring a dataset image by image on 2 worker processes gives exactly the serial results
and rows (evaluate_predictions, every metric, with post-processing), and the scoring CLI
writes the same metrics JSON with --workers 0 and 2."""

from __future__ import annotations

import json
from functools import partial

import numpy as np

from nucdet.data.coco import CocoBuilder
from nucdet.evaluation.groundtruth import GtDataset, GtImage
from nucdet.evaluation.score import main
from nucdet.evaluation.suite import evaluate_predictions
from nucdet.inference.postprocess import postprocess
from nucdet.io.rle import mask_to_coco_rle
from nucdet.io.writers import make_writer
from nucdet.parallel import resolve_workers
from nucdet.structures import ImagePrediction

N, H, W = 12, 30, 40


def _disc(cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _data() -> tuple[GtDataset, dict[str, ImagePrediction]]:
    """Two classes; predictions shifted by 0..2 pixels, one miss and one false positive
    per image, some images without ground truth."""
    rng = np.random.default_rng(3)
    images, preds = [], {}
    for i in range(N):
        gt_masks, pred_masks = [], []
        for _ in range(int(rng.integers(0, 4))):
            cy, cx, r = int(rng.integers(6, H - 6)), int(rng.integers(6, W - 6)), 4
            gt_masks.append(_disc(cy, cx, r))
            pred_masks.append(_disc(cy + int(rng.integers(0, 3)), cx, r))
        pred_masks = pred_masks[1:] + [_disc(3, 3, 2)]
        classes = rng.integers(0, 2, len(gt_masks))
        images.append(
            GtImage(
                f"im{i}", i + 1, f"im{i}.png", H, W,
                [mask_to_coco_rle(m) for m in gt_masks], classes.astype(np.int64),
                np.zeros(len(gt_masks), bool), {"modality": "ab"[i % 2]},
            )
        )  # fmt: skip
        preds[f"im{i}"] = ImagePrediction(
            f"im{i}", H, W,
            [mask_to_coco_rle(m) for m in pred_masks],
            rng.uniform(0.2, 1.0, len(pred_masks)).astype(np.float32),
            rng.integers(0, 2, len(pred_masks)).astype(np.int64),
        )  # fmt: skip
    return GtDataset(images, ["a", "b"]), preds


def test_parallel_scores_equal_serial():
    gt, preds = _data()
    assert resolve_workers(2, N) == 2
    kwargs = dict(
        metrics=("map_iou", "coco", "voc", "glas", "count"),
        score_thresh=0.3,
        postprocess=partial(postprocess, score_thresh=[0.4], remove_overlap=True),
        group_key="modality",
    )
    serial = evaluate_predictions(gt, preds, workers=0, **kwargs)
    parallel = evaluate_predictions(gt, preds, workers=2, **kwargs)
    # the same JSON (NaN written as NaN on both sides), keys in the same order
    assert json.dumps(parallel) == json.dumps(serial)
    assert [r["image_id"] for r in serial[1]] == [f"im{i}" for i in range(N)]
    assert 0 < serial[0]["segm"]["MaP-IoU"] < 1


def test_score_cli_workers(tmp_path):
    gt, preds = _data()
    builder = CocoBuilder(gt.class_names)
    for im in gt.images:
        masks = [np.asarray(m, bool) for m in ImagePrediction(
            im.image_id, H, W, im.rles, np.ones(len(im.rles)), im.classes).masks()]  # fmt: skip
        builder.add_image(im.file_name, H, W, masks, (im.classes + 1).tolist(), modality="x")
    builder.write(tmp_path / "gt.json")
    with make_writer("coco", tmp_path / "sub.json") as w:
        for p in preds.values():
            w.add(p)
    outs = []
    for workers in ("0", "2"):
        out = tmp_path / f"m{workers}.json"
        argv = ["--submission", str(tmp_path / "sub.json"), "--format", "coco"]
        argv += ["--gt", str(tmp_path / "gt.json"), "--workers", workers, "--output", str(out)]
        assert main(argv) == 0
        outs.append(out.read_text())
    assert outs[0] == outs[1]
    assert main([*argv[:-2], "--workers", "-1"]) == 2  # a clear error, not a traceback

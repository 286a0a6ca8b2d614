"""Threshold tuning: hand-built validation sets with a known best threshold per class,
the YAML writer, and the command line on COCO files."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from nucdet.evaluation.mapiou import map_iou_image
from nucdet.inference.tune import main, tune_score_thresholds, write_thresholds
from nucdet.io.rle import mask_to_coco_rle
from nucdet.structures import ImagePrediction

H, W = 32, 48


def _rects(n, offset):
    """n disjoint 6x6 squares on a row band starting at ``offset``."""
    out = np.zeros((n, H, W), bool)
    for k in range(n):
        out[k, offset : offset + 6, 2 + 8 * k : 8 + 8 * k] = True
    return out


def _dataset(seed=0):
    """Class 0 images: TPs scored 0.6-0.95, FPs 0.3. Class 1: TPs 0.8-0.95, FPs 0.7-0.75.

    Best thresholds: class 0 anything in (0.3, 0.6] (0.5 already is); class 1 only 0.8
    among the 0.05-step candidates. Both give a perfect score.
    """
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for i in range(6):
        cls = i % 2
        gt = _rects(5, 2)
        fp = _rects(3, 20)
        lo, fp_scores = (0.6, [0.3] * 3) if cls == 0 else (0.8, [0.7, 0.75, 0.72])
        tp_scores = rng.uniform(lo, 0.95, 5)
        tp_scores[0] = lo  # exactly at the optimum's edge
        masks = np.concatenate([gt, fp])
        preds.append(
            ImagePrediction(
                f"im{i}",
                H,
                W,
                [mask_to_coco_rle(m) for m in masks],
                np.concatenate([tp_scores, fp_scores]),
                np.full(8, cls),
            )
        )
        gts.append([mask_to_coco_rle(m) for m in gt])
    return preds, gts


def test_tuning_finds_the_hand_computed_thresholds():
    preds, gts = _dataset()
    calls = []

    def metric(gt, pred):  # the real metric, counting calls
        calls.append(1)
        return map_iou_image(gt, pred)

    res = tune_score_thresholds(preds, gts, num_classes=2, metric=metric, progress=False)
    # class 0 keeps 0.5 (nothing scores strictly higher); class 1 moves to 0.8
    assert res.thresholds == [0.5, 0.8]
    assert res.score == pytest.approx(1.0)
    # at 0.5 the class-1 images keep 3 FPs next to 5 TPs: precision 5/8 at every IoU
    assert res.baseline == pytest.approx((3 * 1.0 + 3 * 5 / 8) / 6)
    # cached per kept set: far fewer metric calls than images x candidates x rounds
    assert len(calls) < 6 * 19
    # the default metric is the Kaggle MaP-IoU
    assert tune_score_thresholds(preds, gts, num_classes=2, progress=False).thresholds == [0.5, 0.8]


def test_tuning_respects_postprocessing_and_majority_class():
    preds, gts = _dataset()
    # With a minimum area above the 36-px squares nothing survives: every threshold ties
    # and nothing moves from init.
    res = tune_score_thresholds(
        preds, gts, num_classes=2, min_area=40, init=[0.2, 0.3], progress=False
    )
    assert res.thresholds == [0.2, 0.3] and res.score == 0.0
    # Majority class relabels mixed images before the thresholds apply.
    mixed = [
        ImagePrediction(p.image_id, H, W, p.rles, p.scores, np.r_[p.classes[:7], 1 - p.classes[7]])
        for p in preds
    ]
    res = tune_score_thresholds(mixed, gts, num_classes=2, majority_class=True, progress=False)
    assert res.thresholds == [0.5, 0.8] and res.score == pytest.approx(1.0)


def test_write_thresholds_keeps_other_keys(tmp_path):
    path = tmp_path / "ens.yaml"
    path.write_text(
        "MODELS:\n  - {dir: out/r50, weight: 1.0}\nPOSTPROCESS:\n  MIN_AREA: [75, 150, 75]\n"
    )
    write_thresholds(path, [0.15, 0.35000001, 0.55])
    data = yaml.safe_load(path.read_text())
    assert data["POSTPROCESS"] == {"MIN_AREA": [75, 150, 75], "SCORE_THRESH": [0.15, 0.35, 0.55]}
    assert data["MODELS"] == [{"dir": "out/r50", "weight": 1.0}]
    assert [p.name for p in tmp_path.iterdir()] == ["ens.yaml"]  # no temp file left
    new = tmp_path / "sub" / "new.yaml"
    write_thresholds(new, [0.5])
    assert yaml.safe_load(new.read_text()) == {"POSTPROCESS": {"SCORE_THRESH": [0.5]}}
    path.write_text("POSTPROCESS: 3\n")
    with pytest.raises(ValueError, match="not a mapping"):
        write_thresholds(path, [0.5])


def test_command_line_on_coco_files(tmp_path):
    from nucdet.data.coco import CocoBuilder
    from nucdet.io.writers import CocoJsonWriter

    preds, _ = _dataset()
    builder = CocoBuilder(["a", "b"])
    for p in preds:
        cls = int(p.classes[0])
        builder.add_image(f"{p.image_id}.png", H, W, list(_rects(5, 2)), [cls + 1] * 5)
    builder.write(tmp_path / "gt.json")
    with CocoJsonWriter(tmp_path / "res.json") as writer:
        for p in preds:
            writer.add(p)
    yaml_path = tmp_path / "ens.yaml"
    res = main(
        [
            "--pred",
            str(tmp_path / "res.json"),
            "--gt",
            str(tmp_path / "gt.json"),
            "--yaml",
            str(yaml_path),
        ]
    )
    assert res.thresholds == [0.5, 0.8]
    assert yaml.safe_load(yaml_path.read_text())["POSTPROCESS"]["SCORE_THRESH"] == [0.5, 0.8]


def test_images_without_predictions_or_gt():
    preds, gts = _dataset()
    # one image with GT but no prediction (scores 0), one with neither (scores 1)
    preds += [ImagePrediction("none", H, W), ImagePrediction("empty", H, W)]
    gts += [[mask_to_coco_rle(m) for m in _rects(2, 2)], []]
    res = tune_score_thresholds(preds, gts, num_classes=2, progress=False)
    assert res.thresholds == [0.5, 0.8]
    assert res.score == pytest.approx(7 / 8)


def test_input_errors():
    preds, gts = _dataset()
    with pytest.raises(ValueError, match="ground truths"):
        tune_score_thresholds(preds, gts[:2], num_classes=2, progress=False)
    with pytest.raises(ValueError, match="num_classes"):
        tune_score_thresholds(preds, gts, num_classes=1, progress=False)
    with pytest.raises(ValueError, match="init"):
        tune_score_thresholds(preds, gts, num_classes=2, init=[0.1, 0.2, 0.3], progress=False)


def _write_coco(tmp_path, preds, stem, gt_json=True):
    """GT JSON (5 squares per image, class of the image) and a results JSON of ``preds``."""
    from nucdet.data.coco import CocoBuilder
    from nucdet.io.writers import CocoJsonWriter

    if gt_json:
        builder = CocoBuilder(["a", "b"])
        for p in preds:
            cls = int(p.classes[0])
            builder.add_image(f"{p.image_id}.png", H, W, list(_rects(5, 2)), [cls + 1] * 5)
        builder.write(tmp_path / f"{stem}_gt.json")
    with CocoJsonWriter(tmp_path / f"{stem}.json") as writer:
        for p in preds:
            writer.add(p)
    return tmp_path / f"{stem}.json", tmp_path / f"{stem}_gt.json"


def test_yaml_output_is_read_by_the_real_loaders(tmp_path):
    """--yaml on a shipped ensemble YAML gives a file the ensemble loader accepts (with
    the tuned values in its postprocess); on a model config, one build_cfg merges."""
    import shutil

    from conftest import REPO, TINY_CONFIG

    from nucdet.config import build_cfg
    from nucdet.inference.ensemble import EnsembleSpec

    preds, _ = _dataset()
    res_json, gt_json = _write_coco(tmp_path, preds, "res")
    ens = tmp_path / "ens.yaml"
    shutil.copy(REPO / "configs" / "ensembles" / "dsb_two_models_tta.yaml", ens)
    main(["--pred", str(res_json), "--gt", str(gt_json), "--yaml", str(ens)])
    spec = EnsembleSpec.from_yaml(ens)
    assert spec.postprocess["SCORE_THRESH"] == [0.5, 0.8]
    assert spec.postprocess["MIN_AREA"] == [10.0, 10.0]  # the file's value, not tuned
    assert len(spec.models) == 2 and spec.format == "dsb"  # the rest is kept
    cfg_yaml = tmp_path / "model.yaml"
    cfg_yaml.write_text(f"_BASE_: {TINY_CONFIG}\n")
    main(["--pred", str(res_json), "--gt", str(gt_json), "--yaml", str(cfg_yaml)])
    cfg = build_cfg(cfg_yaml, [])
    assert list(cfg.POSTPROCESS.SCORE_THRESH) == [0.5, 0.8]


def _area_dataset():
    """Class 0 images: 5 true 6x6 squares (36 px, score 0.9) and 3 false 2x2 specks
    (4 px) scoring 0.97, above every true one and every candidate: no score threshold
    removes them, a minimum area in (4, 36] does. Class 1: 5 true squares only."""
    preds, gts = [], []
    for i in range(4):
        cls = i % 2
        gt = _rects(5, 2)
        masks = list(gt)
        scores = [0.9] * 5
        if cls == 0:
            for k in range(3):
                m = np.zeros((H, W), bool)
                m[20:22, 2 + 8 * k : 4 + 8 * k] = True
                masks.append(m)
            scores += [0.97] * 3
        preds.append(
            ImagePrediction(
                f"a{i}",
                H,
                W,
                [mask_to_coco_rle(m) for m in masks],
                scores,
                np.full(len(masks), cls),
            )
        )
        gts.append([mask_to_coco_rle(m) for m in gt])
    return preds, gts


def test_tuning_min_area_and_majority_rule():
    from nucdet.inference.tune import tune_postprocess

    preds, gts = _area_dataset()
    # Thresholds alone cannot help class 0: precision 5/8 there, 1 on class 1.
    res = tune_postprocess(preds, gts, num_classes=2, progress=False)
    assert res.score == pytest.approx((2 * 5 / 8 + 2) / 4)
    # With min-area candidates, class 0 moves to the lowest area removing the specks (5).
    res = tune_postprocess(
        preds, gts, num_classes=2, area_candidates=[0, 5, 20, 40], progress=False
    )
    assert res.min_area == [5.0, 0.0] and res.score == pytest.approx(1.0)
    assert res.postprocess() == {
        "SCORE_THRESH": [0.5, 0.5],
        "MIN_AREA": [5.0, 0.0],
        "MAJORITY_CLASS": False,
    }
    # Majority rule: images whose 5 true objects are class 0 but whose 3 specks are class 1
    # with min area 5 for class 0 only; relabelling every instance to the majority (0)
    # lets class 0's area rule drop the specks: only the rule on reaches 1.
    mixed = [
        ImagePrediction(p.image_id, H, W, p.rles, p.scores, np.r_[np.zeros(5), np.ones(3)])
        for p in preds[:1]
    ]
    common = dict(num_classes=2, min_area=[5, 0], progress=False)
    off = tune_postprocess(mixed, gts[:1], majority_class=(False,), **common)
    both = tune_postprocess(mixed, gts[:1], majority_class=(False, True), **common)
    # off: class 1 specks (score 0.97) survive every candidate (max 0.95): precision 5/8.
    assert off.score == pytest.approx(5 / 8)
    assert both.majority_class is True and both.score == pytest.approx(1.0)


def test_out_of_fold_predictions_assembled(tmp_path):
    """Two fold files (each fold's model on its held-out images) against one GT: the
    tuned result equals tuning on the same predictions in one file; overlaps and gaps are
    errors naming the image."""
    preds, _ = _dataset()
    one, gt_json = _write_coco(tmp_path, preds, "all")
    fold0, _ = _write_coco(tmp_path, preds[:4], "fold0", gt_json=False)
    fold1, _ = _write_coco(tmp_path, preds[4:], "fold1", gt_json=False)
    common = ["--gt", str(gt_json), "--yaml", str(tmp_path / "o.yaml")]
    whole = main(["--pred", str(one), *common])
    oof = main(["--pred", str(fold0), str(fold1), *common])
    assert oof.thresholds == whole.thresholds == [0.5, 0.8]
    assert oof.score == whole.score and oof.baseline == whole.baseline
    with pytest.raises(KeyError, match="in none of the --pred files"):
        main(["--pred", str(fold0), *common])
    with pytest.raises(ValueError, match="'im0' is predicted in"):
        main(["--pred", str(fold0), str(one), *common])

"""nucdet.tools.curves on hand-written metrics.json files (the tool belongs to the training
engine's outputs; a real run is plotted in test_train_eval.py)."""

from __future__ import annotations

import json
import math

import cv2
import pytest

from nucdet.tools.curves import (
    TRAINING_PNG,
    VALIDATION_PNG,
    main,
    training_keys,
    validation_panels,
    write_curves,
)


def _metrics(tmp_path, rows):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def _train_row(i):
    return {
        "iteration": i,
        "total_loss": 2.0 / (i + 1),
        "loss_cls": 1.0 / (i + 1),
        "loss_mask": 0.5,
        "val_loss_mask": 0.6,
        "lr": 0.01,
        "fast_rcnn/cls_accuracy": 0.9,
    }


def _eval_row(i, v):
    return {
        "iteration": i,
        "dsb_train/segm/MaP-IoU": v + 0.1,
        "dsb_val/segm/MaP-IoU": v,
        "dsb_val/segm/MaP-IoU-stained": v / 2,
        "dsb_val/segm/AP": 100 * v,
        "dsb_val/segm/APl": math.nan,
        "dsb_val/bbox/AP50": 100 * v,
        "dsb_val/count/MAE": 10 - v,
    }


def test_keys_and_panels():
    # series and split_eval_key (nucdet.io.metrics_json): tests/io/test_metrics_json.py
    rows = [_train_row(0), _train_row(1), {"iteration": 1, "total_loss": 5.0}, _eval_row(1, 0.2)]
    assert training_keys(rows) == ["total_loss", "loss_cls", "loss_mask"]
    panels = validation_panels(rows)
    assert list(panels) == [
        "segm MaP-IoU (Kaggle, 0..1)",
        "bbox COCO AP/AP50/AP75 (%)",
        "segm COCO AP/AP50/AP75 (%)",
        "count MAE (objects per image)",
    ]
    # train and validation splits share a panel
    assert panels["segm MaP-IoU (Kaggle, 0..1)"] == [
        ("dsb_train MaP-IoU", "dsb_train/segm/MaP-IoU"),
        ("dsb_val MaP-IoU", "dsb_val/segm/MaP-IoU"),
        ("dsb_val MaP-IoU-stained", "dsb_val/segm/MaP-IoU-stained"),
    ]


def test_write_curves(tmp_path):
    rows = [_train_row(i) for i in range(10)] + [_eval_row(4, 0.1), _eval_row(10, 0.3)]
    run = _metrics(tmp_path / "run", rows)
    written = write_curves(run, tmp_path / "plots")
    assert [p.name for p in written] == [TRAINING_PNG, VALIDATION_PNG]
    train = cv2.imread(str(written[0]))
    val = cv2.imread(str(written[1]))
    # 3 losses + lr = 4 panels -> 2 rows x 3 columns; 4 validation panels -> 2 x 3
    assert train.shape == (720, 1560, 3) and val.shape == (720, 1560, 3)
    assert train.std() > 10 and val.std() > 10  # something is drawn
    assert not list((tmp_path / "plots").glob(".*"))  # atomic writes: no temporary files
    # default output folder: the run itself; a run without evaluation: training only
    run2 = _metrics(tmp_path / "run2", rows[:10])
    assert [p.name for p in main([str(run2)])] == [TRAINING_PNG]
    assert (run2 / TRAINING_PNG).is_file() and not (run2 / VALIDATION_PNG).exists()


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json: not found"):
        write_curves(tmp_path)
    _metrics(tmp_path, [])
    with pytest.raises(ValueError, match="no records"):
        write_curves(tmp_path)
    _metrics(tmp_path, [{"iteration": 0, "data_time": 0.1}])
    with pytest.raises(ValueError, match="no training losses"):
        write_curves(tmp_path)

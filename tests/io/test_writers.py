"""Submission writers: formats, every image present, atomic replacement."""

import csv
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from nucdet.io.rle import mask_to_coco_rle, rle_decode
from nucdet.io.writers import make_writer
from nucdet.structures import ImagePrediction


def _pred(image_id, masks, scores=None):
    h, w = masks[0].shape if masks else (4, 5)
    scores = np.linspace(0.9, 0.5, len(masks)) if scores is None else scores
    return ImagePrediction(
        image_id, h, w, [mask_to_coco_rle(m) for m in masks], scores, np.zeros(len(masks), np.int64)
    )


@pytest.fixture
def preds():
    a = np.zeros((4, 5), bool)
    a[1, 1:4] = True  # row-major: 7 3 ; column-major: 6 1 10 1 14 1 (x*4+y+1)
    b = np.zeros((4, 5), bool)
    b[2:4, 4] = True  # row-major: 15 1 20 1 ; column-major: 19 2
    return [_pred("img_a", [a, b]), _pred("img_empty", [])]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_kaggle_csv_row_major_and_empty_image(tmp_path, preds):
    with make_writer("kaggle", tmp_path / "sub.csv") as w:
        for p in preds:
            w.add(p)
    rows = _rows(tmp_path / "sub.csv")
    assert rows == [
        ["id", "predicted"],
        ["img_a", "7 3"],
        ["img_a", "15 1 20 1"],
        ["img_empty", ""],
    ]


def test_dsb_csv_column_major(tmp_path, preds):
    with make_writer("dsb", tmp_path / "sub.csv") as w:
        for p in preds:
            w.add(p)
    rows = _rows(tmp_path / "sub.csv")
    assert rows[0] == ["ImageId", "EncodedPixels"]
    assert rows[1:] == [["img_a", "6 1 10 1 14 1"], ["img_a", "19 2"], ["img_empty", ""]]
    assert (rle_decode(rows[1][1], (4, 5), "F") == preds[0].masks()[0]).all()


def test_coco_results_load_in_pycocotools(tmp_path, preds):
    gt = {
        "images": [
            {"id": 7, "file_name": "img_a.png", "height": 4, "width": 5},
            {"id": 9, "file_name": "img_empty.png", "height": 4, "width": 5},
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "nucleus"}],
    }
    with make_writer("coco", tmp_path / "res.json", image_ids={"img_a": 7, "img_empty": 9}) as w:
        for p in preds:
            w.add(p)
    res = json.loads((tmp_path / "res.json").read_text())
    assert [r["image_id"] for r in res] == [7, 7]
    assert res[0]["bbox"] == [1.0, 1.0, 3.0, 1.0]
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    dt = coco.loadRes(str(tmp_path / "res.json"))
    assert (dt.annToMask(dt.loadAnns(1)[0]) == preds[0].masks()[0]).all()
    images = json.loads((tmp_path / "res.images.json").read_text())
    assert sorted(i["id"] for i in images) == [7, 9]


def test_failed_run_leaves_existing_file_untouched(tmp_path, preds):
    path = tmp_path / "sub.csv"
    path.write_text("previous result\n")
    with pytest.raises(RuntimeError), make_writer("kaggle", path) as w:
        w.add(preds[0])
        raise RuntimeError("interrupted")
    assert path.read_text() == "previous result\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]  # no temp file left


def test_duplicate_image_and_unknown_format(tmp_path, preds):
    with (
        pytest.raises(ValueError, match="added twice"),
        make_writer("kaggle", tmp_path / "s.csv") as w,
    ):
        w.add(preds[0])
        w.add(preds[0])
    with pytest.raises(ValueError, match="unknown submission format"):
        make_writer("xml", tmp_path / "s.xml")

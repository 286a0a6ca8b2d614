"""``check_coco`` accepts a clean file and rejects each malformed case naming image and problem."""

from __future__ import annotations

import copy
import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from nucdet.data.check import check_coco
from nucdet.data.coco import CocoBuilder


def _dataset(tmp_path):
    """Two 20x30 images, the second without instances."""
    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / "img" / name), np.zeros((20, 30), np.uint8))
    m1 = np.zeros((20, 30), bool)
    m1[2:6, 3:9] = True
    m2 = np.zeros((20, 30), bool)
    m2[10:20, 20:30] = True
    b = CocoBuilder(["nucleus", "other"])
    b.add_image("a.png", 20, 30, [m1, m2], [1, 2])
    b.add_image("b.png", 20, 30)
    return b.to_dict()


def _run(tmp_path, coco):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(coco))
    return check_coco(path, tmp_path / "img")


def test_clean_dataset_passes_and_reports_empty_image(tmp_path):
    report = _run(tmp_path, _dataset(tmp_path))
    assert report.ok, report.summary()
    assert report.errors == []
    assert report.empty_images == ["b.png"]
    assert len(report.warnings) == 1 and "b.png" in report.warnings[0]
    assert (report.num_images, report.num_annotations, report.num_categories) == (2, 2, 2)


def _mutate(case: str, coco: dict, tmp_path) -> None:
    a0, a1 = coco["annotations"]
    img_a = coco["images"][0]
    if case == "missing image file":
        (tmp_path / "img" / "a.png").unlink()
    elif case == "unreadable image":
        (tmp_path / "img" / "a.png").write_bytes(b"garbage")
    elif case == "image size":
        cv2.imwrite(str(tmp_path / "img" / "a.png"), np.zeros((21, 30), np.uint8))
    elif case == "rle size":
        a0["segmentation"]["size"] = [20, 31]
    elif case == "rle coverage":
        small = mask_utils.encode(np.asfortranarray(np.ones((10, 30), np.uint8)))
        a0["segmentation"]["counts"] = small["counts"].decode()
    elif case == "rle garbage":
        a0["segmentation"]["counts"] = "~~~"
    elif case == "empty mask":
        empty = mask_utils.encode(np.asfortranarray(np.zeros((20, 30), np.uint8)))
        a0["segmentation"]["counts"] = empty["counts"].decode()
    elif case == "bbox outside":
        a1["bbox"] = [20.0, 10.0, 11.0, 10.0]
    elif case == "bbox negative":
        a1["bbox"] = [-2.0, 10.0, 5.0, 5.0]
    elif case == "bbox size":
        a1["bbox"] = [20.0, 10.0, 0.0, 5.0]
    elif case == "duplicate image id":
        coco["images"][1]["id"] = img_a["id"]
    elif case == "duplicate annotation id":
        a1["id"] = a0["id"]
    elif case == "unknown category":
        a1["category_id"] = 7
    elif case == "unknown image":
        a1["image_id"] = 99
    elif case == "polygon outside":
        a0["segmentation"] = [[1.0, 1.0, 35.0, 1.0, 35.0, 5.0]]
    elif case == "image height":
        img_a["height"] = 0


CASES = {
    "missing image file": ["a.png", "not found"],
    "unreadable image": ["a.png", "unreadable"],
    "image size": ["a.png", "21x30", "20x30"],
    "rle size": ["a.png", "annotation 1", "RLE size"],
    "rle coverage": ["a.png", "annotation 1", "covers 300 pixels"],
    "rle garbage": ["a.png", "annotation 1", "malformed RLE"],
    "empty mask": ["a.png", "annotation 1", "empty mask"],
    "bbox outside": ["a.png", "annotation 2", "not inside"],
    "bbox negative": ["a.png", "annotation 2", "not inside"],
    "bbox size": ["a.png", "annotation 2", "non-positive"],
    "duplicate image id": ["b.png", "duplicate image id"],
    "duplicate annotation id": ["a.png", "duplicate annotation id 1"],
    "unknown category": ["a.png", "annotation 2", "unknown category_id 7"],
    "unknown image": ["annotation 2", "unknown image_id 99"],
    "polygon outside": ["a.png", "annotation 1", "outside"],
    "image height": ["a.png", "not positive"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_malformed_case_is_an_error_naming_image_and_problem(tmp_path, case):
    coco = copy.deepcopy(_dataset(tmp_path))
    _mutate(case, coco, tmp_path)
    report = _run(tmp_path, coco)
    assert not report.ok
    assert any(all(w in e for w in CASES[case]) for e in report.errors), report.errors
    with pytest.raises(ValueError, match="ERROR"):
        report.raise_if_errors()


def test_bbox_disagreeing_with_mask_is_a_warning(tmp_path):
    coco = _dataset(tmp_path)
    coco["annotations"][0]["bbox"] = [0.0, 0.0, 20.0, 15.0]
    report = _run(tmp_path, coco)
    assert report.ok
    assert any("annotation 1" in w and "disagrees" in w for w in report.warnings)


def test_missing_top_level_list(tmp_path):
    coco = _dataset(tmp_path)
    del coco["categories"]
    report = _run(tmp_path, coco)
    assert not report.ok and "categories" in report.errors[0]

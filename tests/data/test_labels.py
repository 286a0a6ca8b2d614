"""Label images -> COCO: the instances equal ``label == k`` read straight from the files."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tifffile

from nucdet.data.coco import mask_annotation
from nucdet.data.labels import (
    label_instances,
    labels_to_coco,
    sorted_indices_to_annotation,
)
from nucdet.io.rle import coco_rle_to_mask


def _label_image(h: int = 40, w: int = 50) -> np.ndarray:
    """Non-consecutive ids (incl. > 255), touching instances, one at the image corner."""
    lab = np.zeros((h, w), np.uint16)
    lab[2:10, 3:12] = 7
    lab[2:10, 12:20] = 3  # touches id 7
    lab[20:30, 25:33] = 1000
    lab[h - 4 :, w - 5 :] = 250  # reaches the last pixel
    lab[0, 0] = 42  # first pixel, one-pixel instance
    yy, xx = np.mgrid[:h, :w]
    lab[(yy - 30) ** 2 + (xx - 10) ** 2 < 20] = 9
    return lab


def _instances_by_value(coco: dict, image_id: int) -> list[np.ndarray]:
    anns = [a for a in coco["annotations"] if a["image_id"] == image_id]
    return [coco_rle_to_mask(a["segmentation"]) for a in anns], anns


def test_sorted_indices_match_dense_annotation():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 5), (17, 23), (64, 48)]:
        for density in (0.0, 0.1, 0.5, 1.0):
            m = rng.random(shape) < density
            if density == 1.0:
                m[:] = True
            idx = np.flatnonzero(m.ravel(order="F"))
            if m.any():
                assert sorted_indices_to_annotation(idx, *shape, 2) == mask_annotation(m, 2)


def test_label_instances_are_the_label_values():
    lab = _label_image()
    got = label_instances(lab)
    assert [v for v, _ in got] == [3, 7, 9, 42, 250, 1000]
    for v, idx in got:
        assert np.array_equal(idx, np.flatnonzero((lab == v).ravel(order="F")))


@pytest.mark.parametrize("bad", ["rgb", "float", "negative"])
def test_label_instances_rejects_bad_labels(bad):
    lab = _label_image().astype(np.int32)
    if bad == "rgb":
        lab = np.stack([lab] * 3, axis=2)
    elif bad == "float":
        lab = lab.astype(np.float32) + 0.5
    else:
        lab[5, 5] = -1
    with pytest.raises(ValueError, match="lab.tif"):
        label_instances(lab, source="lab.tif")


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_paired_layout_single_class(tmp_path, ext):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    labs = {"a": _label_image(), "b": np.zeros((40, 50), np.uint16)}
    labs["b"][10:20, 10:20] = 5
    for stem, lab in labs.items():
        cv2.imwrite(str(root / "images" / f"{stem}.png"), (lab > 0).astype(np.uint8) * 200)
        if ext == ".png":
            cv2.imwrite(str(root / "labels" / f"{stem}.png"), lab)
        else:
            tifffile.imwrite(root / "labels" / f"{stem}.tif", lab)
    out = labels_to_coco(root, tmp_path / "out.json")
    coco = json.loads(out.read_text())
    assert coco["categories"] == [{"id": 1, "name": "nucleus"}]
    assert [i["file_name"] for i in coco["images"]] == ["images/a.png", "images/b.png"]
    for img, stem in zip(coco["images"], ["a", "b"]):
        lab = labs[stem]
        masks, anns = _instances_by_value(coco, img["id"])
        expected = [lab == v for v in np.unique(lab) if v]
        assert len(masks) == len(expected)
        for m, e, a in zip(masks, expected, anns):
            assert np.array_equal(m, e)
            assert a["area"] == int(e.sum())
            ys, xs = np.nonzero(e)
            assert a["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]


def test_per_sample_layout_classes(tmp_path):
    """NYCU-style folders: image.tif + class1.tif .. class10.tif, some classes missing."""
    root = tmp_path / "train"
    lab = _label_image()
    other = np.zeros_like(lab)
    other[30:38, 40:48] = 4
    files = {
        "s1": {"class1": lab, "class10": other},
        "s2": {"class2": other},
    }
    for sample, labels in files.items():
        (root / sample).mkdir(parents=True)
        tifffile.imwrite(root / sample / "image.tif", np.zeros((40, 50, 3), np.uint8))
        for cls, arr in labels.items():
            tifffile.imwrite(root / sample / f"{cls}.tif", arr)
    coco = json.loads(labels_to_coco(root, tmp_path / "o.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert list(names.values()) == ["class1", "class2", "class10"]  # natural order
    by_file = {i["file_name"]: i for i in coco["images"]}
    assert set(by_file) == {"s1/image.tif", "s2/image.tif"}
    assert by_file["s1/image.tif"]["sample"] == "s1"
    for fname, sample in [("s1/image.tif", "s1"), ("s2/image.tif", "s2")]:
        img = by_file[fname]
        masks, anns = _instances_by_value(coco, img["id"])
        expected = [
            (cls, arr == v)
            for cls, arr in sorted(files[sample].items(), key=lambda kv: int(kv[0][5:]))
            for v in np.unique(arr)
            if v
        ]
        assert [(names[a["category_id"]]) for a in anns] == [c for c, _ in expected]
        for m, (_, e) in zip(masks, expected):
            assert np.array_equal(m, e)


def test_fixed_class_order_and_unknown_class(tmp_path):
    root = tmp_path / "train"
    (root / "s").mkdir(parents=True)
    tifffile.imwrite(root / "s" / "image.tif", np.zeros((8, 8), np.uint8))
    lab = np.zeros((8, 8), np.uint8)
    lab[1:3, 1:3] = 1
    tifffile.imwrite(root / "s" / "b.tif", lab)
    coco = json.loads(labels_to_coco(root, tmp_path / "o.json", classes=["b", "a"]).read_text())
    assert coco["categories"] == [{"id": 1, "name": "b"}, {"id": 2, "name": "a"}]
    assert [a["category_id"] for a in coco["annotations"]] == [1]
    with pytest.raises(ValueError, match="classes"):
        labels_to_coco(root, tmp_path / "o2.json", classes=["a"])
    assert not (tmp_path / "o2.json").exists()


def test_bad_label_files_write_nothing(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), np.zeros((10, 10), np.uint8))
    out = tmp_path / "out.json"
    with pytest.raises(FileNotFoundError, match="a.png"):  # missing label
        labels_to_coco(root, out)
    cv2.imwrite(str(root / "labels" / "a.png"), np.zeros((10, 12), np.uint8))
    with pytest.raises(ValueError, match="labels/a.png"):  # size mismatch
        labels_to_coco(root, out)
    (root / "labels" / "a.png").write_bytes(b"not a png")
    with pytest.raises(OSError, match="a.png"):  # unreadable
        labels_to_coco(root, out)
    assert not out.exists()
    assert list(tmp_path.glob("*.tmp")) == []

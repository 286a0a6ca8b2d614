"""DSB folder -> COCO: instances equal the mask PNGs read back independently (PIL)."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from nucdet.data.dsb import dsb_to_coco, list_dsb_ids


def test_dsb_to_coco_matches_pngs(tmp_path, sample_root):
    root = sample_root / "stage1_train"
    ids = list_dsb_ids(root)[:4]
    out = dsb_to_coco(root, tmp_path / "dsb.json", image_ids=ids)
    coco = json.loads(out.read_text())
    samples = json.loads((sample_root / "samples.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["nucleus"]
    assert len(coco["images"]) == 4
    for img in coco["images"]:
        image_id = img["file_name"].split("/")[0]
        png = np.array(Image.open(root / img["file_name"]))
        assert (img["height"], img["width"]) == png.shape[:2]
        assert img["modality"] == samples[image_id]["modality"]
        files = sorted((root / image_id / "masks").glob("*.png"))
        expected = [np.array(Image.open(p)) > 0 for p in files]
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        assert len(anns) == len(expected) == samples[image_id]["instances"]
        for a, m in zip(anns, expected):
            seg = {
                "size": a["segmentation"]["size"],
                "counts": a["segmentation"]["counts"].encode(),
            }
            assert (mask_utils.decode(seg).astype(bool) == m).all()
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
            assert a["area"] == m.sum()


def test_missing_image_and_bad_mask_are_named(tmp_path, sample_root):
    root = sample_root / "stage1_train"
    with pytest.raises(FileNotFoundError, match="no_such_id"):
        dsb_to_coco(root, tmp_path / "x.json", image_ids=["no_such_id"])
    image_id = list_dsb_ids(root)[0]
    bad = tmp_path / "bad" / image_id
    shutil.copytree(root / image_id, bad)
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(bad / "masks" / "zz_wrong_size.png")
    with pytest.raises(ValueError, match="zz_wrong_size.png"):
        dsb_to_coco(tmp_path / "bad", tmp_path / "y.json")
    assert not (tmp_path / "y.json").exists()

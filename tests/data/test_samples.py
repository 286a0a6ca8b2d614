"""nucdet.data.samples: the synthetic DSB folder and its Sartorius-layout copy, checked
against what was drawn (the converters that read them are tested in test_sartorius*.py)."""

import csv
import json

import cv2

from nucdet.data.samples import dsb_ids, make_sartorius_from_dsb, make_synthetic_dsb


def test_synthetic_dsb_and_its_sartorius_copy(tmp_path):
    root = make_synthetic_dsb(tmp_path / "stage1_train", n_images=3, shape=(40, 48), n_cells=5)
    (root / "half_extracted" / "masks").mkdir(parents=True)  # no images/: left out
    assert dsb_ids(root) == ["synthetic000", "synthetic001", "synthetic002"]
    assert dsb_ids(root, (40, 48)) == dsb_ids(root) and dsb_ids(root, (41, 48)) == []
    samples = json.loads((tmp_path / "samples.json").read_text())
    masks = {i: len(list((root / i / "masks").glob("*.png"))) for i in dsb_ids(root)}
    assert {i: s["instances"] for i, s in samples.items()} == masks
    csv_file = make_sartorius_from_dsb(root, tmp_path / "sart", cell_types=("a", "b"))
    with open(csv_file, newline="") as f:
        rows = list(csv.DictReader(f))
    # one row per mask; image i gets cell type i % 2; 2 images of a type per sample_id
    assert [sum(r["id"] == i for r in rows) for i in masks] == list(masks.values())
    assert {r["id"]: r["cell_type"] for r in rows} == {
        "synthetic000": "a",
        "synthetic001": "b",
        "synthetic002": "a",
    }
    assert len({r["sample_id"] for r in rows if r["cell_type"] == "a"}) == 1
    grey = cv2.imread(str(tmp_path / "sart" / "train" / "synthetic000.png"), cv2.IMREAD_UNCHANGED)
    assert grey.shape == (40, 48)

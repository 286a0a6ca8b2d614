"""The single data CLI: every subcommand runs, writes its output and reports bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from nucdet.data.convert import main
from nucdet.data.samples import make_sartorius_from_dsb, make_synthetic_dsb
from nucdet.io.rle import coco_rle_to_mask


@pytest.fixture(scope="module")
def dsb_root(tmp_path_factory):
    return make_synthetic_dsb(
        tmp_path_factory.mktemp("dsb") / "stage1_train", n_images=4, shape=(64, 80), n_cells=6
    )


def test_dsb_sartorius_check_folds_round_trip(tmp_path, dsb_root, capsys):
    assert main(["dsb", str(dsb_root), "--output", str(tmp_path / "dsb.json"), "--check"]) == 0
    dsb = json.loads((tmp_path / "dsb.json").read_text())
    csv_file = make_sartorius_from_dsb(dsb_root, tmp_path / "sart", images_per_sample=1)
    out = tmp_path / "sart.json"
    assert main(["sartorius", str(csv_file), "--output", str(out), "--check"]) == 0
    sart = json.loads(out.read_text())
    # same images, same instances (the fixture keeps DSB mask order) as the DSB converter
    assert len(sart["annotations"]) == len(dsb["annotations"])
    for a, b in zip(sart["annotations"], dsb["annotations"]):
        assert np.array_equal(
            coco_rle_to_mask(a["segmentation"]), coco_rle_to_mask(b["segmentation"])
        )
    assert main(["to-sartorius", str(out), "--output", str(tmp_path / "back.csv")]) == 0
    assert (tmp_path / "back.csv").read_text() == csv_file.read_text()
    rc = main(["folds", str(out), "--k", "2", "--out-dir", str(tmp_path / "f")])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == [
        "sart_fold0_train.json",
        "sart_fold0_val.json",
        "sart_fold1_train.json",
        "sart_fold1_val.json",
    ]
    rc = main(
        [
            "check",
            str(tmp_path / "f" / "sart_fold0_val.json"),
            "--image-root",
            str(tmp_path / "sart" / "train"),
        ]
    )
    assert rc == 0
    assert "0 errors" in capsys.readouterr().out


def test_check_exits_non_zero_on_errors(tmp_path, dsb_root, capsys):
    out = tmp_path / "dsb.json"
    assert main(["dsb", str(dsb_root), "--output", str(out)]) == 0
    coco = json.loads(out.read_text())
    coco["annotations"][0]["bbox"] = [70.0, 0.0, 20.0, 5.0]
    out.write_text(json.dumps(coco))
    assert main(["check", str(out), "--image-root", str(dsb_root)]) == 1
    text = capsys.readouterr().out
    assert "ERROR" in text and coco["images"][0]["file_name"] in text and "not inside" in text


def test_conversion_error_is_one_line_and_writes_nothing(tmp_path, dsb_root, capsys):
    csv_file = make_sartorius_from_dsb(dsb_root, tmp_path / "sart")
    lines = csv_file.read_text().splitlines()
    parts = lines[3].split(",")
    parts[2] = "81"  # width disagrees with the 80-pixel image
    lines[3] = ",".join(parts)
    csv_file.write_text("\n".join(lines) + "\n")
    assert main(["sartorius", str(csv_file), "--output", str(tmp_path / "o.json")]) == 1
    err = capsys.readouterr().err
    assert "line 4" in err and "width 81" in err
    assert not (tmp_path / "o.json").exists()


def test_labels_subcommand(tmp_path):
    (tmp_path / "d" / "s1").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "d" / "s1" / "image.tif", np.zeros((8, 8), np.uint8))
    lab = np.zeros((8, 8), np.uint16)
    lab[1:3, 1:3], lab[5:7, 5:8] = 4, 9
    tifffile.imwrite(tmp_path / "d" / "s1" / "class1.tif", lab)
    out = tmp_path / "l.json"
    assert main(["labels", str(tmp_path / "d"), "--output", str(out), "--check"]) == 0
    coco = json.loads(out.read_text())
    masks = [coco_rle_to_mask(a["segmentation"]) for a in coco["annotations"]]
    assert [m.sum() for m in masks] == [4, 6]

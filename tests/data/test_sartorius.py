"""Sartorius CSV -> COCO -> CSV on a hand-written CSV whose masks are known pixel by pixel."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from nucdet.data.imageio import ImageReadError
from nucdet.data.sartorius import (
    SartoriusFormatError,
    coco_to_sartorius_csv,
    sartorius_to_coco,
)
from nucdet.io.rle import coco_rle_to_mask, rle_decode, rle_encode

H, W = 12, 16
HEADER = "id,annotation,width,height,cell_type,plate_time,sample_date,sample_id,elapsed_timedelta"


def _expected() -> dict[str, list[tuple[str, np.ndarray]]]:
    """The masks the hand-written RLEs below encode (row-major, 1-indexed, W = 16)."""
    a = np.zeros((H, W), bool)
    a[1:4, 2:6] = True  # rows 1-3, cols 2-5: starts 1*16+2+1=19, 35, 51
    b = np.zeros((H, W), bool)
    b[2:5, 4:8] = True  # overlaps a on rows 2-3, cols 4-5: starts 37, 53, 69
    c = np.zeros((H, W), bool)
    c[5, 14:] = True  # one run wrapping from row 5 into row 6: start 5*16+14+1=95, length 5
    c[6, :3] = True
    d = np.zeros((H, W), bool)
    d[H - 1, W - 2 :] = True  # the last two pixels: start 191, length 2
    return {"img_a": [("shsy5y", a), ("shsy5y", b), ("shsy5y", c)], "img_b": [("astro", d)]}


ROWS = [
    "img_a,19 4 35 4 51 4,16,12,shsy5y,11h30m00s,2019-06-16,shsy5y[diff]_A1,0 days 11:30:00",
    "img_a,37 4 53 4 69 4,16,12,shsy5y,11h30m00s,2019-06-16,shsy5y[diff]_A1,0 days 11:30:00",
    "img_a,95 5,16,12,shsy5y,11h30m00s,2019-06-16,shsy5y[diff]_A1,0 days 11:30:00",
    "img_b,191 2,16,12,astro,09h00m00s,2020-09-13,astro[hippo]_B2,1 days 09:00:00",
]


def _write(tmp_path, rows=ROWS, images=("img_a", "img_b")):
    (tmp_path / "train").mkdir(exist_ok=True)
    for i, name in enumerate(images):
        cv2.imwrite(str(tmp_path / "train" / f"{name}.png"), np.full((H, W), 10 * i, np.uint8))
    csv_file = tmp_path / "train.csv"
    csv_file.write_text("\n".join([HEADER, *rows]) + "\n")
    return csv_file


def test_hand_written_rles_decode_to_known_masks():
    exp = _expected()
    for row, (_, mask) in zip(ROWS, exp["img_a"] + exp["img_b"]):
        rle = row.split(",")[1]
        assert np.array_equal(rle_decode(rle, (H, W), "C"), mask)
        assert rle_encode(mask, "C") == rle


def test_csv_to_coco_keeps_masks_overlaps_categories_and_metadata(tmp_path):
    out = sartorius_to_coco(_write(tmp_path), tmp_path / "coco.json")
    coco = json.loads(out.read_text())
    assert coco["categories"] == [{"id": 1, "name": "astro"}, {"id": 2, "name": "shsy5y"}]
    names = {c["id"]: c["name"] for c in coco["categories"]}
    imgs = {i["file_name"]: i for i in coco["images"]}
    assert set(imgs) == {"img_a.png", "img_b.png"}
    assert imgs["img_a.png"]["sample_id"] == "shsy5y[diff]_A1"
    assert imgs["img_a.png"]["plate_time"] == "11h30m00s"
    assert imgs["img_b.png"]["sample_date"] == "2020-09-13"
    assert imgs["img_b.png"]["elapsed_timedelta"] == "1 days 09:00:00"
    assert imgs["img_b.png"]["cell_type"] == "astro"
    assert (imgs["img_a.png"]["height"], imgs["img_a.png"]["width"]) == (H, W)
    for stem, expected in _expected().items():
        img = imgs[f"{stem}.png"]
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        assert len(anns) == len(expected)
        for a, (cell_type, mask) in zip(anns, expected):
            assert names[a["category_id"]] == cell_type
            assert np.array_equal(coco_rle_to_mask(a["segmentation"]), mask)
            assert a["area"] == mask.sum()
    a_masks = [coco_rle_to_mask(a["segmentation"]) for a in coco["annotations"][:2]]
    assert (a_masks[0] & a_masks[1]).sum() == 4  # the overlap is kept


def test_round_trip_gives_the_same_pixels(tmp_path):
    csv_file = _write(tmp_path)
    coco_json = sartorius_to_coco(csv_file, tmp_path / "coco.json")
    back = coco_to_sartorius_csv(coco_json, tmp_path / "back.csv")
    with open(csv_file) as f1, open(back) as f2:
        orig, again = list(csv.DictReader(f1)), list(csv.DictReader(f2))
    assert len(orig) == len(again)
    for r1, r2 in zip(orig, again):
        assert r1 == r2  # identical rows: RLE, sizes, cell type and metadata
    # and once more through COCO: same JSON
    coco2 = sartorius_to_coco(back, tmp_path / "coco2.json", image_dir=tmp_path / "train")
    assert (
        json.loads(coco2.read_text())["annotations"]
        == json.loads(coco_json.read_text())["annotations"]
    )


def test_image_ids_and_fixed_categories(tmp_path):
    out = sartorius_to_coco(
        _write(tmp_path),
        tmp_path / "c.json",
        image_ids=["img_b"],
        categories=["shsy5y", "astro", "cort"],
    )
    coco = json.loads(out.read_text())
    assert [i["file_name"] for i in coco["images"]] == ["img_b.png"]
    assert [c["name"] for c in coco["categories"]] == ["shsy5y", "astro", "cort"]
    assert [a["category_id"] for a in coco["annotations"]] == [2]


def _replace(row: int, col: int, value: str) -> list[str]:
    rows = list(ROWS)
    parts = rows[row].split(",")
    parts[col] = value
    rows[row] = ",".join(parts)
    return rows


@pytest.mark.parametrize(
    "case, exc, words",
    [
        ("missing image", ImageReadError, ["img_b.png", "not found", "line 5"]),
        ("unreadable image", ImageReadError, ["img_b.png", "cannot read", "line 5"]),
        ("rle past the end", SartoriusFormatError, ["line 5", "img_b", "past the end"]),
        ("rle malformed", SartoriusFormatError, ["line 3", "img_a", "odd number"]),
        ("width disagrees", SartoriusFormatError, ["line 4", "img_a.png", "width 17"]),
        ("height disagrees", SartoriusFormatError, ["line 2", "img_a.png", "height 13"]),
        ("height not a number", SartoriusFormatError, ["line 2", "img_a", "not an integer"]),
    ],
)
def test_bad_input_raises_naming_row_and_file_and_writes_nothing(tmp_path, case, exc, words):
    rows, images = ROWS, ("img_a", "img_b")
    if case == "missing image":
        images = ("img_a",)
    elif case == "rle past the end":
        rows = _replace(3, 1, "191 3")  # 190 + 3 = 193 > 12 * 16
    elif case == "rle malformed":
        rows = _replace(1, 1, "37 4 53")
    elif case == "width disagrees":
        rows = _replace(2, 2, "17")
    elif case == "height disagrees":
        rows = _replace(0, 3, "13")
    elif case == "height not a number":
        rows = _replace(0, 3, "twelve")
    csv_file = _write(tmp_path, rows=rows, images=images)
    if case == "unreadable image":
        (tmp_path / "train" / "img_b.png").write_bytes(b"\x89PNG garbage")
    out = tmp_path / "out.json"
    with pytest.raises(exc) as info:
        sartorius_to_coco(csv_file, out)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    assert not out.exists()
    assert not list(tmp_path.glob(".out.json*"))

"""Submission readers (nucdet.io.readers) and the scoring CLI (nucdet.evaluation.score).

Ground truth: a two-image COCO JSON. Submissions are written by hand (RLE strings from
``rle_encode``) or by nucdet's writers, and scored through ``main(argv)``; one run goes
through ``python -m`` in a subprocess to check the exit status and the absence of a
traceback.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nucdet.data.coco import CocoBuilder
from nucdet.evaluation.groundtruth import GtDataset
from nucdet.evaluation.score import main
from nucdet.io.readers import (
    SubmissionError,
    read_coco_results,
    read_dsb_csv,
    read_kaggle_csv,
)
from nucdet.io.rle import mask_to_coco_rle, rle_encode
from nucdet.io.writers import make_writer
from nucdet.structures import ImagePrediction

REPO = Path(__file__).resolve().parents[2]


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


# img1: 6x8 with two objects; img2: 5x7 with one object.
G1 = [_box(6, 8, 0, 2, 0, 3), _box(6, 8, 3, 6, 4, 8)]
G2 = [_box(5, 7, 1, 4, 1, 4)]


@pytest.fixture()
def gt_path(tmp_path):
    b = CocoBuilder(["nucleus"])
    b.add_image("img1.png", 6, 8, G1, modality="fluo")
    b.add_image("img2.png", 5, 7, G2, modality="he")
    return b.write(tmp_path / "gt.json")


def _gt(gt_path):
    return GtDataset.from_coco(json.loads(Path(gt_path).read_text()))


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _kaggle_rows(order="C"):
    return [
        ["img1", rle_encode(G1[0], order)],
        ["img1", rle_encode(G1[1], order)],
        ["img2", ""],  # no object predicted for img2
    ]


def test_readers_decode_masks(gt_path, tmp_path):
    gt = _gt(gt_path)
    k = read_kaggle_csv(
        _write_csv(tmp_path / "k.csv", ["id", "predicted"], _kaggle_rows()), gt.images
    )
    d = read_dsb_csv(
        _write_csv(tmp_path / "d.csv", ["ImageId", "EncodedPixels"], _kaggle_rows("F")), gt.images
    )
    for preds in (k, d):
        np.testing.assert_array_equal(preds["img1"].masks(), np.stack(G1))
        assert len(preds["img2"]) == 0


def test_writer_round_trip(gt_path, tmp_path):
    gt = _gt(gt_path)
    preds = [
        ImagePrediction("img1", 6, 8, [mask_to_coco_rle(m) for m in G1], [0.9, 0.8], [0, 0]),
        ImagePrediction("img2", 5, 7, [mask_to_coco_rle(G2[0])], [0.7], [0]),
    ]
    for fmt, reader in (("kaggle", read_kaggle_csv), ("dsb", read_dsb_csv)):
        with make_writer(fmt, tmp_path / f"sub_{fmt}.csv") as w:
            for p in preds:
                w.add(p)
        got = reader(tmp_path / f"sub_{fmt}.csv", gt.images)
        for p in preds:
            np.testing.assert_array_equal(got[p.image_id].masks(), p.masks())
    with make_writer("coco", tmp_path / "sub.json", image_ids={"img1": 1, "img2": 2}) as w:
        for p in preds:
            w.add(p)
    got = read_coco_results(tmp_path / "sub.json", gt.images, gt.category_ids)
    assert got["img1"].scores.tolist() == pytest.approx([0.9, 0.8])
    np.testing.assert_array_equal(got["img2"].masks(), np.stack(G2))


def test_cli_kaggle_scores_and_prints_table(gt_path, tmp_path, capsys):
    sub = _write_csv(tmp_path / "sub.csv", ["id", "predicted"], _kaggle_rows())
    out = tmp_path / "metrics.json"
    rc = main(
        ["--submission", str(sub), "--format", "kaggle", "--gt", str(gt_path), "--output", str(out)]
    )
    text = capsys.readouterr().out
    assert rc == 0
    # img1 exact -> 1.0; img2 has an object and no prediction -> 0.0. Mean 0.5.
    assert "MaP-IoU: 0.5000" in text
    assert "modality" in text and "fluo" in text and "he" in text
    saved = json.loads(out.read_text())
    assert saved["results"]["segm"]["MaP-IoU"] == 0.5
    assert saved["results"]["segm"]["MaP-IoU-fluo"] == 1.0
    assert [r["map_iou"] for r in saved["per_image"]] == [1.0, 0.0]


def test_cli_dsb_and_coco(gt_path, tmp_path, capsys):
    sub = _write_csv(tmp_path / "sub.csv", ["ImageId", "EncodedPixels"], _kaggle_rows("F"))
    assert (
        main(
            [
                "--submission",
                str(sub),
                "--format",
                "dsb",
                "--gt",
                str(gt_path),
                "--group-key",
                "none",
            ]
        )
        == 0
    )
    assert "MaP-IoU: 0.5000" in capsys.readouterr().out
    results = [
        {"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": mask_to_coco_rle(G1[0])},
        {
            "image_id": "img1",
            "category_id": 1,
            "score": 0.8,
            "segmentation": mask_to_coco_rle(G1[1]),
        },
        {"image_id": 2, "category_id": 1, "score": 0.7, "segmentation": mask_to_coco_rle(G2[0])},
    ]
    (tmp_path / "res.json").write_text(json.dumps(results))
    assert (
        main(["--submission", str(tmp_path / "res.json"), "--format", "coco", "--gt", str(gt_path)])
        == 0
    )
    text = capsys.readouterr().out
    assert "MaP-IoU: 1.0000" in text and "COCO segm AP: 100.00" in text


def _error_of(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.startswith("error: ")
    return err


@pytest.mark.parametrize(
    "rows,expected",
    [
        ([["img1", "1 2 3"], ["img2", ""]], "line 2 (image img1): bad RLE: RLE has an odd"),
        ([["img1", "1 x"], ["img2", ""]], "non-integer token 'x'"),
        ([["img1", "40 20"], ["img2", ""]], "runs past the end"),
        ([["img1", "5 2 1 2"], ["img2", ""]], "unsorted or overlap"),
        ([["img1", ""], ["img9", ""], ["img2", ""]], "line 3: unknown image id 'img9'"),
        (
            [["img1", "1 4"], ["img1", "3 2"], ["img2", ""]],
            "image img1: masks of lines 2 and 3 overlap",
        ),
        ([["img1", "1 4"]], "1 image(s) missing from the submission (e.g. ['img2'])"),
    ],
)
def test_cli_malformed_kaggle(gt_path, tmp_path, capsys, rows, expected):
    sub = _write_csv(tmp_path / "bad.csv", ["id", "predicted"], rows)
    err = _error_of(["--submission", str(sub), "--format", "kaggle", "--gt", str(gt_path)], capsys)
    assert expected in err and "bad.csv" in err


def test_cli_malformed_other(gt_path, tmp_path, capsys):
    wrong_header = _write_csv(tmp_path / "h.csv", ["id", "rle"], [["img1", ""]])
    assert "no column 'predicted'" in _error_of(
        ["--submission", str(wrong_header), "--format", "kaggle", "--gt", str(gt_path)], capsys
    )
    assert "not found" in _error_of(
        ["--submission", str(tmp_path / "nope.csv"), "--format", "dsb", "--gt", str(gt_path)],
        capsys,
    )
    rle = mask_to_coco_rle(G1[0])
    cases = [
        (
            [{"image_id": 7, "category_id": 1, "score": 1, "segmentation": rle}],
            "result 0: unknown image_id 7",
        ),
        (
            [{"image_id": 1, "category_id": 5, "score": 1, "segmentation": rle}],
            "unknown category_id 5",
        ),
        (
            [
                {
                    "image_id": 1,
                    "category_id": 1,
                    "score": 1,
                    "segmentation": {"size": [6, 8], "counts": "!!"},
                }
            ],
            "invalid character",
        ),
        (
            [{"image_id": 2, "category_id": 1, "score": 1, "segmentation": rle}],
            "mask size [6, 8] != image size [5, 7]",
        ),
        ([{"image_id": 1, "category_id": 1, "segmentation": rle}], "no 'score'"),
    ]
    for entries, expected in cases:
        (tmp_path / "r.json").write_text(json.dumps(entries))
        err = _error_of(
            ["--submission", str(tmp_path / "r.json"), "--format", "coco", "--gt", str(gt_path)],
            capsys,
        )
        assert expected in err, err
    (tmp_path / "r.json").write_text("{not json")
    assert "not valid JSON" in _error_of(
        ["--submission", str(tmp_path / "r.json"), "--format", "coco", "--gt", str(gt_path)], capsys
    )


def test_overlap_allowed_on_request(gt_path, tmp_path):
    rows = [["img1", "1 4"], ["img1", "3 2"], ["img2", ""]]
    sub = _write_csv(tmp_path / "o.csv", ["id", "predicted"], rows)
    preds = read_kaggle_csv(sub, _gt(gt_path).images, allow_overlap=True)
    assert len(preds["img1"]) == 2
    with pytest.raises(SubmissionError):
        read_kaggle_csv(sub, _gt(gt_path).images)


def test_module_runs_as_a_command(gt_path, tmp_path):
    sub = _write_csv(tmp_path / "bad.csv", ["id", "predicted"], [["img1", "0 3"], ["img2", ""]])
    cmd = [
        sys.executable,
        "-m",
        "nucdet.evaluation.score",
        "--submission",
        str(sub),
        "--format",
        "kaggle",
        "--gt",
        str(gt_path),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2
    assert "start below 1" in r.stderr and "Traceback" not in r.stderr

"""The scorer and the Sartorius converter on hostile input: NaN/inf scores, NUL
bytes, non-UTF-8 and empty files are errors naming the file (exit status 2 for the
scorer); duplicate Sartorius rows and repeated --ids are converted once, with a warning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nucdet.data.coco import CocoBuilder
from nucdet.data.convert import main as convert_main
from nucdet.data.samples import make_sartorius_from_dsb, make_synthetic_dsb
from nucdet.evaluation.score import main
from nucdet.io.rle import mask_to_coco_rle, rle_encode

REPO = Path(__file__).resolve().parents[2]
MASK = np.zeros((6, 8), bool)
MASK[1:4, 2:6] = True


@pytest.fixture()
def gt_path(tmp_path):
    b = CocoBuilder(["nucleus"])
    b.add_image("img1.png", 6, 8, [MASK])
    return b.write(tmp_path / "gt.json")


def _score(sub, gt, fmt):
    return main(["--submission", str(sub), "--format", fmt, "--gt", str(gt)])


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_coco_scores_are_rejected(tmp_path, gt_path, capsys, bad):
    rle = mask_to_coco_rle(MASK)
    det = {"image_id": 1, "category_id": 1, "segmentation": rle}
    sub = tmp_path / "res.json"
    # json.dumps writes NaN / Infinity literals, as Python and many tools do
    sub.write_text(json.dumps([{**det, "score": 0.9}, {**det, "score": float(bad)}]))
    assert _score(sub, gt_path, "coco") == 2
    err = capsys.readouterr().err
    assert f"{sub}, result 1 (image img1): score {float(bad)!r} is not a finite number" in err


def test_nul_byte_non_utf8_and_empty_submissions(tmp_path, gt_path, capsys):
    sub = tmp_path / "sub.csv"
    sub.write_bytes(b"id,predicted\nimg1,\x00" + rle_encode(MASK).encode() + b"\n")
    assert _score(sub, gt_path, "kaggle") == 2
    assert f"{sub}, line 2 (image img1): bad RLE" in capsys.readouterr().err
    sub.write_bytes(b"id,predicted\nimg\xe91," + rle_encode(MASK).encode() + b"\n")  # latin-1
    assert _score(sub, gt_path, "kaggle") == 2
    assert f"{sub}: not UTF-8 text" in capsys.readouterr().err
    sub.write_bytes(b"")
    assert _score(sub, gt_path, "kaggle") == 2
    assert f"{sub}: empty file" in capsys.readouterr().err
    res = tmp_path / "res.json"
    res.write_bytes(b'[{"image_id": "\xe9"}]')
    assert _score(res, gt_path, "coco") == 2
    assert f"{res}: not UTF-8 text" in capsys.readouterr().err


def test_nul_byte_exit_status_from_the_command_line(tmp_path, gt_path):
    sub = tmp_path / "sub.csv"
    sub.write_bytes(b"id,predicted\nimg1,1 2\x00\n")
    proc = subprocess.run(
        [sys.executable, "-m", "nucdet.evaluation.score", "--submission", str(sub),
         "--format", "kaggle", "--gt", str(gt_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr


def test_long_rle_rows_are_read(tmp_path):
    # A ragged 400x400 mask: 40000 runs, an RLE of ~0.5 MB, past csv's default field limit
    # (131072 characters), which used to end the scorer in a csv.Error traceback.
    mask = np.zeros((400, 400), bool)
    mask[::2, ::2] = True
    b = CocoBuilder(["nucleus"])
    b.add_image("big.png", 400, 400, [mask])
    gt = b.write(tmp_path / "gt.json")
    rle = rle_encode(mask)
    assert len(rle) > 131072
    sub = tmp_path / "sub.csv"
    sub.write_text(f"id,predicted\nbig,{rle}\n")
    out = tmp_path / "m.json"
    args = ["--submission", str(sub), "--format", "kaggle", "--gt", str(gt), "--output", str(out)]
    assert main(args) == 0
    assert json.loads(out.read_text())["results"]["segm"]["MaP-IoU"] == 1.0  # the GT itself


def test_duplicate_sartorius_rows_and_ids_are_converted_once(tmp_path, caplog):
    dsb = make_synthetic_dsb(tmp_path / "dsb", n_images=2, shape=(32, 40), n_cells=3)
    csv_file = make_sartorius_from_dsb(dsb, tmp_path / "sart", images_per_sample=1)
    ref = tmp_path / "ref.json"
    assert convert_main(["sartorius", str(csv_file), "--output", str(ref)]) == 0
    ref_coco = json.loads(ref.read_text())
    lines = csv_file.read_text().splitlines(keepends=True)
    # lines[1] (CSV line 2) repeated at the end: CSV line len(lines) + 1
    csv_file.write_text("".join(lines) + lines[1])
    out = tmp_path / "out.json"
    ids = sorted({ln.split(",")[0] for ln in lines[1:]})
    assert convert_main(
        ["sartorius", str(csv_file), "--output", str(out), "--ids", f"{ids[0]},{ids[0]},{ids[1]}"]
    ) == 0
    coco = json.loads(out.read_text())
    assert f"1 exact duplicate row(s) kept once (line {len(lines) + 1} = line 2)" in caplog.text
    assert f"converted once: ['{ids[0]}']" in caplog.text
    assert coco["info"]["duplicate_rows_dropped"] == 1
    by_file = lambda c: sorted(im["file_name"] for im in c["images"])  # noqa: E731
    assert by_file(coco) == by_file(ref_coco)
    assert [a["segmentation"] for a in coco["annotations"]] == [
        a["segmentation"] for a in ref_coco["annotations"]
    ]

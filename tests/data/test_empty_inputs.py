"""Conversions that find no data fail: a header-only Sartorius CSV, a DSB root
without images/ folders; a DSB sample folder without images/ is named, and left out only
with --skip-bad; an existing good output is never replaced by an empty one."""

from __future__ import annotations

import json
import shutil

from nucdet.data.convert import main
from nucdet.data.samples import make_synthetic_dsb
from nucdet.data.sartorius import CSV_COLUMNS

GOOD = '{"images": ["a previous, good conversion"]}'


def test_header_only_sartorius_csv_is_an_error(tmp_path, capsys):
    csv_file = tmp_path / "train.csv"
    csv_file.write_text(",".join(CSV_COLUMNS) + "\n")
    out = tmp_path / "out.json"
    out.write_text(GOOD)
    assert main(["sartorius", str(csv_file), "--output", str(out)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {csv_file}: a header but no rows: no images to convert"
    )
    assert out.read_text() == GOOD
    csv_file.write_text("")  # a zero-byte file
    assert main(["sartorius", str(csv_file), "--output", str(out)]) == 1
    assert f"{csv_file}: empty file" in capsys.readouterr().err
    assert out.read_text() == GOOD


def test_dsb_root_without_images_is_an_error(tmp_path, capsys):
    root = tmp_path / "stage1_train"
    for name in ("s1", "s2"):
        (root / name / "masks").mkdir(parents=True)  # masks/ but no images/
    out = tmp_path / "out.json"
    out.write_text(GOOD)
    assert main(["dsb", str(root), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "2 sample folder(s) without images/<id>.png: s1, s2" in err and "--skip-bad" in err
    assert main(["dsb", str(root), "--output", str(out), "--skip-bad"]) == 1
    assert f"{root}: no DSB samples" in capsys.readouterr().err
    assert out.read_text() == GOOD


def test_dsb_sample_without_images_is_named_and_skipped_only_on_request(tmp_path, caplog):
    root = make_synthetic_dsb(tmp_path / "stage1_train", n_images=2, shape=(32, 40), n_cells=3)
    ids = sorted(p.name for p in root.iterdir())
    shutil.rmtree(root / ids[0] / "images")  # a half-extracted sample
    out = tmp_path / "out.json"
    assert main(["dsb", str(root), "--output", str(out)]) == 1
    assert not out.exists()
    assert main(["dsb", str(root), "--output", str(out), "--skip-bad"]) == 0
    coco = json.loads(out.read_text())
    assert [im["file_name"] for im in coco["images"]] == [f"{ids[1]}/images/{ids[1]}.png"]
    assert f"without images/<id>.png: {ids[0]}: left out (--skip-bad)" in caplog.text


def test_check_fails_on_a_dataset_without_images(tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text(
        json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "n"}]})
    )
    assert main(["check", str(empty)]) == 1
    assert f"{empty}: no images" in capsys.readouterr().out

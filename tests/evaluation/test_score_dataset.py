"""The scoring CLI against a registered dataset: a perfect submission scores 1, and an
image left empty scores 0 (so the mean drops by exactly 1/N)."""

import json

import numpy as np
from detectron2.data import DatasetCatalog

from nucdet.evaluation.score import main
from nucdet.inference.pipeline import gt_rles
from nucdet.io.rle import mask_to_coco_rle
from nucdet.io.writers import make_writer
from nucdet.structures import ImagePrediction


def _write_gt_submission(path, dicts, empty_ids=()):
    with make_writer("kaggle", path) as w:
        for d in dicts:
            image_id = d["file_name"].rsplit("/", 1)[-1][:-4]
            rles = (
                [] if image_id in empty_ids else gt_rles(d["annotations"], d["height"], d["width"])
            )
            # Training masks may overlap slightly; the Kaggle format forbids it: keep the
            # first owner of each pixel, as a post-processed submission would.
            pred = ImagePrediction(
                image_id, d["height"], d["width"], rles, np.ones(len(rles)), np.zeros(len(rles))
            )
            if rles:
                lab = np.zeros((d["height"], d["width"]), np.int32)
                for i, m in enumerate(pred.masks()[::-1]):
                    lab[m] = len(rles) - i
                pred = ImagePrediction(
                    image_id,
                    d["height"],
                    d["width"],
                    [mask_to_coco_rle(lab == i + 1) for i in range(len(rles))],
                    np.ones(len(rles)),
                    np.zeros(len(rles)),
                )
            w.add(pred)


def _score(sub, out) -> dict:
    argv = ["--submission", str(sub), "--format", "kaggle", "--dataset", "dsb2018_sample_val"]
    assert main([*argv, "--output", str(out)]) == 0
    return json.loads(out.read_text())


def test_score_registered_dataset(tmp_path, registered, capsys):
    dicts = DatasetCatalog.get("dsb2018_sample_val")
    sub = tmp_path / "perfect.csv"
    _write_gt_submission(sub, dicts)
    out = tmp_path / "m.json"
    result = _score(sub, out)
    perfect = {r["image_id"]: r["map_iou"] for r in result["per_image"]}
    assert len(perfect) == len(dicts)
    # Only pixels contested by overlapping GT masks can differ from the GT.
    assert min(perfect.values()) > 0.95
    assert abs(result["results"]["segm"]["MaP-IoU"] - np.mean(list(perfect.values()))) < 1e-12
    first = dicts[0]["file_name"].rsplit("/", 1)[-1][:-4]
    _write_gt_submission(sub, dicts, empty_ids={first})
    result = _score(sub, out)
    holed = {r["image_id"]: r["map_iou"] for r in result["per_image"]}
    assert holed[first] == 0.0
    expected = (sum(perfect.values()) - perfect[first]) / len(dicts)
    assert abs(result["results"]["segm"]["MaP-IoU"] - expected) < 1e-12
    assert "MaP-IoU" in capsys.readouterr().out


def test_unknown_dataset_is_a_clear_error(tmp_path, capsys):
    sub = tmp_path / "s.csv"
    sub.write_text("id,predicted\n")
    assert main(["--submission", str(sub), "--format", "kaggle", "--dataset", "nope"]) == 2
    assert "nope" in capsys.readouterr().err

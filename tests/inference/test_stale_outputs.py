"""Bad input and faults at inference: predictions of another run are never
reused, weights that do not fit the config are an error, an unreadable image is named and
loses nothing."""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

import ensemble_infer
import infer
from nucdet.data.imageio import ImageReadError
from nucdet.inference.pipeline import PARTIAL_NAME, StaleOutputError, folder_inputs, run_inference
from nucdet.io.checkpoint import CheckpointError, CheckpointMismatchError
from nucdet.io.rle import mask_to_coco_rle
from nucdet.structures import ImagePrediction

OPTS = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "25",
        "POSTPROCESS.SCORE_THRESH", "[0.0]", "MODEL.RPN.POST_NMS_TOPK_TEST", "100"]  # fmt: skip


def make_model_dir(d, seed, *opts):
    d.mkdir(parents=True, exist_ok=True)
    cfg = tiny_cfg(*OPTS, *opts, "OUTPUT_DIR", str(d))
    torch.manual_seed(seed)
    DetectionCheckpointer(build_model(cfg), save_dir=str(d)).save("model_final")
    (d / "config.yaml").write_text(cfg.dump())
    return d


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return make_model_dir(root / "a", 0), make_model_dir(root / "b", 1)


@pytest.fixture(scope="module")
def images(tmp_path_factory, sample_root):
    """Two 64x64 crops of sample images."""
    d = tmp_path_factory.mktemp("images")
    split = json.loads((sample_root / "split.json").read_text())
    samples = json.loads((sample_root / "samples.json").read_text())
    for i in [i for i in split["val"] if samples[i]["height"] == 256][:2]:
        src = sample_root / "stage1_train" / i / "images" / f"{i}.png"
        cv2.imwrite(str(d / f"{i}.png"), cv2.imread(str(src))[:64, :64])  # small: fast
    return d


def _infer(model_dir, images, out, *extra):
    return infer.main(
        ["--model-dir", str(model_dir), "--input", str(images), "--output", str(out), *extra]
    )


def test_rerun_with_other_weights_thresholds_or_inputs_is_an_error(
    models, images, tmp_path, registered
):
    a, b = models
    out = tmp_path / "out"
    _infer(a, images, out)
    first = (out / "submission.csv").read_bytes()
    _infer(a, images, out)  # the same run again: resumes, same file
    assert (out / "submission.csv").read_bytes() == first

    # Other weights (same config): refused, and the old submission is left as it was.
    with pytest.raises(StaleOutputError, match=r"another run .*model\.weights"):
        _infer(a, images, out, "--weights", str(b / "model_final.pth"))
    with pytest.raises(StaleOutputError, match="another run"):
        ensemble_infer.main(["--model-dir", str(b), "--input", str(images), "--output", str(out)])
    # Other post-processing threshold: the config part differs.
    with pytest.raises(StaleOutputError, match=r"model\.config.*postprocess"):
        _infer(a, images, out, "POSTPROCESS.SCORE_THRESH", "[0.5]")
    # Another folder holding the same file names.
    other = tmp_path / "other_images"
    shutil.copytree(images, other)
    with pytest.raises(StaleOutputError, match="inputs"):
        _infer(a, other, out)
    assert (out / "submission.csv").read_bytes() == first

    # --force predicts again: the same bytes as model b into a fresh folder.
    fresh = tmp_path / "fresh_b"
    _infer(b, images, fresh)
    _infer(a, images, out, "--weights", str(b / "model_final.pth"), "--force")
    assert (out / "submission.csv").read_bytes() == (fresh / "submission.csv").read_bytes()
    assert (fresh / "submission.csv").read_bytes() != first  # the models do differ


def test_partial_file_without_fingerprint_is_not_reused(images, tmp_path):
    inputs = folder_inputs(images)
    out = tmp_path / "out"
    out.mkdir()
    # An older nucdet's predictions.jsonl: records only, no fingerprint line.
    rec = {"image_id": inputs[0].image_id, "height": 64, "width": 64, "rles": [],
           "scores": [], "classes": []}  # fmt: skip
    (out / PARTIAL_NAME).write_text(json.dumps(rec) + "\n")

    def empty(image, item):
        return ImagePrediction(item.image_id, *image.shape[:2], [], np.zeros(0), np.zeros(0))

    with pytest.raises(StaleOutputError, match="no run fingerprint"):
        run_inference(inputs, empty, out)
    metrics = run_inference(inputs, empty, out, force=True)
    assert metrics["images"] == 2


def test_weights_of_another_config_are_an_error(models, images, tmp_path, registered):
    a, _ = models
    # config.yaml replaced by one with 3 classes, same weights.
    c = make_model_dir(tmp_path / "c", 0, "MODEL.ROI_HEADS.NUM_CLASSES", "3")
    shutil.copy(a / "model_final.pth", c / "model_final.pth")
    with pytest.raises(CheckpointMismatchError, match=r"cls_score\.weight \(2, 512\) vs \(4, 512"):
        _infer(c, images, tmp_path / "out")
    # A checkpoint cut short (killed copy): the error names the file.
    d = tmp_path / "d"
    shutil.copytree(a, d)
    data = (d / "model_final.pth").read_bytes()
    (d / "model_final.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"d/model_final\.pth .*truncated"):
        _infer(d, images, tmp_path / "out2")


def test_unreadable_image_is_named_and_earlier_records_kept(images, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    names = sorted(p.name for p in folder.glob("*.png"))
    # A third image, last in order, cut in half (a half download).
    bad = folder / "zz_truncated.png"
    data = (folder / names[0]).read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    inputs = folder_inputs(folder)
    assert inputs[-1].file_name == str(bad)

    def one_box(image, item):  # a fixed prediction: the image is read, nothing else matters
        h, w = image.shape[:2]
        mask = np.zeros((h, w), bool)
        mask[2:6, 3:9] = True
        return ImagePrediction(item.image_id, h, w, [mask_to_coco_rle(mask)], [0.9], [0])

    out = tmp_path / "out"
    with pytest.raises(ImageReadError, match=r"zz_truncated\.png.*2 predictions made so far"):
        run_inference(inputs, one_box, out)
    lines = (out / PARTIAL_NAME).read_text().splitlines()
    assert [json.loads(ln).get("image_id") for ln in lines[1:]] == [i.image_id for i in inputs[:2]]

    metrics = run_inference(inputs, one_box, out, skip_unreadable=True)
    assert metrics["images"] == 2
    assert [s["file"] for s in metrics["skipped_unreadable"]] == [str(bad)]
    rows = (out / "submission.csv").read_text().splitlines()
    assert sorted({r.split(",")[0] for r in rows[1:]}) == [i.image_id for i in inputs[:2]]


def test_skip_unreadable_is_in_the_run_summary(models, images, tmp_path, registered, caplog):
    a, _ = models
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    bad = folder / "zz_cut.png"
    data = next(folder.glob("*.png")).read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="zz_cut.png"):
        _infer(a, folder, tmp_path / "out")
    metrics = _infer(a, folder, tmp_path / "out", "--skip-unreadable")
    assert metrics["images"] == 2 and metrics["skipped_unreadable"][0]["file"] == str(bad)
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("results:")]
    assert f'"skipped_unreadable": ["{bad}"]' in summary[-1]

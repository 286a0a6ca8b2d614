"""The U-Net through the entry points: train_net.py trains a tiny one for 2 iterations,
infer.py writes a valid submission with a random one, and ensemble_infer.py fuses it with
a random Mask R-CNN (wbf_mask_vote and unet_fg_reweight) from an ensemble YAML."""

import contextlib
import csv
import json

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_OPTS, tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

import ensemble_infer
import infer
import train_net
from nucdet.config import build_cfg
from nucdet.engine.launch import parse_args
from nucdet.io.rle import rle_decode


@contextlib.contextmanager
def one_torch_thread():
    """torch single-threaded for a block (tests/engine/single_thread.py's helper: on the
    shared 2-core machine two OpenMP threads are several times slower than one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


UNET_OPTS = ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "TEST.DETECTIONS_PER_IMAGE",
             "50", "POSTPROCESS.SCORE_THRESH", "[0.0]"]  # fmt: skip


def save_model(cfg, d):
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(d)).save("model_final")
    (d / "config.yaml").write_text(cfg.dump())
    return d


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory, repo):
    d = tmp_path_factory.mktemp("unet")
    cfg = build_cfg(repo / "configs/cpu/unet_GN_tiny.yaml", [*UNET_OPTS, "OUTPUT_DIR", str(d)])
    return save_model(cfg, d)


@pytest.fixture(scope="module")
def rcnn_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("rcnn")
    cfg = tiny_cfg(
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "25",
        "POSTPROCESS.SCORE_THRESH", "[0.0]", "OUTPUT_DIR", str(d),
    )  # fmt: skip
    return save_model(cfg, d)


@pytest.fixture(scope="module")
def images(tmp_path_factory, sample_root):
    """Two small sample images (256x256) in a flat folder."""
    d = tmp_path_factory.mktemp("images")
    split = json.loads((sample_root / "split.json").read_text())
    samples = json.loads((sample_root / "samples.json").read_text())
    for i in [i for i in split["val"] if samples[i]["height"] == 256][:2]:
        src = sample_root / "stage1_train" / i / "images" / f"{i}.png"
        (d / f"{i}.png").write_bytes(src.read_bytes())
    return d


def check_submission(path, image_dir):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "predicted"]
    ids = {p.stem for p in image_dir.glob("*.png")}
    assert {r[0] for r in rows[1:]} == ids
    for image_id in ids:
        occupied = np.zeros((256, 256), np.int32)
        for r in rows[1:]:
            if r[0] == image_id and r[1]:
                occupied += rle_decode(r[1], (256, 256), "C")
        assert occupied.max() <= 1
    return rows


def test_infer_with_a_random_unet(unet_dir, images, tmp_path):
    out = tmp_path / "out"
    with one_torch_thread():
        infer.main(["--model-dir", str(unet_dir), "--input", str(images), "--output", str(out)])
    rows = check_submission(out / "submission.csv", images)
    assert len(rows) > 3  # a random U-Net's maps do give instances
    assert json.loads((out / "metrics.json").read_text())["images"] == 2


@pytest.mark.parametrize("method", ["wbf_mask_vote", "unet_fg_reweight"])
def test_ensemble_of_unet_and_mask_rcnn(unet_dir, rcnn_dir, images, tmp_path, method):
    fusion = {"method": method}
    if method == "unet_fg_reweight":
        fusion.update(fg_models=["unet"], alpha=0.5)
    spec = {
        "models": [
            {"name": "unet", "model_dir": str(unet_dir)},
            {"name": "rcnn", "model_dir": str(rcnn_dir)},
        ],
        "views": ["identity", "hflip"],
        "fusion": fusion,
    }
    path = tmp_path / "ens.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    with one_torch_thread():
        ensemble_infer.main(["--ensemble", str(path), "--input", str(images), "--output",
                             str(out)])  # fmt: skip
    check_submission(out / "submission.csv", images)


def test_train_net_trains_a_tiny_unet(repo, tmp_path, registered):
    out = tmp_path / "train"
    args = parse_args(
        ["--config-file", str(repo / "configs/cpu/unet_GN_tiny.yaml"), *TINY_OPTS,
         "INPUT.CROP.SIZE", "[64, 64]", "SOLVER.MAX_ITER", "2", "SOLVER.LOG_PERIOD", "1",
         "DATASETS.TRAIN", "('dsb2018_sample_train',)", "DATASETS.TEST", "()",
         "OUTPUT_DIR", str(out)]
    )  # fmt: skip
    with one_torch_thread():
        train_net.main(args)
    assert (out / "model_final.pth").is_file()
    lines = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert {"loss_fg", "loss_boundary", "loss_distance"} <= set(lines[-1])

"""configs/sartorius: per-class settings in class order, staged fine-tuning as configs, and
class-balanced sampling (RepeatFactorTrainingSampler) on a registered 3-class dataset in
the Sartorius layout (built from the bundled DSB sample)."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE_ROOT
from detectron2.data import DatasetCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler

from nucdet.config import build_cfg
from nucdet.data.register import register_coco
from nucdet.data.samples import dsb_ids, make_sartorius_from_dsb
from nucdet.data.sartorius import sartorius_to_coco
from nucdet.engine.trainer import Trainer

SART = REPO / "configs" / "sartorius"
MODELS = sorted(p for p in SART.glob("*.yaml") if not p.name.startswith("Base-"))
CLASSES = ["astro", "cort", "shsy5y"]  # sartorius_to_coco sorts the cell_type names
# REFERENCE section 4: score threshold and minimum area per cell type
PER_CLASS = {"shsy5y": (0.15, 75), "astro": (0.35, 150), "cort": (0.55, 75)}


def cfg_of(path: Path, *opts: str):
    return build_cfg(path, ["MODEL.DEVICE", "cpu", *opts])


def test_model_configs_found():
    names = {p.name for p in MODELS}
    assert {
        "mask_rcnn_R_50_FPN_3k.yaml",
        "mask_rcnn_X_101_32x8d_FPN_3k.yaml",
        "mask_rcnn_R_50_FPN_GN_scratch_6k.yaml",
        "mask_rcnn_X_101_32x8d_FPN_GN_scratch_6k.yaml",
        "mask_rcnn_R_50_FPN_stage1_heads_1k.yaml",
        "mask_rcnn_R_50_FPN_stage2_all_3k.yaml",
        "mask_rcnn_R_50_FPN_RFS_3k.yaml",
    } <= names


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_per_class_settings_in_class_order(path):
    cfg = cfg_of(path)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert list(cfg.POSTPROCESS.SCORE_THRESH) == [PER_CLASS[c][0] for c in CLASSES]
    assert list(cfg.POSTPROCESS.MIN_AREA) == [PER_CLASS[c][1] for c in CLASSES]
    assert cfg.POSTPROCESS.MAJORITY_CLASS and cfg.POSTPROCESS.REMOVE_OVERLAP
    assert cfg.DATASETS.TRAIN == ("sartorius_fold0_train",)
    assert cfg.DATASETS.TEST == ("sartorius_fold0_val",)
    assert cfg.TEST.EVAL_MAX_DETS >= 1000 and cfg.TEST.DETECTIONS_PER_IMAGE >= 1000
    assert cfg.OUTPUT_DIR == f"output/sartorius/{path.stem}"  # runs never share a folder


def test_staged_fine_tuning():
    stage1 = cfg_of(SART / "mask_rcnn_R_50_FPN_stage1_heads_1k.yaml")
    stage2 = cfg_of(SART / "mask_rcnn_R_50_FPN_stage2_all_3k.yaml")
    assert stage1.MODEL.WEIGHTS.startswith("https://dl.fbaipublicfiles.com/detectron2/")
    assert stage2.MODEL.WEIGHTS == f"{stage1.OUTPUT_DIR}/model_final.pth"
    assert stage2.SOLVER.FREEZE_PATTERNS == [] and stage2.MODEL.BACKBONE.FREEZE_AT == 0
    assert stage2.SOLVER.BASE_LR < stage1.SOLVER.BASE_LR
    model = Trainer.build_model(stage1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if not n.startswith("backbone.")}
    assert any(n.startswith("roi_heads.mask_head") for n in trainable)
    assert any(n.startswith("proposal_generator") for n in trainable)


@pytest.fixture(scope="module")
def sartorius_tiny(tmp_path_factory):
    """6 images, one cell type each: cort x3, astro x1, shsy5y x2."""
    tmp = tmp_path_factory.mktemp("sart")
    dsb = SAMPLE_ROOT / "stage1_train"
    ids = dsb_ids(dsb, size=(256, 256))[:6]
    assert len(ids) == 6
    types = ("cort", "cort", "cort", "astro", "shsy5y", "shsy5y")  # i-th sorted id -> types[i]
    csv_file = make_sartorius_from_dsb(dsb, tmp, ids, cell_types=types, images_per_sample=1)
    coco = sartorius_to_coco(csv_file, tmp / "coco.json")
    register_coco("engine_sartorius_tiny", coco, tmp / "train")
    return "engine_sartorius_tiny", dict(zip(sorted(ids), types))


def test_repeat_factors_on_our_dataset(sartorius_tiny):
    name, type_of = sartorius_tiny
    cfg = cfg_of(SART / "mask_rcnn_R_50_FPN_RFS_3k.yaml")
    dicts = DatasetCatalog.get(name)
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
        dicts, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
    )
    # by hand: f(cort) = 3/6, f(astro) = 1/6, f(shsy5y) = 2/6; r = max(1, sqrt(0.5 / f))
    by_hand = {"cort": 1.0, "astro": math.sqrt(3.0), "shsy5y": math.sqrt(1.5)}
    for d, r in zip(dicts, factors.tolist()):
        assert {a["category_id"] for a in d["annotations"]} == {
            CLASSES.index(type_of[Path(d["file_name"]).stem])
        }
        assert r == pytest.approx(by_hand[type_of[Path(d["file_name"]).stem]], rel=1e-6)


def test_rfs_config_drives_the_train_loader(sartorius_tiny):
    """Images of the rare class come out of the real train loader more often, by the
    repeat factor (a TrainingSampler would draw all six equally)."""
    name, type_of = sartorius_tiny
    cfg = cfg_of(
        SART / "mask_rcnn_R_50_FPN_RFS_3k.yaml",
        "DATASETS.TRAIN", f"('{name}',)",
        "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "2",
        "INPUT.CROP.ENABLED", "True",  # small crops: cheaper mapping, same sampling
        "INPUT.CROP.SIZE", "[64, 64]",
    )  # fmt: skip
    loader = Trainer.build_train_loader(cfg)
    drawn = Counter(
        type_of[Path(d["file_name"]).stem]
        for batch in itertools.islice(iter(loader), 250)
        for d in batch
    )
    per_image = {t: drawn[t] / Counter(type_of.values())[t] for t in CLASSES}
    assert per_image["astro"] / per_image["cort"] == pytest.approx(math.sqrt(3.0), rel=0.15)
    assert per_image["shsy5y"] / per_image["cort"] == pytest.approx(math.sqrt(1.5), rel=0.15)

"""End to end: DSB images -> Sartorius CSV -> COCO -> check -> folds -> register -> stats ->
mapper -> one training step of a tiny Mask R-CNN.

Uses the 520x696 images of the bundled sample (nucdet/data/dsb2018_sample) and falls back to
synthetic ones when the sample is absent, so it never depends on data outside the repo.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from nucdet.config import add_nucdet_config, apply_normalization
from nucdet.data.check import check_coco
from nucdet.data.folds import coco_folds
from nucdet.data.mapper import build_mapper
from nucdet.data.samples import dsb_ids, make_sartorius_from_dsb, make_synthetic_dsb
from nucdet.data.sartorius import sartorius_to_coco
from nucdet.data.stats import dataset_stats

register = pytest.importorskip("nucdet.data.register", reason="registration not written yet")


def _tiny_cfg(train_name: str, num_classes: int):
    cfg = add_nucdet_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.NORM = "BN"
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 500
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 200
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 256
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.MIN_SIZE_TRAIN = (0,)
    cfg.INPUT.MAX_SIZE_TRAIN = 2000
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [256, 256]
    cfg.INPUT.AUG.BRIGHTNESS = (0.9, 1.1)
    cfg.INPUT.AUG.NOISE_PROB = 0.5
    cfg.DATASETS.TRAIN = (train_name,)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    cfg.SOLVER.IMS_PER_BATCH = 1
    cfg.SOLVER.BASE_LR = 0.01
    return cfg


@pytest.fixture(scope="module")
def dsb_source(tmp_path_factory, sample_root):
    root = sample_root / "stage1_train"
    if root.is_dir():
        ids = dsb_ids(root, (520, 696))
        if len(ids) >= 3:
            return root, ids
    root = make_synthetic_dsb(tmp_path_factory.mktemp("dsb") / "stage1_train", n_images=4)
    return root, dsb_ids(root)


def test_sartorius_pipeline_to_one_training_step(tmp_path, dsb_source):
    dsb_root, ids = dsb_source
    csv_file = make_sartorius_from_dsb(dsb_root, tmp_path / "sartorius", ids, images_per_sample=1)
    image_root = csv_file.parent / "train"
    coco_json = sartorius_to_coco(csv_file, tmp_path / "sartorius.json")
    coco = json.loads(coco_json.read_text())
    assert [c["name"] for c in coco["categories"]] == sorted({"shsy5y", "astro", "cort"})
    assert (coco["images"][0]["height"], coco["images"][0]["width"]) == (520, 696)
    assert len(coco["annotations"]) > 10 * len(ids)
    report = check_coco(coco_json, image_root)
    assert report.ok, report.summary()

    folds = coco_folds(coco_json, k=2, seed=0, group_key="sample_id")
    names = []
    for k, (train_json, val_json) in enumerate(folds):
        for part, path in (("train", train_json), ("val", val_json)):
            name = f"e2e_sartorius_fold{k}_{part}"
            register.register_coco(name, path, image_root)
            register.register_coco(name, path, image_root)  # idempotent
            names.append(name)
    samples = [
        {d["sample_id"] for d in DatasetCatalog.get(f"e2e_sartorius_fold0_{p}")}
        for p in ("train", "val")
    ]
    assert samples[0] and samples[1] and not (samples[0] & samples[1])

    cfg = _tiny_cfg("e2e_sartorius_fold0_train", num_classes=len(coco["categories"]))
    cfg.INPUT.NORMALIZATION = "dataset"
    cfg.INPUT.DATASET_STATS = str(tmp_path / "stats.json")
    stats = dataset_stats("e2e_sartorius_fold0_train", cfg.INPUT.DATASET_STATS)
    apply_normalization(cfg)
    assert list(cfg.MODEL.PIXEL_MEAN) == stats["mean"]

    torch.manual_seed(0)
    loader = build_detection_train_loader(cfg, mapper=build_mapper(cfg, is_train=True))
    batch = next(iter(loader))
    assert tuple(batch[0]["image"].shape) == (3, 256, 256)
    inst = batch[0]["instances"]
    if len(inst):
        assert 0 <= inst.gt_classes.min() and inst.gt_classes.max() < len(coco["categories"])

    model = build_model(cfg)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.SOLVER.BASE_LR, momentum=0.9)
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls"} <= set(losses)
    assert all(math.isfinite(float(v)) for v in losses.values()), losses
    opt.zero_grad()
    total.backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())

"""Every model config in configs/ loads (with its _BASE_ chain) and builds on CPU."""

from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

import nucdet.modeling  # noqa: F401  (registers NucleiUNet: the test must not depend on test order)
from nucdet.config import build_cfg

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(
    p for p in (REPO / "configs").rglob("*.yaml") if "ensembles" not in p.relative_to(REPO).parts
)


def test_configs_found():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_builds_on_cpu(path):
    cfg = build_cfg(path, ["MODEL.DEVICE", "cpu"])
    text = path.read_text()
    if "_BASE_" in text:
        base = text.split("_BASE_:")[1].split("\n")[0].strip().strip('"')
        assert (path.parent / base).resolve().is_relative_to(REPO / "configs")
    assert cfg.INPUT.MASK_FORMAT == "bitmask"
    assert cfg.TEST.DETECTIONS_PER_IMAGE >= 500
    assert min(s[0] for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES) <= 8
    unet = cfg.MODEL.META_ARCHITECTURE == "NucleiUNet"
    if unet:  # the U-Net family's name says it, and its ResNet encoder's weights load
        assert path.name.startswith("unet_")
        assert (cfg.MODEL.UNET.ENCODER == "resnet") == ("_R_" in path.name)
    if not cfg.MODEL.WEIGHTS and not path.name.startswith("Base-"):
        # from scratch: FrozenBN diverges, so no frozen norm
        if unet:
            assert cfg.MODEL.UNET.ENCODER == "plain" and cfg.MODEL.UNET.NORM in ("BN", "GN")
        else:
            assert cfg.MODEL.RESNETS.NORM in ("BN", "GN", "SyncBN")
            assert cfg.MODEL.BACKBONE.FREEZE_AT == 0
    model = build_model(cfg)
    assert next(model.parameters()).device == torch.device("cpu")
    heads = model if unet else model.roi_heads
    assert heads.num_classes == cfg.MODEL.ROI_HEADS.NUM_CLASSES


def test_overrides_and_bad_input(tmp_path):
    cfg = build_cfg(CONFIGS[0], ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "256"])
    assert cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 256
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        build_cfg(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="KEY VALUE"):
        build_cfg(CONFIGS[0], ["SOLVER.MAX_ITER"])

"""``train_net.py --eval-only`` with detectron2's ``TEST.AUG``: nucdet's views, real sizes.

A seeded random tiny model on two bundled validation images (256x256 and 256x320). The
network input of every view is recorded with a hook and compared with the sizes worked
out by hand; the TTA results come back under ``segm_TTA`` as in detectron2's train_net.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SAMPLE_ROOT, TINY_CONFIG, TINY_OPTS, tiny_cfg
from detectron2.config import get_cfg
from single_thread import one_torch_thread

import train_net
from nucdet.config import add_nucdet_config
from nucdet.data.dsb import dsb_to_coco
from nucdet.data.register import register_all
from nucdet.engine.launch import argument_parser
from nucdet.engine.trainer import Trainer
from nucdet.inference.tta import views_from_test_aug

VAL_IDS = ("a3a1b8f9", "2255d5ab")
AUG = [
    "INPUT.MIN_SIZE_TEST", "128",
    "TEST.AUG.ENABLED", "True",
    "TEST.AUG.MIN_SIZES", "(96, 128)",
    "TEST.AUG.FLIP", "True",
    "TEST.DETECTIONS_PER_IMAGE", "20",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
]  # fmt: skip


def test_views_from_test_aug():
    cfg = add_nucdet_config(get_cfg())
    cfg.INPUT.MIN_SIZE_TEST = 800
    cfg.TEST.AUG.MIN_SIZES = (400, 800, 1200)
    cfg.TEST.AUG.FLIP = True
    assert views_from_test_aug(cfg) == [
        "scale:0.5",
        "hflip+scale:0.5",
        "identity",
        "hflip",
        "scale:1.5",
        "hflip+scale:1.5",
    ]
    cfg.TEST.AUG.FLIP = False
    assert views_from_test_aug(cfg) == ["scale:0.5", "identity", "scale:1.5"]
    cfg.INPUT.MIN_SIZE_TEST = 0
    with pytest.raises(ValueError, match="INPUT.MIN_SIZE_TEST"):
        views_from_test_aug(cfg)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval_tta")
    split = json.loads((SAMPLE_ROOT / "split.json").read_text())
    ids = sorted(i for i in split["val"] if i.startswith(VAL_IDS))
    val_json = dsb_to_coco(SAMPLE_ROOT / "stage1_train", tmp / "val2.json", image_ids=ids)
    register = str([["engine_tta_val2", str(val_json), str(SAMPLE_ROOT / "stage1_train")]])
    opts = ["DATASETS.REGISTER", register, "DATASETS.TEST", "('engine_tta_val2',)", *AUG]
    cfg = tiny_cfg(*opts, "OUTPUT_DIR", str(tmp / "out"))
    register_all(cfg)
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    weights = tmp / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    return cfg, model, opts, weights, tmp


def test_tta_views_reach_the_network(setup):
    cfg, model, _, _, _ = setup
    sizes = []
    hook = model.proposal_generator.register_forward_pre_hook(
        lambda mod, args: sizes.append(tuple(args[0].image_sizes[0]))
    )
    try:
        with one_torch_thread():
            res = Trainer.test_with_TTA(cfg, model)
    finally:
        hook.remove()
    # Views scale:0.75, hflip+scale:0.75, identity, hflip per image. 256x256: short edge
    # 96 -> (96, 96), 128 -> (128, 128); 256x320: 96/256 = 0.375 -> (96, 120), 0.5 ->
    # (128, 160). The dataset order follows the COCO file (sorted ids).
    by_image = {(256, 256): [(96, 96)] * 2 + [(128, 128)] * 2}
    by_image[(256, 320)] = [(96, 120)] * 2 + [(128, 160)] * 2
    assert sorted(sizes) == sorted(by_image[(256, 256)] + by_image[(256, 320)])
    assert "MaP-IoU" in res["segm_TTA"]


def test_eval_only_reports_tta(setup):
    _, _, opts, weights, tmp = setup
    args = argument_parser().parse_args(
        ["--config-file", str(TINY_CONFIG), "--eval-only"]
        + [*TINY_OPTS, *opts, "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp / "cli")]
    )
    with one_torch_thread():
        res = train_net.main(args)
    assert {"segm", "segm_TTA"} <= set(res)
    assert (tmp / "cli" / "inference_TTA" / "engine_tta_val2" / "per_image_metrics.csv").is_file()

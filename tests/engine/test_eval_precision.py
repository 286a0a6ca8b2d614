"""TEST.PRECISION in the evaluator (Trainer.test): bf16 runs the network through
PrecisionModel; that wrapper in fp32 returns exactly what detectron2's model returns."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from conftest import SAMPLE_ROOT, tiny_cfg
from detectron2.modeling import build_model
from single_thread import one_torch_thread

from nucdet.data.dsb import dsb_to_coco
from nucdet.data.register import register_all
from nucdet.engine.trainer import Trainer
from nucdet.inference.predictor import PrecisionModel

SMALL = [
    "TEST.DETECTIONS_PER_IMAGE", "40",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "500",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "200",
]  # fmt: skip


def test_precision_model_in_fp32_is_detectron2s_output():
    cfg = tiny_cfg(*SMALL)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    rng = np.random.default_rng(3)
    # The network sees a 60x80 image of a 90x120 original: boxes and masks scaled back.
    image = torch.as_tensor(rng.uniform(0, 255, (3, 60, 80)).astype(np.float32))
    inputs = [{"image": image, "height": 90, "width": 120}]
    with torch.no_grad(), one_torch_thread():
        ref = model(inputs)[0]["instances"]
        ours = PrecisionModel(cfg, model)(inputs)[0]["instances"]
    assert len(ref) == 40 and ours.image_size == ref.image_size == (90, 120)
    for key in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
        a, b = ours.get(key), ref.get(key)
        a, b = (a.tensor, b.tensor) if key == "pred_boxes" else (a, b)
        assert torch.equal(a, b), key


def test_eval_in_bf16(tmp_path):
    split = json.loads((SAMPLE_ROOT / "split.json").read_text())
    ids = [i for i in split["val"] if i.startswith("a3a1b8f9")]  # 256x256, 16 nuclei
    val_json = dsb_to_coco(SAMPLE_ROOT / "stage1_train", tmp_path / "val1.json", image_ids=ids)
    register = [["precision_val1", str(val_json), str(SAMPLE_ROOT / "stage1_train")]]
    cfg = tiny_cfg(
        *SMALL,
        "DATASETS.REGISTER", str(register),
        "DATASETS.TEST", "('precision_val1',)",
        "TEST.PRECISION", "bf16",
        "POSTPROCESS.SCORE_THRESH", "[0.0]",
        "OUTPUT_DIR", str(tmp_path / "out"),
    )  # fmt: skip
    register_all(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    dtypes: list[torch.dtype] = []
    model.backbone.bottom_up.stem.conv1.register_forward_hook(
        lambda m, i, o: dtypes.append(o.dtype)
    )
    with one_torch_thread():
        res = Trainer.test(cfg, model)  # one dataset: its results, not keyed by its name
    assert dtypes == [torch.bfloat16]  # one image, its network in bf16
    assert res["count"]["n_gt"] == 16
    # An untrained model: some of its 40 detections survive post-processing (threshold 0).
    assert 0 < res["count"]["n_pred"] <= 40
    assert math.isfinite(res["segm"]["MaP-IoU"]) and math.isfinite(res["bbox"]["AP50"])

"""SOLVER.AMP.ENABLED on the CPU: the trainer trains under bf16 autocast (no grad scaler),
the losses stay finite and the fp32 parameters move."""

from __future__ import annotations

import json
import math

import torch
from conftest import tiny_cfg
from detectron2.engine import hooks
from single_thread import one_torch_thread

from nucdet.data.register import register_all
from nucdet.engine.amp import CPUAMPTrainer
from nucdet.engine.trainer import Trainer

MAX_ITER = 2


def test_cpu_amp_trains_in_bf16(tmp_path):
    cfg = tiny_cfg(
        "SOLVER.AMP.ENABLED", "True",
        # bf16 is emulated (slow) on CPUs without bf16 units: the smallest honest step.
        "INPUT.CROP.SIZE", "[96, 96]",
        "SOLVER.IMS_PER_BATCH", "1",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
        "SOLVER.MAX_ITER", str(MAX_ITER),
        "SOLVER.LOG_PERIOD", "1",
        "SOLVER.CHECKPOINT_PERIOD", "100",
        "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(tmp_path),
    )  # fmt: skip
    register_all(cfg)
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    assert type(trainer._trainer) is CPUAMPTrainer
    assert "grad_scaler" not in trainer._trainer.state_dict()
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    # What the network computes in: a backbone convolution's output dtype, every step.
    dtypes: list[torch.dtype] = []
    conv = trainer.model.backbone.bottom_up.stem.conv1
    conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    grads: list[torch.dtype] = []
    trainer.register_hooks(
        [hooks.CallbackHook(after_step=lambda t: grads.append(conv.weight.grad.dtype))]
    )
    with one_torch_thread():
        trainer.train()
    assert dtypes == [torch.bfloat16] * MAX_ITER
    assert grads == [torch.float32] * MAX_ITER  # master weights and gradients stay fp32
    recs = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    losses = [r["total_loss"] for r in recs if "total_loss" in r]
    assert len(losses) == MAX_ITER and all(math.isfinite(v) and v > 0 for v in losses)
    moved = [
        n
        for n, p in trainer.model.named_parameters()
        if p.requires_grad and not torch.equal(p.detach(), params[n])
    ]
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    # Every trainable parameter gets a gradient from some loss term within 2 steps.
    assert len(moved) > 0.9 * len(trainable), sorted(set(trainable) - set(moved))[:5]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())

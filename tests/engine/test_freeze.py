"""SOLVER.FREEZE_PATTERNS: frozen before the optimizer is built, unchanged by training."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_cfg
from single_thread import one_torch_thread

from nucdet.engine.freeze import freeze_parameters
from nucdet.engine.trainer import Trainer

BACKBONE = "['^backbone\\\\.bottom_up\\\\.']"  # the ResNet, not the FPN


def test_freeze_patterns_in_model_and_optimizer():
    cfg = tiny_cfg("SOLVER.FREEZE_PATTERNS", BACKBONE)
    assert cfg.SOLVER.FREEZE_PATTERNS == ["^backbone\\.bottom_up\\."]
    model = Trainer.build_model(cfg)
    names = dict(model.named_parameters())
    frozen = {n for n, p in names.items() if not p.requires_grad}
    assert frozen == {n for n in names if n.startswith("backbone.bottom_up.")}
    assert any(n.startswith("backbone.fpn") for n in names if n not in frozen)
    optimizer = Trainer.build_optimizer(cfg, model)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for n, p in names.items() if n not in frozen}


def test_bad_patterns():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert freeze_parameters(model, []) == []
    with pytest.raises(ValueError, match=r"\['\^roi_heads'\] match no parameter"):
        freeze_parameters(model, ["^0\\.", "^roi_heads"])
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen on error
    with pytest.raises(ValueError, match=r"'\(' is not a valid regex"):
        freeze_parameters(model, ["("])
    assert freeze_parameters(model, ["bias$"]) == ["0.bias"]
    assert not model[0].bias.requires_grad and model[0].weight.requires_grad


def test_frozen_weights_do_not_move_in_training(tmp_path, registered):
    cfg = tiny_cfg(
        "SOLVER.FREEZE_PATTERNS", BACKBONE,
        "SOLVER.MAX_ITER", "1",
        "SOLVER.BASE_LR", "0.5",  # warmup starts at 0.001 x BASE_LR: make the step visible
        "DATASETS.TEST", "()",
        "INPUT.CROP.SIZE", "[128, 128]",
        "OUTPUT_DIR", str(tmp_path),
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with one_torch_thread():
        trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert not any(n.startswith("backbone.bottom_up.") for n in moved)
    assert {n for n in moved if n.startswith("roi_heads.box_predictor")} == {
        n for n in before if n.startswith("roi_heads.box_predictor")
    }


def test_optimizer_schedule_and_clipping_from_config():
    """Warmup, steps and gradient clipping come from SOLVER.* through detectron2."""
    cfg = tiny_cfg(
        "SOLVER.CLIP_GRADIENTS.ENABLED", "True",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "1e-6",
        "SOLVER.WEIGHT_DECAY", "0.0",  # decay is added after clipping: keep it out
        "SOLVER.BASE_LR", "0.1",
        "SOLVER.WARMUP_ITERS", "2",
        "SOLVER.STEPS", "(3,)",
        "SOLVER.MAX_ITER", "5",
    )  # fmt: skip
    model = torch.nn.Linear(3, 1)
    optimizer = Trainer.build_optimizer(cfg, model)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.zero_grad()
        (model(torch.full((1, 3), 1e3)) ** 2).sum().backward()  # a huge gradient
        before = model.weight.detach().clone()
        optimizer.step()
        # clipped to norm 1e-6: with momentum 0.9 the step stays below 10 * lr * 1e-6
        assert (model.weight - before).norm() < 10 * lrs[-1] * 1e-6 + 1e-12
        scheduler.step()
    w = cfg.SOLVER.WARMUP_FACTOR
    assert lrs == pytest.approx([0.1 * w, 0.1 * (w + (1 - w) / 2), 0.1, 0.01, 0.01])

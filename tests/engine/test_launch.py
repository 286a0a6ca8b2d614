"""Launch helpers (the 2-process gloo run itself is test_distributed.py) and the per-machine
config resolution done before training."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import tiny_cfg

from nucdet.engine.launch import argument_parser, cpu_threads_per_process, launch, resolve_backend
from nucdet.engine.trainer import prepare_training_cfg


def test_backend_and_threads():
    assert resolve_backend("gloo") == "gloo" and resolve_backend("nccl") == "nccl"
    assert resolve_backend("auto") == ("nccl" if torch.cuda.is_available() else "gloo")
    with pytest.raises(ValueError, match="mpi"):
        resolve_backend("mpi")
    cores = cpu_threads_per_process(1)
    assert cores >= 1
    assert cpu_threads_per_process(2) == max(1, cores // 2)
    assert cpu_threads_per_process(10 * cores) == 1


def test_argument_parser():
    args = argument_parser().parse_args(
        ["--config-file", "x.yaml", "--num-gpus", "2", "--dist-backend", "gloo", "A", "1"]
    )
    assert (args.num_gpus, args.dist_backend, args.opts) == (2, "gloo", ["A", "1"])
    assert argument_parser().parse_args([]).dist_backend == "auto"
    with pytest.raises(SystemExit):
        argument_parser().parse_args(["--dist-backend", "mpi"])


def test_single_process_runs_in_place():
    seen = []
    launch(seen.append, 1, args=("ran",), backend="gloo")
    assert seen == ["ran"]
    with pytest.raises(ValueError, match="one machine only"):
        launch(seen.append, 2, num_machines=2, dist_url="auto", backend="gloo")


def test_amp_kept_on_cpu_off_elsewhere(caplog):
    cfg = tiny_cfg("SOLVER.AMP.ENABLED", "True")
    cfg.freeze()
    assert prepare_training_cfg(cfg) is cfg  # the CPU trains in bf16 (tests/engine/test_amp.py)
    cfg = tiny_cfg("SOLVER.AMP.ENABLED", "True", "MODEL.DEVICE", "mps")
    cfg.freeze()
    with caplog.at_level(logging.INFO, logger="nucdet.engine.trainer"):
        out = prepare_training_cfg(cfg)
    assert out is not cfg and out.is_frozen()
    assert cfg.SOLVER.AMP.ENABLED and not out.SOLVER.AMP.ENABLED  # input left alone
    assert "mixed precision needs CUDA or the CPU, off on mps" in caplog.text
    assert prepare_training_cfg(out) is out  # nothing left to change


def test_normalization_resolved():
    # build_cfg (behind tiny_cfg) resolves it for every entry point ...
    cfg = tiny_cfg("INPUT.NORMALIZATION", "imagenet")
    assert list(cfg.MODEL.PIXEL_MEAN) == pytest.approx([103.53, 116.28, 123.675])
    assert list(cfg.MODEL.PIXEL_STD) == pytest.approx([57.375, 57.12, 58.395])
    # ... and prepare_training_cfg does for a config built otherwise.
    from detectron2.config import get_cfg

    from nucdet.config import add_nucdet_config

    raw = add_nucdet_config(get_cfg())
    raw.INPUT.NORMALIZATION = "imagenet"
    out = prepare_training_cfg(raw)
    # detectron2's default mean is ImageNet's already; its default std is 1.
    assert list(raw.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0]
    assert list(out.MODEL.PIXEL_STD) == pytest.approx([57.375, 57.12, 58.395])

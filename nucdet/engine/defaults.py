"""Config building shared by every entry point (train, infer, ensemble, sweeps)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from detectron2.config import CfgNode, get_cfg

from nucdet.config import add_nucdet_config


def build_cfg(config_file: str | os.PathLike | None, opts: Sequence[str] = ()) -> CfgNode:
    """get_cfg -> add_nucdet_config -> merge_from_file -> merge_from_list(opts).

    The result is not frozen, so callers can still adjust it. A CUDA device on a machine
    without one falls back to the CPU (logged), so one config serves both.
    ``INPUT.NORMALIZATION`` is resolved into ``MODEL.PIXEL_MEAN/STD`` here, so training and
    every inference entry point normalise the same way.
    """
    from nucdet.data.mapper import apply_normalization

    cfg = get_cfg()
    add_nucdet_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file not found: {config_file}")
        # allow_unsafe: configs written by detectron2 (OUTPUT_DIR/config.yaml) may hold
        # tuples serialised as python objects.
        cfg.merge_from_file(str(config_file), allow_unsafe=True)
    if opts:
        if len(opts) % 2:
            raise ValueError(f"config overrides must be KEY VALUE pairs, got {list(opts)}")
        cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).info("no CUDA device: MODEL.DEVICE cpu")
        cfg.MODEL.DEVICE = "cpu"
    return apply_normalization(cfg)

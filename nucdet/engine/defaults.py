"""Config building shared by every entry point (train, infer, ensemble, sweeps).

A key that does not exist (misspelled in the YAML or on the command line) is a
``ConfigError`` naming the key, the file and the closest valid names, not yacs' bare
``KeyError``.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Sequence

import torch
from detectron2.config import CfgNode, get_cfg

from nucdet.config import add_nucdet_config


class ConfigError(ValueError):
    """A config file or override that cannot be applied (unknown key, odd overrides)."""


def config_keys(cfg: CfgNode, prefix: str = "") -> list[str]:
    """Every full key of ``cfg`` (``MODEL.ROI_HEADS.NUM_CLASSES``, ...), nodes included."""
    keys = []
    for k, v in cfg.items():
        keys.append(prefix + k)
        if isinstance(v, CfgNode):
            keys.extend(config_keys(v, f"{prefix}{k}."))
    return keys


def closest_keys(key: str, cfg: CfgNode, n: int = 3) -> list[str]:
    """The valid keys most like ``key`` (for "did you mean" messages)."""
    keys = config_keys(cfg)
    close = difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
    if not close:  # a wrong node with a right leaf: SOLVER.NUM_CLASSES -> ROI_HEADS.NUM_CLASSES
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] == leaf][:n]
    return close


def _unknown_key(e: Exception, cfg: CfgNode, where: str) -> ConfigError:
    # yacs: KeyError("Non-existent config key: K") from files, an assertion
    # "Non-existent key: K" from merge_from_list.
    text = str(e.args[0]) if e.args else str(e)
    prefix = next((p for p in ("Non-existent config key: ", "Non-existent key: ") if
                   text.startswith(p)), None)  # fmt: skip
    if prefix is None:
        return ConfigError(f"{where}: {text}")
    key = text[len(prefix) :].strip()
    close = closest_keys(key, cfg)
    hint = f"; closest valid keys: {', '.join(close)}" if close else ""
    return ConfigError(f"{where}: unknown config key {key}{hint}")


def pop_flags(opts: Sequence[str], flags: Sequence[str]) -> tuple[list[str], set[str]]:
    """Take ``flags`` (e.g. ``--resume``) out of the trailing ``KEY VALUE`` overrides, where
    argparse's ``REMAINDER`` leaves them when they are written after the overrides.

    Returns the remaining overrides and the flags found."""
    found = {o for o in opts if o in flags}
    return [o for o in opts if o not in flags], found


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
        try:
            cfg.merge_from_file(str(config_file), allow_unsafe=True)
        except (KeyError, AssertionError) as e:
            raise _unknown_key(e, cfg, f"config file {config_file} (or its _BASE_)") from None
    if opts:
        if len(opts) % 2:
            raise ConfigError(f"config overrides must be KEY VALUE pairs, got {list(opts)}")
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, AssertionError) as e:
            raise _unknown_key(e, cfg, "command-line override") from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).info("no CUDA device: MODEL.DEVICE cpu")
        cfg.MODEL.DEVICE = "cpu"
    return apply_normalization(cfg)

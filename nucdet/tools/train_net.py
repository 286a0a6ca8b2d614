"""Training and evaluation of a nucdet Mask R-CNN: the code behind ``train_net.py``.

The repository's ``train_net.py`` (the documented entry point, detectron2's shape) and the
``nucdet-train`` console script of an installed nucdet (``[project.scripts]`` in
pyproject.toml) both run ``cli``; so does ``python -m nucdet.tools.train_net``, which is
the command ``nucdet.tools.sweep`` starts for each run. Usage, flags and outputs: see
``train_net.py``.

Before anything is written, the config (unknown keys name the closest valid ones), every
dataset of DATASETS.TRAIN and DATASETS.TEST, and OUTPUT_DIR (no checkpoints of another
model config) are checked; input errors end in one ``<program>: error:`` line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from nucdet.config import ConfigError, build_cfg
from nucdet.data.register import UnknownDatasetError, register_all, require_registered
from nucdet.engine.checkpoint import NucleiCheckpointer
from nucdet.engine.launch import launch_from_args, parse_args
from nucdet.engine.trainer import RunDirError, Trainer, check_output_dir
from nucdet.io.checkpoint import CheckpointError, CheckpointMismatchError

# Errors in what the user gave (config, datasets, folders, checkpoint files): one line.
INPUT_ERRORS = (
    ConfigError,
    UnknownDatasetError,
    RunDirError,
    CheckpointError,
    CheckpointMismatchError,
    FileNotFoundError,
)


def validate(args):
    """The frozen config, with its datasets registered and checked; writes nothing."""
    cfg = build_cfg(args.config_file, args.opts)  # resolved (nucdet.config.resolve_cfg)
    cfg.freeze()
    register_all(cfg)
    if not args.eval_only:
        require_registered(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    require_registered(cfg.DATASETS.TEST, "DATASETS.TEST")
    check_output_dir(cfg)
    return cfg


def setup(args):
    cfg = validate(args)
    default_setup(cfg, args)  # writes OUTPUT_DIR/config.yaml, sets up logging and seeds
    # detectron2 logs its own and fvcore's messages to OUTPUT_DIR/log.txt; add nucdet's.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="nucdet")
    return cfg


def main(args):
    """One process's training (or ``--eval-only`` evaluation); ``launch`` runs it in each."""
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        NucleiCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict=True).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:  # detectron2's convention, on nucdet's TTA views
            res.update(Trainer.test_with_TTA(cfg, model))
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv: Sequence[str] | None = None) -> None:
    """The command line: parse, validate in this process (before any worker is spawned),
    launch ``main``; an input error exits with one ``<program>: error: ...`` line, the
    program being how it was started (``train_net.py``, ``nucdet-train``)."""
    args = parse_args(None if argv is None else list(argv))
    try:
        validate(args)  # in this process, before any worker is spawned or job submitted
        if args.submit:  # one submitit job (SLURM): nucdet.engine.cluster
            from nucdet.engine.cluster import submit_training

            submit_training(main, args)
        else:
            launch_from_args(main, args)
    except INPUT_ERRORS as e:
        sys.exit(f"{Path(sys.argv[0]).name}: error: {e}")


if __name__ == "__main__":  # python -m nucdet.tools.train_net
    from nucdet.tools import train_net as _module  # launch pickles main by its module name

    _module.cli()

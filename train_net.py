#!/usr/bin/env python
"""Train or evaluate a nucdet Mask R-CNN: detectron2's train_net.py shape.

    python train_net.py --config-file configs/cpu/mask_rcnn_R_18_FPN_lite_tiny.yaml \
        SOLVER.MAX_ITER 100 OUTPUT_DIR output/tiny
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/tiny/model_best.pth
    python train_net.py --config-file ... --eval-only TEST.AUG.ENABLED True \
        TEST.AUG.MIN_SIZES "(384, 512, 768)"                 # + scale / flip TTA results
    python train_net.py --config-file ... --resume          # continue after an interruption
    python train_net.py --config-file ... --num-gpus 8      # or --num-machines/--dist-url
    python train_net.py --config-file ... --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes
                                                            # (gloo; --dist-backend gloo on
                                                            # a machine with CUDA)
    python train_net.py --config-file ... --submit slurm --nodes 2 --num-gpus 8 \
        --partition gpu --time 720 OUTPUT_DIR /shared/run   # one SLURM job, 2 x 8 GPUs,
                                                            # requeued + resumed on pre-emption

Outputs in OUTPUT_DIR: config.yaml, log.txt, metrics.json, TensorBoard events,
model_XXXXXXX.pth every SOLVER.CHECKPOINT_PERIOD, model_final.pth, model_best.pth (by
SOLVER.BEST_CHECKPOINT.METRIC when TEST.EVAL_PERIOD > 0). Plot the curves with
``python -m nucdet.tools.curves OUTPUT_DIR``.

Before anything is written, the config (unknown keys name the closest valid ones), every
dataset of DATASETS.TRAIN and DATASETS.TEST, and OUTPUT_DIR (no checkpoints of another
model config) are checked; input errors end in one ``train_net.py: error:`` line.
"""

from __future__ import annotations

import sys

from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from nucdet.data.register import UnknownDatasetError, register_all, require_registered
from nucdet.engine.checkpoint import NucleiCheckpointer
from nucdet.engine.defaults import ConfigError, build_cfg
from nucdet.engine.launch import launch_from_args, parse_args
from nucdet.engine.trainer import RunDirError, Trainer, check_output_dir, prepare_training_cfg
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
    cfg = prepare_training_cfg(build_cfg(args.config_file, args.opts))
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


if __name__ == "__main__":
    args = parse_args()
    try:
        validate(args)  # in this process, before any worker is spawned or job submitted
        if args.submit:  # one submitit job (SLURM): nucdet.engine.cluster
            from nucdet.engine.cluster import submit_training

            submit_training(main, args)
        else:
            launch_from_args(main, args)
    except INPUT_ERRORS as e:
        sys.exit(f"train_net.py: error: {e}")

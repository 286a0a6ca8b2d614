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

Outputs in OUTPUT_DIR: config.yaml, log.txt, metrics.json, TensorBoard events,
model_XXXXXXX.pth every SOLVER.CHECKPOINT_PERIOD, model_final.pth, model_best.pth (by
SOLVER.BEST_CHECKPOINT.METRIC when TEST.EVAL_PERIOD > 0). Plot the curves with
``python -m nucdet.tools.curves OUTPUT_DIR``.
"""

from __future__ import annotations

from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from nucdet.data.register import register_all
from nucdet.engine.checkpoint import NucleiCheckpointer
from nucdet.engine.defaults import build_cfg
from nucdet.engine.launch import argument_parser, launch_from_args
from nucdet.engine.trainer import Trainer, prepare_training_cfg


def setup(args):
    cfg = prepare_training_cfg(build_cfg(args.config_file, args.opts))
    cfg.freeze()
    default_setup(cfg, args)  # writes OUTPUT_DIR/config.yaml, sets up logging and seeds
    # detectron2 logs its own and fvcore's messages to OUTPUT_DIR/log.txt; add nucdet's.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="nucdet")
    register_all(cfg)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        NucleiCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
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
    launch_from_args(main, argument_parser().parse_args())

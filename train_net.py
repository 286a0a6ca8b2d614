#!/usr/bin/env python
"""Train or evaluate a nucdet Mask R-CNN: detectron2's train_net.py shape.

    python train_net.py --config-file configs/cpu/mask_rcnn_R_18_FPN_lite_tiny.yaml \
        SOLVER.MAX_ITER 100 OUTPUT_DIR output/tiny
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/tiny/model_final.pth
    python train_net.py --config-file ... --resume          # continue after an interruption
    python train_net.py --config-file ... --num-gpus 8      # or --num-machines/--dist-url
"""

from __future__ import annotations

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup, launch

from nucdet.data.register import register_all
from nucdet.engine.defaults import build_cfg
from nucdet.engine.trainer import Trainer


def setup(args):
    cfg = build_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)  # writes OUTPUT_DIR/config.yaml, sets up logging and seeds
    register_all(cfg)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )

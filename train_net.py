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

The code is ``nucdet.tools.train_net`` (also the ``nucdet-train`` command of an installed
nucdet); this file is its entry point in the repository.
"""

from nucdet.tools.train_net import INPUT_ERRORS, cli, main, setup, validate

__all__ = ["INPUT_ERRORS", "cli", "main", "setup", "validate"]

if __name__ == "__main__":
    cli()

#!/usr/bin/env python
"""Predict with one trained model and write a submission (and metrics when GT exists).

    python infer.py --model-dir output/demo/model --dataset dsb2018_sample_val \\
        --output output/demo/infer [--format kaggle|dsb|coco] [KEY VALUE ...]
    python infer.py --model-dir output/demo/model --input path/to/images --output out/
    python infer.py ... --shard 0/4 --output out/shard-0    # then: python -m
                                                            # nucdet.tools.merge_shards
    python infer.py ... --submit slurm --tasks 4 --output out/   # 4 SLURM jobs + the merge

The model directory is a training OUTPUT_DIR: its config.yaml and model_best.pth (else
model_final.pth, else the last checkpoint). Outputs: the submission file, ``metrics.json``
(MaP-IoU when the dataset has annotations), ``overlays/*.png`` and ``predictions.jsonl``
(an interrupted run resumes from it). Same code path as ensemble_infer.py, with one model
and no TTA.
"""

from __future__ import annotations

import argparse
import sys

from nucdet.engine.cluster import add_shard_submit_arguments, submit_shards
from nucdet.inference.cli import add_io_arguments, run_from_args
from nucdet.inference.ensemble import EnsembleSpec, ModelSpec


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="training output directory")
    ap.add_argument("--config-file", help="default: <model-dir>/config.yaml")
    ap.add_argument("--weights", help="default: best, else final, else last checkpoint")
    add_shard_submit_arguments(ap)
    add_io_arguments(ap)
    return ap.parse_args(argv)


def run(args) -> dict:
    model = ModelSpec(
        "model", model_dir=args.model_dir, config=args.config_file, weights=args.weights
    )
    return run_from_args(EnsembleSpec([model], views=["identity"], format=args.format), args)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.submit:  # --tasks shard jobs, then the merge: nucdet.engine.cluster
        return submit_shards(run, args)
    return run(args)


if __name__ == "__main__":
    try:
        main()
    except (OSError, KeyError, ValueError) as e:  # input problems: one line, no traceback
        sys.exit(f"infer.py: error: {e}")

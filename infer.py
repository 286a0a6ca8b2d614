#!/usr/bin/env python
"""Predict with one trained model and write a submission (and metrics when GT exists).

    python infer.py --model-dir output/demo/model --dataset dsb2018_sample_val \\
        --output output/demo/infer [--format kaggle|dsb|coco] [KEY VALUE ...]
    python infer.py --model-dir output/demo/model --input path/to/images --output out/

The model directory is a training OUTPUT_DIR: its config.yaml and model_best.pth (else
model_final.pth, else the last checkpoint). Outputs: the submission file, ``metrics.json``
(MaP-IoU when the dataset has annotations), ``overlays/*.png`` and ``predictions.jsonl``
(an interrupted run resumes from it). Same code path as ensemble_infer.py, with one model
and no TTA.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from detectron2.utils.logger import setup_logger

from nucdet.inference.ensemble import EnsembleSpec, ModelSpec, run_ensemble
from nucdet.inference.pipeline import SUBMISSION_NAMES


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="training output directory")
    ap.add_argument("--config-file", help="default: <model-dir>/config.yaml")
    ap.add_argument("--weights", help="default: best, else final, else last checkpoint")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="folder of images (or DSB <id>/images/ layout)")
    src.add_argument("--dataset", help="registered dataset name")
    ap.add_argument("--output", required=True, help="output folder")
    ap.add_argument("--format", default="kaggle", choices=sorted(SUBMISSION_NAMES))
    ap.add_argument("--overlays", type=int, default=8, help="overlay PNGs for the first N images")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logger(name="nucdet")
    model = ModelSpec(
        "model", model_dir=args.model_dir, config=args.config_file, weights=args.weights
    )
    spec = EnsembleSpec([model], views=["identity"], format=args.format)
    metrics = run_ensemble(
        spec,
        args.output,
        dataset=args.dataset,
        input_dir=args.input,
        num_overlays=args.overlays,
        opts=args.opts,
    )
    summary = {k: v for k, v in metrics.items() if k != "per_image"}
    logging.getLogger("nucdet").info("results: %s", json.dumps(summary))
    return metrics


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"infer.py: error: {e}")

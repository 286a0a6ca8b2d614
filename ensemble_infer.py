#!/usr/bin/env python
"""Multi-model, multi-view inference: TTA, weighted box fusion + mask voting, submission.

    python ensemble_infer.py --ensemble configs/ensembles/dsb_tiny_flip_tta.yaml \\
        --dataset dsb2018_sample_val --output out/
    python ensemble_infer.py --ensemble configs/ensembles/sartorius_r50_x101_tta.yaml \\
        --input test/ --output out/ POSTPROCESS.SCORE_THRESH "[0.4, 0.6, 0.2]"
    python ensemble_infer.py --model-dir runA --model-dir runB --weights-per-model 2,1 \\
        --views identity,hflip,vflip --fusion wbf_mask_vote --input images/ --output out/
    python ensemble_infer.py ... --shard 1/4 --output out/shard-1   # one of 4 shards; then
                                    # python -m nucdet.tools.merge_shards out/shard-* --output out
    python ensemble_infer.py ... --submit slurm --tasks 4 --output out/   # jobs + the merge

Models, views, fusion and post-processing come from the YAML (see
``nucdet.inference.ensemble``) or from the flags; flags given next to ``--ensemble``
override it. Trailing ``KEY VALUE`` pairs override every model's config and win over the
YAML's ``postprocess`` (a warning names every clash). Streams over the images with a
progress bar and resumes an interrupted run from ``out/predictions.jsonl``.
"""

from __future__ import annotations

import argparse
import sys

from nucdet.engine.cluster import add_shard_submit_arguments, submit_shards
from nucdet.inference.cli import add_io_arguments, run_from_args
from nucdet.inference.ensemble import EnsembleSpec, ModelSpec
from nucdet.inference.fusion import FUSION_METHODS


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ensemble", help="ensemble YAML (configs/ensembles/*.yaml)")
    ap.add_argument("--model-dir", action="append", default=[], help="repeatable")
    ap.add_argument("--weights-per-model", help="comma-separated fusion weights")
    ap.add_argument("--views", help="comma-separated TTA views, e.g. identity,hflip,vflip")
    ap.add_argument("--fusion", choices=sorted(FUSION_METHODS))
    add_shard_submit_arguments(ap)
    add_io_arguments(ap, default_format=None)
    return ap.parse_args(argv)


def build_spec(args) -> EnsembleSpec:
    if args.ensemble:
        spec = EnsembleSpec.from_yaml(args.ensemble)
    elif args.model_dir:
        spec = EnsembleSpec(
            [ModelSpec(f"model{i}", model_dir=d) for i, d in enumerate(args.model_dir)]
        )
    else:
        raise ValueError("give --ensemble or at least one --model-dir")
    if args.ensemble and args.model_dir:
        raise ValueError("give models either in --ensemble or with --model-dir, not both")
    if args.weights_per_model:
        weights = [float(w) for w in args.weights_per_model.split(",")]
        if len(weights) != len(spec.models):
            raise ValueError(f"{len(weights)} weights for {len(spec.models)} models")
        for m, w in zip(spec.models, weights):
            m.weight = w
    if args.views:
        spec.views = [v.strip() for v in args.views.split(",") if v.strip()]
    if args.fusion:
        spec.fusion = {**spec.fusion, "method": args.fusion}
    if args.format:
        spec.format = args.format
    return spec


def run(args) -> dict:
    return run_from_args(build_spec(args), args)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.submit:  # --tasks shard jobs, then the merge: nucdet.engine.cluster
        return submit_shards(run, args)
    return run(args)


if __name__ == "__main__":
    try:
        main()
    except (OSError, KeyError, ValueError) as e:  # input problems: one line, no traceback
        sys.exit(f"ensemble_infer.py: error: {e}")

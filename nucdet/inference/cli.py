"""The command-line side of ``infer.py`` and ``ensemble_infer.py``: their shared input /
output flags, and the inference job those flags describe (register datasets, build the
``EnsemblePredictor``, list the inputs, take this shard of them, run the resumable job).

``--shard i/n`` predicts shard i of n of the inputs (``nucdet.inference.shards``) into
its own ``--output``; ``python -m nucdet.tools.merge_shards DIR... --output OUT`` then
writes the one submission. The predictor itself is ``nucdet.inference.ensemble``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence

from detectron2.utils.logger import setup_logger

from nucdet.inference.ensemble import EnsemblePredictor, EnsembleSpec
from nucdet.inference.pipeline import (
    SUBMISSION_NAMES,
    dataset_category_ids,
    dataset_inputs,
    folder_inputs,
    run_inference,
)
from nucdet.inference.shards import parse_shard, select_shard, write_manifest


def _shard_arg(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run_ensemble(
    spec: EnsembleSpec,
    output: str | os.PathLike,
    *,
    dataset: str | None = None,
    input_dir: str | os.PathLike | None = None,
    num_overlays: int = 8,
    overlay_ids: Sequence[str] = (),
    opts: Sequence[str] = (),
    force: bool = False,
    skip_unreadable: bool = False,
    shard: tuple[int, int] | None = None,
) -> dict:
    """Register datasets, build the predictor, run the (resumable) inference job.

    ``force`` discards predictions of another run found in ``output``;
    ``skip_unreadable`` leaves unreadable images out (see ``run_inference``); ``shard``
    ``(i, n)`` predicts shard i of n of the inputs and writes the shard's manifest when
    it has finished (see ``nucdet.inference.shards``)."""
    from nucdet.data.register import register_all

    if (dataset is None) == (input_dir is None):
        raise ValueError("give exactly one of a dataset name or an input folder")
    predictor = EnsemblePredictor(spec, opts)
    register_all(predictor.cfg)
    inputs = dataset_inputs(dataset) if dataset else folder_inputs(input_dir)
    predictor.check_routes(inputs)  # on every input: a shard routes as the whole job does
    mine = select_shard(inputs, shard) if shard else inputs
    if not mine:
        raise ValueError(f"shard {shard[0]}/{shard[1]} of {len(inputs)} images is empty")
    category_ids = dataset_category_ids(dataset) if dataset else None
    run_key = predictor.run_key()
    metrics = run_inference(
        mine,
        predictor,
        output,
        fmt=spec.format,
        num_overlays=num_overlays,
        overlay_ids=overlay_ids,
        category_ids=category_ids,
        run_key=run_key,
        force=force,
        skip_unreadable=skip_unreadable,
    )
    if shard:
        write_manifest(output, shard, inputs, run_key, spec.format, category_ids)
    return metrics


def add_io_arguments(ap: argparse.ArgumentParser, default_format: str | None = "kaggle") -> None:
    """The input / output flags shared by infer.py and ensemble_infer.py."""
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="folder of images (or DSB <id>/images/ layout)")
    src.add_argument("--dataset", help="registered dataset name")
    ap.add_argument("--output", required=True, help="output folder")
    ap.add_argument("--format", default=default_format, choices=sorted(SUBMISSION_NAMES))
    ap.add_argument("--overlays", type=int, default=8, help="overlay PNGs for the first N images")
    ap.add_argument("--overlay-ids", default="", help="comma-separated image ids to overlay")
    ap.add_argument(
        "--force",
        action="store_true",
        help="discard predictions of another run found in --output (default: error)",
    )
    ap.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave unreadable images out (listed in metrics.json) instead of stopping",
    )
    ap.add_argument(
        "--shard",
        type=_shard_arg,
        help="i/n: predict shard i of n of the images (merge: python -m nucdet.tools.merge_shards)",
    )
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")


def run_from_args(spec: EnsembleSpec, args: argparse.Namespace) -> dict:
    """Run the job described by ``spec`` and the shared flags; log the summary."""
    setup_logger(name="nucdet")
    metrics = run_ensemble(
        spec,
        args.output,
        dataset=args.dataset,
        input_dir=args.input,
        num_overlays=args.overlays,
        overlay_ids=[i for i in args.overlay_ids.split(",") if i],
        opts=args.opts,
        force=args.force,
        skip_unreadable=args.skip_unreadable,
        shard=args.shard,
    )
    summary = {k: v for k, v in metrics.items() if k != "per_image"}
    if "skipped_unreadable" in summary:  # the files in the summary line, details above
        summary["skipped_unreadable"] = [s["file"] for s in summary["skipped_unreadable"]]
    logging.getLogger("nucdet").info("results: %s", json.dumps(summary))
    return metrics

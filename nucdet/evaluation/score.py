"""Score a submission file against COCO ground truth from the command line.

    python -m nucdet.evaluation.score --submission submission.csv --format kaggle \\
        --gt val.json [--image-root DIR] [--group-key modality] [--output metrics.json]
    python -m nucdet.evaluation.score --submission submission.csv --format kaggle \\
        --dataset dsb2018_sample_val

Formats: ``kaggle`` (Sartorius ``id,predicted``, row-major RLE), ``dsb`` (DSB2018
``ImageId,EncodedPixels``, column-major RLE), ``coco`` (COCO results JSON with scores).
Prints the overall MaP-IoU (and COCO AP for ``coco``, the only format with scores), then a
per-group table (``--group-key``; "auto" takes ``cell_type`` / ``modality`` from the GT
images or, with several classes, each image's majority class). A malformed submission
(bad RLE, unknown or missing image, overlapping masks where the format forbids them) ends
with a one-line error naming the file and row, and exit status 2. Images are scored on
every core (``--workers``; 0 = serial).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucdet.data.coco import load_coco
from nucdet.data.imageio import ImageReadError, image_size
from nucdet.evaluation.groundtruth import GtDataset
from nucdet.evaluation.suite import evaluate_predictions
from nucdet.io.atomic import atomic_write_json
from nucdet.io.readers import (
    SubmissionError,
    read_coco_results,
    read_dsb_csv,
    read_kaggle_csv,
)

READERS = {
    "kaggle": lambda path, gt, args: read_kaggle_csv(
        path, gt.images, allow_overlap=args.allow_overlap
    ),
    "dsb": lambda path, gt, args: read_dsb_csv(path, gt.images, allow_overlap=args.allow_overlap),
    "coco": lambda path, gt, args: read_coco_results(path, gt.images, gt.category_ids),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nucdet.evaluation.score",
        description="Score a Kaggle/DSB CSV or COCO results submission (MaP-IoU, COCO AP).",
    )
    p.add_argument("--submission", required=True, help="submission file")
    p.add_argument("--format", required=True, choices=sorted(READERS))
    gt = p.add_mutually_exclusive_group(required=True)
    gt.add_argument("--gt", help="ground truth as COCO instance JSON")
    gt.add_argument("--dataset", help="ground truth as a registered dataset name")
    p.add_argument("--image-root", help="folder of the GT images (for images without height/width)")
    p.add_argument(
        "--group-key",
        default="auto",
        help="image field for the breakdown table: a key such as modality, 'auto' or 'none'",
    )
    p.add_argument("--output", help="write all metrics and per-image rows to this JSON file")
    p.add_argument("--score-thresh", type=float, default=0.0, help="MaP-IoU score threshold")
    p.add_argument("--max-dets", type=int, default=1000, help="COCO AP detections per image")
    p.add_argument(
        "--allow-overlap",
        action="store_true",
        help="accept overlapping masks in kaggle/dsb CSVs (the competitions forbid them)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes scoring images (default: every core; 0 = serial); the scores are "
        "the same for any number",
    )
    return p


def _load_gt(path: str, image_root: str | None) -> GtDataset:
    coco = load_coco(path)
    for im in coco.get("images", []):
        if "height" in im and "width" in im:
            continue
        if image_root is None:
            raise ValueError(
                f"{path}: image {im.get('file_name')} has no height/width; pass --image-root"
            )
        im["height"], im["width"] = image_size(Path(image_root) / im["file_name"])
    return GtDataset.from_coco(coco, source=path)


def _load_registered(name: str) -> GtDataset:
    from nucdet.data.register import register_all

    register_all()
    return GtDataset.from_registered(name)


def _table(rows: list[dict[str, Any]], key: str | None) -> list[str]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get(key, "")) if key else "all", []).append(r)
    if key:
        groups["all"] = rows
    width = max([len(key or "group")] + [len(g) for g in groups])
    lines = [f"{(key or 'group'):<{width}}  images  MaP-IoU  objects  predicted  count MAE"]
    for name, rs in groups.items():
        m = np.mean([r["map_iou"] for r in rs]) if rs else math.nan
        mae = np.mean([r["abs_error"] for r in rs]) if rs else math.nan
        lines.append(
            f"{name:<{width}}  {len(rs):>6}  {m:>7.4f}  {sum(r['n_gt'] for r in rs):>7}  "
            f"{sum(r['n_pred'] for r in rs):>9}  {mae:>9.2f}"
        )
    return lines


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) or math.isinf(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def run(args: argparse.Namespace) -> dict[str, Any]:
    gt = _load_registered(args.dataset) if args.dataset else _load_gt(args.gt, args.image_root)
    preds = READERS[args.format](args.submission, gt, args)
    metrics = ("map_iou", "coco") if args.format == "coco" else ("map_iou",)
    group_key = None if args.group_key.lower() == "none" else args.group_key
    key, _ = gt.groups(group_key)
    results, rows = evaluate_predictions(
        gt,
        preds,
        metrics=metrics,
        max_dets=args.max_dets,
        score_thresh=args.score_thresh,
        group_key=group_key,
        progress=True,
        workers=args.workers,
    )
    print(f"MaP-IoU: {results['segm']['MaP-IoU']:.4f}  ({len(rows)} images, {args.format})")
    if "coco" in metrics:
        for task in ("segm", "bbox"):
            r = results[task]
            print(
                f"COCO {task} AP: {r['AP']:.2f}  AP50: {r['AP50']:.2f}  AP75: {r['AP75']:.2f}"
                f"  (max {args.max_dets} detections per image)"
            )
    print()
    print("\n".join(_table(rows, key)))
    out = {
        "submission": str(args.submission),
        "format": args.format,
        "gt": str(args.gt or args.dataset),
        "results": results,
        "per_image": rows,
    }
    if args.output:
        atomic_write_json(args.output, _json_safe(out), indent=1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (SubmissionError, ValueError, KeyError, FileNotFoundError, ImageReadError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

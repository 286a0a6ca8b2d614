#!/usr/bin/env python
"""Cellpose as a peer: trained from scratch on nucdet's training images, scored
by nucdet's metric on nucdet's validation images.

    NUCDET_DATASETS=/work/shared/data .venv/bin/python benchmarks/bench_cellpose.py \
        --cellpose-python /work/cellpose-venv/bin/python \
        --train dsb2018_fold0_train --val dsb2018_fold0_val \
        --output output/accuracy/cellpose [--minutes 60] [--threads 2]

Cellpose lives in ITS OWN virtual environment (``--cellpose-python``; e.g.
``python3.11 -m venv /work/cellpose-venv && /work/cellpose-venv/bin/pip install
'cellpose<4'``), never in nucdet's: the two pin different packages. This script runs in
nucdet's environment and drives Cellpose through its own command line
(``python -m cellpose``), as a Cellpose user would:

1. converts both registered datasets to Cellpose's input: ``<id>.tif`` (the image as
   nucdet reads it, HxWx3 uint8) and ``<id>_masks.tif`` (uint16 label image of the
   ground-truth instances; overlapping pixels go to the later instance, as Cellpose's
   label images cannot overlap) in ``OUTPUT/cellpose_data/{train,val}``;
2. trains from scratch (``--pretrained_model None``) on the training folder: grey input
   (``--chan 0 --chan2 0``), Cellpose's defaults otherwise (AdamW, learning rate 0.005,
   weight decay 1e-5, batch 8, 224 px tiles, ``--diam_mean 30``, images rescaled to it by
   their median diameter, ``--min_train_masks 1`` so that images with few nuclei count);
   the number of epochs fills the time budget: ``--calib-epochs`` are timed first
   (that run is part of the budget), then the main run gets
   ``(budget - elapsed) / seconds_per_epoch`` epochs so that its LR schedule completes
   (a run cut at a timeout would miss its final decay); ``--epochs N`` fixes it instead;
3. predicts the validation folder with the trained model at the training diameter
   (``--diameter 30``: Cellpose's size model is not trained from scratch, so validation
   images are not rescaled by an estimated diameter), writing ``<id>_cp_masks.tif``;
4. scores every label image with nucdet's Kaggle MaP-IoU (``nucdet.evaluation.mapiou``),
   overall and per modality, and writes ``cellpose_metrics.json`` (settings, versions,
   times, scores) and ``predictions.jsonl`` / ``submission.csv`` (nucdet's writer).

Every optimiser setting is passed explicitly (``--SGD 0``: AdamW, ``--learning_rate``,
``--weight_decay``, ``--batch_size``): Cellpose's command-line defaults changed between
releases (2.x: SGD at 0.2). Checked end to end with Cellpose 3.1.1.3 (its ``--help``
has every flag used here) by ``--limit 2 --epochs 1 --threads 1`` (2 training and 2
validation images: conversion, training, prediction, scoring; 2 min 50 s on the
Zen 5 EPYC; MaP-IoU 0 after one epoch, as expected); the 60-minute run has NOT been run
yet. Run the same check first on a new Cellpose release.

The torch thread count of every Cellpose process is ``--threads`` (the 2-core budget).
Cellpose 4.x ("Cellpose-SAM") replaces the small U-Net with a ViT-L encoder meant to be
fine-tuned from its pretrained weights on a GPU; training it from scratch on 2 CPU cores
for 60 minutes is not what it is made for (see RESULTS.md when measured): this script
checks the installed version and refuses 4.x unless ``--allow-cellpose4``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("bench_cellpose")

DIAM_MEAN = 30.0


def dataset_images(dataset: str, limit: int | None = None):
    """``(gt, groups, dicts)`` of a registered dataset (first ``limit`` images)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from nucdet.data.register import register_all
    from nucdet.evaluation.groundtruth import GtDataset

    register_all()
    dicts = DatasetCatalog.get(dataset)[: limit or None]
    classes = list(MetadataCatalog.get(dataset).get("thing_classes", ["nucleus"]))
    gt = GtDataset.from_dataset_dicts(dicts, classes, source=dataset)
    _, groups = gt.groups("modality")
    return gt, groups


def write_cellpose_folder(gt, folder: Path) -> list[str]:
    """``<id>.tif`` + ``<id>_masks.tif`` per image of ``gt`` into ``folder``; the ids."""
    import tifffile

    from nucdet.data.imageio import read_image

    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for im in gt.images:
        image = read_image(im.file_name)
        labels = im.instances().label_image()
        if labels.max() > np.iinfo(np.uint16).max:
            raise ValueError(f"{im.file_name}: {labels.max()} instances do not fit uint16")
        tifffile.imwrite(folder / f"{im.image_id}.tif", image)
        tifffile.imwrite(folder / f"{im.image_id}_masks.tif", labels.astype(np.uint16))
        ids.append(im.image_id)
    return ids


def cellpose_version(python: str) -> str:
    out = subprocess.run(
        # the installed distribution's version (cellpose.version is a str in 3.x)
        [python, "-c", "from importlib.metadata import version; print(version('cellpose'))"],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"{python}: cannot import cellpose ({out.stderr.strip()[-300:]})")
    return out.stdout.strip()


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def train_command(
    python: str, train_dir: Path, epochs: int, name: str, args: argparse.Namespace
) -> list[str]:
    """Cellpose 3.x's training command line (from scratch, grey, defaults but epochs)."""
    return [
        python, "-m", "cellpose", "--train", "--dir", str(train_dir),
        "--pretrained_model", "None", "--chan", "0", "--chan2", "0",
        "--diam_mean", str(DIAM_MEAN), "--n_epochs", str(epochs),
        "--learning_rate", str(args.learning_rate), "--weight_decay", str(args.weight_decay),
        "--batch_size", str(args.batch_size), "--SGD", "0", "--min_train_masks", "1",
        *(["--nimg_per_epoch", str(args.nimg_per_epoch)] if args.nimg_per_epoch else []),
        "--mask_filter", "_masks", "--model_name_out", name, "--verbose",
    ]  # fmt: skip


# Cellpose 3's training log line at epochs 0, 5, 10, 20, ...: "<epoch>, train_loss=...,
# time <seconds since the first epoch started>s"
EPOCH_LINE = re.compile(r"\b(\d+), train_loss=\S+, test_loss=\S+, LR=\S+, time ([\d.]+)s")


def epoch_times(log_text: str) -> list[tuple[int, float]]:
    """``(epoch, seconds)`` of every Cellpose epoch line in ``log_text``, in order."""
    return [(int(m.group(1)), float(m.group(2))) for m in EPOCH_LINE.finditer(log_text)]


def calibrate(total: float, times: list[tuple[int, float]], epochs_run: int) -> tuple[float, float]:
    """``(seconds per epoch, start-up seconds)`` of a calibration run of ``epochs_run``
    epochs that took ``total`` wall seconds and logged ``times`` (``epoch_times``): the
    epoch time from its first and last epoch lines (Cellpose's clock starts after it has
    read the images and computed their flows, which is the start-up), the start-up the
    rest of the wall time. Without two epoch lines, the whole run counts as epochs (an
    over-estimate of the epoch time: fewer epochs, never a run over the budget)."""
    if len(times) >= 2 and times[-1][0] > times[0][0]:
        (e0, t0), (e1, t1) = times[0], times[-1]
        per_epoch = (t1 - t0) / (e1 - e0)
        return per_epoch, max(0.0, total - per_epoch * epochs_run)
    return total / epochs_run, 0.0


def predict_command(python: str, model: Path, val_dir: Path) -> list[str]:
    return [
        python, "-m", "cellpose", "--dir", str(val_dir), "--pretrained_model", str(model),
        "--chan", "0", "--chan2", "0", "--diameter", str(DIAM_MEAN),
        "--save_tif", "--no_npy", "--verbose",
    ]  # fmt: skip


def run_timed(cmd: list[str], threads: int, log: Path) -> float:
    """Run ``cmd``, its output appended to ``log``; wall seconds. Fails loudly."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(threads))
    if proc.returncode:
        raise RuntimeError(f"{cmd[:4]}... failed with exit code {proc.returncode}: see {log}")
    return time.perf_counter() - t0


def trained_model(train_dir: Path, name: str) -> Path:
    path = train_dir / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"Cellpose wrote no model {path}")
    return path


def score(gt, groups, val_dir: Path) -> dict[str, Any]:
    """nucdet's MaP-IoU of Cellpose's ``<id>_cp_masks.tif`` against ``gt``."""
    import tifffile

    from nucdet.evaluation.mapiou import map_iou_dataset

    pairs = []
    for im in gt.images:
        path = val_dir / f"{im.image_id}_cp_masks.tif"
        if not path.is_file():
            raise FileNotFoundError(f"Cellpose wrote no prediction for {im.image_id}: {path}")
        pairs.append((im.image_id, im.instances(), tifffile.imread(path).astype(np.int32)))
    res = map_iou_dataset(pairs, groups=groups)
    return {
        "MaP-IoU": res["mean"],
        "n_images": res["n_images"],
        "per_modality": {g: v["mean"] for g, v in res["groups"].items()},
        "per_image": res["per_image"],
    }, pairs


def write_predictions(pairs, output: Path) -> None:
    """Cellpose's label images in nucdet's submission format (Kaggle CSV)."""
    from nucdet.inference.masks import CropMasks
    from nucdet.io.writers import make_writer
    from nucdet.structures import ImagePrediction

    with make_writer("kaggle", output / "submission.csv") as writer:
        for image_id, _, labels in pairs:
            ids = np.unique(labels)
            ids = ids[ids > 0]
            crops = CropMasks.from_masks(labels[None] == ids[:, None, None])
            h, w = labels.shape
            n = len(ids)
            writer.add(ImagePrediction(image_id, h, w, crops.to_rles(), np.ones(n), np.zeros(n)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cellpose-python", required=True, help="python of Cellpose's own venv")
    ap.add_argument("--train", default="dsb2018_fold0_train", help="registered dataset")
    ap.add_argument("--val", default="dsb2018_fold0_val", help="registered dataset")
    ap.add_argument("--output", required=True)
    ap.add_argument("--minutes", type=float, default=60.0, help="training budget (wall)")
    ap.add_argument("--epochs", type=int, help="fixed epochs instead of the budget")
    ap.add_argument(
        "--calib-epochs", type=int, default=6,
        help="epochs of the timed calibration run (Cellpose logs epochs 0 and 5: >= 6)",
    )  # fmt: skip
    ap.add_argument(
        "--nimg-per-epoch", type=int,
        help="Cellpose's --nimg_per_epoch: images per epoch (default: all training images)",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--learning-rate", type=float, default=0.005)  # Cellpose 3's default
    ap.add_argument("--weight-decay", type=float, default=1e-5)  # Cellpose 3's default
    ap.add_argument("--batch-size", type=int, default=8)  # Cellpose 3's default
    ap.add_argument("--limit", type=int, help="first N images of each dataset (checks)")
    ap.add_argument("--allow-cellpose4", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "cellpose_log.txt"
    version = cellpose_version(args.cellpose_python)
    if int(version.split(".")[0]) >= 4 and not args.allow_cellpose4:
        raise SystemExit(
            f"cellpose {version}: 4.x trains a ViT-L from its pretrained weights (see the "
            "module docstring); install 'cellpose<4' or pass --allow-cellpose4"
        )
    train_gt, _ = dataset_images(args.train, args.limit)
    val_gt, groups = dataset_images(args.val, args.limit)
    train_dir, val_dir = out / "cellpose_data" / "train", out / "cellpose_data" / "val"
    write_cellpose_folder(train_gt, train_dir)
    write_cellpose_folder(val_gt, val_dir)
    budget = args.minutes * 60.0
    times: dict[str, float] = {}
    if args.epochs:
        epochs = args.epochs
    else:
        calib = train_command(args.cellpose_python, train_dir, args.calib_epochs, "calib", args)
        before = log.read_text(errors="replace") if log.is_file() else ""
        times["calibration"] = run_timed(calib, args.threads, log)
        logged = epoch_times(log.read_text(errors="replace")[len(before) :])
        per_epoch, startup = calibrate(times["calibration"], logged, args.calib_epochs)
        # the main run pays the start-up again
        epochs = max(1, int((budget - times["calibration"] - startup) / per_epoch))
        times["calibration_seconds_per_epoch"] = per_epoch
        times["calibration_startup"] = startup
        logger.info("%.1f s per epoch, %.0f s start-up: %d epochs fill the budget",
                    per_epoch, startup, epochs)  # fmt: skip
    cmd = train_command(args.cellpose_python, train_dir, epochs, "nucdet_scratch", args)
    times["training"] = run_timed(cmd, args.threads, log)
    model = trained_model(train_dir, "nucdet_scratch")
    times["prediction"] = run_timed(
        predict_command(args.cellpose_python, model, val_dir), args.threads, log
    )
    scores, pairs = score(val_gt, groups, val_dir)
    write_predictions(pairs, out)
    result = {
        "cellpose_version": version,
        "cellpose_python": args.cellpose_python,
        "python": sys.version.split()[0],
        "train": args.train,
        "val": args.val,
        "n_train_images": len(train_gt),
        "epochs": epochs,
        "nimg_per_epoch": args.nimg_per_epoch,
        "budget_minutes": args.minutes,
        "threads": args.threads,
        "commands": {
            "train": cmd,
            "predict": predict_command(args.cellpose_python, model, val_dir),
        },  # fmt: skip
        "seconds": {k: round(v, 1) for k, v in times.items()},
        **scores,
    }
    from nucdet.io.atomic import atomic_write_json

    atomic_write_json(out / "cellpose_metrics.json", result)
    logger.info("Cellpose %s: MaP-IoU %.4f on %d images", version, scores["MaP-IoU"],
                scores["n_images"])  # fmt: skip
    return result


if __name__ == "__main__":
    main()

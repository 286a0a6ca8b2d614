#!/usr/bin/env python
"""The ONE command that trains and evaluates the DSB2018 CPU accuracy recipe.

    NUCDET_DATASETS=/work/shared/data .venv/bin/python benchmarks/train_recipe.py \
        [--output DIR] [--num-gpus 2] [--minutes 60] [KEY VALUE ...]

The recipe trains ONE model on both cores of the 2-core machine: ``--num-gpus 2`` (the
default) runs train_net.py as two gloo processes with one thread each and the config's
batch of 4 split over them. The committed result (benchmarks/RESULTS.md,
benchmarks/results/recipe60_both_cores/) ran on the free machine:

    python benchmarks/train_recipe.py --output output/accuracy/r60_ddp

With ``--num-gpus 1`` one process trains the batch of 4 (twice as long per iteration); the
first recipe trained two one-process models side by side instead (batch 2, LR 0.01,
``OMP_NUM_THREADS=1`` each: under load, two OpenMP threads per process wait on each other).

Steps (each logged with its wall time into ``DIR/recipe_run.json``):

1. writes a stratified subset of ``dsb2018_fold0_val`` (``--subset`` images: every
   brightfield image, then stained and fluorescence images in a fixed order) as COCO JSON
   and registers it as ``dsb2018_fold0_valsub`` for the periodic evaluation during training:
   evaluating all 110 validation images costs minutes of the 60-minute budget each time;
2. runs ``train_net.py`` with ``configs/dsb2018/mask_rcnn_R_18_FPN_lite_scratch_60min.yaml``
   (extra ``KEY VALUE`` overrides are passed on), in the foreground, timed;
3. plots the curves (``python -m nucdet.tools.curves``) into ``DIR/curves`` and
   ``DIR/recipe_curve.png``: the subset MaP-IoU (overall and per modality) over iterations,
   each point labelled with the wall-clock minutes since training started (read from
   ``log.txt``), with the watershed baseline's score on the same subset as a dashed line;
4. scores the final model on the FULL ``dsb2018_fold0_val`` with ``infer.py``.

``--resume`` continues an interrupted training in ``--output`` (train_net's ``--resume``;
overrides such as a new ``SOLVER.MAX_ITER`` apply from the resumed iteration on).
``--plot-only DIR`` redraws ``recipe_curve.png`` of a (running or finished) training
directory and exits.

The training length is ``SOLVER.MAX_ITER`` of the config (picked from the measured
seconds per iteration so that the run, evaluations included, ends inside ``--minutes``);
``--minutes`` is only checked and reported, never used to cut a run short (a cut run would
miss the end of its LR schedule and its last evaluation).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from _common import stratified_subset

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/dsb2018/mask_rcnn_R_18_FPN_lite_scratch_60min.yaml"
SUBSET_NAME = "dsb2018_fold0_valsub"
MODALITY_ORDER = ("brightfield", "stained", "fluorescence")

logger = logging.getLogger("train_recipe")


def write_subset(src_json: Path, out_json: Path, size: int) -> dict[str, int]:
    """Write the COCO subset (``stratified_subset``) of ``src_json`` and return its
    modality counts."""
    from nucdet.data.folds import subset_coco
    from nucdet.io.atomic import atomic_write_json

    coco = json.loads(src_json.read_text())
    keep = stratified_subset(coco["images"], size)
    # the images in the subset's own order (rarest modality first), as the recipe runs had
    sub = subset_coco({**coco, "images": keep}, {im["id"] for im in keep})
    out_json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_json, sub)
    counts: dict[str, int] = {}
    for im in keep:
        counts[im.get("modality", "")] = counts.get(im.get("modality", ""), 0) + 1
    return counts


def fold_json(name: str) -> tuple[Path, Path]:
    """(COCO JSON, image root) of a predefined dataset, building its cache if needed."""
    from detectron2.data import DatasetCatalog

    from nucdet.data.register import cache_dir, datasets_root, register_all

    register_all()
    DatasetCatalog.get(name)  # builds the cache on first use
    cached = sorted(cache_dir().glob(f"{name}-*.json"), key=lambda p: p.stat().st_mtime)
    if not cached:
        raise FileNotFoundError(f"{name}: no cached COCO JSON under {cache_dir()}")
    return cached[-1], datasets_root() / "dsb2018" / "stage1_train"


LOG_TIME = re.compile(r"^\[(\d\d/\d\d \d\d:\d\d:\d\d)\]?\S*")
EVAL_LINE = re.compile(r"segm: MaP-IoU=")


def eval_minutes(log_txt: Path) -> list[float]:
    """Wall-clock minutes from the first "Starting training from iteration 0" to each
    logged segm evaluation, in log order (a ``--resume`` keeps counting, its restart gap
    included)."""
    start, out = None, []
    for line in log_txt.read_text(errors="replace").splitlines():
        m = LOG_TIME.match(line)
        if not m:
            continue
        t = datetime.strptime(m.group(1), "%m/%d %H:%M:%S")
        if "Starting training from iteration 0" in line:
            start, out = t, []
        elif start is not None and EVAL_LINE.search(line):
            out.append((t - start).total_seconds() / 60)
    return out


def plot_recipe_curve(
    train_dir: Path, png: Path, baseline: dict[str, float] | None = None
) -> list[dict]:
    """Subset MaP-IoU over iterations (module docstring, step 3); returns the points.

    ``baseline``: the watershed's ``{"overall": x, <modality>: y, ...}`` on the same images,
    drawn as dotted lines in the colour of each curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nucdet.io.atomic import atomic_open
    from nucdet.io.metrics_json import read_metrics, series

    rows = read_metrics(train_dir / "metrics.json")
    its, vals = series(rows, "segm/MaP-IoU")
    minutes = eval_minutes(train_dir / "log.txt")[-len(its) :] if its else []
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    baseline = baseline or {}
    shown = [0.5, *vals, *baseline.values()]  # every plotted value fits under the y limit
    ax.plot(its, vals, "o-", color="k", lw=2, label="overall")
    if "overall" in baseline:
        ax.axhline(baseline["overall"], color="k", ls=":", lw=1.5,
                   label=f"watershed, same images: {baseline['overall']:.3f}")  # fmt: skip
    for mod, colour in zip(MODALITY_ORDER[::-1], ("tab:green", "tab:purple", "tab:orange")):
        mi, mv = series(rows, f"segm/MaP-IoU-{mod}")
        if mi:
            ax.plot(mi, mv, ".--", color=colour, lw=1, label=mod)
            shown += mv
        if mod in baseline:
            ax.axhline(baseline[mod], color=colour, ls=":", lw=1)
    for i, v, m in zip(its, vals, minutes):
        ax.annotate(f"{m:.0f} min", (i, v), textcoords="offset points", xytext=(0, 7),
                    ha="center", fontsize=8)  # fmt: skip
    ax.set_xlabel("iteration")
    ax.set_ylabel("Kaggle MaP-IoU")
    ax.set_ylim(0, max(shown) * 1.1)
    ax.set_title(
        f"{train_dir.parent.name}: MaP-IoU on the periodic-eval subset "
        "(dotted: watershed, same colour = same images)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside the curves
    fig.tight_layout()
    with atomic_open(png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return [
        {"iteration": i, "MaP-IoU": v, "minutes": m}
        for i, v, m in zip(its, vals, minutes + [None] * (len(its) - len(minutes)))
    ]


def subset_baseline(sub_json: Path, image_root: Path) -> dict[str, float]:
    """Watershed MaP-IoU on the periodic-eval subset, overall and per modality (the
    curve's reference lines)."""
    from baseline_watershed import score_dataset  # a sibling script

    from nucdet.data.register import register_coco

    register_coco(SUBSET_NAME, sub_json, image_root)
    res = score_dataset(SUBSET_NAME)
    return {"overall": float(res["MaP-IoU"]), **res["per_modality"]}


def train_command(
    args: argparse.Namespace, py: str, sub_json: Path, image_root: Path, train_dir: Path
) -> list[str]:
    """The train_net command line: the subset registered and used as the periodic test set,
    ``--num-gpus`` only when above 1, the user's overrides last (they win)."""
    return [
        py, "train_net.py", "--config-file", args.config_file,
        *(["--resume"] if args.resume else []),
        *(["--num-gpus", str(args.num_gpus)] if args.num_gpus > 1 else []),
        "DATASETS.REGISTER", repr([[SUBSET_NAME, str(sub_json), str(image_root)]]),
        "DATASETS.TEST", f"('{SUBSET_NAME}',)",
        "OUTPUT_DIR", str(train_dir), *args.opts,
    ]  # fmt: skip


def run(cmd: list[str], log: dict, key: str) -> None:
    logger.info("running: %s", " ".join(cmd))
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    log[key] = {"command": " ".join(cmd), "seconds": round(time.time() - t0, 1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config-file", default=str(CONFIG))
    ap.add_argument("--output", default=str(REPO / "output/accuracy/recipe"))
    ap.add_argument("--subset", type=int, default=20, help="images in the periodic-eval subset")
    ap.add_argument("--minutes", type=float, default=60.0, help="wall-time budget (checked)")
    ap.add_argument("--skip-final", action="store_true", help="no full-fold scoring at the end")
    ap.add_argument("--resume", action="store_true", help="continue the training in --output")
    ap.add_argument(
        "--num-gpus", type=int, default=2,
        help="train_net processes (on a CPU: gloo processes, one per core; SOLVER.IMS_PER_BATCH "
        "is the total over them). Default 2: the recipe's one model on both cores",
    )  # fmt: skip
    ap.add_argument("--plot-only", help="training OUTPUT_DIR: redraw its recipe_curve.png only")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="train_net overrides: KEY VALUE ...")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not os.environ.get("NUCDET_DATASETS"):
        raise RuntimeError(
            "set NUCDET_DATASETS to the folder holding dsb2018/ (e.g. ../shared/data)"
        )

    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        train_dir = Path(args.plot_only).resolve()
        sub_json = train_dir.parent / f"{SUBSET_NAME}.json"
        base = subset_baseline(sub_json, fold_json("dsb2018_fold0_val")[1])
        points = plot_recipe_curve(train_dir, out / "recipe_curve.png", base)
        logger.info("subset baseline %s, curve %s", base, points)
        return {"curve": points, "subset_baseline": base}
    log: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_before": os.getloadavg()}
    val_json, image_root = fold_json("dsb2018_fold0_val")
    sub_json = out / f"{SUBSET_NAME}.json"
    log["subset"] = write_subset(val_json, sub_json, args.subset)
    logger.info("periodic-eval subset %s: %s", sub_json, log["subset"])

    py = sys.executable
    train_dir = out / "train"
    run(train_command(args, py, sub_json, image_root, train_dir), log, "train")
    log["load_after_train"] = os.getloadavg()
    minutes = log["train"]["seconds"] / 60
    log["train"]["within_budget"] = minutes <= args.minutes
    if minutes > args.minutes:
        logger.warning("training took %.1f min, over the %.0f-minute budget", minutes, args.minutes)
    run([py, "-m", "nucdet.tools.curves", str(train_dir), "--output", str(out / "curves")],
        log, "curves")  # fmt: skip
    log["subset_baseline"] = subset_baseline(sub_json, image_root)
    log["curve"] = plot_recipe_curve(train_dir, out / "recipe_curve.png", log["subset_baseline"])
    if not args.skip_final:
        run(
            [py, "infer.py", "--model-dir", str(train_dir), "--weights",
             str(train_dir / "model_final.pth"), "--dataset", "dsb2018_fold0_val",
             "--output", str(out / "final_val"), "--format", "dsb", "--overlays", "4"],
            log,
            "final_eval",
        )  # fmt: skip
        metrics = json.loads((out / "final_val" / "metrics.json").read_text())
        log["final_val"] = {k: v for k, v in metrics.items() if k != "per_image"}
    from nucdet.io.atomic import atomic_write_json

    atomic_write_json(out / "recipe_run.json", log)
    logger.info("done: %s", json.dumps(log, default=str)[:2000])
    return log


if __name__ == "__main__":
    main()

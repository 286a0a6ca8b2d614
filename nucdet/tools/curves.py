"""Learning curves of one training run: ``metrics.json`` -> PNG plots.

    python -m nucdet.tools.curves OUTPUT_DIR [--output DIR]

Writes into ``DIR`` (default ``OUTPUT_DIR``), atomically:

- ``curves_training.png``: the training losses (``total_loss`` and every ``loss_*``) and
  the learning rate over iterations. A loss also logged for a validation set
  (``val_<loss>`` / ``validation_<loss>``) is drawn in the same panel, dashed.
- ``curves_validation.png`` (when the run evaluated): one panel per metric family and task
  (``segm``/``bbox`` MaP-IoU with its per-group lines, COCO AP/AP50/AP75, counting MAE),
  one line per evaluated dataset; when the run evaluated a training split as well
  (``DATASETS.TEST ("x_train", "x_val")``), train and validation share each panel. The
  best value of each main line is marked.

Values are the ones detectron2 logged (training scalars median-smoothed over 20
iterations), read through ``nucdet.io.metrics_json``. Comparing several runs side by side
is ``nucdet.tools.report``'s job.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nucdet.io.atomic import atomic_open
from nucdet.io.metrics_json import is_eval_key, read_metrics, series, split_eval_key

logger = logging.getLogger(__name__)

VAL_PREFIXES = ("val_", "validation_")
AP_KEYS = ("AP", "AP50", "AP75")
TRAINING_PNG = "curves_training.png"
VALIDATION_PNG = "curves_validation.png"


def training_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """``total_loss`` then the ``loss_*`` keys (sorted), training side only."""
    keys = {k for r in rows for k in r}
    losses = sorted(k for k in keys if k.startswith("loss_"))
    return (["total_loss"] if "total_loss" in keys else []) + losses


def validation_panels(rows: Sequence[dict[str, Any]]) -> dict[str, list[tuple[str, str]]]:
    """Panel title -> [(line label, metrics.json key)] for the evaluation results."""
    keys = sorted({k for r in rows for k in r if is_eval_key(k)})
    panels: dict[tuple, list[tuple[str, str]]] = {}
    for key in keys:
        dataset, task, metric = split_eval_key(key)
        prefix = f"{dataset} " if dataset else ""
        if metric == "MaP-IoU" or metric.startswith("MaP-IoU-"):
            title = (0, task, f"{task} MaP-IoU (Kaggle, 0..1)")
        elif metric in AP_KEYS:
            title = (1, task, f"{task} COCO {'/'.join(AP_KEYS)} (%)")
        elif task == "count" and metric == "MAE":
            title = (2, task, "count MAE (objects per image)")
        else:
            continue
        panels.setdefault(title, []).append((prefix + metric, key))
    return {t[-1]: lines for t, lines in sorted(panels.items())}


def _figure(n_panels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ncols = min(3, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax in list(axes.flat)[n_panels:]:
        ax.axis("off")
    for ax in list(axes.flat)[:n_panels]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return plt, fig, list(axes.flat)


def _save(plt, fig, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path


def plot_training(rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Training losses and learning rate (see module docstring)."""
    losses = training_keys(rows)
    keys = {k for r in rows for k in r}
    panels = losses + (["lr"] if "lr" in keys else [])
    if not panels:
        raise ValueError(f"{title or 'metrics.json'}: no training losses to plot")
    plt, fig, axes = _figure(len(panels))
    for ax, key in zip(axes, panels):
        its, vals = series(rows, key)
        ax.plot(its, vals, label="train", lw=1.2)
        for p in VAL_PREFIXES:
            vits, vvals = series(rows, p + key)
            if vits:
                ax.plot(vits, vvals, "--", marker="o", ms=3, label="validation")
        if key != "lr" and vals and min(vals) > 0 and max(vals) > 10 * min(vals):
            ax.set_yscale("log")  # only when the loss spans a decade: else ticks get unreadable
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=7)
    return _save(plt, fig, Path(path), f"training: {title}")


def plot_validation(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = ""
) -> Path | None:
    """Evaluation metrics over iterations (see module docstring); None if none logged."""
    panels = validation_panels(rows)
    if not panels:
        return None
    plt, fig, axes = _figure(len(panels))
    for ax, (panel, lines) in zip(axes, panels.items()):
        for label, key in lines:
            its, vals = series(rows, key)
            if not its:
                continue
            per_group = "MaP-IoU-" in label
            (line,) = ax.plot(
                its,
                vals,
                "--" if per_group else "-",
                marker="o",
                ms=3,
                lw=0.8 if per_group else 1.5,
                label=label,
            )
            if not per_group and "MAE" not in key:
                best = max(range(len(vals)), key=lambda i: vals[i])
                ax.annotate(
                    f"{vals[best]:.3g}",
                    (its[best], vals[best]),
                    textcoords="offset points",
                    xytext=(0, 5),
                    ha="center",
                    fontsize=7,
                    color=line.get_color(),
                )
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.margins(y=0.15)  # room for the best-value labels
        ax.legend(fontsize=7)
    return _save(plt, fig, Path(path), f"validation: {title}")


def write_curves(output_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """Plot ``output_dir/metrics.json`` into ``out`` (default ``output_dir``); returns the
    PNGs written."""
    output_dir = Path(output_dir)
    metrics_file = output_dir / "metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file}: not found (not a training output directory?)")
    rows = read_metrics(metrics_file)
    if not rows:
        raise ValueError(f"{metrics_file}: no records")
    out = Path(out) if out is not None else output_dir
    written = [plot_training(rows, out / TRAINING_PNG, str(output_dir))]
    val = plot_validation(rows, out / VALIDATION_PNG, str(output_dir))
    if val is not None:
        written.append(val)
    else:
        logger.info("%s: no evaluation results (TEST.EVAL_PERIOD 0?)", metrics_file)
    return written


def main(argv: Sequence[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("output_dir", help="training OUTPUT_DIR holding metrics.json")
    ap.add_argument("--output", default=None, help="folder for the PNGs (default: output_dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    written = write_curves(args.output_dir, args.output)
    for p in written:
        logger.info("wrote %s", p)
    return written


if __name__ == "__main__":
    main()

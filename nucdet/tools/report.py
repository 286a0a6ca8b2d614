"""Compare training output directories: one results table and the learning curves side by side.

    python -m nucdet.tools.report output/r50 output/x101 --output output/compare \
        [--labels r50 x101] [--metric segm/MaP-IoU]

Writes ``OUT/report.csv``, ``OUT/report.md`` (one row per directory: iterations, final and
best evaluation metrics, and every config key whose value differs between the directories)
and ``OUT/curves.png`` (training loss, learning rate and the evaluation metrics, one line per
directory in each panel).

The readers here (``summarize_run``, ``load_config_flat``) and the table writer
(``write_table``) are shared with ``nucdet.tools.sweep``. They need neither detectron2 nor
a model: a directory is read from its ``metrics.json`` (through
``nucdet.io.metrics_json``) and ``config.yaml``.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from nucdet.io.atomic import atomic_open
from nucdet.io.metrics_json import (
    EVAL_TASKS,
    eval_entries,
    is_eval_key,
    read_metrics,
    series,
    trained_iterations,
)

logger = logging.getLogger(__name__)

# Leading metric columns, in this order, when present; the rest follow sorted.
PREFERRED_METRICS = ("MaP-IoU", "AP", "AP50", "AP75")
DEFAULT_BEST_METRIC = "segm/MaP-IoU"


def best_entry(
    entries: Sequence[tuple[int, dict[str, float]]], metric: str, mode: str = "max"
) -> tuple[int, dict[str, float]] | None:
    """The evaluation entry with the best ``metric`` (first one on ties), or None."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    scored = [(it, m) for it, m in entries if metric in m and not math.isnan(float(m[metric]))]
    if not scored:
        return None
    sign = 1.0 if mode == "max" else -1.0
    best = scored[0]
    for it, m in scored[1:]:
        if sign * float(m[metric]) > sign * float(best[1][metric]):
            best = (it, m)
    return best


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML loader that also reads the python tuples detectron2 writes in config.yaml."""


_ConfigLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node))
)


def load_config_flat(path: str | os.PathLike) -> dict[str, Any]:
    """A config YAML as a flat {"SOLVER.MAX_ITER": 300, ...} dict (no _BASE_ resolution:
    a training OUTPUT_DIR/config.yaml is already complete)."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_ConfigLoader) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not a readable config YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    flat: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                flat[key] = v

    walk(data, "")
    return flat


def config_differences(
    configs: Sequence[dict[str, Any]], ignore: Iterable[str] = ("OUTPUT_DIR",)
) -> list[str]:
    """Keys whose value differs between the flat configs (or is missing from some), sorted."""
    ignore = set(ignore)
    keys = sorted(set().union(*configs)) if configs else []
    missing = object()
    return [
        k for k in keys if k not in ignore and len({repr(c.get(k, missing)) for c in configs}) > 1
    ]


def summarize_run(output_dir: str | os.PathLike) -> dict[str, Any]:
    """What a training output directory achieved, from its metrics.json and config.yaml.

    Returns ``iterations``, ``final`` (metrics of the last evaluation) and ``final_iteration``,
    ``best`` / ``best_iteration`` (the evaluation with the best
    ``SOLVER.BEST_CHECKPOINT.METRIC``, default segm/MaP-IoU, max), ``best_metric`` and
    ``evaluations`` (how many evaluation rows there are).
    """
    output_dir = Path(output_dir)
    metrics_file = output_dir / "metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{output_dir}: no metrics.json (not a training output dir?)")
    rows = read_metrics(metrics_file)
    entries = eval_entries(rows)
    cfg_file = output_dir / "config.yaml"
    cfg = load_config_flat(cfg_file) if cfg_file.is_file() else {}
    metric = cfg.get("SOLVER.BEST_CHECKPOINT.METRIC") or DEFAULT_BEST_METRIC
    mode = cfg.get("SOLVER.BEST_CHECKPOINT.MODE") or "max"
    best = best_entry(entries, metric, mode)
    return {
        "iterations": trained_iterations(rows),
        "evaluations": len(entries),
        "final": entries[-1][1] if entries else {},
        "final_iteration": entries[-1][0] if entries else None,
        "best_metric": metric,
        "best": best[1] if best else {},
        "best_iteration": best[0] if best else None,
    }


def metric_columns(keys: Iterable[str]) -> list[str]:
    """Order metric keys: per task (segm first), the preferred metrics, then the rest sorted."""
    keys = set(keys)

    def rank(key: str) -> tuple:
        parts = key.split("/")
        task = next((p for p in parts[:-1] if p in EVAL_TASKS), "")
        prefix = "/".join(parts[: parts.index(task)]) if task else ""
        name = parts[-1]
        task_rank = EVAL_TASKS.index(task) if task else len(EVAL_TASKS)
        pref = (
            PREFERRED_METRICS.index(name) if name in PREFERRED_METRICS else len(PREFERRED_METRICS)
        )
        return (prefix, task_rank, pref, name)

    return sorted(keys, key=rank)


def format_value(value: Any) -> str:
    """A table cell: floats with 4 decimals, None as empty, everything else as str."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def write_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    out_stem: str | os.PathLike,
    title: str = "",
) -> tuple[Path, Path]:
    """Write ``rows`` as ``<out_stem>.csv`` (full precision) and ``<out_stem>.md``, atomically.

    Missing cells are left empty; the Markdown drops columns that are empty or NaN in every
    row. Returns the two paths.
    """
    out_stem = Path(out_stem)
    csv_path = out_stem.with_name(out_stem.name + ".csv")
    md_path = out_stem.with_name(out_stem.name + ".md")
    with atomic_open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            w.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    # The Markdown is for reading: columns empty or NaN in every row (e.g. COCO's APl on
    # small images) are left out of it; the CSV keeps them all.
    md_columns = [
        c for c in columns if any(format_value(r.get(c)) not in ("", "nan") for r in rows)
    ]
    buf = io.StringIO()
    if title:
        buf.write(f"{title}\n\n")
    buf.write("| " + " | ".join(md_columns) + " |\n")
    buf.write("|" + "|".join("---" for _ in md_columns) + "|\n")
    for row in rows:
        cells = [format_value(row.get(c)).replace("|", "\\|") for c in md_columns]
        buf.write("| " + " | ".join(cells) + " |\n")
    with atomic_open(md_path, "w") as f:
        f.write(buf.getvalue())
    return csv_path, md_path


def read_table(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV written by ``write_table``: (columns, rows as str dicts)."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise ValueError(f"{path}: empty table (no header)")
        return list(reader.fieldnames), list(reader)


# ---- curves ---------------------------------------------------------------------------------


def plot_curves(
    runs: Sequence[tuple[str, Sequence[dict[str, Any]]]],
    path: str | os.PathLike,
    metrics: Sequence[str] = (),
) -> Path:
    """One PNG with a panel per quantity (total_loss, lr, then each evaluation metric) and a
    line per run in each panel. ``runs`` is [(label, metrics.json rows)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not metrics:
        seen: set[str] = set()
        for _, rows in runs:
            for _, m in eval_entries(rows):
                seen.update(m)
        metrics = [m for m in metric_columns(seen) if m.split("/")[-1] in PREFERRED_METRICS]
    panels = ["total_loss", "lr", *metrics]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        for label, rows in runs:
            its, vals = series(rows, key)
            if not its:
                continue
            marker = "o" if is_eval_key(key) else None
            ax.plot(its, vals, label=label, marker=marker, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if key == "total_loss":
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(
            handles,
            labels,
            loc="upper center",
            ncol=min(len(labels), 4),
            bbox_to_anchor=(0.5, 1.0),
            frameon=False,
        )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path


# ---- command line ---------------------------------------------------------------------------


def build_report(
    dirs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    labels: Sequence[str] | None = None,
    metrics: Sequence[str] = (),
) -> dict[str, Path]:
    """Write report.csv, report.md and curves.png for ``dirs`` into ``output``."""
    dirs = [Path(d) for d in dirs]
    if labels is None:
        labels = _default_labels(dirs)
    if len(labels) != len(dirs):
        raise ValueError(f"{len(labels)} labels for {len(dirs)} directories")
    summaries = [summarize_run(d) for d in dirs]
    configs = [
        load_config_flat(d / "config.yaml") if (d / "config.yaml").is_file() else {} for d in dirs
    ]
    diff_keys = config_differences(configs)
    final_keys = metric_columns(set().union(*(s["final"] for s in summaries)))
    best_keys = metric_columns(set().union(*(s["best"] for s in summaries)))
    columns = ["run", "dir", "iterations", "evaluations", *final_keys]
    columns += ["best_metric", "best_iteration", *(f"best:{k}" for k in best_keys)]
    columns += [f"cfg:{k}" for k in diff_keys]
    rows = []
    for label, d, s, c in zip(labels, dirs, summaries, configs):
        row: dict[str, Any] = {
            "run": label,
            "dir": str(d),
            "iterations": s["iterations"],
            "evaluations": s["evaluations"],
            "best_metric": s["best_metric"],
            "best_iteration": s["best_iteration"],
        }
        row.update(s["final"])
        row.update({f"best:{k}": v for k, v in s["best"].items()})
        row.update({f"cfg:{k}": c.get(k) for k in diff_keys})
        rows.append(row)
    output = Path(output)
    csv_path, md_path = write_table(
        rows,
        columns,
        output / "report",
        title="Final evaluation (last entry of metrics.json), best evaluation by "
        "`best_metric`, and the config keys that differ.",
    )
    png = plot_curves(
        [(label, read_metrics(d / "metrics.json")) for label, d in zip(labels, dirs)],
        output / "curves.png",
        metrics=metrics,
    )
    return {"csv": csv_path, "md": md_path, "png": png}


def _default_labels(dirs: Sequence[Path]) -> list[str]:
    """Directory names, made unique by prefixing parent names where they collide."""
    labels = [d.resolve().name for d in dirs]
    depth = 1
    while len(set(labels)) < len(labels) and depth < 6:
        depth += 1
        labels = ["/".join(d.resolve().parts[-depth:]) for d in dirs]
    return labels


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("dirs", nargs="+", help="training output directories (metrics.json)")
    ap.add_argument("--output", required=True, help="folder for report.csv/.md, curves.png")
    ap.add_argument("--labels", nargs="+", help="one label per directory (default: names)")
    ap.add_argument(
        "--metric",
        action="append",
        default=[],
        help="evaluation metric panel(s) to plot (default: MaP-IoU, AP, AP50, AP75)",
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = build_report(args.dirs, args.output, labels=args.labels, metrics=args.metric)
    for kind, path in out.items():
        logger.info("%s: %s", kind, path)
    return out


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"report: error: {e}") from e

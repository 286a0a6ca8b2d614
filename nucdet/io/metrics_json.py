"""detectron2's ``metrics.json`` (``JSONWriter``: one JSON object per line): read, cut, extract.

The one home of this file format. Every record has an ``iteration``; training scalars
(``total_loss``, ``loss_*``, ``lr``, ``fast_rcnn/cls_accuracy``, ...) and evaluation
results share the file. Evaluation results are flattened ``[dataset/]task/metric`` keys
(``segm/MaP-IoU``, ``dsb_val/bbox/AP``); the task name (``EVAL_TASKS``) is what tells
them from training scalars that also contain a slash.

- ``read_metrics``: the records in file order. A run killed while writing can leave a
  torn last line: it is dropped with a warning; any other unreadable line, or a record
  without an ``iteration``, raises ``ValueError`` naming the file and line.
- ``truncate_metrics``: keep the records before a resumed run's start iteration
  (rewritten atomically), so a resumed run does not duplicate the iterations a killed run
  logged after its last checkpoint.
- ``series``, ``eval_entries``, ``trained_iterations``: what the report, the curves and
  the benchmarks take out of the records.

Pure python: no detectron2, no model; the engine hooks and the tools import it from here.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nucdet.io.atomic import atomic_open

logger = logging.getLogger(__name__)

# Tasks of flattened evaluation keys: detectron2's evaluators, plus nucdet's
# NucleiEvaluator extras "count", "voc" and "glas".
EVAL_TASKS = ("segm", "bbox", "voc", "glas", "count", "keypoints", "sem_seg", "panoptic_seg")


def is_eval_key(key: str) -> bool:
    """True for a flattened evaluation result key ("segm/AP", "val/segm/MaP-IoU"); training
    scalars such as "fast_rcnn/cls_accuracy" are not."""
    return any(p in EVAL_TASKS for p in key.split("/")[:-1])


def split_eval_key(key: str) -> tuple[str, str, str]:
    """``"[dataset/]task/metric"`` -> (dataset or "", task, metric)."""
    parts = key.split("/")
    for i, p in enumerate(parts[:-1]):
        if p in EVAL_TASKS:
            return "/".join(parts[:i]), p, "/".join(parts[i + 1 :])
    raise ValueError(f"{key!r} is not an evaluation key ([dataset/]task/metric)")


def read_metrics(path: str | os.PathLike, drop_partial_last: bool = True) -> list[dict[str, Any]]:
    """The records of a ``metrics.json``, in file order (see module docstring).

    A torn last line is dropped with a warning when ``drop_partial_last``; otherwise, and
    for any other line, an unparsable line raises ``ValueError`` naming ``path:line``.
    Blank lines are skipped.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if drop_partial_last and i == len(lines):
                logger.warning("%s:%d: torn last record dropped (%s)", path, i, e)
                continue
            raise ValueError(f"{path}:{i}: not a JSON record ({e})") from e
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
        if "iteration" not in rec:
            raise ValueError(f"{path}:{i}: record without an 'iteration' key")
        records.append(rec)
    return records


def truncate_metrics(path: str | os.PathLike, start_iter: int) -> int:
    """Keep only the records of ``path`` with ``iteration < start_iter``.

    Rewritten atomically (a torn last line goes too); returns the number of records
    dropped. A missing file is fine (0).
    """
    path = Path(path)
    if not path.is_file():
        return 0
    records = read_metrics(path)
    keep = [r for r in records if r["iteration"] < start_iter]
    dropped = len(records) - len(keep)
    if dropped or len(path.read_text().splitlines()) != len(keep):
        with atomic_open(path, "w") as f:
            for r in keep:
                f.write(json.dumps(r, sort_keys=True) + "\n")
    return dropped


def series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(iterations, values) of ``key``, sorted by iteration, NaN/inf dropped; an iteration
    logged twice keeps its last value."""
    merged: dict[int, float] = {}
    for r in rows:
        if key in r and "iteration" in r:
            v = float(r[key])
            if math.isfinite(v):
                merged[int(r["iteration"])] = v
    its = sorted(merged)
    return its, [merged[i] for i in its]


def eval_entries(rows: Iterable[dict[str, Any]]) -> list[tuple[int, dict[str, float]]]:
    """(iteration, evaluation metrics) of every record holding evaluation results, in order."""
    out = []
    for row in rows:
        metrics = {k: v for k, v in row.items() if is_eval_key(k)}
        if metrics:
            out.append((int(row.get("iteration", -1)), metrics))
    return out


def trained_iterations(rows: Iterable[dict[str, Any]]) -> int:
    """Iterations trained: the last training record's iteration + 1 (0 when none).

    The evaluation after the last iteration is logged at iteration MAX_ITER, so only
    records with a loss count.
    """
    iters = [int(r["iteration"]) for r in rows if "iteration" in r and "total_loss" in r]
    return max(iters) + 1 if iters else 0

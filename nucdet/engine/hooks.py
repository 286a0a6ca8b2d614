"""Training hooks that make an interrupted run resume into the same history.

- ``ResumableBestCheckpointer``: detectron2's ``BestCheckpointer`` whose best value and
  iteration are part of the trainer's checkpoint state (so ``--resume`` keeps comparing
  against the real best), which saves ``model_best.pth`` as weights only and never moves
  the ``last_checkpoint`` tag, and which stays quiet on non-main ranks.
- ``MetricsWriter``: detectron2's ``PeriodicWriter`` whose writers are built when training
  starts, after ``resume_or_load`` fixed the start iteration: ``metrics.json`` is first cut
  back to the records before that iteration (a killed run may have logged iterations after
  its last checkpoint; without the cut they would be duplicated), and TensorBoard purges
  the same steps. A new run (start 0) moves an old ``metrics.json`` to
  ``metrics.prev.json`` instead of appending to it. It also writes at every checkpoint
  iteration, so everything up to a checkpoint is on disk before the checkpoint is saved
  (no gap after a resume).

Reading and cutting ``metrics.json`` is ``nucdet.io.metrics_json``'s job.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detectron2.engine import hooks
from detectron2.utils import comm
from detectron2.utils.events import EventWriter

from nucdet.io.metrics_json import truncate_metrics

logger = logging.getLogger(__name__)


class ResumableBestCheckpointer(hooks.BestCheckpointer):
    """``BestCheckpointer`` with checkpointed state; see module docstring.

    ``model_best.pth`` holds ``{"model", "iteration", "best_metric": {name: value}}``.
    """

    def _best_checking(self) -> None:
        if not comm.is_main_process():
            return  # evaluation results and checkpoints live on the main process
        metric = self.trainer.storage.latest().get(self._val_metric)
        if metric is None:
            self._logger.warning(
                "best checkpoint: metric %r not in the evaluation results (keys: %s); "
                "set SOLVER.BEST_CHECKPOINT.METRIC",
                self._val_metric,
                sorted(k for k in self.trainer.storage.latest() if "/" in k),
            )
            return
        value, it = metric
        if math.isnan(value) or math.isinf(value):
            self._logger.warning("best checkpoint: %s is %s at %d", self._val_metric, value, it)
            return
        if self.best_metric is not None and not self._compare(value, self.best_metric):
            self._logger.info(
                "%s = %.5f at iteration %d: not better than %.5f at iteration %d",
                self._val_metric,
                value,
                it,
                self.best_metric,
                self.best_iter,
            )
            return
        self._checkpointer.save_model_only(
            self._file_prefix, iteration=it, best_metric={self._val_metric: value}
        )
        self._logger.info(
            "%s = %.5f at iteration %d: new best (previous %s), saved %s.pth",
            self._val_metric,
            value,
            it,
            self.best_metric,
            self._file_prefix,
        )
        self.best_metric, self.best_iter = value, it

    def state_dict(self) -> dict[str, Any]:
        if self.best_metric is None:
            return {}
        return {
            "metric": self._val_metric,
            "mode": "max" if self._compare(1, 0) else "min",
            "best_metric": self.best_metric,
            "best_iter": self.best_iter,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mode = "max" if self._compare(1, 0) else "min"
        if state.get("metric") != self._val_metric or state.get("mode") != mode:
            self._logger.info(
                "best checkpoint: the checkpoint tracked %s (%s), this run tracks %s (%s): "
                "starting a new best",
                state.get("metric"),
                state.get("mode"),
                self._val_metric,
                mode,
            )
            return
        self.best_metric, self.best_iter = state["best_metric"], state["best_iter"]
        self._logger.info(
            "best checkpoint: resumed %s = %.5f at iteration %d",
            self._val_metric,
            self.best_metric,
            self.best_iter,
        )


class MetricsWriter(hooks.PeriodicWriter):
    """``PeriodicWriter`` that builds its writers at ``before_train``; see module docstring.

    Args:
        build_writers: ``start_iter -> [EventWriter]``, called when training starts.
        period: write every ``period`` iterations (and after the last one).
        flush_period: also write at every multiple of this (the checkpoint period); 0 = never.
        metrics_file: ``metrics.json`` to cut back to the start iteration, or None.
    """

    def __init__(
        self,
        build_writers: Callable[[int], list[EventWriter]],
        period: int = 20,
        flush_period: int = 0,
        metrics_file: str | os.PathLike | None = None,
    ):
        super().__init__([], period=period)
        self._build_writers = build_writers
        self._flush_period = flush_period
        self._metrics_file = metrics_file

    def before_train(self) -> None:
        start = self.trainer.start_iter
        metrics_file = Path(self._metrics_file) if self._metrics_file is not None else None
        if start == 0 and metrics_file is not None and metrics_file.is_file():
            # A new run in an old OUTPUT_DIR: keep the old history aside, do not mix them.
            backup = metrics_file.with_name(metrics_file.stem + ".prev.json")
            os.replace(metrics_file, backup)
            logger.warning("new training run: the previous %s moved to %s", metrics_file, backup)
        elif metrics_file is not None:
            dropped = truncate_metrics(metrics_file, start)
            if dropped:
                logger.info(
                    "%s: dropped %d records from iteration %d on (logged after the last "
                    "checkpoint of the interrupted run)",
                    metrics_file,
                    dropped,
                    start,
                )
        self._writers = self._build_writers(start)
        for w in self._writers:
            assert isinstance(w, EventWriter), w

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if (
            next_iter % self._period == 0
            or next_iter == self.trainer.max_iter
            or (self._flush_period > 0 and next_iter % self._flush_period == 0)
        ):
            for writer in self._writers:
                writer.write()

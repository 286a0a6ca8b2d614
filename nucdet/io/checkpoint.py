"""Reading checkpoint files: errors that name the file, and strict loading for inference.

``CheckedCheckpointer`` is detectron2's ``DetectionCheckpointer`` with two changes:

- a file that cannot be read (truncated by a kill or a half download, not a checkpoint at
  all) raises ``CheckpointError`` naming the file, instead of torch's
  ``PytorchStreamReader failed ...`` without it;
- with ``strict=True`` a load that would leave any parameter of the model untouched
  (missing from the file), skip a tensor of the file (unexpected, or of another shape)
  raises ``CheckpointMismatchError`` listing them, instead of detectron2's "Skip loading
  parameter" warning. Inference always loads strictly: a model whose config does not
  match its weights predicts garbage with exit code 0 otherwise. Training from
  pre-trained backbones (heads missing on purpose) keeps detectron2's lenient load.

It stops at reading; saving (atomic files, the ``last_checkpoint`` tag) lives in
``nucdet.engine.checkpoint``.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

from detectron2.checkpoint import DetectionCheckpointer


class CheckpointError(OSError):
    """A checkpoint file is missing, truncated or not a checkpoint."""


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model built from the config."""


def _listing(items: list, limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


class CheckedCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with named read errors and an optional strict load."""

    def __init__(self, model: Any, save_dir: str = "", *, strict: bool = False, **kwargs: Any):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        self._loading: str = ""

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        if path and not os.path.isfile(path) and "://" not in path:
            raise CheckpointError(f"checkpoint not found: {path}")
        self._loading = path
        return super().load(path, checkpointables=checkpointables)

    def _load_file(self, filename: str) -> dict[str, Any]:
        try:
            return super()._load_file(filename)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
            size = os.path.getsize(filename) if os.path.isfile(filename) else 0
            raise CheckpointError(
                f"cannot read checkpoint {filename} ({size} bytes): truncated or not a "
                f"checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "use another checkpoint of the run or copy the file again"
            ) from None

    def _load_model(self, checkpoint: Any):
        incompatible = super()._load_model(checkpoint)
        if self.strict and incompatible is not None:
            problems = []
            if incompatible.incorrect_shapes:
                problems.append(
                    "other shapes (file vs model): "
                    + _listing([f"{k} {a} vs {b}" for k, a, b in incompatible.incorrect_shapes])
                )
            reshaped = {k for k, _, _ in incompatible.incorrect_shapes}
            missing = [k for k in incompatible.missing_keys if k not in reshaped]
            if missing:
                problems.append("missing from the file: " + _listing(missing))
            if incompatible.unexpected_keys:
                problems.append("not in the model: " + _listing(incompatible.unexpected_keys))
            if problems:
                raise CheckpointMismatchError(
                    f"checkpoint {self._loading} does not match the model built from the "
                    f"config: {'; '.join(problems)}. The config (e.g. MODEL.ROI_HEADS."
                    "NUM_CLASSES, the backbone) is not the one these weights were trained with."
                )
        return incompatible

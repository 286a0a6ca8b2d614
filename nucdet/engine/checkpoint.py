"""detectron2's DetectionCheckpointer with atomic files and MODEL.WEIGHTS resolution.

Differences from ``DetectionCheckpointer`` (reading through
``nucdet.io.checkpoint.CheckedCheckpointer``: an unreadable file is an error naming it,
``strict=True`` for evaluation; everything else, e.g. loading model-zoo
``.pkl`` files and stripping DDP prefixes, is inherited):

- checkpoints and the ``last_checkpoint`` tag are written atomically (temporary file +
  rename), so a run killed while saving never leaves a truncated ``model_*.pth`` or a tag
  that points at one: ``--resume`` then starts from the previous complete checkpoint;
- ``save_model_only`` writes the weights (plus extra data) without the optimizer and
  scheduler state and without moving the ``last_checkpoint`` tag: used for
  ``model_best.pth``, which must never become the file ``--resume`` continues from;
- ``resume_or_load`` resolves ``MODEL.WEIGHTS`` through ``nucdet.engine.weights`` only when
  it is actually loaded (not when resuming), so offline runs get a clear error;
- ``--resume`` with a ``last_checkpoint`` tag naming a file that is not there is an error
  naming both (not a silent start from scratch nor an assertion).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from detectron2.utils import comm

from nucdet.engine.weights import is_url, resolve_weights
from nucdet.io.atomic import atomic_open
from nucdet.io.checkpoint import CheckedCheckpointer, CheckpointError


class NucleiCheckpointer(CheckedCheckpointer):
    """DetectionCheckpointer with atomic saves; see module docstring."""

    def _write(self, name: str, data: dict[str, Any]) -> str:
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        with atomic_open(path, "wb") as f:
            torch.save(data, f)
        return basename

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        self.tag_last_checkpoint(self._write(name, data))

    def save_model_only(self, name: str, **kwargs: Any) -> None:
        """Save ``{"model": state_dict, **kwargs}`` as ``<name>.pth``; the tag is unchanged."""
        if not self.save_dir or not self.save_to_disk:
            return
        self._write(name, {"model": self.model.state_dict(), **kwargs})

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_open(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        if resume and self.has_checkpoint():
            last = self.get_checkpoint_file()
            if not os.path.isfile(last):
                tag = os.path.join(self.save_dir, "last_checkpoint")
                raise CheckpointError(
                    f"{tag} names {os.path.basename(last)!r}, which is not in {self.save_dir}; "
                    "write the name of an existing model_*.pth into it, or remove it to "
                    "start from MODEL.WEIGHTS"
                )
            return self.load(last)
        if path and is_url(path) and comm.get_local_rank() != 0:
            # One download per machine: local rank 0 fetches, the others find it cached.
            comm.synchronize()
        local = resolve_weights(path)
        if path and is_url(path) and comm.get_local_rank() == 0:
            comm.synchronize()
        return self.load(local, checkpointables=[])

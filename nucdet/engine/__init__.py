"""Training engine: the nucdet trainer, its hooks and launch (configs are built and
resolved by ``nucdet.config``).

- ``trainer``: ``Trainer`` (DefaultTrainer with the nucdet mapper, evaluator, hooks) and
  the ``OUTPUT_DIR`` check;
- ``hooks``: resumable best checkpoint, metrics writer that resumes without duplicates;
- ``checkpoint``: atomic checkpointer; ``weights``: ``MODEL.WEIGHTS`` resolution;
- ``freeze``: ``SOLVER.FREEZE_PATTERNS``; ``launch``: multi-process on GPUs (NCCL) or CPUs
  (gloo), and the argument parser (``pop_flags``).
"""

# Every entry point imports nucdet.engine: register nucdet's meta architectures
# (NucleiUNet) in detectron2's META_ARCH_REGISTRY before any build_model.
import nucdet.modeling  # noqa: E402, F401

"""Training engine: config building, the nucdet trainer, its hooks and launch.

- ``defaults``: ``build_cfg`` (get_cfg -> add_nucdet_config -> file -> overrides);
- ``trainer``: ``Trainer`` (DefaultTrainer with the nucdet mapper, evaluator, hooks) and
  ``prepare_training_cfg``;
- ``hooks``: resumable best checkpoint, metrics writer that resumes without duplicates;
- ``checkpoint``: atomic checkpointer; ``weights``: ``MODEL.WEIGHTS`` resolution;
- ``freeze``: ``SOLVER.FREEZE_PATTERNS``; ``launch``: multi-process on GPUs (NCCL) or CPUs
  (gloo).
"""

# Every entry point imports nucdet.engine: register nucdet's meta architectures
# (NucleiUNet) in detectron2's META_ARCH_REGISTRY before any build_model.
import nucdet.modeling  # noqa: E402, F401

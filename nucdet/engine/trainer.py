"""The nucdet trainer: detectron2's DefaultTrainer with the cell-specific pieces.

- training data through the nucdet mapper chosen by ``INPUT.MAPPER``;
- evaluation with ``NucleiEvaluator`` (Kaggle MaP-IoU and COCO AP without the 100 cap);
- the best checkpoint (``model_best.pth``) kept by ``SOLVER.BEST_CHECKPOINT.METRIC``.
"""

from __future__ import annotations

import logging

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, hooks

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    """DefaultTrainer + nucdet mapper, evaluator and best-checkpoint hook."""

    @classmethod
    def build_train_loader(cls, cfg):
        from nucdet.data.mapper import build_mapper

        return build_detection_train_loader(cfg, mapper=build_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        from nucdet.data.mapper import build_mapper

        return build_detection_test_loader(
            cfg, dataset_name, mapper=build_mapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from nucdet.evaluation.evaluator import NucleiEvaluator
        from nucdet.inference.postprocess import postprocess_from_cfg

        return NucleiEvaluator(
            dataset_name,
            output_dir=output_folder,
            max_dets=cfg.TEST.EVAL_MAX_DETS,
            metrics=tuple(cfg.TEST.METRICS),
            postprocess=postprocess_from_cfg(cfg),
        )

    def build_hooks(self):
        hook_list = super().build_hooks()
        cfg = self.cfg
        if cfg.TEST.EVAL_PERIOD > 0 and cfg.DATASETS.TEST:
            # After the EvalHook, so it sees this period's results in the storage.
            hook_list.append(
                hooks.BestCheckpointer(
                    cfg.TEST.EVAL_PERIOD,
                    self.checkpointer,
                    cfg.SOLVER.BEST_CHECKPOINT.METRIC,
                    mode=cfg.SOLVER.BEST_CHECKPOINT.MODE,
                )
            )
        return hook_list

"""The nucdet trainer: detectron2's DefaultTrainer with the cell-specific pieces.

- training data through the nucdet mapper chosen by ``INPUT.MAPPER`` (and any detectron2
  training sampler, e.g. ``DATALOADER.SAMPLER_TRAIN RepeatFactorTrainingSampler``);
- ``SOLVER.FREEZE_PATTERNS`` applied before the optimizer is built (staged fine-tuning);
- evaluation with the evaluators of ``TEST.EVALUATORS`` (default ``NucleiEvaluator``:
  Kaggle MaP-IoU and COCO AP without the 100 cap; detectron2's ``COCOEvaluator`` too)
  every ``TEST.EVAL_PERIOD`` iterations on ``DATASETS.TEST``;
- the best checkpoint (``model_best.pth``) kept by ``SOLVER.BEST_CHECKPOINT.METRIC/MODE``,
  its state saved in every checkpoint so ``--resume`` continues it;
- ``metrics.json`` + TensorBoard written every ``SOLVER.LOG_PERIOD`` iterations and at every
  checkpoint, cut back to the resumed iteration on ``--resume`` (no duplicates, no gap);
- atomic checkpoints, ``MODEL.WEIGHTS`` as URL / local file / "" with clear errors;
- the config resolved by ``nucdet.config.resolve_cfg`` (a no-op on one from ``build_cfg``:
  AMP where it can run, ``INPUT.NORMALIZATION``, ...);
- DDP on CPU (gloo, no device ids) as well as on GPUs; ``SOLVER.AMP.ENABLED``: fp16 with
  detectron2's AMPTrainer on CUDA, bf16 autocast without a grad scaler on the CPU
  (``nucdet.engine.amp``).

Warmup, LR schedule and gradient clipping are detectron2's, read from ``SOLVER.*``.
"""

from __future__ import annotations

import json
import logging
import os
import weakref

from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    hooks,
)
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from detectron2.utils.logger import setup_logger
from fvcore.nn.precise_bn import get_bn_modules

from nucdet.config import build_cfg, resolve_cfg
from nucdet.engine.amp import CPUAMPTrainer
from nucdet.engine.checkpoint import NucleiCheckpointer
from nucdet.engine.freeze import freeze_parameters
from nucdet.engine.hooks import MetricsWriter, ResumableBestCheckpointer

logger = logging.getLogger(__name__)


class RunDirError(ValueError):
    """OUTPUT_DIR holds checkpoints of a run with another model config."""


# What the checkpoints of a run depend on: the model (its shapes and its meaning), and
# the channel order the weights were trained on. The rest (schedule, data, evaluation)
# may change when a run is resumed or evaluated again.
RUN_IDENTITY_IGNORED = ("MODEL.WEIGHTS", "MODEL.DEVICE")


def _flat(cfg: CfgNode, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in cfg.items():
        if isinstance(v, CfgNode):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def run_identity_differences(old: CfgNode, new: CfgNode) -> list[str]:
    """``KEY: old -> new`` for every key of ``MODEL`` (but ``RUN_IDENTITY_IGNORED``) and
    ``INPUT.FORMAT`` where two configs differ."""
    a, b = _flat(old), _flat(new)
    keys = sorted(
        k
        for k in set(a) | set(b)
        if (k.startswith("MODEL.") or k == "INPUT.FORMAT") and k not in RUN_IDENTITY_IGNORED
    )

    def norm(v: object) -> object:  # a dumped config reads tuples back as lists
        return json.loads(json.dumps(v, default=str))

    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if norm(a.get(k)) != norm(b.get(k))]


def check_output_dir(cfg: CfgNode) -> None:
    """Refuse an ``OUTPUT_DIR`` that holds checkpoints (``model_*.pth``, ``last_checkpoint``)
    of another model config: training or evaluating there would replace its
    ``config.yaml`` with one that does not describe its weights (``infer.py`` reads it).

    Raises ``RunDirError`` naming the differing keys. Nothing is written."""
    out = cfg.OUTPUT_DIR
    if not out or not os.path.isdir(out):
        return
    saved = os.path.join(out, "config.yaml")
    checkpoints = sorted(
        f for f in os.listdir(out) if f == "last_checkpoint" or (
            f.startswith("model_") and f.endswith(".pth"))
    )  # fmt: skip
    if not checkpoints or not os.path.isfile(saved):
        return
    try:
        old = build_cfg(saved)
    except (ValueError, KeyError, OSError) as e:
        raise RunDirError(
            f"OUTPUT_DIR {out} holds checkpoints ({', '.join(checkpoints[:3])}) and a "
            f"config.yaml that cannot be read ({e}); give another OUTPUT_DIR"
        ) from None
    diff = run_identity_differences(old, cfg)
    if diff:
        raise RunDirError(
            f"OUTPUT_DIR {out} holds checkpoints ({', '.join(checkpoints[:3])}) of another "
            f"model config; its config.yaml differs in {'; '.join(diff[:6])}"
            + (f" (+{len(diff) - 6} more)" if len(diff) > 6 else "")
            + ". Give another OUTPUT_DIR (its config.yaml is left as it is)."
        )


class Trainer(DefaultTrainer):
    """DefaultTrainer + nucdet mapper, evaluator, hooks and checkpointer (module docstring)."""

    def __init__(self, cfg: CfgNode):
        # DefaultTrainer.__init__ rebuilt (same order) for two reasons: create_ddp_model
        # must get no device_ids on CPU (gloo), and the checkpointer is NucleiCheckpointer.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = resolve_cfg(cfg)  # a no-op on a config from build_cfg (nucdet.config)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cuda = cfg.MODEL.DEVICE.startswith("cuda")
        model = create_ddp_model(
            model,
            broadcast_buffers=False,
            device_ids=[comm.get_local_rank()] if on_cuda else None,
        )
        if not cfg.SOLVER.AMP.ENABLED:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        elif on_cuda:
            self._trainer = AMPTrainer(model, data_loader, optimizer)
        else:  # detectron2's AMPTrainer is CUDA-only: bf16 autocast, no grad scaler
            logger.info("SOLVER.AMP.ENABLED on the CPU: bf16 autocast, no grad scaler")
            self._trainer = CPUAMPTrainer(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = NucleiCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        freeze_parameters(model, cfg.SOLVER.FREEZE_PATTERNS)
        return model

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
        from nucdet.evaluation.evaluator import build_evaluators
        from nucdet.inference.postprocess import postprocess_from_cfg

        if cfg.TEST.EVAL_MAX_DETS < cfg.TEST.DETECTIONS_PER_IMAGE:
            logger.warning(
                "TEST.EVAL_MAX_DETS %d < TEST.DETECTIONS_PER_IMAGE %d: COCO AP ignores "
                "detections the model returns",
                cfg.TEST.EVAL_MAX_DETS,
                cfg.TEST.DETECTIONS_PER_IMAGE,
            )
        if output_folder is None:  # per-image metrics of the latest evaluation land here
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluators(
            cfg, dataset_name, output_dir=output_folder, postprocess=postprocess_from_cfg(cfg)
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer.test with the network at ``TEST.PRECISION``: in bf16 the model is
        evaluated through ``nucdet.inference.predictor.PrecisionModel`` (fp32 is
        detectron2's own path, unchanged; ``ViewsModel`` has its own Predictor)."""
        import torch

        from nucdet.inference.predictor import PrecisionModel, precision_from_cfg

        if isinstance(model, torch.nn.Module) and precision_from_cfg(cfg) == "bf16":
            model = PrecisionModel(cfg, getattr(model, "module", model))  # DDP unwrapped
        return super().test(cfg, model, evaluators)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """detectron2's ``TEST.AUG`` convention on nucdet's views
        (``nucdet.inference.tta.views_from_test_aug``: exact inverses for masks, WBF + mask
        voting); results under ``<task>_TTA`` as in detectron2's train_net."""
        from collections import OrderedDict

        from nucdet.inference.ensemble import ViewsModel
        from nucdet.inference.tta import views_from_test_aug

        views = views_from_test_aug(cfg)
        logger.info("TEST.AUG: evaluating with the views %s", views)
        evaluators = [
            cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name)
            )
            for name in cfg.DATASETS.TEST
        ]
        res = cls.test(cfg, ViewsModel(cfg, model, views), evaluators)
        return OrderedDict((k + "_TTA", v) for k, v in res.items())

    def build_writers(self, start_iter: int = 0):
        """Console, ``metrics.json`` and TensorBoard writers (TensorBoard purges the steps
        from ``start_iter`` on, logged by an interrupted run after its last checkpoint)."""
        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
            TensorboardXWriter(self.cfg.OUTPUT_DIR, purge_step=start_iter),
        ]

    def build_hooks(self):
        """detectron2's hooks, reordered so that a checkpoint holds everything before it.

        Order: timer, LR scheduler, PreciseBN, evaluation, best checkpoint, writers,
        periodic checkpoint. detectron2 checkpoints before evaluating; here the checkpoint
        of iteration i comes last, so it includes the best-metric state of the evaluation
        at i and is saved only after i's metrics are on disk.
        """
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0  # PreciseBN's own loader: save memory and time
        ret: list = [hooks.IterationTimer(), hooks.LRScheduler()]
        if cfg.TEST.PRECISE_BN.ENABLED and get_bn_modules(self.model):
            ret.append(
                hooks.PreciseBN(
                    cfg.TEST.EVAL_PERIOD,
                    self.model,
                    self.build_train_loader(cfg),
                    cfg.TEST.PRECISE_BN.NUM_ITER,
                )
            )

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if cfg.TEST.EVAL_PERIOD > 0 and cfg.DATASETS.TEST:
            ret.append(
                ResumableBestCheckpointer(
                    cfg.TEST.EVAL_PERIOD,
                    self.checkpointer,
                    cfg.SOLVER.BEST_CHECKPOINT.METRIC,
                    mode=cfg.SOLVER.BEST_CHECKPOINT.MODE,
                )
            )
        if comm.is_main_process():
            ret.append(
                MetricsWriter(
                    self.build_writers,
                    period=cfg.SOLVER.LOG_PERIOD,
                    flush_period=cfg.SOLVER.CHECKPOINT_PERIOD,
                    metrics_file=os.path.join(cfg.OUTPUT_DIR, "metrics.json"),
                )
            )
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
        return ret

    def train(self):
        """Train from ``start_iter`` to ``SOLVER.MAX_ITER``; returns the last evaluation
        results (or None). A run resumed after it finished does nothing."""
        if self.start_iter >= self.max_iter:
            logger.info(
                "nothing to train: resumed at iteration %d, SOLVER.MAX_ITER is %d",
                self.start_iter,
                self.max_iter,
            )
            return None
        super().train()
        return getattr(self, "_last_eval_results", None)

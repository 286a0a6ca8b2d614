"""nucdet's config: its keys, building a config, and every step that resolves it.

- ``add_nucdet_config(cfg)``: every new key, one comment each, grouped by the module that
  reads it; called right after ``get_cfg()`` and before ``merge_from_file``.
- ``build_cfg(file, opts)``: get_cfg -> add_nucdet_config -> merge_from_file ->
  merge_from_list(opts) -> ``resolve_cfg``, for every entry point (train, infer, ensemble,
  sweeps, tools). An unknown key is a ``ConfigError`` naming the key, the file and the
  closest valid names.
- ``resolve_cfg(cfg)``: the settings that depend on the machine or on other keys, in one
  place (``RESOLUTION_STEPS``): a CUDA ``MODEL.DEVICE`` without CUDA -> cpu, AMP off where
  it cannot run, ``INPUT.NORMALIZATION`` -> ``MODEL.PIXEL_MEAN/STD``, ``INPUT.RANDOM_FLIP``
  checked. It records on the config (not in its YAML) the state it resolved, so a second
  call (the trainer's, on a config ``build_cfg`` made) is a no-op.
- ``resolve_precision``: ``TEST.PRECISION`` for a device (pure; the predictor feeds it).

Where nucdet's defaults differ from plain detectron2 (a config that sets nothing nucdet
does not behave as detectron2 would):

- ``INPUT.MASK_FORMAT`` "bitmask" (detectron2: "polygon"): annotations are RLE;
- flips: ``INPUT.AUG.HFLIP_PROB`` and ``INPUT.AUG.VFLIP_PROB`` 0.5 and ``INPUT.AUG.ROT90``
  on (detectron2: ``INPUT.RANDOM_FLIP`` "horizontal" only). nucdet's mapper does not read
  ``INPUT.RANDOM_FLIP``: any value but detectron2's default is a ``ConfigError``
  (``check_random_flip``), except with ``INPUT.MAPPER DatasetMapper`` (detectron2's own
  mapper, which reads it and ignores ``INPUT.AUG``);
- post-processing (``POSTPROCESS``, detectron2 has none): overlaps removed
  (``REMOVE_OVERLAP``: contested pixels go to the higher score), detections below score
  0.5 dropped from the final segmentation, i.e. submissions and MaP-IoU (``SCORE_THRESH``;
  detectron2 keeps everything above ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``, and COCO AP
  still ranks every detection), no mask head below that score at inference
  (``SKIP_MASKS_BELOW_THRESH``);
- evaluation: ``TEST.EVAL_MAX_DETS`` 1000 detections per image for COCO AP (detectron2's
  ``COCOEvaluator``: 100), the NucleiEvaluator (MaP-IoU + COCO AP) instead of
  ``COCOEvaluator`` (``TEST.EVALUATORS``), and ``model_best.pth`` kept by
  ``SOLVER.BEST_CHECKPOINT`` when ``TEST.EVAL_PERIOD`` > 0.

The other new keys default to detectron2's behaviour (``INPUT.NORMALIZATION``
"detectron2", ``TEST.PRECISION`` "fp32", intensity augmentations off, nothing frozen).
Layer: imports detectron2, torch and the standard library only, never nucdet.engine /
inference / tools.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "auto")
# /proc/cpuinfo flags of CPU units that multiply bf16 natively (Intel AMX, AVX-512 BF16 on
# Intel and AMD Zen 4); without them torch emulates bf16, slower than fp32.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# Per-channel mean/std on the 0..255 scale, BGR order (torchvision's ImageNet values).
IMAGENET_MEAN_BGR = (103.530, 116.280, 123.675)
IMAGENET_STD_BGR = (57.375, 57.120, 58.395)
NORMALIZATIONS = ("detectron2", "imagenet", "dataset")
# detectron2's default INPUT.RANDOM_FLIP, and the mappers that read that key.
D2_RANDOM_FLIP = "horizontal"
RANDOM_FLIP_MAPPERS = ("DatasetMapper",)


class ConfigError(ValueError):
    """A config file or override that cannot be applied (unknown key, odd overrides, a key
    nucdet does not honour)."""


def add_nucdet_config(cfg: CN) -> CN:
    """Add nucdet's keys to ``cfg`` (and set ``INPUT.MASK_FORMAT`` bitmask); where the
    defaults differ from detectron2's behaviour: module docstring."""
    _C = cfg

    # ---- data: registration (nucdet.data.register) -------------------------------------
    # Predefined dataset root; empty = $NUCDET_DATASETS, else ./datasets.
    _C.DATASETS.ROOT = ""
    # Extra COCO datasets registered at set-up: list of [name, json_file, image_root].
    _C.DATASETS.REGISTER = []

    # ---- data: mapper and augmentation (nucdet.data.mapper, nucdet.data.augment) ---------
    # nucdet annotations are RLE: bitmask by default (detectron2's default is polygon).
    _C.INPUT.MASK_FORMAT = "bitmask"
    # Dataset mapper by name in nucdet.data.mapper.MAPPER_REGISTRY.
    _C.INPUT.MAPPER = "NucleiDatasetMapper"
    # Flips are INPUT.AUG.HFLIP_PROB / VFLIP_PROB; detectron2's INPUT.RANDOM_FLIP must stay
    # "horizontal" unless INPUT.MAPPER is DatasetMapper (check_random_flip).
    _C.INPUT.AUG = CN()
    _C.INPUT.AUG.HFLIP_PROB = 0.5  # horizontal flip probability
    _C.INPUT.AUG.VFLIP_PROB = 0.5  # vertical flip probability
    _C.INPUT.AUG.ROT90 = True  # random rotation by k*90 degrees, k uniform in 0..3
    _C.INPUT.AUG.SCALE_JITTER = (1.0, 1.0)  # (min, max) resize factor applied before the crop
    _C.INPUT.AUG.BRIGHTNESS = (1.0, 1.0)  # (min, max) intensity factor; (1, 1) = off
    _C.INPUT.AUG.CONTRAST = (1.0, 1.0)  # (min, max) contrast factor; (1, 1) = off
    _C.INPUT.AUG.SATURATION = (1.0, 1.0)  # (min, max) saturation factor; (1, 1) = off
    _C.INPUT.AUG.BLUR_PROB = 0.0  # probability of a gaussian blur
    _C.INPUT.AUG.BLUR_SIGMA = (0.5, 1.5)  # (min, max) blur sigma in pixels
    _C.INPUT.AUG.NOISE_PROB = 0.0  # probability of additive gaussian noise
    _C.INPUT.AUG.NOISE_STD = (0.0, 8.0)  # (min, max) noise std on the 0..255 scale
    # Pixel normalisation: "detectron2" (MODEL.PIXEL_MEAN/STD as given), "imagenet", or
    # "dataset" (mean/std of INPUT.DATASET_STATS, written by `python -m nucdet.data.stats`).
    _C.INPUT.NORMALIZATION = "detectron2"
    _C.INPUT.DATASET_STATS = ""  # JSON file with {"mean": [..], "std": [..]} in BGR order

    # ---- training (nucdet.engine) -------------------------------------------------------
    _C.SOLVER.BEST_CHECKPOINT = CN()
    # Metric key in the evaluation results (flattened "task/key") that selects the best model.
    _C.SOLVER.BEST_CHECKPOINT.METRIC = "segm/MaP-IoU"
    _C.SOLVER.BEST_CHECKPOINT.MODE = "max"  # "max" or "min"
    # Parameter names matching any of these regexes are frozen (staged fine-tuning).
    _C.SOLVER.FREEZE_PATTERNS = []
    # Iterations between writes of metrics.json / TensorBoard / console (and at checkpoints).
    _C.SOLVER.LOG_PERIOD = 20

    # ---- evaluation (nucdet.evaluation) -------------------------------------------------
    # Detections per image counted by COCO AP (pycocotools maxDets); COCO's 100 is too few.
    _C.TEST.EVAL_MAX_DETS = 1000
    # Metrics the NucleiEvaluator computes: any of "map_iou", "coco", "voc", "glas", "count".
    _C.TEST.METRICS = ["map_iou", "coco"]
    # Evaluators run on DATASETS.TEST: any of "nuclei" (NucleiEvaluator: TEST.METRICS) and
    # "coco" (detectron2's COCOEvaluator); several are merged (nucdet.evaluation.evaluator).
    _C.TEST.EVALUATORS = ["nuclei"]
    # Network precision at inference (nucdet.inference.predictor): "fp32", "bf16" (autocast
    # + channels_last; boxes, masks and metrics stay fp32), "auto" (resolve_precision).
    _C.TEST.PRECISION = "fp32"

    # ---- inference and post-processing (nucdet.inference) ------------------------------
    _C.POSTPROCESS = CN()
    # Score threshold per class (one value, or one per class in thing_classes order).
    _C.POSTPROCESS.SCORE_THRESH = [0.5]
    _C.POSTPROCESS.MIN_AREA = [0]  # minimum mask area in pixels, one value or one per class
    _C.POSTPROCESS.MASK_THRESH = 0.5  # mask probability threshold
    _C.POSTPROCESS.REMOVE_OVERLAP = True  # assign contested pixels to the higher score
    _C.POSTPROCESS.MAJORITY_CLASS = False  # relabel all instances with the image's majority
    _C.POSTPROCESS.FILL_HOLES = False  # fill holes inside each mask
    _C.POSTPROCESS.MIN_FRAGMENT = 0  # drop connected pieces smaller than this (0 = keep all)
    _C.POSTPROCESS.SKIP_MASKS_BELOW_THRESH = True  # no mask head below min(SCORE_THRESH): faster

    # ---- U-Net family (nucdet.modeling.unet, MODEL.META_ARCHITECTURE "NucleiUNet") ------
    # Classes: MODEL.ROI_HEADS.NUM_CLASSES (one home for both families); ResNet encoder:
    # MODEL.RESNETS.* and MODEL.BACKBONE.FREEZE_AT, as for Mask R-CNN.
    _C.MODEL.UNET = CN()
    _C.MODEL.UNET.ENCODER = "plain"  # "plain" (from scratch) or "resnet" (build_resnet_backbone)
    # Encoder widths: plain, one per level at strides 1, 2, 4, ...; resnet, its two plain
    # levels at strides 1 and 2 (the ResNet's RESNETS.OUT_FEATURES follow from stride 4).
    _C.MODEL.UNET.CHANNELS = [32, 64, 128, 256]
    # Decoder widths, one per encoder level but the deepest, shallowest (stride 1) first.
    _C.MODEL.UNET.DECODER_CHANNELS = [32, 64, 128]
    _C.MODEL.UNET.NORM = "GN"  # norm of the plain levels and the decoder: "GN", "BN" or ""
    _C.MODEL.UNET.BOUNDARY_WIDTH = 2.0  # boundary target: instance pixels this close to outside
    _C.MODEL.UNET.FG_LOSS_WEIGHT = 1.0  # weight of the foreground cross-entropy
    _C.MODEL.UNET.BOUNDARY_LOSS_WEIGHT = 1.0  # weight of the boundary cross-entropy
    _C.MODEL.UNET.DISTANCE_LOSS_WEIGHT = 1.0  # weight of the normalised-distance squared error
    _C.MODEL.UNET.CLASS_LOSS_WEIGHT = 1.0  # weight of the class cross-entropy (> 1 class)
    _C.MODEL.UNET.DECODE = CN()  # watershed decoding (nucdet.modeling.unet_decode)
    _C.MODEL.UNET.DECODE.FG_THRESH = 0.5  # instance pixels: foreground probability >= this
    _C.MODEL.UNET.DECODE.BOUNDARY_THRESH = 0.5  # marker pixels: boundary probability < this
    _C.MODEL.UNET.DECODE.MARKER_THRESH = 0.3  # marker pixels: distance prediction >= this
    _C.MODEL.UNET.DECODE.MIN_MARKER_AREA = 4  # markers smaller than this (pixels) are dropped
    _C.MODEL.UNET.DECODE.MIN_AREA = 0  # instances smaller than this (pixels) are dropped
    # Side M of the box-relative mask grid of every instance (exact for boxes up to M / 2
    # px); 28 = Mask R-CNN's grid, which fusion with Mask R-CNN members needs.
    _C.MODEL.UNET.DECODE.MASK_GRID = 28
    return cfg


def config_keys(cfg: CN, prefix: str = "") -> list[str]:
    """Every full key of ``cfg`` (``MODEL.ROI_HEADS.NUM_CLASSES``, ...), nodes included."""
    keys = []
    for k, v in cfg.items():
        keys.append(prefix + k)
        if isinstance(v, CN):
            keys.extend(config_keys(v, f"{prefix}{k}."))
    return keys


def closest_keys(key: str, cfg: CN, n: int = 3) -> list[str]:
    """The valid keys most like ``key`` (for "did you mean" messages)."""
    keys = config_keys(cfg)
    close = difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
    if not close:  # a wrong node with a right leaf: SOLVER.NUM_CLASSES -> ROI_HEADS.NUM_CLASSES
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] == leaf][:n]
    return close


def _unknown_key(e: Exception, cfg: CN, where: str) -> ConfigError:
    # yacs: KeyError("Non-existent config key: K") from files, an assertion
    # "Non-existent key: K" from merge_from_list.
    text = str(e.args[0]) if e.args else str(e)
    prefix = next((p for p in ("Non-existent config key: ", "Non-existent key: ") if
                   text.startswith(p)), None)  # fmt: skip
    if prefix is None:
        return ConfigError(f"{where}: {text}")
    key = text[len(prefix) :].strip()
    close = closest_keys(key, cfg)
    hint = f"; closest valid keys: {', '.join(close)}" if close else ""
    return ConfigError(f"{where}: unknown config key {key}{hint}")


# ---- resolution steps (resolve_cfg runs them in this order) ----------------------------


def resolve_device(cfg: CN) -> None:
    """A CUDA ``MODEL.DEVICE`` on a machine without CUDA falls back to the CPU (logged), so
    one config serves both."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.info("no CUDA device: MODEL.DEVICE cpu")
        cfg.MODEL.DEVICE = "cpu"


def resolve_amp(cfg: CN) -> None:
    """``SOLVER.AMP.ENABLED`` off when ``MODEL.DEVICE`` is neither CUDA (detectron2's
    AMPTrainer) nor the CPU (bf16, ``nucdet.engine.amp``), with a log line."""
    device = cfg.MODEL.DEVICE
    if cfg.SOLVER.AMP.ENABLED and not (device.startswith("cuda") or device == "cpu"):
        logger.info("SOLVER.AMP.ENABLED: mixed precision needs CUDA or the CPU, off on %s", device)
        cfg.SOLVER.AMP.ENABLED = False


def read_dataset_stats(path: str | os.PathLike) -> tuple[list[float], list[float]]:
    """(mean, std) of a stats JSON ``{"mean": [..], "std": [..]}`` (BGR, 0..255), written by
    ``python -m nucdet.data.stats``."""
    path = Path(path)
    stats = json.loads(path.read_text())
    try:
        mean, std = [float(v) for v in stats["mean"]], [float(v) for v in stats["std"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: needs 'mean' and 'std' lists of numbers ({e})") from e
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"{path}: mean/std must be 3 values (BGR), std > 0; got {stats}")
    return mean, std


def apply_normalization(cfg: CN) -> CN:
    """Set ``MODEL.PIXEL_MEAN/STD`` from ``INPUT.NORMALIZATION``; before building the model
    (normalisation happens inside the model).

    ``"detectron2"`` keeps the values in the config, ``"imagenet"`` uses ImageNet's
    mean/std, ``"dataset"`` reads them from ``INPUT.DATASET_STATS`` (``read_dataset_stats``).
    Values are reordered for ``INPUT.FORMAT`` RGB. A frozen config is unfrozen and frozen
    again. The result depends only on those keys, never on ``MODEL.PIXEL_MEAN/STD``
    themselves, so running it again changes nothing.
    """
    how = cfg.INPUT.NORMALIZATION
    if how == "detectron2":
        return cfg
    if how == "imagenet":
        mean, std = list(IMAGENET_MEAN_BGR), list(IMAGENET_STD_BGR)
    elif how == "dataset":
        path = Path(cfg.INPUT.DATASET_STATS) if cfg.INPUT.DATASET_STATS else None
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"INPUT.NORMALIZATION 'dataset' needs INPUT.DATASET_STATS, a stats JSON "
                f"(python -m nucdet.data.stats); got {cfg.INPUT.DATASET_STATS!r}"
            )
        mean, std = read_dataset_stats(path)
    else:
        raise ValueError(
            f"INPUT.NORMALIZATION must be one of {', '.join(map(repr, NORMALIZATIONS))}, "
            f"got {how!r}"
        )
    if cfg.INPUT.FORMAT == "RGB":
        mean, std = mean[::-1], std[::-1]
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = mean, std
    if frozen:
        cfg.freeze()
    return cfg


def check_random_flip(cfg: CN) -> None:
    """``ConfigError`` when ``INPUT.RANDOM_FLIP`` is set to anything but detectron2's
    default while the mapper is nucdet's, which flips by ``INPUT.AUG.HFLIP_PROB`` /
    ``VFLIP_PROB`` and would silently ignore it. (detectron2's default cannot be told from
    a value written on purpose: it stands for "not set".)"""
    flip, mapper = cfg.INPUT.RANDOM_FLIP, cfg.INPUT.MAPPER
    if flip != D2_RANDOM_FLIP and mapper not in RANDOM_FLIP_MAPPERS:
        raise ConfigError(
            f"INPUT.RANDOM_FLIP {flip!r}: INPUT.MAPPER {mapper} does not read detectron2's "
            f"flip key; set INPUT.AUG.HFLIP_PROB and INPUT.AUG.VFLIP_PROB (0 = no flip) and "
            f"leave INPUT.RANDOM_FLIP {D2_RANDOM_FLIP!r}, or use INPUT.MAPPER DatasetMapper"
        )


RESOLUTION_STEPS = (resolve_device, resolve_amp, apply_normalization, check_random_flip)
# Key of cfg.__dict__ holding the resolved state: clone() (a deepcopy) keeps it, dump()
# does not write it, so a config read back from YAML is resolved again.
_RESOLVED = "_nucdet_resolved_state"


def _resolution_state(cfg: CN) -> tuple:
    """Every key a resolution step reads or writes."""
    return (
        cfg.MODEL.DEVICE,
        cfg.SOLVER.AMP.ENABLED,
        cfg.INPUT.NORMALIZATION,
        cfg.INPUT.DATASET_STATS,
        cfg.INPUT.FORMAT,
        tuple(cfg.MODEL.PIXEL_MEAN),
        tuple(cfg.MODEL.PIXEL_STD),
        cfg.INPUT.RANDOM_FLIP,
        cfg.INPUT.MAPPER,
    )


def is_resolved(cfg: CN) -> bool:
    """``resolve_cfg`` ran on ``cfg`` (or the config it was cloned from) and none of the
    keys it reads or writes changed since."""
    return cfg.__dict__.get(_RESOLVED) == _resolution_state(cfg)


def resolve_cfg(cfg: CN) -> CN:
    """Run every step of ``RESOLUTION_STEPS`` on ``cfg``, once.

    A config already resolved (``is_resolved``) is returned as it is, nothing re-read. An
    unfrozen config is resolved in place; a frozen one is left alone and a resolved, frozen
    clone returned when a step changes something (else ``cfg`` itself), so a caller's
    frozen config is never changed behind its back. A key a step reads changed after
    resolution (``cfg.INPUT.NORMALIZATION = ...``) makes the config unresolved again.
    """
    if is_resolved(cfg):
        return cfg
    out = cfg.clone() if cfg.is_frozen() else cfg
    out.defrost()
    for step in RESOLUTION_STEPS:
        step(out)
    if cfg.is_frozen():
        out.freeze()
        if out == cfg:
            out = cfg
    out.__dict__[_RESOLVED] = _resolution_state(out)
    return out


def build_cfg(config_file: str | os.PathLike | None, opts: Sequence[str] = ()) -> CN:
    """get_cfg -> add_nucdet_config -> merge_from_file -> merge_from_list(opts) ->
    ``resolve_cfg``: the config of every entry point, so training and every inference
    entry point resolve (device, normalisation, ...) the same way.

    The result is not frozen, so callers can still adjust it.
    """
    cfg = get_cfg()
    add_nucdet_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file not found: {config_file}")
        # allow_unsafe: configs written by detectron2 (OUTPUT_DIR/config.yaml) may hold
        # tuples serialised as python objects.
        try:
            cfg.merge_from_file(str(config_file), allow_unsafe=True)
        except (KeyError, AssertionError) as e:
            raise _unknown_key(e, cfg, f"config file {config_file} (or its _BASE_)") from None
    if opts:
        if len(opts) % 2:
            raise ConfigError(f"config overrides must be KEY VALUE pairs, got {list(opts)}")
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, AssertionError) as e:
            raise _unknown_key(e, cfg, "command-line override") from None
    return resolve_cfg(cfg)


def resolve_precision(
    precision: str, device: str, cpu_flags: Collection[str], cuda_bf16: bool = False
) -> str:
    """``TEST.PRECISION`` -> ``"fp32"`` or ``"bf16"`` for a model on ``device``.

    ``"auto"`` is bf16 on a CPU whose ``cpu_flags`` (``/proc/cpuinfo``) include one of
    ``CPU_BF16_FLAGS``, or on a CUDA device when ``cuda_bf16`` (bf16 supported), else fp32.
    Pure: the caller reads the machine (``nucdet.inference.predictor.precision_from_cfg``).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"TEST.PRECISION must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if cuda_bf16 else "fp32"
    return "bf16" if any(f in cpu_flags for f in CPU_BF16_FLAGS) else "fp32"


def read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    """(CPU model name, flags) of the first processor in ``path``; ("", {}) where the file
    does not exist (not Linux): ``auto`` then resolves to fp32 on the CPU."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return "", frozenset()
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return model, flags

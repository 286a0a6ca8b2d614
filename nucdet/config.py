"""nucdet's additions to the detectron2 config: every new key, one comment each.

``add_nucdet_config(cfg)`` is called by every entry point right after ``get_cfg()`` and
before ``merge_from_file``. Keys are grouped by the module that reads them.
"""

from __future__ import annotations

from collections.abc import Collection

from detectron2.config import CfgNode as CN

PRECISIONS = ("fp32", "bf16", "auto")
# /proc/cpuinfo flags of CPU units that multiply bf16 natively (Intel AMX, AVX-512 BF16 on
# Intel and AMD Zen 4); without them torch emulates bf16, slower than fp32.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def add_nucdet_config(cfg: CN) -> CN:
    """Add nucdet keys (with defaults that keep detectron2's behaviour) to ``cfg``."""
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

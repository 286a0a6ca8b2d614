"""Single-model prediction: a detectron2 model in, ``RawDetections`` / ``ImagePrediction`` out.

``Predictor`` runs a model exactly as detectron2's ``DefaultPredictor`` does (same resize,
same input format, same layers in the same order) and gives the same boxes, scores,
classes and masks to the pixel, faster on CPU (``benchmarks/results/predictor.md``:
1.2-1.5x with every mask computed, 2-4x at 1000 detections of which 25-10% pass the
post-processing threshold) and in a third of the memory:

- Masks are pasted into box-sized crops and encoded to RLE from there
  (``nucdet.inference.masks``): no (N, H, W) tensor, no per-box torch call. The numba
  paste reproduces detectron2's ``_do_paste_mask`` bit for bit where torch's
  ``grid_sample`` uses fused multiply-adds (AVX2 and later); ``paste_is_exact`` checks
  that once per process and otherwise pastes with detectron2's own function.
- The mask head (most of the CPU time with hundreds of detections) runs only on
  detections scoring at least ``mask_score_floor``; by default (config
  ``POSTPROCESS.SKIP_MASKS_BELOW_THRESH``) that is ``min(POSTPROCESS.SCORE_THRESH)``,
  below which post-processing discards a detection whatever class it ends up with.
  Detections under the floor keep their box, score and class (majority-class voting
  still counts them) and get an empty mask. After ``postprocess`` the output equals
  ``DefaultPredictor``'s post-processed output exactly.

``TEST.PRECISION`` (``precision_from_cfg``) bf16 runs the network (backbone, RPN, box and
mask heads) under ``torch.autocast`` with bf16 and channels_last weights, GroupNorm layers
in fp32 (``nucdet.modeling.precision``); boxes, scores
and mask probabilities come out as float32, and everything after the network (pasting,
fusion, metrics) is fp32. bf16 masks are not pixel-identical to fp32: fp32 (the default)
is what equals ``DefaultPredictor``.

The mask head computes every region of interest independently, so running it on a subset
gives those detections bit-identical probabilities (checked by
``tests/inference/test_predictor.py``). This module stops at one prediction per image;
TTA, fusion and post-processing live in their own modules.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.layers.mask_ops import _do_paste_mask
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Boxes, Instances

import nucdet.modeling  # noqa: F401  (registers NucleiUNet for build_model)
from nucdet.config import CPU_BF16_FLAGS, read_cpuinfo, resolve_precision
from nucdet.inference.masks import CropMasks, paste_extent, paste_grids, raw_to_prediction
from nucdet.io.checkpoint import CheckedCheckpointer
from nucdet.modeling.precision import fp32_group_norms
from nucdet.structures import ImagePrediction, RawDetections

logger = logging.getLogger(__name__)

__all__ = [
    "PrecisionModel",
    "Predictor",
    "find_weights",
    "mask_score_floor_from_cfg",
    "paste_is_exact",
    "precision_from_cfg",
]


def precision_from_cfg(cfg: CfgNode) -> str:
    """``TEST.PRECISION`` resolved on this machine for ``MODEL.DEVICE`` (``"fp32"`` or
    ``"bf16"``): the CPU's ``/proc/cpuinfo`` flags, or CUDA's bf16 support."""
    device = cfg.MODEL.DEVICE
    cuda_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported(
        including_emulation=False
    )
    return resolve_precision(cfg.TEST.PRECISION, device, read_cpuinfo()[1], cuda_bf16)


@functools.cache
def _log_precision(requested: str, resolved: str, device: str) -> None:
    """Once per process and setting, not once per predictor (an ensemble builds several)."""
    cpu_model, flags = read_cpuinfo()
    units = [f for f in CPU_BF16_FLAGS if f in flags] or ["none"]
    where = device if device.startswith("cuda") else f"{cpu_model or 'cpu'}, bf16 flags {units}"
    logger.info("TEST.PRECISION %s: network in %s (%s)", requested, resolved, where)


def mask_score_floor_from_cfg(cfg: CfgNode) -> float:
    """The score under which ``Predictor.__call__`` skips the mask head.

    ``min(POSTPROCESS.SCORE_THRESH)`` when ``POSTPROCESS.SKIP_MASKS_BELOW_THRESH`` is on
    (post-processing keeps a detection only if ``score >= thresh[class]``, and every class
    threshold is at least the minimum), else ``-inf`` (every detection gets its mask).
    """
    if not cfg.POSTPROCESS.SKIP_MASKS_BELOW_THRESH:
        return float("-inf")
    thresh = np.atleast_1d(np.asarray(cfg.POSTPROCESS.SCORE_THRESH, np.float64))
    if thresh.ndim != 1 or len(thresh) == 0:
        raise ValueError(f"POSTPROCESS.SCORE_THRESH: expected numbers, got {thresh!r}")
    return float(thresh.min())


class Predictor:
    """A model built from ``cfg`` with ``cfg.MODEL.WEIGHTS`` loaded, in eval mode.

    Args:
        cfg: a nucdet config (``add_nucdet_config`` keys present).
        mask_score_floor: detections scoring below it get no mask from ``__call__``;
            default ``mask_score_floor_from_cfg(cfg)``. ``float("-inf")`` computes all.
        model: an already built (and loaded) model to use instead of building one from
            ``cfg`` (``train_net.py --eval-only`` with ``TEST.AUG``).
    """

    # Regions per mask-head call: bounds the head's activations (the 28x28 deconvolution
    # output alone is ~0.8 MB per region at 256 channels) without changing any value.
    mask_batch = 200

    def __init__(
        self,
        cfg: CfgNode,
        mask_score_floor: float | None = None,
        model: torch.nn.Module | None = None,
    ):
        self.cfg = cfg.clone()
        if model is not None:
            self.model = model.eval()
        else:
            self.model = build_model(self.cfg).eval()
            if cfg.MODEL.WEIGHTS:
                # Strict: weights that do not fit the config are an error, never a warning.
                CheckedCheckpointer(self.model, strict=True).load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR, got {self.input_format}")
        self.mask_score_floor = (
            mask_score_floor_from_cfg(cfg) if mask_score_floor is None else mask_score_floor
        )
        self.precision = precision_from_cfg(self.cfg)
        _log_precision(self.cfg.TEST.PRECISION, self.precision, self.cfg.MODEL.DEVICE)
        if self.precision == "bf16":
            # In place, also for a ``model`` given: the layout changes no value, and the
            # GroupNorm layers compute in fp32 (nucdet.modeling.precision: in bf16 they
            # cost ~0.02 MaP-IoU).
            self.model.to(memory_format=torch.channels_last)
            fp32_group_norms(self.model)
        m = self.model
        # The split box stage / mask stage needs detectron2's R-CNN layout; anything else
        # runs whole (all masks computed), which is still exact.
        self._can_split = (
            isinstance(m, GeneralizedRCNN)
            and m.proposal_generator is not None
            and hasattr(m.roi_heads, "_forward_box")
            and hasattr(m.roi_heads, "forward_with_given_boxes")
        )

    def _network(self) -> contextlib.AbstractContextManager:
        """The precision the network runs in (``TEST.PRECISION``); fp32 changes nothing."""
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.cfg.MODEL.DEVICE).type, dtype=torch.bfloat16)

    def _resize(self, scale: float) -> T.Augmentation:
        """The test resize; ``scale`` != 1 multiplies ``INPUT.MIN_SIZE_TEST`` and
        ``INPUT.MAX_SIZE_TEST`` by it (a scale TTA view's image, already ``scale`` times the
        original, then reaches the network ``scale`` times the identity view's size)."""
        if scale == 1.0:
            return self.aug
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"resize scale must be > 0, got {scale}")
        size = int(round(self.cfg.INPUT.MIN_SIZE_TEST * scale))
        if self.cfg.INPUT.MIN_SIZE_TEST > 0 and size < 1:
            raise ValueError(
                f"scale {scale:g} turns INPUT.MIN_SIZE_TEST {self.cfg.INPUT.MIN_SIZE_TEST} "
                "into an empty image"
            )
        return T.ResizeShortestEdge([size, size], int(round(self.cfg.INPUT.MAX_SIZE_TEST * scale)))

    def _model_inputs(self, image_bgr: np.ndarray, scale: float = 1.0) -> list[dict]:
        """``DefaultPredictor``'s pre-processing, line for line (``scale``: ``_resize``)."""
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        h, w = image.shape[:2]
        image = self._resize(scale).get_transform(image).apply_image(image)
        tensor = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
        return [{"image": tensor, "height": h, "width": w}]

    def _instances(
        self, inputs: list[dict], floor: float, keep: dict | None = None
    ) -> tuple[Instances, np.ndarray]:
        """Network-resolution detections and which of them carry a computed mask
        (``keep``: receives the backbone ``features``, for ``raw_with_mask_head``)."""
        with self._network():
            inst, has_mask = self._network_instances(inputs, floor, keep)
        # Network outputs to fp32 (bf16 autocast leaves scores and mask probabilities bf16;
        # detectron2 decodes boxes in fp32 already): pasting and what follows stay fp32.
        inst.scores = inst.scores.float()
        inst.pred_boxes.tensor = inst.pred_boxes.tensor.float()
        if inst.has("pred_masks"):
            inst.pred_masks = inst.pred_masks.float()
        return inst, has_mask

    def _network_instances(
        self, inputs: list[dict], floor: float, keep: dict | None
    ) -> tuple[Instances, np.ndarray]:
        m = self.model
        if not self._can_split:
            if keep is not None and not hasattr(m, "box_grids"):
                raise ValueError(
                    f"{type(m).__name__}: re-running the mask head needs detectron2's R-CNN "
                    "layout (GeneralizedRCNN with StandardROIHeads) or a NucleiUNet"
                )
            if keep is None:
                inst = m.inference(inputs, do_postprocess=False)[0]
            else:  # NucleiUNet: its probability maps stand in for the backbone features
                maps: list = []
                inst = m.inference(inputs, do_postprocess=False, maps_out=maps)[0]
                keep["maps"] = maps[0]
            return inst, np.ones(len(inst), bool)
        # GeneralizedRCNN.inference + StandardROIHeads.forward (eval), with the mask head
        # (forward_with_given_boxes) given only the detections at or above the floor, in
        # chunks of ``mask_batch``.
        images = m.preprocess_image(inputs)
        pixels = images.tensor
        if self.precision == "bf16":
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        features = m.backbone(pixels)
        if keep is not None:
            keep["features"] = features
        proposals, _ = m.proposal_generator(images, features, None)
        inst = self._forward_box(features, proposals)[0]
        # Compared in float64 as post-processing does (float32 scores, float64 thresholds).
        has_mask = inst.scores.float().cpu().numpy().astype(np.float64) >= floor
        if not m.roi_heads.mask_on:
            return inst, has_mask
        idx = torch.from_numpy(np.flatnonzero(has_mask)).to(inst.scores.device)
        chunks = []
        # At least one call, so that an empty selection still gets the head's mask shape.
        for i in range(0, max(len(idx), 1), self.mask_batch):
            part = inst[idx[i : i + self.mask_batch]]
            chunks.append(m.roi_heads.forward_with_given_boxes(features, [part])[0].pred_masks)
        probs = torch.cat(chunks)
        full = probs.new_zeros((len(inst),) + tuple(probs.shape[1:]))
        full[idx] = probs
        inst.pred_masks = full
        return inst, has_mask

    def _forward_box(self, features: dict, proposals: list[Instances]) -> list[Instances]:
        """``roi_heads._forward_box`` (eval); in bf16, with the box predictor in fp32.

        The predictor's two linear layers are a sliver of the compute, but in bf16 its
        softmax rounds every score above 1 - 2**-9 to exactly 1 (ties that scramble the
        ranking AP, fusion and the floor depend on); in fp32 its scores keep their order.
        """
        rh = self.model.roi_heads
        if self.precision != "bf16" or type(rh)._forward_box is not StandardROIHeads._forward_box:
            return rh._forward_box(features, proposals)
        # StandardROIHeads._forward_box, eval branch, line for line.
        x = rh.box_pooler(
            [features[f] for f in rh.box_in_features], [p.proposal_boxes for p in proposals]
        )
        x = rh.box_head(x)
        with torch.autocast(torch.device(self.cfg.MODEL.DEVICE).type, enabled=False):
            predictions = rh.box_predictor(x.float())
            return rh.box_predictor.inference(predictions, proposals)[0]

    @torch.inference_mode()
    def raw(
        self,
        image_bgr: np.ndarray,
        mask_score_floor: float = float("-inf"),
        scale: float = 1.0,
    ) -> RawDetections:
        """Detections of one HxWx3 BGR uint8 image, masks not yet pasted.

        Detections scoring below ``mask_score_floor`` get an all-zero probability grid
        (the mask head does not run on them); by default every mask is computed, as TTA
        and fusion need. ``scale``: the scale of a TTA view (``TTAView.scale``) whose image
        this is; with ``INPUT.MIN_SIZE_TEST`` > 0 the test resize follows it (else the fixed
        resize would undo the view). Boxes are in ``image_bgr``'s frame.
        """
        return self._raw(image_bgr, mask_score_floor, scale)

    @torch.inference_mode()
    def raw_with_mask_head(
        self, image_bgr: np.ndarray, scale: float = 1.0
    ) -> tuple[RawDetections, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
        """``raw`` (every mask computed) plus the model's mask head on this image:
        ``head(boxes, classes)`` gives the (N, M, M) mask probabilities of any xyxy boxes in
        ``image_bgr``'s frame, for classes ``classes`` (mask-head re-run fusion)."""
        if hasattr(self.model, "box_grids"):  # NucleiUNet: its foreground in any box
            return self._raw_with_box_grids(image_bgr, scale)
        if not self.model.roi_heads.mask_on:
            raise ValueError("the model has no mask head to re-run")
        keep: dict = {}
        raw = self._raw(image_bgr, float("-inf"), scale, keep)
        features, (rh, rw) = keep["features"], keep["size"]
        h, w = raw.height, raw.width
        m = self.model

        @torch.inference_mode()
        def head(boxes: np.ndarray, classes: np.ndarray) -> np.ndarray:
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            if len(boxes) == 0:
                return np.zeros((0,) + raw.mask_probs.shape[1:], np.float32)
            net = torch.from_numpy(boxes * np.array([rw / w, rh / h, rw / w, rh / h], np.float32))
            cls = torch.from_numpy(np.asarray(classes, np.int64).reshape(-1))
            out = []
            for i in range(0, len(net), self.mask_batch):
                inst = Instances((rh, rw))
                inst.pred_boxes = Boxes(net[i : i + self.mask_batch].to(self.model.device))
                inst.pred_classes = cls[i : i + self.mask_batch].to(self.model.device)
                with self._network():
                    masks = m.roi_heads.forward_with_given_boxes(features, [inst])[0].pred_masks
                out.append(masks[:, 0].float().cpu().numpy())
            return np.concatenate(out)

        return raw, head

    def _raw_with_box_grids(
        self, image_bgr: np.ndarray, scale: float
    ) -> tuple[RawDetections, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
        """``raw_with_mask_head`` of a NucleiUNet: the "mask head" samples its foreground
        probability map on the grid of any boxes (classes are ignored)."""
        keep: dict = {}
        raw = self._raw(image_bgr, float("-inf"), scale, keep)
        maps, (rh, rw) = keep["maps"], keep["size"]
        h, w = raw.height, raw.width

        def head(boxes: np.ndarray, classes: np.ndarray) -> np.ndarray:
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            net = boxes * np.array([rw / w, rh / h, rw / w, rh / h], np.float32)
            return self.model.box_grids(maps, net)

        return raw, head

    def _raw(
        self, image_bgr: np.ndarray, mask_score_floor: float, scale: float, keep: dict | None = None
    ) -> RawDetections:
        inputs = self._model_inputs(image_bgr, scale)
        h, w = inputs[0]["height"], inputs[0]["width"]
        inst, _ = self._instances(inputs, mask_score_floor, keep)
        if keep is not None:
            keep["size"] = tuple(inst.image_size)
        return self._detections(inst, h, w)

    @torch.inference_mode()
    def unet_maps(self, image_bgr: np.ndarray) -> dict[str, np.ndarray]:
        """A NucleiUNet's probability maps of one BGR image (``NucleiUNet.probabilities``,
        network resolution), for ``raw_from_unet_maps``: decoding settings swept on one
        forward pass per image."""
        if not hasattr(self.model, "decode_maps"):
            raise ValueError(f"{type(self.model).__name__} is not a NucleiUNet: it has no maps")
        keep: dict = {}
        self._raw(image_bgr, float("-inf"), 1.0, keep)
        return keep["maps"]

    def raw_from_unet_maps(
        self, maps: dict[str, np.ndarray], height: int, width: int, decode: dict | None = None
    ) -> RawDetections:
        """``raw`` of the image whose ``unet_maps`` these are (original size ``height`` x
        ``width``), decoded with ``decode`` (``MODEL.UNET.DECODE`` keywords, lower case:
        ``fg_thresh``, ...) instead of the config's; equal to ``raw`` with those settings."""
        return self._detections(self.model.decode_maps(maps, decode), height, width)

    def _detections(self, inst: Instances, h: int, w: int) -> RawDetections:
        """Network-resolution ``inst`` as ``RawDetections`` of the h x w original image."""
        # Same box post-processing as detectron2's detector_postprocess.
        rh, rw = inst.image_size
        boxes = Boxes(inst.pred_boxes.tensor.clone())
        boxes.scale(w / rw, h / rh)
        boxes.clip((h, w))
        keep = boxes.nonempty()
        n = int(keep.sum())
        probs = inst.pred_masks[keep][:, 0] if inst.has("pred_masks") else None
        return RawDetections(
            boxes.tensor[keep].cpu().numpy(),
            inst.scores[keep].cpu().numpy(),
            inst.pred_classes[keep].cpu().numpy(),
            probs.cpu().numpy() if probs is not None else np.zeros((n, 1, 1), np.float32),
            h,
            w,
        )

    def __call__(
        self, image_bgr: np.ndarray, image_id: str = "", mask_thresh: float = 0.5
    ) -> ImagePrediction:
        """Every detection of one BGR image with its mask (``prob >= mask_thresh``) as RLE.

        Boxes, scores and classes are ``DefaultPredictor``'s, in its order; masks too,
        except that detections below ``self.mask_score_floor`` have empty masks.
        """
        if not 0.0 < mask_thresh <= 1.0:
            raise ValueError(f"mask_thresh must be in (0, 1], got {mask_thresh}")
        raw = self.raw(image_bgr, self.mask_score_floor)
        if paste_is_exact():
            return raw_to_prediction(raw, image_id, mask_thresh)
        crops = paste_detectron2(raw.mask_probs, raw.boxes, raw.height, raw.width)
        rles = crops.threshold(mask_thresh).to_rles()
        return ImagePrediction(image_id, raw.height, raw.width, rles, raw.scores, raw.classes)


class PrecisionModel(torch.nn.Module):
    """``model`` called as detectron2's evaluation calls it (``inference_on_dataset``: list
    of mapped inputs in, ``[{"instances": ...}]`` at the input's height/width out), its
    network run by a ``Predictor`` at ``cfg.TEST.PRECISION`` with every mask computed;
    detectron2's ``detector_postprocess`` then scales the boxes and pastes the masks in
    fp32. ``nucdet.engine.trainer.Trainer.test`` uses it for bf16."""

    def __init__(self, cfg: CfgNode, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.predictor = Predictor(cfg, mask_score_floor=float("-inf"), model=model)

    def forward(self, inputs: list[dict]) -> list[dict]:
        out = []
        for d in inputs:
            inst, _ = self.predictor._instances([d], float("-inf"))
            h, w = d.get("height", inst.image_size[0]), d.get("width", inst.image_size[1])
            out.append({"instances": detector_postprocess(inst, h, w)})
        return out


def paste_detectron2(grids: np.ndarray, boxes: np.ndarray, height: int, width: int) -> CropMasks:
    """``masks.paste_grids`` computed with detectron2's ``_do_paste_mask``, box by box.

    The reference (and the fallback where ``paste_is_exact()`` is False): detectron2's
    CPU path, ``skip_empty=True``, one call per box; about 100x slower than the numba one.
    """
    grids = np.ascontiguousarray(grids, np.float32)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    crops = []
    for g, b in zip(grids, boxes):
        crop, _ = _do_paste_mask(
            torch.from_numpy(g)[None, None], torch.from_numpy(b)[None], height, width
        )
        crops.append(crop[0].numpy())
    return CropMasks(paste_extent(boxes, height, width), crops, height, width)


@functools.lru_cache(maxsize=1)
def paste_is_exact() -> bool:
    """Whether ``masks.paste_grids`` equals detectron2's pasting bit for bit here.

    Pastes 400 random grids into random boxes (sub-pixel to several grid cells wide, some
    cut by the image border) both ways and compares the float32 values exactly; cached,
    about 0.1 s once per process.
    """
    rng = np.random.default_rng(20240601)
    h, w, n = 41, 57, 400
    x0 = rng.uniform(-3, w, n)
    y0 = rng.uniform(-3, h, n)
    size = np.exp(rng.uniform(np.log(0.3), np.log(90), (n, 2)))
    boxes = np.stack([x0, y0, x0 + size[:, 0], y0 + size[:, 1]], 1).astype(np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    grids = rng.random((len(boxes), 28, 28)).astype(np.float32)
    ours = paste_grids(grids, boxes, h, w)
    # One batched call over the whole image runs the same grid_sample kernel as the
    # per-box calls of paste_masks_in_image; compare inside each box's paste extent.
    ref, _ = _do_paste_mask(
        torch.from_numpy(grids)[:, None], torch.from_numpy(boxes), h, w, skip_empty=False
    )
    ref = ref.numpy()
    for i, (x0i, y0i, x1i, y1i) in enumerate(ours.boxes.tolist()):
        if not np.array_equal(ours.crops[i], ref[i, y0i:y1i, x0i:x1i]):
            logger.warning(
                "numba mask pasting differs from detectron2's grid_sample on this CPU "
                "(torch capability %s): pasting with detectron2 (slower)",
                torch.backends.cpu.get_cpu_capability(),
            )
            return False
    return True


def find_weights(model_dir: str | os.PathLike) -> Path:
    """The weights to use from a training output directory: best, final, else last."""
    model_dir = Path(model_dir)
    for name in ("model_best.pth", "model_final.pth"):
        if (model_dir / name).is_file():
            return model_dir / name
    last = model_dir / "last_checkpoint"
    if last.is_file():
        name = last.read_text().strip()
        if not (model_dir / name).is_file():
            raise FileNotFoundError(
                f"no weights in {model_dir}: no model_best.pth or model_final.pth, and "
                f"{last} names {name!r}, which does not exist"
            )
        return model_dir / name
    raise FileNotFoundError(
        f"no weights in {model_dir} (model_best.pth, model_final.pth, last_checkpoint)"
    )

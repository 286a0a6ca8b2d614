"""Single-model prediction: a detectron2 model in, ``RawDetections`` / ``ImagePrediction`` out.

``Predictor.raw`` runs the model exactly as detectron2's ``DefaultPredictor`` does
(same resize, same input format) but stops before masks are pasted, returning box-relative
mask probabilities that TTA and fusion work on. ``raw_to_prediction`` pastes each mask
into its own box crop with detectron2's own ``_do_paste_mask`` (so pixels equal
``DefaultPredictor``'s) and encodes it as RLE: no (N, H, W) tensor is ever allocated.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.layers.mask_ops import _do_paste_mask
from detectron2.modeling import build_model
from detectron2.structures import Boxes

from nucdet.io.rle import crop_to_coco_rle
from nucdet.structures import ImagePrediction, RawDetections

logger = logging.getLogger(__name__)


class Predictor:
    """A model built from ``cfg`` with ``cfg.MODEL.WEIGHTS`` loaded, in eval mode."""

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        if cfg.MODEL.WEIGHTS:
            DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR, got {self.input_format}")

    @torch.inference_mode()
    def raw(self, image_bgr: np.ndarray) -> RawDetections:
        """Detections of one HxWx3 BGR uint8 image, masks not yet pasted."""
        if self.input_format == "RGB":
            image_bgr = image_bgr[:, :, ::-1]
        h, w = image_bgr.shape[:2]
        image = self.aug.get_transform(image_bgr).apply_image(image_bgr)
        tensor = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
        inst = self.model.inference(
            [{"image": tensor, "height": h, "width": w}], do_postprocess=False
        )[0]
        # Same box post-processing as detectron2's detector_postprocess.
        rh, rw = inst.image_size
        boxes = Boxes(inst.pred_boxes.tensor.clone())
        boxes.scale(w / rw, h / rh)
        boxes.clip((h, w))
        keep = boxes.nonempty()
        probs = inst.pred_masks[keep][:, 0] if inst.has("pred_masks") else None
        n = int(keep.sum())
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
        return raw_to_prediction(self.raw(image_bgr), image_id, mask_thresh)


def paste_crop(
    probs: np.ndarray, box: np.ndarray, height: int, width: int, mask_thresh: float = 0.5
) -> tuple[np.ndarray, tuple[int, int]]:
    """Paste one MxM probability grid into its box: (bool crop, (y0, x0) of the crop).

    Uses detectron2's ``_do_paste_mask`` with ``skip_empty`` (its own CPU path), so the
    pixels equal ``paste_masks_in_image``'s.
    """
    crop, (ys, xs) = _do_paste_mask(
        torch.from_numpy(np.ascontiguousarray(probs))[None, None],
        torch.from_numpy(np.asarray(box, np.float32))[None],
        height,
        width,
        skip_empty=True,
    )
    return (crop[0] >= mask_thresh).numpy(), (int(ys.start), int(xs.start))


def raw_to_prediction(
    raw: RawDetections, image_id: str = "", mask_thresh: float = 0.5
) -> ImagePrediction:
    """Paste and threshold every mask into an ``ImagePrediction`` (full-size RLEs)."""
    rles = []
    for probs, box in zip(raw.mask_probs, raw.boxes):
        crop, (y0, x0) = paste_crop(probs, box, raw.height, raw.width, mask_thresh)
        rles.append(crop_to_coco_rle(crop, y0, x0, raw.height, raw.width))
    return ImagePrediction(image_id, raw.height, raw.width, rles, raw.scores, raw.classes)


def find_weights(model_dir: str | os.PathLike) -> Path:
    """The weights to use from a training output directory: best, final, else last."""
    model_dir = Path(model_dir)
    for name in ("model_best.pth", "model_final.pth"):
        if (model_dir / name).is_file():
            return model_dir / name
    last = model_dir / "last_checkpoint"
    if last.is_file():
        return model_dir / last.read_text().strip()
    raise FileNotFoundError(
        f"no weights in {model_dir} (model_best.pth, model_final.pth, last_checkpoint)"
    )

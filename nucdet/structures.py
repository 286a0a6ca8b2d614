"""The one prediction record that flows from predictors through post-processing to writers.

Masks are COCO compressed RLEs at full image size: compact (no full-image array per
instance is kept in memory), exact, and directly usable by pycocotools (area, IoU, bbox)
and by every submission writer. Detectron2 types stay at the edges (``nucdet.inference``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils

from nucdet.io.rle import coco_rle_areas


@dataclass
class ImagePrediction:
    """All instances predicted for one image.

    Attributes:
        image_id: the id written to submissions (file stem for folders, ``file_name`` stem
            or dataset ``image_id`` for registered datasets).
        height, width: image size in pixels.
        rles: one COCO RLE dict per instance (``counts`` may be bytes or str).
        scores: (N,) float32 confidences.
        classes: (N,) int64 contiguous category indices (detectron2 convention).
    """

    image_id: str
    height: int
    width: int
    rles: list[dict] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if not (len(self.rles) == len(self.scores) == len(self.classes)):
            raise ValueError(
                f"image {self.image_id}: {len(self.rles)} masks, {len(self.scores)} scores, "
                f"{len(self.classes)} classes"
            )
        for r in self.rles:
            if list(r["size"]) != [self.height, self.width]:
                raise ValueError(
                    f"image {self.image_id}: mask size {r['size']} != image size "
                    f"{[self.height, self.width]}"
                )

    def __len__(self) -> int:
        return len(self.rles)

    def _c_rles(self) -> list[dict]:
        return [
            {"size": r["size"], "counts": r["counts"].encode("ascii")}
            if isinstance(r["counts"], str)
            else r
            for r in self.rles
        ]

    def areas(self) -> np.ndarray:
        """Pixel count of every mask, (N,) int64."""
        if not self.rles:
            return np.zeros(0, np.int64)
        return coco_rle_areas(self.rles)

    def boxes_xywh(self) -> np.ndarray:
        """Tight box of every mask as COCO ``[x, y, w, h]``, (N, 4) float64."""
        if not self.rles:
            return np.zeros((0, 4))
        return mask_utils.toBbox(self._c_rles())

    def masks(self) -> np.ndarray:
        """Dense (N, H, W) bool stack. For tests and small images only."""
        if not self.rles:
            return np.zeros((0, self.height, self.width), bool)
        return np.moveaxis(mask_utils.decode(self._c_rles()), -1, 0).astype(bool)

    def select(self, keep: np.ndarray) -> ImagePrediction:
        """A new record with the instances at integer indices (or boolean mask) ``keep``."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
        return ImagePrediction(
            self.image_id,
            self.height,
            self.width,
            [self.rles[i] for i in idx],
            self.scores[idx],
            self.classes[idx],
        )

    def label_image(self) -> np.ndarray:
        """(H, W) int32 label image, instance i -> i + 1; later instances win on overlap."""
        out = np.zeros((self.height, self.width), np.int32)
        for i, m in enumerate(self.masks()):
            out[m] = i + 1
        return out


@dataclass
class RawDetections:
    """Model output before masks are pasted: what TTA and fusion work on.

    Attributes:
        boxes: (N, 4) float32 XYXY boxes in original-image pixel coordinates.
        scores: (N,) float32.
        classes: (N,) int64 contiguous category indices.
        mask_probs: (N, M, M) float32 mask probabilities on the box-relative MxM grid of
            the mask head (detectron2: M = 28); row 0 is the box's top edge.
        height, width: original image size.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    mask_probs: np.ndarray
    height: int
    width: int

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        self.classes = np.asarray(self.classes, np.int64).reshape(-1)
        self.mask_probs = np.asarray(self.mask_probs, np.float32)
        n = len(self.boxes)
        if not (len(self.scores) == len(self.classes) == len(self.mask_probs) == n):
            raise ValueError(
                f"RawDetections: {n} boxes, {len(self.scores)} scores, {len(self.classes)} "
                f"classes, {len(self.mask_probs)} masks"
            )

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, keep: np.ndarray) -> RawDetections:
        """A new record with the detections at integer indices (or boolean mask) ``keep``."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
        return RawDetections(
            self.boxes[idx],
            self.scores[idx],
            self.classes[idx],
            self.mask_probs[idx],
            self.height,
            self.width,
        )

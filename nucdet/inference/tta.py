"""Test-time augmentation views: transform an image, map its detections back exactly.

A view is built by name from ``VIEW_REGISTRY`` through ``build_view``:
``identity``, ``hflip``, ``vflip``, ``rot90``, ``rot180``, ``rot270``, ``transpose``,
``scale:<factor>`` (e.g. ``scale:1.25``), and compositions joined by ``+`` applied left
to right (``hflip+scale:1.5``).

``view.apply(image)`` gives the image the model sees; ``view.invert(raw)`` takes the
model's ``RawDetections`` in that image's frame and returns them in the original frame:

- flips and quarter turns (the dihedral group of the pixel grid) are exact: box corners
  are mapped with integer image sizes, and the box-relative MxM mask grid is flipped /
  rotated with ``np.flip`` / ``np.rot90`` like the image, so pasting the inverted grid
  into the inverted box gives the same pixels as pasting in the view and transforming
  the mask back (tested pixel-exactly for every view, unlike detectron2's TTA, which
  only undoes horizontal flips of masks);
- ``scale:s`` resizes the image to ``round(h * s), round(w * s)`` (bilinear) and divides
  the boxes by the actual size ratio; the grid is box-relative, so it is unchanged.
  Inverting a scale view needs the original size (``invert(raw, orig_hw)``) because
  rounding makes it ambiguous. A model with a fixed test resize (``INPUT.MIN_SIZE_TEST``
  > 0) would undo the view: ``Predictor.raw(image, scale=view.scale)`` scales that resize
  too, so the network sees ``scale`` times the identity view's input.

``views_from_test_aug(cfg)`` turns detectron2's ``TEST.AUG`` convention (absolute short
edge sizes ``MIN_SIZES``, ``FLIP``) into these views, for ``train_net.py --eval-only``.

Model inference is not done here: ``run_views`` takes any callable image -> RawDetections.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from nucdet.structures import RawDetections

__all__ = [
    "TTAView",
    "VIEW_REGISTRY",
    "build_view",
    "build_views",
    "forward_boxes",
    "invert_grids",
    "run_views",
    "views_from_test_aug",
]


class _Op:
    """One elementary transform of an image of size (h, w)."""

    name = ""

    def size(self, h: int, w: int) -> tuple[int, int]:
        return h, w

    def image(self, img: np.ndarray, nearest: bool) -> np.ndarray:
        raise NotImplementedError

    def inverse_boxes(self, boxes: np.ndarray, h: int, w: int, vh: int, vw: int) -> np.ndarray:
        """Boxes in the transformed frame (vh, vw) -> boxes in the source frame (h, w)."""
        raise NotImplementedError

    def inverse_grids(self, grids: np.ndarray) -> np.ndarray:
        return grids

    def forward_boxes(self, boxes: np.ndarray, h: int, w: int, vh: int, vw: int) -> np.ndarray:
        """Boxes in the source frame (h, w) -> boxes in the transformed frame (vh, vw)."""
        raise NotImplementedError


class _FlipX(_Op):
    name = "hflip"

    def image(self, img, nearest):
        return img[:, ::-1]

    def inverse_boxes(self, boxes, h, w, vh, vw):
        return np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)

    def inverse_grids(self, grids):
        return grids[:, :, ::-1]

    def forward_boxes(self, boxes, h, w, vh, vw):  # a flip is its own inverse
        return self.inverse_boxes(boxes, h, w, vh, vw)


class _FlipY(_Op):
    name = "vflip"

    def image(self, img, nearest):
        return img[::-1]

    def inverse_boxes(self, boxes, h, w, vh, vw):
        return np.stack([boxes[:, 0], h - boxes[:, 3], boxes[:, 2], h - boxes[:, 1]], axis=1)

    def inverse_grids(self, grids):
        return grids[:, ::-1, :]

    def forward_boxes(self, boxes, h, w, vh, vw):
        return self.inverse_boxes(boxes, h, w, vh, vw)


class _Rot90(_Op):
    """``np.rot90(image, k)``: k quarter turns counter-clockwise."""

    def __init__(self, k: int):
        self.k = k % 4
        self.name = f"rot{90 * self.k}"

    def size(self, h, w):
        return (w, h) if self.k % 2 else (h, w)

    def image(self, img, nearest):
        return np.rot90(img, self.k, axes=(0, 1))

    def inverse_boxes(self, boxes, h, w, vh, vw):
        x0, y0, x1, y1 = boxes.T
        if self.k == 1:  # source point (x, y) -> view point (y, w - x)
            return np.stack([w - y1, x0, w - y0, x1], axis=1)
        if self.k == 2:  # (x, y) -> (w - x, h - y)
            return np.stack([w - x1, h - y1, w - x0, h - y0], axis=1)
        if self.k == 3:  # (x, y) -> (h - y, x)
            return np.stack([y0, h - x1, y1, h - x0], axis=1)
        return boxes

    def inverse_grids(self, grids):
        return np.rot90(grids, -self.k, axes=(1, 2))

    def forward_boxes(self, boxes, h, w, vh, vw):
        x0, y0, x1, y1 = boxes.T
        if self.k == 1:  # (x, y) -> (y, w - x)
            return np.stack([y0, w - x1, y1, w - x0], axis=1)
        if self.k == 2:  # (x, y) -> (w - x, h - y)
            return np.stack([w - x1, h - y1, w - x0, h - y0], axis=1)
        if self.k == 3:  # (x, y) -> (h - y, x)
            return np.stack([h - y1, x0, h - y0, x1], axis=1)
        return boxes


class _Transpose(_Op):
    name = "transpose"

    def size(self, h, w):
        return w, h

    def image(self, img, nearest):
        return np.swapaxes(img, 0, 1)

    def inverse_boxes(self, boxes, h, w, vh, vw):
        return boxes[:, [1, 0, 3, 2]]

    def inverse_grids(self, grids):
        return np.swapaxes(grids, 1, 2)

    def forward_boxes(self, boxes, h, w, vh, vw):
        return boxes[:, [1, 0, 3, 2]]


class _Scale(_Op):
    def __init__(self, factor: float):
        if not (np.isfinite(factor) and factor > 0):
            raise ValueError(f"scale factor must be > 0, got {factor}")
        self.factor = float(factor)
        self.name = f"scale:{factor:g}"

    def size(self, h, w):
        vh, vw = int(round(h * self.factor)), int(round(w * self.factor))
        if vh < 1 or vw < 1:
            raise ValueError(f"{self.name} turns a {h}x{w} image into {vh}x{vw}")
        return vh, vw

    def image(self, img, nearest):
        vh, vw = self.size(*img.shape[:2])
        interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        src = img.view(np.uint8) if img.dtype == bool else img
        out = cv2.resize(src, (vw, vh), interpolation=interp)
        if img.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel axis
            out = out[:, :, None]
        return out.view(bool) if img.dtype == bool else out

    def inverse_boxes(self, boxes, h, w, vh, vw):
        # (x' * w) / w' in float64 is monotone and maps 0 -> 0 and w' -> w exactly, so a
        # box inside the view stays inside the image (no clipping needed).
        b = boxes.astype(np.float64)
        return np.stack(
            [b[:, 0] * w / vw, b[:, 1] * h / vh, b[:, 2] * w / vw, b[:, 3] * h / vh], axis=1
        )

    def forward_boxes(self, boxes, h, w, vh, vw):
        b = boxes.astype(np.float64)
        return np.stack(
            [b[:, 0] * vw / w, b[:, 1] * vh / h, b[:, 2] * vw / w, b[:, 3] * vh / h], axis=1
        )


@dataclass(frozen=True)
class TTAView:
    """A named sequence of elementary transforms (applied left to right)."""

    name: str
    ops: tuple

    @property
    def scale(self) -> float:
        """Product of the view's scale factors (1.0 without a scale)."""
        return float(np.prod([op.factor for op in self.ops if isinstance(op, _Scale)]))

    @property
    def needs_size(self) -> bool:
        """True when ``invert`` needs the original size (scale views)."""
        return any(isinstance(op, _Scale) for op in self.ops)

    def view_size(self, height: int, width: int) -> tuple[int, int]:
        """Size of the view image for an original image of ``height x width``."""
        for op in self.ops:
            height, width = op.size(height, width)
        return height, width

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The view of an (H, W) or (H, W, C) image (bilinear for scales), contiguous."""
        for op in self.ops:
            image = op.image(image, nearest=False)
        return np.ascontiguousarray(image)

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        """The view of an (H, W) mask or label image (nearest neighbour for scales)."""
        for op in self.ops:
            mask = op.image(mask, nearest=True)
        return np.ascontiguousarray(mask)

    def invert(self, raw: RawDetections, orig_hw: tuple[int, int] | None = None) -> RawDetections:
        """Detections in this view's frame -> the same detections in the original frame.

        ``raw.height/width`` is the view image's size. ``orig_hw`` (original height,
        width) is required for views with a scale and checked against the view size
        otherwise.
        """
        vh, vw = raw.height, raw.width
        if orig_hw is None:
            if self.needs_size:
                raise ValueError(
                    f"TTA view {self.name!r} needs the original image size: "
                    "invert(raw, (height, width))"
                )
            # Flips and quarter turns: the source size follows from the view size.
            sizes = [(vh, vw)]
            for op in reversed(self.ops):
                sizes.append(op.size(*sizes[-1]))
            orig_hw = sizes[-1]
        h, w = int(orig_hw[0]), int(orig_hw[1])
        if self.view_size(h, w) != (vh, vw):
            raise ValueError(
                f"TTA view {self.name!r}: detections are for a {vh}x{vw} image, but a {h}x{w} "
                f"image gives a {self.view_size(h, w)} view"
            )
        # Frame sizes before each op: sizes[i] is the input size of ops[i].
        sizes = [(h, w)]
        for op in self.ops:
            sizes.append(op.size(*sizes[-1]))
        boxes = raw.boxes.astype(np.float64)
        grids = raw.mask_probs
        for i in reversed(range(len(self.ops))):
            op = self.ops[i]
            (sh, sw), (th, tw) = sizes[i], sizes[i + 1]
            boxes = op.inverse_boxes(boxes, sh, sw, th, tw)
            grids = op.inverse_grids(grids)
        return RawDetections(
            boxes.astype(np.float32),
            raw.scores.copy(),
            raw.classes.copy(),
            grids,  # a flipped / rotated view of the input; consumers copy it once
            h,
            w,
        )


def _frames(view: TTAView, orig_hw: tuple[int, int]) -> list[tuple[int, int]]:
    sizes = [(int(orig_hw[0]), int(orig_hw[1]))]
    for op in view.ops:
        sizes.append(op.size(*sizes[-1]))
    return sizes


def forward_boxes(view: TTAView, boxes: np.ndarray, orig_hw: tuple[int, int]) -> np.ndarray:
    """(N, 4) xyxy boxes of the original image -> the same boxes in ``view``'s image
    (the inverse of ``view.invert``'s box mapping), float64."""
    sizes = _frames(view, orig_hw)
    out = np.asarray(boxes, np.float64).reshape(-1, 4)
    for i, op in enumerate(view.ops):
        (sh, sw), (th, tw) = sizes[i], sizes[i + 1]
        out = op.forward_boxes(out, sh, sw, th, tw)
    return out


def invert_grids(view: TTAView, grids: np.ndarray) -> np.ndarray:
    """Box-relative mask grids computed in ``view``'s frame -> the original orientation
    (what ``view.invert`` does to ``mask_probs``)."""
    for op in reversed(view.ops):
        grids = op.inverse_grids(grids)
    return grids


def _scale_view(arg: str | None) -> tuple:
    if arg is None:
        raise ValueError("scale view needs a factor, e.g. 'scale:1.25'")
    try:
        factor = float(arg)
    except ValueError:
        raise ValueError(f"scale view factor {arg!r} is not a number") from None
    return (_Scale(factor),)


VIEW_REGISTRY: dict[str, Callable[[str | None], tuple]] = {
    "identity": lambda arg: (),
    "hflip": lambda arg: (_FlipX(),),
    "vflip": lambda arg: (_FlipY(),),
    "rot90": lambda arg: (_Rot90(1),),
    "rot180": lambda arg: (_Rot90(2),),
    "rot270": lambda arg: (_Rot90(3),),
    "transpose": lambda arg: (_Transpose(),),
    "scale": _scale_view,
}


def build_view(name: str) -> TTAView:
    """The view called ``name``: a registry key, ``scale:<f>``, or ``a+b+...`` compositions."""
    ops: list = []
    for part in str(name).split("+"):
        part = part.strip()
        key, _, arg = part.partition(":")
        if key not in VIEW_REGISTRY:
            raise KeyError(f"unknown TTA view {part!r} in {name!r}; known: {sorted(VIEW_REGISTRY)}")
        if arg and key != "scale":
            raise ValueError(f"TTA view {key!r} takes no argument, got {part!r}")
        ops.extend(VIEW_REGISTRY[key](arg or None))
    return TTAView(str(name), tuple(ops))


def build_views(names: Sequence[str]) -> list[TTAView]:
    """``build_view`` for every name; duplicate names are an error."""
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate TTA views in {list(names)}")
    return [build_view(n) for n in names]


def run_views(
    predict: Callable[[np.ndarray], RawDetections],
    image: np.ndarray,
    views: Sequence[TTAView],
) -> list[RawDetections]:
    """Run ``predict`` on every view of ``image``; detections come back in its frame."""
    h, w = image.shape[:2]
    return [v.invert(predict(v.apply(image)), (h, w)) for v in views]


def views_from_test_aug(cfg) -> list[str]:
    """View names for detectron2's ``TEST.AUG``: one ``scale:<m / INPUT.MIN_SIZE_TEST>``
    per ``TEST.AUG.MIN_SIZES`` entry m (``identity`` for m = ``MIN_SIZE_TEST``), each also
    horizontally flipped when ``TEST.AUG.FLIP``.

    The long-edge cap of every view is ``INPUT.MAX_SIZE_TEST`` times its scale
    (``Predictor.raw``), not ``TEST.AUG.MAX_SIZE``. Absolute sizes need a fixed test
    resize: with ``INPUT.MIN_SIZE_TEST`` 0 (images at their own size) this is an error.
    """
    base = int(cfg.INPUT.MIN_SIZE_TEST)
    sizes = [int(m) for m in cfg.TEST.AUG.MIN_SIZES]
    if base <= 0:
        raise ValueError(
            f"TEST.AUG.MIN_SIZES {sizes} are short-edge sizes, but INPUT.MIN_SIZE_TEST is "
            f"{base} (no test resize): set INPUT.MIN_SIZE_TEST, or use ensemble_infer.py "
            "--views scale:<factor>"
        )
    if not sizes or min(sizes) <= 0:
        raise ValueError(f"TEST.AUG.MIN_SIZES must be positive sizes, got {sizes}")
    names = []
    for m in sizes:
        name = "identity" if m == base else f"scale:{m / base:g}"
        names.append(name)
        if cfg.TEST.AUG.FLIP:
            names.append("hflip" if m == base else f"hflip+{name}")
    return list(dict.fromkeys(names))

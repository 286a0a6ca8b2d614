"""Draw instance outlines over images: ground truth now, predictions with the same function.

    python -m nucdet.data.show --dataset sartorius_fold0_val --output vis/ --num 8
    python -m nucdet.data.show --dataset train.json --image-root train/ --output vis/

``draw_instances(image_bgr, masks, color)`` is the reusable part: it takes dense masks or
COCO RLEs and draws each instance's one-pixel inner boundary (so touching and overlapping
cells stay distinguishable), in one colour or one colour per instance. The command colours
ground truth by category and writes one PNG per image, named by the image's file stem.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from nucdet.data.imageio import read_image
from nucdet.io.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

# BGR colours, distinguishable on grey and fluorescence images.
PALETTE = [
    (0, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 128, 0),
    (0, 128, 255),
    (255, 255, 0),
    (128, 0, 255),
    (0, 0, 255),
]
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)


def _as_mask(m: Any) -> np.ndarray:
    if isinstance(m, dict):
        rle = m
        if isinstance(m.get("counts"), str):
            rle = {"size": m["size"], "counts": m["counts"].encode("ascii")}
        elif isinstance(m.get("counts"), list):
            rle = mask_utils.frPyObjects(m, *m["size"])
        return mask_utils.decode(rle).astype(bool)
    return np.asarray(m, dtype=bool)


def outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Inner boundary of a binary mask (pixels of the mask with a 4-neighbour outside it)."""
    ys, xs = np.nonzero(mask)
    out = np.zeros(mask.shape, bool)
    if ys.size == 0:
        return out
    # Work on the padded bounding box only: masks are small, images are not.
    y0, y1 = max(ys.min() - 1, 0), min(ys.max() + 2, mask.shape[0])
    x0, x1 = max(xs.min() - 1, 0), min(xs.max() + 2, mask.shape[1])
    crop = np.pad(mask[y0:y1, x0:x1].astype(np.uint8), 1)
    eroded = crop
    for _ in range(max(1, thickness)):
        eroded = cv2.erode(eroded, _CROSS)
    out[y0:y1, x0:x1] = (crop - eroded)[1:-1, 1:-1] > 0
    return out


def draw_instances(
    image_bgr: np.ndarray,
    masks: Any,
    color: Sequence[int] | Sequence[Sequence[int]] = (0, 255, 0),
    thickness: int = 1,
) -> np.ndarray:
    """A copy of ``image_bgr`` (HxW or HxWx3 uint8) with every instance outlined.

    Args:
        masks: (N, H, W) array, a list of HxW masks, or a list of COCO RLE dicts.
        color: one BGR colour for all instances, or one per instance.
        thickness: outline width in pixels (drawn inside the mask).
    """
    img = np.asarray(image_bgr)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    out = np.array(img, dtype=np.uint8, copy=True)
    masks = list(masks) if not isinstance(masks, np.ndarray) else masks
    per_instance = len(color) > 0 and isinstance(color[0], (list, tuple, np.ndarray))
    if per_instance and len(color) != len(masks):
        raise ValueError(f"{len(color)} colours for {len(masks)} instances")
    for i, m in enumerate(masks):
        mask = _as_mask(m)
        if mask.shape != out.shape[:2]:
            raise ValueError(f"instance {i}: mask size {mask.shape} != image {out.shape[:2]}")
        out[outline(mask, thickness)] = color[i] if per_instance else color
    return out


def show_dataset(
    dataset: str,
    output: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    num: int | None = None,
    thickness: int = 1,
    config_file: str | os.PathLike | None = None,
) -> list[Path]:
    """Write ground-truth overlays of the first ``num`` images of ``dataset`` to ``output``."""
    from nucdet.data.stats import load_dataset_dicts

    dicts = load_dataset_dicts(dataset, image_root, config_file)
    if num is not None:
        dicts = dicts[:num]
    output = Path(output)
    written, used = [], set()
    for d in tqdm(dicts, desc="show"):
        image = read_image(d["file_name"])
        annos = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
        h, w = image.shape[:2]
        masks = [_segmentation_mask(a["segmentation"], h, w) for a in annos]
        colors = [PALETTE[a["category_id"] % len(PALETTE)] for a in annos]
        vis = draw_instances(image, masks, colors, thickness) if masks else image
        stem = Path(d["file_name"]).stem
        name = stem if stem not in used else f"{stem}_{d.get('image_id', len(used))}"
        used.add(name)
        ok, png = cv2.imencode(".png", vis)
        if not ok:
            raise OSError(f"cannot encode overlay of {d['file_name']}")
        path = output / f"{name}.png"
        atomic_write_bytes(path, png.tobytes())
        written.append(path)
    logger.info("wrote %d overlays to %s", len(written), output)
    return written


def _segmentation_mask(seg: Any, h: int, w: int) -> np.ndarray:
    if isinstance(seg, list):  # polygons
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w))).astype(bool)
    return _as_mask(seg)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="registered dataset name or COCO JSON")
    ap.add_argument("--image-root", help="image folder of a COCO file (default: its folder)")
    ap.add_argument("--output", required=True, help="folder for the PNG overlays")
    ap.add_argument("--num", type=int, help="only the first N images")
    ap.add_argument("--thickness", type=int, default=1)
    ap.add_argument("--config-file", help="config whose DATASETS.REGISTER to register first")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = show_dataset(
        args.dataset, args.output, args.image_root, args.num, args.thickness, args.config_file
    )
    print(f"{len(paths)} overlays in {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Validate a COCO instance JSON against its image folder before anyone trains on it.

``check_coco(json_file, image_root)`` returns a ``CheckReport``: errors (training or
evaluation would be wrong or crash) and warnings (suspicious but usable). Every message
names the image (``file_name`` and id) and, where relevant, the annotation id.

Errors: missing top-level lists or keys; duplicate image / annotation / category ids;
image file missing, unreadable or of another size than ``height`` x ``width``; an
annotation pointing to an unknown image or category; an RLE whose ``size`` is not the
image size, whose counts are malformed or do not cover exactly ``height * width`` pixels,
or which is empty; polygons with too few or odd coordinates or points outside the image;
a bbox that is malformed, non-positive or not inside the image.
Warnings: images without annotations (also listed in ``empty_images``), a bbox that
disagrees with its mask by more than a pixel, duplicate file names.

RLE counts are parsed in numpy (``nucdet.io.rle.rle_counts``) before pycocotools touches
them: pycocotools' C decoder trusts the counts and writes past its buffer when they sum to
more than h*w.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from nucdet.data.coco import load_coco
from nucdet.data.imageio import image_size
from nucdet.io.rle import rle_counts, segmentation_to_rle

logger = logging.getLogger(__name__)

BBOX_TOLERANCE = 1e-3  # pixels: float bboxes written by other tools may round slightly


@dataclass
class CheckReport:
    """Outcome of ``check_coco``; ``ok`` is True when there is no error."""

    json_file: str
    image_root: str
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    empty_images: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self, max_lines: int = 20) -> str:
        """Human-readable report: counts, then the first ``max_lines`` errors and warnings."""
        lines = [
            f"{self.json_file} (images in {self.image_root}): {self.num_images} images, "
            f"{self.num_annotations} annotations, {self.num_categories} categories, "
            f"{len(self.errors)} errors, {len(self.warnings)} warnings"
        ]
        for kind, msgs in (("ERROR", self.errors), ("WARNING", self.warnings)):
            lines += [f"{kind}: {m}" for m in msgs[:max_lines]]
            if len(msgs) > max_lines:
                lines.append(f"... and {len(msgs) - max_lines} more {kind.lower()}s")
        return "\n".join(lines)

    def raise_if_errors(self) -> None:
        """Raise ``ValueError`` listing the errors, if any."""
        if self.errors:
            raise ValueError(self.summary())


def _check_segmentation(seg: Any, h: int, w: int) -> tuple[list[str], dict | None]:
    """Problems of one segmentation and, when it is usable, its compressed RLE."""
    if isinstance(seg, dict):
        size = seg.get("size")
        if size is None or "counts" not in seg:
            return ["RLE segmentation needs 'size' and 'counts'"], None
        if list(size) != [h, w]:
            return [f"RLE size {list(size)} != image size {[h, w]} (height, width)"], None
        try:
            counts = rle_counts(seg["counts"])
        except (ValueError, TypeError) as e:
            return [f"malformed RLE counts: {e}"], None
        if int(counts.sum()) != h * w:
            return [f"RLE covers {int(counts.sum())} pixels, image has {h}x{w}={h * w}"], None
        if int(counts[1::2].sum()) == 0:
            return ["empty mask (RLE without foreground pixels)"], None
        return [], segmentation_to_rle(seg, h, w)
    if isinstance(seg, list):
        problems = []
        if not seg:
            return ["empty polygon list"], None
        for k, poly in enumerate(seg):
            p = np.asarray(poly, dtype=np.float64).reshape(-1)
            if p.size < 6 or p.size % 2:
                problems.append(f"polygon {k} has {p.size} coordinates (need an even number >= 6)")
                continue
            xs, ys = p[0::2], p[1::2]
            if xs.min() < -BBOX_TOLERANCE or ys.min() < -BBOX_TOLERANCE:
                problems.append(f"polygon {k} has points left of or above the image")
            if xs.max() > w + BBOX_TOLERANCE or ys.max() > h + BBOX_TOLERANCE:
                problems.append(f"polygon {k} has points outside the {h}x{w} image")
        if problems:
            return problems, None
        return [], segmentation_to_rle(seg, h, w)
    return [f"segmentation of unsupported type {type(seg).__name__}"], None


def _check_bbox(bbox: Any, h: int, w: int) -> list[str]:
    try:
        x, y, bw, bh = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return [f"bbox {bbox!r} is not [x, y, w, h]"]
    if not np.all(np.isfinite([x, y, bw, bh])):
        return [f"bbox {bbox} is not finite"]
    if bw <= 0 or bh <= 0:
        return [f"bbox {bbox} has non-positive width or height"]
    t = BBOX_TOLERANCE
    if x < -t or y < -t or x + bw > w + t or y + bh > h + t:
        return [f"bbox {bbox} is not inside the {h}x{w} image (height x width)"]
    return []


def check_coco(
    json_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    read_images: bool = True,
    workers: int = 2,
) -> CheckReport:
    """Validate ``json_file`` against the images under ``image_root`` (default: its folder).

    ``read_images=False`` skips opening the image files (existence is still checked).
    """
    json_file = Path(json_file)
    image_root = Path(image_root) if image_root is not None else json_file.parent
    report = CheckReport(str(json_file), str(image_root))
    coco = load_coco(json_file)
    if not isinstance(coco, dict):
        report.errors.append(f"{json_file}: top level is not an object")
        return report
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            report.errors.append(f"{json_file}: missing or non-list '{key}'")
    if report.errors:
        return report
    images, anns, cats = coco["images"], coco["annotations"], coco["categories"]
    report.num_images, report.num_annotations, report.num_categories = (
        len(images),
        len(anns),
        len(cats),
    )

    cat_ids: set = set()
    for k, c in enumerate(cats):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            report.errors.append(f"category #{k}: needs 'id' and 'name'")
        elif c["id"] in cat_ids:
            report.errors.append(f"category {c['name']!r}: duplicate category id {c['id']}")
        else:
            cat_ids.add(c["id"])
    if not cats:
        report.errors.append(f"{json_file}: no categories")
    if not images:  # an empty conversion must not pass for a dataset
        report.errors.append(f"{json_file}: no images")

    by_id: dict[Any, dict] = {}
    seen_files: dict[str, Any] = {}
    valid_images = []
    for k, img in enumerate(images):
        name = f"image {img.get('file_name', '?')} (id {img.get('id', '?')})"
        missing = [key for key in ("id", "file_name", "height", "width") if key not in img]
        if missing:
            report.errors.append(f"{name} (entry #{k}): missing keys {missing}")
            continue
        if img["id"] in by_id:
            report.errors.append(f"{name}: duplicate image id {img['id']}")
            continue
        by_id[img["id"]] = img
        if not all(isinstance(img[d], int) and img[d] > 0 for d in ("height", "width")):
            report.errors.append(
                f"{name}: height/width {img['height']}x{img['width']} are not positive integers"
            )
            continue
        if img["file_name"] in seen_files:
            report.warnings.append(
                f"{name}: same file_name as image id {seen_files[img['file_name']]}"
            )
        seen_files[img["file_name"]] = img["id"]
        valid_images.append(img)

    def check_file(img: dict) -> str | None:
        path = image_root / img["file_name"]
        if not path.is_file():
            return f"image file not found: {path}"
        if not read_images:
            return None
        try:
            h, w = image_size(path)
        except OSError as e:
            return f"unreadable image file: {e}"
        if (h, w) != (img["height"], img["width"]):
            return (
                f"image file {path} is {h}x{w}, the JSON says {img['height']}x{img['width']} "
                "(height x width)"
            )
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(check_file, valid_images)
        for img, problem in tqdm(
            zip(valid_images, results), total=len(valid_images), desc="check images"
        ):
            if problem:
                report.errors.append(f"image {img['file_name']} (id {img['id']}): {problem}")

    ann_ids: set = set()
    count: dict[Any, int] = {}
    for k, a in enumerate(tqdm(anns, desc="check annotations")):
        img = by_id.get(a.get("image_id")) if isinstance(a, dict) else None
        where = (
            f"image {img['file_name']} (id {img['id']}), annotation {a.get('id', f'#{k}')}"
            if img is not None
            else f"annotation {a.get('id', f'#{k}') if isinstance(a, dict) else f'#{k}'}"
        )
        if not isinstance(a, dict):
            report.errors.append(f"{where}: not an object")
            continue
        if "id" not in a:
            report.errors.append(f"{where}: missing 'id'")
        elif a["id"] in ann_ids:
            report.errors.append(f"{where}: duplicate annotation id {a['id']}")
        else:
            ann_ids.add(a["id"])
        if img is None:
            report.errors.append(f"{where}: unknown image_id {a.get('image_id')!r}")
            continue
        count[img["id"]] = count.get(img["id"], 0) + 1
        if a.get("category_id") not in cat_ids:
            report.errors.append(f"{where}: unknown category_id {a.get('category_id')!r}")
        h, w = img["height"], img["width"]
        rle = None
        if "segmentation" in a:
            problems, rle = _check_segmentation(a["segmentation"], h, w)
            report.errors += [f"{where}: {p}" for p in problems]
        if "bbox" not in a:
            if rle is None:
                report.errors.append(f"{where}: neither a usable segmentation nor a bbox")
            continue
        problems = _check_bbox(a["bbox"], h, w)
        report.errors += [f"{where}: {p}" for p in problems]
        if rle is not None and not problems:
            mask_box = mask_utils.toBbox(rle)
            if np.abs(mask_box - np.asarray(a["bbox"], dtype=np.float64)).max() > 1.0:
                report.warnings.append(
                    f"{where}: bbox {a['bbox']} disagrees with its mask's box {mask_box.tolist()}"
                )

    for img in valid_images:
        if not count.get(img["id"]):
            report.empty_images.append(img["file_name"])
            report.warnings.append(f"image {img['file_name']} (id {img['id']}): no annotations")
    logger.info("%s: %d errors, %d warnings", json_file, len(report.errors), len(report.warnings))
    return report

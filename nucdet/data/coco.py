"""Building and reading COCO instance JSON: the registration format of every nucdet dataset.

Converters (DSB folders, Sartorius CSV, label images) produce per-image lists of binary
masks; ``instances_to_annotations`` turns them into COCO annotations with compressed RLE
segmentation, and ``CocoBuilder`` assembles the file. Masks are kept exactly as given:
overlapping training masks stay overlapping.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from nucdet.io.atomic import atomic_write_json
from nucdet.io.rle import mask_to_coco_rle


def mask_annotation(mask: np.ndarray, category_id: int = 1) -> dict[str, Any] | None:
    """One COCO annotation (without ids) for a binary mask; None for an empty mask."""
    rle = mask_to_coco_rle(mask)
    c_rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    area = int(mask_utils.area(c_rle))
    if area == 0:
        return None
    x, y, w, h = (float(v) for v in mask_utils.toBbox(c_rle))
    return {
        "category_id": int(category_id),
        "segmentation": rle,
        "area": area,
        "bbox": [x, y, w, h],
        "iscrowd": 0,
    }


class CocoBuilder:
    """Accumulates images and annotations; ``write`` saves the JSON atomically."""

    def __init__(self, categories: Sequence[str] | Sequence[dict], info: dict | None = None):
        if categories and isinstance(categories[0], str):
            categories = [{"id": i + 1, "name": n} for i, n in enumerate(categories)]
        self.categories = list(categories)
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.info = info or {}
        self._cat_ids = {c["id"] for c in self.categories}

    def add_image(
        self,
        file_name: str,
        height: int,
        width: int,
        masks: Iterable[np.ndarray] = (),
        category_ids: Iterable[int] | None = None,
        **extra: Any,
    ) -> int:
        """Add an image and its instance masks; returns the new image id (1-based)."""
        image_id = len(self.images) + 1
        self.images.append(
            {"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)}
            | extra
        )
        masks = list(masks)
        cats = [1] * len(masks) if category_ids is None else list(category_ids)
        if len(cats) != len(masks):
            raise ValueError(f"{file_name}: {len(masks)} masks but {len(cats)} category ids")
        for m, c in zip(masks, cats):
            if m.shape != (height, width):
                raise ValueError(f"{file_name}: mask shape {m.shape} != image {(height, width)}")
            if c not in self._cat_ids:
                raise ValueError(f"{file_name}: unknown category id {c}")
            ann = mask_annotation(m, c)
            if ann is not None:
                ann["id"] = len(self.annotations) + 1
                ann["image_id"] = image_id
                self.annotations.append(ann)
        return image_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "info": self.info,
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories,
        }

    def write(self, path: str | os.PathLike) -> Path:
        """Save atomically; zero images is an error (an existing file is left as it is)."""
        if not self.images:
            source = self.info.get("source", "the input")
            raise ValueError(f"{source}: no images found, nothing written to {path}")
        atomic_write_json(path, self.to_dict())
        return Path(path)


def load_coco(path: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO JSON file with a clear error naming it when it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO file not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def image_keys(
    file_names: Sequence[str], ids: Sequence[Any], source: str = ""
) -> tuple[list[str], list[int]]:
    """``(names, coco_ids)`` of the images of one dataset, in order: the one rule every
    evaluator, scorer, writer and the inference job use to key images.

    - name (the id written to Kaggle / DSB submissions and to per-image tables): the file
      stem (Kaggle and DSB ids are the stems), unless two images of the dataset share a
      stem (the per-sample label layout stores every picture as ``image.tif``); then every
      image is named by its dataset ``image_id``;
    - COCO id (results JSON, pycocotools): the dataset's ``image_id`` when every image has
      a distinct integer one (COCO files, nucdet's registered datasets), else 1..N.

    Raises ``ValueError`` naming the files when images cannot be told apart.
    """
    stems = [Path(f).stem for f in file_names]
    names = stems
    if len(set(stems)) < len(stems):
        seen: dict[str, str] = {}
        for f, s in zip(file_names, stems):
            if s in seen:
                break
            seen[s] = f
        if any(i is None for i in ids) or len({str(i) for i in ids}) < len(ids):
            raise ValueError(
                f"{source}: images {seen[s]} and {f} share the file stem {s!r} and the "
                "images have no distinct image_id to tell them apart"
            )
        names = [str(i) for i in ids]
    int_ids = all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids)
    if int_ids and len({int(i) for i in ids}) == len(ids):
        coco_ids = [int(i) for i in ids]
    else:
        coco_ids = list(range(1, len(ids) + 1))
    return names, coco_ids

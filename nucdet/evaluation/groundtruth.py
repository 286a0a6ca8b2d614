"""Ground truth for evaluation, from detectron2 dataset dicts or a COCO instance JSON.

Both sources become one ``GtDataset``: per image the submission id and the COCO id
(``nucdet.data.coco.image_keys``: file stem and dataset ``image_id``), the size, every
annotation as a COCO compressed RLE with its contiguous class, the crowd flags and the
image-level extras (``modality``, ``cell_type``, ...) used for breakdowns; the COCO
category id of every class; plus ``to_coco()`` for pycocotools. Masks stay as annotated:
overlapping training masks stay overlapping. Segmentations become RLEs through
``nucdet.io.rle.segmentation_to_rle`` (polygons rasterised by pycocotools).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from nucdet.data.coco import image_keys
from nucdet.io.rle import coco_rle_areas, segmentation_to_rle
from nucdet.structures import ImagePrediction

# Image-level keys that name a breakdown group, in the order "auto" looks for them.
GROUP_KEYS = ("cell_type", "modality")
_STANDARD_KEYS = {"file_name", "height", "width", "image_id", "id", "annotations"}


@dataclass
class GtImage:
    """The annotated instances of one image."""

    image_id: str
    coco_id: int
    file_name: str
    height: int
    width: int
    rles: list[dict] = field(default_factory=list)
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    extra: dict[str, Any] = field(default_factory=dict)
    # The dataset dict's ``image_id`` as given (what detectron2 evaluators receive).
    source_id: Any = None

    def instances(self) -> ImagePrediction:
        """The non-crowd objects as an ``ImagePrediction`` (score 1), for the metrics."""
        keep = np.flatnonzero(~self.iscrowd)
        return ImagePrediction(
            self.image_id,
            self.height,
            self.width,
            [self.rles[i] for i in keep],
            np.ones(len(keep), np.float32),
            self.classes[keep],
        )


@dataclass
class GtDataset:
    """Ground-truth images (in dataset order) and the class names (contiguous order).

    ``dataset_category_ids[k]`` is the COCO category id of class k (default k + 1).
    """

    images: list[GtImage]
    class_names: list[str]
    dataset_category_ids: list[int] | None = None

    def __post_init__(self) -> None:
        self.by_id: dict[str, GtImage] = {}
        self.by_coco_id: dict[int, GtImage] = {}
        self.by_source_id: dict[Any, GtImage] = {}
        for im in self.images:
            for index, key in ((self.by_id, im.image_id), (self.by_coco_id, im.coco_id)):
                if key in index:
                    raise ValueError(
                        f"two images share the id {key!r}: {index[key].file_name} and "
                        f"{im.file_name}"
                    )
                index[key] = im
            if im.source_id is not None:
                self.by_source_id[im.source_id] = im
        if self.dataset_category_ids is not None:
            ids = [int(c) for c in self.dataset_category_ids]
            if len(ids) != len(self.class_names) or len(set(ids)) != len(ids):
                raise ValueError(
                    f"category ids {ids} do not name the {len(self.class_names)} classes "
                    f"{self.class_names} one to one"
                )
            self.dataset_category_ids = ids

    def __len__(self) -> int:
        return len(self.images)

    @property
    def category_ids(self) -> list[int]:
        """COCO category id of every contiguous class (the dataset's, else k -> k + 1)."""
        if self.dataset_category_ids is not None:
            return list(self.dataset_category_ids)
        return list(range(1, len(self.class_names) + 1))

    def groups(self, key: str | None = "auto") -> tuple[str | None, dict[str, str]]:
        """``(key used, image_id -> group)`` for a breakdown.

        ``key="auto"``: the first of ``GROUP_KEYS`` some image carries; else, with several
        classes, the majority ground-truth class of each image (Sartorius images hold one
        cell type); else no breakdown. ``None``: no breakdown.
        """
        if key is None:
            return None, {}
        if key == "auto":
            for k in GROUP_KEYS:
                if any(k in im.extra for im in self.images):
                    key = k
                    break
            else:
                if len(self.class_names) < 2:
                    return None, {}
                out = {}
                for im in self.images:
                    if len(im.classes):
                        out[im.image_id] = self.class_names[int(np.bincount(im.classes).argmax())]
                return "class", out
        return key, {im.image_id: str(im.extra[key]) for im in self.images if key in im.extra}

    def to_coco(self) -> dict[str, Any]:
        """COCO instance dict (mask areas, tight mask boxes) for pycocotools."""
        images, anns = [], []
        cat_ids = self.category_ids
        for im in self.images:
            images.append(
                {
                    "id": im.coco_id,
                    "file_name": im.file_name,
                    "height": im.height,
                    "width": im.width,
                }
            )
            if not im.rles:
                continue
            c_rles = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in im.rles]
            areas = coco_rle_areas(c_rles)
            boxes = mask_utils.toBbox(c_rles)
            for k, rle in enumerate(im.rles):
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": im.coco_id,
                        "category_id": cat_ids[int(im.classes[k])],
                        "segmentation": rle,
                        "area": int(areas[k]),
                        "bbox": [float(v) for v in boxes[k]],
                        "iscrowd": int(im.iscrowd[k]),
                    }
                )
        cats = [{"id": c, "name": n} for c, n in zip(cat_ids, self.class_names)]
        return {"images": images, "annotations": anns, "categories": cats}

    @classmethod
    def from_dataset_dicts(
        cls,
        dicts: Sequence[Mapping[str, Any]],
        class_names: Sequence[str],
        source: str = "",
        category_ids: Sequence[int] | None = None,
    ) -> GtDataset:
        """From detectron2 dataset dicts (``category_id`` contiguous, ``segmentation`` COCO
        RLE or polygons). ``category_ids[k]``: the COCO id of class k (the inverse of the
        dataset's ``thing_dataset_id_to_contiguous_id``), default k + 1."""
        images = []
        for n, d in enumerate(dicts):
            if "file_name" not in d:
                raise ValueError(f"{source}: image {n}: dataset dict has no 'file_name'")
        names, coco_ids = image_keys(
            [str(d["file_name"]) for d in dicts], [d.get("image_id") for d in dicts], source
        )
        for n, d in enumerate(dicts):
            where = f"{source}: image {d.get('file_name', n)}"
            try:
                h, w = int(d["height"]), int(d["width"])
                file_name = str(d["file_name"])
            except KeyError as e:
                raise ValueError(f"{where}: dataset dict has no {e.args[0]!r}") from None
            rles, classes, crowd = [], [], []
            for k, a in enumerate(d.get("annotations", [])):
                if "segmentation" not in a:
                    raise ValueError(f"{where}, annotation {k}: no 'segmentation'")
                try:
                    rles.append(segmentation_to_rle(a["segmentation"], h, w))
                except ValueError as e:
                    raise ValueError(f"{where}, annotation {k}: {e}") from None
                c = int(a.get("category_id", 0))
                if not 0 <= c < len(class_names):
                    raise ValueError(
                        f"{where}, annotation {k}: category_id {c} outside "
                        f"the {len(class_names)} classes"
                    )
                classes.append(c)
                crowd.append(bool(a.get("iscrowd", 0)))
            extra = {
                k: v
                for k, v in d.items()
                if k not in _STANDARD_KEYS and isinstance(v, (str, int, float))
            }
            images.append(
                GtImage(
                    names[n],
                    coco_ids[n],
                    file_name,
                    h,
                    w,
                    rles,
                    np.asarray(classes, np.int64),
                    np.asarray(crowd, bool),
                    extra,
                    source_id=d.get("image_id"),
                )
            )
        return cls(images, list(class_names), None if category_ids is None else list(category_ids))

    @classmethod
    def from_registered(cls, name: str) -> GtDataset:
        """A dataset registered with detectron2: its dicts, ``thing_classes`` and the COCO
        category ids of ``thing_dataset_id_to_contiguous_id`` (when set)."""
        from detectron2.data import DatasetCatalog, MetadataCatalog

        if name not in DatasetCatalog.list():
            raise KeyError(f"dataset {name!r} is not registered (see nucdet.data.register)")
        meta = MetadataCatalog.get(name)
        id_map = meta.get("thing_dataset_id_to_contiguous_id")
        return cls.from_dataset_dicts(
            DatasetCatalog.get(name),
            list(meta.get("thing_classes", ["object"])),
            source=name,
            category_ids=sorted(id_map, key=id_map.get) if id_map else None,
        )

    @classmethod
    def from_coco(cls, coco: Mapping[str, Any], source: str = "") -> GtDataset:
        """From a COCO instance dict; COCO category ids map to contiguous classes in id
        order. Image ids are kept (results JSON refer to them)."""
        cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
        if not cats:
            raise ValueError(f"{source}: no categories")
        contiguous = {c["id"]: k for k, c in enumerate(cats)}
        by_image: dict[Any, list[dict]] = {}
        for a in coco.get("annotations", []):
            by_image.setdefault(a.get("image_id"), []).append(a)
        images = []
        known = set()
        coco_images = coco.get("images", [])
        names, _ = image_keys(
            [str(im.get("file_name", "")) for im in coco_images],
            [im.get("id") for im in coco_images],
            source,
        )
        for n, im in enumerate(coco_images):
            try:
                cid, file_name = im["id"], str(im["file_name"])
                h, w = int(im["height"]), int(im["width"])
            except KeyError as e:
                raise ValueError(f"{source}: image {im.get('id')} has no {e.args[0]!r}") from None
            known.add(cid)
            rles, classes, crowd = [], [], []
            for a in by_image.get(cid, []):
                where = f"{source}: annotation {a.get('id')} (image {file_name})"
                if a.get("category_id") not in contiguous:
                    raise ValueError(f"{where}: unknown category_id {a.get('category_id')}")
                try:
                    rles.append(segmentation_to_rle(a.get("segmentation"), h, w))
                except ValueError as e:
                    raise ValueError(f"{where}: {e}") from None
                classes.append(contiguous[a["category_id"]])
                crowd.append(bool(a.get("iscrowd", 0)))
            extra = {
                k: v
                for k, v in im.items()
                if k not in _STANDARD_KEYS and isinstance(v, (str, int, float))
            }
            images.append(
                GtImage(
                    names[n],
                    int(cid),
                    file_name,
                    h,
                    w,
                    rles,
                    np.asarray(classes, np.int64),
                    np.asarray(crowd, bool),
                    extra,
                    source_id=cid,
                )
            )
        orphans = set(by_image) - known
        if orphans:
            raise ValueError(
                f"{source}: annotations refer to unknown image ids {sorted(orphans, key=str)[:5]}"
            )
        return cls(images, [c["name"] for c in cats], [int(c["id"]) for c in cats])

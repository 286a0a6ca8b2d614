"""Dataset registration: COCO JSON + image root -> detectron2 catalogs, under a name.

- ``register_coco(name, json_file, image_root, **metadata)`` registers any COCO instance
  file (RLE or polygon masks). Registering the same name again with the same files is a
  no-op; with other files it replaces the entry (with a log line), so notebooks and
  re-imports never fail on "already registered".
- ``register_all(cfg)`` registers the predefined table and ``cfg.DATASETS.REGISTER``. Entry
  points call it inside ``setup()``, never at import time, so multi-process launch works.
  Called again with another ``DATASETS.ROOT``, it re-registers the predefined names from
  the new root (with a log line).
- Predefined datasets are built lazily from their source format on first use and cached
  as COCO JSON under ``$NUCDET_CACHE`` (default ``~/.cache/nucdet``), keyed by a
  fingerprint of the source files: the cache is rebuilt when the source changes.

Predefined names (root = ``cfg.DATASETS.ROOT`` or ``$NUCDET_DATASETS`` or ``./datasets``):

=================================  =============================================
``dsb2018_sample_{train,val,all}``   bundled sample, ``nucdet/data/dsb2018_sample``
``dsb2018_{all}``                    ``<root>/dsb2018/stage1_train``
``dsb2018_fold{k}_{train,val}``      k = 0..4, grouped by image, stratified by modality
                                     (``nucdet.data.folds.stratified_group_kfold``; from
                                     ``<root>/dsb2018/samples.json``, else computed from
                                     the images: ``nucdet.data.modality``, with a warning)
``sartorius_train``                  ``<root>/sartorius/train.csv`` + ``train/``
``sartorius_fold{k}_{train,val}``    grouped by ``sample_id``, stratified by cell type
=================================  =============================================

Sartorius classes are in sorted order: ``astro``, ``cort``, ``shsy5y`` (per-class config
lists such as ``POSTPROCESS.SCORE_THRESH`` follow it).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from nucdet.data.coco import load_coco

logger = logging.getLogger(__name__)

# The bundled sample is package data (installed with the wheel); a real folder on disk as
# long as nucdet is not imported from a zip archive.
SAMPLE_ROOT = Path(str(importlib.resources.files("nucdet.data") / "dsb2018_sample"))
NUM_FOLDS = 5
IMAGE_EXTRA_KEYS = (
    "modality",
    "cell_type",
    "sample_id",
    "plate_time",
    "sample_date",
    "elapsed_timedelta",
)


class UnknownDatasetError(KeyError):
    """A dataset name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence
        return str(self.args[0])


def require_registered(names: Any, where: str = "dataset") -> None:
    """Raise ``UnknownDatasetError`` for the first name of ``names`` that is not registered,
    with the closest registered names (not the whole catalog)."""
    known = DatasetCatalog.list()
    for name in [names] if isinstance(names, str) else list(names):
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        raise UnknownDatasetError(
            f"{where}: dataset {name!r} is not registered"
            + (f"; closest: {', '.join(close)}" if close else "")
            + f" ({len(known)} names are registered: the predefined ones of "
            "nucdet.data.register, and yours with DATASETS.REGISTER "
            "\"[['name', 'file.json', 'image_root/']]\")"
        )


def cache_dir() -> Path:
    return Path(os.environ.get("NUCDET_CACHE", Path.home() / ".cache" / "nucdet"))


def datasets_root(cfg: Any = None) -> Path:
    root = getattr(getattr(cfg, "DATASETS", None), "ROOT", "") if cfg is not None else ""
    return Path(root or os.environ.get("NUCDET_DATASETS", "datasets"))


def coco_to_dicts(coco: dict, image_root: str | os.PathLike, source: str = "") -> list[dict]:
    """COCO instance dict -> detectron2 dataset dicts (contiguous 0-based category ids).

    Image-level extras (modality, cell_type, sample_id, ...) are carried over for
    per-group evaluation.
    """
    image_root = Path(image_root)
    cat_ids = sorted(c["id"] for c in coco["categories"])
    contiguous = {c: i for i, c in enumerate(cat_ids)}
    by_image: dict[int, list[dict]] = {}
    for ann in coco.get("annotations", []):
        if ann["category_id"] not in contiguous:
            raise ValueError(
                f"{source}: annotation {ann.get('id')} has unknown category {ann['category_id']}"
            )
        by_image.setdefault(ann["image_id"], []).append(
            {
                "bbox": ann["bbox"],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": contiguous[ann["category_id"]],
                "segmentation": ann["segmentation"],
                "iscrowd": ann.get("iscrowd", 0),
            }
        )
    dicts = []
    for img in coco["images"]:
        d = {
            "file_name": str(image_root / img["file_name"]),
            "height": img["height"],
            "width": img["width"],
            "image_id": img["id"],
            "annotations": by_image.get(img["id"], []),
        }
        d.update({k: img[k] for k in IMAGE_EXTRA_KEYS if k in img})
        dicts.append(d)
    return dicts


def _thing_classes(coco: dict) -> list[str]:
    return [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]


def _id_map(coco: dict) -> dict[int, int]:
    """detectron2's ``thing_dataset_id_to_contiguous_id``: COCO id -> index in id order
    (the order ``coco_to_dicts`` and ``thing_classes`` use)."""
    return {int(c): k for k, c in enumerate(sorted(c["id"] for c in coco["categories"]))}


def register_coco(
    name: str, json_file: str | os.PathLike, image_root: str | os.PathLike, **metadata: Any
) -> None:
    """Register a COCO instance JSON under ``name`` (idempotent, see module docstring)."""
    json_file, image_root = str(json_file), str(image_root)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if meta.get("json_file") == json_file and meta.get("image_root") == image_root:
            return
        logger.info("re-registering dataset %s with %s", name, json_file)
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    if "thing_classes" not in metadata or "thing_dataset_id_to_contiguous_id" not in metadata:
        coco = load_coco(json_file)
        metadata.setdefault("thing_classes", _thing_classes(coco))
        # detectron2's COCOEvaluator maps predicted classes back to COCO ids with it.
        metadata.setdefault("thing_dataset_id_to_contiguous_id", _id_map(coco))
    DatasetCatalog.register(
        name, lambda: coco_to_dicts(load_coco(json_file), image_root, source=json_file)
    )
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="nuclei", **metadata
    )


def register_lazy(
    name: str,
    build: Callable[[], tuple[Path, Path]],
    thing_classes: list[str],
    source: str = "",
    **metadata: Any,
) -> None:
    """Register ``name`` whose COCO file is produced by ``build()`` on first use.

    ``build`` returns ``(json_file, image_root)``; it is called when the dataset is loaded,
    so registering a predefined dataset whose source is absent costs nothing. ``source``
    (the dataset's folder or file) identifies it: registering the name again with the same
    source is a no-op, with another one (``register_all`` with another ``DATASETS.ROOT``)
    replaces the entry, with a log line.
    """
    if name in DatasetCatalog.list():
        if MetadataCatalog.get(name).get("source", "") == source:
            return
        logger.info("re-registering dataset %s from %s", name, source)
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)

    def load() -> list[dict]:
        json_file, image_root = build()
        return coco_to_dicts(load_coco(json_file), image_root, source=str(json_file))

    DatasetCatalog.register(name, load)
    # The converters number categories 1..K in thing_classes order (CocoBuilder).
    metadata.setdefault(
        "thing_dataset_id_to_contiguous_id", {k + 1: k for k in range(len(thing_classes))}
    )
    MetadataCatalog.get(name).set(
        thing_classes=list(thing_classes), evaluator_type="nuclei", source=source, **metadata
    )


def fingerprint(paths: list[Path]) -> str:
    """Hash of the names, sizes and mtimes of every file below ``paths``."""
    h = hashlib.sha1()
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for p in files:
            st = p.stat()
            h.update(f"{p.relative_to(top.parent)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cached_build(tag: str, sources: list[Path], build: Callable[[Path], Any]) -> Path:
    """Return the cached output of ``build(path)`` for ``sources``; rebuild when they change."""
    path = cache_dir() / f"{tag}-{fingerprint(sources)}.json"
    if not path.is_file():
        logger.info("building %s from %s", path, [str(s) for s in sources])
        build(path)
    return path


def _dsb_builder(root: Path, tag: str, select: Callable[[dict], list[str]] | None):
    from nucdet.data.dsb import dsb_to_coco, list_dsb_ids

    samples_json = root.parent / "samples.json"

    def build() -> tuple[Path, Path]:
        if not root.is_dir():
            raise FileNotFoundError(
                f"dataset {tag}: {root} not found (set DATASETS.ROOT or $NUCDET_DATASETS)"
            )
        meta = json.loads(samples_json.read_text()) if samples_json.is_file() else {}
        ids = list_dsb_ids(root) if select is None else select(meta)
        out = cached_build(
            tag,
            [root, samples_json] if samples_json.is_file() else [root],
            lambda p: dsb_to_coco(root, p, image_ids=ids),
        )
        return out, root

    return build


def register_dsb_folder(
    prefix: str,
    dsb_root: Path,
    split: dict[str, list[str]] | None = None,
    num_folds: int = NUM_FOLDS,
) -> None:
    """Register ``<prefix>_all`` and either the given splits or k grouped folds.

    Folds are stratified by modality: from ``samples.json`` beside ``dsb_root`` when it
    exists, else computed from the images (``nucdet.data.modality``, cached, logged).
    """
    src = str(Path(dsb_root).resolve())
    register_lazy(f"{prefix}_all", _dsb_builder(dsb_root, f"{prefix}_all", None), ["nucleus"], src)
    if split is not None:
        for part, ids in split.items():
            name = f"{prefix}_{part}"
            register_lazy(
                name, _dsb_builder(dsb_root, name, lambda m, ids=ids: ids), ["nucleus"], src
            )
        return

    def fold_ids(meta: dict, k: int, part: str) -> list[str]:
        from nucdet.data.dsb import list_dsb_ids
        from nucdet.data.folds import stratified_group_kfold

        ids = list_dsb_ids(dsb_root)
        if not meta:
            meta = dsb_modalities(dsb_root, prefix)
        strata = [meta.get(i, {}).get("modality", "") for i in ids]
        folds = stratified_group_kfold(ids, strata, num_folds)
        return [i for i, f in zip(ids, folds) if (f == k) == (part == "val")]

    for k in range(num_folds):
        for part in ("train", "val"):
            name = f"{prefix}_fold{k}_{part}"
            register_lazy(
                name,
                _dsb_builder(dsb_root, name, lambda m, k=k, part=part: fold_ids(m, k, part)),
                ["nucleus"],
                src,
            )


def dsb_modalities(dsb_root: Path, tag: str) -> dict[str, dict[str, str]]:
    """``{id: {"modality": m}}`` computed from the images of a DSB folder (no
    ``samples.json``), cached under ``$NUCDET_CACHE`` by the folder's fingerprint."""
    from nucdet.data.dsb import list_dsb_ids
    from nucdet.data.imageio import read_image
    from nucdet.data.modality import image_modality
    from nucdet.io.atomic import atomic_write_json

    def build(path: Path) -> None:
        logger.warning(
            "%s: no samples.json beside %s: stratifying the folds by the modality computed "
            "from each image (nucdet.data.modality)",
            tag,
            dsb_root,
        )
        atomic_write_json(
            path,
            {
                i: {"modality": image_modality(read_image(dsb_root / i / "images" / f"{i}.png"))}
                for i in list_dsb_ids(dsb_root)
            },
        )

    return json.loads(cached_build(f"{tag}_modality", [dsb_root], build).read_text())


SARTORIUS_CLASSES = ["astro", "cort", "shsy5y"]


def _write_fold(full_json: Path, out: Path, k: int, part: str, num_folds: int) -> None:
    from nucdet.data.folds import image_groups_and_strata, stratified_group_kfold, subset_coco
    from nucdet.io.atomic import atomic_write_json

    coco = load_coco(full_json)
    groups, strata = image_groups_and_strata(coco, "sample_id", None, str(full_json))
    folds = stratified_group_kfold(groups, strata, num_folds)
    ids = {im["id"] for im, f in zip(coco["images"], folds) if (f == k) == (part == "val")}
    atomic_write_json(out, subset_coco(coco, ids, {"fold": k, "part": part}))


def register_sartorius(prefix: str, root: Path, num_folds: int = NUM_FOLDS) -> None:
    """Register ``<prefix>_train`` (all of train.csv) and its grouped folds, lazily."""
    csv_file, images = root / "train.csv", root / "train"

    def full() -> Path:
        from nucdet.data.sartorius import sartorius_to_coco

        if not csv_file.is_file():
            raise FileNotFoundError(
                f"dataset {prefix}: {csv_file} not found (set DATASETS.ROOT or $NUCDET_DATASETS)"
            )
        return cached_build(
            f"{prefix}_all",
            [csv_file, images],
            lambda p: sartorius_to_coco(csv_file, p, images, categories=SARTORIUS_CLASSES),
        )

    src = str(Path(root).resolve())
    register_lazy(f"{prefix}_train", lambda: (full(), images), SARTORIUS_CLASSES, src)
    for k in range(num_folds):
        for part in ("train", "val"):

            def build(k: int = k, part: str = part) -> tuple[Path, Path]:
                src = full()
                out = cached_build(
                    f"{prefix}_fold{k}_{part}",
                    [src],
                    lambda p: _write_fold(src, p, k, part, num_folds),
                )
                return out, images

            register_lazy(f"{prefix}_fold{k}_{part}", build, SARTORIUS_CLASSES, src)


def register_all(cfg: Any = None) -> None:
    """Register the predefined datasets and ``cfg.DATASETS.REGISTER`` (idempotent)."""
    if (SAMPLE_ROOT / "split.json").is_file():
        split = json.loads((SAMPLE_ROOT / "split.json").read_text())
        register_dsb_folder("dsb2018_sample", SAMPLE_ROOT / "stage1_train", split=split)
    register_dsb_folder("dsb2018", datasets_root(cfg) / "dsb2018" / "stage1_train")
    register_sartorius("sartorius", datasets_root(cfg) / "sartorius")
    if cfg is not None:
        for entry in cfg.DATASETS.REGISTER:
            if len(entry) != 3:
                raise ValueError(
                    f"DATASETS.REGISTER entries are [name, json_file, image_root], got {entry}"
                )
            register_coco(*entry)

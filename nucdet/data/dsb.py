"""DSB2018 folder layout -> COCO instance JSON.

Input layout (the classic "nucleus" layout): ``<root>/<id>/images/<id>.png`` plus one
binary PNG per instance in ``<root>/<id>/masks/``. Every instance mask becomes one COCO
annotation (compressed RLE), exactly as drawn: small overlaps between masks are kept.
A ``samples.json`` next to ``<root>`` (``{id: {"modality": ...}}``) adds each image's
modality to its COCO image entry, for per-modality breakdowns.

Samples are read and encoded on every core (``nucdet.parallel.map_items``, ``workers``);
the JSON is the same for any number of workers.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from nucdet.data.coco import CocoBuilder, mask_annotation
from nucdet.data.imageio import ImageReadError, image_size
from nucdet.data.labels import add_annotations
from nucdet.parallel import map_items

CATEGORIES = ["nucleus"]
logger = logging.getLogger(__name__)


def list_dsb_ids(root: str | os.PathLike, skip_bad: bool = False) -> list[str]:
    """Sorted sample ids under a DSB root (folders holding ``images/<id>.png``).

    A sample folder without ``images/<id>.png`` (a half-extracted archive) is an error
    naming it, unless ``skip_bad`` (then it is left out, with a warning naming it). No
    sample at all is an error. Hidden folders (``.ipynb_checkpoints``) are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"DSB folder not found: {root}")
    ids, bad = [], []
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        (ids if (p / "images" / f"{p.name}.png").is_file() else bad).append(p.name)
    if bad:
        what = (
            f"{root}: {len(bad)} sample folder(s) without images/<id>.png: "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"
        )
        if not skip_bad:
            raise FileNotFoundError(
                f"{what}; complete or remove them (`python -m nucdet.data.convert dsb "
                "--skip-bad` converts without them)"
            )
        logger.warning("%s: left out (--skip-bad)", what)
    if not ids:
        raise FileNotFoundError(f"{root}: no DSB samples (<id>/images/<id>.png) found")
    return ids


def read_dsb_masks(sample_dir: str | os.PathLike, shape: tuple[int, int]) -> list[np.ndarray]:
    """Read every instance mask of one DSB sample (sorted by file name) as bool arrays."""
    sample_dir = Path(sample_dir)
    masks = []
    for p in sorted((sample_dir / "masks").glob("*.png")):
        m = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise ImageReadError(f"cannot read mask {p}")
        if m.shape != tuple(shape):
            raise ValueError(f"mask {p} has size {m.shape}, image has {tuple(shape)}")
        masks.append(m > 0)
    return masks


def _encode_sample(image_id: str, root: Path) -> tuple[int, int, list[dict]]:
    """(height, width, COCO annotations without ids) of one sample: the per-image work."""
    image_path = root / image_id / "images" / f"{image_id}.png"
    h, w = image_size(image_path)
    anns = [mask_annotation(m) for m in read_dsb_masks(root / image_id, (h, w))]
    return h, w, [a for a in anns if a is not None]


def dsb_to_coco(
    root: str | os.PathLike,
    out_json: str | os.PathLike,
    image_ids: Sequence[str] | None = None,
    samples_json: str | os.PathLike | None = None,
    workers: int | None = None,
    skip_bad: bool = False,
) -> Path:
    """Convert a DSB folder (or the listed ``image_ids`` of it) to a COCO JSON file.

    ``file_name`` entries are relative to ``root`` (``<id>/images/<id>.png``), so the
    registered image root is ``root`` itself. The output is written atomically. Sample
    folders without ``images/`` fail the conversion unless ``skip_bad`` (``list_dsb_ids``).
    ``workers``: processes reading and encoding samples (None = every core, 0 = serial).
    """
    root = Path(root)
    ids = list_dsb_ids(root, skip_bad=skip_bad) if image_ids is None else list(image_ids)
    if not ids:
        raise ValueError(f"{root}: no image ids to convert")
    missing = [i for i in ids if not (root / i / "images" / f"{i}.png").is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: no images/<id>.png for ids {missing[:5]}")
    meta: dict = {}
    sj = Path(samples_json) if samples_json else root.parent / "samples.json"
    if sj.is_file():
        meta = json.loads(sj.read_text())
    builder = CocoBuilder(CATEGORIES, info={"source": str(root), "format": "dsb2018"})
    samples = map_items(partial(_encode_sample, root=root), ids, workers, desc="dsb->coco")
    for image_id, (h, w, anns) in zip(ids, samples):
        extra = {"modality": meta[image_id]["modality"]} if image_id in meta else {}
        key = builder.add_image(f"{image_id}/images/{image_id}.png", h, w, **extra)
        add_annotations(builder, key, anns)
    return builder.write(out_json)

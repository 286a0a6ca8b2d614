"""Submission readers: Kaggle CSV, DSB2018 CSV and COCO results JSON -> ImagePrediction.

- Kaggle Sartorius CSV: ``id,predicted``, one row per object, RLE over ROW-major pixels.
- DSB2018 CSV: ``ImageId,EncodedPixels``, the same with COLUMN-major pixels.
  In both, every image must appear; a row with an empty RLE marks an image without
  objects (and adds none); masks of one image must not overlap (``allow_overlap=True``
  lifts that, e.g. to score raw model outputs).
- COCO results JSON: a list of ``{image_id, category_id, score, segmentation}``;
  ``image_id`` is the GT image id or the image's file stem. An image without entries
  simply has no detections (the format has no empty-image rows).

Readers are told the images to expect (anything with ``image_id`` = file stem, ``height``,
``width`` and, for COCO, ``coco_id`` attributes, e.g. ``GtImage``). Every problem raises
``SubmissionError`` naming the file and the line / result index.

Kaggle RLE rows are converted without a full-image array per row (``rle_decode`` is
dense, O(H*W) per row: about 1 s per 800-object image); the validation rules are those of
``nucdet.io.rle.rle_decode``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nucdet.io.rle import (
    decode_rle_runs,
    rle_to_indices,
    segmentation_to_rle,
    sorted_indices_to_rle,
)
from nucdet.structures import ImagePrediction


class SubmissionError(ValueError):
    """A malformed submission; the message names the file and the row."""


class ImageRef(Protocol):
    image_id: str
    height: int
    width: int


def _overlap_message(idx_lists: list[np.ndarray], lines: list[int], n: int) -> str | None:
    if len(idx_lists) < 2:
        return None
    cov = np.bincount(np.concatenate(idx_lists), minlength=n)
    if cov.max() <= 1:
        return None
    pixel = int(np.flatnonzero(cov > 1)[0])
    owners = []
    for k, idx in enumerate(idx_lists):
        pos = int(np.searchsorted(idx, pixel))
        if pos < len(idx) and idx[pos] == pixel:
            owners.append(lines[k])
    return (
        f"masks of lines {owners[0]} and {owners[1]} overlap "
        f"({int((cov > 1).sum())} shared pixels in the image); the format forbids overlaps"
    )


def read_rle_csv(
    path: str | os.PathLike,
    images: Iterable[ImageRef],
    *,
    order: str,
    id_column: str,
    rle_column: str,
    allow_overlap: bool = False,
    require_all: bool = True,
) -> dict[str, ImagePrediction]:
    """One ``ImagePrediction`` (score 1, class 0) per image from a one-row-per-object CSV."""
    path = Path(path)
    refs = {im.image_id: im for im in images}
    if not path.is_file():
        raise SubmissionError(f"submission file not found: {path}")
    masks: dict[str, list[np.ndarray]] = {}
    lines: dict[str, list[int]] = {}
    # The RLE of a large ragged mask can pass csv's default field limit (131072 chars).
    limit = csv.field_size_limit()
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        try:
            csv.field_size_limit(max(limit, 1 << 30))
            _read_rows(path, reader, refs, order, id_column, rle_column, masks, lines)
        except UnicodeDecodeError as e:
            raise SubmissionError(
                f"{path}: not UTF-8 text (byte {e.object[e.start : e.start + 1]!r} at offset "
                f"{e.start} of a block after line {reader.line_num}); save it as UTF-8 CSV"
            ) from None
        except csv.Error as e:  # e.g. an unterminated quote, a NUL byte before Python 3.11
            raise SubmissionError(f"{path}, line {reader.line_num}: not a CSV line ({e})") from None
        finally:
            csv.field_size_limit(limit)
    return _collect(path, refs, masks, lines, allow_overlap, require_all)


def _read_rows(path, reader, refs, order, id_column, rle_column, masks, lines) -> None:
    """Each row's pixel indices into ``masks[image_id]``, its line into ``lines``."""
    header = reader.fieldnames or []
    if not header:
        raise SubmissionError(f"{path}: empty file (no header {id_column},{rle_column})")
    for col in (id_column, rle_column):
        if col not in header:
            raise SubmissionError(f"{path}: no column {col!r} (header: {header})")
    for row in reader:
        line = reader.line_num
        image_id = (row[id_column] or "").strip()
        if image_id not in refs:
            raise SubmissionError(f"{path}, line {line}: unknown image id {image_id!r}")
        ref = refs[image_id]
        masks.setdefault(image_id, [])
        lines.setdefault(image_id, [])
        text = (row[rle_column] or "").strip()
        if not text:
            continue
        try:
            idx = rle_to_indices(text, (ref.height, ref.width), order)
        except ValueError as e:
            raise SubmissionError(f"{path}, line {line} (image {image_id}): bad RLE: {e}") from None
        masks[image_id].append(idx)
        lines[image_id].append(line)


def _collect(path, refs, masks, lines, allow_overlap, require_all) -> dict[str, ImagePrediction]:
    """Every image present (``require_all``), no overlaps (unless allowed), as predictions."""
    missing = [i for i in refs if i not in masks]
    if require_all and missing:
        raise SubmissionError(
            f"{path}: {len(missing)} image(s) missing from the submission (e.g. {missing[:3]}); "
            "every image needs a row (an empty prediction for an image without objects)"
        )
    out = {}
    for image_id, idx_lists in masks.items():
        ref = refs[image_id]
        if not allow_overlap:
            msg = _overlap_message(idx_lists, lines[image_id], ref.height * ref.width)
            if msg:
                raise SubmissionError(f"{path}: image {image_id}: {msg}")
        rles = [sorted_indices_to_rle(idx, ref.height, ref.width) for idx in idx_lists]
        out[image_id] = ImagePrediction(
            image_id, ref.height, ref.width, rles, np.ones(len(rles)), np.zeros(len(rles))
        )
    return out


def read_kaggle_csv(
    path: str | os.PathLike, images: Iterable[ImageRef], **kwargs: Any
) -> dict[str, ImagePrediction]:
    """Sartorius submission: ``id,predicted``, row-major RLE."""
    return read_rle_csv(path, images, order="C", id_column="id", rle_column="predicted", **kwargs)


def read_dsb_csv(
    path: str | os.PathLike, images: Iterable[ImageRef], **kwargs: Any
) -> dict[str, ImagePrediction]:
    """DSB2018 submission: ``ImageId,EncodedPixels``, column-major RLE."""
    return read_rle_csv(
        path, images, order="F", id_column="ImageId", rle_column="EncodedPixels", **kwargs
    )


def read_coco_results(
    path: str | os.PathLike, images: Iterable[Any], category_ids: Sequence[int]
) -> dict[str, ImagePrediction]:
    """COCO results JSON -> one ``ImagePrediction`` per image (images without results get
    an empty one). ``images`` need ``coco_id`` too; ``category_ids[k]`` is class k."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"submission file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except json.JSONDecodeError as e:
        raise SubmissionError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise SubmissionError(f"{path}: not UTF-8 text (offset {e.start})") from None
    if not isinstance(entries, list):
        raise SubmissionError(f"{path}: a COCO results file is a JSON list of detections")
    refs = list(images)
    by_stem = {im.image_id: im for im in refs}
    by_id = {int(im.coco_id): im for im in refs}
    classes = {int(c): k for k, c in enumerate(category_ids)}
    acc: dict[str, tuple[list, list, list]] = {im.image_id: ([], [], []) for im in refs}
    for k, r in enumerate(entries):
        where = f"{path}, result {k}"
        if not isinstance(r, dict):
            raise SubmissionError(f"{where}: not a JSON object")
        for key in ("image_id", "category_id", "score", "segmentation"):
            if key not in r:
                raise SubmissionError(f"{where}: no {key!r}")
        v = r["image_id"]
        im = None
        if isinstance(v, int) and not isinstance(v, bool):
            im = by_id.get(v)
        elif isinstance(v, str):
            im = by_stem.get(v) or (by_id.get(int(v)) if v.isdigit() else None)
        if im is None:
            raise SubmissionError(f"{where}: unknown image_id {v!r}")
        if r["category_id"] not in classes:
            raise SubmissionError(f"{where}: unknown category_id {r['category_id']!r}")
        try:
            score = float(r["score"])
            if not math.isfinite(score):  # MaP-IoU would drop it, COCO AP keep it
                raise ValueError(f"score {r['score']!r} is not a finite number")
            rle = segmentation_to_rle(r["segmentation"], im.height, im.width)
            decode_rle_runs([rle], im.height, im.width)  # reject corrupt counts here
        except (TypeError, ValueError) as e:
            raise SubmissionError(f"{where} (image {im.image_id}): {e}") from None
        rles, scores, cls = acc[im.image_id]
        rles.append(rle)
        scores.append(score)
        cls.append(classes[r["category_id"]])
    return {
        i: ImagePrediction(i, by_stem[i].height, by_stem[i].width, rles, scores, cls)
        for i, (rles, scores, cls) in acc.items()
    }

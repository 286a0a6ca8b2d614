"""Kaggle Sartorius ``train.csv`` (+ ``train/<id>.png``) <-> COCO instance JSON.

The CSV has one row per cell: ``id`` (the image id), ``annotation`` (Kaggle RLE, 1-indexed
starts, ROW-major pixel order over height x width), ``width``, ``height``, ``cell_type``
and the sample metadata ``plate_time``, ``sample_date``, ``sample_id``,
``elapsed_timedelta``. ``sartorius_to_coco`` keeps every mask as drawn (training masks
overlap and stay overlapping), makes one category per ``cell_type`` (sorted names unless
``categories`` fixes them; the mapping is the ``categories`` list of the output) and copies
the metadata and ``cell_type`` into each COCO image entry, where folds and per-type
evaluation read them. ``file_name`` is ``<id>.png`` relative to the image folder.

Everything is validated before anything is written: a missing or unreadable image, an
RLE that is malformed or runs past the end of its image, and width/height columns that
disagree with the image file each raise an error naming the CSV line and the image file.

``coco_to_sartorius_csv`` writes the reverse (one row per annotation, same columns), for
round trips and for exporting predictions of other formats in the Sartorius layout.
RLE strings are converted straight to COCO RLE through pixel indices, never through a
full-image array per cell (73k cells would take minutes that way). Images are checked
and encoded on every core (``nucdet.parallel.map_items``, ``workers``); the JSON is the
same for any number of workers.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from nucdet.data.coco import CocoBuilder, load_coco
from nucdet.data.imageio import image_size
from nucdet.data.labels import add_annotations, sorted_indices_to_annotation
from nucdet.io.atomic import atomic_open
from nucdet.io.rle import coco_rle_to_mask, rle_encode, rle_to_indices
from nucdet.parallel import map_items

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "annotation", "width", "height", "cell_type")
META_COLUMNS = ("plate_time", "sample_date", "sample_id", "elapsed_timedelta")
CSV_COLUMNS = REQUIRED_COLUMNS + META_COLUMNS
# Image-level keys copied from the first CSV row of each image into its COCO image entry.
IMAGE_KEYS = ("sample_id", "plate_time", "sample_date", "elapsed_timedelta", "cell_type")


class SartoriusFormatError(ValueError):
    """A Sartorius CSV row disagrees with the format or with its image."""


def read_sartorius_csv(csv_file: str | os.PathLike) -> pd.DataFrame:
    """Read the CSV as strings (metadata kept verbatim) and check its columns."""
    csv_file = Path(csv_file)
    if not csv_file.is_file():
        raise FileNotFoundError(f"Sartorius CSV not found: {csv_file}")
    try:
        df = pd.read_csv(csv_file, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise SartoriusFormatError(f"{csv_file}: empty file (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise SartoriusFormatError(f"{csv_file}: not a readable CSV ({e})") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise SartoriusFormatError(f"{csv_file}: missing columns {missing}")
    return df


def _line(df_index: int) -> int:
    """1-based line of a data row in the file (line 1 is the header)."""
    return int(df_index) + 2


@dataclass
class _ImageRows:
    """The CSV rows of one image: what a worker needs to check and encode it."""

    image_id: str
    rows: list[int]  # DataFrame indices (line = index + 2)
    heights: list[str]
    widths: list[str]
    cell_types: list[str]
    annotations: list[str]


def _encode_image(
    item: _ImageRows,
    *,
    csv_file: Path,
    image_dir: Path,
    image_ext: str,
    names: list[str],
    cat_of: dict[str, int],
) -> tuple[int, int, list[dict]]:
    """(height, width, COCO annotations without ids) of one image, its rows validated."""
    image_id = item.image_id
    path = image_dir / f"{image_id}{image_ext}"

    def where(r: int) -> str:
        return f"{csv_file} line {_line(r)} (image {image_id}, {path})"

    try:
        h, w = image_size(path)
    except OSError as e:  # missing or undecodable: name the CSV row that needs it
        raise type(e)(f"{e} (needed by {csv_file} line {_line(item.rows[0])})") from e
    anns = []
    for r, height, width, cell_type, annotation in zip(
        item.rows, item.heights, item.widths, item.cell_types, item.annotations
    ):
        for col, value, expected in (("height", height, h), ("width", width, w)):
            try:
                ok = int(value) == expected
            except ValueError:
                raise SartoriusFormatError(
                    f"{where(r)}: {col} {value!r} is not an integer"
                ) from None
            if not ok:
                raise SartoriusFormatError(
                    f"{where(r)}: {col} {value} disagrees with the image "
                    f"file size {h}x{w} (height x width)"
                )
        if cell_type not in cat_of:
            raise SartoriusFormatError(f"{where(r)}: cell_type {cell_type!r} not in {names}")
        try:
            idx = rle_to_indices(annotation, (h, w), order="C")
        except ValueError as e:
            raise SartoriusFormatError(f"{where(r)}: {e}") from None
        if idx.size:  # an empty annotation marks an image without cells
            anns.append(sorted_indices_to_annotation(idx, h, w, cat_of[cell_type]))
    return h, w, anns


def sartorius_to_coco(
    csv_file: str | os.PathLike,
    out_json: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    image_ids: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    image_ext: str = ".png",
    workers: int | None = None,
) -> Path:
    """Convert a Sartorius CSV to COCO JSON (see module docstring); returns ``out_json``.

    Args:
        csv_file: ``train.csv``.
        out_json: output path, written atomically and only when every row is valid.
        image_dir: folder of ``<id><image_ext>``; default ``<csv folder>/train``.
        image_ids: convert only these image ids (in this order); default all, CSV order.
        categories: category names in id order; default the sorted ``cell_type`` values.
        workers: processes checking and encoding images (None = every core, 0 = serial).
    """
    csv_file = Path(csv_file)
    image_dir = Path(image_dir) if image_dir is not None else csv_file.parent / "train"
    df = read_sartorius_csv(csv_file)
    if df.empty:
        raise SartoriusFormatError(f"{csv_file}: a header but no rows: no images to convert")
    rows_of = {k: v for k, v in df.groupby("id", sort=False).indices.items()}
    # Exact repeats of a row (a CSV concatenated twice, a bad merge) would become duplicate
    # instances: kept once, with a warning and a note in the output's info.
    repeats = df.duplicated(keep="first").to_numpy()
    if repeats.any():
        first_of = df.reset_index().groupby(list(df.columns), sort=False)["index"].transform("min")
        shown = [f"line {_line(r)} = line {_line(first_of.iat[r])}" for r in
                 repeats.nonzero()[0][:5]]  # fmt: skip
        logger.warning(
            "%s: %d exact duplicate row(s) kept once (%s%s)",
            csv_file,
            int(repeats.sum()),
            ", ".join(shown),
            ", ..." if repeats.sum() > 5 else "",
        )
        rows_of = {k: v[~repeats[v]] for k, v in rows_of.items()}
    ids = list(rows_of) if image_ids is None else [str(i) for i in image_ids]
    if len(set(ids)) < len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        logger.warning("image ids given more than once, converted once: %s", twice[:5])
        ids = list(dict.fromkeys(ids))
    unknown = [i for i in ids if i not in rows_of]
    if unknown:
        raise SartoriusFormatError(f"{csv_file}: no rows for image ids {unknown[:5]}")

    used = sorted({df["cell_type"].iat[r] for i in ids for r in rows_of[i]})
    names = list(categories) if categories is not None else used
    cat_of = {n: k + 1 for k, n in enumerate(names)}

    columns = {c: df[c].to_numpy() for c in ("height", "width", "cell_type", "annotation")}
    items = [
        _ImageRows(
            i,
            [int(r) for r in rows_of[i]],
            *(columns[c][rows_of[i]].tolist() for c in columns),
        )
        for i in ids
    ]
    info = {"source": str(csv_file), "format": "sartorius"}
    if repeats.any():
        info["duplicate_rows_dropped"] = int(repeats.sum())
    builder = CocoBuilder(names, info=info)
    encode = partial(
        _encode_image,
        csv_file=csv_file,
        image_dir=image_dir,
        image_ext=image_ext,
        names=names,
        cat_of=cat_of,
    )
    for item, (h, w, anns) in zip(items, map_items(encode, items, workers, "sartorius->coco")):
        first = item.rows[0]
        extra = {k: df[k].iat[first] for k in IMAGE_KEYS if k in df.columns}
        types = set(item.cell_types)
        if len(types) > 1:
            logger.warning("image %s has several cell types %s", item.image_id, sorted(types))
        image_key = builder.add_image(f"{item.image_id}{image_ext}", h, w, **extra)
        add_annotations(builder, image_key, anns)
    logger.info(
        "%s: %d images, %d cells, categories %s",
        csv_file,
        len(builder.images),
        len(builder.annotations),
        cat_of,
    )
    return builder.write(out_json)


def coco_to_sartorius_csv(coco_json: str | os.PathLike, out_csv: str | os.PathLike) -> Path:
    """Write a COCO instance JSON as a Sartorius-style CSV (one row per annotation).

    ``id`` is the stem of ``file_name``, ``cell_type`` the category name, the metadata
    columns come from the image entries (empty when absent). An image without annotations
    gets one row with an empty ``annotation``, so it survives a round trip.
    """
    coco = load_coco(coco_json)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    anns_of: dict[int, list[dict]] = {}
    for a in coco.get("annotations", []):
        anns_of.setdefault(a["image_id"], []).append(a)
    with atomic_open(out_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for img in tqdm(coco["images"], desc="coco->sartorius"):
            h, w = int(img["height"]), int(img["width"])
            meta = [str(img.get(k, "")) for k in META_COLUMNS]
            image_id = Path(img["file_name"]).stem
            anns = anns_of.get(img["id"], [])
            if not anns:
                writer.writerow([image_id, "", w, h, img.get("cell_type", "")] + meta)
            for a in anns:
                mask = coco_rle_to_mask(a["segmentation"])
                if mask.shape != (h, w):
                    raise ValueError(
                        f"{coco_json}: annotation {a.get('id')} of {img['file_name']} has "
                        f"mask size {mask.shape}, image is {(h, w)}"
                    )
                writer.writerow(
                    [image_id, rle_encode(mask, order="C"), w, h, names[a["category_id"]]] + meta
                )
    return Path(out_csv)

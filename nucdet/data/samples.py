"""Sample datasets built on the fly: the Sartorius layout from DSB2018 folders, and tiny
synthetic DSB folders (for tests, benchmarks and demos that must not depend on the Kaggle
downloads).

``make_sartorius_from_dsb`` turns DSB samples (``<id>/images/<id>.png`` + ``<id>/masks/*.png``)
into a Kaggle Sartorius ``train.csv`` + ``train/<id>.png`` (grey), with row-major RLEs and
deterministic metadata: image ``i`` of the sorted ids gets ``cell_types[i % len]``, and
consecutive images of one cell type share a ``sample_id`` in runs of ``images_per_sample``.
``make_synthetic_dsb`` writes a DSB folder of random ellipses for tests that must not
depend on any data outside the repository.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from nucdet.data.dsb import list_dsb_ids
from nucdet.io.rle import rle_encode

COLUMNS = [
    "id",
    "annotation",
    "width",
    "height",
    "cell_type",
    "plate_time",
    "sample_date",
    "sample_id",
    "elapsed_timedelta",
]


def dsb_ids(dsb_dir: str | os.PathLike, size: tuple[int, int] | None = None) -> list[str]:
    """Sorted sample ids of a DSB folder (``list_dsb_ids``, incomplete folders left out),
    optionally only images of ``size`` (h, w)."""
    dsb_dir = Path(dsb_dir)
    ids = list_dsb_ids(dsb_dir, skip_bad=True)
    if size is None:
        return ids
    out = []
    for i in ids:
        img = cv2.imread(str(dsb_dir / i / "images" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        if img is not None and img.shape[:2] == tuple(size):
            out.append(i)
    return out


def make_sartorius_from_dsb(
    dsb_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    image_ids: Sequence[str] | None = None,
    cell_types: Sequence[str] = ("shsy5y", "astro", "cort"),
    images_per_sample: int = 2,
) -> Path:
    """Write ``out_dir/train.csv`` and ``out_dir/train/<id>.png``; return the CSV path.

    Args:
        dsb_dir: a DSB ``stage1_train``-style folder.
        image_ids: the ids to use (default: all, sorted).
        cell_types: assigned round-robin over the sorted ids.
        images_per_sample: consecutive images of one cell type per ``sample_id``.
    """
    dsb_dir, out_dir = Path(dsb_dir), Path(out_dir)
    ids = sorted(image_ids) if image_ids is not None else dsb_ids(dsb_dir)
    if not ids:
        raise FileNotFoundError(f"no DSB images in {dsb_dir}")
    (out_dir / "train").mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    rows = []
    for i, image_id in enumerate(ids):
        src = dsb_dir / image_id / "images" / f"{image_id}.png"
        grey = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            raise OSError(f"cannot read {src}")
        h, w = grey.shape
        cv2.imwrite(str(out_dir / "train" / f"{image_id}.png"), grey)
        cell_type = cell_types[i % len(cell_types)]
        j = seen.get(cell_type, 0)
        seen[cell_type] = j + 1
        sample = j // images_per_sample
        meta = {
            "cell_type": cell_type,
            "plate_time": f"{(7 * i) % 24:02d}h{(13 * i) % 60:02d}m00s",
            "sample_date": f"2019-06-{10 + sample % 18:02d}",
            "sample_id": f"{cell_type}[fixture]_S{sample:02d}",
            "elapsed_timedelta": f"0 days {(7 * i) % 24:02d}:{(13 * i) % 60:02d}:00",
        }
        for mask_path in sorted((dsb_dir / image_id / "masks").glob("*.png")):
            m = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            if m is None or m.shape != (h, w):
                raise OSError(f"bad mask {mask_path}")
            if m.any():
                rows.append(
                    {"id": image_id, "annotation": rle_encode(m > 0, "C"), "width": w, "height": h}
                    | meta
                )
    csv_path = out_dir / "train.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def make_synthetic_dsb(
    out_dir: str | os.PathLike,
    n_images: int = 4,
    shape: tuple[int, int] = (520, 696),
    n_cells: int = 40,
    seed: int = 0,
) -> Path:
    """A DSB-layout folder of bright ellipses on a dark noisy background; returns it.

    Cells do not overlap (each is drawn only where the image is still free). Also writes
    ``samples.json`` next to the folder, as in the real data.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    h, w = shape
    samples = {}
    for k in range(n_images):
        image_id = f"synthetic{k:03d}"
        (out_dir / image_id / "images").mkdir(parents=True, exist_ok=True)
        (out_dir / image_id / "masks").mkdir(exist_ok=True)
        taken = np.zeros(shape, bool)
        img = rng.normal(20, 5, (h, w))
        count = 0
        for c in range(n_cells):
            cy, cx = rng.uniform(10, h - 10), rng.uniform(10, w - 10)
            ay, ax = rng.uniform(4, 14, size=2)
            yy, xx = np.ogrid[:h, :w]
            m = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1
            m &= ~taken
            if m.sum() < 10:
                continue
            taken |= m
            img[m] += rng.uniform(100, 200)
            cv2.imwrite(
                str(out_dir / image_id / "masks" / f"m{c:03d}.png"), m.astype(np.uint8) * 255
            )
            count += 1
        rgba = np.repeat(np.clip(img, 0, 255).astype(np.uint8)[:, :, None], 4, axis=2)
        rgba[:, :, 3] = 255
        cv2.imwrite(str(out_dir / image_id / "images" / f"{image_id}.png"), rgba)
        samples[image_id] = {"height": h, "width": w, "instances": count, "modality": "synthetic"}
    (out_dir.parent / "samples.json").write_text(json.dumps(samples, indent=1))
    return out_dir

"""Per-channel mean/std of a dataset's images, for ``INPUT.NORMALIZATION "dataset"``.

    python -m nucdet.data.stats sartorius_fold0_train --output stats.json
    python -m nucdet.data.stats train.json --image-root train/ --output stats.json

Values are on the 0..255 scale in BGR order, over every pixel of every image, computed
exactly from integer per-channel histograms of the images as the mapper reads them
(``nucdet.data.imageio.read_image``: grey images count three equal channels). The JSON is
what ``nucdet.config.apply_normalization`` reads. Also home of
``load_dataset_dicts``, which resolves "registered name or COCO file" for the data tools.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nucdet.data.imageio import read_image
from nucdet.io.atomic import atomic_write_json

logger = logging.getLogger(__name__)


def load_dataset_dicts(
    dataset: str,
    image_root: str | os.PathLike | None = None,
    config_file: str | os.PathLike | None = None,
) -> list[dict]:
    """Dataset dicts of a registered dataset name or of a COCO JSON file.

    A path to an existing file is read as COCO (image root: ``image_root`` or the file's
    folder). Otherwise ``dataset`` is a name; unknown names trigger the registration of the
    predefined datasets (and of ``DATASETS.REGISTER`` of ``config_file``) first.
    """
    from nucdet.data.coco import load_coco
    from nucdet.data.register import coco_to_dicts

    path = Path(dataset)
    if path.is_file():
        root = Path(image_root) if image_root is not None else path.parent
        return coco_to_dicts(load_coco(path), root, source=str(path))
    if path.suffix == ".json":
        raise FileNotFoundError(f"COCO file not found: {path}")
    from detectron2.data import DatasetCatalog

    if dataset not in DatasetCatalog.list():
        from nucdet.data.register import register_all

        cfg = None
        if config_file is not None:
            from detectron2.config import get_cfg

            from nucdet.config import add_nucdet_config

            cfg = add_nucdet_config(get_cfg())
            cfg.merge_from_file(str(config_file))
        register_all(cfg)
    if dataset not in DatasetCatalog.list():
        raise KeyError(
            f"dataset {dataset!r} is neither a file nor a registered name "
            f"(known: {', '.join(sorted(DatasetCatalog.list())[:20])} ...)"
        )
    return DatasetCatalog.get(dataset)


def _histogram(path: str) -> np.ndarray:
    img = read_image(path)
    return np.stack([np.bincount(img[:, :, c].ravel(), minlength=256) for c in range(3)])


def compute_stats(file_names: Sequence[str], workers: int = 2) -> dict[str, Any]:
    """Mean and std per BGR channel over all pixels of ``file_names`` (exact, 0..255)."""
    if not file_names:
        raise ValueError("no images to compute statistics on")
    hist = np.zeros((3, 256), np.int64)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for h in tqdm(pool.map(_histogram, file_names), total=len(file_names), desc="stats"):
            hist += h
    values = np.arange(256, dtype=np.float64)
    n = hist.sum(axis=1).astype(np.float64)
    mean = (hist * values).sum(axis=1) / n
    var = (hist * (values - mean[:, None]) ** 2).sum(axis=1) / n
    return {
        "mean": mean.tolist(),
        "std": np.sqrt(var).tolist(),
        "format": "BGR",
        "num_images": len(file_names),
        "num_pixels": int(n[0]),
    }


def dataset_stats(
    dataset: str,
    output: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    max_images: int | None = None,
    config_file: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Compute the stats of ``dataset`` (name or COCO file) and write them to ``output``."""
    dicts = load_dataset_dicts(dataset, image_root, config_file)
    files = sorted({d["file_name"] for d in dicts})
    if max_images is not None:
        files = files[:max_images]
    stats = compute_stats(files) | {"dataset": str(dataset)}
    atomic_write_json(output, stats, indent=1)
    logger.info("%s: mean %s std %s -> %s", dataset, stats["mean"], stats["std"], output)
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", help="registered dataset name or COCO JSON file")
    ap.add_argument("--image-root", help="image folder of a COCO file (default: its folder)")
    ap.add_argument("--output", required=True, help="stats JSON to write")
    ap.add_argument("--max-images", type=int, help="use only the first N images (sorted)")
    ap.add_argument("--config-file", help="config whose DATASETS.REGISTER to register first")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stats = dataset_stats(
        args.dataset, args.output, args.image_root, args.max_images, args.config_file
    )
    print(f"mean (BGR) {[round(v, 3) for v in stats['mean']]}")
    print(f"std  (BGR) {[round(v, 3) for v in stats['std']]}")
    print(f"{stats['num_images']} images -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

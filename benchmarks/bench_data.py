"""Data benchmarks: converters on all of DSB2018, and the training mapper, against baselines.

    .venv/bin/python benchmarks/bench_data.py --dsb ../shared/data/dsb2018/stage1_train \
        --work /tmp/nucdet-bench-data

Conversions (whole dataset, one run each, wall clock on this machine):
- ``dsb_to_coco`` (the lead's DSB converter) and ``check_coco`` on its output;
- ``sartorius_to_coco`` on a Sartorius-format CSV built from every DSB image, against the
  dense baseline (``rle_decode`` + ``CocoBuilder.add_image`` per cell) on the same rows;
- ``labels_to_coco`` on label images built from every DSB image, against the dense
  baseline (``label == k`` + ``mask_annotation`` per instance).
Dense baselines run on a subset (``--baseline-images``) and are scaled per image.

Mapper: ``NucleiDatasetMapper`` (256 crop, flips, rot90) against detectron2's
``DatasetMapper`` with the same crop and flips, on the 520x696 images, ms per image.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


def dense_sartorius(csv_file: Path, image_dir: Path, ids: list[str], out: Path) -> None:
    """Baseline: decode every RLE to a full image, then encode it (the obvious way)."""
    import pandas as pd

    from nucdet.data.coco import CocoBuilder
    from nucdet.data.imageio import image_size
    from nucdet.io.rle import rle_decode

    df = pd.read_csv(csv_file, dtype=str, keep_default_na=False)
    names = sorted(df["cell_type"].unique())
    b = CocoBuilder(names)
    for image_id in ids:
        rows = df[df["id"] == image_id]
        h, w = image_size(image_dir / f"{image_id}.png")
        masks = [rle_decode(r, (h, w), "C") for r in rows["annotation"]]
        cats = [names.index(c) + 1 for c in rows["cell_type"]]
        b.add_image(f"{image_id}.png", h, w, masks, cats)
    b.write(out)


def dense_labels(root: Path, stems: list[str], out: Path) -> None:
    from nucdet.data.coco import CocoBuilder
    from nucdet.data.imageio import image_size, read_raw

    b = CocoBuilder(["nucleus"])
    for stem in stems:
        h, w = image_size(root / "images" / f"{stem}.png")
        lab = read_raw(root / "labels" / f"{stem}.tif")
        masks = [lab == v for v in np.unique(lab) if v]
        b.add_image(f"images/{stem}.png", h, w, masks)
    b.write(out)


def build_label_folder(dsb: Path, root: Path, ids: list[str]) -> None:
    import tifffile

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    for i in ids:
        img = cv2.imread(str(dsb / i / "images" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(root / "images" / f"{i}.png"), img)
        lab = np.zeros(img.shape[:2], np.uint16)
        for k, p in enumerate(sorted((dsb / i / "masks").glob("*.png"))):
            lab[cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0] = 3 * k + 5  # non-consecutive
        tifffile.imwrite(root / "labels" / f"{i}.tif", lab)


def bench_mapper(csv_json: Path, image_root: Path, ids: list[str], n: int) -> dict:
    from detectron2.config import get_cfg
    from detectron2.data import DatasetMapper

    from nucdet.config import add_nucdet_config
    from nucdet.data.coco import load_coco
    from nucdet.data.mapper import NucleiDatasetMapper
    from nucdet.data.register import coco_to_dicts

    cfg = add_nucdet_config(get_cfg())
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.MIN_SIZE_TRAIN = (0,)
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [256, 256]
    coco = load_coco(csv_json)
    keep = {f"{i}.png" for i in ids}
    dicts = [d for d in coco_to_dicts(coco, image_root) if Path(d["file_name"]).name in keep]
    ours = NucleiDatasetMapper(cfg, True)
    from detectron2.data import transforms as T

    base = DatasetMapper(
        is_train=True,
        augmentations=[
            T.RandomCrop("absolute", (256, 256)),
            T.RandomFlip(0.5, horizontal=True, vertical=False),
            T.RandomFlip(0.5, horizontal=False, vertical=True),
        ],
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format="bitmask",
        recompute_boxes=True,
    )
    res = {}
    for name, mapper in (("nucdet", ours), ("detectron2", base)):
        np.random.seed(0)
        t = time.perf_counter()
        for k in range(n):
            mapper(dicts[k % len(dicts)])
        res[name] = (time.perf_counter() - t) / n * 1000
    res["cells_per_image"] = float(np.mean([len(d["annotations"]) for d in dicts]))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsb", default=str(REPO.parent / "shared/data/dsb2018/stage1_train"))
    ap.add_argument("--work", default="/tmp/nucdet-bench-data")
    ap.add_argument("--baseline-images", type=int, default=60)
    ap.add_argument("--mapper-iters", type=int, default=40)
    ap.add_argument("--mapper-only", action="store_true", help="reuse --work conversions")
    args = ap.parse_args()
    from nucdet.data.check import check_coco
    from nucdet.data.dsb import dsb_to_coco
    from nucdet.data.labels import labels_to_coco
    from nucdet.data.samples import dsb_ids, make_sartorius_from_dsb
    from nucdet.data.sartorius import sartorius_to_coco

    dsb, work = Path(args.dsb), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ids = dsb_ids(dsb)
    sub = ids[:: max(1, len(ids) // args.baseline_images)][: args.baseline_images]
    r: dict = {"images": len(ids)}
    if args.mapper_only:
        big = dsb_ids(dsb, (520, 696))
        r["mapper_ms"] = bench_mapper(
            work / "sart.json", work / "sartorius" / "train", big, args.mapper_iters
        )
        print(json.dumps(r, indent=1))
        return

    coco, r["dsb_to_coco_s"] = _timed(dsb_to_coco, dsb, work / "dsb.json")
    rep, r["check_coco_s"] = _timed(check_coco, work / "dsb.json", dsb)
    r["instances"] = rep.num_annotations
    r["check_errors"] = len(rep.errors)

    csv_file = work / "sartorius" / "train.csv"
    if not csv_file.is_file():
        make_sartorius_from_dsb(dsb, work / "sartorius", ids)
    _, r["sartorius_to_coco_s"] = _timed(sartorius_to_coco, csv_file, work / "sart.json")
    _, t_dense = _timed(
        dense_sartorius, csv_file, work / "sartorius" / "train", sub, work / "sart_dense.json"
    )
    r["sartorius_dense_s_scaled"] = t_dense * len(ids) / len(sub)

    lab_root = work / "labels"
    if not (lab_root / "labels").is_dir():
        build_label_folder(dsb, lab_root, ids)
    _, r["labels_to_coco_s"] = _timed(labels_to_coco, lab_root, work / "lab.json")
    _, t_dense = _timed(dense_labels, lab_root, sub, work / "lab_dense.json")
    r["labels_dense_s_scaled"] = t_dense * len(ids) / len(sub)

    big = dsb_ids(dsb, (520, 696))
    r["mapper_ms"] = bench_mapper(
        work / "sart.json", work / "sartorius" / "train", big, args.mapper_iters
    )
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()

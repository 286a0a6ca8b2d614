"""Rebuild nucdet/data/dsb2018_sample (the bundled sample, shipped in the nucdet package)
from the full DSB2018 set (../shared/data/dsb2018).

The sample is a small CC0 subset chosen deterministically: fluorescence 256x256 images,
a few stained (H&E-like) 256x320 tiles, 520x696 fluorescence frames (close to the
Sartorius 520x704 frame), 360x360 fluorescence and one brightfield image. The split into
train/val is written to ``split.json`` next to the images.

    python data/make_sample.py --source ../shared/data/dsb2018 \
        --output nucdet/data/dsb2018_sample
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

# (modality, height, width) -> (number of train images, number of val images)
PLAN = {
    ("fluorescence", 256, 256): (16, 4),
    ("stained", 256, 320): (5, 1),
    ("fluorescence", 520, 696): (3, 1),
    ("fluorescence", 360, 360): (2, 1),
    ("brightfield", 1024, 1024): (0, 1),
}
MAX_INSTANCES = 120  # keeps the sample small and the demo fast


def choose(samples: dict, seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    split: dict[str, list[str]] = {"train": [], "val": []}
    for key, (n_train, n_val) in PLAN.items():
        ids = sorted(
            i
            for i, s in samples.items()
            if (s["modality"], s["height"], s["width"]) == key
            and 3 <= s["instances"] <= MAX_INSTANCES
        )
        picked = rng.sample(ids, n_train + n_val)
        split["train"] += picked[:n_train]
        split["val"] += picked[n_train:]
    return split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="../shared/data/dsb2018")
    ap.add_argument("--output", default="nucdet/data/dsb2018_sample")
    args = ap.parse_args()
    src, out = Path(args.source), Path(args.output)
    samples = json.loads((src / "samples.json").read_text())
    split = choose(samples)
    (out / "stage1_train").mkdir(parents=True, exist_ok=True)
    meta = {}
    for image_id in split["train"] + split["val"]:
        shutil.copytree(
            src / "stage1_train" / image_id, out / "stage1_train" / image_id, dirs_exist_ok=True
        )
        meta[image_id] = samples[image_id]
    (out / "split.json").write_text(json.dumps(split, indent=1) + "\n")
    (out / "samples.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(meta)} images to {out}")


if __name__ == "__main__":
    main()

"""Helper for test_kill.py (not a test module): the real inference job
(``nucdet.inference.pipeline.run_inference``: resume file, atomic submission, overlays,
metrics) with a cheap deterministic stand-in for the model, so that a process can be
started and killed many times in a few seconds (no torch import).

    python pipeline_child.py IMAGES OUTPUT VARIANT [--force]

The stand-in predicts, per image, the 8x8 blocks whose mean is above the image mean
(VARIANT shifts that threshold, so two variants are two different runs), and sleeps
30 ms per image so that kills land inside the loop too.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nucdet.inference.pipeline import folder_inputs, run_inference  # noqa: E402
from nucdet.io.rle import mask_to_coco_rle  # noqa: E402
from nucdet.structures import ImagePrediction  # noqa: E402


def block_predictor(variant: int):
    def predict(image: np.ndarray, item) -> ImagePrediction:
        time.sleep(0.03)
        grey = image.mean(axis=2)
        h, w = grey.shape
        rles, scores = [], []
        for y in range(0, h - 7, 8):
            for x in range(0, w - 7, 8):
                block = grey[y : y + 8, x : x + 8].mean()
                if block > grey.mean() + 5 * variant:
                    mask = np.zeros((h, w), bool)
                    mask[y : y + 8, x : x + 8] = True
                    rles.append(mask_to_coco_rle(mask))
                    scores.append(round(float(block) / 255, 4))
        return ImagePrediction(item.image_id, h, w, rles, scores, np.zeros(len(rles)))

    return predict


if __name__ == "__main__":
    images, output, variant = sys.argv[1], sys.argv[2], int(sys.argv[3])
    run_inference(
        folder_inputs(images),
        block_predictor(variant),
        output,
        num_overlays=2,
        run_key={"variant": variant},
        force="--force" in sys.argv,
    )

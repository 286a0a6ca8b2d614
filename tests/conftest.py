"""Shared pytest set-up: tests/ importable (``single_thread``, ``inference_synth``), a
private dataset cache, and fixtures for the bundled sample data and a tiny CPU config."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(REPO))  # entry points (infer.py, ensemble_infer.py) are importable
# the benchmark scripts are scripts, not a package: importable by module name (and their
# sibling imports, e.g. ``from _common import ...``), as python does for the script it runs
sys.path.append(str(REPO / "benchmarks"))
# Keep converted COCO caches out of the user's ~/.cache during tests.
os.environ.setdefault("NUCDET_CACHE", tempfile.mkdtemp(prefix="nucdet-test-cache-"))
os.environ.setdefault("OMP_NUM_THREADS", "2")

SAMPLE_ROOT = REPO / "nucdet" / "data" / "dsb2018_sample"  # package data
TINY_CONFIG = REPO / "configs" / "cpu" / "mask_rcnn_R_18_FPN_lite_tiny.yaml"
SHARED_DSB = REPO.parent / "shared" / "data" / "dsb2018"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_root() -> Path:
    return SAMPLE_ROOT


@pytest.fixture(scope="session")
def registered():
    """Register the predefined datasets once (idempotent)."""
    from nucdet.data.register import register_all

    register_all()
    return True


# tiny_cfg's test-sized overrides (cheap: ~1 s per iteration), as KEY VALUE options
TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "DATALOADER.NUM_WORKERS", "0",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "500",
]  # fmt: skip
# the same for train_net.py command lines, with a quarter of the tiny config's pixels
TINY_CLI_OPTS = [*TINY_OPTS, "INPUT.CROP.SIZE", "[128, 128]"]


def tiny_cfg(*opts: str):
    """The tiny CPU config with test-sized overrides (cheap: ~1 s per iteration)."""
    from nucdet.config import build_cfg

    return build_cfg(TINY_CONFIG, [*TINY_OPTS, *opts])


def blob_image(shape: tuple[int, int]) -> np.ndarray:
    """Random Gaussian blobs on noise, uint8 BGR, the same for the same shape."""
    h, w = shape
    rng = np.random.default_rng(h * w)
    yy, xx = np.mgrid[:h, :w]
    img = rng.normal(40, 15, (h, w))
    for _ in range(25):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 12)
        img += 150 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.stack([img, img * 0.8, img * 1.1], -1).clip(0, 255).astype(np.uint8)


def encode_masks(masks: np.ndarray, as_str: bool = True) -> list[dict]:
    """pycocotools' own encoding of every (H, W) mask, ``counts`` as str or bytes: the
    reference the RLE codec and matching tests compare against."""
    from pycocotools import mask as mask_utils

    out = []
    for m in masks:
        r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        if as_str:
            r["counts"] = r["counts"].decode("ascii")
        out.append(r)
    return out

"""The pixel rule for modality against the community labels (``samples.json``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SAMPLE_ROOT, SHARED_DSB

from nucdet.data.imageio import read_image
from nucdet.data.modality import image_modality


def _agreement(root):
    meta = json.loads((root / "samples.json").read_text())
    wrong, n = [], 0
    for image_id, m in meta.items():
        path = root / "stage1_train" / image_id / "images" / f"{image_id}.png"
        if not path.is_file():
            continue
        n += 1
        got = image_modality(read_image(path))
        if got != m["modality"]:
            wrong.append((image_id, m["modality"], got))
    return n, wrong


def test_rule_matches_the_labels_of_the_bundled_sample():
    n, wrong = _agreement(SAMPLE_ROOT)
    assert n == 34 and wrong == []


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DSB / "samples.json").is_file(), reason="no local DSB2018")
def test_rule_matches_the_labels_of_dsb2018_stage1():
    n, wrong = _agreement(SHARED_DSB)
    assert n > 500 and wrong == []


def test_synthetic_images():
    dark = np.full((20, 20, 3), 5, np.uint8)
    dark[5:10, 5:10] = 200  # a bright nucleus on black
    assert image_modality(dark) == "fluorescence"
    assert image_modality(dark[:, :, 0]) == "fluorescence"  # grey (H, W)
    assert image_modality(255 - dark) == "brightfield"
    pink = np.zeros((20, 20, 3), np.uint8)
    pink[:] = (200, 150, 230)  # BGR: H&E-like pink
    assert image_modality(pink) == "stained"
    with pytest.raises(ValueError, match="expected"):
        image_modality(np.zeros(5))

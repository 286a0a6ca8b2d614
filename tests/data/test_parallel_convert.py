"""The DSB, Sartorius and label-image converters write the same JSON bytes with 0 (serial)
and 2 worker processes, on small synthetic data; errors name the same first bad row."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from nucdet.data.dsb import dsb_to_coco
from nucdet.data.labels import labels_to_coco
from nucdet.data.samples import make_sartorius_from_dsb
from nucdet.data.sartorius import SartoriusFormatError, sartorius_to_coco
from nucdet.parallel import resolve_workers

N, H, W = 10, 24, 32  # 10 images: enough for 2 workers (resolve_workers)


def _discs(rng: np.random.Generator) -> list[np.ndarray]:
    yy, xx = np.mgrid[:H, :W]
    masks = []
    for _ in range(int(rng.integers(1, 4))):
        cy, cx, r = rng.integers(4, H - 4), rng.integers(4, W - 4), rng.integers(2, 5)
        masks.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
    return masks


@pytest.fixture(scope="module")
def dsb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dsb") / "stage1_train"
    rng = np.random.default_rng(0)
    for i in range(N):
        sample = root / f"s{i:02d}"
        (sample / "images").mkdir(parents=True)
        (sample / "masks").mkdir()
        masks = _discs(rng)
        image = (rng.integers(0, 60, (H, W)) + 150 * np.any(masks, axis=0)).astype(np.uint8)
        cv2.imwrite(str(sample / "images" / f"{sample.name}.png"), image)
        for k, m in enumerate(masks):
            cv2.imwrite(str(sample / "masks" / f"m{k}.png"), m.astype(np.uint8) * 255)
    return root


def _same_bytes(convert, tmp_path) -> bytes:
    assert resolve_workers(2, N) == 2  # the parallel run really runs in 2 processes
    serial = convert(tmp_path / "serial.json", 0).read_bytes()
    assert convert(tmp_path / "parallel.json", 2).read_bytes() == serial
    return serial


def test_dsb(dsb_root, tmp_path):
    out = _same_bytes(lambda p, w: dsb_to_coco(dsb_root, p, workers=w), tmp_path)
    assert out.count(b'"image_id"') > N  # every image has annotations


def test_sartorius(dsb_root, tmp_path):
    csv = make_sartorius_from_dsb(dsb_root, tmp_path / "sartorius")
    _same_bytes(lambda p, w: sartorius_to_coco(csv, p, workers=w), tmp_path)
    # Two bad rows in different images: both runs name the first one (CSV line 4 = row 2).
    lines = csv.read_text().splitlines()
    for k in (3, len(lines) - 1):
        cols = lines[k].split(",")
        cols[2] = "99"  # width
        lines[k] = ",".join(cols)
    csv.write_text("\n".join(lines) + "\n")
    for w in (0, 2):
        with pytest.raises(SartoriusFormatError, match=r"line 4 .*width 99 disagrees"):
            sartorius_to_coco(csv, tmp_path / "bad.json", workers=w)
    assert not (tmp_path / "bad.json").exists()


def test_labels(dsb_root, tmp_path):
    root = tmp_path / "labels"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(1)
    for i in range(N):
        label = np.zeros((H, W), np.uint16)
        for k, m in enumerate(_discs(rng)):
            label[m] = 7 * k + 3  # ids need not be consecutive
        cv2.imwrite(str(root / "images" / f"im{i}.png"), (label > 0).astype(np.uint8) * 200)
        cv2.imwrite(str(root / "labels" / f"im{i}.png"), label)
    _same_bytes(lambda p, w: labels_to_coco(root, p, workers=w), tmp_path)

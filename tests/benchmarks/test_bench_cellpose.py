"""benchmarks/bench_cellpose.py without Cellpose: its input folders, and the error when
the given Python has no Cellpose."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tifffile
from bench_cellpose import cellpose_version, dataset_images, write_cellpose_folder
from detectron2.data import DatasetCatalog
from pycocotools import mask as mask_util

from nucdet.data.imageio import read_image


def test_cellpose_folder_holds_each_image_and_its_label_image(tmp_path):
    gt, _ = dataset_images("dsb2018_sample_val", limit=2)
    ids = write_cellpose_folder(gt, tmp_path)
    dicts = {d["file_name"]: d for d in DatasetCatalog.get("dsb2018_sample_val")}
    assert len(ids) == 2
    for im in gt.images:
        image = tifffile.imread(tmp_path / f"{im.image_id}.tif")
        assert np.array_equal(image, read_image(im.file_name))
        labels = tifffile.imread(tmp_path / f"{im.image_id}_masks.tif")
        assert labels.dtype == np.uint16 and labels.shape == image.shape[:2]
        anns = dicts[im.file_name]["annotations"]
        # DSB nuclei do not overlap: one label per annotation, each on its own pixels
        assert len(np.unique(labels[labels > 0])) == len(anns)
        h, w = labels.shape
        fg = np.zeros((h, w), bool)
        for a in anns:
            seg = a["segmentation"]
            rle = mask_util.frPyObjects(seg, h, w) if isinstance(seg, list) else seg
            m = mask_util.decode(rle)
            fg |= (m if m.ndim == 2 else m.any(axis=2)).astype(bool)
        assert np.array_equal(labels > 0, fg)


def test_a_python_without_cellpose_is_a_clear_error():
    with pytest.raises(RuntimeError, match="cannot import cellpose"):
        cellpose_version(sys.executable)  # nucdet's own environment has no Cellpose


def test_calibration_separates_cellpose_start_up_from_its_epochs():
    """The epoch time comes from Cellpose's own epoch lines (its clock starts after the
    start-up: reading the images, computing flows); the rest of the wall time is start-up,
    paid again by the main run. Lines as Cellpose 3.1.1.3 writes them."""
    from bench_cellpose import calibrate, epoch_times

    log = (
        "2026-12-02 15:02:55,592 [INFO] 0, train_loss=1.7127, test_loss=0.0000, "
        "LR=0.000000, time 17.50s\n"
        "2026-12-02 15:04:20,100 [INFO] 5, train_loss=1.2000, test_loss=0.0000, "
        "LR=0.002778, time 102.50s\n"
    )
    times = epoch_times(log)
    assert times == [(0, 17.5), (5, 102.5)]
    per_epoch, startup = calibrate(200.0, times, 6)
    # by hand: (102.5 - 17.5) / 5 = 17 s per epoch; 200 - 6 * 17 = 98 s start-up
    assert per_epoch == pytest.approx(17.0) and startup == pytest.approx(98.0)
    # one epoch line: the whole run counts as epochs (over-estimate, never over budget)
    assert calibrate(200.0, times[:1], 6) == (pytest.approx(200.0 / 6), 0.0)

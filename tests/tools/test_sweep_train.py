"""A real 2x2 sweep of the tiny CPU config through train_net.py: killed after the first run
finished, restarted, and ending with a 4-row table whose first row was not recomputed.
Also checks that the evaluation-only pass reproduces the trainer's own final evaluation.

Slow (five train_net.py launches, ~3 minutes on 2 busy cores): ``make test-slow``. The
same orchestration is covered in seconds by test_sweep.py with a stand-in trainer.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SAMPLE_ROOT, TINY_CONFIG

from nucdet.tools import sweep

pytestmark = pytest.mark.slow

NAMES = [
    "batch_size_per_image-32__rot90-True",
    "batch_size_per_image-32__rot90-False",
    "batch_size_per_image-64__rot90-True",
    "batch_size_per_image-64__rot90-False",
]


def tiny_val(tmp_path: Path) -> list[str]:
    """A one-image evaluation set registered through DATASETS.REGISTER."""
    from nucdet.data.dsb import dsb_to_coco

    split = json.loads((SAMPLE_ROOT / "split.json").read_text())
    root = SAMPLE_ROOT / "stage1_train"
    coco = dsb_to_coco(root, tmp_path / "tiny_val.json", image_ids=split["val"][:1])
    return [
        "DATASETS.TEST",
        "('tiny_val',)",
        "DATASETS.REGISTER",
        repr([["tiny_val", str(coco), str(root)]]),
    ]


def sweep_argv(out: Path, common: list[str]) -> list[str]:
    return [
        "--config-file",
        str(TINY_CONFIG),
        "--grid",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE=32,64",
        "--grid",
        "INPUT.AUG.ROT90=True,False",
        "--output",
        str(out),
        *common,
    ]


def test_real_sweep_killed_and_resumed(tmp_path):
    common = [
        "MODEL.DEVICE",
        "cpu",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SOLVER.MAX_ITER",
        "3",
        "SOLVER.CHECKPOINT_PERIOD",
        "1",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN",
        "300",
        "TEST.DETECTIONS_PER_IMAGE",
        "30",
        # Score thresholds 0: a 3-iteration model scores everything low, and the evaluation
        # comparison at the end should be between real predictions, not two empty sets.
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "0.0",
        "POSTPROCESS.SCORE_THRESH",
        "[0.0]",
        *tiny_val(tmp_path),
    ]
    out = tmp_path / "sweep"
    runs = out / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nucdet.tools.sweep", *sweep_argv(out, common)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        t0 = time.time()
        while not (runs / NAMES[1] / "last_checkpoint").is_file():
            assert proc.poll() is None, "the sweep ended early"
            assert time.time() - t0 < 600, "no run-1 checkpoint after 10 minutes"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # crash: sweep and trainer at once
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done0 = runs / NAMES[0] / sweep.DONE_FILE
    assert done0.is_file() and not (runs / NAMES[1] / sweep.DONE_FILE).exists()
    mtime0 = done0.stat().st_mtime_ns
    metrics0 = (runs / NAMES[0] / "metrics.json").read_bytes()

    sweep.main(sweep_argv(out, common))

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == NAMES
    assert [r["status"] for r in rows] == ["done"] * 4
    assert [r["iterations"] for r in rows] == ["3"] * 4
    for r in rows:
        assert 0.0 <= float(r["segm/MaP-IoU"]) <= 1.0
        assert 0.0 <= float(r["segm/AP"]) <= 100.0
        assert r["segm/AP50"] != "" and r["segm/AP75"] != ""
    assert done0.stat().st_mtime_ns == mtime0, "run 0 was recomputed"
    assert (runs / NAMES[0] / "metrics.json").read_bytes() == metrics0
    assert [r["attempts"] for r in rows] == ["1", "2", "1", "1"]
    log1 = (runs / NAMES[1] / sweep.LOG_FILE).read_text()
    assert log1.count("$ ") == 2 and "--resume" in log1.split("$ ")[2]

    # The evaluation-only pass on the final weights gives the trainer's final numbers.
    final = sweep.summarize_run(runs / NAMES[0])["final"]
    flat = sweep.evaluate_run_dir(runs / NAMES[0])
    assert final["count/n_pred"] > 0  # (up to 30: overlap removal may drop some)
    assert set(flat) == set(final)
    for key, value in final.items():
        assert flat[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key

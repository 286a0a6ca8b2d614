"""Kill tests: an inference job and a converter killed with SIGKILL at random
moments (fixed seeds) leave either the previous complete output or the new complete one,
never a torn file, and a rerun ends with the byte-identical result of an uninterrupted run.

The random-moment kills run the real pipeline with a cheap stand-in model
(``pipeline_child.py``) and the real DSB converter; one more test kills the real
``ensemble_infer.py`` (tiny random-init model, two TTA views) after its first record and
at seeded random moments of its job (slow: ``make test-slow``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from nucdet.data.samples import make_synthetic_dsb
from nucdet.inference.pipeline import HEADER_KEY, PARTIAL_NAME

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SEEDS = (0, 1, 2)
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _run(cmd, **kw):
    return subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300, **kw)


def _kill_after(cmd, delay: float) -> None:
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        proc.wait(timeout=delay)  # may finish first: then the output must be the new one
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _files(folder: Path) -> dict[str, bytes]:
    """The outputs (temporary files of an interrupted atomic write excluded); the
    submission path recorded in metrics.json is made relative to the folder."""
    out = {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".tmp")
    }
    if "metrics.json" in out:
        metrics = json.loads(out["metrics.json"])
        metrics["submission"] = Path(metrics["submission"]).name
        out["metrics.json"] = json.dumps(metrics).encode()
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    for k in range(12):
        img = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (9, 9), 3)
        cv2.imwrite(str(d / f"img{k:02d}.png"), img)
    return d


def test_killed_inference_leaves_old_or_new_output_and_resumes(images, tmp_path):
    child = [sys.executable, str(HERE / "pipeline_child.py"), str(images)]
    prev_dir, new_dir = tmp_path / "prev", tmp_path / "new"
    t0 = time.monotonic()
    assert _run([*child, str(new_dir), "0"]).returncode == 0
    duration = time.monotonic() - t0
    assert _run([*child, str(prev_dir), "1"]).returncode == 0
    prev, new = _files(prev_dir), _files(new_dir)
    assert prev["submission.csv"] != new["submission.csv"]
    new_records = new[PARTIAL_NAME].decode().splitlines(keepends=True)
    for seed in SEEDS:
        out = tmp_path / f"out{seed}"
        shutil.copytree(prev_dir, out)  # a complete output of another run is there
        delay = np.random.default_rng(seed).uniform(0.2, 1.2 * duration)
        _kill_after([*child, str(out), "0", "--force"], delay)
        got = _files(out)
        for name in ("submission.csv", "metrics.json", "overlays/img00.png"):
            assert got.get(name) in (prev.get(name), new.get(name)), (seed, delay, name)
        # The resume file: the previous run's, or this run's header + a prefix of its records
        # (the last line possibly torn by the kill).
        if got[PARTIAL_NAME] != prev[PARTIAL_NAME]:
            lines = got[PARTIAL_NAME].decode().splitlines(keepends=True)
            assert lines[0] == new_records[0] and HEADER_KEY in lines[0]
            full = [ln for ln in lines if ln.endswith("\n")]
            assert full == new_records[: len(full)], (seed, delay)
        assert _run([*child, str(out), "0", "--force"]).returncode == 0
        assert _files(out) == new, (seed, delay)


def test_killed_converter_leaves_old_or_new_json(tmp_path):
    root = make_synthetic_dsb(tmp_path / "stage1_train", n_images=24, shape=(64, 80), n_cells=8)
    ids = sorted(p.name for p in root.iterdir())
    convert = [sys.executable, "-m", "nucdet.data.convert", "dsb", str(root), "--workers", "1"]
    ref = tmp_path / "ref.json"
    t0 = time.monotonic()
    assert _run([*convert, "--output", str(ref)]).returncode == 0
    duration = time.monotonic() - t0
    new = ref.read_bytes()
    for seed in SEEDS:
        out = tmp_path / f"out{seed}.json"
        assert _run([*convert, "--output", str(out), "--ids", ",".join(ids[:3])]).returncode == 0
        prev = out.read_bytes()
        delay = np.random.default_rng(seed).uniform(0.1, 1.2 * duration)
        _kill_after([*convert, "--output", str(out)], delay)
        assert out.read_bytes() in (prev, new), (seed, delay)
        assert _run([*convert, "--output", str(out)]).returncode == 0
        assert out.read_bytes() == new
    assert len(json.loads(new)["images"]) == 24


@pytest.mark.slow  # ten torch start-ups and numba compilations: ~2 minutes on 2 busy cores
def test_killed_ensemble_infer_resumes_to_the_same_bytes(tmp_path, registered):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    cfg = tiny_cfg("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "10",
                   "POSTPROCESS.SCORE_THRESH", "[0.0]", "OUTPUT_DIR", str(model_dir))  # fmt: skip
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(model_dir)).save("model_final")
    (model_dir / "config.yaml").write_text(cfg.dump())
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    for k in range(3):
        img = cv2.GaussianBlur(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), (9, 9), 3)
        cv2.imwrite(str(images / f"im{k}.png"), img)
    import ensemble_infer

    args = ["--model-dir", str(model_dir), "--views", "identity,hflip", "--input", str(images)]
    ensemble_infer.main([*args, "--output", str(tmp_path / "ref")])
    ref = _files(tmp_path / "ref")

    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "ensemble_infer.py"), *args, "--output", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    partial = out / PARTIAL_NAME
    deadline = time.monotonic() + 240
    # Kill as soon as the first image's record is in the file (header + 1 line).
    while proc.poll() is None and time.monotonic() < deadline:
        if partial.is_file() and partial.read_text().count("\n") >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert not (out / "submission.csv").exists() or proc.returncode == 0
    done = partial.read_text().count("\n") - 1
    assert _run(cmd).returncode == 0
    assert _files(out) == ref, f"{done} records before the kill"

    # Random moments (seeded) between the start of the job (its resume file appears, the
    # model is built) and a little after the time an uninterrupted job takes.
    job = _start_job(cmd[:-1] + [str(tmp_path / "timed")], tmp_path / "timed" / PARTIAL_NAME)
    t_job = time.monotonic()
    assert job.wait(timeout=240) == 0
    job_time = time.monotonic() - t_job
    for seed in SEEDS:
        out = tmp_path / f"out{seed}"
        proc = _start_job(cmd[:-1] + [str(out)], out / PARTIAL_NAME)
        delay = np.random.default_rng(seed).uniform(0, 1.2 * job_time)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        got = _files(out)
        assert got.get("submission.csv") in (None, ref["submission.csv"]), (seed, delay)
        assert _run(cmd[:-1] + [str(out)]).returncode == 0
        assert _files(out) == ref, (seed, delay)


def _start_job(cmd, partial: Path) -> subprocess.Popen:
    """Start ``cmd``; return once its resume file exists (imports done, model built)."""
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    while not partial.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc

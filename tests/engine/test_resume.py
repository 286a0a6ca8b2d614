"""Kill a real ``train_net.py`` run (SIGKILL) after a checkpoint, ``--resume`` it, and check
that the resumed run ends at MAX_ITER with one metrics.json record per iteration (no gap,
no duplicate) and the learning-rate schedule of an uninterrupted run. (Resuming a finished
run is checked in-process in test_train_eval.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, TINY_CLI_OPTS, TINY_CONFIG

MAX_ITER, WARMUP, STEP, GAMMA, BASE_LR, WARMUP_FACTOR = 4, 2, 3, 0.1, 0.02, 0.001


def train_net(out: Path, resume: bool = False) -> subprocess.Popen:
    cmd = [
        sys.executable, str(REPO / "train_net.py"),
        "--config-file", str(TINY_CONFIG),
        *(["--resume"] if resume else []),
        *TINY_CLI_OPTS,
        "SOLVER.MAX_ITER", str(MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD", "2",
        "SOLVER.LOG_PERIOD", "1",
        "SOLVER.BASE_LR", str(BASE_LR),
        "SOLVER.WARMUP_ITERS", str(WARMUP),
        "SOLVER.WARMUP_FACTOR", str(WARMUP_FACTOR),
        "SOLVER.STEPS", f"({STEP},)",
        "SOLVER.GAMMA", str(GAMMA),
        "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 threads on a busy 2-core box: 3-4x slower
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def records(out: Path) -> list[dict]:
    path = out / "metrics.json"
    if not path.is_file():
        return []
    out_ = []
    for line in path.read_text().splitlines():
        try:
            out_.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            break
    return out_


def expected_lr(i: int) -> float:
    """detectron2's WarmupMultiStepLR with linear warmup, computed by hand."""
    if i < WARMUP:
        alpha = i / WARMUP
        return BASE_LR * (WARMUP_FACTOR * (1 - alpha) + alpha)
    return BASE_LR * (GAMMA if i >= STEP else 1.0)


def test_kill_and_resume(tmp_path):
    out = tmp_path / "run"
    proc = train_net(out)
    deadline = time.monotonic() + 240
    try:
        # Kill as soon as iteration 2 is logged: the checkpoint after iteration 1 exists,
        # the next one (model_final after 3) cannot (a step takes far longer than the 20 ms
        # poll), so metrics.json holds a record the resumed run must redo, not duplicate.
        while not any(r["iteration"] >= 2 for r in records(out)):
            assert proc.poll() is None, f"training ended early:\n{proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (out / "model_final.pth").exists()
    logged = [r["iteration"] for r in records(out)]
    assert logged[:3] == [0, 1, 2]  # iteration 2 logged after the last checkpoint

    proc = train_net(out, resume=True)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    log = (out / "log.txt").read_text()
    starts = [int(m) for m in re.findall(r"Starting training from iteration (\d+)", log)]
    assert starts == [0, 2]
    assert "dropped" in log and "from iteration 2 on" in log

    recs = records(out)
    iterations = [r["iteration"] for r in recs]
    assert iterations == list(range(MAX_ITER))  # no gap, no duplicate, in order
    for r in recs:
        assert abs(r["lr"] - expected_lr(r["iteration"])) < 1e-12, r
        assert "total_loss" in r
    assert (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert not list(out.glob(".*.tmp"))  # atomic writes left no temporary files

"""Two CPU processes (gloo, DDP without device ids) train the tiny config: both ranks start
from the same weights, see different images, and end with identical weights. The same
through a submitit job (``--submit local --nodes 2``: two "machines" of one process each,
their ranks and process-group address taken from the job environment)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_CLI_OPTS, TINY_CONFIG

HERE = Path(__file__).resolve().parent


def run_dist_train(out: Path, *layout: str, timeout: float = 300) -> None:
    cmd = [
        sys.executable, str(HERE / "dist_train.py"),
        *layout, "--dist-backend", "gloo",
        "--config-file", str(TINY_CONFIG),
        *TINY_CLI_OPTS,
        "SOLVER.IMS_PER_BATCH", "2",  # one image per rank
        "SOLVER.MAX_ITER", "3",
        "SOLVER.BASE_LR", "2.0",  # warmup starts at 0.001 x BASE_LR: make the steps visible
        "SOLVER.CHECKPOINT_PERIOD", "100",
        "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]


def check_two_ranks_trained_together(out: Path) -> None:
    r0 = torch.load(out / "rank0.pth", weights_only=False)
    r1 = torch.load(out / "rank1.pth", weights_only=False)
    assert (r0["world_size"], r0["rank"], r1["rank"]) == (2, 0, 1)

    names = [k for k in r0["final"] if "running_" not in k and "num_batches" not in k]
    params = [k for k in names if r0["final"][k].is_floating_point()]
    assert len(params) > 100
    for k in params:  # DDP broadcast the initial weights, all-reduced every gradient
        assert torch.equal(r0["init"][k], r1["init"][k]), k
        assert torch.equal(r0["final"][k], r1["final"][k]), k
    moved = [k for k in params if not torch.equal(r0["init"][k], r0["final"][k])]
    assert len(moved) > 0.9 * len(params), "training did not update the weights"
    # BatchNorm statistics are per-rank buffers (detectron2's broadcast_buffers=False):
    # they differ, which shows the ranks trained on different images
    stats = [k for k in r0["final"] if k.endswith("running_mean")]
    assert stats and any(not torch.equal(r0["final"][k], r1["final"][k]) for k in stats)
    # rank 0 wrote the checkpoint and the logs
    assert (out / "model_final.pth").is_file() and (out / "metrics.json").is_file()
    assert "World size: 2" in (out / "log.txt").read_text()


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    out = tmp_path / "dist"
    run_dist_train(out, "--num-gpus", "2", "--dist-url", "auto")
    check_two_ranks_trained_together(out)


@pytest.mark.slow
def test_two_machines_through_a_submitit_job(tmp_path):
    """train_net.py's --submit path with submitit's local executor: one job of two tasks,
    each a machine (--machine-rank from the task, --dist-url from the job id)."""
    pytest.importorskip("submitit")
    out = tmp_path / "dist"
    layout = ["--submit", "local", "--nodes", "2", "--num-gpus", "1", "--time", "30"]
    run_dist_train(out, *layout, timeout=1800)  # job start-up: 3 more interpreters
    check_two_ranks_trained_together(out)
    (job_dir,) = [d for d in (out / "submitit").iterdir() if d.name != "%j"]  # the job's id
    logs = sorted(p.name for p in job_dir.glob("*_log.out"))
    assert logs == [f"{job_dir.name}_0_log.out", f"{job_dir.name}_1_log.out"]
    task1 = "".join(p.read_text() for p in job_dir.glob(f"{job_dir.name}_1_log.*"))
    assert "machine 1 of 2" in task1 and "tcp://127.0.0.1:" in task1

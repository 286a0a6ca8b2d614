"""Sweeps through submitit (``--executor submitit-local``: the SLURM job path run by
submitit's LocalExecutor as real subprocesses): a 2x2 sweep in which one job is pre-empted
(SIGUSR2, as SLURM sends it), checkpointed and requeued by submitit, and resumes from its
last checkpoint; the table is built from what finished.

The fast test uses the stand-in trainer of test_sweep.py; the slow one the real
train_net.py on the tiny CPU config (``make test-slow``).
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
from conftest import REPO

from nucdet.engine.cluster import ClusterError, ClusterSettings
from nucdet.tools import sweep

pytest.importorskip("submitit")

STANDIN = str(Path(__file__).with_name("standin_train.py"))
NAMES = ["score-0.1__name-A", "score-0.1__name-B", "score-0.2__name-A", "score-0.2__name-B"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def last_attempt_pid(run_dir: Path) -> int | None:
    """The process id of the job task running the run's latest attempt (its sweep record)."""
    spec = run_dir / sweep.SPEC_FILE
    if not spec.is_file():
        return None
    attempts = json.loads(spec.read_text())["attempts"]
    return attempts[-1]["pid"] if attempts and attempts[-1]["end"] is None else None


def preempt_when_checkpointed(proc: subprocess.Popen, run_dir: Path, timeout: float) -> int:
    """Wait for ``run_dir``'s first checkpoint, then send SIGUSR2 to the job task running it
    (what SLURM sends before pre-emption / the time limit). Returns the task's pid."""
    t0 = time.time()
    while True:
        pid = last_attempt_pid(run_dir)
        if pid is not None and (run_dir / "last_checkpoint").is_file():
            break
        assert proc.poll() is None, "the sweep ended early"
        assert time.time() - t0 < timeout, f"no checkpoint in {run_dir} after {timeout} s"
        time.sleep(0.05)
    os.kill(pid, signal.SIGUSR2)
    return pid


def run_driver(argv: list[str], out: Path, env: dict | None = None) -> subprocess.Popen:
    log = open(out.parent / "driver.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "nucdet.tools.sweep", *argv],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, out: Path, timeout: float) -> str:
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (out.parent / "driver.log").read_text()
    assert rc == 0, log[-4000:]
    return log


def test_preempted_job_is_requeued_and_resumes(tmp_path):
    out = tmp_path / "sweep"
    argv = [
        "--config-file", "base.yaml",
        "--grid", "STANDIN.SCORE=0.1,0.2",
        "--grid", "MODEL.ROI_HEADS.NAME=A,B",
        "--output", str(out),
        "--python", sys.executable,
        "--train-script", STANDIN,
        "--executor", "submitit-local",
        "--max-parallel", "2",
        "--time", "10",
        "SOLVER.MAX_ITER", "6",
        "STANDIN.SLEEP", "0.2",
    ]  # fmt: skip
    proc = run_driver(argv, out)
    preempt_when_checkpointed(proc, out / "runs" / NAMES[1], timeout=120)
    log = finish(proc, out, timeout=180)

    rows = read_csv(out / "results.csv")
    assert [r["name"] for r in rows] == NAMES
    assert [r["status"] for r in rows] == ["done"] * 4
    assert [float(r["segm/MaP-IoU"]) for r in rows] == pytest.approx([0.6, 0.6, 0.7, 0.7])
    assert [r["attempts"] for r in rows] == ["1", "2", "1", "1"]
    # The pre-empted run went on from its checkpoint (stand-in: resume=1, start > 0), in
    # the same submitit job (requeued, not resubmitted by the sweep).
    starts = (out / "runs" / NAMES[1] / "standin_starts.txt").read_text().splitlines()
    assert starts[0] == "resume=0 start=0" and len(starts) == 2
    assert starts[1].startswith("resume=1 ") and int(starts[1].split("start=")[1]) > 0
    record = json.loads((out / "runs" / NAMES[1] / sweep.SPEC_FILE).read_text())
    first, second = record["attempts"]
    assert first["killed"] and not first["resume"] and second["resume"]
    assert first["job_id"] == second["job_id"]
    assert first["pid"] != second["pid"]
    job_ids = json.loads((out / sweep.JOBS_FILE).read_text())
    assert set(job_ids) == set(NAMES) and job_ids[NAMES[1]] == first["job_id"]
    submitit_log = (out / "submitit" / first["job_id"]).glob("*_log.out")
    assert any("preempted" in p.read_text() for p in submitit_log)
    assert log.count("jobs finished]") == 4 and "[4/4 jobs finished]" in log

    # A second start finds every run finished: nothing is submitted.
    before = (out / sweep.JOBS_FILE).read_text()
    sweep.main(argv)
    assert (out / sweep.JOBS_FILE).read_text() == before
    assert read_csv(out / "results.csv") == rows


def test_failed_job_is_a_failed_row(tmp_path):
    out = tmp_path / "sweep"
    argv = [
        "--config-file", "base.yaml",
        "--grid", "STANDIN.FAIL=0,1",
        "--output", str(out),
        "--python", sys.executable,
        "--train-script", STANDIN,
        "--executor", "submitit-local",
        "SOLVER.MAX_ITER", "2",
    ]  # fmt: skip
    with pytest.raises(RuntimeError, match=r"1 run\(s\) failed: fail-1"):
        sweep.main(argv)
    rows = read_csv(out / "results.csv")
    assert [(r["name"], r["status"]) for r in rows] == [("fail-0", "done"), ("fail-1", "failed")]


def test_cluster_settings_from_yaml_and_flags(tmp_path):
    runs = tmp_path / "runs.yaml"
    runs.write_text(
        "config_file: base.yaml\n"
        "grid: {STANDIN.SCORE: [0.1, 0.2]}\n"
        "cluster: {partition: gpu, gpus_per_node: 1, time_min: 240, account: lab,\n"
        "          setup: ['module load cuda']}\n"
    )
    args = sweep.parse_args(
        ["--runs", str(runs), "--output", str(tmp_path / "o"), "--executor", "slurm"]
        + ["--time", "30", "--max-parallel", "4"]
    )
    _, _, _, cluster = sweep._sweep_from_args(args)
    assert cluster == ClusterSettings(
        cluster="slurm",
        partition="gpu",
        account="lab",
        gpus_per_node=1,
        time_min=30,  # the flag wins over the YAML
        max_parallel=4,
        setup=["module load cuda"],
    )
    args = sweep.parse_args(["--runs", str(runs), "--output", str(tmp_path / "o")])
    assert sweep._sweep_from_args(args)[3] is None  # the local runner: no cluster
    runs.write_text("config_file: base.yaml\ncluster: {partiton: gpu}\n")
    args = sweep.parse_args(["--runs", str(runs), "--output", "o", "--executor", "slurm"])
    with pytest.raises(ClusterError, match="partiton"):
        sweep._sweep_from_args(args)
    with pytest.raises(ValueError, match="one machine"):
        sweep.submit_sweep([], sweep.SweepSettings(tmp_path), ClusterSettings(nodes=2))


@pytest.mark.slow
def test_real_sweep_preempted_job_resumes(tmp_path):
    """The real train_net.py (tiny CPU config, 3 iterations) in four submitit-local jobs,
    two at a time; run 1 is pre-empted after its first checkpoint."""
    from test_sweep_train import NAMES as REAL_NAMES
    from test_sweep_train import sweep_argv, tiny_val

    common = [
        "MODEL.DEVICE", "cpu",
        "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.MAX_ITER", "3",
        "SOLVER.CHECKPOINT_PERIOD", "1",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "300",
        "TEST.DETECTIONS_PER_IMAGE", "30",
        *tiny_val(tmp_path),
    ]  # fmt: skip
    out = tmp_path / "sweep"
    argv = sweep_argv(out, ["--executor", "submitit-local", "--max-parallel", "2", *common])
    proc = run_driver(argv, out, env={"OMP_NUM_THREADS": "1"})
    preempt_when_checkpointed(proc, out / "runs" / REAL_NAMES[1], timeout=900)
    finish(proc, out, timeout=1200)

    rows = read_csv(out / "results.csv")
    assert [r["name"] for r in rows] == REAL_NAMES
    assert [r["status"] for r in rows] == ["done"] * 4
    assert [r["iterations"] for r in rows] == ["3"] * 4
    assert [r["attempts"] for r in rows] == ["1", "2", "1", "1"]
    for r in rows:
        assert 0.0 <= float(r["segm/MaP-IoU"]) <= 1.0
    log1 = (out / "runs" / REAL_NAMES[1] / sweep.LOG_FILE).read_text()
    first, second = log1.split("\n$ ")[1:3]
    assert "--resume" not in first and "--resume" in second
    assert "Starting training from iteration 0" in first
    # resumed from its checkpoint, not from iteration 0
    assert "Starting training from iteration 0" not in second
    assert "Starting training from iteration" in second

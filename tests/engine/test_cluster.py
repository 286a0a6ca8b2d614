"""Cluster settings -> the sbatch file submitit would submit, and the machine layout a
submitted training derives from its job environment. No SLURM here: the SLURM executor is
built with a stand-in ``srun`` on PATH (submitit only checks that it exists) and nothing is
submitted; the jobs themselves run in test_sweep_submitit.py / test_distributed.py."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

from nucdet.engine.cluster import (
    ClusterError,
    ClusterSettings,
    TrainJob,
    add_submit_arguments,
    job_port,
    make_executor,
    output_dir_of,
    settings_from_args,
)

pytest.importorskip("submitit")


def test_sbatch_file_of_the_settings(tmp_path, monkeypatch):
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}:/usr/bin:/bin")
    settings = ClusterSettings(
        partition="gpu",
        account="lab",
        nodes=2,
        gpus_per_node=8,
        cpus_per_task=32,
        mem_gb=64,
        time_min=720,
        setup=["module load cuda/12"],
        slurm_args={"constraint": "a100"},
    )
    ex = make_executor(settings, tmp_path / "jobs", "nucdet-train")
    text = ex._make_submission_file_text("python -m job", "uid")
    lines = set(text.splitlines())
    for option in (
        "--partition=gpu",
        "--account=lab",
        "--nodes=2",
        "--ntasks-per-node=1",  # one task per machine; it starts --num-gpus processes
        "--gpus-per-node=8",
        "--cpus-per-task=32",
        "--mem=64GB",
        "--time=720",
        "--constraint=a100",
        "--signal=USR2@90",  # the pre-emption / time-out warning submitit checkpoints on
        "--job-name=nucdet-train",
    ):
        assert f"#SBATCH {option}" in lines, option
    assert "module load cuda/12" in lines
    assert f"#SBATCH --output={tmp_path}/jobs/%j/%j_0_log.out" in lines


def test_settings_are_checked(tmp_path):
    with pytest.raises(ClusterError, match="time_min must be >= 1"):
        ClusterSettings.from_dict({"time_min": 0}, "c.yaml")
    with pytest.raises(ClusterError, match=r"c.yaml: unknown cluster keys \['gpus'\]"):
        ClusterSettings.from_dict({"gpus": 1}, "c.yaml")
    with pytest.raises(ClusterError, match="cluster must be one of"):
        ClusterSettings.from_dict({"cluster": "pbs"})
    # --cluster-config file < flags
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("cluster: {partition: long, time_min: 600, gpus_per_node: 4}\n")
    ap = argparse.ArgumentParser()
    add_submit_arguments(ap)
    args = ap.parse_args(["--submit", "slurm", "--cluster-config", str(cfg), "--time", "60"])
    got = settings_from_args(args, "slurm")
    assert (got.partition, got.time_min, got.gpus_per_node) == ("long", 60, 4)


def test_train_job_layout_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    args = argparse.Namespace(
        resume=False,
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        dist_url="auto",
        submit="local",
        opts=["OUTPUT_DIR", str(tmp_path)],
    )
    job = TrainJob(print, args)
    env = SimpleNamespace(num_tasks=2, global_rank=1, job_id="4242", hostnames=["node7"])
    a = job.task_args(env, str(tmp_path))
    assert (a.num_machines, a.machine_rank, a.resume, a.submit) == (2, 1, False, None)
    assert a.dist_url == f"tcp://127.0.0.1:{job_port('4242')}"
    assert args.machine_rank == 0 and args.submit == "local"  # the job's own args unchanged
    # A requeued job finds the checkpoint of its earlier start and resumes from it.
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    assert job.task_args(env, str(tmp_path)).resume is True
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert job.task_args(env, str(tmp_path)).dist_url.startswith("tcp://node7:")
    assert 20000 <= job_port("4242") < 40000 and job_port("4242") == job_port("4242")
    assert job_port("4242") != job_port("4243")
    with pytest.raises(ClusterError, match="OUTPUT_DIR"):
        output_dir_of(["SOLVER.MAX_ITER", "3"])
    assert output_dir_of(["OUTPUT_DIR", "a", "OUTPUT_DIR", str(Path("b"))]) == "b"

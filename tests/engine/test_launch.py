"""Launch helpers (the 2-process gloo run itself is test_distributed.py); the per-machine
config resolution done before training is tests/test_config.py."""

from __future__ import annotations

import pytest
import torch

from nucdet.engine.launch import (
    argument_parser,
    cpu_threads_per_process,
    launch,
    pop_flags,
    resolve_backend,
)


def test_backend_and_threads():
    assert resolve_backend("gloo") == "gloo" and resolve_backend("nccl") == "nccl"
    assert resolve_backend("auto") == ("nccl" if torch.cuda.is_available() else "gloo")
    with pytest.raises(ValueError, match="mpi"):
        resolve_backend("mpi")
    cores = cpu_threads_per_process(1)
    assert cores >= 1
    assert cpu_threads_per_process(2) == max(1, cores // 2)
    assert cpu_threads_per_process(10 * cores) == 1


def test_argument_parser():
    args = argument_parser().parse_args(
        ["--config-file", "x.yaml", "--num-gpus", "2", "--dist-backend", "gloo", "A", "1"]
    )
    assert (args.num_gpus, args.dist_backend, args.opts) == (2, "gloo", ["A", "1"])
    assert argument_parser().parse_args([]).dist_backend == "auto"
    with pytest.raises(SystemExit):
        argument_parser().parse_args(["--dist-backend", "mpi"])


def test_single_process_runs_in_place():
    seen = []
    launch(seen.append, 1, args=("ran",), backend="gloo")
    assert seen == ["ran"]
    with pytest.raises(ValueError, match="one machine only"):
        launch(seen.append, 2, num_machines=2, dist_url="auto", backend="gloo")


def test_pop_flags_after_overrides():
    opts, found = pop_flags(["A", "1", "--resume", "B", "2"], ("--resume", "--eval-only"))
    assert (opts, found) == (["A", "1", "B", "2"], {"--resume"})

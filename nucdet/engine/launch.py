"""Multi-process launch on GPUs (detectron2's ``launch``, NCCL) and on CPUs (gloo).

``launch(main, num_procs_per_machine, ...)`` keeps detectron2's signature and adds
``backend``: ``"auto"`` is NCCL when CUDA is available and gloo otherwise. The NCCL path is
detectron2's own launch, unchanged. The gloo path spawns the same worker processes on
CPUs: each joins a gloo process group, gets its share of the CPU threads (N processes on
C cores run C // N threads each instead of oversubscribing), and runs ``main``. With
``MODEL.DEVICE cpu`` the trainer wraps the model in DDP without device ids.

``argument_parser()`` is detectron2's ``default_argument_parser`` plus ``--dist-backend``
and the submitit flags of ``nucdet.engine.cluster`` (``--submit slurm --nodes N``);
``--num-gpus N`` means "N processes per machine" on either backend.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import default_argument_parser
from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port
from detectron2.utils import comm

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "nccl", "gloo")


def argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """detectron2's argument parser plus ``--dist-backend {auto,nccl,gloo}`` and
    ``--submit`` with its cluster flags."""
    from nucdet.engine.cluster import add_submit_arguments

    parser = default_argument_parser(epilog)
    parser.add_argument(
        "--dist-backend",
        choices=BACKENDS,
        default="auto",
        help="process-group backend: auto = nccl with CUDA, else gloo (CPU processes; "
        "--num-gpus is then the number of CPU processes per machine)",
    )
    add_submit_arguments(parser)
    return parser


def pop_flags(opts: Sequence[str], flags: Sequence[str]) -> tuple[list[str], set[str]]:
    """Take ``flags`` (e.g. ``--resume``) out of the trailing ``KEY VALUE`` overrides, where
    argparse's ``REMAINDER`` leaves them when they are written after the overrides.

    Returns the remaining overrides and the flags found."""
    found = {o for o in opts if o in flags}
    return [o for o in opts if o not in flags], found


def parse_args(argv: list[str] | None = None, epilog: str | None = None) -> argparse.Namespace:
    """``argument_parser().parse_args`` that also accepts ``--resume`` / ``--eval-only``
    written after the ``KEY VALUE`` overrides (argparse leaves them among the overrides)."""
    args = argument_parser(epilog).parse_args(argv)
    args.opts, found = pop_flags(args.opts, ("--resume", "--eval-only"))
    args.resume = args.resume or "--resume" in found
    args.eval_only = args.eval_only or "--eval-only" in found
    return args


def resolve_backend(backend: str = "auto") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return backend


def cpu_threads_per_process(num_procs_per_machine: int) -> int:
    """CPU cores available to this process divided among the processes of one machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, num_procs_per_machine))


def launch(
    main_func: Callable[..., Any],
    num_procs_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: tuple = (),
    backend: str = "auto",
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in ``num_procs_per_machine`` processes on each machine.

    One process in total runs ``main_func`` directly. ``dist_url`` "auto" picks a free
    local port (single machine only), as in detectron2.
    """
    backend = resolve_backend(backend)
    world_size = num_machines * num_procs_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if backend == "nccl":
        d2_launch(
            main_func,
            num_procs_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
            timeout=timeout,
        )
        return
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url 'auto' works on one machine only: pass tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    logger.info(
        "launching %d CPU processes per machine (gloo, %s), %d machine(s)",
        num_procs_per_machine,
        dist_url,
        num_machines,
    )
    mp.start_processes(
        _gloo_worker,
        nprocs=num_procs_per_machine,
        args=(main_func, world_size, num_procs_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
    )


def launch_from_args(main_func: Callable[..., Any], args: argparse.Namespace) -> None:
    """``launch(main_func, ...)`` with the process layout of ``argument_parser()``'s flags
    (``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``,
    ``--dist-backend``); ``main_func`` gets ``args``."""
    launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        backend=args.dist_backend,
    )


def _gloo_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_procs_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
) -> None:
    torch.set_num_threads(cpu_threads_per_process(num_procs_per_machine))
    global_rank = machine_rank * num_procs_per_machine + local_rank
    try:
        dist.init_process_group(
            backend="gloo",
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception:
        logger.error("process group URL: %s (rank %d of %d)", dist_url, global_rank, world_size)
        raise
    comm.create_local_process_group(num_procs_per_machine)
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()

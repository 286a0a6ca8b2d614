"""Cluster jobs through submitit: where a job runs, submitting it, waiting for it, and the
multi-machine layout of a training inside it.

``ClusterSettings`` holds what a SLURM job asks for (partition, account, nodes, GPUs per
node, CPUs, memory, time limit, requeues on preemption/timeout, setup lines run before the
job), read from a ``cluster:`` YAML section and/or the command-line flags of
``add_cluster_arguments`` (flags win). ``make_executor`` turns them into a submitit
executor: ``slurm`` submits with sbatch; ``local`` is submitit's LocalExecutor, the same
job path (pickled callable, signal handling, checkpoint + requeue) run as subprocesses of
this machine, which is how the cluster path is tested without a cluster.

Preemption: SLURM (and the local executor at its time limit) sends SIGUSR2 to the job;
submitit then calls the job's ``checkpoint`` method, which returns the job to run again,
and requeues it. Every job of nucdet resumes from its last checkpoint on the next start,
so a checkpoint needs nothing but the job itself.

``TrainJob`` is one training (``train_net.py``'s ``main``) as a submitit job: one task per
machine; each task derives ``--num-machines`` / ``--machine-rank`` / ``--dist-url`` from
the job environment and calls ``nucdet.engine.launch.launch_from_args`` (detectron2's
``launch`` with a gloo path for CPUs), which starts ``--num-gpus`` processes on its machine.

submitit is imported inside the functions only: nothing else in nucdet needs it. This
module does not import torch at import time (the sweep driver imports it).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

CLUSTERS = ("slurm", "local")
POLL_S = {"slurm": 30.0, "local": 1.0}  # seconds between job-state checks
PORT_BASE, PORT_RANGE = 20000, 20000


class ClusterError(ValueError):
    """Cluster settings that cannot be used (unknown key, impossible layout)."""


@dataclass
class ClusterSettings:
    """What one job asks the cluster for (``cluster:`` YAML section, or flags)."""

    cluster: str = "slurm"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_min: int = 60
    max_requeues: int = 3
    max_parallel: int = 0  # jobs running at once (0: no limit; the sweep submits in waves)
    setup: list[str] = field(default_factory=list)  # shell lines before the job (module load)
    slurm_args: dict[str, Any] = field(default_factory=dict)  # more sbatch options

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, source: str = "") -> ClusterSettings:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ClusterError(
                f"{source}: unknown cluster keys {sorted(unknown)}; known: {sorted(known)}"
            )
        out = cls(**d)
        out.check(source)
        return out

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ClusterSettings:
        """The ``cluster:`` section of a YAML file (or the whole file if it has none)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cluster config not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ClusterError(f"{path}: expected a mapping (a 'cluster:' section)")
        return cls.from_dict(data.get("cluster", data), str(path))

    def check(self, source: str = "") -> None:
        where = f"{source}: " if source else ""
        if self.cluster not in CLUSTERS:
            raise ClusterError(f"{where}cluster must be one of {CLUSTERS}, got {self.cluster!r}")
        for name in ("nodes", "time_min"):
            if int(getattr(self, name)) < 1:
                raise ClusterError(f"{where}{name} must be >= 1, got {getattr(self, name)}")
        for name in ("gpus_per_node", "max_requeues", "max_parallel"):
            if int(getattr(self, name)) < 0:
                raise ClusterError(f"{where}{name} must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.setup, list) or not isinstance(self.slurm_args, dict):
            raise ClusterError(f"{where}setup must be a list of lines, slurm_args a mapping")

    def with_flags(self, args: argparse.Namespace) -> ClusterSettings:
        """These settings with every flag of ``add_cluster_arguments`` that was given."""
        out = copy.deepcopy(self)
        for f in fields(self):
            value = getattr(args, f"cluster_{f.name}", None)
            if value is not None:
                setattr(out, f.name, value)
        out.check("command line")
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_cluster_arguments(ap: argparse.ArgumentParser, nodes: bool = True) -> None:
    """Flags of ``ClusterSettings`` (default: the YAML's value, else the dataclass's)."""
    g = ap.add_argument_group("cluster (with --executor slurm|submitit-local or --submit)")
    g.add_argument("--cluster-config", help="YAML with a 'cluster:' section (flags win over it)")
    g.add_argument("--partition", dest="cluster_partition", help="SLURM partition")
    g.add_argument("--account", dest="cluster_account", help="SLURM account")
    g.add_argument("--qos", dest="cluster_qos", help="SLURM quality of service")
    if nodes:
        g.add_argument("--nodes", dest="cluster_nodes", type=int, help="machines per job")
    g.add_argument("--gpus-per-node", dest="cluster_gpus_per_node", type=int)
    g.add_argument("--cpus-per-task", dest="cluster_cpus_per_task", type=int)
    g.add_argument("--mem-gb", dest="cluster_mem_gb", type=float, help="memory per node")
    g.add_argument("--time", dest="cluster_time_min", type=int, help="time limit, minutes")
    g.add_argument(
        "--max-requeues",
        dest="cluster_max_requeues",
        type=int,
        help="requeues after a time-out (pre-emptions are always requeued); default 3",
    )
    g.add_argument(
        "--max-parallel", dest="cluster_max_parallel", type=int, help="jobs at once (0: all)"
    )


def settings_from_args(
    args: argparse.Namespace, cluster: str, yaml_section: dict[str, Any] | None = None
) -> ClusterSettings:
    """Dataclass defaults < ``yaml_section`` (e.g. a sweep YAML's ``cluster:``) <
    ``--cluster-config`` < flags; ``cluster`` ("slurm" / "local") is always the caller's."""
    settings = ClusterSettings.from_dict(yaml_section, "cluster section")
    if getattr(args, "cluster_config", None):
        from_file = ClusterSettings.from_yaml(args.cluster_config)
        given = {k: v for k, v in from_file.as_dict().items() if v != getattr(ClusterSettings(), k)}
        settings = ClusterSettings.from_dict({**settings.as_dict(), **given}, args.cluster_config)
    settings.cluster = cluster
    return settings.with_flags(args)


def make_executor(settings: ClusterSettings, folder: str | os.PathLike, name: str) -> Any:
    """A submitit executor for ``settings``; job files and logs go to ``folder/<job id>``.

    One task per machine: on SLURM ``nodes`` nodes with one task each; the local executor
    runs on one machine, so ``nodes`` machines are simulated as ``nodes`` tasks there."""
    import submitit

    settings.check()
    folder = Path(folder) / "%j"
    if settings.cluster == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=settings.max_requeues)
        ex.update_parameters(
            timeout_min=settings.time_min,
            tasks_per_node=settings.nodes,
            gpus_per_node=settings.gpus_per_node,
            setup=list(settings.setup),
        )
        return ex
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings.max_requeues)
    params: dict[str, Any] = {
        "job_name": name,
        "time": settings.time_min,
        "nodes": settings.nodes,
        "ntasks_per_node": 1,
        "gpus_per_node": settings.gpus_per_node or None,
        "cpus_per_task": settings.cpus_per_task,
        "mem": f"{int(settings.mem_gb)}GB" if settings.mem_gb else None,
        "partition": settings.partition,
        "account": settings.account,
        "qos": settings.qos,
        "setup": list(settings.setup),
        "additional_parameters": dict(settings.slurm_args),
    }
    ex.update_parameters(**{k: v for k, v in params.items() if v not in (None, [], {})})
    return ex


# ---- waiting ----------------------------------------------------------------------------------


def run_in_waves(
    items: Sequence[Any],
    submit: Callable[[Any], Any],
    on_done: Callable[[Any, Any, BaseException | None], None],
    max_parallel: int = 0,
    poll_s: float = 5.0,
) -> None:
    """Submit ``submit(item)`` for each item, at most ``max_parallel`` running at once (0: all
    at once), calling ``on_done(item, result, error)`` as each job finishes."""
    queue = list(enumerate(items))
    running: dict[int, tuple[Any, Any]] = {}
    while queue or running:
        while queue and (max_parallel <= 0 or len(running) < max_parallel):
            k, item = queue.pop(0)
            running[k] = (item, submit(item))
        finished = [k for k, (_, j) in running.items() if j.done()]
        for k in finished:
            item, job = running.pop(k)
            try:
                result, error = job.result(), None
            except Exception as e:
                result, error = None, e
            on_done(item, result, error)
        if running and not finished:
            time.sleep(poll_s)


# ---- one training as a job ------------------------------------------------------------------


def job_environment() -> Any | None:
    """submitit's JobEnvironment inside a submitit job, else None."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    import submitit

    return submitit.JobEnvironment()


def job_port(job_id: str) -> int:
    """A TCP port for the process group, the same on every task of a job (and on its
    requeued restarts), spread over PORT_BASE..PORT_BASE+PORT_RANGE by the job id."""
    digest = int(hashlib.sha1(str(job_id).encode()).hexdigest()[:8], 16)
    return PORT_BASE + digest % PORT_RANGE


def machine_layout(env: Any) -> tuple[int, int, str]:
    """(num_machines, machine_rank, dist_url) of this task: one task per machine, the
    process group's store on machine 0."""
    host = env.hostnames[0] if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" else "127.0.0.1"
    return env.num_tasks, env.global_rank, f"tcp://{host}:{job_port(env.job_id)}"


class _ByValue:
    """A callable carried by cloudpickle: ``main`` of a script arrives in the job by value
    (its module is the job's ``__main__`` there), and the per-machine launch spawns its
    worker processes with the standard pickler, which could not find it by name."""

    def __init__(self, fn: Callable[..., Any]):
        import cloudpickle

        self.data = cloudpickle.dumps(fn)

    def __call__(self, *args: Any) -> Any:
        import cloudpickle

        return cloudpickle.loads(self.data)(*args)


def has_checkpoint(output_dir: str | os.PathLike) -> bool:
    return (Path(output_dir) / "last_checkpoint").is_file()


class TrainJob:
    """``main(args)`` of train_net.py as a checkpointable submitit job (see module doc).

    ``--resume`` is turned on when OUTPUT_DIR already holds a checkpoint: a requeued job
    (pre-empted, timed out) continues from its last checkpoint instead of from zero."""

    def __init__(self, main: Callable[[argparse.Namespace], Any], args: argparse.Namespace):
        self.main = main
        self.args = args

    def task_args(self, env: Any, output_dir: str) -> argparse.Namespace:
        args = copy.copy(self.args)
        args.num_machines, args.machine_rank, args.dist_url = machine_layout(env)
        args.resume = bool(args.resume or has_checkpoint(output_dir))
        args.submit = None
        return args

    def __call__(self) -> Any:
        from nucdet.engine.launch import launch_from_args

        env = job_environment()
        if env is None:
            raise RuntimeError("TrainJob runs inside a submitit job")
        logging.basicConfig(level=logging.INFO, format="[nucdet job %(asctime)s] %(message)s")
        args = self.task_args(env, output_dir_of(self.args.opts))
        logger.info(
            "%s: machine %d of %d, %s, resume=%s",
            env,
            args.machine_rank,
            args.num_machines,
            args.dist_url,
            args.resume,
        )
        launch_from_args(_ByValue(self.main), args)
        return output_dir_of(self.args.opts)

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.main, self.args))


def output_dir_of(opts: Iterable[str]) -> str:
    """The OUTPUT_DIR override among ``KEY VALUE`` opts (a submitted training needs one: the
    requeued job must find its checkpoints)."""
    opts = list(opts)
    values = [v for k, v in zip(opts[0::2], opts[1::2]) if k == "OUTPUT_DIR"]
    if not values:
        raise ClusterError("a submitted training needs OUTPUT_DIR on the command line")
    return values[-1]


def submit_training(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> Any:
    """Submit ``main(args)`` as one job of ``args.cluster_nodes`` machines x ``--num-gpus``
    processes; the submitit files go to ``OUTPUT_DIR/submitit``. Waits for the job unless
    ``--no-wait``; returns the job."""
    output_dir = str(Path(output_dir_of(args.opts)).resolve())
    args = copy.copy(args)
    args.opts = [*args.opts, "OUTPUT_DIR", output_dir]  # the job may start in another folder
    settings = settings_from_args(args, args.submit)
    if args.num_machines not in (1, settings.nodes):
        raise ClusterError(
            f"--num-machines {args.num_machines} with --submit: give the machines as --nodes "
            "(each task of the job finds its rank and the process group's address itself)"
        )
    if settings.gpus_per_node == 0 and args.dist_backend != "gloo" and args.num_gpus > 0:
        settings.gpus_per_node = args.num_gpus  # --num-gpus N: N GPUs on each node
    executor = make_executor(settings, Path(output_dir) / "submitit", "nucdet-train")
    job = executor.submit(TrainJob(main, args))
    logger.info(
        "submitted training job %s (%s, %d machine(s) x %d process(es)); logs: %s",
        job.job_id,
        settings.cluster,
        settings.nodes,
        args.num_gpus,
        job.paths.stdout,
    )
    if not getattr(args, "no_wait", False):
        # A job of several tasks (one per machine) has one result per task: results()
        # waits for them all and raises the first task's error.
        job.results()
        logger.info("training job %s finished: %s", job.job_id, output_dir)
    return job


def add_submit_arguments(ap: argparse.ArgumentParser) -> None:
    """``--submit`` / ``--no-wait`` and the cluster flags of a submitted training."""
    ap.add_argument(
        "--submit",
        choices=CLUSTERS,
        help="run as one submitit job: slurm (sbatch), or local (submitit's local executor, "
        "--nodes machines simulated as processes here); resumes after pre-emption",
    )
    ap.add_argument("--no-wait", action="store_true", help="with --submit: do not wait")
    add_cluster_arguments(ap)


# ---- sharded inference as jobs ----------------------------------------------------------------


class ShardJob:
    """One inference shard (``run(args)`` with ``args.shard`` set) as a submitit job; a
    requeued job resumes from the shard's ``predictions.jsonl``."""

    def __init__(self, run: Callable[[argparse.Namespace], Any], args: argparse.Namespace):
        self.run = run
        self.args = args

    def __call__(self) -> Any:
        return self.run(self.args)

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(ShardJob(self.run, self.args))


def shard_dirs(output: str | os.PathLike, n: int) -> list[Path]:
    """Where the ``n`` shard jobs of an inference submitted into ``output`` write."""
    return [Path(output) / "shards" / f"shard-{i}-of-{n}" for i in range(n)]


def submit_shards(run: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> dict:
    """``infer.py`` / ``ensemble_infer.py --submit slurm|local --tasks N``: N jobs, shard i
    of N each into ``OUTPUT/shards/shard-i-of-N``, then the merge into ``OUTPUT``
    (``nucdet.inference.shards.merge_shards``); returns the merged metrics."""
    from nucdet.inference.shards import merge_shards

    n = int(args.tasks)
    if n < 1:
        raise ClusterError(f"--tasks must be >= 1, got {n}")
    if args.shard is not None:
        raise ClusterError("give --shard or --submit --tasks N, not both")
    settings = settings_from_args(args, args.submit)
    if settings.nodes != 1:
        raise ClusterError("an inference shard is one machine (--nodes 1); use --tasks N")
    output = Path(args.output).resolve()
    dirs = shard_dirs(output, n)
    executor = make_executor(settings, output / "submitit", "nucdet-infer")
    errors: list[str] = []

    def submit(i: int) -> Any:
        a = copy.copy(args)
        a.shard, a.output, a.submit = (i, n), str(dirs[i]), None
        job = executor.submit(ShardJob(run, a))
        logger.info("shard %d/%d: submitted job %s", i, n, job.job_id)
        return job

    def on_done(i: int, result: Any, error: BaseException | None) -> None:
        if error is not None:
            errors.append(f"shard {i}/{n}: {error}")
            logger.error("shard %d/%d failed: %s", i, n, error)
        else:
            logger.info("shard %d/%d done", i, n)

    run_in_waves(list(range(n)), submit, on_done, settings.max_parallel, POLL_S[settings.cluster])
    if errors:
        raise RuntimeError(
            f"{len(errors)} shard job(s) failed (rerun the command: finished images are kept):\n"
            + "\n".join(errors)
        )
    return merge_shards(dirs, output)


def add_shard_submit_arguments(ap: argparse.ArgumentParser) -> None:
    """``--submit`` / ``--tasks`` and the cluster flags of a sharded inference."""
    ap.add_argument(
        "--submit",
        choices=CLUSTERS,
        help="run as --tasks submitit jobs, one shard each, then merge into --output",
    )
    ap.add_argument("--tasks", type=int, default=1, help="with --submit: number of shards")
    add_cluster_arguments(ap, nodes=False)

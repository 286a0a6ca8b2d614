"""Ablation sweeps: train + evaluate every combination of config overrides, one table.

    python -m nucdet.tools.sweep --config-file configs/cpu/mask_rcnn_R_18_FPN_lite_tiny.yaml \
        --grid MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE=64,128 --grid INPUT.AUG.ROT90=True,False \
        --output output/sweeps/roi_rot90 [--dry-run] [--shard 0/2] \
        [--train-args "--num-gpus 2"] [SOLVER.MAX_ITER 300 ...]
    python -m nucdet.tools.sweep --runs benchmarks/sweeps/sample_roi_rot90.yaml --output DIR
    python -m nucdet.tools.sweep merge DIR1 DIR2 ... --output DIR     # merge shard tables
    python -m nucdet.tools.sweep ... --executor slurm --partition gpu --gpus-per-node 1 \
        --time 240 [--account A] [--max-parallel 8]      # one SLURM job per run

Runs are the cartesian product of the ``--grid`` values, crossed with the named runs of a
``--runs`` YAML when one is given (a YAML may also hold ``config_file``, ``opts`` and
``grid``; command-line values are added to / override it). Trailing ``KEY VALUE`` pairs
apply to every run. Each run trains with ``train_net.py`` into ``DIR/runs/<name>`` (the
name is built from the overrides, e.g. ``batch_size_per_image-64__rot90-True``, so it is
stable when the grid grows), and its results are read from the last evaluation in its
``metrics.json`` (detectron2 evaluates after the last iteration when DATASETS.TEST is set);
if there is none, an evaluation-only pass of the final weights (``sweep evaluate RUN_DIR``)
provides them.

Resuming: a run is finished once ``DIR/runs/<name>/sweep_done.json`` exists (written
atomically after its evaluation), and finished runs are never recomputed. A run that was
interrupted restarts with ``--resume`` from its last checkpoint. Restarting a sweep with
other shared overrides than a run was started with is refused (a new --output is needed).

Tables: ``DIR/results.csv`` and ``DIR/results.md`` (``results.shard-<i>-of-<n>.*`` with
``--shard i/n``, which runs every n-th run starting at i), one row per run: index, name,
status, overrides, iterations, wall time, attempts, then the final metrics (MaP-IoU and
COCO AP/AP50/AP75 per task first, per-class metrics after) and the best value of
``SOLVER.BEST_CHECKPOINT.METRIC``. ``merge`` concatenates shard tables (by run index).

Executors (``--executor``): ``local`` (default) runs the runs one after the other in this
process. ``slurm`` submits each run as one submitit job (``nucdet.engine.cluster``: partition,
account, GPUs per node, CPUs, memory, time limit from the flags or a ``cluster:`` section of
the ``--runs`` YAML), waits, logs each run as its job finishes and writes the table from
what finished, as the local runner does. A job that is pre-empted or reaches its time limit
is requeued by submitit and resumes from its last checkpoint (``--resume``), counted as a
new attempt. ``submitit-local`` is the same job path run by submitit's local executor
(subprocesses of this machine), to try a sweep's cluster set-up before submitting it.
Each job's submitit files and logs are in ``DIR/submitit/<job id>/``. A sweep run is one
machine; a multi-node training is ``train_net.py --submit slurm --nodes N``.

The sweep runs training as subprocesses, so it imports neither torch nor detectron2 itself
(except in ``evaluate``), nor submitit unless an executor needs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from nucdet.engine.cluster import ClusterSettings, add_cluster_arguments, settings_from_args
from nucdet.inference.shards import parse_shard
from nucdet.io.atomic import atomic_write_json
from nucdet.tools.report import (
    metric_columns,
    read_table,
    summarize_run,
    write_table,
)

logger = logging.getLogger(__name__)

# What each run starts: ``python -m TRAIN_MODULE`` (the code of train_net.py and of the
# ``nucdet-train`` console script) with the sweep's ``--python``, so the trainer is that
# interpreter's nucdet, installed or not; ``--train-script`` runs a script instead.
TRAIN_MODULE = "nucdet.tools.train_net"
RUNS_SUBDIR = "runs"
SPEC_FILE = "sweep_run.json"  # what the run is (command, overrides) and its attempts
DONE_FILE = "sweep_done.json"  # written atomically when the run is finished: its table row
EVAL_FILE = "sweep_eval.json"  # results of the evaluation-only pass, when one was needed
LOG_FILE = "sweep_train.log"  # stdout/stderr of the run's subprocesses
FIXED_COLUMNS = ("index", "name", "status", "overrides", "iterations", "wall_time_s", "attempts")
MAX_NAME = 120


@dataclasses.dataclass(frozen=True)
class Run:
    """One sweep run: its position in the full sweep, its name and its own overrides."""

    index: int
    name: str
    config_file: str
    overrides: tuple[tuple[str, str], ...]

    @property
    def overrides_text(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.overrides)


# ---- building the run list ------------------------------------------------------------------


def split_values(text: str) -> list[str]:
    """Split ``v1,v2`` at commas outside brackets/quotes: ``(0.8,1.2),(1,1)`` is two values."""
    values, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    values.append("".join(cur).strip())
    if depth != 0 or quote or any(v == "" for v in values):
        raise ValueError(f"cannot split grid values {text!r} (unbalanced brackets or empty value)")
    return values


def parse_grid_arg(item: str) -> tuple[str, list[str]]:
    """``KEY=v1,v2`` -> (KEY, [v1, v2])."""
    key, sep, values = item.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise ValueError(f"--grid expects KEY=v1,v2,..., got {item!r}")
    return key, split_values(values)


def opt_value(value: Any) -> str:
    """A YAML value as the string detectron2's merge_from_list parses back to it."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(repr(v) if isinstance(v, str) else opt_value(v) for v in value) + "]"
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "_"


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Shortest dotted suffix of each key that is unique among ``keys``, lower case."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            clash = [k for k in keys if k != key and k.split(".")[-n:] == parts[-n:]]
            if not clash:
                break
        out[key] = suffix.lower()
    return out


def run_name(prefix: str, overrides: Sequence[tuple[str, str]], short: dict[str, str]) -> str:
    """``prefix__key-value__key-value``; long names are cut and made unique with a hash."""
    parts = ([_slug(prefix)] if prefix else []) + [
        f"{_slug(short[k])}-{_slug(v)}" for k, v in overrides
    ]
    name = "__".join(parts) or "base"
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 10]}__{digest}"
    return name


def load_runs_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A sweep YAML: optional ``config_file``, ``opts`` {KEY: value}, ``grid`` {KEY: [values]}
    and ``runs`` [{name, opts: {KEY: value}, config_file?}]. Relative ``config_file`` paths
    are taken from the current directory, as on the command line."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with config_file/opts/grid/runs")
    unknown = set(data) - {"config_file", "opts", "grid", "runs", "description", "cluster"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}")
    for section in ("opts", "grid"):
        if not isinstance(data.get(section) or {}, dict):
            raise ValueError(f"{path}: '{section}' must be a mapping of config keys")
    if not isinstance(data.get("cluster") or {}, dict):
        raise ValueError(f"{path}: 'cluster' must be a mapping (see nucdet.engine.cluster)")
    for key, values in (data.get("grid") or {}).items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: grid key {key} needs a non-empty list of values")
    runs = data.get("runs") or []
    if not isinstance(runs, list):
        raise ValueError(f"{path}: 'runs' must be a list")
    for i, r in enumerate(runs):
        if not isinstance(r, dict) or not r.get("name"):
            raise ValueError(f"{path}: runs[{i}] needs a 'name'")
        if not isinstance(r.get("opts") or {}, dict):
            raise ValueError(f"{path}: runs[{i}] ({r['name']}): 'opts' must be a mapping")
        extra = set(r) - {"name", "opts", "config_file"}
        if extra:
            raise ValueError(f"{path}: runs[{i}] ({r['name']}): unknown keys {sorted(extra)}")
    return data


def build_runs(
    config_file: str | None,
    grid: Sequence[tuple[str, Sequence[str]]] = (),
    named: Sequence[dict[str, Any]] = (),
) -> list[Run]:
    """Named runs (or one unnamed base run) x the cartesian product of the grid, in order."""
    grid_keys = [k for k, _ in grid]
    if len(set(grid_keys)) != len(grid_keys):
        raise ValueError(f"a grid key is given twice: {grid_keys}")
    named = list(named) or [{"name": "", "opts": {}}]
    all_keys = list(dict.fromkeys(grid_keys + [k for r in named for k in (r.get("opts") or {})]))
    short = short_keys(all_keys)
    runs: list[Run] = []
    seen: dict[str, Run] = {}
    for base in named:
        cfg = base.get("config_file") or config_file
        if not cfg:
            raise ValueError(f"run {base['name'] or 'base'}: no config file (--config-file)")
        base_opts = [(k, opt_value(v)) for k, v in (base.get("opts") or {}).items()]
        for combo in itertools.product(*[[(k, v) for v in vals] for k, vals in grid]):
            name = run_name(base["name"], list(combo), short)
            run = Run(len(runs), name, str(cfg), tuple(base_opts) + tuple(combo))
            if name in seen:
                raise ValueError(
                    f"runs {seen[name].overrides_text!r} and "
                    f"{run.overrides_text!r} get the same name {name!r}"
                )
            seen[name] = run
            runs.append(run)
    return runs


def select_shard(runs: Sequence[Run], shard: tuple[int, int] | None) -> list[Run]:
    if shard is None:
        return list(runs)
    i, n = shard
    return [r for r in runs if r.index % n == i]


# ---- running --------------------------------------------------------------------------------


@dataclasses.dataclass
class SweepSettings:
    """Everything shared by the runs of one sweep."""

    output: Path
    common_opts: tuple[str, ...] = ()
    train_args: tuple[str, ...] = ()
    python: str = sys.executable
    train_script: str | None = None  # None: -m TRAIN_MODULE

    def run_dir(self, run: Run) -> Path:
        return self.output / RUNS_SUBDIR / run.name


def train_command(run: Run, s: SweepSettings, resume: bool) -> list[str]:
    opts = [*s.common_opts, *[x for kv in run.overrides for x in kv]]
    return [
        s.python,
        *([s.train_script] if s.train_script else ["-m", TRAIN_MODULE]),
        "--config-file",
        run.config_file,
        *s.train_args,
        *(["--resume"] if resume else []),
        *opts,
        "OUTPUT_DIR",
        str(s.run_dir(run)),
    ]


def eval_command(run: Run, s: SweepSettings) -> list[str]:
    return [s.python, "-m", "nucdet.tools.sweep", "evaluate", str(s.run_dir(run))]


def _spec(run: Run, s: SweepSettings) -> dict[str, Any]:
    """What identifies a run's work: a restart must match it."""
    return {
        "name": run.name,
        "config_file": run.config_file,
        "overrides": [list(kv) for kv in run.overrides],
        "common_opts": list(s.common_opts),
        "train_args": list(s.train_args),
    }


def is_done(run_dir: Path) -> bool:
    return (run_dir / DONE_FILE).is_file()


def can_resume(run_dir: Path) -> bool:
    return (run_dir / "last_checkpoint").is_file()


def _check_spec(run_dir: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The stored spec/attempt record of ``run_dir``; an error if it describes other work."""
    path = run_dir / SPEC_FILE
    if not path.is_file():
        return {"spec": spec, "attempts": []}
    record = json.loads(path.read_text())
    if record.get("spec") != spec:
        raise ValueError(
            f"{run_dir}: this run was started with other settings ({path}: "
            f"{record.get('spec')}) than now ({spec}); use a new --output or remove the run dir"
        )
    return record


def _tail(path: Path, lines: int = 25) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _run_subprocess(cmd: list[str], log_path: Path) -> int:
    """Run ``cmd`` with output appended to ``log_path``; terminate it if we are interrupted."""
    with open(log_path, "a") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            return proc.wait()
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): do not leave a trainer writing into the run dir.
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise


def _row(run: Run, done: dict[str, Any]) -> dict[str, Any]:
    row = {
        "index": run.index,
        "name": run.name,
        "status": done.get("status", "done"),
        "overrides": run.overrides_text,
        "iterations": done.get("iterations"),
        "wall_time_s": done.get("wall_time_s"),
        "attempts": done.get("attempts"),
    }
    row.update(done.get("metrics", {}))
    best = done.get("best_metric")
    if best and done.get("best"):
        row[f"best:{best}"] = done["best"].get(best)
        row["best_iteration"] = done.get("best_iteration")
    return row


def _where() -> dict[str, Any]:
    """Host, process id and (inside a submitit job) job id of the running attempt."""
    where = {"host": socket.gethostname(), "pid": os.getpid()}
    job_id = os.environ.get("SUBMITIT_LOCAL_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job_id and os.environ.get("SUBMITIT_EXECUTOR"):
        where["job_id"] = job_id
    return where


def run_one(run: Run, s: SweepSettings) -> dict[str, Any]:
    """Train (or resume) and evaluate one run; returns its DONE record. Skips finished runs."""
    run_dir = s.run_dir(run)
    done_path = run_dir / DONE_FILE
    if done_path.is_file():
        return json.loads(done_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = _spec(run, s)
    record = _check_spec(run_dir, spec)
    attempts = record["attempts"]
    if attempts and attempts[-1].get("end") is None:
        # The previous attempt was killed: count its time up to the last thing it wrote.
        written = [
            p.stat().st_mtime
            for p in run_dir.iterdir()
            if p.name not in (SPEC_FILE, LOG_FILE) and p.is_file()
        ]
        attempts[-1]["end"] = max(written, default=attempts[-1]["start"])
        attempts[-1]["killed"] = True
    resume = can_resume(run_dir)
    cmd = train_command(run, s, resume)
    attempts.append({"start": time.time(), "end": None, "resume": resume, **_where()})
    atomic_write_json(run_dir / SPEC_FILE, {"spec": spec, "attempts": attempts}, indent=1)
    logger.info("run %d %s: %s", run.index, run.name, "resuming" if resume else "training")
    rc = _run_subprocess(cmd, run_dir / LOG_FILE)
    if rc != 0:
        attempts[-1]["end"] = time.time()
        attempts[-1]["returncode"] = rc
        atomic_write_json(run_dir / SPEC_FILE, {"spec": spec, "attempts": attempts}, indent=1)
        raise RuntimeError(
            f"run {run.name}: train_net.py exited with {rc}; "
            f"log {run_dir / LOG_FILE}:\n{_tail(run_dir / LOG_FILE)}"
        )
    summary = summarize_run(run_dir)
    metrics = summary["final"]
    if not metrics:
        logger.info("run %s: no evaluation in metrics.json; evaluating the final weights", run.name)
        rc = _run_subprocess(eval_command(run, s), run_dir / LOG_FILE)
        if rc != 0:
            raise RuntimeError(
                f"run {run.name}: evaluation exited with {rc}; "
                f"log {run_dir / LOG_FILE}:\n{_tail(run_dir / LOG_FILE)}"
            )
        metrics = json.loads((run_dir / EVAL_FILE).read_text())
        if not metrics:
            logger.warning("run %s: no evaluation results (DATASETS.TEST empty?)", run.name)
    attempts[-1]["end"] = time.time()
    atomic_write_json(run_dir / SPEC_FILE, {"spec": spec, "attempts": attempts}, indent=1)
    done = {
        "status": "done",
        "iterations": summary["iterations"],
        "wall_time_s": round(sum(a["end"] - a["start"] for a in attempts), 1),
        "attempts": len(attempts),
        "metrics": metrics,
        "best_metric": summary["best_metric"],
        "best": summary["best"],
        "best_iteration": summary["best_iteration"],
        "command": cmd,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_json(done_path, done, indent=1)
    return done


def table_stem(output: Path, shard: tuple[int, int] | None) -> Path:
    if shard is None:
        return output / "results"
    return output / f"results.shard-{shard[0]}-of-{shard[1]}"


def write_results(rows: Sequence[dict[str, Any]], stem: Path, title: str = "") -> None:
    metric_keys = set().union(*(set(r) for r in rows)) - set(FIXED_COLUMNS) if rows else set()
    best_keys = sorted(k for k in metric_keys if k.startswith("best"))
    columns = [*FIXED_COLUMNS, *metric_columns(metric_keys - set(best_keys)), *best_keys]
    write_table(rows, columns, stem, title=title)


def run_sweep(
    runs: Sequence[Run],
    s: SweepSettings,
    shard: tuple[int, int] | None = None,
    title: str = "",
) -> list[dict[str, Any]]:
    """Run this shard's runs in order (finished ones are skipped), rewriting the table after
    each. A failed run is recorded as ``failed`` and the others still run; RuntimeError at
    the end names the failures."""
    mine = select_shard(runs, shard)
    stem = table_stem(s.output, shard)
    rows: dict[int, dict[str, Any]] = {
        r.index: _row(r, json.loads((s.run_dir(r) / DONE_FILE).read_text()))
        for r in mine
        if is_done(s.run_dir(r))
    }
    failures = []
    for k, run in enumerate(mine):
        if run.index in rows:
            logger.info("run %d %s: finished before, skipped", run.index, run.name)
            continue
        logger.info("[%d/%d] run %d: %s", k + 1, len(mine), run.index, run.name)
        try:
            rows[run.index] = _row(run, run_one(run, s))
        except (RuntimeError, OSError, ValueError) as e:
            # One broken run (crash, unreadable outputs, changed settings) must not cost
            # the others: it is reported in the table and in the final error.
            logger.error("run %d %s failed: %s", run.index, run.name, e)
            failures.append(run.name)
            rows[run.index] = _failed_row(run)
        write_results([rows[i] for i in sorted(rows)], stem, title)
    return _finish(rows, failures, stem, title)


def _failed_row(run: Run) -> dict[str, Any]:
    return {
        "index": run.index,
        "name": run.name,
        "status": "failed",
        "overrides": run.overrides_text,
    }


def _finish(
    rows: dict[int, dict[str, Any]], failures: Sequence[str], stem: Path, title: str
) -> list[dict[str, Any]]:
    write_results([rows[i] for i in sorted(rows)], stem, title)
    if failures:
        raise RuntimeError(
            f"{len(failures)} run(s) failed: {', '.join(failures)} "
            f"(see {LOG_FILE} in their run dirs); re-run the sweep to retry them"
        )
    return [rows[i] for i in sorted(rows)]


# ---- one job per run (submitit) ----------------------------------------------------------------

# --executor -> submitit cluster (None: this process runs the runs itself)
EXECUTORS = {"local": None, "slurm": "slurm", "submitit-local": "local"}
JOBS_FILE = "sweep_jobs.json"  # run name -> submitit job id of its latest job


class RunJob:
    """One sweep run as a submitit job. ``checkpoint`` (called by submitit when the job is
    pre-empted or reaches its time limit) hands back the same job: the requeued job's
    ``run_one`` records the interrupted attempt and resumes from the run's last checkpoint."""

    def __init__(self, run: Run, settings: SweepSettings):
        self.run = run
        self.settings = settings

    def __call__(self) -> dict[str, Any]:
        logging.basicConfig(level=logging.INFO, format="[sweep job %(asctime)s] %(message)s")
        return run_one(self.run, self.settings)

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(RunJob(self.run, self.settings))


def _still_running(cluster: ClusterSettings, folder: Path, job_id: str) -> Any | None:
    """The earlier job ``job_id`` of a run when it is still queued or running: a SLURM job to
    wait for; a live local job is an error (its process cannot be re-attached)."""
    if cluster.cluster == "slurm":
        import submitit

        job = submitit.SlurmJob(folder=folder / "%j", job_id=job_id)
        return None if job.done() else job
    try:
        os.kill(int(job_id), 0)  # the local executor's job id is its controller's pid
    except (ProcessLookupError, ValueError):
        return None
    except PermissionError:
        pass
    raise RuntimeError(
        f"local job {job_id} of this sweep is still running (process {job_id}); wait for it "
        "to end or stop it before restarting the sweep"
    )


def submit_sweep(
    runs: Sequence[Run],
    s: SweepSettings,
    cluster: ClusterSettings,
    shard: tuple[int, int] | None = None,
    title: str = "",
) -> list[dict[str, Any]]:
    """``run_sweep`` with one submitit job per unfinished run (``cluster``: where and how),
    at most ``cluster.max_parallel`` at once; the table is rewritten as each job ends. A
    restarted sweep waits for the jobs of its earlier start that are still on the cluster
    instead of submitting the same runs twice."""
    from nucdet.engine.cluster import POLL_S, make_executor, run_in_waves

    if cluster.nodes != 1:
        raise ValueError(
            "a sweep run is one machine (--nodes 1); train one model on several machines with "
            "train_net.py --submit slurm --nodes N"
        )
    mine = select_shard(runs, shard)
    stem = table_stem(s.output, shard)
    folder = s.output / "submitit"
    rows: dict[int, dict[str, Any]] = {
        r.index: _row(r, json.loads((s.run_dir(r) / DONE_FILE).read_text()))
        for r in mine
        if is_done(s.run_dir(r))
    }
    todo = [r for r in mine if r.index not in rows]
    jobs_path = s.output / JOBS_FILE
    job_ids: dict[str, str] = json.loads(jobs_path.read_text()) if jobs_path.is_file() else {}
    earlier = {
        r.name: _still_running(cluster, folder, job_ids[r.name]) for r in todo if r.name in job_ids
    }
    executor = make_executor(cluster, folder, "nucdet-sweep") if todo else None
    failures: list[str] = []
    finished = [0]

    def submit(run: Run) -> Any:
        job = earlier.get(run.name)
        if job is not None:
            logger.info(
                "run %d %s: waiting for its running job %s", run.index, run.name, job.job_id
            )
            return job
        job = executor.submit(RunJob(run, s))
        job_ids[run.name] = str(job.job_id)
        atomic_write_json(jobs_path, job_ids, indent=1)
        logger.info("run %d %s: submitted job %s", run.index, run.name, job.job_id)
        return job

    def on_done(run: Run, done: dict[str, Any] | None, error: BaseException | None) -> None:
        finished[0] += 1
        where = f"[{finished[0]}/{len(todo)} jobs finished] run {run.index} {run.name}"
        if error is None and not isinstance(done, dict):
            error = RuntimeError(f"job returned {done!r} instead of the run's record")
        if error is not None:
            logger.error("%s failed (job %s): %s", where, job_ids.get(run.name), error)
            failures.append(run.name)
            rows[run.index] = _failed_row(run)
        else:
            logger.info("%s: done, %s attempt(s)", where, done.get("attempts"))
            rows[run.index] = _row(run, done)
        write_results([rows[i] for i in sorted(rows)], stem, title)

    for run in mine:
        if run.index in rows:
            logger.info("run %d %s: finished before, skipped", run.index, run.name)
    run_in_waves(todo, submit, on_done, cluster.max_parallel, POLL_S[cluster.cluster])
    return _finish(rows, failures, stem, title)


def merge_tables(dirs: Sequence[str | os.PathLike], output: str | os.PathLike) -> Path:
    """Concatenate the results tables (shard or whole) found in ``dirs`` into
    ``output/results.csv|md``, one row per run index; a run present twice must agree."""
    rows: dict[int, dict[str, str]] = {}
    sources: dict[int, Path] = {}
    columns: list[str] = []
    for d in dirs:
        d = Path(d)
        tables = sorted(d.glob("results.shard-*-of-*.csv")) or sorted(d.glob("results.csv"))
        if not tables:
            raise FileNotFoundError(f"{d}: no results.csv or results.shard-*-of-*.csv")
        for t in tables:
            cols, table_rows = read_table(t)
            columns += [c for c in cols if c not in columns]
            for i, row in enumerate(table_rows):
                try:
                    idx = int(row["index"])
                except (KeyError, ValueError) as e:
                    raise ValueError(f"{t}: row {i + 2} has no valid 'index'") from e
                if idx in rows and rows[idx].get("name") != row.get("name"):
                    raise ValueError(
                        f"{t}: run index {idx} is {row.get('name')!r} but "
                        f"{sources[idx]} has {rows[idx].get('name')!r}"
                    )
                if idx not in rows or rows[idx].get("status") != "done":
                    rows[idx], sources[idx] = row, t
    fixed = [c for c in FIXED_COLUMNS if c in columns]
    rest = [c for c in columns if c not in FIXED_COLUMNS]
    best = [c for c in rest if c.startswith("best")]
    ordered = fixed + metric_columns(set(rest) - set(best)) + best
    out = Path(output)
    typed = [{k: _parse_cell(v) for k, v in rows[i].items()} for i in sorted(rows)]
    write_table(typed, ordered, out / "results")
    return out / "results.csv"


def _parse_cell(value: str) -> Any:
    """CSV cell back to a number where it is one, so the Markdown gets the same format."""
    if value == "":
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


# ---- evaluation-only pass (subprocess) -------------------------------------------------------


def evaluate_run_dir(run_dir: str | os.PathLike) -> dict[str, float]:
    """Evaluate a run's final weights on its DATASETS.TEST as ``train_net.py --eval-only``
    does, and write the flattened results to ``run_dir/sweep_eval.json``."""
    from detectron2.evaluation.testing import flatten_results_dict
    from detectron2.utils.logger import setup_logger

    from nucdet.config import build_cfg
    from nucdet.data.register import register_all
    from nucdet.engine.trainer import Trainer
    from nucdet.io.checkpoint import CheckedCheckpointer

    run_dir = Path(run_dir)
    setup_logger(name="nucdet")
    setup_logger(name="detectron2")
    cfg = build_cfg(run_dir / "config.yaml")
    final = run_dir / "model_final.pth"
    if final.is_file():
        cfg.MODEL.WEIGHTS = str(final)
    elif (run_dir / "last_checkpoint").is_file():
        cfg.MODEL.WEIGHTS = str(run_dir / (run_dir / "last_checkpoint").read_text().strip())
    else:
        raise FileNotFoundError(f"{run_dir}: no model_final.pth or last_checkpoint")
    cfg.freeze()
    register_all(cfg)
    model = Trainer.build_model(cfg)
    CheckedCheckpointer(model, strict=True).load(cfg.MODEL.WEIGHTS)
    results = Trainer.test(cfg, model) if cfg.DATASETS.TEST else {}
    flat = {k: float(v) for k, v in flatten_results_dict(results or {}).items()}
    atomic_write_json(run_dir / EVAL_FILE, flat, indent=1)
    return flat


# ---- command line ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m nucdet.tools.sweep",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
        epilog="Subcommands: `merge DIR... --output DIR` merges shard tables; "
        "`evaluate RUN_DIR` is the evaluation-only pass the sweep runs itself.",
    )
    ap.add_argument("--config-file", help="base config (or config_file in --runs)")
    ap.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=v1,v2",
        help="a grid axis (repeatable); commas inside brackets stay in the value",
    )
    ap.add_argument("--runs", help="YAML with named runs (and optionally config_file/opts/grid)")
    ap.add_argument("--output", required=True, help="sweep folder (runs/ and results tables)")
    ap.add_argument("--dry-run", action="store_true", help="print the runs and commands only")
    ap.add_argument("--shard", help="i/n: run every n-th run, starting at run i")
    ap.add_argument(
        "--train-args", default="", help='extra train_net.py arguments, one string: "--num-gpus 2"'
    )
    ap.add_argument("--python", default=sys.executable, help="interpreter for train_net.py")
    ap.add_argument(
        "--train-script", help=f"script to run instead of python -m {TRAIN_MODULE} (train_net.py)"
    )
    ap.add_argument(
        "--executor",
        choices=sorted(EXECUTORS),
        default="local",
        help="local: runs one after the other here (default); slurm: one submitit job per "
        "run; submitit-local: the slurm job path as subprocesses of this machine",
    )
    add_cluster_arguments(ap)
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    return ap.parse_args(argv)


def _merge_main(argv: Sequence[str]) -> Path:
    ap = argparse.ArgumentParser(
        prog="python -m nucdet.tools.sweep merge",
        description="Merge sweep (shard) tables into one.",
    )
    ap.add_argument("dirs", nargs="+", help="sweep output folders holding results tables")
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    path = merge_tables(args.dirs, args.output)
    logger.info("merged table: %s", path)
    return path


def _sweep_from_args(
    args: argparse.Namespace,
) -> tuple[list[Run], SweepSettings, str, ClusterSettings | None]:
    spec = load_runs_yaml(args.runs) if args.runs else {}
    config_file = args.config_file or spec.get("config_file")
    grid = {k: [opt_value(v) for v in vals] for k, vals in (spec.get("grid") or {}).items()}
    for item in args.grid:
        key, values = parse_grid_arg(item)
        grid[key] = values
    yaml_opts = [x for k, v in (spec.get("opts") or {}).items() for x in (k, opt_value(v))]
    if len(args.opts) % 2:
        raise ValueError(f"overrides must be KEY VALUE pairs, got {args.opts}")
    runs = build_runs(config_file, list(grid.items()), spec.get("runs") or [])
    settings = SweepSettings(
        output=Path(args.output).resolve(),
        common_opts=tuple(yaml_opts + list(args.opts)),
        train_args=tuple(shlex.split(args.train_args)),
        python=args.python,
        train_script=args.train_script,
    )
    cluster = EXECUTORS[args.executor]
    cluster_settings = settings_from_args(args, cluster, spec.get("cluster")) if cluster else None
    return runs, settings, str(spec.get("description") or ""), cluster_settings


def dry_run_text(runs: Sequence[Run], s: SweepSettings, shard: tuple[int, int] | None) -> str:
    mine = select_shard(runs, shard)
    lines = [f"{len(mine)} of {len(runs)} runs -> {s.output}"]
    for run in mine:
        run_dir = s.run_dir(run)
        state = "done" if is_done(run_dir) else ("resume" if can_resume(run_dir) else "todo")
        lines.append(f"[{run.index}] {run.name} ({state}): {run.overrides_text or '-'}")
        lines.append("    " + shlex.join(train_command(run, s, can_resume(run_dir))))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> Any:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="[sweep %(asctime)s] %(message)s", datefmt="%H:%M:%S"
    )
    if argv[:1] == ["merge"]:
        return _merge_main(argv[1:])
    if argv[:1] == ["evaluate"]:
        if len(argv) != 2:
            raise ValueError("usage: python -m nucdet.tools.sweep evaluate RUN_DIR")
        return evaluate_run_dir(argv[1])
    args = parse_args(argv)
    shard = parse_shard(args.shard) if args.shard else None
    runs, settings, title, cluster = _sweep_from_args(args)
    if args.dry_run:
        text = dry_run_text(runs, settings, shard)
        sys.stdout.write(text + "\n")
        return text
    # SIGTERM (kill, a cluster pre-emption) unwinds like Ctrl-C, so the trainer child is
    # stopped too and the run resumes from its checkpoint next time.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    settings.output.mkdir(parents=True, exist_ok=True)
    if cluster is None:
        rows = run_sweep(runs, settings, shard, title=title)
    else:
        rows = submit_sweep(runs, settings, cluster, shard, title=title)
    stem = table_stem(settings.output, shard)
    logger.info("table: %s.csv / .md (%d rows)", stem, len(rows))
    return rows


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise SystemExit(f"sweep: error: {e}") from e
    except KeyboardInterrupt:
        raise SystemExit("sweep: interrupted; re-run the same command to resume") from None

"""Per-item work (one image converted, one image scored) on every core, in input order.

``map_items(f, items, workers)`` is ``[f(x) for x in items]`` computed by ``workers``
processes through ``fastcore.parallel``'s ``ProcessPoolExecutor``; ``workers=0`` runs in
this process, serially, without an executor. Results come back in the order of ``items`` whatever
the number of workers, so a converter or a scorer built on it writes the same JSON and the
same scores serially and in parallel. ``f`` and the items must pickle: a module-level
function, or a ``functools.partial`` of one, with plain data.

On Linux the workers are forks of the caller: nothing is imported again and the caller's
script is not re-run (forkserver and spawn re-run an unguarded ``__main__``), start-up
costs ~0.3 s. The per-item functions run NumPy / pycocotools / image decoding only, never
torch ops, so the caller's torch OpenMP threads (which a forked child must not use) do not
matter. Elsewhere the platform's default start method is used. A handful of items runs
serially (``MIN_ITEMS_PER_WORKER``). An exception raised by ``f`` is raised here for the
first failing item in input order, and the items not started are cancelled.

This is the lowest layer: it imports fastcore and tqdm only.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, TypeVar

from fastcore.parallel import ProcessPoolExecutor
from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")

# Fewer items than this per worker are not worth a worker process (start-up ~0.5 s).
MIN_ITEMS_PER_WORKER = 4


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | None, n_items: int | None = None) -> int:
    """Worker processes to use: ``None`` = every available core, 0 = serial (in this
    process), N = N; never more than ``n_items // MIN_ITEMS_PER_WORKER``, and a single
    worker runs serially (its process would only add start-up time)."""
    if workers is None:
        workers = available_cores()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0 (0 = serial), got {workers!r}")
    if n_items is not None:
        workers = min(workers, n_items // MIN_ITEMS_PER_WORKER)
    return 0 if workers <= 1 else workers


def _raise(e: BaseException) -> None:
    # fastcore's executor prints an exception raised while submitting (a broken pool) and
    # returns None; raise it instead.
    raise e


def map_items(
    f: Callable[[T], R],
    items: Iterable[T],
    workers: int | None = None,
    desc: str | None = None,
) -> list[R]:
    """``[f(x) for x in items]`` on ``resolve_workers(workers)`` processes, in order; a
    tqdm progress bar named ``desc`` (none when ``desc`` is None)."""
    items = list(items)
    n = resolve_workers(workers, len(items))
    bar = partial(tqdm, total=len(items), desc=desc, disable=desc is None)
    if n == 0:  # no executor at all: nothing started, nothing to shut down
        return [f(x) for x in bar(items)]
    kwargs: dict[str, Any] = {"on_exc": _raise}
    if sys.platform == "linux":
        kwargs["mp_context"] = multiprocessing.get_context("fork")
    chunksize = max(1, len(items) // (8 * n))  # a few chunks per worker: balance + cheap
    pool = ProcessPoolExecutor(n, **kwargs)
    try:
        return list(bar(pool.map(f, items, chunksize=chunksize)))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

"""``one_torch_thread()``: run a block with torch single-threaded, then restore.

The training tests use it: on a shared 2-core machine two OpenMP threads made training and
inference 3-8x slower than one (benchmarks/results/engine.md). Not a test module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

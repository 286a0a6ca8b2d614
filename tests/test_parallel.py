"""nucdet.parallel.map_items: the results of the serial and the parallel runs are the same
list, in input order; worker errors surface for the first failing item; bad counts fail."""

from __future__ import annotations

import math

import pytest

from nucdet.parallel import MIN_ITEMS_PER_WORKER, available_cores, map_items, resolve_workers


def _slow_square(x: int) -> int:
    # later items finish first, so a result order that followed completion would show
    return sum(range((50 - x) * 2000)) * 0 + x * x


def test_resolve_workers():
    assert resolve_workers(None) == (available_cores() if available_cores() > 1 else 0)
    assert resolve_workers(0, 1000) == 0
    assert resolve_workers(1, 1000) == 0  # one worker process would only add its start-up
    assert resolve_workers(3, 1000) == 3
    assert resolve_workers(8, 3 * MIN_ITEMS_PER_WORKER) == 3  # no idle workers
    assert resolve_workers(8, MIN_ITEMS_PER_WORKER) == 0  # a handful of items: serial
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="workers must be an integer >= 0"):
            resolve_workers(bad)


def test_parallel_equals_serial_in_input_order():
    items = list(range(40))
    assert resolve_workers(2, len(items)) == 2
    serial = map_items(_slow_square, items, workers=0)
    assert serial == [x * x for x in items]
    assert map_items(_slow_square, items, workers=2) == serial
    assert map_items(_slow_square, [], workers=2) == []


@pytest.mark.parametrize("workers", [0, 2])
def test_first_failing_item_is_raised(workers):
    items = [4.0] * 10 + [-1.0] + [9.0] * 10 + [-4.0]
    with pytest.raises(ValueError, match="math domain error"):
        map_items(math.sqrt, items, workers=workers)

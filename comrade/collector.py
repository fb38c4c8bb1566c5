"""Python's garbage collector in a worker: young collections as CPython runs them, full ones
only when the worker can afford the pause.

A worker keeps every task's record for `--forget-after` (a month by default), about 8 objects
the collector tracks per task. CPython starts a full collection each time those objects have
grown by a quarter, and a full collection scans every one of them while every thread of the
process waits: 1.4 ms per thousand records (`bench.memory`), over a second with a million,
which is longer than a Raft election timeout (0.4-1.2 s), and 10-60 ms several times per
minute in a busy worker of a few thousand tasks. The records hold no reference cycles: over a
run of 12,000 tasks the three workers' collections found cyclic garbage only while they started
(2026-11-24, `gc.callbacks` in each worker). So a worker turns CPython's automatic full
collections off (`take_over`), and its ticker runs one itself (`FullCollections.maybe`): while
it runs no task, or at least every FULL_EVERY_S, and only while the queue is small enough for
the pause to stay well under the election timeout. Cyclic garbage that outlives two young
collections waits for the next full collection: with a queue larger than FULL_MAX_RECORDS,
until it is smaller again (`--forget-after`).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: A third threshold CPython never reaches: it counts young (generation 1) collections, and
#: starts a full collection only after this many.
NEVER = 2**31 - 1  # (the most it takes: a C int)
#: The most task records a full collection is run with: about 0.2 s at 1.4 ms per thousand,
#: half the shortest Raft election timeout.
FULL_MAX_RECORDS = 150_000
#: A worker that never runs out of tasks still has a full collection this often (seconds).
FULL_EVERY_S = 3600.0
#: A full collection taking longer than this is logged (seconds).
SLOW_S = 0.1

_taken_over = False


def take_over() -> None:
    """Keep CPython's young collections and stop its automatic full ones (a worker's process,
    once, at start): `FullCollections` runs them from then on."""
    global _taken_over
    young, older, _ = gc.get_threshold()
    gc.set_threshold(young, older, NEVER)
    _taken_over = True


def taken_over() -> bool:
    """Whether this process's full collections are left to `FullCollections`."""
    return _taken_over


class FullCollections:
    """When a worker runs a full collection itself (see the module's docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 collect: Callable[[], object] = gc.collect) -> None:
        self.clock = clock
        self.collect = collect
        self.last = clock()

    def due(self, records: int, idle: bool) -> bool:
        """Whether a full collection is to run now, with `records` task records in the queue
        and the worker running no task (`idle`) or not."""
        if records > FULL_MAX_RECORDS:
            return False
        return idle or self.clock() - self.last >= FULL_EVERY_S

    def maybe(self, records: int, idle: bool) -> bool:
        """Run a full collection if this process took them over and one is due; True if it ran."""
        if not taken_over() or not self.due(records, idle):
            return False
        started = self.clock()
        self.collect()
        self.last = self.clock()
        took = self.last - started
        if took > SLOW_S:
            log.info("full garbage collection with %d task records took %.2f s", records, took)
        return True

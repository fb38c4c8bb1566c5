"""What tasks waiting on other tasks cost the replicated queue when those others end. Pure: no
cluster, no I/O beyond printing.

    .venv/bin/python -m bench.dependencies [--waiting N ...] [--ends M]

For each N: N root tasks and N dependents (`queue:after_ok rI`) are submitted, plus one task
with `queue:all_with_cmd_ok ^x`; then M roots are claimed and finished in batches of 20
through `Queue.apply_batch`, as Raft entries would carry them, first with exit 0, then (on a
fresh queue) with exit 1, each failure failing its dependent. Prints the apply time per ended
root: what every replica's Raft thread spends, whatever N is once settling is incremental (it
was about N x 0.25 us per ended task when every waiting task was checked after every end).
Then one scheduling pass (`scheduler.plan`, what a node's actor runs after each applied entry
with cores free) over N tasks that all wait on one running task.
"""

from __future__ import annotations

import argparse
import platform
import time

from comrade import scheduler
from comrade.model import NodeInfo, Outcome, Resources, TaskSpec
from comrade.queue import Queue

GiB = 1024**3
BATCH = 20


def spec(task_id: str, conditions: str = "", command: str = "true") -> TaskSpec:
    return TaskSpec(task_id, 0, 1, 0, True, conditions, (), command)


def per_end_us(waiting: int, ends: int, code: int) -> float:
    """Microseconds of `apply_batch` per root claimed and ended with exit `code`."""
    q = Queue()
    q.apply_batch([("join", NodeInfo("n1", "worker", "h:1", "h:2", Resources(64 * GiB, 64, 64 * GiB)))],
                  0.0)
    q.apply_batch([("submit", spec(f"r{i}")) for i in range(waiting)], 0.0)
    q.apply_batch([("submit", spec(f"d{i}", f"queue:after_ok r{i}")) for i in range(waiting)]
                  + [("submit", spec("pattern", "queue:all_with_cmd_ok ^x"))], 0.0)
    started = time.perf_counter()
    for first in range(0, ends, BATCH):
        ids = [f"r{i}" for i in range(first, min(ends, first + BATCH))]
        q.apply_batch([("claim", t, "n1", 1) for t in ids], 1.0)
        q.apply_batch([("finish", t, "n1", 1, Outcome(code, 1.0, 2.0)) for t in ids], 2.0)
    took = time.perf_counter() - started
    if code and any(q.tasks[f"d{i}"].state.value != "failed" for i in range(ends)):
        raise RuntimeError("a dependent of a failed root did not fail")
    return took / ends * 1e6


def plan_ms(waiting: int, passes: int = 10) -> float:
    """Milliseconds of one `scheduler.plan` pass with `waiting` tasks waiting on a running one."""
    q = Queue()
    q.apply_batch([("join", NodeInfo("n1", "worker", "h:1", "h:2", Resources(64 * GiB, 64, 64 * GiB)))],
                  0.0)
    q.apply_batch([("submit", spec("root"))], 0.0)
    q.apply_batch([("submit", spec(f"d{i}", "queue:after_ok root")) for i in range(waiting)], 0.0)
    q.apply_batch([("claim", "root", "n1", 1)], 1.0)
    local = scheduler.LocalFacts(frozenset(), lambda name: False)
    started = time.perf_counter()
    for _ in range(passes):
        claims, _ = scheduler.plan(q, "n1", Resources(GiB, 8, GiB), local, lambda task_id: 10.0)
        if claims:
            raise RuntimeError("a waiting task was claimed")
    return (time.perf_counter() - started) / passes * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dependencies", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--waiting", type=int, nargs="+", default=[1_000, 10_000, 50_000],
                    help="tasks waiting, each on its own root (several values: one run each)")
    ap.add_argument("--ends", type=int, default=1_000, help="roots ended per run")
    args = ap.parse_args()
    if args.ends < 1 or min(args.waiting) < args.ends:
        ap.error("--ends must be at least 1 and at most every --waiting value")
    print(f"date: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; python {platform.python_version()}")
    for n in args.waiting:
        ok, failed = per_end_us(n, args.ends, 0), per_end_us(n, args.ends, 1)
        print(f"{n} tasks waiting: {ok:.0f} us per root ending with exit 0, "
              f"{failed:.0f} us per root failing (its dependent failing too); "
              f"a scheduling pass {plan_ms(n):.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

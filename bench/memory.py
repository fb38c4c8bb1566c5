"""What finished tasks cost in the replicated queue: memory and snapshot bytes per task, and
the output-tails budget at work. Pure: no cluster, no I/O beyond printing.

    .venv/bin/python -m bench.memory [--tasks N] [--tail-tasks M]

1. N `true` tasks (short command, empty output) are submitted, claimed and finished through
   `Queue.apply_batch` as the Raft log would apply them; prints the memory they hold (Python
   allocations, tracemalloc) and their share of a pickled snapshot, per task.
2. M tasks that each print 64 KiB to stdout and to stderr (the most a record keeps): prints the
   tail bytes the queue holds at the end against the budget, and how many records lost theirs.
3. The leader's forgetting: `forgettable` + `forget` of every finished task, and what is left.

After step 1 it also prints the objects Python's garbage collector tracks per finished task and
how long a full collection takes with them: the collector runs one whenever the objects it
tracks have grown by a quarter, and a node's threads all wait for it.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import platform
import time
import tracemalloc

from comrade.model import TAIL_BYTES, TAILS_BUDGET, NodeInfo, Outcome, Resources, TaskSpec
from comrade.queue import Queue

GiB = 1024**3


def run(q: Queue, n: int, prefix: str, tail: bytes) -> None:
    """Submit, claim and finish N tasks in batches of 100, as entries would carry them."""
    for start in range(0, n, 100):
        ids = [f"{prefix}{i}" for i in range(start, min(n, start + 100))]
        q.apply_batch([("submit", TaskSpec(t, 1024, 1, 1024, True, "", (), "true")) for t in ids], 1.0)
        q.apply_batch([("claim", t, "n1", 1) for t in ids], 2.0)
        q.apply_batch([("finish", t, "n1", 1, Outcome(0, 2.0, 3.0, tail, tail, len(tail), len(tail)))
                       for t in ids], 3.0)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000, help="trivial finished tasks")
    ap.add_argument("--tail-tasks", type=int, default=2_000, help="tasks with 2 x 64 KiB of tails")
    args = ap.parse_args()
    if args.tasks < 1 or args.tail_tasks < 0:
        ap.error("--tasks must be at least 1 and --tail-tasks 0 or more")
    q = Queue()
    q.apply_batch([("join", NodeInfo("n1", "worker", "h:1", "h:2", Resources(64 * GiB, 64, 64 * GiB)))], 0.0)
    gc.collect()
    tracked = len(gc.get_objects())
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    run(q, args.tasks, "t", b"")
    took = time.perf_counter() - t0
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    snap = len(pickle.dumps(q.snapshot()))
    print(f"date: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; python {platform.python_version()}")
    print(f"{args.tasks} finished `true` tasks: {held / args.tasks:.0f} B of memory and "
          f"{snap / args.tasks:.0f} B of snapshot per task (one replica; every worker holds one); "
          f"applied at {3 * args.tasks / took:,.0f} operations/s")
    tracked = len(gc.get_objects()) - tracked
    pauses = []
    for _ in range(3):
        t0 = time.perf_counter()
        gc.collect()
        pauses.append(time.perf_counter() - t0)
    print(f"the garbage collector tracks {tracked / args.tasks:.1f} objects per finished task; a "
          f"full collection takes {1000 * min(pauses):.0f} ms with them (best of 3)")
    if args.tail_tasks:
        run(q, args.tail_tasks, "big", b"x" * TAIL_BYTES)
        big = [q.tasks[f"big{i}"].outcome for i in range(args.tail_tasks)]
        dropped = sum(1 for o in big if o is not None and o.tails_dropped)
        kept = sum(len(o.stdout_tail) + len(o.stderr_tail) for o in big if o is not None)
        print(f"{args.tail_tasks} tasks with 64 KiB of stdout and of stderr: the queue keeps "
              f"{kept / 2**20:.1f} MiB of tails (budget {TAILS_BUDGET / 2**20:.0f} MiB; without it "
              f"{args.tail_tasks * 2 * TAIL_BYTES / 2**20:.0f} MiB); {dropped} oldest records "
              f"dropped theirs")
    t0 = time.perf_counter()
    old = q.forgettable(10.0)
    reply = q.apply(("forget", old), 20.0)
    print(f"forgetting every finished task: {reply.detail} in {time.perf_counter() - t0:.2f} s; "
          f"{len(q.tasks)} records left, snapshot {len(pickle.dumps(q.snapshot()))} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Memory over a long run: do the workers keep a flat footprint while tasks keep coming?

    .venv/bin/python -m bench.soak [--batches K] [--tasks N] [--forget-after S] [--time-limit S]

Starts 3 workers on 127.0.0.1 with `--forget-after S --gc-every 1`, then K times runs N `true`
tasks through the shell functions (`leoronic_add_tasks_from_file` and `leoronic_wait`), and
after each batch prints each worker's resident memory (RSS, psutil) and the records the queue
holds. The first batches grow the queue; once records older than S seconds are forgotten the
queue, and a leak-free worker's memory, level off. At the end it waits for every record to be
forgotten and prints the memory again. Bounded by --time-limit (default 900 s); the cluster is
always stopped by PID.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence

from bench.common import Bench, BenchParser, log, queue_counts, rss_mb, run_tasks_file
from tests.cluster import Cluster, start_cluster


def rss(cluster: Cluster) -> list[float]:
    """Resident memory of each worker's python process, MB."""
    return [rss_mb(node)[0] for node in cluster.nodes]


def main(argv: Sequence[str] | None = None) -> int:
    ap = BenchParser("python -m bench.soak", __doc__)
    ap.add_argument("--batches", type=int, default=10, help="batches of tasks")
    ap.add_argument("--tasks", type=int, default=5000, help="tasks per batch")
    ap.add_argument("--forget-after", type=int, default=20, help="workers' --forget-after, s")
    ap.add_time_limit(900.0)
    ap.add_keep()
    args = ap.parse_positive(argv, "--batches", "--tasks", "--forget-after")
    root = tempfile.mkdtemp(prefix="leoronic-bench-soak-")
    bench = Bench(args.time_limit, root, args.keep)
    rows: list[tuple[str, int, list[float]]] = []
    with bench:
        opts = ["--forget-after", str(args.forget_after), "--gc-every", "1"]
        cluster = bench.stop_on_exit(start_cluster(os.path.join(root, "cluster"), 3, [opts] * 3))
        rows.append(("idle", 0, rss(cluster)))
        log(f"idle: RSS {rows[-1][2]}")
        for k in range(args.batches):
            run = run_tasks_file(cluster, f"b{k}", f"b{k}-", args.tasks, bench.deadline,
                                 (600, 120), lambda: None)
            states, _ = queue_counts(cluster, "", bench.deadline, 120)
            rows.append((f"after batch {k + 1} ({args.tasks / run.wall_s:.0f} tasks/s)",
                         sum(states.values()), rss(cluster)))
            log(f"{rows[-1][0]}: {rows[-1][1]} records; RSS {[f'{m:.1f}' for m in rows[-1][2]]}")
        deadline = time.monotonic() + args.forget_after + 30
        while time.monotonic() < bench.deadline.end - 10 and time.monotonic() < deadline:
            states, _ = queue_counts(cluster, "", bench.deadline, 120)
            if not sum(states.values()):
                break
            time.sleep(1.0)  # pacing of a poll on the records left (bounded by the deadline)
        rows.append(("all forgotten", sum(states.values()), rss(cluster)))
    bench.print_figures_header(f"python: {platform.python_version()}; {args.batches} batches of "
                               f"{args.tasks} tasks; --forget-after {args.forget_after}")
    for what, records, mem in rows:
        print(f"{what}: {records} records; worker RSS " + ", ".join(f"{m:.1f}" for m in mem) + " MB")
    return bench.rc


if __name__ == "__main__":
    sys.exit(main())

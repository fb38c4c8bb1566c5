"""Tasks in stages, each waiting for two tasks of the stage before, through the CLI: what the
dependencies cost end to end, against the same number of tasks without any.

    .venv/bin/python -m bench.dag [--stages S] [--width W] [--nodes N] [--check K]
                                  [--time-limit S] [--keep]

1. Starts N (3) workers on 127.0.0.1 (tests/cluster.py; always stopped by PID at the end).
2. Flat: S x W `true` tasks without conditions, timed as `leoronic_add_tasks_from_file FILE
   && leoronic_wait` through the shell functions a user types.
3. DAG: S x W `true` tasks where task i of stage k > 0 waits for tasks i and i+1 (mod W) of
   stage k-1 (`queue:after_ok A;queue:after_ok B`), written stage after stage in one file
   and timed the same way: every stage but the first is queued and waiting when it starts.
4. Checks, from the replicated records of K (200) random tasks of later stages, that each
   started after both its parents ended, and that every task of both runs is done.
5. Prints both rates, the DAG's time over the flat one's, the submit phase of each, and the
   CPU of the nodes per task.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from collections.abc import Sequence

from bench.common import Bench, BenchParser, FileRun, cpu_pairs_delta, log, process_cpu, run_tasks_file
from tests.cluster import Cluster, start_cluster


def dag_lines(prefix: str, stages: int, width: int) -> list[str]:
    """The DAG's tasks file, stage after stage."""
    lines = []
    for k in range(stages):
        for i in range(width):
            conds = "" if k == 0 else (f"queue:after_ok {prefix}{k - 1}-{i};"
                                      f"queue:after_ok {prefix}{k - 1}-{(i + 1) % width}")
            lines.append(f'1024 1 1024 true "{conds}" "" true {prefix}{k}-{i}')
    return lines


def nodes_cpu(cluster: Cluster) -> float:
    """CPU seconds of every node process so far (not their tasks)."""
    return sum(process_cpu(n.proc.pid)[0] for n in cluster.nodes if n.proc is not None)


def timed(cluster: Cluster, name: str, ids: str, n: int, bench: Bench,
          lines: Sequence[str] = ()) -> tuple[FileRun[dict[str, tuple[float, float]]], float]:
    """One run of a tasks file; (the run, CPU s of the nodes during it). RuntimeError unless
    every task ended done."""
    def sample() -> dict[str, tuple[float, float]]:
        return {"nodes": (nodes_cpu(cluster), 0.0)}

    run = run_tasks_file(cluster, name, ids, n, bench.deadline, (600, 120), sample, lines=lines)
    if run.states.get("done", 0) != n:
        raise RuntimeError(f"{name}: not every task is done: {dict(run.states)}")
    return run, cpu_pairs_delta(run.before, run.after)["nodes"][0]


def check_order(cluster: Cluster, prefix: str, stages: int, width: int, k: int) -> int:
    """Check that K random tasks of stages > 0 started after both parents ended; returns K."""
    rng = random.Random(1)
    client = cluster.client()
    try:
        for _ in range(k):
            s, i = rng.randrange(1, stages), rng.randrange(width)
            t = client.call("task", f"{prefix}{s}-{i}", retry_s=5)
            for parent in (f"{prefix}{s - 1}-{i}", f"{prefix}{s - 1}-{(i + 1) % width}"):
                p = client.call("task", parent, retry_s=5)
                if t.outcome is None or p.outcome is None or t.outcome.start < p.outcome.end:
                    raise RuntimeError(f"{t.spec.task_id} started before {parent} ended")
    finally:
        client.close()
    return k


def main(argv: Sequence[str] | None = None) -> int:
    ap = BenchParser("python -m bench.dag", __doc__)
    ap.add_argument("--stages", type=int, default=10, help="stages (default 10)")
    ap.add_argument("--width", type=int, default=1000, help="tasks per stage (default 1000)")
    ap.add_argument("--nodes", type=int, default=3, help="workers (default 3)")
    ap.add_argument("--check", type=int, default=200, help="tasks whose order is checked")
    ap.add_time_limit(900.0)
    ap.add_keep()
    args = ap.parse_positive(argv, "--stages", "--width", "--nodes")
    if args.stages < 2 or args.width < 2:
        ap.error("--stages and --width must be at least 2")
    n = args.stages * args.width
    root = tempfile.mkdtemp(prefix="leoronic-bench-dag-")
    figures: list[str] = []
    with Bench(args.time_limit, root, args.keep) as bench:
        log(f"starting {args.nodes} workers")
        cluster = bench.stop_on_exit(start_cluster(os.path.join(root, "c"), args.nodes))
        log(f"flat: {n} tasks without conditions")
        flat, flat_cpu = timed(cluster, "flat", "f-", n, bench)
        log(f"  {flat.wall_s:.2f} s ({n / flat.wall_s:.0f} tasks/s), submit {flat.submit_s:.2f} s")
        log(f"dag: {args.stages} stages of {args.width}, each task after two of the stage before")
        dag, dag_cpu = timed(cluster, "dag", "d", n, bench,
                             dag_lines("d", args.stages, args.width))
        log(f"  {dag.wall_s:.2f} s ({n / dag.wall_s:.0f} tasks/s), submit {dag.submit_s:.2f} s")
        checked = check_order(cluster, "d", args.stages, args.width, args.check)
        log(f"  {checked} random tasks started after both their parents ended")
        figures += [
            f"flat: {n} tasks in {flat.wall_s:.2f} s = {n / flat.wall_s:.0f} tasks/s (submit "
            f"{flat.submit_s:.2f} s); nodes' CPU {1000 * flat_cpu / n:.2f} ms per task",
            f"dag: {args.stages} x {args.width} tasks in {dag.wall_s:.2f} s = "
            f"{n / dag.wall_s:.0f} tasks/s (submit {dag.submit_s:.2f} s); nodes' CPU "
            f"{1000 * dag_cpu / n:.2f} ms per task; {dag.wall_s / flat.wall_s:.2f} x the flat "
            f"run's time; order checked on {checked} tasks",
        ]
    bench.print_figures(figures, f"workers: {args.nodes}")
    return bench.rc


if __name__ == "__main__":
    sys.exit(main())

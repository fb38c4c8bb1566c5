"""How long one `leoronic` command takes, start to exit, as a user's shell runs it.

    .venv/bin/python -m bench.cli [--runs N] [--time-limit S] [--keep]

1. `leoronic task-format` N times through `bash leoronic` (no network: the install check,
   Python's start-up, the imports and the exit).
2. Starts a one-node cluster on 127.0.0.1 (tests/cluster.py; stopped by PID at the end) and
   runs `leoronic_add_task 1024 1 1024 true "" "" true` N times through the shell functions
   (`source leoronic_utilities.sh` once, then one call per task, as a loop in a user's
   script), then `leoronic_get_queue --summary` N times.
3. For scale: `python -c pass` with the project's interpreter, and `import comrade.cli`
   (each N times).

Every figure is wall-clock milliseconds per command (median and p90 of N, each timed by
bash's own clock, EPOCHREALTIME, around the command inside one bash script, so bash's own
start is not counted), plus the CPU of the commands (not the node's) per command.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from bench.common import Bench, BenchParser, log
from tests.cluster import REPO, UTILITIES, Cluster, start_cluster

PY = os.path.join(REPO, ".venv", "bin", "python")


def timed_loop(cluster: Cluster | None, command: str, runs: int, deadline_s: float) -> list[float]:
    """Milliseconds of each of `runs` runs of `command` (a bash line) in one bash script with
    the shell functions sourced; RuntimeError if any exits non-zero."""
    script = (
        f"for i in $(seq {runs}); do t0=${{EPOCHREALTIME/[.,]/}}; {command} >/dev/null || exit $?; "
        't1=${EPOCHREALTIME/[.,]/}; echo "T $((t1 - t0))"; done\n'
    )
    if cluster is None:
        full = f"source {UTILITIES}\n{script}"
        p = subprocess.run(["bash", "-c", full], capture_output=True, text=True, timeout=deadline_s)
        rc, out, err = p.returncode, p.stdout, p.stderr
    else:
        r = cluster.sh(script, timeout=deadline_s)
        rc, out, err = r.rc, r.out, r.err
    if rc != 0:
        raise RuntimeError(f"{command!r} failed (rc {rc}): {err.strip()[-300:]}")
    return [int(line.split()[1]) / 1e3 for line in out.splitlines() if line.startswith("T ")]


def describe(name: str, ms: list[float]) -> str:
    s = sorted(ms)
    p90 = s[min(len(s) - 1, int(len(s) * 0.9))]
    return f"{name}: median {statistics.median(s):.1f} ms, p90 {p90:.1f} ms ({len(s)} runs)"


def children_cpu() -> float:
    r = os.times()
    return r.children_user + r.children_system


def main(argv: Sequence[str] | None = None) -> int:
    ap = BenchParser("python -m bench.cli", __doc__)
    ap.add_argument("--runs", type=int, default=50, help="runs of each command")
    ap.add_time_limit(300)
    ap.add_keep()
    args = ap.parse_positive(argv, "--runs")
    root = tempfile.mkdtemp(prefix="leoronic-bench-cli-")
    figures: list[str] = []
    with Bench(args.time_limit, root, args.keep) as bench:
        n = args.runs
        for name, command, cluster in (
            ("python -c pass", f"{PY} -c pass", None),
            ("python -c 'import comrade.cli'", f"{PY} -c 'import comrade.cli'", None),
            ("leoronic task-format", "leoronic_task_format", None),
        ):
            cpu0 = children_cpu()
            ms = timed_loop(cluster, command, n, bench.deadline.left(120))
            figures.append(describe(name, ms) + f"; CPU {1000 * (children_cpu() - cpu0) / n:.1f} ms")
            log(figures[-1])
        log("starting a one-node cluster")
        one = bench.stop_on_exit(start_cluster(os.path.join(root, "c"), 1))
        for name, command in (
            ("leoronic_add_task (one node)", 'leoronic_add_task 1024 1 1024 true "" "" true'),
            ("leoronic_get_queue --summary (one node)", "leoronic_get_queue --summary"),
        ):
            cpu0 = children_cpu()
            ms = timed_loop(one, command, n, bench.deadline.left(120))
            figures.append(describe(name, ms) + f"; CPU {1000 * (children_cpu() - cpu0) / n:.1f} ms "
                           "(the command's, not the node's)")
            log(figures[-1])
    bench.print_figures(figures)
    return bench.rc


if __name__ == "__main__":
    sys.exit(main())

"""What starting and reaping one task costs a node: the executor alone, in this process.

    .venv/bin/python -m bench.executor [--tasks N] [--parallel P] [--dir DIR]

Runs N `true` tasks through `comrade.executor.Executor` (the real one: work dir, output files,
posix_spawn of `bash -c`, pidfd reaping, outcome read back), at most P at a time, in a fresh
home under DIR (default: the system temp dir), then prints per task: wall time, CPU of this
process (the executor's share of a node) and CPU of the task processes (bash itself). No Raft,
no network: the figure the throughput benchmark cannot isolate. Then the same spawns without
Leoronic (a loop of `os.posix_spawn` + `waitpid` with output to /dev/null) for scale.

Everything is bounded: each run must finish within 120 s, and the executor is stopped (its
tasks killed) and the home removed whatever happens.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import threading
import time

from comrade.executor import Executor, Paths
from comrade.model import Outcome, TaskSpec


def cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def through_executor(home: str, n: int, parallel: int) -> tuple[float, float, float]:
    """(wall, own CPU, children's CPU) in seconds for N tasks through the executor."""
    paths = Paths(home)
    for d in (paths.work, paths.outputs):
        os.makedirs(d, exist_ok=True)
    slots = threading.Semaphore(parallel)
    done = threading.Event()
    ended: list[Outcome] = []
    problems: list[str] = []

    def report(task_id: str, attempt: int, outcome: Outcome) -> None:
        ended.append(outcome)
        slots.release()
        if len(ended) == n:
            done.set()

    def crashed(task_id: str, attempt: int, reason: str) -> None:
        problems.append(f"{task_id}: {reason}")
        done.set()

    cwd = os.getcwd()
    ex = Executor("bench", paths, lambda spec, workdir: spec.command, time.time)
    try:
        own0, kids0, t0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
        for i in range(n):
            if not slots.acquire(timeout=120) or problems:
                break
            ex.start(TaskSpec(f"t{i}", 1024, 1, 1024, True, "", (), "true"), 1, report, crashed)
        if not done.wait(120) or problems or len(ended) != n:
            raise RuntimeError(f"executor run incomplete: {len(ended)}/{n} ended; {problems[:3]}")
        wall = time.perf_counter() - t0
        own, kids = cpu(resource.RUSAGE_SELF) - own0, cpu(resource.RUSAGE_CHILDREN) - kids0
    finally:
        ex.stop()
        os.chdir(cwd)
    if any(o.exit_code != 0 for o in ended):
        raise RuntimeError("a `true` task did not exit 0")
    return wall, own, kids


def bare_spawns(n: int) -> tuple[float, float, float]:
    """(wall, own CPU, children's CPU) for N sequential posix_spawn + waitpid of `bash -c true`."""
    bash = shutil.which("bash") or "/bin/bash"
    null = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    own0, kids0, t0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    deadline = time.monotonic() + 120
    for _ in range(n):
        pid = os.posix_spawn(bash, ["bash", "-c", "true"], dict(os.environ), file_actions=null)
        os.waitpid(pid, 0)
        if time.monotonic() > deadline:
            raise RuntimeError("bare spawns took over 120 s")
    return (time.perf_counter() - t0, cpu(resource.RUSAGE_SELF) - own0,
            cpu(resource.RUSAGE_CHILDREN) - kids0)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.executor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1000, help="tasks per run")
    ap.add_argument("--parallel", type=int, default=4, help="tasks running at once")
    ap.add_argument("--dir", default=None, help="where the temporary home goes")
    args = ap.parse_args()
    if args.tasks < 1 or args.parallel < 1:
        ap.error("--tasks and --parallel must be at least 1")
    home = tempfile.mkdtemp(prefix="leoronic-bench-executor-", dir=args.dir)
    try:
        wall, own, kids = through_executor(home, args.tasks, args.parallel)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    bwall, bown, bkids = bare_spawns(args.tasks)
    n, ms = args.tasks, 1000.0
    print(f"date: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; cores: {os.cpu_count()}; "
          f"python {platform.python_version()}; home on {args.dir or tempfile.gettempdir()}")
    print(f"executor, {n} `true` tasks, {args.parallel} at a time: wall {wall / n * ms:.3f} ms/task; "
          f"CPU of the executor {own / n * ms:.3f} ms/task, of the tasks {kids / n * ms:.3f} ms/task")
    print(f"bare posix_spawn + waitpid, output to /dev/null, one at a time: wall "
          f"{bwall / n * ms:.3f} ms/task; CPU of this process {bown / n * ms:.3f} ms/task, "
          f"of the tasks {bkids / n * ms:.3f} ms/task")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

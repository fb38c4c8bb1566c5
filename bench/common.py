"""What the benchmarks share: the global time limit, cleanup of leftover processes, logging, a
timed run of a tasks file through the shell functions a user types, the task queue as
`leoronic_get_queue` shows it, and CPU accounting of node processes.

Units: durations and time limits in seconds (float), CPU time in CPU seconds (user + system),
wall-clock instants in seconds since the epoch.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import platform
import shlex
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Generic, TypeVar

import psutil

from tests.cluster import Cluster, NodeProc

PR_SET_CHILD_SUBREAPER = 36
NAN = float("nan")

S = TypeVar("S")
CpuPair = tuple[float, float]
"""(own CPU s, CPU s of its task processes) of one node process."""


class Overtime(Exception):
    """The global time limit was reached."""


def on_alarm(signum: int, frame: FrameType | None) -> None:
    """Signal handler (SIGALRM, SIGTERM): end the run by raising Overtime."""
    raise Overtime(f"global time limit reached (signal {signum})")


class Deadline:
    """The global time budget, in seconds from its creation (monotonic clock)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, cap: float | None = None, margin: float = 5.0) -> float:
        """Seconds left before the limit less `margin` s, at most `cap` s; Overtime if none."""
        left = self.end - time.monotonic() - margin
        if left <= 0:
            raise Overtime("global time limit reached")
        return left if cap is None else min(cap, left)


def become_subreaper() -> bool:
    """Orphaned descendants (e.g. tasks of a killed node) are re-parented to us, not init."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def kill_leftovers() -> int:
    """SIGKILL and reap every descendant still alive (waiting up to 5 s); returns how many."""
    left = psutil.Process().children(recursive=True)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=5)
    while True:  # reap re-parented orphans (we are their subreaper)
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    return len(left)


def log(msg: str) -> None:
    """Print `msg` after the local time of day (HH:MM:SS), flushed."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class BenchParser(argparse.ArgumentParser):
    """The command line of a benchmark; its description is the first line of `doc`."""

    def __init__(self, prog: str, doc: str | None) -> None:
        super().__init__(prog=prog, description=(doc or "").split("\n")[0])

    def add_time_limit(self, default: float) -> None:
        """--time-limit S: the global limit, seconds."""
        self.add_argument("--time-limit", type=float, default=default, help="global limit, seconds")

    def add_keep(self) -> None:
        """--keep: keep the temp dir (node logs)."""
        self.add_argument("--keep", action="store_true", help="keep the temp dir (node logs)")

    def parse_positive(self, argv: Sequence[str] | None, *options: str) -> argparse.Namespace:
        """parse_args(argv); a usage error (exit 2) unless each of `options` is at least 1."""
        args = self.parse_args(argv)
        if any(getattr(args, o.lstrip("-").replace("-", "_")) < 1 for o in options):
            self.error(" and ".join(options) + " must be at least 1")
        return args


class Bench:
    """One benchmark run, bounded by a global time limit and always cleaned up.

    Creating it starts the limit (`time_limit` s: a Deadline for each wait, and a SIGALRM one
    second after it, as SIGTERM, raises Overtime), makes this process a child subreaper and
    notes the load average (`load0`: os.getloadavg(), processes in the run queue).
    Used as a context manager around the measurements: Overtime is logged as ABORTED (rc 3),
    any other Exception as FAILED (rc 1), and neither propagates, so the figures can still be
    printed; on the way out the alarm is cancelled, registered clusters are stopped, leftover
    processes killed and reaped, and `root` removed unless `keep`.
    """

    def __init__(self, time_limit: float, root: str, keep: bool) -> None:
        self.deadline = Deadline(time_limit)
        signal.signal(signal.SIGALRM, on_alarm)
        signal.signal(signal.SIGTERM, on_alarm)
        signal.alarm(int(time_limit) + 1)
        self.subreaper = become_subreaper()
        self.root = root
        self.keep = keep
        self.rc = 0
        self._clusters: list[Cluster] = []
        self.load0 = os.getloadavg()

    def stop_on_exit(self, cluster: Cluster) -> Cluster:
        """Stop `cluster` (by PID) when the run ends; returns it."""
        self._clusters.append(cluster)
        return cluster

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if isinstance(exc, Overtime):
            log(f"ABORTED: {exc}")
            self.rc = 3
        elif isinstance(exc, Exception):  # report and still print what we have
            log(f"FAILED: {type(exc).__name__}: {exc}")
            self.rc = 1
        signal.alarm(0)
        for cluster in self._clusters:
            try:
                cluster.stop()
            except Exception as err:  # noqa: BLE001 - keep cleaning up
                log(f"cluster stop: {err}")
        left = kill_leftovers()
        if left:
            log(f"killed {left} leftover processes")
        if not self.subreaper:
            log("warning: could not become a child subreaper; orphans may survive")
        if self.keep:
            log(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        return isinstance(exc, Exception)

    def print_figures_header(self, facts: str) -> None:
        """A blank line, `---- figures ----`, and a line: the date, `facts`, and the 1-minute
        load average at the start (load0) and now.
        """
        print()
        print("---- figures ----")
        print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; "
              f"{facts}; load average at start {self.load0[0]:.2f}, "
              f"at end {os.getloadavg()[0]:.2f}")

    def print_figures(self, figures: Sequence[str], extra: str = "") -> None:
        """The figures header with the machine's facts (architecture, cores, Python; then
        `extra`), then each figure on a line."""
        self.print_figures_header(f"uname -m: {platform.machine()}; cores: {os.cpu_count()}; "
                                  f"python: {platform.python_version()}" + (f"; {extra}" if extra else ""))
        for line in figures:
            print(line)


# ----- a tasks file, run and timed ------------------------------------------------------------

@dataclass(frozen=True)
class FileRun(Generic[S]):
    """A timed `leoronic_add_tasks_from_file FILE && leoronic_wait`."""

    started: float
    """time.time() just before `before` was sampled: seconds since the epoch."""
    wall_s: float
    """End to end, seconds (time.perf_counter), without the two samples."""
    submit_s: float
    """leoronic_add_tasks_from_file, seconds (timestamps inside the script)."""
    wait_s: float
    """leoronic_wait, seconds (timestamps inside the script)."""
    before: S
    """`sample()` just before the run."""
    after: S
    """`sample()` just after the run."""
    states: Counter[str]
    """Tasks per STATE afterwards (queue_counts)."""
    nodes: Counter[str]
    """Tasks per NODE column afterwards (queue_counts)."""


def run_tasks_file(cluster: Cluster, name: str, ids: str, n: int, deadline: Deadline,
                   caps: tuple[float, float], sample: Callable[[], S],
                   command: str = "true", lines: Sequence[str] = ()) -> FileRun[S]:
    """Write N tasks (`command`, 1024 MB, 1 core, 1024 MB storage) with IDs `{ids}0` ...
    (or, given `lines`, those lines: tasks whose IDs all start with `ids`) to
    `tasks-{name}.txt` in the cluster's root, then time, through the shell functions a user
    types, submitting that file and waiting for every task, and count the queue afterwards.
    `caps`: the most seconds the run and the queue listing may take (and what the deadline
    leaves). RuntimeError if either fails.
    """
    path = os.path.join(cluster.root, f"tasks-{name}.txt")
    with open(path, "w") as f:
        if lines:
            f.write("".join(line + "\n" for line in lines))
        for i in range(0 if lines else n):
            f.write(f'1024 1 1024 true "" "" {shlex.quote(command)} {ids}{i}\n')
    # The time marks are bash's own clock (EPOCHREALTIME, whose decimal mark follows the
    # locale): a `date` process for each would be timed with the commands.
    script = (
        "t0=${EPOCHREALTIME/,/.}\n"
        f"leoronic_add_tasks_from_file {path} >/dev/null || exit $?\n"
        "t1=${EPOCHREALTIME/,/.}\n"
        "leoronic_wait || exit $?\n"
        "t2=${EPOCHREALTIME/,/.}\n"
        'echo "PHASES $t0 $t1 $t2"\n'
    )
    started = time.time()
    before = sample()
    t0 = time.perf_counter()
    r = cluster.sh(script, timeout=deadline.left(caps[0]))
    wall = time.perf_counter() - t0
    after = sample()
    if r.rc != 0:
        raise RuntimeError(f"throughput run failed: {r!r}")
    phases = [float(x) for x in r.out.split("PHASES", 1)[1].split()]
    states, nodes = queue_counts(cluster, ids, deadline, caps[1])
    return FileRun(started=started, wall_s=wall, submit_s=phases[1] - phases[0],
                   wait_s=phases[2] - phases[1], before=before, after=after, states=states,
                   nodes=nodes)


def queue_counts(cluster: Cluster, ids: str, deadline: Deadline,
                 cap: float) -> tuple[Counter[str], Counter[str]]:
    """(tasks per STATE, tasks per NODE column) of the tasks whose ID starts with `ids`, from
    `leoronic_get_queue` (rows: ID STATE NODE TRY AGE COMMAND; NODE is empty, so the column
    holds TRY, for a task that never ran); it may take at most `cap` s. RuntimeError if it fails.
    """
    q = cluster.sh("leoronic_get_queue", timeout=deadline.left(cap))
    if q.rc != 0:
        raise RuntimeError(f"get-queue failed: {q!r}")
    states: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    for line in q.out.splitlines()[1:]:
        cols = line.split()
        if cols and cols[0].startswith(ids):
            states[cols[1]] += 1
            nodes[cols[2]] += 1
    return states, nodes


# ----- memory ------------------------------------------------------------------------------

MB = 1e6  # the goals are in MB


def python_proc(node: NodeProc) -> psutil.Process | None:
    """The python process of a node: its own pid (the wrapper execs), else its python child."""
    if node.proc is None:
        return None
    try:
        p = psutil.Process(node.proc.pid)
        if "python" in os.path.basename((p.cmdline() or [""])[0]):
            return p
        for child in p.children(recursive=True):
            if "python" in os.path.basename((child.cmdline() or [""])[0]):
                return child
    except psutil.Error:
        return None
    return None


def rss_mb(node: NodeProc) -> tuple[float, float]:
    """(RSS, USS) in MB of a node's python process."""
    p = python_proc(node)
    if p is None:
        return (float("nan"), float("nan"))
    try:
        full = p.memory_full_info()
        return (full.rss / MB, full.uss / MB)
    except psutil.Error:
        return (float("nan"), float("nan"))


# ----- CPU accounting -----------------------------------------------------------------------

def process_cpu(proc: psutil.Process | int | None, live_children: bool = False) -> CpuPair:
    """(own CPU s, CPU s of its reaped children) of a process (or PID); with `live_children`,
    plus the CPU s of its live descendants. (nan, nan) if there is none or it cannot be read.
    """
    if proc is None:
        return (NAN, NAN)
    try:
        p = psutil.Process(proc) if isinstance(proc, int) else proc
        t = p.cpu_times()
        kids = t.children_user + t.children_system
        if live_children:
            for child in p.children(recursive=True):
                try:
                    c = child.cpu_times()
                    kids += c.user + c.system
                except psutil.Error:
                    pass
        return (t.user + t.system, kids)
    except psutil.Error:
        return (NAN, NAN)


def cpu_pairs_delta(a: Mapping[str, CpuPair], b: Mapping[str, CpuPair]) -> dict[str, CpuPair]:
    """CPU seconds spent between two samples, per name of `a`: `b - a`, element-wise."""
    return {k: (b[k][0] - a[k][0], b[k][1] - a[k][1]) for k in a}

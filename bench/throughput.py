"""Throughput and idle latency of a 3-worker Leoronic cluster on loopback, against xargs.

    .venv/bin/python -m bench.throughput [--tasks N] [--latency-samples M] [--time-limit S]

1. Starts 3 real `leoronic` workers on 127.0.0.1 (tests/cluster.py), each offering all the
   machine's cores; always stops them (by PID) and kills anything left behind.
2. Baseline: `seq N | xargs -P CORES -I{} bash -c true`, timed with time.perf_counter.
3. Throughput: N tasks `1024 1 1024 true "" "" "true" ID` in a tasks file, timed end to end as
   `leoronic_add_tasks_from_file FILE && leoronic_wait` through the same shell functions a user
   types; phases (submit, run) split by timestamps inside that script; spread over nodes from
   `leoronic_get_queue`; per-task delays from the replicated records.
4. Idle latency: M times, one `true` task submitted with the Python client; submit -> process
   spawned (outcome.start - submitted), submit -> claim applied, claim -> spawned, and the
   submit RPC round trip.
5. A compact figures block at the end.

Everything is bounded by --time-limit (default 600 s): each wait has its own deadline and a
SIGALRM ends the run through the `finally` that stops the cluster. This process makes itself a
child subreaper, so task processes orphaned when a node is killed come back to it and are
killed and reaped at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import psutil

from comrade.client import Client
from comrade.model import TaskSpec
from tests.cluster import Cluster, start_cluster

PR_SET_CHILD_SUBREAPER = 36
FINAL = ("done", "failed", "deleted")


class Overtime(Exception):
    """The global time limit was reached."""


def _alarm(signum: int, frame: Any) -> None:
    raise Overtime(f"global time limit reached (signal {signum})")


def become_subreaper() -> bool:
    """Orphaned descendants (e.g. tasks of a killed node) are re-parented to us, not init."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def kill_leftovers() -> int:
    """SIGKILL and reap every descendant still alive; returns how many there were."""
    me = psutil.Process()
    left = me.children(recursive=True)
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


class Deadline:
    """The global time budget."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, cap: float | None = None, margin: float = 5.0) -> float:
        left = self.end - time.monotonic() - margin
        if left <= 0:
            raise Overtime("global time limit reached")
        return left if cap is None else min(cap, left)


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----- baseline -----------------------------------------------------------------------------

def xargs_baseline(n: int, cores: int, deadline: Deadline) -> float:
    """Seconds for `seq N | xargs -P CORES -I{} bash -c true` (own process group, bounded)."""
    cmd = f"seq {n} | xargs -P {cores} -I{{}} bash -c true"
    t0 = time.perf_counter()
    p = subprocess.Popen(["bash", "-c", cmd], start_new_session=True)
    try:
        rc = p.wait(timeout=deadline.left(120))
    except BaseException:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise
    elapsed = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"xargs baseline failed: rc {rc}")
    return elapsed


# ----- throughput ---------------------------------------------------------------------------

def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own CPU s, CPU s of its reaped children: the tasks it ran) of one process."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return (float("nan"), float("nan"))
    return (t.user + t.system, t.children_user + t.children_system)


def cpu_snapshot(cluster: Cluster) -> dict[str, Any]:
    """CPU counters of every node process and of the whole machine."""
    nodes = {n.name: cpu_seconds(n.proc.pid) for n in cluster.nodes if n.proc is not None}
    mine = psutil.Process().cpu_times()
    machine = psutil.cpu_times()
    return {"nodes": nodes, "cli": mine.children_user + mine.children_system,
            "busy": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0),
            "total": sum(machine)}


def cpu_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    nodes = {k: (b["nodes"][k][0] - a["nodes"][k][0], b["nodes"][k][1] - a["nodes"][k][1])
             for k in a["nodes"]}
    own = sum(o + k for o, k in nodes.values()) + (b["cli"] - a["cli"])
    return {"nodes": nodes, "cli": b["cli"] - a["cli"], "busy": b["busy"] - a["busy"],
            "total": b["total"] - a["total"], "own": own}


def throughput(cluster: Cluster, n: int, prefix: str, deadline: Deadline) -> dict[str, Any]:
    path = os.path.join(cluster.root, f"tasks-{prefix}.txt")
    with open(path, "w") as f:
        for i in range(n):
            f.write(f'1024 1 1024 true "" "" "true" {prefix}-bench-{i}\n')
    script = (
        "t0=$(date +%s.%N)\n"
        f"leoronic_add_tasks_from_file {path} >/dev/null || exit $?\n"
        "t1=$(date +%s.%N)\n"
        "leoronic_wait || exit $?\n"
        "t2=$(date +%s.%N)\n"
        'echo "PHASES $t0 $t1 $t2"\n'
    )
    w0 = time.time()
    c0 = cpu_snapshot(cluster)
    t0 = time.perf_counter()
    r = cluster.sh(script, timeout=deadline.left(400))
    elapsed = time.perf_counter() - t0
    cpu = cpu_delta(c0, cpu_snapshot(cluster))
    if r.rc != 0:
        raise RuntimeError(f"throughput run failed: {r!r}")
    phases = [float(x) for x in r.out.split("PHASES", 1)[1].split()]
    submit_s, wait_s = phases[1] - phases[0], phases[2] - phases[1]

    q = cluster.sh("leoronic_get_queue", timeout=deadline.left(60))
    if q.rc != 0:
        raise RuntimeError(f"get-queue failed: {q!r}")
    spread: Counter[str] = Counter()
    states: Counter[str] = Counter()
    for line in q.out.splitlines()[1:]:
        cols = line.split()
        if not cols or not cols[0].startswith(f"{prefix}-bench-"):
            continue
        states[cols[1]] += 1
        # ID STATE NODE TRY AGE COMMAND; NODE is empty for a task that never ran
        spread[cols[2] if not cols[2].isdigit() else "-"] += 1

    # Per-task delays from the replicated records (one RPC each, after the timed part).
    client = Client(cluster.nodes[0].address, read_cookie_file(cluster))
    claim: list[float] = []  # submit proposed -> claim proposed
    spawn: list[float] = []  # claim proposed -> process spawned
    run: list[float] = []  # process spawned -> exited
    submitted: list[float] = []
    starts: list[float] = []
    ends: list[float] = []
    attempts: Counter[int] = Counter()
    try:
        for i in range(n):
            if i % 200 == 0:
                deadline.left()
            t = client.call("task", f"{prefix}-bench-{i}", retry_s=5)
            attempts[len(t.attempts)] += 1
            if t.outcome is None or not t.attempts:
                continue
            claim.append(t.attempts[-1].start - t.submitted)
            spawn.append(t.outcome.start - t.attempts[-1].start)
            run.append(t.outcome.end - t.outcome.start)
            submitted.append(t.submitted)
            starts.append(t.outcome.start)
            ends.append(t.outcome.end)
    finally:
        client.close()
    nan = float("nan")
    span = (max(ends) - min(starts)) if ends else nan
    return {
        "n": n, "elapsed": elapsed, "submit_s": submit_s, "wait_s": wait_s,
        "spread": dict(sorted(spread.items())), "states": dict(states),
        "claim_med": median(claim), "claim_p99": pct(claim, 99), "claim_max": max(claim, default=0),
        "spawn_med": median(spawn), "spawn_p99": pct(spawn, 99),
        "run_med": median(run), "run_p99": pct(run, 99),
        "submit_span": (max(submitted) - min(submitted)) if submitted else nan,
        "cli_to_first_submit": (min(submitted) - w0) if submitted else nan,
        "run_span": span, "avg_running": sum(run) / span if span > 0 else nan,
        "attempts": dict(attempts), "cpu": cpu,
    }


# ----- idle latency -------------------------------------------------------------------------

def read_cookie_file(cluster: Cluster) -> str:
    with open(cluster.cookie_path) as f:
        return f.read().strip()


def latency(cluster: Cluster, m: int, prefix: str, deadline: Deadline) -> dict[str, Any]:
    client = Client(cluster.nodes[0].address, read_cookie_file(cluster))
    lat: list[float] = []
    rpc: list[float] = []
    claim: list[float] = []
    spawn: list[float] = []
    ran_on: Counter[str] = Counter()
    try:
        client.call("ping", retry_s=5)  # connect and authenticate outside the timed part
        for i in range(m):
            task_id = f"{prefix}-lat-{i}"
            spec = TaskSpec(task_id=task_id, memory=1024, cores=1, storage=1024, concurrent=True,
                            conditions="", files=(), command="true", retries=0, rename=True)
            t0 = time.perf_counter()
            client.submit([spec])
            rpc.append(time.perf_counter() - t0)
            wait_end = time.monotonic() + deadline.left(30)
            while True:
                states = client.call("wait_tasks", [task_id], 5.0, retry_s=5)
                if states[task_id][0] in FINAL:
                    break
                if time.monotonic() > wait_end:
                    raise RuntimeError(f"latency task {task_id} not finished: {states}")
            t = client.call("task", task_id, retry_s=5)
            if t.state.value != "done" or t.outcome is None:
                raise RuntimeError(f"latency task {task_id} ended {t.state.value}: {t.reason}")
            lat.append(t.outcome.start - t.submitted)
            claim.append(t.attempts[-1].start - t.submitted)
            spawn.append(t.outcome.start - t.attempts[-1].start)
            ran_on[t.node or "-"] += 1
            time.sleep(0.05)  # let the cluster settle: each sample starts idle
    finally:
        client.close()
    ms = 1000.0
    return {
        "m": m, "med": median(lat) * ms, "p99": pct(lat, 99) * ms, "min": min(lat) * ms,
        "max": max(lat) * ms, "rpc_med": median(rpc) * ms, "rpc_p99": pct(rpc, 99) * ms,
        "claim_med": median(claim) * ms, "claim_p99": pct(claim, 99) * ms,
        "spawn_med": median(spawn) * ms, "spawn_p99": pct(spawn, 99) * ms,
        "ran_on": dict(sorted(ran_on.items())),
    }


# ----- main ---------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.throughput",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--tasks", type=int, default=2000, help="tasks in the throughput run")
    ap.add_argument("--latency-samples", type=int, default=50, help="idle latency samples")
    ap.add_argument("--time-limit", type=float, default=600.0, help="global limit, seconds")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (node logs)")
    args = ap.parse_args(argv)
    if args.tasks < 1 or args.latency_samples < 1:
        ap.error("--tasks and --latency-samples must be at least 1")

    deadline = Deadline(args.time_limit)
    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGTERM, _alarm)
    signal.alarm(int(args.time_limit) + 1)
    subreaper = become_subreaper()
    cores = psutil.cpu_count() or os.cpu_count() or 1
    prefix = f"r{secrets.token_hex(3)}"
    root = tempfile.mkdtemp(prefix="leoronic-bench-")
    cluster: Cluster | None = None
    tp: dict[str, Any] = {}
    lt: dict[str, Any] = {}
    xargs_runs: list[float] = []
    load0 = os.getloadavg()
    rc = 0
    try:
        log(f"starting 3 workers in {root} (run {prefix})")
        t0 = time.perf_counter()
        cluster = start_cluster(os.path.join(root, "cluster"), 3)
        log(f"cluster up in {time.perf_counter() - t0:.1f} s: "
            + ", ".join(f"{n.name}={n.address}" for n in cluster.nodes))

        log(f"baseline: seq {args.tasks} | xargs -P {cores} -I{{}} bash -c true")
        xargs_runs.append(xargs_baseline(args.tasks, cores, deadline))
        log(f"  {xargs_runs[-1]:.2f} s = {args.tasks / xargs_runs[-1]:.0f} tasks/s")

        log(f"throughput: {args.tasks} tasks via leoronic_add_tasks_from_file && leoronic_wait")
        tp = throughput(cluster, args.tasks, prefix, deadline)
        log(f"  {tp['elapsed']:.2f} s end to end: submit (CLI) {tp['submit_s']:.2f} s, "
            f"wait {tp['wait_s']:.2f} s")
        log(f"  states {tp['states']}; attempts per task {tp['attempts']}")
        log(f"  spread over nodes (get-queue NODE): {tp['spread']}")
        log(f"  CLI start -> first task submitted {tp['cli_to_first_submit']:.2f} s; "
            f"submits spanned {tp['submit_span']:.2f} s")
        log(f"  submit proposed -> claim proposed: median {tp['claim_med']:.3f} s, "
            f"p99 {tp['claim_p99']:.3f} s, max {tp['claim_max']:.3f} s")
        log(f"  claim proposed -> spawned: median {tp['spawn_med'] * 1000:.1f} ms, "
            f"p99 {tp['spawn_p99'] * 1000:.1f} ms; process ran: median "
            f"{tp['run_med'] * 1000:.1f} ms, p99 {tp['run_p99'] * 1000:.1f} ms")
        log(f"  first spawn -> last exit {tp['run_span']:.2f} s; "
            f"average processes alive {tp['avg_running']:.2f}")
        cpu = tp["cpu"]
        log("  CPU during the run: " + ", ".join(
            f"{k} {own:.2f} s (+ tasks {kids:.2f} s)" for k, (own, kids) in cpu["nodes"].items())
            + f", CLI {cpu['cli']:.2f} s: {cpu['own']:.2f} CPU s = "
            f"{1000 * cpu['own'] / args.tasks:.2f} ms CPU per task; machine busy "
            f"{100 * cpu['busy'] / cpu['total']:.0f}% of {cores} cores (all processes)")

        log("baseline again (the box may be shared: the ratio uses the mean of both)")
        xargs_runs.append(xargs_baseline(args.tasks, cores, deadline))
        log(f"  {xargs_runs[-1]:.2f} s = {args.tasks / xargs_runs[-1]:.0f} tasks/s")

        log(f"idle latency: {args.latency_samples} single tasks via Client.submit")
        lt = latency(cluster, args.latency_samples, prefix, deadline)
        log(f"  submit->start median {lt['med']:.1f} ms, p99 {lt['p99']:.1f} ms "
            f"(min {lt['min']:.1f}, max {lt['max']:.1f}); submit->claim proposed median "
            f"{lt['claim_med']:.1f} ms (p99 {lt['claim_p99']:.1f}), claim->spawn median "
            f"{lt['spawn_med']:.1f} ms (p99 {lt['spawn_p99']:.1f}); ran on {lt['ran_on']}")
    except Overtime as exc:
        log(f"ABORTED: {exc}")
        rc = 3
    except Exception as exc:  # report and still print what we have
        log(f"FAILED: {type(exc).__name__}: {exc}")
        rc = 1
    finally:
        signal.alarm(0)
        if cluster is not None:
            try:
                cluster.stop()
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                log(f"cluster stop: {exc}")
        left = kill_leftovers()
        if left:
            log(f"killed {left} leftover processes")
        if not subreaper:
            log("warning: could not become a child subreaper; orphans may survive")
        if args.keep:
            log(f"kept {root}")
        else:
            import shutil

            shutil.rmtree(root, ignore_errors=True)

    n = args.tasks
    xargs_s = statistics.mean(xargs_runs) if xargs_runs else float("nan")
    x_rate = n / xargs_s
    print()
    print("---- figures ----")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; "
          f"uname -m: {platform.machine()}; cores: {cores}; "
          f"python: {platform.python_version()}; load average at start {load0[0]:.2f}, "
          f"at end {os.getloadavg()[0]:.2f}")
    if tp:
        rate = n / tp["elapsed"]
        print(f"throughput: {n} tasks in {tp['elapsed']:.2f} s = {rate:.0f} tasks/s "
              f"(xargs -P {cores}: {x_rate:.0f} tasks/s; ratio {100 * rate / x_rate:.0f}%)")
        print(f"  phases: submit (CLI) {tp['submit_s']:.2f} s + wait {tp['wait_s']:.2f} s; "
              f"nodes {tp['spread']}; {1000 * tp['cpu']['own'] / n:.1f} ms CPU per task "
              f"(xargs runs: {', '.join(f'{n / x:.0f}' for x in xargs_runs)} tasks/s)")
    else:
        print(f"throughput: not measured (xargs -P {cores}: {x_rate:.0f} tasks/s)")
    if lt:
        print(f"latency submit->start: median {lt['med']:.1f} ms, p99 {lt['p99']:.1f} ms; "
              f"submit RPC median {lt['rpc_med']:.1f} ms")
        print(f"  phases: submit->claim proposed {lt['claim_med']:.1f} ms, "
              f"claim proposed->spawned {lt['spawn_med']:.1f} ms (medians of {lt['m']})")
    else:
        print("latency: not measured")
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""Throughput and idle latency of a 3-worker Leoronic cluster on loopback, against xargs.

    .venv/bin/python -m bench.throughput [--tasks N] [--rounds K] [--latency-samples M]
                                         [--command CMD] [--nodes W] [--time-limit S]
                                         [--no-sync-journal]

1. Starts 3 (or W) real `leoronic` workers on 127.0.0.1 (tests/cluster.py), each offering all
   the machine's cores; always stops them (by PID) and kills anything left behind. `--nodes 1`
   measures a newcomer's one-node cluster.
2. Baseline: `seq N | xargs -P CORES -I{} bash -c true`, timed with time.perf_counter.
   With --command CMD, the tasks here and in step 3 run CMD instead of `true` (xargs sends
   their output to /dev/null; Leoronic keeps it in files and replicates the last 64 KiB).
3. Throughput: N tasks `1024 1 1024 true "" "" "true" ID` in a tasks file, timed end to end as
   `leoronic_add_tasks_from_file FILE && leoronic_wait` through the same shell functions a user
   types; phases (submit, run) split by timestamps inside that script; spread over nodes from
   `leoronic_get_queue`; per-task delays from the replicated records.
   With --rounds K, steps 2-3 alternate K times on the same cluster (xargs, Leoronic, xargs,
   ..., xargs): each round's ratio uses the xargs runs on either side of it, and the figures
   give every round's ratio and their median (the machine may be shared and drift).
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

import os
import platform
import secrets
import shlex
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

from bench.common import (
    Bench,
    BenchParser,
    Deadline,
    cpu_pairs_delta,
    log,
    process_cpu,
    run_tasks_file,
)
from comrade.model import TaskSpec
from tests.cluster import Cluster, start_cluster

FINAL = ("done", "failed", "deleted")


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ----- baseline -----------------------------------------------------------------------------

def xargs_baseline(n: int, cores: int, deadline: Deadline, command: str = "true") -> float:
    """Seconds for `seq N | xargs -P CORES -I{} bash -c COMMAND` (own process group, bounded;
    the tasks' output goes to /dev/null)."""
    cmd = f"seq {n} | xargs -P {cores} -I{{}} bash -c {shlex.quote(command)} >/dev/null 2>&1"
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

def cpu_snapshot(cluster: Cluster) -> dict[str, Any]:
    """CPU counters of every node process and of the whole machine, in CPU seconds."""
    nodes = {n.name: process_cpu(n.proc.pid) for n in cluster.nodes if n.proc is not None}
    mine = psutil.Process().cpu_times()
    machine = psutil.cpu_times()
    return {"nodes": nodes, "cli": mine.children_user + mine.children_system,
            "busy": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0),
            "total": sum(machine)}


def cpu_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """CPU seconds spent between two cpu_snapshot()s, plus `own`: the nodes' and the CLI's."""
    nodes = cpu_pairs_delta(a["nodes"], b["nodes"])
    own = sum(o + k for o, k in nodes.values()) + (b["cli"] - a["cli"])
    return {"nodes": nodes, "cli": b["cli"] - a["cli"], "busy": b["busy"] - a["busy"],
            "total": b["total"] - a["total"], "own": own}


def throughput(cluster: Cluster, n: int, prefix: str, deadline: Deadline,
               command: str = "true") -> dict[str, Any]:
    timed = run_tasks_file(cluster, prefix, f"{prefix}-bench-", n, deadline, (400, 60),
                           lambda: cpu_snapshot(cluster), command)
    w0, elapsed, states = timed.started, timed.wall_s, timed.states
    cpu = cpu_delta(timed.before, timed.after)
    submit_s, wait_s = timed.submit_s, timed.wait_s
    spread: Counter[str] = Counter()
    for node, count in timed.nodes.items():  # the NODE column holds TRY for a task that never ran
        spread[node if not node.isdigit() else "-"] += count

    # Per-task delays from the replicated records (one RPC each, after the timed part).
    client = cluster.client()
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

def latency(cluster: Cluster, m: int, prefix: str, deadline: Deadline) -> dict[str, Any]:
    client = cluster.client()
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


def log_run(tp: dict[str, Any], n: int, cores: int) -> None:
    """The details of one throughput run, to the log."""
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
        f"{1000 * cpu['own'] / n:.2f} ms CPU per task; machine busy "
        f"{100 * cpu['busy'] / cpu['total']:.0f}% of {cores} cores (all processes)")


# ----- main ---------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    ap = BenchParser("python -m bench.throughput", __doc__)
    ap.add_argument("--tasks", type=int, default=2000, help="tasks in the throughput run")
    ap.add_argument("--rounds", type=int, default=1,
                    help="throughput runs, each between two xargs runs")
    ap.add_argument("--latency-samples", type=int, default=50, help="idle latency samples")
    ap.add_argument("--command", default="true",
                    help="each task's command, for Leoronic and xargs alike (default: true)")
    ap.add_argument("--nodes", type=int, default=3, help="workers in the cluster (default: 3)")
    ap.add_argument("--no-sync-journal", action="store_true",
                    help="start the workers with --no-sync-journal (journal entries not synced)")
    ap.add_time_limit(600.0)
    ap.add_keep()
    args = ap.parse_positive(argv, "--tasks", "--rounds", "--latency-samples", "--nodes")

    cores = psutil.cpu_count() or os.cpu_count() or 1
    prefix = f"r{secrets.token_hex(3)}"
    root = tempfile.mkdtemp(prefix="leoronic-bench-")
    bench = Bench(args.time_limit, root, args.keep)
    deadline = bench.deadline
    rounds: list[dict[str, Any]] = []
    lt: dict[str, Any] = {}
    xargs_runs: list[float] = []
    with bench:
        log(f"starting {args.nodes} workers in {root} (run {prefix})")
        t0 = time.perf_counter()
        cluster = bench.stop_on_exit(start_cluster(
            os.path.join(root, "cluster"), args.nodes,
            [["--no-sync-journal"]] * args.nodes if args.no_sync_journal else ()))
        log(f"cluster up in {time.perf_counter() - t0:.1f} s: "
            + ", ".join(f"{n.name}={n.address}" for n in cluster.nodes))

        log(f"baseline: seq {args.tasks} | xargs -P {cores} -I{{}} bash -c "
            f"{shlex.quote(args.command)}")
        xargs_runs.append(xargs_baseline(args.tasks, cores, deadline, args.command))
        log(f"  {xargs_runs[-1]:.2f} s = {args.tasks / xargs_runs[-1]:.0f} tasks/s")
        for k in range(args.rounds):
            log(f"throughput{f' (round {k + 1} of {args.rounds})' if args.rounds > 1 else ''}: "
                f"{args.tasks} tasks via leoronic_add_tasks_from_file && leoronic_wait")
            rounds.append(throughput(cluster, args.tasks, f"{prefix}{k}", deadline, args.command))
            log_run(rounds[-1], args.tasks, cores)
            log("baseline again (the box may be shared: the ratio uses the mean of both sides)")
            xargs_runs.append(xargs_baseline(args.tasks, cores, deadline, args.command))
            log(f"  {xargs_runs[-1]:.2f} s = {args.tasks / xargs_runs[-1]:.0f} tasks/s")

        log(f"idle latency: {args.latency_samples} single tasks via Client.submit")
        lt = latency(cluster, args.latency_samples, prefix, deadline)
        log(f"  submit->start median {lt['med']:.1f} ms, p99 {lt['p99']:.1f} ms "
            f"(min {lt['min']:.1f}, max {lt['max']:.1f}); submit->claim proposed median "
            f"{lt['claim_med']:.1f} ms (p99 {lt['claim_p99']:.1f}), claim->spawn median "
            f"{lt['spawn_med']:.1f} ms (p99 {lt['spawn_p99']:.1f}); ran on {lt['ran_on']}")

    n = args.tasks
    x_rate = n / statistics.mean(xargs_runs) if xargs_runs else float("nan")
    bench.print_figures_header(f"uname -m: {platform.machine()}; cores: {cores}; "
                               f"python: {platform.python_version()}; workers: {args.nodes}"
                               + ("; --no-sync-journal" if args.no_sync_journal else ""))
    ratios = [(n / tp["elapsed"]) / (n / statistics.mean(xargs_runs[k:k + 2]))
              for k, tp in enumerate(rounds) if len(xargs_runs) > k + 1]
    for k, tp in enumerate(rounds[:len(ratios)]):
        rate = n / tp["elapsed"]
        print(f"throughput{f' round {k + 1}' if len(rounds) > 1 else ''}: {n} tasks in "
              f"{tp['elapsed']:.2f} s = {rate:.0f} tasks/s (xargs -P {cores}: "
              f"{rate / ratios[k]:.0f} tasks/s; ratio {100 * ratios[k]:.0f}%)")
        print(f"  phases: submit (CLI) {tp['submit_s']:.2f} s + wait {tp['wait_s']:.2f} s; "
              f"nodes {tp['spread']}; {1000 * tp['cpu']['own'] / n:.1f} ms CPU per task "
              f"(xargs runs: {', '.join(f'{n / x:.0f}' for x in xargs_runs[k:k + 2])} tasks/s)")
    if len(ratios) > 1:
        print(f"throughput, median of {len(ratios)} rounds: ratio "
              f"{100 * statistics.median(ratios):.0f}% (rounds: "
              f"{', '.join(f'{100 * r:.0f}%' for r in ratios)})")
    if not ratios:
        print(f"throughput: not measured (xargs -P {cores}: {x_rate:.0f} tasks/s)")
    if lt:
        print(f"latency submit->start: median {lt['med']:.1f} ms, p99 {lt['p99']:.1f} ms; "
              f"submit RPC median {lt['rpc_med']:.1f} ms")
        print(f"  phases: submit->claim proposed {lt['claim_med']:.1f} ms, "
              f"claim proposed->spawned {lt['spawn_med']:.1f} ms (medians of {lt['m']})")
    else:
        print("latency: not measured")
    return bench.rc


if __name__ == "__main__":
    sys.exit(main())

"""Ghosts under load: throughput, the clairvoyant's CPU share, idle RSS of a ghost and a worker.

    .venv/bin/python -m bench.ghosts [--ghosts 50] [--tasks 1000] [--idle-s 5] [--time-limit S]

1. Baseline: 3 workers (`--cores 1` each), no ghosts. N trivial tasks (`true`) written to a
   tasks file, submitted with `leoronic_add_tasks_from_file` and waited with `leoronic_wait`
   (the shell functions a user types), timed end to end. CPU seconds of every node process tree
   over that run (psutil: the node's own user+system time, plus its reaped task processes),
   divided by the wall time: a share of one core.
2. The same with G ghosts (`--cores 1` each, default 50), all attached (no TARGET) to the
   lowest-address worker, their clairvoyant: tasks/s, how many ran on ghosts (`get-queue` NODE),
   and the clairvoyant's CPU share against the other workers' and the ghosts'.
3. Idle RSS: after `--idle-s` seconds with nothing to do, psutil memory_info().rss of the python
   process of each ghost and each worker (the `leoronic` bash wrapper execs python; if it did
   not, its python child is measured). Goals of issue #6: idle ghost < 40 MB, worker < 60 MB.
4. A compact figures block at the end.

Everything is bounded by --time-limit (default 900 s): each wait has its own deadline and a
SIGALRM ends the run through the `finally` that stops the cluster (by PID). This process makes
itself a child subreaper, so task processes orphaned by a killed node are reaped at the end.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
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
    CpuPair,
    Deadline,
    cpu_pairs_delta,
    log,
    process_cpu,
    python_proc,
    rss_mb,
    run_tasks_file,
)
from tests.cluster import Cluster, NodeProc, start_cluster, wait_for

GOAL_GHOST_MB = 40
GOAL_WORKER_MB = 60
_ROW = re.compile(r"^( *)(\S+)  (\S+:\d+)  (.+?)  (up|UNREACHABLE since \S+)$")


# ----- processes ----------------------------------------------------------------------------

def cpu_of(node: NodeProc) -> CpuPair:
    """(own CPU s, CPU s of its reaped and live task processes) of a node's process tree."""
    return process_cpu(python_proc(node), live_children=True)


def cpu_sample(cluster: Cluster) -> dict[str, CpuPair]:
    """cpu_of() every node of the cluster, by name."""
    return {node.name: cpu_of(node) for node in cluster.nodes}


# ----- cluster facts ------------------------------------------------------------------------

def nodes_rows(cluster: Cluster, via: NodeProc, timeout: float) -> dict[str, tuple[str, str]]:
    """`leoronic nodes`: name -> (role, status)."""
    r = cluster.cli("nodes", node=via, timeout=timeout, retry_s="5")
    if r.rc != 0:
        return {}
    rows = {}
    for line in r.out.splitlines()[1:]:
        m = _ROW.match(line)
        if m:
            rows[m.group(2)] = (m.group(4), m.group(5))
    return rows


def ghosts_up(cluster: Cluster, via: NodeProc, ghosts: list[NodeProc], timeout: float) -> int:
    rows = nodes_rows(cluster, via, timeout)
    return sum(1 for g in ghosts if rows.get(g.name, ("", ""))[1] == "up")


def start(root: str, n_ghosts: int, deadline: Deadline) -> tuple[Cluster, list[NodeProc]]:
    """3 workers (--cores 1) and n ghosts (--cores 1), all up."""
    cluster = start_cluster(root, 3, [["--cores", "1"]] * 3)
    ghosts: list[NodeProc] = []
    try:
        for i in range(n_ghosts):
            ghosts.append(cluster.start_ghost("--cores", "1", name=f"g{i + 1}", wait=False))
        if ghosts:
            def all_up() -> bool:
                dead = [g for g in ghosts if g.proc is not None and g.proc.poll() is not None]
                if dead:
                    raise RuntimeError(f"ghosts exited: {[g.name for g in dead]}; the log of "
                                       f"{dead[0].name}: {dead[0].log()[-2000:]}")
                return ghosts_up(cluster, cluster.nodes[0], ghosts, 30) == len(ghosts)
            wait_for(all_up, deadline.left(240), f"{n_ghosts} ghosts to attach", interval=1.0)
    except BaseException:
        cluster.stop()
        raise
    return cluster, ghosts


def clairvoyant_name(cluster: Cluster, deadline: Deadline) -> str:
    rows = nodes_rows(cluster, cluster.nodes[0], deadline.left(30))
    names = Counter(role[len("ghost of "):] for role, _ in rows.values() if role.startswith("ghost of "))
    return names.most_common(1)[0][0] if names else ""


# ----- the run --------------------------------------------------------------------------------

def throughput(cluster: Cluster, n: int, prefix: str, deadline: Deadline) -> dict[str, Any]:
    timed = run_tasks_file(cluster, prefix, f"{prefix}-", n, deadline, (600, 120),
                           lambda: cpu_sample(cluster))
    return {"n": n, "wall": timed.wall_s, "submit_s": timed.submit_s, "wait_s": timed.wait_s,
            "cpu": cpu_pairs_delta(timed.before, timed.after), "where": timed.nodes,
            "states": dict(timed.states)}


def idle_rss(cluster: Cluster, ghosts: list[NodeProc], idle_s: float) -> dict[str, Any]:
    """RSS after `idle_s` idle seconds, and each node's CPU share over those seconds."""
    cpu0 = cpu_sample(cluster)
    t0 = time.perf_counter()
    time.sleep(idle_s)  # let it settle: the figure is for an idle process
    wall = time.perf_counter() - t0
    cpu1 = cpu_sample(cluster)
    workers = [n for n in cluster.nodes if n not in ghosts]
    w = [rss_mb(n) for n in workers]
    g = [rss_mb(n) for n in ghosts]
    cpu = cpu_pairs_delta(cpu0, cpu1)
    return {"workers": w, "ghosts": g, "cpu": cpu, "wall": wall}


def share(cpu: dict[str, tuple[float, float]], names: Sequence[str], wall: float) -> str:
    if not names:
        return "-"
    own = [cpu[n][0] / wall for n in names]
    kids = [cpu[n][1] / wall for n in names]
    if len(names) == 1:
        return f"{own[0]:.2f} (+tasks {kids[0]:.2f})"
    return (f"mean {statistics.mean(own):.2f} max {max(own):.2f} (+tasks mean "
            f"{statistics.mean(kids):.2f})")


def run_phase(root: str, n_ghosts: int, n: int, idle_s: float, deadline: Deadline,
              label: str) -> dict[str, Any]:
    log(f"[{label}] starting 3 workers and {n_ghosts} ghosts")
    t0 = time.perf_counter()
    cluster, ghosts = start(root, n_ghosts, deadline)
    out: dict[str, Any] = {"ghosts": n_ghosts}
    try:
        out["start_s"] = time.perf_counter() - t0
        ordered = sorted((n for n in cluster.nodes if n not in ghosts), key=lambda x: x.port)
        clair = clairvoyant_name(cluster, deadline) if ghosts else ordered[0].name
        out["clairvoyant"] = clair
        log(f"[{label}] up in {out['start_s']:.1f} s; clairvoyant "
            f"{clair if ghosts else '(none; lowest address: ' + clair + ')'}")
        out["rss_before"] = idle_rss(cluster, ghosts, idle_s)
        log(f"[{label}] throughput: {n} tasks via add-tasks-from-file + wait")
        tp = throughput(cluster, n, label, deadline)
        out["tp"] = tp
        workers = [w.name for w in ordered]
        others = [w for w in workers if w != clair]
        log(f"[{label}]   {tp['wall']:.2f} s = {n / tp['wall']:.0f} tasks/s (submit "
            f"{tp['submit_s']:.2f} s, wait {tp['wait_s']:.2f} s); states {tp['states']}")
        on_ghosts = sum(c for k, c in tp["where"].items() if k.startswith("g"))
        out["on_ghosts"] = on_ghosts
        log(f"[{label}]   ran on ghosts {on_ghosts}/{n}; on workers "
            f"{ {w: tp['where'].get(w, 0) for w in workers} }")
        log(f"[{label}]   CPU share (CPU s / wall s): clairvoyant {clair} "
            f"{share(tp['cpu'], [clair], tp['wall'])}; other workers "
            f"{share(tp['cpu'], others, tp['wall'])}; ghosts "
            f"{share(tp['cpu'], [g.name for g in ghosts], tp['wall'])}")
        if ghosts:
            out["ghosts_up_after"] = ghosts_up(cluster, cluster.nodes[0], ghosts,
                                               deadline.left(60))
        out["rss_after"] = idle_rss(cluster, ghosts, idle_s)
        out["workers"] = workers
    finally:
        cluster.stop()
    return out


def fmt_rss(values: list[tuple[float, float]]) -> str:
    if not values:
        return "-"
    rss = [v[0] for v in values]
    uss = [v[1] for v in values]
    if len(values) == 1:
        return f"RSS {rss[0]:.1f} MB (USS {uss[0]:.1f})"
    return (f"RSS median {statistics.median(rss):.1f} MB (min {min(rss):.1f}, max {max(rss):.1f}; "
            f"USS median {statistics.median(uss):.1f})")


def main(argv: Sequence[str] | None = None) -> int:
    ap = BenchParser("python -m bench.ghosts", __doc__)
    ap.add_argument("--ghosts", type=int, default=50, help="ghosts in the second run")
    ap.add_argument("--tasks", type=int, default=1000, help="tasks per throughput run")
    ap.add_argument("--idle-s", type=float, default=5.0, help="idle seconds before RSS")
    ap.add_time_limit(900.0)
    ap.add_argument("--skip-baseline", action="store_true", help="no 0-ghost run")
    ap.add_keep()
    args = ap.parse_positive(argv, "--ghosts", "--tasks")

    root = tempfile.mkdtemp(prefix="leoronic-bench-ghosts-")
    bench = Bench(args.time_limit, root, args.keep)
    deadline = bench.deadline
    base: dict[str, Any] = {}
    ghost: dict[str, Any] = {}
    with bench:
        if not args.skip_baseline:
            base = run_phase(os.path.join(root, "g0"), 0, args.tasks, args.idle_s, deadline, "b0")
        ghost = run_phase(os.path.join(root, f"g{args.ghosts}"), args.ghosts, args.tasks,
                          args.idle_s, deadline, f"g{args.ghosts}")

    cores = psutil.cpu_count() or 1
    bench.print_figures_header(f"cores: {cores}; memory {psutil.virtual_memory().total / 2**30:.1f} "
                               f"GiB; python {platform.python_version()}")
    for label, res in (("0 ghosts", base), (f"{args.ghosts} ghosts", ghost)):
        tp = res.get("tp")
        if not tp:
            if res or label != "0 ghosts" or not args.skip_baseline:
                print(f"{label}: not measured")
            continue
        n, wall, cpu = tp["n"], tp["wall"], tp["cpu"]
        clair = res["clairvoyant"]
        others = [w for w in res["workers"] if w != clair]
        gnames = [k for k in cpu if k not in res["workers"]]
        print(f"{label}: {n} tasks in {wall:.2f} s = {n / wall:.0f} tasks/s (submit "
              f"{tp['submit_s']:.2f} s + wait {tp['wait_s']:.2f} s); on ghosts "
              f"{res['on_ghosts']}/{n}; states {tp['states']}"
              + (f"; ghosts up after {res['ghosts_up_after']}/{res['ghosts']}"
                 if "ghosts_up_after" in res else ""))
        print(f"  CPU share (CPU s / wall s, own process; +reaped tasks): "
              f"{'clairvoyant' if res['ghosts'] else 'lowest-address worker'} {clair} "
              f"{share(cpu, [clair], wall)}; other workers {share(cpu, others, wall)}"
              + (f"; ghosts {share(cpu, gnames, wall)}, all ghosts together "
                 f"{sum(cpu[g][0] for g in gnames) / wall:.2f}" if gnames else ""))
        for when in ("rss_before", "rss_after"):
            rss = res.get(when)
            if rss:
                print(f"  idle {'before' if when == 'rss_before' else 'after'} the run: worker "
                      f"{fmt_rss(rss['workers'])}"
                      + (f"; ghost {fmt_rss(rss['ghosts'])}" if rss["ghosts"] else ""))
        idle = res.get("rss_before")
        if idle:
            print(f"  idle CPU share over {idle['wall']:.1f} s before the run: "
                  f"{'clairvoyant' if res['ghosts'] else 'lowest-address worker'} {clair} "
                  f"{idle['cpu'][clair][0] / idle['wall']:.3f}; other workers "
                  + ", ".join(f"{w} {idle['cpu'][w][0] / idle['wall']:.3f}" for w in others)
                  + (f"; ghosts mean {statistics.mean(idle['cpu'][g][0] for g in gnames) / idle['wall']:.4f}"
                     if gnames else ""))
    rss = ghost.get("rss_after") or ghost.get("rss_before")
    if rss and rss["ghosts"]:
        g = statistics.median(v[0] for v in rss["ghosts"])
        w = max(v[0] for v in rss["workers"])
        print(f"goals: idle ghost {g:.1f} MB < {GOAL_GHOST_MB} MB: "
              f"{'yes' if g < GOAL_GHOST_MB else 'NO'}; idle worker (max) {w:.1f} MB < "
              f"{GOAL_WORKER_MB} MB: {'yes' if w < GOAL_WORKER_MB else 'NO'}")
    return bench.rc


if __name__ == "__main__":
    sys.exit(main())

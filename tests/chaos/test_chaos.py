"""Chaos (issue #5): many tasks while workers, leaders and links keep failing; nothing is lost.

Part A (loopback, always runs): three workers with short timings run 1,000 small tasks while
a seeded schedule SIGKILLs a random follower once it has finished a few more tasks (twice the
leader instead, each time while a chunk is being submitted and it runs tasks), keeps it down
either briefly (back within its 3 s lease) or until the others have declared it lost (past
the lease), and restarts it with the same home before the next kill, so a majority is always
up. Submits go in chunks of 100 through a node that is not
about to be killed, concurrently with the kills (a submit may straddle a leader change: the
CLI and the node retry with the same ids).

Part B (network namespaces, root only): three workers in three namespaces on a private
bridge (tests/netns.py); one is cut off once a few tasks ran, and kept cut off past
--isolation-after until it has recorded a few results from its own copy while the majority
goes on; then the link is healed and its results merge.

Both check the README's "Fault tolerance" promises the way an operator would see them:
every task has exactly one final record and it is `done`; every task ran (its command
appended a line to RUNLOG); a task that ran more than once has an attempt history that
explains why; and every worker holds the same replicated state, record for record.

Part B runs three times: cutting a follower, cutting the leader (its stale lease decisions,
committed after the heal, must not declare healthy workers lost), and a partition that also
outlasts --remove-after (the cut worker is removed from the Raft membership and must rejoin).

Seeded and repeatable: LEORONIC_CHAOS_SEED=N picks another schedule (default 5). The figures
(tasks, kills, duplicate runs, longest stall, time) are printed at the end of each part. Part A
also bounds how long tasks waited in the queue with none finishing (a leader's death: the
election, then claims again), from the README's election time.
"""

from __future__ import annotations

import base64
import bisect
import os
import pickle
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from comrade.errors import LeoronicError
from comrade.isolation import load_results
from tests import netns
from tests.cluster import LEORONIC, UTILITIES, Cluster, NodeProc, start_cluster, wait_for

SEED = int(os.environ.get("LEORONIC_CHAOS_SEED", "5"))
FINAL = ("done", "failed", "deleted")
RUNLOG_LINE = re.compile(r"^(\S+) (\d+) (\S+)$")
_NODE_ROW = re.compile(r"^(\S+)  (\S+:\d+)  (.+?)  (up|UNREACHABLE since \S+)$")


# ----- shared helpers ------------------------------------------------------------------------


def task_file(path: Path, prefix: str, ids: range, runlog: Path, rng: random.Random) -> list[str]:
    """Write a tasks file: one `1024 1 1024 true "" "" COMMAND ID` line per id; each command
    sleeps 0.05-0.2 s (so kills hit running tasks) and appends "ID ATTEMPT NODE" to RUNLOG."""
    names, lines = [], []
    for i in ids:
        tid = f"{prefix}-{i:04d}"
        command = (f"sleep {rng.uniform(0.05, 0.2):.2f}; "
                   f'echo "$LEORONIC_TASK_ID $LEORONIC_ATTEMPT $LEORONIC_NODE_NAME" '
                   f">> {shlex.quote(str(runlog))}")
        lines.append(f'1024 1 1024 true "" "" {shlex.quote(command)} {tid}')
        names.append(tid)
    path.write_text("\n".join(lines) + "\n")
    return names


def read_runlog(runlog: Path) -> dict[str, list[tuple[int, str]]]:
    """RUNLOG as task id -> [(attempt, node), ...] in order of writing."""
    runs: dict[str, list[tuple[int, str]]] = defaultdict(list)
    text = runlog.read_text() if runlog.exists() else ""
    for line in text.splitlines():
        m = RUNLOG_LINE.match(line)
        assert m, f"malformed RUNLOG line {line!r}"
        runs[m.group(1)].append((int(m.group(2)), m.group(3)))
    return runs


def runs_by_node(runlog: Path) -> Counter[str]:
    """How many runs each node has finished so far: RUNLOG's complete lines, by node."""
    text = runlog.read_text() if runlog.exists() else ""
    return Counter(line.split()[-1] for line in text.splitlines(keepends=True)
                   if line.endswith("\n") and line.strip())


def longest_stall(records: dict[str, Any]) -> float:
    """The longest gap between consecutive task completions (final outcomes' end times)."""
    ends = sorted(t.outcome.end for t in records.values() if t.outcome is not None)
    return max((b - a for a, b in zip(ends, ends[1:], strict=False)), default=0.0)


def longest_queued_stall(records: dict[str, Any]) -> tuple[float, float]:
    """(when it began, wall-clock seconds; how long, seconds) of the longest stretch during
    which some task waited in the queue (submitted or put back, and not claimed by any node)
    while no task finished. Unlike `longest_stall` this leaves out the test's own pauses
    between submits (nothing waiting) and a dead node's tasks waiting for its lease (still
    claimed by it): what is left is the cluster having runnable work and finishing none."""
    ends = sorted(t.outcome.end for t in records.values() if t.outcome is not None)
    waits = []  # (from, to): one task in the queue, unclaimed
    for t in records.values():
        since: float | None = t.submitted
        for a in t.attempts:
            if since is not None and a.start > since:
                waits.append((since, a.start))
            since = a.end
    merged: list[list[float]] = []  # when any task waited
    for s, e in sorted(waits):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    best = (0.0, 0.0)
    for s, e in merged:  # each cut by the completions within it
        cuts = [s, *ends[bisect.bisect_right(ends, s):bisect.bisect_left(ends, e)], e]
        for x, y in zip(cuts, cuts[1:], strict=False):
            if y - x > best[1]:
                best = (x, y - x)
    return best


def describe(t: Any) -> str:
    """A task record in one readable line, for failure messages."""
    attempts = "; ".join(f"#{a.number} {a.node} {a.why or 'running'}"
                         f"{'' if a.exit_code is None else f' exit {a.exit_code}'}"
                         for a in t.attempts)
    return f"{t.spec.task_id}: {t.state.value} attempt {t.attempt} on {t.node} [{attempts}]"


class UnexplainedDuplicateRun(AssertionError):
    """A task ran more often than its attempt history says."""


def check_records(ids: Sequence[str], records: dict[str, Any], queue_listing: dict[str, list[list[str]]],
                  runs: dict[str, list[tuple[int, str]]], explains: Callable[[str], bool],
                  isolated: str = "") -> list[str]:
    """Every promise about the final state; returns the ids that ran more than once.

    explains(why): an attempt that ended this way may explain a duplicate run.
    isolated: the worker that ran tasks in isolated mode, if any. Its isolated runs carry the
    attempt numbers of its private copy and are renumbered when merged, so its RUNLOG lines
    are only counted against its recorded attempts; every other line must name a recorded
    attempt (number, node), once.
    """
    problems: list[str] = []
    unexplained: list[str] = []  # runs the record does not account for
    missing = [i for i in ids if i not in queue_listing]
    assert not missing, f"{len(missing)} tasks lost (not in leoronic_get_queue): {missing[:20]}"
    twice = [i for i in ids if len(queue_listing[i]) != 1]
    assert not twice, f"tasks listed more than once: {twice[:20]}"
    not_done = [describe(records[i]) for i in ids if records[i].state.value != "done"]
    assert not not_done, f"{len(not_done)} tasks not done:\n" + "\n".join(not_done[:20])
    listed_not_done = [i for i in ids if queue_listing[i][0][1] != "done"]
    assert not listed_not_done, f"leoronic_get_queue shows not done: {listed_not_done[:20]}"
    duplicates = []
    for tid in ids:
        t = records[tid]
        lines = runs.get(tid, [])
        if not lines:
            problems.append(f"{tid} is done but never wrote its RUNLOG line: {describe(t)}")
            continue
        finals = [a for a in t.attempts if a.why in ("exit", "isolated run")]
        if len(finals) != 1 or finals[0].exit_code != 0 or t.outcome is None \
                or t.outcome.exit_code != 0:
            problems.append(f"{tid}: not exactly one successful final attempt: {describe(t)}")
        exact = [ln for ln in lines if ln[1] != isolated]
        if len(set(exact)) != len(exact):
            unexplained.append(f"{tid}: the same attempt on the same node ran twice: {lines} "
                               f"{describe(t)}")
        recorded = {(a.number, a.node) for a in t.attempts}
        strays = [ln for ln in exact if ln not in recorded]
        if strays:
            problems.append(f"{tid}: ran as {strays} with no such attempt recorded: {describe(t)}")
        if isolated:
            ran = sum(1 for ln in lines if ln[1] == isolated)
            kept = sum(1 for a in t.attempts if a.node == isolated)
            if ran > kept:
                unexplained.append(f"{tid}: ran {ran} times on {isolated} but only {kept} runs there "
                                f"are recorded: {lines} {describe(t)}")
        if len(lines) > 1:
            duplicates.append(tid)
            if not any(explains(a.why) for a in t.attempts):
                unexplained.append(f"{tid} ran {len(lines)} times ({lines}) but no attempt "
                                   f"explains it: {describe(t)}")
    if problems:
        raise AssertionError(f"{len(problems)} problems:\n" + "\n".join(problems + unexplained))
    if unexplained:
        raise UnexplainedDuplicateRun(f"{len(unexplained)} runs the record does not explain:\n"
                                      + "\n".join(unexplained[:30]))
    return duplicates


def parse_queue_listing(out: str) -> dict[str, list[list[str]]]:
    """`leoronic_get_queue` output as id -> its rows (split on whitespace)."""
    lines = out.splitlines()
    assert lines and lines[0].split()[:2] == ["ID", "STATE"], out[:500]
    listing: dict[str, list[list[str]]] = defaultdict(list)
    for line in lines[1:]:
        row = line.split()
        listing[row[0]].append(row)
    return listing


def report(capsys: Any, title: str, figures: dict[str, Any]) -> None:
    """Print the figures even when pytest captures output."""
    text = f"\n{title}: " + ", ".join(f"{k} {v}" for k, v in figures.items())
    with capsys.disabled():
        print(text, flush=True)


# ----- Part A: SIGKILLs on loopback ----------------------------------------------------------

FAST_A = ["--lease", "3", "--remove-after", "20", "--isolation-after", "30"]
TASKS_A = 1000
CHUNK = 100
KILLS_A = 10
LEADER_KILLS_A = 2


def nodes_rows(cluster: Cluster, asked: NodeProc) -> tuple[bool, dict[str, str]] | None:
    """`leoronic_nodes` asked of `asked`: (quorum, name -> role), or None if no answer."""
    r = cluster.sh("leoronic_nodes", node=asked, timeout=30, LEORONIC_RETRY_S="2")
    if r.rc != 0 or not r.out:
        return None
    lines = r.out.splitlines()
    quorum = lines[0].endswith("quorum yes")
    roles = {}
    for line in lines[1:]:
        m = _NODE_ROW.match(line)
        if m:
            roles[m.group(1)] = m.group(3)
    return quorum, roles


def find_leader(cluster: Cluster, timeout: float = 30) -> NodeProc:
    """The worker every live node's `leoronic_nodes` agrees is the leader."""
    def agree() -> NodeProc | None:
        names = set()
        for n in cluster.nodes:
            if n.proc is None or n.proc.poll() is not None:
                continue
            view = nodes_rows(cluster, n)
            if view is None or not view[0]:
                return None
            leaders = [name for name, role in view[1].items() if role == "leader"]
            if len(leaders) != 1:
                return None
            names.add(leaders[0])
        if len(names) != 1:
            return None
        [name] = names
        return next(n for n in cluster.nodes if n.name == name)
    leader: NodeProc = wait_for(agree, timeout, "the workers to agree on a leader", interval=0.2)
    return leader


def submit_chunk(cluster: Cluster, path: Path, via: NodeProc, expected: list[str],
                 log: list[str]) -> None:
    """Submit one tasks file through `via` (retrying the same ids through it if the CLI gives
    up during a leader change) and check every id was accepted."""
    for attempt in range(1, 4):
        r = cluster.sh(f"leoronic_add_tasks_from_file {shlex.quote(str(path))}", node=via,
                       timeout=150, LEORONIC_RETRY_S="40")
        if r.rc == 0:
            assert r.out.split() == expected, (path.name, r)
            log.append(f"{path.name} via {via.name}: ok (try {attempt})")
            return
        log.append(f"{path.name} via {via.name}: try {attempt} failed: {r}")  # the CLI already
        # retried for LEORONIC_RETRY_S before giving up: try again at once
    raise AssertionError(f"submitting {path.name} failed 3 times: {log[-3:]}")


def fetch_all(cluster: Cluster, node: NodeProc, ids: Sequence[str]) -> tuple[list[Any], dict[str, Any]]:
    """`queue` rows and every task's full record, as `node` holds them."""
    client = cluster.client(node)
    try:
        rows = client.call("queue", retry_s=20)
        records = {tid: client.call("task", tid, retry_s=20) for tid in ids}
    finally:
        client.close()
    return rows, records


def declared_lost(cluster: Cluster, node: NodeProc, name: str) -> bool:
    """True once `node` (up) lists worker `name` as not alive: its lease ran out."""
    client = cluster.client(node)
    try:
        rows = client.call("nodes", retry_s=2)["nodes"]
    except LeoronicError:
        return False  # a leader change under way: ask again
    finally:
        client.close()
    return any(r["name"] == name and not r["alive"] for r in rows)


def final_states(cluster: Cluster, node: NodeProc, ids: Sequence[str]) -> dict[str, str]:
    client = cluster.client(node)
    try:
        return {t: s for t, (s, _) in client.call("tasks", list(ids), retry_s=20).items()}
    finally:
        client.close()


def warning_lines(paths: Sequence[str], limit: int = 40,
                  pattern: str = r"WARNING|ERROR|Traceback") -> str:
    """The last `limit` lines matching `pattern` of each log file, for failure messages."""
    out = []
    for path in paths:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        hits = [ln for ln in lines if re.search(pattern, ln)]
        out.append(f"--- {path} ({len(hits)} matching lines, last {limit}):")
        out.extend(hits[-limit:])
    return "\n".join(out)


def wait_identical(names: Sequence[str], fetch: Callable[[], list[tuple[Any, dict[str, Any]]]],
                   ids: Sequence[str], diagnostics: Callable[[], str] = lambda: "") -> dict[str, Any]:
    """Wait until every worker holds the same queue rows and task records (`fetch` returns
    one (rows, records) view per worker, in `names` order); return the records."""
    snapshot: dict[str, Any] = {}

    def identical() -> bool:
        views = fetch()
        snapshot["views"] = views
        rows0, records0 = views[0]
        return all(sorted(rows) == sorted(rows0) and records == records0
                   for rows, records in views[1:])
    try:
        wait_for(identical, 30, "the three workers to hold identical state", interval=1.0)
    except AssertionError:
        views = snapshot["views"]
        diffs = [f"{tid}: " + " | ".join(f"{name}: {describe(v[1][tid])}"
                                         for name, v in zip(names, views, strict=True))
                 for tid in ids if len({repr(v[1][tid]) for v in views}) > 1]
        raise AssertionError(f"workers disagree on {len(diffs)} tasks:\n" + "\n".join(diffs[:20])
                             + "\n" + diagnostics()) from None
    records: dict[str, Any] = snapshot["views"][0][1]
    return records


def logs_excerpt(cluster: Cluster, limit: int = 40) -> str:
    """The warning lines of every node's logs."""
    return warning_lines([p for n in cluster.nodes
                          for p in (n.log_path, os.path.join(n.home, "logs", "node.log"))], limit)


@pytest.fixture
def chaos_cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = start_cluster(str(tmp_path / "cluster"), 3, per_node_args=[FAST_A] * 3)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.timeout(300)
def test_thousand_tasks_survive_worker_and_leader_kills(chaos_cluster: Cluster, tmp_path: Path,
                                                         capsys: Any) -> None:
    cluster = chaos_cluster
    rng = random.Random(SEED)
    started = time.monotonic()
    wall0 = time.time()
    runlog = tmp_path / "RUNLOG"
    chunks: list[tuple[Path, list[str]]] = []
    for c in range(TASKS_A // CHUNK):
        path = tmp_path / f"chunk{c:02d}.tasks"
        chunks.append((path, task_file(path, "chaos", range(c * CHUNK, (c + 1) * CHUNK), runlog, rng)))
    ids = [tid for _, names in chunks for tid in names]
    # Leader kills on turns that submit a chunk, so each hits a cluster with work in flight.
    leader_turns = set(rng.sample(range(1, min(KILLS_A, len(chunks) - 2)), LEADER_KILLS_A))
    submit_log: list[str] = []
    events: list[str] = []

    # Two chunks before the chaos starts, so the first kills hit running tasks.
    for path, names in chunks[:2]:
        submit_chunk(cluster, path, cluster.nodes[0], names, submit_log)
    pending = chunks[2:]

    kills = leader_kills = busy_leader_kills = 0
    for turn in range(KILLS_A):
        leader = find_leader(cluster)
        if turn in leader_turns:
            victim = leader
        else:
            victim = rng.choice([n for n in cluster.nodes if n is not leader])
        via = rng.choice([n for n in cluster.nodes if n is not victim])
        errors: list[BaseException] = []
        submitter = None
        if pending:
            path, names = pending.pop(0)

            def submit(path: Path = path, names: list[str] = names, via: NodeProc = via,
                       errors: list[BaseException] = errors) -> None:
                try:
                    submit_chunk(cluster, path, via, names, submit_log)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                    errors.append(exc)
            submitter = threading.Thread(target=submit, name=f"submit-{turn}")
            submitter.start()
        # Fault schedule: kill once the victim has finished a few more tasks (so it is running
        # some), or at once when every task is final and no submit is under way.
        more, ran_before = rng.randint(2, 8), runs_by_node(runlog)[victim.name]
        busy = [False]  # killed while running tasks (not because all work was final)

        def time_to_kill(victim: NodeProc = victim, more: int = more, ran_before: int = ran_before,
                         submitter: threading.Thread | None = submitter, via: NodeProc = via,
                         busy: list[bool] = busy) -> bool:
            if runs_by_node(runlog)[victim.name] >= ran_before + more:
                busy[0] = True
                return True
            return (submitter is None and not pending
                    and all(s in FINAL for s in final_states(cluster, via, ids).values()))
        wait_for(time_to_kill, 60, f"{victim.name} to finish {more} more tasks", interval=0.05)
        cluster.kill(victim, signal.SIGKILL)
        kills += 1
        leader_kills += victim is leader
        busy_leader_kills += victim is leader and busy[0]
        past_lease = rng.random() < 0.5  # back within the 3 s lease, or once declared lost
        killed_at = time.monotonic()
        if past_lease:
            def lost(victim: NodeProc = victim, via: NodeProc = via) -> bool:
                return declared_lost(cluster, via, victim.name)
            wait_for(lost, 60, f"the others to declare {victim.name} lost", interval=0.1)
        events.append(f"{time.time() - wall0:6.1f}s kill {victim.name}"
                      f"{' (leader)' if victim is leader else ''}, down "
                      f"{time.monotonic() - killed_at:.1f} s"
                      f"{' (declared lost)' if past_lease else ''}, submit via {via.name}")
        cluster.launch(victim)
        cluster.wait_registered(victim, timeout=60)
        if submitter is not None:
            submitter.join(timeout=200)
            assert not submitter.is_alive(), "a submit hung"
        if errors:
            raise AssertionError(f"submit failed: {errors[0]}\n" + "\n".join(submit_log))
    for path, names in pending:  # only if the schedule ran out before the chunks did
        submit_chunk(cluster, path, cluster.nodes[0], names, submit_log)

    # Every task reaches a final state (bounded).
    def all_final() -> bool:
        states = final_states(cluster, cluster.nodes[0], ids)
        return all(states.get(t) in FINAL for t in ids)
    try:
        wait_for(all_final, 150, "every task to be final", interval=1.0)
    except AssertionError:
        states = final_states(cluster, cluster.nodes[0], ids)
        stuck = [t for t in ids if states.get(t) not in FINAL]
        _, records = fetch_all(cluster, cluster.nodes[0], stuck[:20])
        raise AssertionError(
            f"{len(stuck)} tasks never became final: "
            + "\n".join(describe(records[t]) for t in stuck[:20])
            + "\n" + "\n".join(events) + "\n" + logs_excerpt(cluster)) from None

    # The replicated state is the same on every worker (followers may lag a moment).
    records = wait_identical([n.name for n in cluster.nodes],
                             lambda: [fetch_all(cluster, n, ids) for n in cluster.nodes], ids)

    r = cluster.sh("leoronic_get_queue", node=cluster.nodes[1], timeout=60)
    assert r.rc == 0, r
    listing = parse_queue_listing(r.out)
    runs = read_runlog(runlog)
    duplicates = check_records(
        ids, records, listing, runs,
        explains=lambda why: why in ("node lost", "node left") or why.startswith("released: "),
    )
    extra_runs = sum(len(runs[t]) - 1 for t in duplicates)
    stall_at, stall = longest_queued_stall(records)
    report(capsys, f"chaos A (seed {SEED})", {
        "tasks": len(ids), "kills": kills,
        "leader kills": f"{leader_kills} ({busy_leader_kills} while it ran tasks)",
        "duplicate runs": f"{extra_runs} (in {len(duplicates)} tasks)",
        "longest stall": f"{longest_stall(records):.1f} s",
        "longest with tasks queued": f"{stall:.1f} s (at {stall_at - wall0:.1f} s)",
        "total time": f"{time.monotonic() - started:.0f} s",
    })
    assert kills == KILLS_A and leader_kills == busy_leader_kills == LEADER_KILLS_A, events
    # README, Fault tolerance: a new leader is elected in about 1-2 s. pysyncobj's election
    # timeout is 0.4-1.2 s (raftMin/MaxTimeout), so followers stand within 1.2 s of the
    # leader's death and even a split vote is settled within another 1.2 s; then a claim
    # commits (one round trip; one sent to the dead leader is dropped and made again) and a
    # task runs 0.05-0.2 s: about 3 s at most, doubled for a loaded 2-core box. A follower's
    # death stalls nothing (its claimed tasks wait for the lease; they are not queued), nor
    # does the test's pause between submits (nothing queued), so neither counts here.
    # Observed on 2 cores (2026-11-23): 0.6-1.0 s, always the stretch after a leader kill.
    # (The plain `longest stall`, 1.6-2.5 s, was each time such a pause between submits.)
    assert stall < 6.0, (f"tasks waited in the queue {stall:.1f} s with none finishing, from "
                         f"{stall_at - wall0:.1f} s:\n" + "\n".join(events) + "\n"
                         + logs_excerpt(cluster))


# ----- Part B: a partition in network namespaces --------------------------------------------

#: A cut-off worker is declared lost after 3 s and goes isolated after 6 s; the partition lasts
#: about 10 s. With --remove-after 30 it is not also removed from the Raft membership (that
#: path has its own test).
FAST_B = ["--lease", "3", "--isolation-after", "6"]
REMOVE_AFTER_B = "30"

class HealthyWorkerDeclaredLost(AssertionError):
    """A worker that was never cut off or killed got 'node lost' attempts."""


TASKS_B = 200
PORT_B = 7341  # every namespace has its own ports

# Run inside a namespace: print base64(pickle(result)) of Client(ADDR).call(METHOD, *ARGS), or
# of ("dump", ids): the queue rows and every listed task's record.
_CALL = """
import base64, pickle, sys
from comrade.client import Client
addr, cookie_path, payload = sys.argv[1:4]
method, args = pickle.loads(base64.b64decode(payload))
client = Client(addr, open(cookie_path).read().strip())
if method == "dump":
    result = (client.call("queue", retry_s=10), {t: client.call("task", t, retry_s=10) for t in args[0]})
else:
    result = client.call(method, *args, retry_s=10)
sys.stdout.write(base64.b64encode(pickle.dumps(result)).decode())
"""


@dataclass
class NsWorker:
    """A worker in namespace i."""

    index: int
    name: str
    address: str  # rpc HOST:PORT (inside the namespaces)
    home: str
    args: list[str]
    out_path: str
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class NsCluster:
    """Workers in network namespaces, driven with the CLI run inside those namespaces."""

    net: netns.Net
    root: Path
    workers: list[NsWorker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cookie = str(self.root / "cookie")
        with open(os.open(self.cookie, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(os.urandom(16).hex() + "\n")

    def env(self, w: NsWorker, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(LEORONIC_COOKIE=self.cookie, LEORONIC_NODE=w.address, **extra)
        return env

    def start(self, i: int, *extra: str, peer: NsWorker | None = None) -> NsWorker:
        addr = self.net.addr(i)
        name = f"w{i}"
        home = str(self.root / name)
        args = ["--bind", addr, "--port", str(PORT_B), "--home", home, "--name", name, *FAST_B,
                *extra]
        if peer is not None:
            args += ["--peer", peer.address]
        w = NsWorker(i, name, f"{addr}:{PORT_B}", home, args, str(self.root / f"{name}.out"))
        os.makedirs(home, exist_ok=True)
        with open(w.out_path, "ab") as out:
            w.proc = self.net.spawn(i, ["bash", LEORONIC, *args], env=self.env(w), stdout=out.fileno())
        self.workers.append(w)
        self.wait_registered(w)
        return w

    def sh(self, w: NsWorker, script: str, timeout: float = 60,
           **env: str) -> subprocess.CompletedProcess[str]:
        """A user's shell inside w's namespace, talking to w."""
        return self.net.run(w.index, ["bash", "-c", f"source {UTILITIES}\n{script}"],
                            env=self.env(w, **env), timeout=timeout, check=False, cwd=str(self.root))

    def call(self, w: NsWorker, method: str, *args: Any, timeout: float = 90) -> Any:
        """Client(w).call(method, *args), run inside w's namespace."""
        payload = base64.b64encode(pickle.dumps((method, args))).decode()
        p = self.net.run(w.index, [sys.executable, "-c", _CALL, w.address, self.cookie, payload],
                         env=self.env(w), timeout=timeout, check=False)
        if p.returncode != 0:
            raise AssertionError(f"{method} on {w.name} failed: {p.stderr[-2000:]}")
        return pickle.loads(base64.b64decode(p.stdout))

    def nodes(self, w: NsWorker) -> tuple[bool, dict[str, tuple[str, str]], str]:
        """`leoronic_nodes` asked of w: (quorum, name -> (role, status), text)."""
        r = self.sh(w, "leoronic_nodes", timeout=30, LEORONIC_RETRY_S="2")
        if r.returncode != 0 or not r.stdout:
            return False, {}, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        rows = {m.group(1): (m.group(3), m.group(4)) for m in map(_NODE_ROW.match, lines[1:]) if m}
        return lines[0].endswith("quorum yes"), rows, r.stdout

    def wait_registered(self, w: NsWorker, timeout: float = 60) -> None:
        def up() -> bool:
            if w.proc is not None and w.proc.poll() is not None:
                raise AssertionError(f"{w.name} exited: {Path(w.out_path).read_text()[-3000:]}")
            quorum, rows, _ = self.nodes(w)
            return quorum and rows.get(w.name, ("", ""))[1] == "up"
        wait_for(up, timeout, f"{w.name} to register", interval=0.3)

    def leader(self, timeout: float = 30) -> NsWorker:
        def find() -> str:
            quorum, rows, _ = self.nodes(self.workers[0])
            names = [n for n, (role, _) in rows.items() if role == "leader"]
            return names[0] if quorum and len(names) == 1 else ""
        name = wait_for(find, timeout, "a leader", interval=0.3)
        return next(w for w in self.workers if w.name == name)

    def node_log(self, w: NsWorker) -> str:
        try:
            return Path(w.home, "logs", "node.log").read_text(errors="replace")
        except OSError:
            return ""

    def logs_excerpt(self, limit: int = 40) -> str:
        """The warning lines of every worker's logs."""
        return warning_lines([p for w in self.workers
                              for p in (w.out_path, os.path.join(w.home, "logs", "node.log"))],
                             limit)


def _stamp() -> str:
    return time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"


def partition_scenario(net: netns.Net, tmp_path: Path, capsys: Any, cut_leader: bool,
                       remove_after: str = REMOVE_AFTER_B) -> None:
    """Three workers, ~200 tasks; cut one worker (the leader, or a follower chosen by the
    seed) off past --isolation-after, heal, and check every promise.

    Just before the heal one long "keeper" task is made to run on each worker of the majority
    (pinned by a tag), so that anything wrongly declaring a healthy worker lost around the heal
    shows in the record as a 'node lost' attempt on a worker that was never cut off.
    """
    rng = random.Random(SEED)
    started = time.monotonic()
    c = NsCluster(net, tmp_path)
    extra = ("--remove-after", remove_after)
    w1 = c.start(1, *extra)
    c.start(2, *extra, peer=w1)
    c.start(3, *extra, peer=w1)
    runlog = tmp_path / "RUNLOG"
    tasks = tmp_path / "partition.tasks"
    ids = task_file(tasks, "part", range(TASKS_B), runlog, rng)
    timeline: list[str] = []

    leader = c.leader()
    cut = leader if cut_leader else rng.choice([w for w in c.workers if w is not leader])
    majority = [w for w in c.workers if w is not cut]
    via = rng.choice(majority)
    # One keeper per worker of the majority: pinned there by a tag, it runs until the test
    # releases it (a flag file; at most 60 s), i.e. across the partition and the heal.
    release = tmp_path / "release-keepers"
    keepers = []
    for w in majority:
        r = c.sh(via, f"leoronic_add_tag keep{w.name} --node {w.name}")
        assert r.returncode == 0, r
        command = (f"for i in $(seq 600); do [ -e {shlex.quote(str(release))} ] && break; "
                   f'sleep 0.1; done; echo "$LEORONIC_TASK_ID $LEORONIC_ATTEMPT $LEORONIC_NODE_NAME" '
                   f">> {shlex.quote(str(runlog))}")
        keeper = f"part-keeper-{w.name}"
        r = c.sh(via, "leoronic_add_task 1024 1 1024 true "
                 f"{shlex.quote(f'worker:tag keep{w.name}')} '' {shlex.quote(command)} {keeper}")
        assert r.returncode == 0 and r.stdout.split() == [keeper], r
        keepers.append(keeper)
    wait_for(lambda: all(s == "running" for s, _ in c.call(via, "tasks", keepers).values()),
             20, "the keeper tasks to run", interval=0.3)
    r = c.sh(via, f"leoronic_add_tasks_from_file {shlex.quote(str(tasks))}", timeout=150,
             LEORONIC_RETRY_S="40")
    assert r.returncode == 0 and r.stdout.split() == ids, r
    timeline.append(f"{_stamp()} submitted {len(ids)} tasks via {via.name}; leader {leader.name}; "
                    f"keepers running on {', '.join(w.name for w in majority)}")
    regular = list(ids)
    ids += keepers

    def diagnostics() -> str:
        views = []
        for w in c.workers:
            _, _, text = c.nodes(w)
            views.append(f"--- leoronic_nodes asked of {w.name}:\n{text.rstrip()}")
        return ("timeline:\n" + "\n".join(timeline) + "\n" + "\n".join(views) + "\n"
                + c.logs_excerpt())

    # Cut one worker off once a few tasks ran, while most are still queued; hold the cut until
    # it has been in isolated mode for a while: until it recorded a few isolated results.
    first, isolated_goal = rng.randint(5, 20), rng.randint(3, 10)  # the fault schedule
    wait_for(lambda: sum(runs_by_node(runlog).values()) >= first, 60,
             f"{first} tasks to run before the cut", interval=0.05)
    results_file = Path(cut.home, "isolated.results")
    net.cut(cut.index)
    cut_at = time.monotonic()
    timeline.append(f"{_stamp()} cut {cut.name}{' (leader)' if cut is leader else ''}")
    try:
        wait_for(lambda: "entering isolated mode" in c.node_log(cut), 25,
                 f"{cut.name} to enter isolated mode", interval=0.2)
        isolated_after = time.monotonic() - cut_at
        timeline.append(f"{_stamp()} {cut.name} isolated after {isolated_after:.1f} s")
        wait_for(lambda: len(load_results(str(results_file))) >= isolated_goal, 30,
                 f"{cut.name} to record {isolated_goal} isolated results", interval=0.05)
        quorum, rows, text = c.nodes(majority[0])
        assert quorum, f"the majority lost its quorum during the partition:\n{text}"
        assert rows.get(cut.name, ("", ""))[1] != "up", f"{cut.name} still shown up:\n{text}"
    finally:
        net.heal(cut.index)
    partition_s = time.monotonic() - cut_at
    timeline.append(f"{_stamp()} healed after {partition_s:.1f} s")

    # Healed: the isolated worker rejoins, its results merge, every task becomes final.
    c.wait_registered(cut, timeout=60)
    timeline.append(f"{_stamp()} {cut.name} registered again")
    # The keepers run on until the cut-off worker has merged its isolated results: whatever
    # else it proposed while cut off reaches the log before that merge.
    try:
        wait_for(lambda: "quorum is back" in c.node_log(cut) and results_file.exists()
                 and results_file.stat().st_size == 0, 60,
                 f"{cut.name} to merge its isolated results", interval=0.2)
        timeline.append(f"{_stamp()} {cut.name} merged its isolated results")
        # Keep the keepers running until that merge (and whatever the cut-off worker proposed
        # before it) has reached every worker's copy.
        wait_for(lambda: len({repr(c.call(w, "tasks", ids)) for w in c.workers}) == 1, 30,
                 "every worker to apply the merge", interval=0.2)
    finally:
        release.touch()
    timeline.append(f"{_stamp()} keepers released")

    def settled() -> bool:
        states = c.call(majority[0], "tasks", ids)
        merged = not results_file.exists() or results_file.stat().st_size == 0
        return merged and all(states[t][0] in FINAL for t in ids)
    try:
        wait_for(settled, 90, "every task final and the isolated results merged", interval=1.0)
    except AssertionError:
        states = c.call(majority[0], "tasks", ids)
        stuck = [t for t in ids if states[t][0] not in FINAL]
        _, records = c.call(majority[0], "dump", stuck[:20])
        raise AssertionError(f"{len(stuck)} tasks not final; isolated.results "
                             f"{results_file.stat().st_size if results_file.exists() else 0} bytes:\n"
                             + "\n".join(describe(records[t]) for t in stuck[:20])
                             + "\n" + diagnostics()) from None
    timeline.append(f"{_stamp()} all tasks final on {majority[0].name}")

    records = wait_identical([w.name for w in c.workers],
                             lambda: [c.call(w, "dump", ids) for w in c.workers], ids, diagnostics)

    # Only the cut-off worker was ever silent: a worker of the majority declared lost means a
    # stale decision (e.g. the cut-off leader's, replayed after the heal) was applied.
    wrongly_lost = sorted({f"{tid} #{a.number} on {a.node}" for tid, t in records.items()
                           for a in t.attempts if a.node != cut.name and a.why == "node lost"})
    if wrongly_lost:
        raise HealthyWorkerDeclaredLost(
            f"workers of the majority, never cut off, were declared lost and their running "
            f"tasks killed and requeued: {wrongly_lost[:20]}\n" + diagnostics())

    r = c.sh(majority[0], "leoronic_get_queue", timeout=60)
    assert r.returncode == 0, r
    listing = parse_queue_listing(r.stdout)
    runs = read_runlog(runlog)
    duplicates = check_records(
        ids, records, listing, runs,
        explains=lambda why: "isolated" in why or why == "node lost",
        isolated=cut.name,
    )
    isolated_runs = sum(1 for t in records.values() for a in t.attempts
                        if a.node == cut.name and "isolated" in a.why)
    assert isolated_runs > 0, ("the cut-off worker ran nothing in isolated mode: the partition "
                               "did not test isolation\n" + diagnostics())
    extra_runs = sum(len(runs[t]) - 1 for t in duplicates)
    report(capsys, f"chaos B, {'leader' if cut_leader else 'follower'} cut (seed {SEED})", {
        "tasks": len(ids), "cut": cut.name,
        "partition": f"{partition_s:.1f} s (isolated after {isolated_after:.1f} s)",
        "isolated runs": isolated_runs,
        "tasks run twice on the cut worker": sum(
            1 for t in ids if sum(1 for ln in runs[t] if ln[1] == cut.name) > 1),
        "duplicate runs": f"{extra_runs} (in {len(duplicates)} tasks)",
        "longest stall": f"{longest_stall({t: records[t] for t in regular}):.1f} s",
        "total time": f"{time.monotonic() - started:.0f} s",
    })


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_partitioned_follower_runs_isolated_and_merges(ns_net: netns.Net, tmp_path: Path,
                                                       capsys: Any) -> None:
    partition_scenario(ns_net, tmp_path, capsys, cut_leader=False)


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_partitioned_leader_runs_isolated_and_merges(ns_net: netns.Net, tmp_path: Path,
                                                     capsys: Any) -> None:
    partition_scenario(ns_net, tmp_path, capsys, cut_leader=True)


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_partitioned_follower_removed_from_membership_rejoins(ns_net: netns.Net, tmp_path: Path,
                                                              capsys: Any) -> None:
    """The README's timings for this case: lost after 3 s, removed after 5 s more, so a
    ~10 s partition also removes the cut-off worker from the Raft membership."""
    partition_scenario(ns_net, tmp_path, capsys, cut_leader=False, remove_after="5")

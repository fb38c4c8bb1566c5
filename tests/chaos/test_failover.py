"""Fault tolerance with real SIGKILLs (issue #5): workers, leaders and whole clusters dying.

Every test starts its own cluster of real `leoronic` processes on loopback with short timings
(`--lease 3`: a silent node's tasks are requeued after ~3 s), kills processes with SIGKILL
through `Cluster.kill` (the worker's process group only: tasks run in their own sessions) and
restarts them with `Cluster.launch` (same arguments, same home). Everything is observed the way
an operator would: `leoronic_nodes`, `leoronic_get_queue`, `leoronic_result`, plus the task's
replicated record (`task` RPC) for its attempt history. Waits poll with a deadline.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster, NodeProc, Result, wait_for

LEASE = 3.0
FAST = ["--lease", "3", "--remove-after", "30", "--isolation-after", "30"]

# ----- helpers (also used by test_isolation.py) ---------------------------------------------

_ROW = re.compile(r"^(\S+)  (\S+:\d+)  (.+?)  (up|UNREACHABLE since \S+)$")


@dataclass
class NodesView:
    """`leoronic_nodes` as parsed text: header facts and one (role, status) per node."""

    asked: str
    leader: str  # raft address, "" for none
    quorum: bool
    isolated: bool
    rows: dict[str, tuple[str, str]]
    text: str

    def leader_name(self) -> str:
        names = [n for n, (role, _) in self.rows.items() if role == "leader"]
        return names[0] if len(names) == 1 else ""


def nodes_view(cluster: Cluster, node: NodeProc, retry_s: str = "2") -> NodesView | None:
    """`leoronic_nodes` asked of `node`; None if it did not answer."""
    r = cluster.sh("leoronic_nodes", node=node, timeout=30, LEORONIC_RETRY_S=retry_s)
    if r.rc != 0:
        return None
    lines = r.out.splitlines()
    head = re.match(r"^asked (\S+); leader (\S+); quorum (yes|NO)$", lines[0]) if lines else None
    assert head, r
    rows = {}
    for line in lines[1:]:
        m = _ROW.match(line)
        if m:
            rows[m.group(1)] = (m.group(3), m.group(4))
    return NodesView(asked=head.group(1), leader="" if head.group(2) == "none" else head.group(2),
                     quorum=head.group(3) == "yes",
                     isolated=f"{head.group(1)} is ISOLATED (no quorum)" in r.out,
                     rows=rows, text=r.out)


def add_task(cluster: Cluster, command: str, conditions: str = "", task_id: str = "",
             node: NodeProc | None = None, **env: str) -> Result:
    """`leoronic_add_task 1024 1 1024 true CONDITIONS "" COMMAND [ID]`, every field quoted."""
    fields = ["1024", "1", "1024", "true", conditions, "", command] + ([task_id] if task_id else [])
    assigns = "".join(f"{k}={shlex.quote(v)} " for k, v in env.items())  # e.g. LEORONIC_RETRIES
    return cluster.sh(assigns + "leoronic_add_task " + " ".join(shlex.quote(f) for f in fields),
                      node=node)


def submit(cluster: Cluster, command: str, conditions: str = "", task_id: str = "",
           node: NodeProc | None = None, **env: str) -> str:
    """Submit a task that must be accepted; return its id."""
    r = add_task(cluster, command, conditions, task_id, node, **env)
    assert r.rc == 0, r
    return r.out.strip()


def record(cluster: Cluster, node: NodeProc, task_id: str, retry_s: float = 5) -> Any:
    """The replicated record of a task (with `.attempts`), read through `node`."""
    client = cluster.client(node)
    try:
        return client.call("task", task_id, retry_s=retry_s)
    finally:
        client.close()


def queue_rows(cluster: Cluster, node: NodeProc | None = None) -> list[list[str]]:
    """The rows of `leoronic_get_queue` (split on whitespace), header dropped."""
    r = cluster.sh("leoronic_get_queue", node=node)
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines and lines[0].split()[:2] == ["ID", "STATE"], r
    return [line.split() for line in lines[1:]]


def queue_states(cluster: Cluster, node: NodeProc | None = None) -> dict[str, str]:
    rows = queue_rows(cluster, node)
    ids = [row[0] for row in rows]
    assert len(ids) == len(set(ids)), f"an id is listed twice: {ids}"
    return {row[0]: row[1] for row in rows}


def result(cluster: Cluster, task_id: str, node: NodeProc | None = None) -> Result:
    return cluster.sh(f"leoronic_result {shlex.quote(task_id)}", node=node)


def wait_done(cluster: Cluster, ids: list[str], node: NodeProc | None = None,
              timeout: float = 40) -> None:
    r = cluster.sh(f"leoronic_wait --timeout {timeout} " + " ".join(map(shlex.quote, ids)),
                   node=node, timeout=timeout + 30)
    assert r.rc == 0, r


def add_tag(cluster: Cluster, target: NodeProc, tag: str, via: NodeProc | None = None) -> None:
    r = cluster.sh(f"leoronic_add_tag {shlex.quote(tag)} --node {target.name}", node=via)
    assert r.rc == 0, r


def leader_of(cluster: Cluster, asked: NodeProc, timeout: float = 20) -> NodeProc:
    """The node `asked` shows as the Raft leader (waits for one)."""
    def find() -> str:
        view = nodes_view(cluster, asked)
        return view.leader_name() if view and view.quorum else ""
    name = wait_for(find, timeout, "a leader", interval=0.2)
    return next(n for n in cluster.nodes if n.name == name)


def pids_matching(marker: str) -> set[int]:
    """PIDs whose command line contains `marker` (pgrep -f)."""
    p = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return {int(x) for x in p.stdout.split()} - {os.getpid()}


def fast_cluster(make_cluster: Any, count: int = 3, *extra: list[str]) -> Cluster:
    args = [FAST + (list(extra[i]) if i < len(extra) else []) for i in range(count)]
    cluster: Cluster = make_cluster(count, per_node_args=args)
    return cluster


# ----- 1. a worker dies while running a task ------------------------------------------------


def test_worker_death_requeues_its_task_and_a_returning_worker_is_fenced(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = fast_cluster(make_cluster)
    leader = leader_of(cluster, cluster.nodes[0])
    victim, heir = [n for n in cluster.nodes if n is not leader]
    tag = "pin" + uuid.uuid4().hex[:6]

    # Only the victim (a follower) may run it at first.
    add_tag(cluster, victim, tag, via=leader)
    tid = submit(cluster, "sleep 6; echo ok on $LEORONIC_NODE_NAME", f"worker:tag {tag}", "long",
                 node=leader)
    wait_for(lambda: (t := record(cluster, leader, tid)).state.value == "running"
             and t.node == victim.name and t.attempt == 1, 20, "the task to run on the victim",
             interval=0.1)
    add_tag(cluster, heir, tag, via=leader)  # now it may also run elsewhere

    killed_at = time.monotonic()
    cluster.kill(victim)

    # Within about the lease it is back in the queue and running elsewhere as attempt 2.
    def rerun() -> Any:
        t = record(cluster, leader, tid)
        return t if t.attempt == 2 and t.node == heir.name else None
    t = wait_for(rerun, LEASE + 8, "the task to be requeued and run again", interval=0.1)
    requeued_after = time.monotonic() - killed_at
    assert requeued_after < LEASE + 5, f"requeued only after {requeued_after:.1f} s"
    first = t.attempts[0]
    assert (first.number, first.node, first.why) == (1, victim.name, "node lost"), t.attempts
    assert first.end is not None and first.exit_code is None, first

    wait_done(cluster, [tid], node=leader)
    t = record(cluster, leader, tid)
    assert t.state.value == "done" and len(t.attempts) == 2, t.attempts
    second = t.attempts[1]
    assert (second.number, second.node, second.why, second.exit_code) == \
        (2, heir.name, "exit", 0), t.attempts
    r = result(cluster, tid, node=leader)
    assert (r.rc, r.out) == (0, f"ok on {heir.name}\n"), r

    # The dead worker comes back with the same home: it rejoins and shows as up everywhere.
    cluster.launch(victim)
    cluster.wait_registered(victim)

    def up_everywhere() -> bool:
        for n in cluster.nodes:
            view = nodes_view(cluster, n)
            if view is None or view.rows.get(victim.name, ("", ""))[1] != "up":
                return False
        return True
    wait_for(up_everywhere, 20, f"{victim.name} to show as up on every node", interval=0.2)

    # Fencing: its first life's attempt changes nothing; the result stays the heir's.
    sentinel = submit(cluster, "true", f"worker:tag {tag}", node=victim)  # a full round of work
    wait_done(cluster, [sentinel], node=victim)
    for n in cluster.nodes:
        again = record(cluster, n, tid)
        assert again.state == t.state and again.attempts == t.attempts, again.attempts
        assert again.outcome == t.outcome
    r = result(cluster, tid, node=victim)
    assert (r.rc, r.out) == (0, f"ok on {heir.name}\n"), r


# ----- 2. a worker's orphaned tasks are killed when it restarts ------------------------------


@pytest.mark.parametrize("lost_first", [False, True], ids=["back-within-lease", "back-after-lost"])
def test_restarted_worker_kills_the_orphans_of_its_previous_life(make_cluster, lost_first) -> None:  # type: ignore[no-untyped-def]
    """A restarted worker kills the task processes its previous life left, and the task runs
    again. How its first attempt ends is a race the test settles each way: the leader declares
    the silent worker lost (`node lost`) once its lease runs out, while the restarted worker,
    once its join is applied, releases the attempts the state still gives it
    (`released: node restarted`); whichever is applied first ends the attempt and the other
    finds nothing to do (an expiry proposed before the join is refused after it, since the
    join refreshes `last_seen`). With a 3 s lease and heartbeats every 2 s a restart can lose
    that race, so: either a lease far longer than a restart takes (30 s), or a restart only
    once the leader has declared the worker lost."""
    lease = "3" if lost_first else "30"
    args = ["--lease", lease, "--remove-after", "30", "--isolation-after", "30"]
    cluster: Cluster = make_cluster(3, per_node_args=[args] * 3)
    leader = leader_of(cluster, cluster.nodes[0])
    victim = next(n for n in cluster.nodes if n is not leader)
    marker = f"marker-{uuid.uuid4().hex}"
    tag = "orph" + uuid.uuid4().hex[:6]
    add_tag(cluster, victim, tag, via=leader)
    # Only its first attempt hangs; bash stays (two commands) so its command line has the marker.
    tid = submit(cluster, f'if [ "$LEORONIC_ATTEMPT" = 1 ]; then sleep 300; fi; echo {marker}',
                 f"worker:tag {tag}", node=leader)
    # One process: the task's bash (while it forks `sleep`, the child briefly has its command
    # line too, so wait until only one matches).
    def one_task_process() -> set[int]:
        pids = pids_matching(marker)
        return pids if len(pids) == 1 else set()
    orphans = wait_for(one_task_process, 20, "the task's process to start")
    assert record(cluster, leader, tid).node == victim.name

    cluster.kill(victim)  # the worker's process group only: the task has its own session
    killed_at = time.monotonic()
    assert victim.proc is not None and victim.proc.poll() is not None
    assert pids_matching(marker) == orphans, "SIGKILL of the worker killed its task too"
    for pid in orphans:
        assert os.path.exists(f"/proc/{pid}"), pid
    if lost_first:
        # Declared lost within about the lease (plus the CLI's polling); only the victim has
        # the tag, so the task waits in the queue for it, and its orphan runs on meanwhile.
        wait_for(lambda: (t := record(cluster, leader, tid)).state.value == "queued"
                 and [a.why for a in t.attempts] == ["node lost"], LEASE + 10,
                 f"the leader to declare {victim.name} lost", interval=0.1)
        assert pids_matching(marker) == orphans, "the orphan ended before the restart"

    cluster.launch(victim)
    wait_for(lambda: not (pids_matching(marker) & orphans), 30,
             "the restarted worker to kill its orphan", interval=0.1)
    cluster.wait_registered(victim)
    if not lost_first:
        assert time.monotonic() - killed_at < 25, "the restart took nearly the 30 s lease"
    assert "orphaned task process groups of a previous life" in victim.log(), victim.log()[-2000:]

    # The task itself is not lost: it runs again (attempt 2, which does not hang) and finishes.
    wait_done(cluster, [tid], node=leader)
    t = record(cluster, leader, tid)
    assert t.state.value == "done", t
    first = "node lost" if lost_first else "released: node restarted"
    assert [(a.number, a.node, a.why, a.exit_code) for a in t.attempts] == \
        [(1, victim.name, first, None), (2, victim.name, "exit", 0)], t.attempts
    r = result(cluster, tid, node=leader)
    assert (r.rc, r.out) == (0, f"{marker}\n"), r
    assert not pids_matching(marker)


# ----- 3. the leader dies -------------------------------------------------------------------


def test_leader_death_elects_a_new_leader_and_no_task_is_lost_or_doubled(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = fast_cluster(make_cluster)
    old = leader_of(cluster, cluster.nodes[0])
    survivors = [n for n in cluster.nodes if n is not old]
    via = survivors[0]

    before = [submit(cluster, "sleep 1; echo $LEORONIC_TASK_ID", task_id=f"pre{i}", node=via)
              for i in range(4)]

    cluster.kill(old)
    killed_at = time.monotonic()

    def new_leader() -> str:
        view = nodes_view(cluster, via, retry_s="1")
        if view is None or not view.quorum:
            return ""
        name = view.leader_name()
        return name if name and name != old.name else ""
    # README: "elected in about 1-2 s"; the bound leaves room for a loaded 2-core test box
    # and the CLI's own start-up (~0.2-0.6 s per poll).
    name = wait_for(new_leader, 5, "a new leader", interval=0.05)
    elected_after = time.monotonic() - killed_at
    assert name in {n.name for n in survivors}
    assert elected_after < 5, f"new leader only after {elected_after:.1f} s"

    # Submitting through either survivor works; every id completes exactly once.
    after = [submit(cluster, "echo $LEORONIC_TASK_ID", task_id=f"post{i}",
                    node=survivors[i % 2]) for i in range(6)]
    ids = before + after
    wait_done(cluster, ids, node=via, timeout=40)
    for n in survivors:
        states = queue_states(cluster, n)
        assert {i: states.get(i) for i in ids} == {i: "done" for i in ids}, states
    for tid in ids:
        t = record(cluster, via, tid)
        finals = [a for a in t.attempts if a.why == "exit"]
        assert len(finals) == 1 and finals[0].exit_code == 0, (tid, t.attempts)
        # Only a node's loss ends an attempt early. (Not asserted to be the old leader's: an
        # election slower than the lease minus a heartbeat, seen on a loaded 2-core box, can
        # make the new leader expire a live follower too; see the next test.)
        assert all(a.why == "node lost" for a in t.attempts if a is not finals[0]), \
            (tid, t.attempts)
        r = result(cluster, tid, node=via)
        assert (r.rc, r.out) == (0, f"{tid}\n"), r


# ----- 4. every worker killed at once, then restarted ----------------------------------------


def submit_file(cluster: Cluster, tmp_path: Path, rows: list[tuple[str, str, str]],
                node: NodeProc | None = None) -> list[str]:
    """`leoronic_add_tasks_from_file` of (conditions, command, id) rows; the ids it printed."""
    path = tmp_path / f"tasks-{uuid.uuid4().hex[:8]}.txt"
    path.write_text("".join(
        " ".join(shlex.quote(f) for f in ["1024", "1", "1024", "true", cond, "", cmd, tid]) + "\n"
        for cond, cmd, tid in rows))
    r = cluster.sh(f"leoronic_add_tasks_from_file {shlex.quote(str(path))}", node=node)
    assert r.rc == 0, r
    return r.out.split()


def test_a_worker_restarted_without_a_quorum_waits_for_one_and_stops_on_sigterm(
        make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Restarted while the others are down, a worker waits for them as long as it takes and
    registers once one is back; SIGTERM while it waits stops it at once. (It gave up after a
    minute, and then its actor thread kept the process alive for good, deaf to SIGTERM.)"""
    cluster = fast_cluster(make_cluster)
    n1, n2, n3 = cluster.nodes
    waiting = "waiting for the cluster to register this node"
    for n in cluster.nodes:
        cluster.kill(n)
    cluster.launch(n1)
    wait_for(lambda: waiting in n1.log(), 30, "n1 to wait for a quorum")
    cluster.launch(n2)
    cluster.wait_registered(n1)
    cluster.wait_registered(n2)

    for n in (n2, n1):
        cluster.kill(n)
    seen = n1.log().count(waiting)
    cluster.launch(n1)
    wait_for(lambda: n1.log().count(waiting) > seen, 30, "n1 to wait for a quorum again")
    assert n1.proc is not None
    os.killpg(n1.proc.pid, signal.SIGTERM)
    wait_for(lambda: n1.proc is not None and n1.proc.poll() is not None, 20,
             "n1 to exit on SIGTERM while waiting for a quorum")
    assert n1.proc.returncode == 0, n1.log()[-2000:]


def test_whole_cluster_killed_at_once_and_restarted_loses_nothing(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster = fast_cluster(make_cluster)
    n1, n2, n3 = cluster.nodes
    finished = submit_file(cluster, tmp_path, [("", f"echo result-{i} on $LEORONIC_NODE_NAME",
                                                f"fin{i}") for i in range(10)], node=n2)
    held = submit_file(cluster, tmp_path, [("worker:tag never", f"echo held-{i}", f"held{i}")
                                           for i in range(10)], node=n3)
    assert finished == [f"fin{i}" for i in range(10)] and held == [f"held{i}" for i in range(10)]
    wait_done(cluster, finished, node=n1)
    before = queue_states(cluster, n1)
    assert before == {**{t: "done" for t in finished}, **{t: "queued" for t in held}}, before
    outputs = {}
    for tid in finished:
        r = result(cluster, tid, node=n1)
        assert r.rc == 0 and r.out.startswith(f"result-{tid[3:]} on n"), r
        outputs[tid] = r.out

    # SIGKILL all three before reaping any of them.
    for n in cluster.nodes:
        assert n.proc is not None
        os.killpg(n.proc.pid, signal.SIGKILL)
    for n in cluster.nodes:
        cluster.kill(n)  # reaps
        proc = n.proc
        assert proc is not None and proc.returncode == -signal.SIGKILL, proc and proc.returncode

    for n in cluster.nodes:
        cluster.launch(n)

    # Asked at once, before they have elected a leader, a worker waits or says it has not
    # caught up (exit 3); it never answers from a copy that has not replayed its journal (one
    # listed 0 tasks, and `leoronic_wait` exited 0 with tasks queued).
    def full_answer() -> bool:
        r = cluster.sh("leoronic_get_queue --summary", node=n1, LEORONIC_RETRY_S="0")
        assert r.rc in (0, 3), r
        if r.rc == 0:
            assert "done 10" in r.out and "total 20" in r.out, r
        w = cluster.sh("leoronic_wait --timeout 0 held0", node=n2, LEORONIC_RETRY_S="0")
        assert w.rc in (3, 5), w  # held0 is queued
        return r.rc == 0
    wait_for(full_answer, 60, "a full answer after the restart", interval=0.0)

    for n in cluster.nodes:
        cluster.wait_registered(n)

    for n in cluster.nodes:
        assert queue_states(cluster, n) == before
    for tid in finished:
        r = result(cluster, tid, node=n3)
        assert (r.rc, r.out) == (0, outputs[tid]), r
    for tid in held:
        r = result(cluster, tid, node=n2)
        assert r.rc == 5 and f"task {tid} is still queued" in r.err, r

    # The held tasks are real queue entries: give a node the tag and they all run, once.
    add_tag(cluster, n2, "never", via=n1)
    wait_done(cluster, held, node=n1)
    for tid in held:
        t = record(cluster, n1, tid)
        assert len(t.attempts) == 1 and t.attempts[0].node == "n2", t.attempts
        r = result(cluster, tid, node=n1)
        assert (r.rc, r.out) == (0, f"held-{tid[4:]}\n"), r


def test_one_node_cluster_killed_and_restarted_loses_nothing(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The only worker, SIGKILLed with tasks finished, waiting and running, and restarted with
    the same home: finished tasks keep their state and full output, waiting ones stay queued
    (held ones held) and run once allowed, and the running one's orphan is killed before its
    second attempt starts. That attempt ends as `released: node restarted`: a one-node
    cluster's leader is the node itself, which never declares itself lost
    (`Node._expire_silent_nodes` skips its own name), so only the restarted node's
    `_release_stale` can end it. (Once, such a restart listed two of six tasks right after
    `leoronic_nodes` showed the node up: README, Restart.)"""
    cluster = fast_cluster(make_cluster, 1)
    [n1] = cluster.nodes
    ran = tmp_path / "ran"  # each finished or waiting task appends its id when it runs
    finished = submit_file(cluster, tmp_path, [
        ("", f"echo $LEORONIC_TASK_ID >> {shlex.quote(str(ran))}; echo result-{i} on "
             f"$LEORONIC_NODE_NAME; echo err-{i} >&2", f"fin{i}") for i in range(5)])
    # Bigger than the 64 KiB tail the record keeps: read back from the node's outputs file.
    big = "".join(f"{i}\n" for i in range(1, 30001))
    finished += submit_file(cluster, tmp_path, [
        ("", f"echo $LEORONIC_TASK_ID >> {shlex.quote(str(ran))}; seq 1 30000", "finbig")])
    wait_done(cluster, finished)
    blocked = submit_file(cluster, tmp_path, [
        ("worker:tag later", f"echo $LEORONIC_TASK_ID >> {shlex.quote(str(ran))}; "
                             f"echo blocked-{i}", f"blocked{i}") for i in range(3)])
    held = [submit(cluster, f"echo $LEORONIC_TASK_ID >> {shlex.quote(str(ran))}; echo held-{i}",
                   task_id=f"held{i}", LEORONIC_HOLD="1") for i in range(2)]

    # One long task, running at the kill. Only its first attempt hangs; every attempt notes
    # "ATTEMPT PID" in `runs` and the second says whether another's process is still alive
    # (a zombie is dead: the killed orphan's new parent, PID 1, may reap it only later).
    marker = f"marker-{uuid.uuid4().hex}"
    runs = tmp_path / "runs"
    q_runs = shlex.quote(str(runs))
    long_cmd = (f'echo "$LEORONIC_ATTEMPT $$" >> {q_runs}; '
                f'if [ "$LEORONIC_ATTEMPT" = 1 ]; then sleep 300; fi; '
                f'while read -r a p; do s=$(cut -d" " -f3 /proc/$p/stat 2>/dev/null); '
                f'if [ "$p" != $$ ] && [ -n "$s" ] && [ "$s" != Z ]; then '
                f'echo "attempt $a still alive ($s)"; fi; done < {q_runs}; '
                f'echo {marker} attempt $LEORONIC_ATTEMPT')
    long_id = submit(cluster, long_cmd, task_id="long")

    def one_task_process() -> set[int]:  # while bash forks `sleep`, two match for a moment
        pids = pids_matching(marker)
        return pids if len(pids) == 1 else set()
    orphans = wait_for(one_task_process, 20, "the long task's process to start")
    t = record(cluster, n1, long_id)
    assert (t.state.value, t.node, t.attempt) == ("running", "n1", 1), t

    before = queue_states(cluster)
    waiting = blocked + held
    assert before == {**{i: "done" for i in finished}, **{i: "queued" for i in waiting},
                      long_id: "running"}, before
    held_rows = {row[0] for row in queue_rows(cluster) if row[-1] == "[held]"}
    assert held_rows == set(held), held_rows
    outputs = {}
    for tid in finished:
        r = result(cluster, tid)
        expected = (big, "") if tid == "finbig" else (f"result-{tid[3:]} on n1\n", f"err-{tid[3:]}\n")
        assert (r.rc, (r.out, r.err)) == (0, expected), r
        outputs[tid] = expected
    records = {tid: record(cluster, n1, tid) for tid in finished + waiting}
    kept = records["finbig"].outcome
    assert kept.stdout_bytes == len(big) > len(kept.stdout_tail), kept.stdout_bytes

    cluster.kill(n1)  # SIGKILL to the worker's process group; the task has its own session
    proc = n1.proc
    assert proc is not None and proc.returncode == -signal.SIGKILL, proc and proc.returncode
    assert pids_matching(marker) == orphans, "SIGKILL of the worker killed its task too"

    seen = len(n1.log())
    cluster.launch(n1)

    # Asked at once, it waits or says it has not caught up (exit 3); it never answers from a
    # copy that has not replayed its journal.
    total = len(finished) + len(waiting) + 1

    def full_answer() -> bool:
        r = cluster.sh("leoronic_get_queue --summary", LEORONIC_RETRY_S="0")
        assert r.rc in (0, 3), r
        if r.rc == 0:
            counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"(\w+) (\d+)", r.out)}
            # The long task may be queued, running or (its second attempt) done already.
            assert counts["total"] == total and counts["held"] == len(held), r
            assert counts["done"] - len(finished) in (0, 1), r
            assert counts["queued"] - len(waiting) in (0, 1), r
        w = cluster.sh("leoronic_wait --timeout 0 blocked0", LEORONIC_RETRY_S="0")
        assert w.rc in (3, 5), w  # blocked0 is queued
        return r.rc == 0
    wait_for(full_answer, 60, "a full answer after the restart", interval=0.0)
    cluster.wait_registered(n1)

    # The orphan is killed by the restarted node, and the task runs again as attempt 2.
    wait_for(lambda: not (pids_matching(marker) & orphans), 30,
             "the restarted worker to kill the orphan", interval=0.1)
    wait_done(cluster, [long_id])
    log = n1.log()[seen:]
    assert "killed 1 orphaned task process groups of a previous life" in log, log[-3000:]
    assert "releasing 1 tasks of a previous life of this node" in log, log[-3000:]
    t = record(cluster, n1, long_id)
    assert [(a.number, a.node, a.why, a.exit_code) for a in t.attempts] == \
        [(1, "n1", "released: node restarted", None), (2, "n1", "exit", 0)], t.attempts
    r = result(cluster, long_id)
    assert (r.rc, r.out) == (0, f"{marker} attempt 2\n"), r  # no "attempt 1 still alive"
    assert [line.split()[0] for line in runs.read_text().splitlines()] == ["1", "2"]
    assert not pids_matching(marker)

    # Finished tasks: unchanged record and full output; waiting ones: unchanged and queued.
    after = queue_states(cluster)
    assert after == {**before, long_id: "done"}, after
    for tid in finished + waiting:
        assert record(cluster, n1, tid) == records[tid], tid
    for tid in finished:
        r = result(cluster, tid)
        assert (r.rc, (r.out, r.err)) == (0, outputs[tid]), r
    assert {row[0] for row in queue_rows(cluster) if row[-1] == "[held]"} == set(held)
    for tid in waiting:
        r = result(cluster, tid)
        assert r.rc == 5 and f"task {tid} is still queued" in r.err, r

    # They are real queue entries: allowed to run, each runs once.
    add_tag(cluster, n1, "later")
    r = cluster.sh("leoronic_release " + " ".join(held))
    assert r.rc == 0, r
    wait_done(cluster, waiting)
    for tid in waiting:
        t = record(cluster, n1, tid)
        assert [(a.number, a.node, a.why) for a in t.attempts] == [(1, "n1", "exit")], t.attempts
        r = result(cluster, tid)
        assert (r.rc, r.out) == (0, f"{tid[:-1]}-{tid[-1]}\n"), r
    assert sorted(ran.read_text().split()) == sorted(finished + waiting)


# ----- 7. retries ------------------------------------------------------------------------------


def test_retries_move_a_failing_task_to_another_node(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster = fast_cluster(make_cluster)
    n1 = cluster.nodes[0]
    mark = tmp_path / "first-run-happened"
    flaky = (f"if [ -e {mark} ]; then echo second on $LEORONIC_NODE_NAME; "
             f"else touch {mark}; echo first failed >&2; exit 1; fi")
    # LEORONIC_RETRIES through the shell function ...
    a = submit(cluster, flaky, task_id="flaky", LEORONIC_RETRIES="2")
    # ... and --retries on the command line.
    r = cluster.cli("add-task", "--retries", "1", "--", "1024", "1", "1024", "true", "", "",
                    "echo always on $LEORONIC_NODE_NAME; exit 3", "doomed")
    assert (r.rc, r.out) == (0, "doomed\n"), r
    b = "doomed"

    r = cluster.sh(f"leoronic_wait --timeout 40 {a} {b}", timeout=70)
    assert r.rc == 1 and b in r.err and a not in r.err.split(":")[-1], r

    def ran_twice_on_two_nodes(task_id: str, state: str, codes: tuple[int, int], said: str) -> None:
        """Two attempts, both ended by exit with `codes`, the second on another node, whose
        output (`said` on NODE) is the result."""
        t = record(cluster, n1, task_id)
        assert t.state.value == state, t
        assert [(x.number, x.why, x.exit_code) for x in t.attempts] == \
            [(1, "exit", codes[0]), (2, "exit", codes[1])], t.attempts
        assert t.attempts[1].node != t.attempts[0].node, t.attempts
        r = result(cluster, task_id)
        assert (r.rc, r.out) == (codes[1], f"{said} on {t.attempts[1].node}\n"), r

    ran_twice_on_two_nodes(a, "done", (1, 0), "second")
    ran_twice_on_two_nodes(b, "failed", (3, 3), "always")


# ----- 8. a corrupted journal ---------------------------------------------------------------


def _flip_middle_of_journal(path: str) -> int:
    """Invert 16 bytes around the record boundary nearest the middle of the journal's records.

    pysyncobj's journal: a 40-byte header whose bytes 36-39 are the end offset of the records,
    then records framed as size(4) index(8) term(8) command size(4). Returns the offset.
    """
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        end = int.from_bytes(data[36:40], "little")
        assert 40 < end <= len(data), (end, len(data))
        boundaries, offset = [], 40
        while offset < end:
            boundaries.append(offset)
            offset += 4 + int.from_bytes(data[offset:offset + 4], "little") + 4
        assert len(boundaries) >= 3, f"journal has only {len(boundaries)} records"
        middle = boundaries[len(boundaries) // 2]
        for i in range(middle - 8, middle + 8):
            data[i] ^= 0xFF
        f.seek(0)
        f.write(data)
    return middle


def test_corrupted_journal_is_refused_clearly_and_the_documented_rejoin_works(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = fast_cluster(make_cluster)
    leader = leader_of(cluster, cluster.nodes[0])
    victim = next(n for n in cluster.nodes if n is not leader)
    ids = [submit(cluster, f"echo early-{i}", task_id=f"early{i}", node=leader) for i in range(3)]
    wait_done(cluster, ids, node=leader)
    cluster.kill(victim)

    journal = os.path.join(victim.home, "raft", "journal")
    assert os.path.exists(journal), f"no journal file at {journal}"
    _flip_middle_of_journal(journal)

    # More work while it is down, which it must catch up on.
    late = [submit(cluster, f"echo late-{i}", task_id=f"late{i}", node=leader) for i in range(3)]
    wait_done(cluster, late, node=leader)

    seen = len(victim.log())
    cluster.launch(victim)
    proc = victim.proc
    assert proc is not None
    rc = wait_for(lambda: proc.poll() is not None and [proc.returncode], 30,
                  "the node to refuse its damaged journal")[0]
    out = victim.log()[seen:]
    assert rc != 0, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if "damaged" in line]
    assert len(lines) == 1, out
    assert journal in lines[0] and "--peer" in lines[0] and "mv " in lines[0], lines[0]

    # The documented way back: move the Raft files away, start again with --peer of a live node.
    raft = os.path.join(victim.home, "raft")
    os.rename(raft, raft + ".damaged")
    args, i = [], 0
    while i < len(victim.args):
        if victim.args[i] == "--peer":
            i += 2
            continue
        args.append(victim.args[i])
        i += 1
    victim.args = args + ["--peer", leader.address]
    cluster.launch(victim)
    cluster.wait_registered(victim)

    def caught_up() -> bool:
        states = queue_states(cluster, victim)
        return all(states.get(t) == "done" for t in ids + late)
    wait_for(caught_up, 20, f"{victim.name} to catch up", interval=0.2)
    for n in cluster.nodes:
        view = nodes_view(cluster, n)
        assert view is not None and view.rows[victim.name] in \
            {("follower", "up"), ("leader", "up")}, view and view.text
    for tid in ids + late:
        r = result(cluster, tid, node=victim)
        assert r.rc == 0 and r.out == f"{tid[:-1]}-{tid[-1]}\n", r
    # And it works again: a task only it may run.
    add_tag(cluster, victim, "back", via=victim)
    tid = submit(cluster, "echo on $LEORONIC_NODE_NAME", "worker:tag back", node=victim)
    wait_done(cluster, [tid], node=leader)
    assert result(cluster, tid, node=leader).out == f"on {victim.name}\n"


def test_a_new_leader_does_not_declare_live_workers_lost(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Workers that stayed up and kept heartbeating while no leader could commit anything must
    not be declared lost: their running tasks would be killed and rerun.

    (A leader cut off from the majority used to propose lease expiries for live followers whose
    heartbeats could not commit; the entries committed once the quorum was back.) Set-up: four
    workers, --lease 1.5; C dies (and falls behind); D dies, so the leader A and the follower
    B, both alive and connected, have no quorum until A steps down (pysyncobj's
    leaderFallbackTimeout, 3 s, longer than the lease); C comes back and, being behind, cannot
    win: A or B leads again.
    """
    args = ["--lease", "1.5", "--remove-after", "30", "--isolation-after", "30"]
    cluster: Cluster = make_cluster(4, per_node_args=[args] * 4)
    a = leader_of(cluster, cluster.nodes[0])
    b, c, d = [n for n in cluster.nodes if n is not a]
    add_tag(cluster, a, "on-a", via=a)
    add_tag(cluster, b, "on-b", via=a)
    cluster.kill(c)
    ta = submit(cluster, "sleep 10; echo a-done", "worker:tag on-a", "long-a", node=a)
    tb = submit(cluster, "sleep 10; echo b-done", "worker:tag on-b", "long-b", node=a)

    def running_where_tagged() -> bool:
        return record(cluster, a, ta).node == a.name and record(cluster, a, tb).node == b.name
    wait_for(running_where_tagged, 15, "each long task to run on its node", interval=0.1)

    cluster.kill(d)
    wait_for(lambda: (v := nodes_view(cluster, a)) is not None and not v.quorum and not v.leader,
             15, "A to step down without a quorum", interval=0.2)
    cluster.launch(c)
    cluster.wait_registered(c)
    assert leader_of(cluster, a) in (a, b)

    wait_done(cluster, [ta, tb], node=a, timeout=40)
    for tid, n in ((ta, a), (tb, b)):
        t = record(cluster, a, tid)
        assert [(x.node, x.why) for x in t.attempts] == [(n.name, "exit")], \
            f"{n.name} stayed up, yet: {t.attempts}"
    lost = [line for n in cluster.nodes for line in n.log().splitlines()
            if "declaring it lost" in line]
    assert not any(f"node {n.name} silent" in line for line in lost for n in (a, b)), lost


def test_a_task_that_kills_its_worker_is_held_after_three_tries(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A task whose node dies during each of its last three attempts may be what kills it: it
    is held with the reason, so it cannot take down node after node; the worker stays up."""
    cluster: Cluster = make_cluster(1)
    worker = cluster.nodes[0]
    tries = tmp_path / "tries"
    r = cluster.sh("leoronic_add_task 1024 1 1024 true '' '' "
                   + shlex.quote(f"echo $LEORONIC_ATTEMPT >> {tries}; kill -9 $PPID") + " killer")
    assert r.rc == 0, r
    for _ in range(3):  # the task kills it; restarted, it runs the task again
        assert worker.proc is not None
        code = worker.proc.wait(timeout=60)
        assert code == -signal.SIGKILL, (code, worker.log()[-2000:])
        cluster.launch(worker)
    cluster.wait_registered(worker, timeout=60)
    row = wait_for(lambda: next((line for line in cluster.sh("leoronic_get_queue").out.splitlines()
                                 if line.startswith("killer ") and "[held: " in line), ""),
                   30, "the killer to be held")
    assert " queued " in row and row.endswith(
        "[held: its node died during each of its last 3 attempts (leoronic_release runs it "
        "again)]"), row
    assert tries.read_text().split() == ["1", "2", "3"]
    r = cluster.sh("leoronic_task_info killer")
    assert r.rc == 0 and "released: node restarted" in r.out, r
    r = cluster.sh("leoronic_add_task 1024 1 1024 true '' '' 'echo alive' after")
    assert r.rc == 0 and cluster.sh("leoronic_wait --timeout 30 after").rc == 0
    assert worker.proc is not None and worker.proc.poll() is None

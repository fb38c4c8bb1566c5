"""Ghosts on a real cluster (issue #6): `leoronic ghost [TARGET]` runs tasks without Raft.

Every test starts its own cluster of real `leoronic` workers on loopback and real ghost
processes (`Cluster.start_ghost`), and observes the way an operator would: `leoronic_nodes`,
`leoronic_get_queue`, `leoronic_result`, plus a task's replicated record (`task` RPC) for its
attempt history. Tasks pinned to ghosts ask for 2G of memory while the workers offer 1G.
Waits poll with deadlines; processes are killed with SIGKILL through `Cluster.kill`.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from comrade import rpc
from comrade.model import Resources
from ghost.ghost import LOST_CLAIM
from tests.cluster import LEORONIC, Cluster, NodeProc, Result, free_port_pair, wait_for

WORKER = ["--cores", "1", "--memory", "1G"]
GHOST = ["--memory", "4G", "--cores", "2"]
BIG = "2G"  # fits a ghost (4G), never a worker (1G)

# ----- helpers ------------------------------------------------------------------------------

_ROW = re.compile(r"^( *)(\S+)  (\S+:\d+)  (.+?)  (up|UNREACHABLE since \S+)$")


@dataclass
class Row:
    """One node of `leoronic_nodes`."""

    name: str
    address: str
    role: str  # leader / follower / ... for workers, "ghost of WORKER" for ghosts
    status: str
    indent: int
    under: str  # the worker this row is printed under ("" for a top-level row)
    tags: set[str] = field(default_factory=set)


def nodes(cluster: Cluster, node: NodeProc | None = None) -> dict[str, Row]:
    """`leoronic_nodes` (asked of `node`), parsed: name -> Row."""
    r = cluster.sh("leoronic_nodes", node=node, timeout=30, LEORONIC_RETRY_S="5")
    assert r.rc == 0, r
    rows: dict[str, Row] = {}
    current: Row | None = None
    worker = ""
    for line in r.out.splitlines()[1:]:
        m = _ROW.match(line)
        if m:
            indent = len(m.group(1))
            if indent == 0:
                worker = m.group(2)
            current = Row(m.group(2), m.group(3), m.group(4), m.group(5), indent,
                          worker if indent else "")
            rows[current.name] = current
            continue
        stripped = line.strip()
        if current is not None and stripped.startswith("tags: "):
            words = stripped[len("tags: "):].split()
            current.tags = set() if words == ["-"] else set(words)
    return rows


def clairvoyant_of(cluster: Cluster, ghost: str, node: NodeProc | None = None) -> str:
    """The worker named in the ghost's "ghost of WORKER" line ("" if not listed up)."""
    row = nodes(cluster, node).get(ghost)
    if row is None or row.status != "up":
        return ""
    m = re.fullmatch(r"ghost of (\S+)", row.role)
    return m.group(1) if m else ""


def start_ghosts(cluster: Cluster, specs: list[tuple[str, list[str]]], target: str = "",
                 targets: list[str] | None = None, timeout: float = 40) -> list[NodeProc]:
    """Start several ghosts at once (name, extra args; TARGET each from `targets`, else
    `target`) and wait until all are listed up."""
    ghosts = [cluster.start_ghost(*args, name=name,
                                  target=targets[i] if targets else target, wait=False)
              for i, (name, args) in enumerate(specs)]

    def all_up() -> bool:
        for g in ghosts:
            if g.proc is not None and g.proc.poll() is not None:
                raise AssertionError(f"ghost {g.name} exited: {g.log()[-3000:]}")
        rows = nodes(cluster)
        return all(g.name in rows and rows[g.name].status == "up" for g in ghosts)

    wait_for(all_up, timeout, "the ghosts to attach", interval=0.3)
    return ghosts


def by_address(workers: list[NodeProc]) -> list[NodeProc]:
    """Workers in the ghosts' address order (all on 127.0.0.1: by port)."""
    return sorted(workers, key=lambda n: n.port)


def add_task(cluster: Cluster, command: str, memory: str = BIG, conditions: str = "",
             task_id: str = "", node: NodeProc | None = None) -> str:
    """`leoronic_add_task MEM 1 1024 true CONDITIONS "" COMMAND [ID]`; must be accepted."""
    fields = [memory, "1", "1024", "true", conditions, "", command] + ([task_id] if task_id else [])
    r = cluster.sh("leoronic_add_task " + " ".join(shlex.quote(f) for f in fields), node=node)
    assert r.rc == 0, r
    return r.out.strip()


def queue(cluster: Cluster, node: NodeProc | None = None) -> dict[str, list[str]]:
    """`leoronic_get_queue` rows by id (ID STATE NODE TRY AGE COMMAND...); ids must be unique."""
    r = cluster.sh("leoronic_get_queue", node=node, LEORONIC_RETRY_S="5")
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines and lines[0].split()[:2] == ["ID", "STATE"], r
    rows = [line.split() for line in lines[1:] if line.strip()]
    ids = [row[0] for row in rows]
    assert len(ids) == len(set(ids)), f"an id is listed twice: {r.out}"
    return {row[0]: row for row in rows}


def wait_done(cluster: Cluster, ids: list[str], node: NodeProc | None = None,
              timeout: float = 40) -> None:
    r = cluster.sh(f"leoronic_wait --timeout {timeout} " + " ".join(map(shlex.quote, ids)),
                   node=node, timeout=timeout + 30)
    assert r.rc == 0, r


def running_on_one_of(cluster: Cluster, task_id: str, names: Iterable[str]) -> str:
    """Wait until the task runs on one of the nodes `names`; its name."""
    wanted = set(names)

    def running_on() -> str:
        row = queue(cluster).get(task_id)
        return row[2] if row and row[1] == "running" and row[2] in wanted else ""
    return str(wait_for(running_on, 30, f"{task_id} to run on one of {sorted(wanted)}", interval=0.1))


def result(cluster: Cluster, task_id: str, node: NodeProc | None = None) -> Result:
    return cluster.sh(f"leoronic_result {shlex.quote(task_id)}", node=node)


def record(cluster: Cluster, node: NodeProc, task_id: str) -> Any:
    """The replicated record of a task (with `.attempts`), read through `node`."""
    client = cluster.client(node)
    try:
        return client.call("task", task_id, retry_s=5)
    finally:
        client.close()


# ----- tests --------------------------------------------------------------------------------


def test_ghosts_run_big_tagged_and_large_output_tasks(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(3, [WORKER] * 3)
    workers = list(cluster.nodes)
    ghosts = start_ghosts(cluster, [("g1", GHOST), ("g2", GHOST), ("g3", GHOST),
                                    ("g4", GHOST + ["--tag", "gpu0"])])
    ghost_names = {g.name for g in ghosts}
    lowest = by_address(workers)[0]

    # Listed under their clairvoyant (the lowest address: no TARGET), which is tagged.
    rows = nodes(cluster)
    for g in ghosts:
        row = rows[g.name]
        assert row.role == f"ghost of {lowest.name}", rows
        assert row.indent == 4 and row.under == lowest.name, rows
        assert row.address == g.address, rows
    assert "gpu0" in rows["g4"].tags, rows
    assert "clairvoyant" in rows[lowest.name].tags, rows
    for w in workers:
        assert rows[w.name].indent == 0, rows
        if w is not lowest:
            assert "clairvoyant" not in rows[w.name].tags, rows

    big = add_task(cluster, 'echo "$LEORONIC_NODE_NAME"', task_id="big")
    gpu = add_task(cluster, 'echo "$LEORONIC_NODE_NAME"; echo "$LEORONIC_NODE"', memory="1024",
                   conditions="worker:tag gpu0", task_id="gpu")
    seq = add_task(cluster, "seq 1 100000", task_id="seq")
    wait_done(cluster, [big, gpu, seq])

    r = result(cluster, big)
    assert r.rc == 0 and r.out.strip() in ghost_names, r
    r = result(cluster, gpu)
    # Its own leoronic_* commands would go to the worker the ghost is attached to.
    assert r.rc == 0 and r.out == f"g4\n{lowest.address}\n", r

    # Output over the replicated tail: leoronic_result fetches the rest from the ghost.
    expected = "".join(f"{i}\n" for i in range(1, 100001))
    assert len(expected) > 64 * 1024
    rec = record(cluster, workers[0], seq)
    assert rec.node in ghost_names, rec
    assert rec.outcome.stdout_bytes == len(expected), rec.outcome.stdout_bytes
    assert len(rec.outcome.stdout_tail) < len(expected)  # the rest lives on the ghost only
    ran_on = next(g for g in ghosts if g.name == rec.node)
    parts: list[bytes] = []
    with rpc.connect(ran_on.address, Path(cluster.cookie_path).read_text().strip()) as conn:
        conn.call("output_parts", seq, rec.attempt, "out", sink=parts.append)
    assert b"".join(parts) == expected.encode()  # the ghost itself serves it
    r = result(cluster, seq)
    assert r.rc == 0, r
    assert r.out == expected, (len(r.out), r.err)
    assert "showing the last" not in r.err, r


def test_ghost_target_picks_worker_by_address_order(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(3, [WORKER] * 3)
    ordered = by_address(list(cluster.nodes))

    g1, g4, g0, gx = start_ghosts(
        cluster, [("g1", GHOST), ("g4", GHOST), ("g0", GHOST), ("gx", GHOST)],
        targets=["1", "4", "", ordered[2].address])

    rows = nodes(cluster)
    assert rows[g1.name].role == f"ghost of {ordered[1].name}", rows  # 1 mod 3
    assert rows[g4.name].role == f"ghost of {ordered[1].name}", rows  # 4 mod 3
    assert rows[g0.name].role == f"ghost of {ordered[0].name}", rows  # lowest address
    assert rows[gx.name].role == f"ghost of {ordered[2].name}", rows  # HOST:PORT
    assert rows[g1.name].under == ordered[1].name and rows[gx.name].under == ordered[2].name
    for w in ordered:
        assert "clairvoyant" in rows[w.name].tags, rows


def test_clairvoyant_killed_ghosts_switch_and_no_task_is_lost(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Default lease (10 s): longer than the ghosts' 5 s switch, so their tasks are not requeued.
    cluster: Cluster = make_cluster(3, [WORKER] * 3)
    ordered = by_address(list(cluster.nodes))
    clairvoyant, successor = ordered[0], ordered[1]
    survivor = successor  # ask a worker that stays up
    ghosts = start_ghosts(cluster, [("g1", GHOST), ("g2", GHOST)])
    for g in ghosts:
        assert clairvoyant_of(cluster, g.name, survivor) == clairvoyant.name

    log = tmp_path / "runs.log"
    ids = [f"f{i}" for i in range(10)]
    for tid in ids:  # 4 slots on the ghosts: about three rounds of 1 s
        add_task(cluster, f'echo "$LEORONIC_TASK_ID $LEORONIC_ATTEMPT" >> {log}; sleep 1',
                 task_id=tid, node=survivor)

    def some_done_some_running() -> dict[str, list[str]] | None:
        q = queue(cluster, survivor)
        states = [q[t][1] for t in ids if t in q]
        return q if "done" in states and "running" in states else None

    before = wait_for(some_done_some_running, 30, "tasks to run on the ghosts", interval=0.1)
    running_at_kill = [t for t in ids if before[t][1] == "running"]
    cluster.kill(clairvoyant, signal.SIGKILL)
    killed_at = time.monotonic()

    def switched() -> bool:
        return all(clairvoyant_of(cluster, g.name, survivor) == successor.name for g in ghosts)

    wait_for(switched, 20, f"the ghosts to attach to {successor.name}", interval=0.3)
    switch_s = time.monotonic() - killed_at
    rows = nodes(cluster, survivor)
    assert "clairvoyant" in rows[successor.name].tags, rows
    for g in ghosts:
        assert rows[g.name].under == successor.name, rows

    wait_done(cluster, ids, node=survivor, timeout=60)
    q = queue(cluster, survivor)
    for tid in ids:
        row = q[tid]
        assert row[1] == "done" and row[2] in {"g1", "g2"}, row
        if row[3] != "1":  # only a claim the killed clairvoyant made for a ghost but never
            rec = record(cluster, survivor, tid)  # passed on: that ghost gave it back unrun
            assert all(a.why == f"released: {LOST_CLAIM}" for a in rec.attempts[:-1]), rec
    for tid in running_at_kill:  # finished during the switch, delivered via the successor
        rec = record(cluster, survivor, tid)
        assert rec.attempt == 1 and len(rec.attempts) == 1, rec
        assert rec.outcome is not None and rec.outcome.exit_code == 0, rec
    runs = log.read_text().split("\n")
    started = sorted(line.split()[0] for line in runs if line)
    assert started == sorted(ids), f"each task must run exactly once: {runs}"
    assert switch_s < 20, switch_s


def test_ghost_killed_its_task_is_requeued_to_another_ghost(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(3, [WORKER + ["--lease", "3"]] * 3)
    ghosts = start_ghosts(cluster, [("g1", GHOST), ("g2", GHOST)])
    names = {g.name: g for g in ghosts}
    # Attempt 1 must still be running when its ghost dies; attempt 2 ends quickly.
    tid = add_task(cluster, 'if [ "$LEORONIC_ATTEMPT" = 1 ]; then sleep 60; fi; '
                            'echo "$LEORONIC_NODE_NAME $LEORONIC_ATTEMPT"', task_id="victim")
    first = running_on_one_of(cluster, tid, names)
    cluster.kill(names[first], signal.SIGKILL)
    wait_done(cluster, [tid], timeout=40)

    rec = record(cluster, cluster.nodes[0], tid)
    other = ({"g1", "g2"} - {first}).pop()
    assert rec.attempt == 2 and rec.node == other, rec
    assert [a.node for a in rec.attempts] == [first, other], rec.attempts
    row = queue(cluster)[tid]
    assert row[1] == "done" and row[2] == other and row[3] == "2", row
    r = result(cluster, tid)
    assert r.rc == 0 and r.out == f"{other} 2\n", r


@pytest.mark.parametrize("how", ["--peer", "TARGET"])
def test_ghost_with_wrong_cookie_is_refused(make_cluster, tmp_path, how) -> None:  # type: ignore[no-untyped-def]
    """Told its worker by --peer or only as its TARGET (which said "no worker answered",
    exit 3, before)."""
    cluster: Cluster = make_cluster(3, [WORKER] * 3)
    wrong = tmp_path / "wrong-cookie"
    wrong.write_text(secrets.token_hex(16) + "\n")
    wrong.chmod(0o600)

    port = free_port_pair()
    home = os.path.join(cluster.root, "gbad")
    where = ["--peer", cluster.nodes[0].address] if how == "--peer" else [cluster.nodes[0].address]
    args = ["ghost", "--bind", "127.0.0.1", "--port", str(port), "--home", home,
            "--name", "gbad", *where, *GHOST]
    ghost = NodeProc(name="gbad", port=port, home=home, args=args)
    cluster.nodes.append(ghost)  # stopped with the cluster
    os.makedirs(home, exist_ok=True)
    ghost.log_path = os.path.join(cluster.root, "gbad.out")
    with open(ghost.log_path, "ab") as out:
        ghost.proc = subprocess.Popen(
            ["bash", LEORONIC, *args], stdout=out, stderr=subprocess.STDOUT,
            env=cluster.env(ghost, LEORONIC_COOKIE=str(wrong)), start_new_session=True)

    wait_for(lambda: "authentication failed" in ghost.log(), 30,
             "the ghost to log the refusal", interval=0.2)

    def exit_code() -> list[int] | None:  # a wrong cookie does not get better by waiting
        code = ghost.proc.poll() if ghost.proc is not None else None
        return None if code is None else [code]

    code = wait_for(exit_code, 30, "the refused ghost to exit", interval=0.2)[0]
    assert code == 4, ghost.log()
    assert ghost.log().splitlines()[-1].startswith("leoronic: authentication failed"), ghost.log()
    assert "gbad" not in nodes(cluster), ghost.log()
    assert "gbad" not in nodes(cluster, cluster.nodes[1])


def test_busy_ghost_reports_results_without_waiting_out_its_long_poll(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(3, [WORKER] * 3)
    start_ghosts(cluster, [("g1", ["--memory", "4G", "--cores", "1"])])
    ids = [f"q{i}" for i in range(5)]
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("".join(f'{BIG} 1 1024 true "" "" true {tid}\n' for tid in ids))
    r = cluster.sh(f"leoronic_add_tasks_from_file {shlex.quote(str(tasks))}")
    assert r.rc == 0 and r.out.split() == ids, r
    # Five trivial tasks one after another on one core: well under a second each.
    r = cluster.sh("leoronic_wait --timeout 5 " + " ".join(ids), timeout=40)
    assert r.rc == 0, r


def test_ghost_releases_a_task_whose_file_no_node_can_supply(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Like a worker, a ghost that cannot get a necessary file releases the task; after
    repeated releases it fails with a reason naming the file, and the ghost keeps working."""
    cluster: Cluster = make_cluster(3, [WORKER] * 3)
    start_ghosts(cluster, [("g1", GHOST)])
    data = tmp_path / "data.txt"
    data.write_text("good\n")
    # Upload with a task no node may run, then corrupt every stored copy.
    r = cluster.sh(f"cd {tmp_path} && leoronic_add_task 1024 1 1024 true 'worker:tag nowhere' "
                   "data.txt 'cat data.txt' holder")
    assert r.rc == 0, r

    def copies() -> list[str]:
        found = []
        for node in cluster.nodes:
            store = os.path.join(node.home, "store")
            for root, _dirs, names in os.walk(store):
                found += [os.path.join(root, n) for n in names if len(n) == 64]
        return found
    stored = wait_for(lambda: len(copies()) >= 2 and copies(), 20, "two stored copies")
    for path in stored:
        with open(path, "wb") as f:
            f.write(b"evil\n")
    r = cluster.sh(f"cd {tmp_path} && leoronic_add_task 2G 1 1024 true '' data.txt "
                   "'cat data.txt' on-ghost")
    assert r.rc == 0, r
    r = cluster.sh("leoronic_wait --timeout 60 on-ghost", timeout=90)
    assert r.rc == 1, r
    r = result(cluster, "on-ghost")
    assert r.rc == 1 and "could not start" in r.err and "evil" not in r.out, r
    rec = record(cluster, cluster.nodes[0], "on-ghost")
    assert all(a.node == "g1" and a.why.startswith("released: cannot start") for a in rec.attempts), \
        rec.attempts
    # The ghost is still in service.
    add_task(cluster, "echo fine on $LEORONIC_NODE_NAME", task_id="after")
    wait_done(cluster, ["after"])
    assert result(cluster, "after").out == "fine on g1\n"


def test_a_claim_that_never_reached_its_ghost_is_given_back_and_runs(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A poll can claim tasks for a ghost and never answer it (its clairvoyant dies in
    between, or the answer comes after the ghost gave up). The cluster then says the ghost
    runs the task, the ghost knows nothing of it, and its heartbeats keep the claim alive:
    the ghost must give such a claim back. Here a poll in the ghost's name, from the test,
    plays the poll whose answer was lost."""
    cluster: Cluster = make_cluster(1, [WORKER])
    [ghost] = start_ghosts(cluster, [("g1", GHOST)])
    # Only a ghost holding the file "marker" may run it: g1 has none yet, the stand-in poll
    # says it has, so the stand-in claims it and g1's own polls cannot.
    tid = add_task(cluster, "echo ran on $LEORONIC_NODE_NAME attempt $LEORONIC_ATTEMPT",
                   conditions="worker:has_file marker", task_id="lost-claim")
    free = Resources(memory=4 << 30, cores=2, storage=1 << 40)
    client = cluster.client()
    try:
        reply = client.call("ghost_poll", "g1", free, ["marker"], [], 5.0)
    finally:
        client.close()
    assert [(spec.task_id, attempt) for spec, attempt in reply["tasks"]] == [(tid, 1)], reply

    def given_back() -> Any:
        rec = record(cluster, cluster.nodes[0], tid)
        return rec if rec.state.value == "queued" and rec.attempts else None
    rec = wait_for(given_back, 20, "g1 to give back the claim it never got", interval=0.2)
    [first] = rec.attempts
    assert (first.number, first.node) == (1, "g1"), first
    assert first.why == f"released: {LOST_CLAIM}", first
    assert "which does not run it: giving it back" in ghost.log()

    # Now g1 has the file: it claims the task itself and runs it.
    os.makedirs(os.path.join(ghost.home, "files"), exist_ok=True)
    Path(ghost.home, "files", "marker").write_text("here\n")
    wait_done(cluster, [tid])
    r = result(cluster, tid)
    assert (r.rc, r.out) == (0, "ran on g1 attempt 2\n"), r


def test_a_ghost_restarted_within_its_lease_gives_back_its_previous_lifes_tasks(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A ghost killed and started again (same name and home) before its lease runs out keeps
    its place in the cluster, and with it the claims of its previous life, whose processes
    its start killed. It gives them back on its first poll instead of holding them forever."""
    cluster: Cluster = make_cluster(1, [WORKER])
    [ghost] = start_ghosts(cluster, [("g1", GHOST)])
    tid = add_task(cluster, 'if [ "$LEORONIC_ATTEMPT" = 1 ]; then sleep 60; fi; '
                            'echo "attempt $LEORONIC_ATTEMPT on $LEORONIC_NODE_NAME"', task_id="reborn")
    wait_for(lambda: (t := record(cluster, cluster.nodes[0], tid)).state.value == "running"
             and t.node == "g1", 20, "the task to run on g1", interval=0.1)
    cluster.kill(ghost, signal.SIGKILL)
    cluster.launch(ghost)  # back well within the 10 s lease
    wait_done(cluster, [tid], timeout=30)
    rec = record(cluster, cluster.nodes[0], tid)
    first, second = rec.attempts
    assert (first.number, first.node, first.why) == (1, "g1", f"released: {LOST_CLAIM}"), first
    assert (second.number, second.node, second.exit_code) == (2, "g1", 0), second
    assert result(cluster, tid).out == "attempt 2 on g1\n"


def test_a_task_held_while_it_runs_on_a_ghost_is_stopped_there_and_reruns_when_released(
        make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Holding ends the attempt in the replicated state; the ghost stops it (SIGTERM, then
    SIGKILL after its --kill-grace) as an attempt no longer assigned there, like a deletion."""
    cluster: Cluster = make_cluster(1, [WORKER])
    start_ghosts(cluster, [("g1", GHOST)])
    pids, gate, stops = tmp_path / "pids", tmp_path / "gate", tmp_path / "stops"
    tid = add_task(cluster, f"trap 'echo stopped $LEORONIC_ATTEMPT >> {stops}; exit 1' TERM; "
                            f"echo $$ >> {pids}; while [ ! -e {gate} ]; do sleep 0.05; done; "
                            'echo "attempt $LEORONIC_ATTEMPT on $LEORONIC_NODE_NAME"', task_id="held")
    wait_for(lambda: pids.exists() and pids.read_text().endswith("\n"), 20, "the task to start")
    assert queue(cluster)[tid][2] == "g1"
    first = int(pids.read_text())
    r = cluster.sh(f"leoronic_hold {tid}")
    assert (r.rc, r.out) == (0, "held held\n"), r

    def stopped() -> bool:
        try:
            os.kill(first, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{first}/stat") as f:  # killed, not yet reaped by the ghost
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    wait_for(stopped, 20, "the ghost to stop the held task")
    assert stops.read_text() == "stopped 1\n"  # SIGTERM first: it could clean up
    assert queue(cluster)[tid][1] == "queued"
    r = cluster.sh(f"leoronic_release {tid}")
    assert (r.rc, r.out) == (0, "held released\n"), r
    wait_for(lambda: pids.read_text().count("\n") == 2, 20, "the task to start again")
    gate.touch()
    wait_done(cluster, [tid])
    rec = record(cluster, cluster.nodes[0], tid)
    assert [(a.number, a.node, a.why) for a in rec.attempts] == [(1, "g1", "held"), (2, "g1", "exit")]
    assert result(cluster, tid).out == "attempt 2 on g1\n"


def test_a_drained_ghost_finishes_its_task_and_takes_no_new_one_until_resumed(
        make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`leoronic_drain --node GHOST`: what it runs goes on; its clairvoyant claims nothing more
    for it, though it has room; `--wait` returns once it is empty; `resume` gives it work."""
    cluster: Cluster = make_cluster(1, [WORKER])
    start_ghosts(cluster, [("g1", GHOST)])
    gate = tmp_path / "gate"
    long = add_task(cluster, f"while [ ! -e {gate} ]; do sleep 0.05; done; "
                             "echo long on $LEORONIC_NODE_NAME", task_id="long")
    wait_for(lambda: queue(cluster)[long][1:3] == ["running", "g1"], 20, "long to run on g1")
    r = cluster.sh("leoronic_drain --node g1")
    assert (r.rc, r.out) == (0, "g1: draining, still running 1: long\n"), r
    later = add_task(cluster, "echo later on $LEORONIC_NODE_NAME", task_id="later")
    # g1 has a core and the memory free (only it fits the task), yet over two of its long
    # polls (2 s each) the task stays queued.
    with pytest.raises(AssertionError, match="timed out"):
        wait_for(lambda: queue(cluster)[later][1] != "queued", 5, "later to leave the queue")
    gate.touch()
    r = cluster.sh("leoronic_drain --node g1 --wait --timeout 30", timeout=60)
    assert (r.rc, r.out) == (0, "g1: drained (runs no task)\n"), r
    assert result(cluster, long).out == "long on g1\n"  # it ran to its end there
    assert queue(cluster)[later][1] == "queued"
    r = cluster.sh("leoronic_resume --node g1")
    assert (r.rc, r.out) == (0, "g1: taking tasks\n"), r
    wait_done(cluster, [later])
    assert result(cluster, later).out == "later on g1\n"


def test_ghost_collects_garbage_like_a_worker(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A ghost removes the work dirs and outputs of tasks finished longer than its
    `--retention` ago (the result still reads back from the replicated tail) and of deleted
    tasks, but not of a task still running there."""
    cluster: Cluster = make_cluster(1, [WORKER])
    (g1,) = start_ghosts(cluster, [("g1", GHOST + ["--retention", "0", "--gc-every", "0.5"])])
    gate = tmp_path / "gate"
    long = add_task(cluster, f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done",
                    task_id="long")
    short = add_task(cluster, "echo short-output", task_id="short")
    wait_done(cluster, [short])
    assert queue(cluster)[short][2] == "g1"
    work, outputs = os.path.join(g1.home, "work"), os.path.join(g1.home, "outputs")

    def files_of(task_id: str) -> list[str]:
        return [n for n in os.listdir(work) if n.startswith(f"{task_id}-a")] + \
            [n for n in os.listdir(outputs) if n.startswith(f"{task_id}.")]

    wait_for(lambda: not files_of(short), 20, "the finished task's files to go")
    r = result(cluster, short)
    assert r.rc == 0 and r.out == "short-output\n", r
    wait_for(lambda: queue(cluster)[long][1] == "running", 20, "the long task to run")
    assert files_of(long)  # still running: kept through several collections
    wait_for(lambda: "started" in (open(os.path.join(outputs, "long.1.out")).read()), 20,
             "the long task to write")
    r = cluster.sh(f"leoronic_del_task {long}")
    assert r.rc == 0, r
    wait_for(lambda: not files_of(long), 20, "the deleted task's files to go")
    assert nodes(cluster)["g1"].status == "up"


def test_ghost_refuses_a_bad_duration(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(1, [WORKER])
    r = cluster.cli("ghost", "--home", os.path.join(cluster.root, "bad"), "--retention", "-1",
                    "--peer", cluster.nodes[0].address, timeout=30)
    assert r.rc == 2 and r.err.strip() == \
        "leoronic: --retention: must be a number of seconds, 0 or more; got -1", r
    r = cluster.cli("ghost", "--home", os.path.join(cluster.root, "bad"), "--kill-grace", "-2",
                    "--peer", cluster.nodes[0].address, timeout=30)
    assert r.rc == 2 and r.err.strip() == \
        "leoronic: --kill-grace: must be a number of seconds, 0 or more; got -2", r


def test_a_ghost_stops_a_task_past_its_time_limit(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """The ghost's own executor enforces the limit; its report reaches the record."""
    cluster: Cluster = make_cluster(1, [WORKER])
    start_ghosts(cluster, [("g1", GHOST)])
    fields = [BIG, "1", "1024", "true", "", "", "echo started; sleep 60", "on-ghost"]
    r = cluster.sh("LEORONIC_TIME_LIMIT=1 leoronic_add_task " + " ".join(map(shlex.quote, fields)))
    assert (r.rc, r.out) == (0, "on-ghost\n"), r
    w = cluster.sh("leoronic_wait --timeout 30 on-ghost", timeout=60)
    assert w.rc == 1, w  # failed, well before the sleep's minute
    rec = record(cluster, cluster.nodes[0], "on-ghost")
    assert rec.node == "g1" and rec.outcome.timed_out and rec.outcome.exit_code == 143, rec
    assert rec.reason == "stopped after its time limit of 1s", rec
    assert result(cluster, "on-ghost").out == "started\n"


def test_a_ghost_gets_a_necessary_file_its_worker_lacks_from_another_worker(
        make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A file is stored on two workers; a ghost attached to the third gets it from one of
    them (it got it only from its own worker, and the task failed after five starts)."""
    cluster: Cluster = make_cluster(3, [WORKER] * 3)
    (tmp_path / "data.txt").write_text("the data\n")
    r = cluster.sh(f"cd {tmp_path} && leoronic_add_task 1024 1 1024 true 'worker:tag nowhere' "
                   "data.txt 'cat data.txt' holder")  # stores the file; never runs
    assert r.rc == 0, r

    def holders() -> list[NodeProc]:
        return [n for n in cluster.nodes
                if any(len(f) == 64 for _r, _d, fs in os.walk(os.path.join(n.home, "store"))
                       for f in fs)]
    have = wait_for(lambda: len(holders()) == 2 and holders(), 20, "two stored copies")
    [lacking] = [n for n in cluster.nodes if n not in have]
    start_ghosts(cluster, [("g1", GHOST)], target=lacking.address)
    assert clairvoyant_of(cluster, "g1") == lacking.name
    r = cluster.sh(f"cd {tmp_path} && leoronic_add_task {BIG} 1 1024 true '' data.txt "
                   "'cat data.txt' on-ghost")
    assert r.rc == 0, r
    wait_done(cluster, ["on-ghost"], timeout=60)
    r = result(cluster, "on-ghost")
    assert r.rc == 0 and r.out == "the data\n", r
    rec = record(cluster, cluster.nodes[0], "on-ghost")
    assert [(a.node, a.exit_code) for a in rec.attempts] == [("g1", 0)], rec.attempts


def test_a_ghost_stopped_with_sigterm_hands_its_task_back_at_once(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Like a worker: the task it was running is requeued now (`node left`) and runs on
    another ghost, not after the lease (30 s here), and the ghost is no longer shown up."""
    cluster: Cluster = make_cluster(1, [WORKER + ["--lease", "30"]])
    g1, g2 = start_ghosts(cluster, [("g1", GHOST), ("g2", GHOST)])
    names = {"g1": g1, "g2": g2}
    tid = add_task(cluster, 'if [ "$LEORONIC_ATTEMPT" = 1 ]; then sleep 120; fi; '
                            'echo "attempt $LEORONIC_ATTEMPT on $LEORONIC_NODE_NAME"', task_id="moved")
    first = running_on_one_of(cluster, tid, names)
    stopped_at = time.monotonic()
    cluster.kill(names[first], signal.SIGTERM)
    wait_done(cluster, [tid], timeout=20)
    assert time.monotonic() - stopped_at < 15, "requeued only by the lease"
    other = ({"g1", "g2"} - {first}).pop()
    rec = record(cluster, cluster.nodes[0], tid)
    assert [(a.node, a.why) for a in rec.attempts] == [(first, "node left"), (other, "exit")], \
        rec.attempts
    assert result(cluster, tid).out == f"attempt 2 on {other}\n"
    assert nodes(cluster)[first].status != "up"


def _refused(cluster: Cluster, name: str, args: list[str]) -> str:
    """Start `leoronic ARGS --home HOME --port PORT` (a node that must be refused at start)
    and return its last line once it has exited 2 (bounded)."""
    node = NodeProc(name=name, port=free_port_pair(), home=os.path.join(cluster.root, name),
                    args=[])
    node.args = [*args, "--home", node.home, "--port", str(node.port)]
    cluster.nodes.append(node)  # stopped with the cluster, should it not exit
    cluster.launch(node)
    code = wait_for(lambda: node.proc is not None and node.proc.poll() is not None
                    and [node.proc.returncode], 40, f"{name} to be refused", interval=0.2)[0]
    assert code == 2, node.log()
    cluster.nodes.remove(node)
    return node.log().splitlines()[-1]


def test_a_name_held_by_a_node_that_is_up_is_refused_to_a_new_ghost_or_worker(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A ghost named after a worker took over the worker's record (its task restarted over
    and over); a second ghost or worker with a name in use ran tasks under it on two boxes.
    Each is now refused at start with one line naming the holder, and the holders go on."""
    cluster: Cluster = make_cluster(1, [WORKER])
    worker = cluster.nodes[0]
    [ghost] = start_ghosts(cluster, [("g1", GHOST)])
    tid = add_task(cluster, "sleep 3; echo slept on $LEORONIC_NODE_NAME", task_id="steady")
    for i, (args, taken, holder) in enumerate((
        (["ghost", "--name", worker.name, *GHOST], worker.name, f"a worker at {worker.address}"),
        (["ghost", "--name", "g1", *GHOST], "g1", f"a ghost at {ghost.address}"),
        (["--name", worker.name, *WORKER], worker.name, f"a worker at {worker.address}"),
    )):
        line = _refused(cluster, f"dup{i}", [*args, "--bind", "127.0.0.1", "--peer", worker.address])
        assert line.startswith(f"leoronic: --name: {taken!r} is the name of {holder} that is up"), line
    wait_done(cluster, [tid], timeout=30)
    rec = record(cluster, worker, tid)
    assert len(rec.attempts) == 1, rec.attempts
    rows = nodes(cluster)
    assert rows[worker.name].address == worker.address and rows["g1"].address == ghost.address
    assert rows["g1"].role == f"ghost of {worker.name}" and rows["g1"].status == "up", rows


def test_a_ghost_works_on_after_its_only_worker_is_sigkilled_and_restarted(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(1, [WORKER])
    worker = cluster.nodes[0]
    g = cluster.start_ghost(*GHOST, name="g1")
    cluster.kill(worker, signal.SIGKILL)
    cluster.launch(worker)
    cluster.wait_registered(worker, timeout=60)
    # The ghost's polls fail while the worker is down; once it is back the ghost either polls
    # on (the worker knows it from the replicated state) or, refused, attaches again (both
    # seen, by timing): either way it takes work without being restarted itself.
    wait_for(lambda: clairvoyant_of(cluster, "g1") == worker.name, 40, "g1 to attach again",
             interval=0.3)
    tid = add_task(cluster, 'echo "$LEORONIC_NODE_NAME"', task_id="after-restart")
    wait_done(cluster, [tid])
    assert result(cluster, tid).out == "g1\n"
    assert g.proc is not None and g.proc.poll() is None

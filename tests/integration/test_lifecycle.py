"""A worker's life as an operator sees it: the cookie made on first start, a worker stopped
with SIGTERM handing its running tasks back, and a client moving on when its node dies."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import time
from pathlib import Path

import psutil

from tests.cluster import (
    UTILITIES,
    Cluster,
    NodeProc,
    process_gone,
    result_out,
    stays,
    wait_for,
    wait_ok,
)


def test_first_start_makes_a_private_cookie_and_later_starts_keep_it(tmp_path: Path) -> None:
    cluster = Cluster(str(tmp_path / "cluster"))
    try:
        os.remove(cluster.cookie_path)  # a fresh machine: no cookie yet
        node = cluster.start_node()
        mode = stat.S_IMODE(os.stat(cluster.cookie_path).st_mode)
        assert mode == 0o600, oct(mode)
        with open(cluster.cookie_path) as f:
            made = f.read()
        assert re.fullmatch(r"[0-9a-f]{64}\n", made), made
        r = cluster.sh('leoronic_add_task 1024 1 1024 true "" "" "echo first" first')
        assert (r.rc, r.out) == (0, "first\n"), r
        wait_ok(cluster, "first")

        cluster.kill(node, signal.SIGTERM)
        cluster.launch(node)
        cluster.wait_registered(node)
        with open(cluster.cookie_path) as f:
            assert f.read() == made  # kept: the other boxes have a copy of it
        r = cluster.sh('leoronic_add_task 1024 1 1024 true "" "" "echo again" again')
        assert (r.rc, r.out) == (0, "again\n"), r
        wait_ok(cluster, "again")
        assert result_out(cluster, "first") == "first\n"
    finally:
        cluster.stop()


def test_a_worker_stopped_with_sigterm_kills_its_tasks_and_they_run_elsewhere(
        cluster3: Cluster, tmp_path: Path) -> None:
    gate, pids = tmp_path / "gate", tmp_path / "pids"
    command = (f'echo "$$ $LEORONIC_NODE_NAME" >> {shlex.quote(str(pids))}; '
               f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done; "
               "echo ended on $LEORONIC_NODE_NAME")
    r = cluster3.sh(f"leoronic_add_task 1024 1 1024 true '' '' {shlex.quote(command)} moved")
    assert r.rc == 0, r
    wait_for(lambda: pids.exists() and pids.read_text().endswith("\n"), 30, "the task to start")
    pid, first = pids.read_text().split()
    stopped = next(n for n in cluster3.nodes if n.name == first)
    asked = next(n for n in cluster3.nodes if n is not stopped)

    cluster3.kill(stopped, signal.SIGTERM)  # waits for the worker to exit
    assert process_gone(int(pid)), "the stopped worker left its task running"

    def second_attempt() -> list[str]:
        lines = pids.read_text().splitlines()
        return lines if len(lines) == 2 else []
    pid2, second = wait_for(second_attempt, 30, "a second attempt")[1].split()
    assert second != first and pid2 != pid
    gate.touch()
    r = cluster3.sh("leoronic_wait --timeout 30 moved", node=asked)
    assert r.rc == 0, r
    r = cluster3.sh("leoronic_result moved", node=asked)
    assert (r.rc, r.out) == (0, f"ended on {second}\n"), r
    info = json.loads(cluster3.sh("leoronic_task_info --json moved", node=asked).out)
    assert [(a["number"], a["node"], a["why"]) for a in info["attempts"]] == [
        (1, first, "node left"), (2, second, "exit")], info


def test_a_waiting_client_moves_to_another_worker_when_its_node_dies(
        make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(3, per_node_args=[[], ["--tag", "here"], []])
    n1 = cluster.nodes[0]
    gate = tmp_path / "gate"
    r = cluster.sh(f"leoronic_add_task 1024 1 1024 true 'worker:tag here' '' "
                   f"'while [ ! -e {gate} ]; do sleep 0.05; done; echo done' kept")
    assert r.rc == 0, r
    wait_for(lambda: "running" in cluster.sh("leoronic_get_queue --state running").out, 30,
             "the task to run on n2")
    waiting = subprocess.Popen(  # talks to n1, which is killed under it
        ["bash", "-c", f"source {UTILITIES}\nleoronic_wait kept"],
        env=cluster.env(n1, LEORONIC_RETRY_S="30"), cwd=cluster.root, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: _connected_to(waiting.pid, n1.port), 20, "the client to reach n1")
        cluster.kill(n1, signal.SIGKILL)
        gate.touch()
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            os.killpg(waiting.pid, signal.SIGKILL)
            waiting.wait()
    assert waiting.returncode == 0, (out, err)
    r = cluster.sh("leoronic_result kept", node=cluster.nodes[1])
    assert (r.rc, r.out) == (0, "done\n"), r


def _connected_to(shell_pid: int, port: int) -> bool:
    """Whether a process under `shell_pid` has a TCP connection open to 127.0.0.1:`port`."""
    return any(c.raddr and c.raddr.port == port
               for proc in _tree(shell_pid) for c in _connections(proc, "tcp"))


def test_workers_bound_to_loopback_listen_on_nothing_else(cluster3: Cluster) -> None:
    """--bind is every port's address: the client port and Raft's (PORT+1; pysyncobj listened
    on every interface before it was told)."""
    for node in cluster3.nodes:
        assert node.proc is not None
        listening = set()
        for proc in _tree(node.proc.pid):
            for c in _connections(proc, "inet"):
                if c.status == "LISTEN" or not c.raddr:  # listening TCP, or any UDP socket
                    listening.add((c.laddr.ip, c.laddr.port))
        assert listening == {("127.0.0.1", node.port), ("127.0.0.1", node.port + 1)}, \
            (node.name, listening)


def _tree(pid: int) -> list[psutil.Process]:
    """The process `pid` and its descendants (none if it is gone)."""
    try:
        return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _connections(proc: psutil.Process, kind: str) -> list:  # type: ignore[type-arg]
    """proc's sockets of `kind` (none once it is gone)."""
    try:
        connections = getattr(proc, "net_connections", None) or proc.connections  # psutil < 6
        return list(connections(kind))
    except psutil.NoSuchProcess:
        return []


def _members_file(node: NodeProc) -> str:
    return os.path.join(node.home, "raft", "members.json")


def _saved_members(node: NodeProc) -> list[str] | None:
    """The Raft members a restart of `node` would start from (None: no file yet)."""
    try:
        with open(_members_file(node)) as f:
            return list(json.load(f)["members"])
    except (FileNotFoundError, ValueError):
        return None


def test_each_worker_keeps_the_member_list_a_restart_needs_and_writes_it_only_on_change(
        make_cluster) -> None:  # type: ignore[no-untyped-def]
    """raft/members.json lists every Raft member (a worker restarted without --peer finds its
    cluster there), follows a join, and is not rewritten (a new file, synced) every heartbeat."""
    cluster: Cluster = make_cluster(2)
    n1, n2 = cluster.nodes
    raft = [f"127.0.0.1:{n.port + 1}" for n in cluster.nodes]
    wait_for(lambda: all(_saved_members(n) == sorted(raft) for n in cluster.nodes), 20,
             "both workers to save both members")
    files = {n.name: os.stat(_members_file(n)).st_ino for n in cluster.nodes}
    stays(lambda: {n.name: os.stat(_members_file(n)).st_ino for n in cluster.nodes} == files,
          3 * 2.0 + 0.5,  # three heartbeats (--heartbeat's 2 s)
          "members.json not rewritten while the members did not change", interval=0.2)
    n3 = cluster.start_node(peer=n2)
    raft.append(f"127.0.0.1:{n3.port + 1}")
    wait_for(lambda: all(_saved_members(n) == sorted(raft) for n in cluster.nodes), 20,
             "every worker to save the new member")


_ROW = re.compile(r"^(\S+)  (\S+:\d+)  (.+?)  (up|UNREACHABLE since \S+)")


def _nodes_view(cluster: Cluster, asked: NodeProc) -> tuple[bool, dict[str, str]] | None:
    """`leoronic_nodes` asked of `asked`: (quorum, name -> role), or None if no answer."""
    r = cluster.sh("leoronic_nodes", node=asked, timeout=30, LEORONIC_RETRY_S="2")
    if r.rc != 0 or not r.out:
        return None
    lines = r.out.splitlines()
    return lines[0].endswith("quorum yes"), {
        m.group(1): m.group(3) for m in map(_ROW.match, lines[1:]) if m}


def _leader(cluster: Cluster, among: list[NodeProc]) -> NodeProc | None:
    """The worker all of `among` agree leads, with a quorum, or None."""
    names = set()
    for n in among:
        view = _nodes_view(cluster, n)
        if view is None or not view[0]:
            return None
        names |= {name for name, role in view[1].items() if role == "leader"}
    return next((n for n in among if names == {n.name}), None)


def test_the_leader_stopped_with_sigterm_leaves_at_once_and_cleanly(
        cluster3: Cluster, tmp_path: Path) -> None:
    """SIGTERM to the Raft leader: its running task goes back to the queue, it leaves the Raft
    membership (pysyncobj refuses to remove the leader, so it hands leadership over first) and
    exits within seconds, the other two keep a leader and a quorum, and its log has no error.
    It used to take about 30 s (two members each refused for 15 s to remove the leader) and to
    log a crash of its node actor (a pass after the executor had stopped)."""
    leader: NodeProc = wait_for(lambda: _leader(cluster3, cluster3.nodes), 30, "a leader")
    others = [n for n in cluster3.nodes if n is not leader]
    gate = tmp_path / "gate"
    r = cluster3.sh(f"leoronic_add_tag lead --node {leader.name}")
    assert r.rc == 0, r
    r = cluster3.sh(f"leoronic_add_task 1024 1 1024 true 'worker:tag lead' '' "
                    f"'while [ ! -e {gate} ]; do sleep 0.05; done; echo ended' held",
                    node=others[0])
    assert r.rc == 0, r
    wait_for(lambda: "held" in cluster3.sh("leoronic_get_queue --state running").out, 30,
             "the task to run on the leader")
    assert leader.proc is not None
    before = len(leader.log())

    started = time.monotonic()
    os.killpg(leader.proc.pid, signal.SIGTERM)
    try:
        leader.proc.wait(timeout=8)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"the leader still runs 8 s after SIGTERM: {leader.log()[before:]}") from None
    took = time.monotonic() - started
    log = leader.log()[before:]
    assert "leaving the cluster" in log, log
    assert "handing the Raft leadership over" in log, log
    assert not [line for line in log.splitlines()  # "could not remove us", "... crashed"
                if " ERROR " in line or " WARNING " in line or "Traceback" in line], log

    def clean() -> bool:
        views = [_nodes_view(cluster3, n) for n in others]
        return all(v is not None and v[0] and v[1].get(leader.name) == "not a Raft member"
                   and sorted(role for name, role in v[1].items() if name != leader.name)
                   == ["follower", "leader"] for v in views)
    wait_for(clean, 10, "the other two to keep a quorum without the old leader as a member",
             interval=0.2)
    info = json.loads(cluster3.sh("leoronic_task_info --json held", node=others[0]).out)
    assert info["state"] == "queued", info
    assert [(a["number"], a["node"], a["why"]) for a in info["attempts"]] == [
        (1, leader.name, "node left")], info
    r = cluster3.sh(f"leoronic_add_tag lead --node {others[1].name}", node=others[0])
    assert r.rc == 0, r
    gate.touch()
    r = cluster3.sh("leoronic_wait --timeout 30 held", node=others[0])
    assert r.rc == 0, r
    assert took < 8, took


def test_a_worker_renamed_on_its_address_leaves_a_record_that_does_not_take_its_role(
        make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Restarted on the same home and port under another name, a worker is a new node; the old
    name's record stays (its tasks' history names it) but is not shown with the new one's
    Raft role."""
    cluster: Cluster = make_cluster(3)
    n3 = cluster.nodes[2]
    cluster.kill(n3, signal.SIGKILL)
    n3.args[n3.args.index("--name") + 1] = "renamed"
    cluster.launch(n3)

    def roles() -> dict[str, str] | None:
        view = _nodes_view(cluster, cluster.nodes[0])
        return view[1] if view and view[1].get("renamed") in ("leader", "follower") else None
    seen = wait_for(roles, 60, "the renamed worker to be a member")
    assert seen["n3"] == "not a Raft member (its address is renamed's)", seen


def test_a_worker_down_for_good_is_forgotten_once_it_is_no_raft_member(make_cluster) -> None:  # type: ignore[no-untyped-def]
    fast = ["--lease", "2", "--remove-after", "3"]
    cluster: Cluster = make_cluster(3, [fast] * 3)
    n1, n3 = cluster.nodes[0], cluster.nodes[2]
    r = cluster.sh("leoronic_forget_node n1")
    assert (r.rc, r.err) == (2, "leoronic: NAME: node 'n1' is up: only a node that is down can "
                                "be forgotten\n"), r
    cluster.kill(n3, signal.SIGKILL)
    wait_for(lambda: any(line.startswith("n3 ") and "UNREACHABLE" in line
                         for line in cluster.sh("leoronic_nodes").out.splitlines()),
             30, "n3 to be lost")
    r = cluster.sh("leoronic_forget_node n3")
    if r.rc != 0:  # not yet removed from the membership: the leader does it after 3 s
        assert r.err == ("leoronic: NAME: node 'n3' is still a Raft member: the leader removes a "
                         "worker lost for --remove-after (see Fault tolerance); forget it after "
                         "that\n"), r
    wait_for(lambda: (v := _nodes_view(cluster, n1)) is not None
             and v[1].get("n3") in ("not a Raft member", None), 40, "n3 to leave the membership")
    r = cluster.sh("leoronic_forget_node n3 n3")
    assert (r.rc, r.out) == (0, "n3 forgotten\n"), r
    view = _nodes_view(cluster, n1)
    assert view is not None and "n3" not in view[1] and view[0], view
    r = cluster.sh("leoronic_forget_node n3")
    assert (r.rc, r.err) == (2, "leoronic: NAME: unknown node 'n3'\n"), r

"""Conditions and tags on a real cluster (issue #3), as a user sees them through the CLI.

Every check goes through `leoronic_*` shell functions or `leoronic` itself: exit codes, stdout,
stderr. Tasks record when they start and end by appending `$(date +%s.%N)` lines to a log in
the test's tmp dir; ordering is asserted on those times. Tasks that must still be running
while something else is checked wait on a gate file the test creates.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import signal
from pathlib import Path

import pytest

from tests.cluster import Cluster, NodeProc, Result, result_out, wait_for, wait_ok

# ----- helpers ------------------------------------------------------------------------------


def add_task(cluster: Cluster, command: str, conditions: str = "", task_id: str = "",
             node: NodeProc | None = None, files: str = "") -> Result:
    """`leoronic_add_task 1024 1 1024 true CONDITIONS FILES COMMAND [ID]`, every field quoted."""
    fields = ["1024", "1", "1024", "true", conditions, files, command] + ([task_id] if task_id else [])
    return cluster.sh("leoronic_add_task " + " ".join(shlex.quote(f) for f in fields), node=node)


def submit(cluster: Cluster, command: str, conditions: str = "", task_id: str = "",
           node: NodeProc | None = None) -> str:
    """Submit a task that must be accepted; return its id."""
    r = add_task(cluster, command, conditions, task_id, node)
    assert r.rc == 0, r
    return r.out.strip()


def node_tags(cluster: Cluster) -> dict[str, set[str]]:
    """Node name -> tags, parsed from `leoronic_nodes`."""
    r = cluster.sh("leoronic_nodes")
    assert r.rc == 0, r
    tags: dict[str, set[str]] = {}
    current = ""
    for line in r.out.splitlines():
        head = re.match(r"^(\S+)  \S+:\d+  ", line)
        if head:
            current = head.group(1)
        elif line.startswith("    tags: ") and current:
            words = line[len("    tags: "):].split()
            tags[current] = set() if words == ["-"] else set(words)
    return tags


def states(cluster: Cluster) -> dict[str, str]:
    """Task id -> state, parsed from `leoronic_get_queue`."""
    r = cluster.sh("leoronic_get_queue")
    assert r.rc == 0, r
    out: dict[str, str] = {}
    for line in r.out.splitlines()[1:]:
        words = line.split()
        if len(words) >= 2:
            out[words[0]] = words[1]
    return out


def queue_line(cluster: Cluster, task_id: str) -> str:
    """The `leoronic_get_queue` row of one task."""
    r = cluster.sh("leoronic_get_queue")
    assert r.rc == 0, r
    rows = [line for line in r.out.splitlines() if line.split()[:1] == [task_id]]
    assert len(rows) == 1, r
    return rows[0]


def logged(log: Path, label: str) -> str:
    """Shell snippet appending `LABEL <epoch seconds>` to the log."""
    return f'echo "{label} $(date +%s.%N)" >> {shlex.quote(str(log))}'


def read_times(log: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    for line in log.read_text().splitlines():
        label, stamp = line.rsplit(" ", 1)
        times[label] = float(stamp)
    return times


def gate_wait(gate: Path) -> str:
    """Shell snippet that blocks until the gate file exists."""
    return f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done"


def assert_still_queued(cluster: Cluster, task_id: str) -> None:
    """Run a plain task to completion (proof the schedulers made passes), then check `task_id`
    was not started: still queued in get_queue, and `leoronic_result` says so (exit 5)."""
    sentinel = submit(cluster, "true")
    wait_ok(cluster, sentinel)
    assert states(cluster)[task_id] == "queued"
    r = cluster.sh(f"leoronic_result {task_id}")
    assert r.rc == 5 and f"task {task_id} is still queued" in r.err, r


# ----- tags ---------------------------------------------------------------------------------


def test_tag_condition_waits_for_the_tag_and_runs_on_the_tagged_node(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(3, per_node_args=[["--tag", "alpha"], [], ["--tag", "beta gamma"]])
    n1, n2, n3 = cluster.nodes

    # Tags given at start, and the automatic ones, are listed for every node.
    auto = {"os-linux", f"arch-{platform.machine().lower()}"}
    tags = node_tags(cluster)
    assert set(tags) == {"n1", "n2", "n3"}
    assert tags["n1"] >= auto | {"alpha"}
    assert tags["n2"] >= auto and not tags["n2"] & {"alpha", "beta", "gamma"}
    assert tags["n3"] >= auto | {"beta", "gamma"}

    # No node has tag `special`: the task waits.
    t1 = submit(cluster, "echo on $LEORONIC_NODE_NAME", "worker:tag special", "t1")
    assert_still_queued(cluster, t1)
    # ... and says why, where an operator looks (Slurm's pending Reason).
    row = next(line for line in cluster.sh("leoronic_get_queue").out.splitlines()
               if line.startswith("t1 "))
    assert row.endswith("[waiting: no node that is up has tag 'special']"), row
    r = cluster.sh("leoronic_task_info t1")
    assert r.out.startswith("t1: queued (waiting: no node that is up has tag 'special')\n"), r

    # Tag n2 through LEORONIC_NODE pointing at n2: the task runs there.
    r = cluster.sh("leoronic_add_tag special", node=n2)
    assert r.rc == 0 and r.out == "n2: +special\n", r
    wait_ok(cluster, t1)
    assert result_out(cluster, t1) == "on n2\n"
    assert "special" in node_tags(cluster)["n2"]

    # `--node NAME` tags another node than the one asked.
    r = cluster.cli("add-tag", "other", "--node", "n3", node=n1)
    assert r.rc == 0 and r.out == "n3: +other\n", r
    assert "other" in node_tags(cluster)["n3"]
    t_other = submit(cluster, "echo on $LEORONIC_NODE_NAME", "worker:tag other")
    wait_ok(cluster, t_other)
    assert result_out(cluster, t_other) == "on n3\n"

    # Start tags are usable in conditions too.
    t_gamma = submit(cluster, "echo on $LEORONIC_NODE_NAME", "worker:tag gamma")
    t_auto = submit(cluster, "echo on $LEORONIC_NODE_NAME", "worker:tag os-linux; worker:tag alpha")
    wait_ok(cluster, t_gamma, t_auto)
    assert result_out(cluster, t_gamma) == "on n3\n"
    assert result_out(cluster, t_auto) == "on n1\n"

    # del_tag removes it: listed no more, and a new task needing it waits again.
    r = cluster.sh("leoronic_del_tag special", node=n2)
    assert r.rc == 0 and r.out == "n2: -special\n", r
    assert all("special" not in t for t in node_tags(cluster).values())
    t2 = submit(cluster, "echo on $LEORONIC_NODE_NAME", "worker:tag special", "t2")
    assert_still_queued(cluster, t2)
    # Removing it again is an error naming the node and the tag.
    r = cluster.sh("leoronic_del_tag special", node=n2)
    assert r.rc == 2 and "n2" in r.err and "special" in r.err, r


@pytest.mark.parametrize("sig", [
    pytest.param(signal.SIGKILL, id="sigkill"),
    pytest.param(signal.SIGTERM, id="sigterm"),
])
def test_runtime_tags_survive_a_restart_of_the_node(make_cluster, sig: int) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(3)
    n3 = cluster.nodes[2]
    r = cluster.cli("add-tag", "kept", "--node", "n3")
    assert r.rc == 0, r
    assert "kept" in node_tags(cluster)["n3"]

    cluster.kill(n3, sig)
    cluster.launch(n3)
    cluster.wait_registered(n3, timeout=20)

    assert "kept" in node_tags(cluster)["n3"]
    # Its log says so: an operator who dropped a --tag learns the cluster still gives it.
    wait_for(lambda: "tags kept from the cluster, not given by this start's options: kept "
                     "(leoronic_del_tag TAG --node n3 drops one)" in n3.log(), 20,
             "the kept tag in n3's log")
    t = submit(cluster, "echo on $LEORONIC_NODE_NAME", "worker:tag kept")
    wait_ok(cluster, t)
    assert result_out(cluster, t) == "on n3\n"


# ----- queue conditions -----------------------------------------------------------------------


def test_is_first_starts_after_every_earlier_task_ended(cluster3: Cluster, tmp_path: Path) -> None:
    log, gate = tmp_path / "times.log", tmp_path / "gate"
    a = submit(cluster3, f"{logged(log, 'A-start')}; {gate_wait(gate)}; sleep 0.5; {logged(log, 'A-end')}")
    b = submit(cluster3, f"{logged(log, 'B-start')}; sleep 0.2; {logged(log, 'B-end')}")
    c = submit(cluster3, f"{logged(log, 'C-start')}; echo C ran", "queue:is_first")
    assert states(cluster3)[c] == "queued"  # A holds it back while the gate is closed
    gate.touch()
    wait_ok(cluster3, a, b, c)
    assert result_out(cluster3, c) == "C ran\n"
    t = read_times(log)
    assert t["C-start"] >= t["A-end"] and t["C-start"] >= t["B-end"], t


def test_all_with_cmd_done_waits_only_for_earlier_matching_tasks(cluster3: Cluster, tmp_path: Path) -> None:
    log, gate, later_gate = tmp_path / "times.log", tmp_path / "gate", tmp_path / "later-gate"
    steps = [
        submit(cluster3, f"{gate_wait(gate)}; sleep 0.5; echo stepA; {logged(log, f'S{i}-end')}")
        for i in (1, 2)
    ]
    unrelated = submit(cluster3, f"{gate_wait(later_gate)}; echo other")  # does not match
    d = submit(cluster3, f"{logged(log, 'D-start')}; echo D ran", "queue:all_with_cmd_done stepA")
    # A matching task submitted after D must not hold it back.
    later = submit(cluster3, f"{gate_wait(later_gate)}; echo stepA")
    assert states(cluster3)[d] == "queued"

    gate.touch()
    wait_ok(cluster3, *steps, d)
    assert result_out(cluster3, d) == "D ran\n"
    s = states(cluster3)
    assert s[later] in ("queued", "running") and s[unrelated] in ("queued", "running"), s
    t = read_times(log)
    assert t["D-start"] >= t["S1-end"] and t["D-start"] >= t["S2-end"], t
    later_gate.touch()
    wait_ok(cluster3, later, unrelated)


def test_after_runs_and_after_ok_fails_with_a_reason_when_the_dependency_failed(
        cluster3: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    bad = submit(cluster3, f"{gate_wait(gate)}; exit 3", task_id="bad")
    after = submit(cluster3, "echo after ran", "queue:after bad", "dep-after")
    after_ok = submit(cluster3, "echo must not run", "queue:after_ok bad", "dep-after-ok")
    chain = submit(cluster3, "echo must not run either", "queue:after_ok dep-after-ok", "dep-chain")
    s = states(cluster3)
    assert all(s[t] == "queued" for t in (after, after_ok, chain)), s  # bad is still running

    gate.touch()
    r = cluster3.sh(f"leoronic_wait --timeout 30 {bad} {after} {after_ok} {chain}", timeout=60)
    assert r.rc == 1 and "3 of 4 tasks did not succeed: bad, dep-after-ok, dep-chain" in r.err, r

    r = cluster3.sh(f"leoronic_result {bad}")
    assert r.rc == 3, r
    # `after` runs whatever the outcome.
    assert result_out(cluster3, after) == "after ran\n"

    # `after_ok` can never run: failed, the reason names the failed task, in both commands.
    row = queue_line(cluster3, after_ok)
    assert " failed " in row and "can never run" in row and "'bad'" in row, row
    r = cluster3.sh(f"leoronic_result {after_ok}")
    assert r.rc != 0 and r.out == "", r
    assert "can never run" in r.err and "'bad'" in r.err and "must not run" not in r.err, r

    # ... and so does a task that needs it to succeed.
    row = queue_line(cluster3, chain)
    assert " failed " in row and "can never run" in row and "'dep-after-ok'" in row, row
    r = cluster3.sh(f"leoronic_result {chain}")
    assert r.rc != 0 and r.out == "" and "'dep-after-ok'" in r.err, r


def test_bad_conditions_are_refused_at_submit_and_nothing_is_queued(cluster3: Cluster) -> None:
    before = states(cluster3)
    cases = [
        ("queue:all_with_cmd_don echo", ["unknown predicate 'all_with_cmd_don'"]),
        ("worker:tag a b", ["tag 'a b'", "spaces"]),
        ("worker:has_file ../x", ["'../x'", ".."]),
        ("queue:all_with_cmd_done (", ["invalid regular expression '('"]),
        ("queue:all_with_cmd_ok make(?!-test)",  # RE2 runs patterns: no lookaround
         ["invalid regular expression 'make(?!-test)': invalid perl operator: (?!"]),
        ("queue:is_first; queue:after nosuch",
         ["CONDITIONS: unknown task 'nosuch' (named by a queue: condition)"]),
        ("worker:gpu", ["unknown predicate 'gpu'"]),
        ("node:tag x", ["unknown scope 'node'"]),
    ]
    for condition, expected in cases:
        r = add_task(cluster3, "echo should not be queued", condition)
        assert r.rc == 2 and r.out == "", (condition, r)
        assert r.err.count("\n") == 1 and r.err.startswith("leoronic: "), (condition, r)
        for part in expected:
            assert part in r.err, (condition, part, r)
        if "nosuch" not in condition:  # a syntax error quotes the whole condition
            assert f"'{condition}'" in r.err, (condition, r)
    assert states(cluster3) == before == {}


def test_has_file_runs_only_on_the_node_holding_the_file(cluster3: Cluster) -> None:
    n3 = cluster3.nodes[2]
    files = os.path.join(n3.home, "files")
    os.makedirs(files, exist_ok=True)
    with open(os.path.join(files, "data.bin"), "wb") as f:
        f.write(b"\x00\x01")
    ids = [submit(cluster3, "echo on $LEORONIC_NODE_NAME", "worker:has_file data.bin")
           for _ in range(3)]
    wait_ok(cluster3, *ids)
    assert [result_out(cluster3, t) for t in ids] == ["on n3\n"] * 3


def test_a_task_waiting_for_a_file_holds_no_core(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """On a one-core node, a task whose file is nowhere waits, and the tasks behind it run."""
    cluster: Cluster = make_cluster(1, [["--cores", "1"]])
    waiting = submit(cluster, "echo never", "worker:has_file nowhere.bin")
    behind = [submit(cluster, "echo behind") for _ in range(2)]
    wait_ok(cluster, *behind)
    assert_still_queued(cluster, waiting)

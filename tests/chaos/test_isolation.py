"""Shrinking to the last box standing, isolated mode and the merge (issue #5), with real SIGKILLs.

Three workers with short timings: a silent worker is lost after 3 s (`--lease 3`), leaves the
Raft membership 6 s later (`--remove-after 6`), and a worker without quorum for 5 s enters
isolated mode (`--isolation-after 5`). n1 is the survivor; n3 dies first, n2 second.

Submitting needs a quorum, so the work the survivor must do alone is queued before the cut:
dependents `queue:after gate` of a gate task that hangs on n2 (its first attempt) and so can
only finish once n2 is gone. Tasks append `NAME on NODE` to a run log in the test's tmp dir, so
every real execution is counted and compared with the attempts the record keeps.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import tests.cluster
from tests.chaos.test_failover import (
    add_tag,
    nodes_view,
    queue_states,
    record,
    result,
    submit,
    wait_done,
)
from tests.cluster import Cluster, NodeProc, stays, wait_for

ISO = ["--lease", "3", "--remove-after", "6", "--isolation-after", "5"]
FINAL_WHYS = ("exit", "isolated run")


def ports_in_order(monkeypatch: Any, count: int, descending: bool) -> None:
    """Make the next `count` nodes started get ports (and so Raft addresses, which pysyncobj
    compares as strings to decide who opens each connection) in ascending or descending order."""
    original = tests.cluster.free_port_pair
    ports = sorted((original() for _ in range(count)), reverse=descending)
    monkeypatch.setattr(tests.cluster, "free_port_pair",
                        lambda: ports.pop(0) if ports else original())


def logged(log: Path, name: str, then: str = "") -> str:
    """A command that records its run in `log`, then prints the same line."""
    line = f'"{name} on $LEORONIC_NODE_NAME"'
    return f"{then}echo {line} >> {shlex.quote(str(log))}; echo {line}"


def runs(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def gate_command(log: Path) -> str:
    """Hangs on n2 on its first attempt; finishes at once anywhere else."""
    return logged(log, "gate", then='if [ "$LEORONIC_NODE_NAME" = n2 ] && '
                                     '[ "$LEORONIC_ATTEMPT" = 1 ]; then sleep 300; fi; ')


def queue_gated_work(cluster: Cluster, log: Path, deps: int = 4) -> tuple[str, list[str]]:
    """The gate, running on n2, that n1 may also run; and dependents of it (still queued)."""
    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    add_tag(cluster, n2, "gatekeeper", via=n1)
    gate = submit(cluster, gate_command(log), "worker:tag gatekeeper", "gate", node=n1)
    wait_for(lambda: record(cluster, n1, gate).node == "n2", 15, "the gate to run on n2",
             interval=0.1)
    add_tag(cluster, n1, "gatekeeper", via=n1)
    ids = [submit(cluster, logged(log, f"dep{i}"), "queue:after gate", f"dep{i}", node=n1)
           for i in range(deps)]
    states = queue_states(cluster, n1)
    assert states["gate"] == "running" and all(states[t] == "queued" for t in ids), states
    return gate, ids


def check_one_final_result_each(cluster: Cluster, via: NodeProc, ids: list[str],
                                log: Path) -> dict[str, Any]:
    """Every task done with exactly one final result; every run in the log is in the record."""
    records = {}
    counted = runs(log)
    for tid in ids:
        t = record(cluster, via, tid)
        records[tid] = t
        assert t.state.value == "done", (tid, t)
        finals = [a for a in t.attempts if a.why in FINAL_WHYS]
        assert len(finals) == 1, (tid, t.attempts)
        final = finals[0]
        assert final.exit_code == t.outcome.exit_code == 0 and final.node == t.node, \
            (tid, t.attempts, t.node)
        # Any other run that finished is a duplicate from the isolated side, and says so.
        for a in t.attempts:
            if a is not final and a.exit_code is not None:
                assert "isolated" in a.why, (tid, t.attempts)
        # Every real run is in the history: at least as many attempts on each node as runs
        # logged there. (A run whose finish lost the race to the merge ends "superseded".)
        logged_runs = [line.split(" on ")[1] for line in counted if line.split(" on ")[0] == tid]
        for node in set(logged_runs):
            assert logged_runs.count(node) <= sum(a.node == node for a in t.attempts), \
                (tid, logged_runs, t.attempts)
        r = result(cluster, tid, node=via)
        assert (r.rc, r.out) == (0, f"{tid} on {t.node}\n"), r
    return records


# ----- 5. shrinking to one, isolated mode, merge --------------------------------------------


def test_shrink_to_the_last_worker_which_runs_isolated_and_merges(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(3, per_node_args=[ISO + ["--tag", "survivor"], ISO, ISO])
    n1, n2, n3 = cluster.nodes
    log = tmp_path / "runs.log"

    # n3 dies: after lease + remove-after it is unreachable and no longer a Raft member.
    cluster.kill(n3)

    def n3_removed(asked: NodeProc) -> bool:
        view = nodes_view(cluster, asked)
        if view is None:
            return False
        role, status = view.rows.get("n3", ("", ""))
        return view.quorum and role == "not a Raft member" and status.startswith("UNREACHABLE since")
    wait_for(lambda: n3_removed(n1) and n3_removed(n2), 30, "n3 to leave the Raft membership",
             interval=0.3)

    # Work still runs on the two left.
    two = [submit(cluster, logged(log, f"two{i}"), task_id=f"two{i}", node=n1) for i in range(4)]
    wait_done(cluster, two, node=n2)
    assert {record(cluster, n1, t).node for t in two} <= {"n1", "n2"}

    # Queue the survivor's work, and one task running on n1 when the quorum goes.
    gate, deps = queue_gated_work(cluster, log)
    release = tmp_path / "release-held"
    held = submit(cluster, logged(log, "held", then=f"while [ ! -e {release} ]; do sleep 0.05; done; "),
                  "worker:tag survivor", "held", node=n1)
    wait_for(lambda: record(cluster, n1, held).state.value == "running", 15, "held to run")

    # n2 dies: n1 alone has no quorum, and after --isolation-after it says it is isolated.
    cluster.kill(n2)
    wait_for(lambda: (v := nodes_view(cluster, n1)) is not None and v.isolated and not v.quorum,
             30, "n1 to enter isolated mode", interval=0.3)
    assert "entering isolated mode" in n1.log()

    # Isolated, n1 runs the gate (n2's task: n2 is lost in its copy) and then the dependents.
    release.touch()
    want = {f"{t} on n1" for t in [gate, held, *deps]}
    wait_for(lambda: want <= set(runs(log)), 30, "n1 to run the queued work alone", interval=0.2)
    # Asked while isolated, n1 answers from its own copy: the results it produced alone.
    for tid in deps:
        wait_for(lambda t=tid: result(cluster, t, node=n1).rc == 0, 15, f"{tid}'s local result")
        r = result(cluster, tid, node=n1)
        assert (r.rc, r.out) == (0, f"{tid} on n1\n"), r
    view = nodes_view(cluster, n1)
    assert view is not None and view.isolated, view
    # Changes need a majority: refused at once (nothing changed), while `leoronic_wait` is
    # answered from n1's own copy.
    for script in ("leoronic_add_task 1024 1 1024 true '' '' true iso-new",
                   f"leoronic_del_task {deps[0]}", f"leoronic_hold {deps[0]}"):
        started = time.monotonic()
        r = cluster.sh(script, node=n1, timeout=60, LEORONIC_RETRY_S="0")
        assert r.rc == 3 and "is isolated since" in r.err and "nothing was changed" in r.err, r
        assert time.monotonic() - started < 10, (script, "waited for a quorum")
    r = cluster.sh(f"leoronic_wait --timeout 10 {' '.join(deps)}", node=n1)
    assert r.rc == 0, r

    # The others come back (same homes): n1 rejoins, the isolated results merge.
    cluster.launch(n2)
    cluster.launch(n3)
    cluster.wait_registered(n2)
    cluster.wait_registered(n3)

    def all_up() -> bool:
        for asked in cluster.nodes:
            v = nodes_view(cluster, asked)
            if v is None or v.isolated or not v.quorum:
                return False
            if any(status != "up" or role not in ("leader", "follower")
                   for role, status in v.rows.values()):
                return False
        return True
    wait_for(all_up, 30, "every worker to be an up Raft member again, n1 not isolated",
             interval=0.3)
    everything = two + [gate, held, *deps]
    wait_done(cluster, everything, node=n3)
    for asked in cluster.nodes:
        states = queue_states(cluster, asked)
        assert all(states[t] == "done" for t in everything), states

    records = check_one_final_result_each(cluster, n3, everything, log)
    # The dependents ran on n1 while it was isolated (and maybe again after, as duplicates).
    for tid in deps:
        assert any(a.node == "n1" and "isolated run" in a.why for a in records[tid].attempts), \
            records[tid].attempts
    # The gate's hung attempt on n2 ended without a result.
    first = records[gate].attempts[0]
    assert first.node == "n2" and first.exit_code is None, records[gate].attempts
    # `held` was running on n1 when the quorum went; its run is in the record (and, if isolated
    # mode ran it again, so is that run, marked isolated: checked above).
    assert records[held].attempts[0].node == "n1", records[held].attempts
    merged = [line for line in n1.log().splitlines() if "merged" in line and "isolated" in line]
    assert merged, n1.log()[-3000:]


# ----- 6. --on-isolation wait ---------------------------------------------------------------


def test_on_isolation_wait_keeps_the_last_worker_idle_until_the_others_return(make_cluster,  # type: ignore[no-untyped-def]
                                                                               tmp_path) -> None:
    cluster: Cluster = make_cluster(3, per_node_args=[ISO + ["--on-isolation", "wait"], ISO, ISO])
    n1, n2, n3 = cluster.nodes
    log = tmp_path / "runs.log"
    gate, deps = queue_gated_work(cluster, log)

    cluster.kill(n3)
    cluster.kill(n2)
    wait_for(lambda: (v := nodes_view(cluster, n1)) is not None and not v.quorum, 15,
             "n1 to lose the quorum", interval=0.2)

    # Well past --isolation-after: n1 neither says it is isolated nor runs anything.
    def idle() -> bool:
        v = nodes_view(cluster, n1)
        return v is not None and not v.isolated and not v.quorum and runs(log) == []
    stays(idle, 5 + 4, "n1 without quorum, not isolated, nothing run")
    assert "entering isolated mode" not in n1.log()
    states = queue_states(cluster, n1)
    assert all(states[t] == "queued" for t in deps), states

    cluster.launch(n2)
    cluster.launch(n3)
    cluster.wait_registered(n2)
    cluster.wait_registered(n3)
    wait_done(cluster, [gate, *deps], node=n1)

    records = check_one_final_result_each(cluster, n1, [gate, *deps], log)
    for tid in [gate, *deps]:
        assert not any("isolated" in a.why for a in records[tid].attempts), records[tid].attempts
    for tid in deps:
        assert len(records[tid].attempts) == 1, records[tid].attempts
    assert not any("isolat" in line for line in n1.log().splitlines()
                   if "WARNING" in line), n1.log()[-3000:]


# ----- a removed worker comes back -----------------------------------------------------------


def test_a_removed_worker_is_added_back_when_it_returns(make_cluster, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # n3's Raft address sorts highest, so pysyncobj leaves opening its connections to n3, on
    # n3's retry timer. (The leader used to remove it again before its join could commit, every
    # time it was re-added: an endless add/remove loop.)
    ports_in_order(monkeypatch, 3, descending=False)
    cluster: Cluster = make_cluster(3, per_node_args=[ISO, ISO, ISO])
    n1, n2, n3 = cluster.nodes
    cluster.kill(n3)
    wait_for(lambda: (v := nodes_view(cluster, n1)) is not None
             and v.rows.get("n3", ("", ""))[0] == "not a Raft member", 30,
             "n3 to leave the Raft membership", interval=0.3)

    cluster.launch(n3)  # same home: its saved member list still names n1 and n2

    seen: dict[str, object] = {}

    def back() -> bool:
        for asked in cluster.nodes:
            v = nodes_view(cluster, asked)
            seen[asked.name] = v
            if v is None or not v.quorum or v.isolated or \
                    v.rows.get("n3") not in (("follower", "up"), ("leader", "up")):
                return False
        return True
    # It comes back in about 5 s here, also with both cores busy; 20 s is plenty.
    try:
        wait_for(back, 20, "n3 to be an up Raft member again on every node", interval=0.3)
    except AssertionError as exc:
        logs = "".join(f"{n.name} log:\n{n.log()[-4000:]}\n" for n in cluster.nodes)
        raise AssertionError(f"{exc}\nviews: {seen}\n{logs}") from None
    tag = "only-n3"
    add_tag(cluster, n3, tag, via=n1)
    tid = submit(cluster, logged(Path(n3.home) / "ran.log", "after-return"), f"worker:tag {tag}",
                 node=n1)
    wait_done(cluster, [tid], node=n1)

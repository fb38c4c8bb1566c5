"""Draining a worker for maintenance, through the CLI on a real two-worker cluster: what runs
there finishes, nothing new goes there, `--wait` returns when it is empty, a SIGKILLed and
restarted worker stays drained, and `resume` gives it work again."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

from tests.cluster import UTILITIES, Cluster, NodeProc, result_out, wait_for, wait_ok

EXIT_NOT_FINISHED = 5


def submit(cluster: Cluster, command: str, task_id: str, conditions: str = "") -> None:
    r = cluster.sh("leoronic_add_task 1024 1 1024 true " + " ".join(
        shlex.quote(f) for f in [conditions, "", command, task_id]))
    assert r.rc == 0 and r.out == f"{task_id}\n", r


def nodes_line(cluster: Cluster, name: str, asked: NodeProc | None = None) -> str:
    """The first line `leoronic_nodes` (asking node `asked`) prints about node `name`."""
    r = cluster.sh("leoronic_nodes", node=asked)
    assert r.rc == 0, r
    return next(line for line in r.out.splitlines() if line.startswith(f"{name}  "))


def test_a_drained_worker_finishes_its_task_takes_no_new_one_and_stays_drained(
        make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(2)
    gate = tmp_path / "gate"
    submit(cluster, f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done; "
                    "echo long on $LEORONIC_NODE_NAME", "long")
    where = wait_for(lambda: next((line.split()[2] for line in cluster.sh("leoronic_get_queue").out
                                   .splitlines() if line.split()[:2] == ["long", "running"]), None),
                     20, "long to run")
    drained = next(n for n in cluster.nodes if n.name == where)
    other = next(n for n in cluster.nodes if n is not drained)

    r = cluster.sh(f"leoronic_drain --node {where}")
    assert (r.rc, r.out) == (0, f"{where}: draining, still running 1: long\n"), r
    assert nodes_line(cluster, where).endswith("up, draining (takes no new task)")

    # New work goes to the other worker only, even work it cannot start at once.
    for i in range(6):
        submit(cluster, "echo on $LEORONIC_NODE_NAME", f"quick{i}")
    wait_ok(cluster, *[f"quick{i}" for i in range(6)])
    assert {result_out(cluster, f"quick{i}") for i in range(6)} == {f"on {other.name}\n"}

    # --wait gives up at its timeout while the task runs, then returns once it ended.
    r = cluster.sh(f"leoronic_drain --node {where} --wait --timeout 0.5")
    assert r.rc == EXIT_NOT_FINISHED and r.out == "", r
    assert r.err == f"leoronic: {where}: draining, still running 1: long after 0.5 s\n", r
    waiting = subprocess.Popen(
        ["bash", "-c", f"source {UTILITIES}\nleoronic_drain --node {where} --wait"],
        env=cluster.env(), cwd=cluster.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        gate.touch()
        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:  # the shell and the `leoronic drain` it runs
            os.killpg(waiting.pid, signal.SIGKILL)
            waiting.wait()
    assert (waiting.returncode, out, err) == (0, f"{where}: drained (runs no task)\n", ""), err
    wait_ok(cluster, "long")
    assert result_out(cluster, "long") == f"long on {where}\n"  # it ran to its end there
    assert nodes_line(cluster, where).endswith("up, drained")

    # Replicated, and kept across a SIGKILL and restart of the drained worker.
    cluster.kill(drained, signal.SIGKILL)
    cluster.launch(drained)
    cluster.wait_registered(drained, timeout=40)
    for asked in (other, drained):  # the restarted one's own copy catches up as it replays
        wait_for(lambda asked=asked: nodes_line(cluster, where, asked).endswith("up, drained"),  # type: ignore[misc]
                 20, f"{asked.name} to show {where} drained")
    submit(cluster, "echo on $LEORONIC_NODE_NAME", "after-restart")
    wait_ok(cluster, "after-restart")
    assert result_out(cluster, "after-restart") == f"on {other.name}\n"

    # Resumed, it takes work again (pinned there by a tag to be sure it is this one).
    r = cluster.sh(f"leoronic_resume --node {where}")
    assert (r.rc, r.out) == (0, f"{where}: taking tasks\n"), r
    assert nodes_line(cluster, where).endswith("  up")
    r = cluster.sh(f"leoronic_add_tag --node {where} back")
    assert r.rc == 0, r
    submit(cluster, "echo on $LEORONIC_NODE_NAME", "resumed", "worker:tag back")
    wait_ok(cluster, "resumed")
    assert result_out(cluster, "resumed") == f"on {where}\n"


def test_drain_refuses_bad_input_with_one_line(cluster3: Cluster) -> None:
    for args, message in [
        ("--node nosuch", "leoronic: --node: unknown node 'nosuch'\n"),
        ("--timeout 3", "leoronic: --timeout: only with --wait\n"),
        ("--wait --timeout -1", "leoronic: --timeout: -1 is not a number of seconds >= 0\n"),
    ]:
        r = cluster3.sh(f"leoronic_drain {args}")
        assert (r.rc, r.out, r.err) == (2, "", message), (args, r)
    r = cluster3.sh("leoronic_resume --node nosuch")
    assert (r.rc, r.err) == (2, "leoronic: --node: unknown node 'nosuch'\n"), r
    listed = [line for line in cluster3.sh("leoronic_nodes").out.splitlines()
              if line.startswith("n")]
    assert len(listed) == 3 and all(line.endswith("  up") for line in listed), listed

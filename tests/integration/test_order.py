"""Which waiting task starts when, through the CLI on real workers: among waiting tasks a
higher priority starts first (given at submit with --priority or changed with
leoronic_priority), the order survives the worker being SIGKILLed and restarted; a held task
stays queued until released, and a running one held is stopped and starts afresh when
released; bad input is one line."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from tests.cluster import UTILITIES, Cluster, process_gone, wait_for, wait_ok


def submit(cluster: Cluster, command: str, task_id: str, conditions: str = "",
           **env: str) -> None:
    r = cluster.sh(f"leoronic_add_task 1024 1 1024 true {shlex.quote(conditions)} '' "
                   f"{shlex.quote(command)} {task_id}", **env)
    assert r.rc == 0 and r.out == f"{task_id}\n", r


def queue_rows(cluster: Cluster) -> dict[str, str]:
    r = cluster.sh("leoronic_get_queue")
    assert r.rc == 0, r
    return {line.split()[0]: line for line in r.out.splitlines()[1:]}


def started(cluster: Cluster, task_id: str) -> float:
    r = cluster.sh(f"leoronic_task_info --json {task_id}")
    assert r.rc == 0, r
    return float(json.loads(r.out)["result"]["start"])


def test_higher_priority_starts_first_and_the_order_survives_a_restart(
        make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(1, [["--cores", "1"]])
    gate = tmp_path / "gate"
    submit(cluster, f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done", "gate")
    wait_for(lambda: " running " in queue_rows(cluster).get("gate", ""), 20, "gate to run")
    for task_id in "abcd":
        submit(cluster, "true", task_id)
    submit(cluster, "true", "e", LEORONIC_PRIORITY="5")
    r = cluster.sh("leoronic_priority 9 c")
    assert (r.rc, r.out) == (0, "c priority 9\n"), r
    r = cluster.sh("leoronic_priority -1 a")  # a negative number is not taken for an option
    assert (r.rc, r.out) == (0, "a priority -1\n"), r

    def shown() -> bool:
        rows = queue_rows(cluster)
        return all(rows.get(t, "").endswith(f"[priority {p}]") for t, p in [("c", 9), ("e", 5), ("a", -1)])
    assert shown(), queue_rows(cluster)
    assert "priority" not in queue_rows(cluster)["b"]
    r = cluster.sh("leoronic_task_info c")
    assert r.rc == 0 and "; priority 9\n" in r.out, r

    # Replicated and journaled: kept across a SIGKILL and restart of the only worker. Its
    # restart kills the gate's process and puts the gate back in the queue, at its place:
    # behind c and e, ahead of the rest. It blocks there again until the gate opens.
    node = cluster.nodes[0]
    cluster.kill(node, signal.SIGKILL)
    cluster.launch(node)
    cluster.wait_registered(node, timeout=40)
    # Once it shows itself up, it lists the whole queue at once: reads wait for its copy to
    # catch up with the committed log (once it listed half, still replaying its journal).
    assert set(queue_rows(cluster)) == {"gate", *"abcde"}, queue_rows(cluster)

    def gate_runs_again() -> bool:
        row = queue_rows(cluster).get("gate", "").split()
        return row[1:2] == ["running"] and row[3:4] == ["2"]
    wait_for(gate_runs_again, 30, "the gate to run again after the restart")
    rows = queue_rows(cluster)
    assert rows["a"].endswith("[priority -1]") and "priority" not in rows["b"], rows

    gate.touch()
    wait_ok(cluster, "gate", *"abcde", timeout=60)
    order = sorted(["gate", *"abcde"], key=lambda t: started(cluster, t))
    assert order == ["c", "e", "gate", "b", "d", "a"], order


def test_priority_refuses_bad_input_with_one_line(cluster3: Cluster) -> None:
    submit(cluster3, "true", "done1")
    wait_ok(cluster3, "done1")
    for script, message in [
        ("leoronic_priority x done1", "leoronic: PRIORITY: 'x' is not a whole number\n"),
        ("leoronic_priority 99999999999 done1",
         "leoronic: PRIORITY: 99999999999 is outside -2147483648 to 2147483647\n"),
        ("leoronic_priority 3 nosuch", "leoronic: ID: no task 'nosuch'\n"),
        ("leoronic_priority 3 nosuch nosuch", "leoronic: ID: no task 'nosuch'\n"),  # once
        ("leoronic_priority 3 done1", "leoronic: ID: task 'done1' is done\n"),
        ("leoronic_add_tasks_from_file --priority 1.5 <(echo \"1024 1 1024 true '' '' true p1\")",
         "leoronic: --priority: '1.5' is not a whole number\n"),
        ("LEORONIC_PRIORITY=high leoronic_add_task 1024 1 1024 true '' '' true p2",
         "leoronic: LEORONIC_PRIORITY: 'high' is not a whole number\n"),  # as it was given
    ]:
        r = cluster3.sh(script)
        assert (r.rc, r.out, r.err) == (2, "", message), (script, r)
    assert set(queue_rows(cluster3)) == {"done1"}  # nothing was queued


def test_a_held_task_stays_queued_until_released(cluster3: Cluster, tmp_path: Path) -> None:
    submit(cluster3, "echo one", "t1", LEORONIC_HOLD="1")
    submit(cluster3, "echo two", "t2")
    wait_ok(cluster3, "t2")  # free cores everywhere, yet t1 waits
    assert queue_rows(cluster3)["t1"].split()[1] == "queued"
    assert queue_rows(cluster3)["t1"].endswith("[held]")
    r = cluster3.sh("leoronic_get_queue --summary")
    assert r.out.endswith("total 2  (held 1 of the queued)\n"), r
    r = cluster3.sh("leoronic_release t1 t1")
    assert (r.rc, r.out) == (0, "t1 released\n"), r  # an id given twice is acted on once
    wait_ok(cluster3, "t1")

    gate = tmp_path / "gate"
    submit(cluster3, f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done", "gate")
    submit(cluster3, "echo later", "later", conditions="queue:after gate")
    wait_for(lambda: " running " in queue_rows(cluster3).get("gate", ""), 20, "gate to run")
    r = cluster3.sh("leoronic_hold later nosuch")
    assert (r.rc, r.out, r.err) == (2, "later held\n", "leoronic: ID: no task 'nosuch'\n"), r
    gate.touch()
    wait_ok(cluster3, "gate")
    r = cluster3.sh("leoronic_hold gate")
    assert (r.rc, r.err) == (2, "leoronic: ID: task 'gate' is done: only a queued or running "
                                "task can be held\n"), r
    other = cluster3.nodes[2]  # replicated: every worker's copy says so
    wait_for(lambda: cluster3.sh("leoronic_get_queue", node=other).out.count("[held]") == 1, 20,
             f"{other.name} to show the task held")
    r = cluster3.sh("leoronic_task_info later")
    assert r.rc == 0 and "held (leoronic release starts it)" in r.out, r
    assert queue_rows(cluster3)["later"].split()[1] == "queued"
    r = cluster3.sh("leoronic_release later")
    assert (r.rc, r.out) == (0, "later released\n"), r
    wait_ok(cluster3, "later")


def test_wait_says_which_tasks_are_held_and_ends_once_they_are_released(
        cluster3: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    submit(cluster3, "echo paused", "paused", LEORONIC_HOLD="1")
    submit(cluster3, f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done", "gated")
    r = cluster3.sh("leoronic_wait --timeout 1 paused gated")
    assert (r.rc, r.err) == (5, "leoronic: 2 of 2 tasks not finished after 1 s (1 of them held: "
                                "leoronic_release starts them)\n"), r
    gate.touch()
    wait_ok(cluster3, "gated")
    r = cluster3.sh("leoronic_wait --timeout 0.5 paused gated")
    assert (r.rc, r.err) == (5, "leoronic wait: every task left is held (1): nothing starts "
                                "them but leoronic_release\n"
                                "leoronic: 1 of 2 tasks not finished after 0.5 s (1 of them "
                                "held: leoronic_release starts them)\n"), r

    # Without --timeout it says so once and goes on waiting: another shell may release them.
    err = tmp_path / "wait.err"
    with open(err, "wb") as f:
        waiting = subprocess.Popen(["bash", "-c", f"source {UTILITIES}\nleoronic_wait paused"],
                                   stdout=subprocess.DEVNULL, stderr=f, env=cluster3.env(),
                                   start_new_session=True)
    try:
        wait_for(lambda: b"every task left is held" in err.read_bytes(), 20, "the held note")
        assert waiting.poll() is None
        r = cluster3.sh("leoronic_release paused")
        assert r.rc == 0, r
        assert waiting.wait(timeout=30) == 0
    finally:
        if waiting.poll() is None:
            os.killpg(waiting.pid, signal.SIGKILL)
            waiting.wait()
    assert err.read_text() == ("leoronic wait: every task left is held (1): nothing starts "
                               "them but leoronic_release\n")


def test_a_running_task_held_is_stopped_and_starts_afresh_when_released(
        cluster3: Cluster, tmp_path: Path) -> None:
    gate, pids = tmp_path / "gate", tmp_path / "pids"
    submit(cluster3, f"echo $$ >> {shlex.quote(str(pids))}; "
                     f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done; echo end",
           "long")
    wait_for(lambda: pids.exists() and pids.read_text().endswith("\n"), 20, "the task to start")
    first = int(pids.read_text())
    r = cluster3.sh("leoronic_hold --state running")
    assert (r.rc, r.out, r.err) == (0, "long held\n", ""), r
    wait_for(lambda: process_gone(first), 20,
             "the held task's process to be killed")
    row = queue_rows(cluster3)["long"]
    assert row.split()[1] == "queued" and row.endswith("[held]"), row
    info = json.loads(cluster3.sh("leoronic_task_info --json long").out)
    assert info["held"] and info["retries_left"] == 0 and info["result"] is None, info
    assert [(a["number"], a["why"]) for a in info["attempts"]] == [(1, "held")], info
    submit(cluster3, "true", "sentinel")
    wait_ok(cluster3, "sentinel")  # proof the schedulers made passes since
    assert pids.read_text().split() == [str(first)]  # it did not start while held
    row = queue_rows(cluster3)["long"]
    assert row.split()[1] == "queued" and row.endswith("[held]"), row
    r = cluster3.sh("leoronic_release long")
    assert (r.rc, r.out) == (0, "long released\n"), r
    wait_for(lambda: pids.read_text().count("\n") == 2, 20, "the released task to start again")
    gate.touch()
    wait_ok(cluster3, "long")
    r = cluster3.sh("leoronic_result long")
    assert (r.rc, r.out) == (0, "end\n"), r
    info = json.loads(cluster3.sh("leoronic_task_info --json long").out)
    assert [(a["number"], a["why"]) for a in info["attempts"]] == [(1, "held"), (2, "exit")]


def test_a_stopped_task_gets_its_kill_grace_and_its_core_until_it_is_gone(
        make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Held or deleted, a running task gets SIGTERM and the worker's --kill-grace to clean
    up, then SIGKILL; what waits for its core starts only once it is gone."""
    cluster: Cluster = make_cluster(1, [["--cores", "1", "--kill-grace", "2"]])
    q = {name: shlex.quote(str(tmp_path / name)) for name in ("pid", "log", "stubborn")}
    submit(cluster, f"trap 'echo cleaning >> {q['log']}; sleep 0.5; echo cleaned >> {q['log']}; "
                    f"exit 0' TERM; echo $$ > {q['pid']}; while :; do sleep 0.05; done", "polite")
    wait_for(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().endswith("\n"),
             20, "the task to start")
    submit(cluster, f"if kill -0 $(cat {q['pid']}) 2>/dev/null; then echo overlap; "
                    "else echo alone; fi", "next")  # waits for the one core
    assert queue_rows(cluster)["next"].split()[1] in ("queued", "running")
    r = cluster.sh("leoronic_hold polite")
    assert (r.rc, r.out) == (0, "polite held\n"), r
    wait_ok(cluster, "next")
    r = cluster.sh("leoronic_result next")
    assert (r.rc, r.out) == (0, "alone\n"), r  # it started after the held task was gone
    assert (tmp_path / "log").read_text() == "cleaning\ncleaned\n"

    submit(cluster, f"trap '' TERM; echo $$ > {q['stubborn']}; while :; do sleep 0.05; done",
           "stubborn")
    wait_for(lambda: (tmp_path / "stubborn").exists()
             and (tmp_path / "stubborn").read_text().endswith("\n"), 20, "the task to start")
    pid = int((tmp_path / "stubborn").read_text())
    t0 = time.monotonic()
    r = cluster.sh("leoronic_del_task stubborn")
    assert (r.rc, r.out) == (0, "stubborn deleted\n"), r
    wait_for(lambda: process_gone(pid), 20,
             "the task ignoring SIGTERM to be killed")
    assert time.monotonic() - t0 >= 2.0, "killed before its grace was over"


def test_hold_release_priority_and_delete_select_tasks_by_state(cluster3: Cluster) -> None:
    for task_id in ("h1", "h2", "h3"):
        submit(cluster3, f"echo {task_id}", task_id, LEORONIC_HOLD="1")
    r = cluster3.sh("leoronic_priority 7 --state queued")
    assert (r.rc, r.out) == (0, "h1 priority 7\nh2 priority 7\nh3 priority 7\n"), r
    r = cluster3.sh("leoronic_hold --state queued")  # every queued task is held already
    assert (r.rc, r.out, r.err) == (0, "", "leoronic: no task to change: none is in that state\n"), r
    r = cluster3.sh("leoronic_release --state queued")
    assert (r.rc, r.out) == (0, "h1 released\nh2 released\nh3 released\n"), r
    wait_ok(cluster3, "h1", "h2", "h3")
    r = cluster3.sh("leoronic_del_task --state done")
    assert (r.rc, r.out) == (0, "h1 deleted\nh2 deleted\nh3 deleted\n"), r
    assert {row.split()[1] for row in queue_rows(cluster3).values()} == {"deleted"}
    for script, message in [
        ("leoronic_hold h1 --state queued", "leoronic: --state: give task ids or --state, not both"),
        ("leoronic_del_task", "leoronic: ID: give one or more task ids, or --state STATE"),
        ("leoronic_release --state running",
         "leoronic: Invalid value for '--state': 'running' is not 'queued'. "
         "(see leoronic release --help)"),
    ]:
        r = cluster3.sh(script)
        assert (r.rc, r.out, r.err) == (2, "", message + "\n"), (script, r)

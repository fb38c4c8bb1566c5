"""The executor with real `bash` processes: what a task sees (work dir, environment, stdin,
session), what its outcome records (exit codes, signals, output tails), cancelling, and killing
a previous life's orphans.

The executor enters each task's work dir around the spawn and returns to its home, so the
fixture puts the test process's own working directory back afterwards."""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from comrade.executor import (
    Executor,
    ExitsInbox,
    Paths,
    kill_orphans,
    output_task_id,
    remove_task_files,
    task_files,
)
from comrade.model import Outcome, TaskSpec
from comrade.spares import DIRS_BATCH
from tests.cluster import stays, wait_for


class Recorder:
    """The executor's callbacks: outcomes and crashes by task id."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}
        self.crashes: dict[str, str] = {}
        self.lock = threading.Lock()

    def report(self, task_id: str, attempt: int, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes[task_id] = outcome

    def crashed(self, task_id: str, attempt: int, reason: str) -> None:
        with self.lock:
            self.crashes[task_id] = reason

    def outcome(self, task_id: str, timeout: float = 10.0) -> Outcome:
        return wait_for(lambda: self.outcomes.get(task_id), timeout, f"task {task_id} to end")  # type: ignore[no-any-return]


@pytest.fixture
def run(paths: Paths) -> Iterator[tuple[Executor, Recorder]]:
    ex = Executor("node-x", paths, lambda spec, workdir: spec.command, time.time)
    try:
        yield ex, Recorder()
    finally:
        ex.stop()


def spec(task_id: str, command: str, time_limit: float = 0.0) -> TaskSpec:
    return TaskSpec(task_id, 1024, 1, 1024, True, "", (), command, time_limit=time_limit)


def start(run: tuple[Executor, Recorder], task_id: str, command: str, attempt: int = 1,
          time_limit: float = 0.0) -> None:
    ex, rec = run
    ex.start(spec(task_id, command, time_limit), attempt, rec.report, rec.crashed)


def test_task_runs_in_its_fresh_work_dir_with_its_environment(run, paths) -> None:  # type: ignore[no-untyped-def]
    script = ('echo "$LEORONIC_TASK_ID $LEORONIC_NODE_NAME $LEORONIC_ATTEMPT"; pwd; '
              'echo "$LEORONIC_WORKDIR"; cat; echo "read $?"; echo oops >&2; exit 3')
    start(run, "t1", script, attempt=2)
    out = run[1].outcome("t1")
    workdir = paths.workdir("t1", 2)
    assert out.exit_code == 3
    assert out.stdout_tail.decode().splitlines() == [
        "t1 node-x 2", workdir, workdir, "read 0"]  # stdin is /dev/null: cat ends at once
    assert out.stderr_tail == b"oops\n" and out.stderr_bytes == 5
    assert out.stdout_bytes == len(out.stdout_tail) and out.start <= out.end
    with open(paths.output("t1", 2, "out"), "rb") as f:
        assert f.read() == out.stdout_tail
    assert sorted(os.listdir(paths.outputs)) == ["t1.2.err", "t1.2.out"]
    assert os.getcwd() == paths.home, "the executor did not return to its home"


def test_a_stale_work_dir_of_the_same_id_is_emptied_first(run, paths) -> None:  # type: ignore[no-untyped-def]
    stale = paths.workdir("again", 1)  # left by a forgotten task that had the same id
    os.makedirs(os.path.join(stale, "sub"))
    with open(os.path.join(stale, "old.txt"), "w") as f:
        f.write("old")
    start(run, "again", "ls -A; pwd")
    out = run[1].outcome("again")
    assert out.exit_code == 0 and out.stdout_tail.decode().splitlines() == [stale]


def test_a_call_runs_on_the_actors_thread_and_is_dropped_once_it_stops(run) -> None:  # type: ignore[no-untyped-def]
    """A node's scheduling passes run so: on the thread that starts and reaps its attempts,
    never beside them; once the executor stops, a call is dropped, not an error."""
    ex, rec = run
    seen: list[str] = []
    start(run, "first", "true")
    ex.call_soon(lambda: seen.append(threading.current_thread().name))
    wait_for(lambda: seen, 10, "the call")
    rec.outcome("first")
    ex.call_soon(lambda: seen.append(threading.current_thread().name))
    wait_for(lambda: len(seen) == 2, 10, "the second call")
    assert seen[0] == seen[1] and seen[0].startswith("ExecutorActor"), seen
    ex.stop()
    ex.call_soon(lambda: seen.append("late"))  # dropped
    assert len(seen) == 2


def test_a_start_from_the_actors_own_thread_spawns_before_it_returns(run, paths) -> None:  # type: ignore[no-untyped-def]
    """A scheduling pass (a call) starts what fits at once, not through the inbox after the
    pass; a start from any other thread goes through the inbox, and both run."""
    ex, rec = run
    seen: list[bool] = []

    def a_pass() -> None:
        start(run, "inline", "echo inline")
        seen.append(os.path.isdir(paths.workdir("inline", 1)))
    ex.call_soon(a_pass)
    start(run, "told", "echo told")
    assert rec.outcome("inline").stdout_tail == b"inline\n"
    assert rec.outcome("told").stdout_tail == b"told\n"
    assert seen == [True]


def test_only_the_actors_own_thread_with_nothing_waiting_may_run_a_call_at_once(run) -> None:  # type: ignore[no-untyped-def]
    """What a node's wake asks before it runs a pass at once instead of queueing it."""
    ex, _ = run
    seen: list[bool] = []
    gate = threading.Event()

    def first() -> None:
        gate.wait(5)  # the second call is queued meanwhile
        seen.append(ex.here_and_idle())

    ex.call_soon(first)
    ex.call_soon(lambda: seen.append(ex.here_and_idle()))
    gate.set()
    wait_for(lambda: len(seen) == 2, 10, "both calls")
    assert seen == [False, True]  # something waited behind the first; nothing behind the last
    assert not ex.here_and_idle()  # another thread


def test_exits_are_reaped_on_the_actors_thread_even_while_messages_keep_coming(run) -> None:  # type: ignore[no-untyped-def]
    """The actor's inbox watches the children's pidfds: an exit is handled on the actor's
    thread (no reaper thread to hand it over), and an inbox that never empties (here a call
    that posts itself again each time) still gets to it."""
    ex, rec = run
    threads: list[str] = []
    calls = [0]
    until = time.monotonic() + 20

    def report(task_id: str, attempt: int, outcome: Outcome) -> None:
        threads.append(threading.current_thread().name)
        rec.report(task_id, attempt, outcome)

    def again() -> None:
        calls[0] += 1
        if not rec.outcomes and time.monotonic() < until:
            ex.call_soon(again)

    ex.call_soon(again)
    ex.start(spec("busy", "exit 4"), 1, report, rec.crashed)
    assert rec.outcome("busy", 20).exit_code == 4
    assert threads[0].startswith("ExecutorActor"), threads
    assert calls[0] > 1, "the inbox was never busy"
    assert not any(t.name == "reaper" for t in threading.enumerate())


def test_the_inbox_wakes_for_a_message_and_is_quiet_once_closed() -> None:
    """A message from another thread wakes an actor waiting for exits; once closed, the inbox
    takes messages without ringing a closed (perhaps reused) eventfd."""
    inbox = ExitsInbox()
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(inbox.get()))
    reader.start()
    wait_for(lambda: inbox._waiting, 10, "the reader to wait")  # noqa: SLF001
    inbox.put("hello")
    reader.join(10)
    assert got == ["hello"] and inbox.empty()
    inbox.close()
    inbox._waiting = True  # noqa: SLF001 - as if a reader were still in epoll
    inbox.put("late")  # no OSError (EBADF), and no write to whatever reuses the fd
    assert not inbox.empty()


def test_empty_outputs_are_not_kept_but_reused_by_the_next_attempt(run, paths) -> None:  # type: ignore[no-untyped-def]
    start(run, "quiet", "true")
    assert run[1].outcome("quiet").stdout_bytes == 0
    assert os.listdir(paths.outputs) == [] and len(os.listdir(paths.spare)) == 2
    start(run, "loud", "echo out")
    assert run[1].outcome("loud").stdout_tail == b"out\n"
    # It took both spares (had they not been placed, there would now be three) and gave one back.
    assert os.listdir(paths.outputs) == ["loud.1.out"] and len(os.listdir(paths.spare)) == 1


#: A task that starts a process in a session of its own (out of the task's process group, so
#: not killed when the task ends) and ends once it has left: its pid is in the file `pid`.
ESCAPE = ("setsid bash -c 'echo $$ > pid.new && mv pid.new pid && exec sleep {seconds}' & "
          "while [ ! -e pid ]; do sleep 0.01; done")


def test_an_output_a_survivor_still_writes_is_never_reused(run, paths) -> None:  # type: ignore[no-untyped-def]
    """A process that left the task's group and outlived it keeps the task's stdout open: that
    file stays the task's, so nothing it writes later can land in another task's output."""
    start(run, "left", ESCAPE.format(seconds=60))
    try:
        assert run[1].outcome("left").exit_code == 0
        assert sorted(os.listdir(paths.outputs)) == ["left.1.err", "left.1.out"]
        assert os.listdir(paths.spare) == []
    finally:
        kill_orphans(paths)  # the survivor carries the task's LEORONIC_WORKDIR


def test_a_spare_a_survivor_still_writes_becomes_its_tasks_output(run, paths) -> None:  # type: ignore[no-untyped-def]
    """An attempt's streams are written at spares of earlier attempts; a process that outlived
    the task and still writes its stdout makes that file the task's output (where results are
    fetched from), never a spare: what it writes later lands there, not in another task's."""
    start(run, "quiet", "true")
    run[1].outcome("quiet")
    spares = sorted(os.listdir(paths.spare))
    assert len(spares) == 2 and os.listdir(paths.outputs) == []
    go = os.path.join(paths.home, "go")
    start(run, "left", ESCAPE.format(
        seconds=f"60 & while [ ! -e {go} ]; do sleep 0.01; done; echo late; wait"))
    try:
        assert run[1].outcome("left").stdout_bytes == 0  # empty as it ended, but still open
        assert sorted(os.listdir(paths.outputs)) == ["left.1.err", "left.1.out"]
        assert os.listdir(paths.spare) == [], "a spare still written to was kept"
        start(run, "next", "echo next")
        assert run[1].outcome("next").stdout_tail == b"next\n"
        open(go, "w").close()  # the survivor writes again
        wait_for(lambda: open(paths.output("left", 1, "out")).read() == "late\n", 10,
                 "the survivor's late line in its task's output")
        with open(paths.output("next", 1, "out")) as f:
            assert f.read() == "next\n"
    finally:
        kill_orphans(paths)  # the survivor carries the task's LEORONIC_WORKDIR


def test_an_empty_work_dir_is_reused_by_a_later_attempt_after_a_sweep(paths) -> None:  # type: ignore[no-untyped-def]
    """A task that left nothing in its work dir gives it up (the outcome says so); a task
    that left a file keeps its own. Once a sweep found no process of an ended task (one is
    asked for after a batch of dirs was set aside), a later attempt gets one of those dirs back
    instead of a new one (the same inode), empty."""
    ex, rec = Executor("node-x", paths, lambda spec, workdir: spec.command, time.time,
                       sweep_s=3600), Recorder()  # sweeps only when asked for
    try:
        ex.start(spec("keeps", "echo kept > result.txt"), 1, rec.report, rec.crashed)
        assert rec.outcome("keeps").workdir_kept
        with open(os.path.join(paths.workdir("keeps", 1), "result.txt")) as f:
            assert f.read() == "kept\n"
        inodes = set()
        for i in range(DIRS_BATCH):
            ex.start(spec(f"q{i}", "stat -c %i ."), 1, rec.report, rec.crashed)
            out = rec.outcome(f"q{i}")
            assert not out.workdir_kept and not os.path.exists(paths.workdir(f"q{i}", 1))
            inodes.add(int(out.stdout_tail))
        assert len(inodes) == DIRS_BATCH, "a dir was reused before any sweep"
        ex.start(spec("later", "stat -c %i .; ls -A"), 1, rec.report, rec.crashed)
        later = rec.outcome("later").stdout_tail.split()
        assert len(later) == 1 and int(later[0]) in inodes
    finally:
        ex.stop()


def test_a_work_dir_is_not_reused_while_a_process_of_its_task_is_left(paths) -> None:  # type: ignore[no-untyped-def]
    """A process that left the task's group may still be in its work dir: no sweep is clean
    while it lives (the sweep kills it), and what it wrote there meanwhile is removed, never
    handed to another task."""
    ex, rec = Executor("node-x", paths, lambda spec, workdir: spec.command, time.time,
                       sweep_s=3600), Recorder()  # sweeps only when asked for (a batch)
    pids: list[int] = []
    try:
        pid_file, go = os.path.join(paths.home, "pid"), os.path.join(paths.home, "go")
        escape = (f"setsid bash -c 'echo $$ > {pid_file}.new && mv {pid_file}.new {pid_file} && "
                  f"while [ ! -e {go} ]; do sleep 0.01; done; echo late > late.txt; "
                  f"exec sleep 60' & while [ ! -e {pid_file} ]; do sleep 0.01; done")
        ex.start(spec("left", escape), 1, rec.report, rec.crashed)
        assert not rec.outcome("left").workdir_kept, "the dir was not empty as the task ended"
        pids.append(int(wait_for(lambda: open(pid_file).read(), 10, "the daemon's pid")))
        open(go, "w").close()  # the daemon writes into its old dir
        (aside,) = os.listdir(paths.spare_dirs)
        wait_for(lambda: os.path.exists(os.path.join(paths.spare_dirs, aside, "late.txt")), 10,
                 "the daemon's late write")
        for i in range(DIRS_BATCH):  # a batch: the next exit asks for a sweep, which kills the daemon
            ex.start(spec(f"q{i}", "true"), 1, rec.report, rec.crashed)
            rec.outcome(f"q{i}")
        wait_for(lambda: not _alive(pids[0]), 10, "the sweep to kill the daemon")
        for i in range(DIRS_BATCH, 2 * DIRS_BATCH):  # another batch: a clean sweep frees the empty ones
            ex.start(spec(f"q{i}", "true"), 1, rec.report, rec.crashed)
            rec.outcome(f"q{i}")
        wait_for(lambda: aside not in os.listdir(paths.spare_dirs), 10,
                 "the written-into dir to be removed")
        ex.start(spec("next", "ls -A"), 1, rec.report, rec.crashed)
        assert rec.outcome("next").stdout_tail == b""
    finally:
        ex.stop()
        kill_orphans(paths)
    wait_for(lambda: not any(map(_alive, pids)), 10, "the daemon to be gone")


def test_what_a_task_left_in_its_process_group_dies_with_it(run) -> None:  # type: ignore[no-untyped-def]
    start(run, "bg", "sleep 60 & echo $!; nohup sleep 61 >/dev/null 2>&1 & echo $!")
    out = run[1].outcome("bg")
    assert out.exit_code == 0
    pids = [int(p) for p in out.stdout_tail.split()]
    wait_for(lambda: not any(map(_alive, pids)), 10, "the task's background processes to die")


def test_a_sweep_kills_what_ended_tasks_left_outside_their_group_but_not_running_ones(
        paths) -> None:  # type: ignore[no-untyped-def]
    ex, rec = Executor("node-x", paths, lambda spec, workdir: spec.command, time.time,
                       sweep_s=0.1), Recorder()
    pids: list[int] = []
    try:
        ex.start(spec("left", ESCAPE.format(seconds=60) + "; cat pid"), 1, rec.report,
                 rec.crashed)
        ex.start(spec("runs", "setsid sleep 61 & echo $! > pid; sleep 60"), 1, rec.report,
                 rec.crashed)
        pids.append(int(rec.outcome("left").stdout_tail))
        pid_file = os.path.join(paths.workdir("runs", 1), "pid")
        pids.append(int(wait_for(lambda: os.path.exists(pid_file) and open(pid_file).read(), 10,
                                 "the running task's daemon")))
        wait_for(lambda: not _alive(pids[0]), 10, "the ended task's daemon to be swept")
        stays(lambda: _alive(pids[1]) and "runs" not in rec.outcomes, 0.3,
              "the running task's daemon alive over three more sweeps", interval=0.05)
    finally:
        ex.stop()
        kill_orphans(paths)
    wait_for(lambda: not any(map(_alive, pids)), 10, "every daemon to be gone")


def test_task_leads_its_own_session_and_process_group(run) -> None:  # type: ignore[no-untyped-def]
    start(run, "s", 'echo "$$ $(ps -o sid= -p $$) $(ps -o pgid= -p $$)"')
    pid, sid, pgid = run[1].outcome("s").stdout_tail.split()
    assert pid == sid == pgid


def test_signals_python_ignores_have_their_default_action_in_a_task(run) -> None:  # type: ignore[no-untyped-def]
    """With SIGPIPE ignored (as Python leaves it), `yes` would report a broken pipe and fail."""
    start(run, "pipe", 'yes | head -n 1; echo "${PIPESTATUS[0]}"')
    out = run[1].outcome("pipe")  # `yes` ended by SIGPIPE (128 + 13), as in a terminal
    assert (out.exit_code, out.stdout_tail, out.stderr_tail) == (0, b"y\n141\n", b"")


def test_a_task_starts_clean_whatever_the_node_inherited(paths) -> None:  # type: ignore[no-untyped-def]
    """A node started as a background job of a script ignores SIGQUIT, may have signals
    blocked, and holds its parent's pipes: its tasks get none of that."""
    r, w = os.pipe()
    os.set_inheritable(w, True)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    old_quit = signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    try:  # the executor's thread is started from this one and inherits its mask
        ex, rec = Executor("node-x", paths, lambda spec, workdir: spec.command, time.time), Recorder()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGQUIT, old_quit)
    try:
        start((ex, rec), "clean", "ls /proc/$$/fd; grep -E '^Sig(Blk|Ign)' /proc/self/status")
        out = rec.outcome("clean").stdout_tail.decode().split()
        fds, blocked, ignored = out[:-4], int(out[-3], 16), int(out[-1], 16)
        assert sorted(fds) == ["0", "1", "2"], f"the task inherited fds {fds}"
        assert blocked == 0
        assert ignored & ~_GLIBC_INTERNAL == 0, f"ignored signals: {ignored:#x}"
    finally:
        ex.stop()
        os.close(r)
        os.close(w)


#: Signals 32 and 33, which glibc keeps for itself and marks ignored in every process.
_GLIBC_INTERNAL = (1 << 31) | (1 << 32)


def test_the_outcome_says_what_the_task_and_its_waited_children_used(run) -> None:  # type: ignore[no-untyped-def]
    """A peak above this (spawning) process's own is exact; below it, only a bound, since the
    kernel takes the spawner's peak into the child's at exec."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    size = own + (64 << 20)
    burn = (f"import time; b = b'x' * {size}; t = time.process_time()\n"
            "while time.process_time() - t < 0.2: pass")
    start(run, "u", f"{shlex.quote(sys.executable)} -c {shlex.quote(burn)}")
    out = run[1].outcome("u")
    assert out.exit_code == 0 and out.cpu_s >= 0.2, out
    assert out.max_rss_exact and size <= out.max_rss < size + (256 << 20), out
    start(run, "small", "true")
    small = run[1].outcome("small")
    assert not small.max_rss_exact and small.cpu_s < 0.2, small
    assert small.max_rss >= own  # the bound: this process's peak at the spawn


def test_a_task_killed_by_a_signal_exits_as_a_shell_reports_it(run) -> None:  # type: ignore[no-untyped-def]
    start(run, "k", "kill -TERM $$")
    assert run[1].outcome("k").exit_code == 128 + signal.SIGTERM


def test_only_the_last_64_kib_of_output_are_kept_in_the_outcome(run) -> None:  # type: ignore[no-untyped-def]
    start(run, "big", "head -c 100000 /dev/zero | tr '\\0' x; echo end")
    out = run[1].outcome("big")
    assert out.stdout_bytes == 100004 and len(out.stdout_tail) == 64 * 1024
    assert out.stdout_tail.endswith(b"xend\n")


def test_cancel_kills_the_whole_group_and_reports_nothing(run, paths) -> None:  # type: ignore[no-untyped-def]
    ex, rec = run
    start(run, "c", "sleep 60 & echo $! > child; wait")
    child_file = os.path.join(paths.workdir("c", 1), "child")
    child = int(wait_for(lambda: _read(child_file), 10, "the task's child to start"))
    ex.cancel(("c", 1), "test")
    wait_for(lambda: not _alive(child), 10, "the task's child to be killed")
    assert "c" not in rec.outcomes and "c" not in rec.crashes


def test_a_task_past_its_time_limit_gets_sigterm_with_its_whole_group(run, paths) -> None:  # type: ignore[no-untyped-def]
    start(run, "slow", "sleep 60 & echo $! > child; wait", time_limit=0.5)
    child = int(wait_for(lambda: _read(os.path.join(paths.workdir("slow", 1), "child")), 10,
                         "the task's child to start"))
    out = run[1].outcome("slow")
    assert out.timed_out and out.exit_code == 128 + signal.SIGTERM
    assert 0.5 <= out.end - out.start < 5, out
    wait_for(lambda: not _alive(child), 10, "the task's background child to be stopped too")


@pytest.fixture
def graced(paths: Paths) -> Iterator[tuple[Executor, Recorder]]:
    """An executor with a kill grace of 0.5 s."""
    ex = Executor("node-x", paths, lambda spec, workdir: spec.command, time.time, kill_grace_s=0.5)
    try:
        yield ex, Recorder()
    finally:
        ex.stop()


def stopped_event() -> tuple[threading.Event, list[float]]:
    """A `stopped` callback's event and the time it was called."""
    done, at = threading.Event(), []

    def stopped() -> None:
        at.append(time.monotonic())
        done.set()
    return done, at


def test_a_cancelled_task_gets_sigterm_first_and_may_clean_up(run, paths) -> None:  # type: ignore[no-untyped-def]
    ex, rec = run
    start(run, "c", "trap 'echo cleaned > done; exit 0' TERM; echo $$ > pid; "
                    "while :; do sleep 0.05; done")
    pid = int(wait_for(lambda: _read(os.path.join(paths.workdir("c", 1), "pid")), 10, "the task"))
    done, _ = stopped_event()
    ex.cancel(("c", 1), "test", done.set)
    assert done.wait(4), "stopped() not called well within the 5 s grace"
    assert not _alive(pid)
    assert _read(os.path.join(paths.workdir("c", 1), "done")) == "cleaned"
    assert "c" not in rec.outcomes and "c" not in rec.crashes


def test_a_cancelled_task_ignoring_sigterm_is_killed_after_the_grace(graced, paths) -> None:  # type: ignore[no-untyped-def]
    ex, rec = graced
    start(graced, "c", "trap '' TERM; sleep 60 & echo $! > child; wait")
    child = int(wait_for(lambda: _read(os.path.join(paths.workdir("c", 1), "child")), 10, "the task"))
    done, at = stopped_event()
    t0 = time.monotonic()
    ex.cancel(("c", 1), "test", done.set)
    ex.cancel(("c", 1), "again", lambda: at.append(time.monotonic()))  # no second SIGTERM
    assert done.wait(10)
    wait_for(lambda: len(at) == 1, 10, "the second cancel's stopped()")
    assert at[0] - t0 >= 0.5, "stopped before the grace was over"
    # It ignored TERM too (inherited) and gets the group's SIGKILL as the bash is reaped;
    # it may take a moment to die after stopped() (only the bash is waited for).
    wait_for(lambda: not _alive(child), 10, "the task's child to be killed with the group")
    assert "c" not in rec.outcomes


def test_with_no_grace_a_cancelled_task_is_killed_at_once(paths) -> None:  # type: ignore[no-untyped-def]
    ex = Executor("node-x", paths, lambda spec, workdir: spec.command, time.time, kill_grace_s=0)
    try:
        rec = Recorder()
        ex.start(spec("c", "trap 'echo cleaned > done' TERM; echo $$ > pid; while :; do sleep 0.05; done"),
                 1, rec.report, rec.crashed)
        wait_for(lambda: _read(os.path.join(paths.workdir("c", 1), "pid")), 10, "the task")
        done, _ = stopped_event()
        ex.cancel(("c", 1), "test", done.set)
        assert done.wait(10)
        assert not os.path.exists(os.path.join(paths.workdir("c", 1), "done"))
    finally:
        ex.stop()


def test_cancelling_an_attempt_not_here_says_it_stopped_at_once(run) -> None:  # type: ignore[no-untyped-def]
    done, _ = stopped_event()
    run[0].cancel(("never", 1), "test", done.set)
    assert done.wait(5)


def test_a_task_ignoring_sigterm_is_killed_after_the_grace(graced) -> None:  # type: ignore[no-untyped-def]
    run = graced
    start(run, "stubborn", "trap 'echo got TERM' TERM; while :; do sleep 0.1; done",
          time_limit=0.3)
    out = run[1].outcome("stubborn")
    assert out.timed_out and out.exit_code == 128 + signal.SIGKILL
    assert out.stdout_tail == b"got TERM\n"
    assert 0.8 <= out.end - out.start < 5, out


def test_a_task_within_its_time_limit_is_not_marked(run) -> None:  # type: ignore[no-untyped-def]
    start(run, "quick", "exit 3", time_limit=30)
    out = run[1].outcome("quick")
    assert out.exit_code == 3 and not out.timed_out


def test_a_task_that_cannot_start_is_reported_as_crashed(run, paths) -> None:  # type: ignore[no-untyped-def]
    os.mkdir(paths.output("bad", 1, "out"))  # a directory where its stdout file belongs
    start(run, "bad", "true")
    reason = wait_for(lambda: run[1].crashes.get("bad"), 10, "the crash report")
    assert reason.startswith("cannot start: ") and "Is a directory" in reason, reason
    assert os.getcwd() == paths.home
    assert "bad" not in run[1].outcomes


def test_orphans_of_a_previous_life_are_killed_by_their_mark(paths, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Processes started with this home's LEORONIC_WORKDIR die with their whole group (a
    member that dropped the variable too); a process marked with another home lives."""
    import subprocess
    env = dict(os.environ)
    mine = subprocess.Popen(  # a task's bash and, in its group, a child without the mark
        ["bash", "-c", "env -u LEORONIC_WORKDIR sleep 60 & wait"], start_new_session=True,
        env={**env, "LEORONIC_WORKDIR": os.path.join(paths.work, "t-a1")})
    other = subprocess.Popen(["sleep", "60"], start_new_session=True,
                             env={**env, "LEORONIC_WORKDIR": str(tmp_path / "elsewhere" / "work" / "t-a1")})
    try:
        unmarked = int(wait_for(lambda: _children(mine.pid), 10, "the unmarked child"))
        assert kill_orphans(paths) == [mine.pid]
        assert mine.wait(timeout=10) == -signal.SIGKILL
        wait_for(lambda: not _alive(unmarked), 10, "the unmarked member of the group to die")
        assert other.poll() is None, "a process of another home was killed"
    finally:
        for p in (mine, other):  # each leads its own group
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_output_names_give_back_their_task_id(paths) -> None:  # type: ignore[no-untyped-def]
    for task_id in ("t1", "a.b.c", "x-a2"):
        assert output_task_id(os.path.basename(paths.output(task_id, 12, "err"))) == task_id


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or before the read
        return False


def _children(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def test_task_files_by_id_and_their_removal(tmp_path: Any) -> None:
    paths = Paths(str(tmp_path))
    for d in (paths.work, paths.outputs):
        os.makedirs(d)
    for task_id, attempt in (("a.b-c", 1), ("a.b-c", 2), ("x-a1", 1)):  # ids may hold . and -a
        os.makedirs(os.path.join(paths.workdir(task_id, attempt), "sub"))
        for stream in ("out", "err"):
            with open(paths.output(task_id, attempt, stream), "w") as f:
                f.write("data")
    found = task_files(paths)
    assert {t: sorted(os.path.relpath(p, paths.home) for p in items) for t, items in found.items()} == {
        "a.b-c": ["outputs/a.b-c.1.err", "outputs/a.b-c.1.out", "outputs/a.b-c.2.err",
                  "outputs/a.b-c.2.out", "work/a.b-c-a1", "work/a.b-c-a2"],
        "x-a1": ["outputs/x-a1.1.err", "outputs/x-a1.1.out", "work/x-a1-a1"],
    }
    os.unlink(paths.output("a.b-c", 1, "out"))  # already gone: skipped
    remove_task_files(found["a.b-c"])
    assert task_files(paths) == {"x-a1": found["x-a1"]}
    # A task that put a symlink where its work dir was: the link goes, what it points to stays.
    elsewhere = os.path.join(paths.home, "elsewhere")
    os.makedirs(os.path.join(elsewhere, "kept"))
    shutil.rmtree(paths.workdir("x-a1", 1))
    os.symlink(elsewhere, paths.workdir("x-a1", 1))
    remove_task_files(task_files(paths)["x-a1"])
    assert task_files(paths) == {} and os.path.isdir(os.path.join(elsewhere, "kept"))

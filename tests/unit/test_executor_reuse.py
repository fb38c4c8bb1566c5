"""Reused work dirs (comrade.spares.SpareDirs) against the processes ended tasks leave behind
and the changes they make to their dirs: none may reach a later task's work dir. Each test
failed on 8b7c2c4, where reuse began (found by a review that tried to break it)."""

from __future__ import annotations

import os
import signal
import sys
import time

from comrade.executor import Executor, Paths
from tests.cluster import wait_for
from tests.unit.test_executor import Recorder, _alive, spec


def _daemon(pid_file: str, go: str, lead: str = "setsid bash -c") -> str:
    """A command that leaves a process (started by `lead`) in the task's work dir: it writes
    its pid, waits for `go`, then writes intruder.txt into its current directory."""
    return (f"{lead} 'echo $$ > {pid_file}.new && mv {pid_file}.new {pid_file} && "
            f"for i in $(seq 1000); do [ -e {go} ] && break; sleep 0.01; done; "
            f"echo intruder > intruder.txt; exec sleep 60' & "
            f"for i in $(seq 1000); do [ -e {pid_file} ] && break; sleep 0.01; done")


def _victim(go: str) -> str:
    """A later task: lets the survivor write, waits a little, lists its own work dir."""
    return f"touch {go}; for i in $(seq 300); do [ -e intruder.txt ] && break; sleep 0.01; done; ls -A"


def _victim_sees_nothing(ex: Executor, rec: Recorder, go: str, who: str) -> None:
    """A sweep, then a later task that lets `who` write and lists its own work dir: empty."""
    ex.ref.ask(("sweep",), timeout=10)
    ex.start(spec("victim", _victim(go)), 1, rec.report, rec.crashed)
    assert rec.outcome("victim").stdout_tail == b"", f"{who} wrote into this task's work dir"


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not any(map(_alive, pids)), 10, "the survivors to be gone")


def test_a_survivor_of_an_attempt_whose_work_dir_path_runs_again_is_seen(paths: Paths) -> None:
    """The same task id and attempt runs again on the node (its record was forgotten and the id
    submitted again) while a `setsid` survivor of the first run is still in its old, set-aside
    dir. The sweep keeps every process whose mark is a running attempt's work dir, so it keeps
    the survivor too, calls itself clean, and the old dir is handed to another task."""
    ex, rec = Executor("node-x", paths, lambda spec, workdir: spec.command, time.time,
                       sweep_s=3600), Recorder()  # sweeps only when asked for
    pid_file, go = os.path.join(paths.home, "pid"), os.path.join(paths.home, "go")
    pids: list[int] = []
    try:
        ex.start(spec("dup", _daemon(pid_file, go)), 1, rec.report, rec.crashed)
        assert not rec.outcome("dup").workdir_kept
        pids.append(int(open(pid_file).read()))
        del rec.outcomes["dup"]
        ex.start(spec("dup", "sleep 30"), 1, rec.report, rec.crashed)  # the id again, attempt 1
        wait_for(lambda: os.path.isdir(paths.workdir("dup", 1)), 10, "the second run's dir")
        _victim_sees_nothing(ex, rec, go, "a survivor of another task")
    finally:
        ex.stop()
        _kill(pids)


def test_a_survivor_without_the_mark_still_in_its_dir_gets_the_dir_removed(
        paths: Paths) -> None:
    """A process that cleared its environment (no mark) and left the task's process group (its
    own group in the same session, as a shell's job control makes) is missed by the group kill
    at reap and by the sweep; but it is in the set-aside dir, so the dir is removed, not
    handed on, and what it writes there later goes nowhere."""
    ex, rec = Executor("node-x", paths, lambda spec, workdir: spec.command, time.time,
                       sweep_s=3600), Recorder()
    pid_file, go = os.path.join(paths.home, "pid"), os.path.join(paths.home, "go")
    pids: list[int] = []
    helper = os.path.join(paths.home, "own_group.py")  # its own process group, then bash
    with open(helper, "w") as f:
        f.write("import os, sys\nos.setpgid(0, 0)\nos.execv('/bin/bash', ['bash', '-c', sys.argv[1]])\n")
    own_group = f"env -i {sys.executable} {helper}"
    try:
        ex.start(spec("left", _daemon(pid_file, go, lead=own_group)), 1, rec.report,
                 rec.crashed)
        assert not rec.outcome("left").workdir_kept
        pids.append(int(open(pid_file).read()))
        with open(f"/proc/{pids[0]}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
        pgid, sid = int(fields[2]), int(fields[3])
        assert pgid == pids[0] and sid != pids[0], "not in its own group in the task's session"
        _victim_sees_nothing(ex, rec, go, "a survivor that stayed in its task's session")
    finally:
        ex.stop()
        _kill(pids)


def test_a_work_dir_whose_inode_flags_the_task_changed_is_not_handed_on(paths: Paths) -> None:
    """`chattr +S .` (every write synchronous; new files inherit it) on its empty dir: the mode,
    owner and xattr names are unchanged, so the dir counts as made and a later task gets it."""
    ex, rec = Executor("node-x", paths, lambda spec, workdir: spec.command, time.time,
                       sweep_s=3600), Recorder()
    try:
        ex.start(spec("sync", "chattr +S . && lsattr -d ."), 1, rec.report, rec.crashed)
        out = rec.outcome("sync")
        assert out.exit_code == 0 and b"S" in out.stdout_tail.split()[0], out
        ex.ref.ask(("sweep",), timeout=10)
        ex.start(spec("victim", "touch f; lsattr f"), 1, rec.report, rec.crashed)
        flags = rec.outcome("victim").stdout_tail.split()[0]
        assert b"S" not in flags, "another task's chattr +S was handed on with its work dir"
    finally:
        ex.stop()


def test_a_work_dir_whose_default_acl_the_task_changed_is_not_handed_on(paths: Paths) -> None:
    """With a default ACL on the node's work dir, every new work dir carries one (the same
    xattr names). A task that widens its dir's default ACL keeps those names, so the dir counts
    as made: the next task's files are then writable by whoever the first task named."""
    import struct

    def acl(*entries: tuple[int, int, int]) -> bytes:  # the kernel's posix_acl xattr format
        return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)

    base = acl((1, 7, 0xFFFFFFFF), (4, 5, 0xFFFFFFFF), (0x20, 5, 0xFFFFFFFF))
    wide = acl((1, 7, 0xFFFFFFFF), (2, 7, 65534), (4, 5, 0xFFFFFFFF), (0x10, 7, 0xFFFFFFFF),
               (0x20, 5, 0xFFFFFFFF))
    os.setxattr(paths.work, "system.posix_acl_default", base)
    helper = os.path.join(paths.home, "widen.py")
    with open(helper, "w") as f:
        f.write(f"import os\nos.setxattr('.', 'system.posix_acl_default', {wide!r})\n")
    ex, rec = Executor("node-x", paths, lambda spec, workdir: spec.command, time.time,
                       sweep_s=3600), Recorder()
    try:
        ex.start(spec("widen", f"{sys.executable} {helper}"), 1, rec.report, rec.crashed)
        assert rec.outcome("widen").exit_code == 0
        ex.ref.ask(("sweep",), timeout=10)
        check = os.path.join(paths.home, "check.py")
        with open(check, "w") as f:
            f.write("import os\nopen('f', 'w').close()\n"
                    "print(sorted(os.listxattr('f')))\n")
        ex.start(spec("victim", f"{sys.executable} {check}"), 1, rec.report, rec.crashed)
        assert rec.outcome("victim").stdout_tail == b"[]\n", \
            "the victim's new file got an ACL another task set on its old work dir"
    finally:
        ex.stop()


def test_a_survivor_whose_main_thread_exited_is_seen(paths: Paths) -> None:
    """A `setsid` survivor whose main thread ended (pthread_exit) while another thread runs on:
    its /proc/PID/environ says ESRCH, so the sweep skips it, though it kept its environment
    and its threads are still in the dir."""
    ex, rec = Executor("node-x", paths, lambda spec, workdir: spec.command, time.time,
                       sweep_s=3600), Recorder()
    pid_file, go = os.path.join(paths.home, "pid"), os.path.join(paths.home, "go")
    helper = os.path.join(paths.home, "threads.py")
    with open(helper, "w") as f:
        f.write("import ctypes, os, sys, threading, time\n"
                "def late():\n"
                "    deadline = time.monotonic() + 10\n"
                f"    while not os.path.exists({go!r}) and time.monotonic() < deadline:\n"
                "        time.sleep(0.01)\n"
                "    open('intruder.txt', 'w').write('intruder')\n"
                "    time.sleep(60)\n"
                "threading.Thread(target=late).start()\n"
                f"open({pid_file!r} + '.new', 'w').write(str(os.getpid()))\n"
                f"os.rename({pid_file!r} + '.new', {pid_file!r})\n"
                "ctypes.CDLL(None).pthread_exit(None)\n")
    pids: list[int] = []
    try:
        ex.start(spec("threads", f"setsid {sys.executable} {helper} & "
                      f"for i in $(seq 1000); do [ -e {pid_file} ] && break; sleep 0.01; done; "
                      f"for i in $(seq 1000); do cat /proc/$(cat {pid_file})/environ >/dev/null "
                      "2>&1 || break; sleep 0.01; done"), 1, rec.report, rec.crashed)
        assert not rec.outcome("threads").workdir_kept
        pids.append(int(open(pid_file).read()))
        _victim_sees_nothing(ex, rec, go, "a survivor whose main thread exited")
    finally:
        ex.stop()
        _kill(pids)


def test_a_survivor_caught_in_an_exec_is_seen(paths: Paths) -> None:
    """While a process execs, /proc/PID/environ reads empty for a moment (its new memory has
    no environment yet). A survivor that execs (`setsid cmd` execs twice just as the task
    ends, when a batch's sweep runs) can be missed by the sweep, which then calls itself
    clean. Here the survivor execs in a chain so that a sweep is likely to catch one exec."""
    chain = os.path.join(paths.home, "chain.sh")
    pid_file = os.path.join(paths.home, "pid")
    with open(chain, "w") as f:
        f.write(f'[ "$1" -gt 0 ] && exec /bin/sh {chain} $(($1-1))\n'
                "echo intruder > intruder.txt; exec sleep 30\n")
    ex, rec = Executor("node-x", paths, lambda spec, workdir: spec.command, time.time,
                       sweep_s=3600), Recorder()
    pids: list[int] = []
    missed = 0
    try:
        for i in range(30):
            ex.start(spec(f"s{i}", f"setsid /bin/sh -c 'echo $$ > {pid_file}; "
                          f"exec /bin/sh {chain} 3000' & "
                          f"for i in $(seq 1000); do [ -s {pid_file} ] && break; sleep 0.001; done"),
                     1, rec.report, rec.crashed)
            rec.outcome(f"s{i}")
            pids.append(int(open(pid_file).read()))
            os.unlink(pid_file)
            ex.ref.ask(("sweep",), timeout=10)
            try:  # killed by the sweep: gone within a moment
                wait_for(lambda: not _alive(pids[-1]), 2, "the survivor to be killed")
            except AssertionError:
                missed += 1
                break
            ex.ref.ask(("sweep",), timeout=10)  # nothing left: frees the dir for the next
        if missed:  # the sweep called itself clean: the survivor's dir is the next task's
            ex.start(spec("victim", "for i in $(seq 500); do [ -e intruder.txt ] && break; "
                          "sleep 0.01; done; ls -A"), 1, rec.report, rec.crashed)
            assert rec.outcome("victim").stdout_tail == b"", \
                f"a survivor a sweep missed in its exec (try {i + 1}) wrote into this task's dir"
    finally:
        ex.stop()
        _kill(pids)

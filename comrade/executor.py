"""Running tasks: one pykka actor per running task, a reaper thread, orphan cleanup.

A `TaskRunner` actor prepares the task's fresh work dir, starts `bash -c COMMAND` in its own
process group with stdout/stderr going to files, and registers the child with the `Reaper`,
which waits on Linux pidfds for every child at once (no polling) and tells the runner when its
child exits. The runner then reports the outcome and stops. Cancelling kills the whole group.

A pid file per running task lets a restarted node kill the orphans of its previous life.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import pykka

from comrade.errors import LeoronicError
from comrade.model import TAIL_BYTES, Outcome, TaskSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Paths:
    """Where a node keeps task things under its home."""

    home: str

    @property
    def work(self) -> str:
        return os.path.join(self.home, "work")

    @property
    def outputs(self) -> str:
        return os.path.join(self.home, "outputs")

    @property
    def running(self) -> str:
        return os.path.join(self.home, "running")

    def workdir(self, task_id: str, attempt: int) -> str:
        return os.path.join(self.work, f"{task_id}-a{attempt}")

    def output(self, task_id: str, attempt: int, stream: str) -> str:
        return os.path.join(self.outputs, task_id, f"{attempt}.{stream}")

    def pidfile(self, task_id: str, attempt: int) -> str:
        return os.path.join(self.running, f"{task_id}.{attempt}.json")


class Reaper:
    """One thread that waits for many children to exit, using pidfds."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._adds: list[tuple[subprocess.Popen[bytes], Callable[[int], None]]] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)
        self._thread.start()

    def watch(self, proc: subprocess.Popen[bytes], on_exit: Callable[[int], None]) -> None:
        """Call `on_exit(returncode)` (on the reaper thread) when `proc` exits."""
        with self._lock:
            self._adds.append((proc, on_exit))
        os.write(self._wake_w, b"x")

    def stop(self) -> None:
        """Stop the reaper thread."""
        self._stopped = True
        os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while not self._stopped:
            for key, _ in self._sel.select():
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):  # drained already: nothing to read
                        os.read(self._wake_r, 4096)
                    self._register_new()
                    continue
                proc, on_exit, fd = key.data
                self._sel.unregister(fd)
                os.close(fd)
                rc = proc.wait()
                try:
                    on_exit(rc)
                except Exception:
                    log.exception("exit callback failed for pid %s", proc.pid)

    def _register_new(self) -> None:
        with self._lock:
            adds, self._adds = self._adds, []
        for proc, on_exit in adds:
            try:
                fd = os.pidfd_open(proc.pid)
            except ProcessLookupError:  # already reaped elsewhere: report now
                on_exit(proc.wait())
                continue
            self._sel.register(fd, selectors.EVENT_READ, (proc, on_exit, fd))


Report = Callable[[str, int, Outcome], None]


class TaskRunner(pykka.ThreadingActor):
    """Runs one attempt of one task. Messages: ("start",), ("exited", rc), ("cancel", why)."""

    def __init__(
        self,
        spec: TaskSpec,
        attempt: int,
        node_name: str,
        paths: Paths,
        reaper: Reaper,
        prepare: Callable[[TaskSpec, str], str],
        report: Report,
        clock: Callable[[], float],
        on_crash: Callable[[str, int, str], None],
    ) -> None:
        super().__init__()
        self.spec = spec
        self.attempt = attempt
        self.node_name = node_name
        self.paths = paths
        self.reaper = reaper
        self.prepare = prepare  # (spec, workdir) -> command to run (files placed, renamed)
        self.report = report
        self.clock = clock
        self.on_crash = on_crash  # (task_id, attempt, reason): the supervisor's path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.cancelled = ""

    def on_receive(self, message: Any) -> Any:
        kind = message[0]
        if kind == "start":
            self._start()
        elif kind == "exited":
            self._exited(message[1])
        elif kind == "cancel":
            self._cancel(message[1])
        return None

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """Starting failed: kill what runs and report. A task that cannot start (a necessary file
        no node can supply, a bad file) is reported as "cannot start: ..."; anything else is an
        executor crash for the supervisor to count."""
        if self.proc is not None and self.proc.returncode is None:
            kill_group(self.proc.pid)
        expected = issubclass(exception_type, (LeoronicError, ValueError, OSError))
        reason = f"{exception_value}" if expected else f"{exception_type.__name__}: {exception_value}"
        self.on_crash(self.spec.task_id, self.attempt, ("cannot start: " if expected else "") + reason)

    def _start(self) -> None:
        spec, attempt = self.spec, self.attempt
        workdir = self.paths.workdir(spec.task_id, attempt)
        os.makedirs(workdir, exist_ok=True)
        os.makedirs(os.path.dirname(self.paths.output(spec.task_id, attempt, "out")), exist_ok=True)
        command = self.prepare(spec, workdir)  # may raise: the supervisor releases the task
        env = dict(os.environ)
        env.update(
            LEORONIC_TASK_ID=spec.task_id,
            LEORONIC_NODE_NAME=self.node_name,
            LEORONIC_ATTEMPT=str(attempt),
            LEORONIC_WORKDIR=workdir,
        )
        with open(self.paths.output(spec.task_id, attempt, "out"), "wb") as out, open(
            self.paths.output(spec.task_id, attempt, "err"), "wb"
        ) as err:
            self.started = self.clock()
            self.proc = subprocess.Popen(
                ["bash", "-c", command],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        self._write_pidfile()
        ref = self.actor_ref
        self.reaper.watch(self.proc, lambda rc: ref.tell(("exited", rc)))

    def _write_pidfile(self) -> None:
        assert self.proc is not None
        try:
            created = psutil.Process(self.proc.pid).create_time()
        except psutil.Error:
            created = 0.0
        path = self.paths.pidfile(self.spec.task_id, self.attempt)
        with open(path, "w") as f:
            json.dump({"pid": self.proc.pid, "created": created}, f)

    def _exited(self, rc: int) -> None:
        end = self.clock()
        try:
            os.unlink(self.paths.pidfile(self.spec.task_id, self.attempt))
        except FileNotFoundError:
            pass
        # A process killed by a signal reports -N; shells report 128+N: use the shell's form.
        code = 128 - rc if rc < 0 else rc
        out_path = self.paths.output(self.spec.task_id, self.attempt, "out")
        err_path = self.paths.output(self.spec.task_id, self.attempt, "err")
        outcome = Outcome(
            exit_code=code,
            start=self.started,
            end=end,
            stdout_tail=read_tail(out_path),
            stderr_tail=read_tail(err_path),
            stdout_bytes=_size(out_path),
            stderr_bytes=_size(err_path),
        )
        if not self.cancelled:
            self.report(self.spec.task_id, self.attempt, outcome)
        self.stop()

    def _cancel(self, why: str) -> None:
        self.cancelled = why
        if self.proc is not None and self.proc.returncode is None:
            log.info("killing task %s attempt %d: %s", self.spec.task_id, self.attempt, why)
            kill_group(self.proc.pid)


def kill_group(pid: int) -> None:
    """SIGKILL a task's whole process group (its pid is the group id)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return  # already gone
    except PermissionError as exc:
        log.error("cannot kill task process group %d: %s", pid, exc)


def read_tail(path: str, limit: int = TAIL_BYTES) -> bytes:
    """The last `limit` bytes of a file (b"" if it is missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read()
    except FileNotFoundError:
        return b""


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def kill_orphans(paths: Paths) -> list[int]:
    """Kill the task process groups a previous life of this node left running.

    A pid file is trusted only if a process with that pid still exists with the same creation
    time, so a recycled pid is never killed. Returns the pids killed.
    """
    killed: list[int] = []
    try:
        names = os.listdir(paths.running)
    except FileNotFoundError:
        return killed
    for name in names:
        path = os.path.join(paths.running, name)
        try:
            with open(path) as f:
                info = json.load(f)
            proc = psutil.Process(int(info["pid"]))
            if abs(proc.create_time() - float(info["created"])) < 0.01:
                kill_group(proc.pid)
                killed.append(proc.pid)
        except (psutil.Error, OSError, ValueError, KeyError):
            log.debug("pid file %s names no live process of ours", name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return killed

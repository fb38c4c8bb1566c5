"""Running tasks: one executor actor per node, which also reaps its children; orphan cleanup.

The `Executor` prepares each attempt's fresh work dir, starts `bash -c COMMAND` in its own
process group with stdout/stderr going to files, and adds the child's Linux pidfd to its
actor's inbox (`ExitsInbox`), which waits for messages and for every child's exit at once (no
polling); the actor reaps the child and reports the outcome. Cancelling an attempt (deleted, held, taken away)
sends its whole group SIGTERM, then SIGKILL after the kill grace (Slurm's KillWait), and tells
the caller once the process is gone, so its resources stay taken until then; a node stopping
kills at once. A task with a time limit gets a timer: when it runs out the group gets SIGTERM,
then SIGKILL after the grace, and the outcome is marked timed out. When a task's bash exits,
what is left of its process group is killed, and a sweeper every SWEEP_S kills the processes
ended tasks left outside it (found by their mark, as orphans are).

One actor for all attempts rather than one per attempt: an actor is a thread, and with one per
task a `true` task cost about 0.9 ms of this process's CPU, against about 0.5 ms with one actor
and `subprocess.Popen` (measured in-process over 1,000 tasks). Tasks are started with
`os.posix_spawn` instead, which is about 0.09 ms cheaper than Popen per task: it has no
"change directory" action, so the executor enters the work dir around the spawn (`_spawn`).
That is safe because every path this process uses is absolute (`Paths` makes its home so) and
only the executor's thread starts processes.

No per-task file records the running processes: every task process carries its work dir in
`LEORONIC_WORKDIR`, so a restarted node finds the orphans of its previous life in /proc
(`kill_orphans`). Each file a task costs (its work dir, its two output files) is a metadata
write on the node's disk, which on the benchmark machine costs more than the Python around it:
an empty output of an ended attempt is therefore not kept but reused as the next attempt's,
and so is an empty work dir, once a sweep shows no process of its task is left
(comrade.spares): a task that leaves no output and no files creates no inode.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import select
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import pykka

from comrade.errors import LeoronicError
from comrade.model import TAIL_BYTES, Outcome, TaskSpec
from comrade.spares import SpareDirs, Spares, read_stream, remove_tree

log = logging.getLogger(__name__)

#: On an executor actor's thread, `.actor` is that actor (set as it starts).
_actor_thread = threading.local()


@dataclass(frozen=True)
class Paths:
    """Where a node keeps task things under its home."""

    home: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", os.path.realpath(self.home))  # the executor chdirs

    @property
    def work(self) -> str:
        return os.path.join(self.home, "work")

    @property
    def outputs(self) -> str:
        return os.path.join(self.home, "outputs")

    @property
    def spare(self) -> str:
        """Empty output files to reuse (comrade.spares)."""
        return os.path.join(self.home, "spare")

    @property
    def spare_dirs(self) -> str:
        """Empty work dirs to reuse (comrade.spares.SpareDirs)."""
        return os.path.join(self.home, "spare-dirs")

    def workdir(self, task_id: str, attempt: int) -> str:
        return os.path.join(self.work, f"{task_id}-a{attempt}")

    def output(self, task_id: str, attempt: int, stream: str) -> str:
        """`outputs/ID.ATTEMPT.STREAM` (stream: out or err); no directory per task."""
        return os.path.join(self.outputs, f"{task_id}.{attempt}.{stream}")


def workdir_task_id(name: str) -> str:
    """The task id of a work dir's name (`ID-aATTEMPT`)."""
    return name.rsplit("-a", 1)[0]


def output_task_id(name: str) -> str:
    """The task id of an output file's name (ids may hold dots; attempts and streams do not)."""
    return name.rsplit(".", 2)[0]


def task_files(paths: Paths) -> dict[str, list[str]]:
    """The work dirs and output files under a home, by task id (absolute paths)."""
    found: dict[str, list[str]] = {}
    for folder, task_of in ((paths.work, workdir_task_id), (paths.outputs, output_task_id)):
        for name in os.listdir(folder):
            found.setdefault(task_of(name), []).append(os.path.join(folder, name))
    return found


def remove_task_files(items: Iterable[str]) -> None:
    """Remove work dirs (whole trees) and output files; those already gone are skipped. A
    task may have left a symlink where its work dir was: the link goes, not what it points to
    (rmtree refused it, so it stayed for good)."""
    for path in items:
        remove_tree(path)


class _Note:
    """A message the inbox makes itself (a child exited), shaped as pykka's envelopes are."""

    __slots__ = ("message", "reply_to")

    def __init__(self, message: tuple[Any, ...]) -> None:
        self.message = message
        self.reply_to = None


class ExitsInbox:
    """The executor actor's inbox, which also reports its children's exits: one epoll set holds
    an eventfd (rung when a message arrives while the actor's thread waits) and the pidfd of
    every running child, so the actor's thread waits for both at once and reaps the child
    itself. A thread of its own for the exits cost each task a hand-off there and another one
    back (about 20 us of CPU each on the benchmark machine).

    `put` and `empty` are called from any thread, `get`, `watch` and `forget` on the actor's
    thread only. `put` rings the eventfd only if the actor's thread is (about to be) waiting:
    `put` appends before it reads `_waiting`, `get` sets `_waiting` before it looks for
    messages, so one of the two always sees the other (the GIL orders them).
    """

    #: A busy inbox still looks for exits at least once per this many messages.
    POLL_EVERY = 16

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._epoll = select.epoll()
        self._bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._bell, select.EPOLLIN)
        self._waiting = False
        self._since_poll = 0
        self._closed = False
        self._lock = threading.Lock()  # a ring against close(): never write to a reused fd
        self.children: dict[int, tuple[Child, Key]] = {}  # by pidfd

    def put(self, envelope: Any) -> None:
        self._items.append(envelope)
        if self._waiting:
            with self._lock:
                if not self._closed:
                    os.eventfd_write(self._bell, 1)

    def empty(self) -> bool:
        return not self._items

    def get(self) -> Any:
        items = self._items
        while True:
            if items and self._since_poll < self.POLL_EVERY:
                self._since_poll += 1
                return items.popleft()
            self._waiting = True
            try:
                events = self._epoll.poll(0 if items else -1)  # Python retries EINTR itself
            finally:
                self._waiting = False
            self._since_poll = 0
            for fd, _ in events:
                if fd == self._bell:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._bell)
                elif fd in self.children:  # once (EPOLLONESHOT): it stays readable
                    items.append(_Note(("reaped", fd)))

    def watch(self, child: Child, key: Key) -> bool:
        """Report `child`'s exit as ("reaped", pidfd). False if its pidfd cannot be had (it
        cannot be gone: only this process waits for it)."""
        try:
            fd = os.pidfd_open(child.pid)
        except ProcessLookupError:
            return False
        self.children[fd] = (child, key)
        # One event: a pidfd stays readable until the actor reaps its child, and closing it
        # (`forget`) takes it out of the set.
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLONESHOT)
        return True

    def forget(self, fd: int) -> tuple[Child, Key] | None:
        """The child and attempt a reported pidfd was for; the pidfd is closed."""
        watched = self.children.pop(fd, None)
        if watched is not None:
            os.close(fd)
        return watched

    def close(self) -> None:
        """Close the epoll set, the bell and the pidfds; children that have exited are reaped
        (the actor is stopping: their exits are moot)."""
        with self._lock:
            self._closed = True
            os.close(self._bell)
        self._epoll.close()
        for fd, (child, _) in list(self.children.items()):
            os.close(fd)
            if child.returncode is None:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child.pid, os.WNOHANG)
        self.children.clear()


@dataclass
class Child:
    """A started task process: its pid (also its process group) and, once reaped, its status."""

    pid: int
    returncode: int | None = None  # as subprocess reports it: -N if killed by signal N
    cpu_s: float = 0.0  # user + system CPU seconds, its waited-for children included
    max_rss: int = 0  # bytes: the peak resident memory of the largest of those processes
    max_rss_exact: bool = False  # above this process's own peak: see Outcome.max_rss_exact

    def reap(self) -> int:
        """Wait for the process (it has exited: its pidfd said so) and keep its status and
        what it used (wait4 costs what waitpid does)."""
        if self.returncode is None:
            # What the task left running in its process group ends with it (as Slurm's
            # proctrack ends a step's processes). Before the wait: until then the exited
            # leader holds its pid, so the group cannot be another's.
            kill_group(self.pid)
            try:
                _, status, usage = os.wait4(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
                self.cpu_s = usage.ru_utime + usage.ru_stime
                self.max_rss = usage.ru_maxrss * 1024  # Linux counts KiB
                # At exec the kernel takes the spawning process's peak into the child's.
                self.max_rss_exact = usage.ru_maxrss > _own_peak_kib(usage.ru_maxrss)
            except ChildProcessError:
                log.error("task process %d was reaped by someone else: its exit code is lost",
                          self.pid)
                self.returncode = LOST_STATUS
        return self.returncode


_own_peak = [0]  # this process's peak RSS (KiB) as last read: it only grows


def _own_peak_kib(than: int) -> int:
    """This process's peak resident memory in KiB, read again only when `than` is above the
    last reading (it never shrinks): a system call per task less."""
    if than > _own_peak[0]:
        _own_peak[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return _own_peak[0]


#: What a task whose exit status was lost reports (as a shell reports 255).
LOST_STATUS = 255
#: A task starts with every signal at its default action (Python ignores SIGPIPE and SIGXFSZ;
#: whoever started the node may have ignored more, such as SIGQUIT for a background job).
_DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
#: How task output files are opened (in the child, by posix_spawn).
_OUTPUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
#: A task past its time limit or cancelled gets SIGTERM (its whole process group), and SIGKILL
#: this many seconds later if it has not ended by then (as Slurm's KillWait): the default of
#: `--kill-grace`.
KILL_GRACE_S = 5.0
#: Seconds between two sweeps for processes that ended tasks left outside their process group
#: (`setsid`, a daemon), found by their LEORONIC_WORKDIR mark: a pass over /proc, a few ms.
SWEEP_S = 10.0
#: A process whose /proc/PID/environ reads empty may be in an exec (`setsid cmd` execs twice as
#: its task ends): it is read again this many times, a millisecond apart (`kill_orphans`).
EXEC_RETRIES = 10


Report = Callable[[str, int, Outcome], None]
Crashed = Callable[[str, int, str], None]
Stopped = Callable[[], None]
Key = tuple[str, int]  # (task id, attempt)


@dataclass
class _Run:
    """One attempt this executor runs (or is preparing)."""

    spec: TaskSpec
    attempt: int
    report: Report
    crashed: Crashed
    workdir: str = ""
    out: str = ""  # stdout file (where the attempt's stdout is kept)
    err: str = ""  # stderr file
    out_at: str = ""  # where its stdout is written while it runs: a spare, or `out`
    err_at: str = ""
    proc: Child | None = None
    started: float = 0.0
    cancelled: str = ""
    stopped: list[Stopped] = field(default_factory=list)  # called once a cancelled run is gone
    timer: threading.Timer | None = None  # the time limit's or the cancel's next step
    timed_out: bool = False  # the time limit ran out and the group was sent SIGTERM


class Executor:
    """Runs every task attempt of one node or ghost.

    One `ExecutorActor` (pykka) owns all the attempts and serializes what happens to them,
    their exits included (its inbox watches the children). An attempt with necessary files is
    prepared (fetched, placed) on a thread of its own, since a fetch may take long; the rest
    start directly. `start` never blocks.

    `cluster_address()` is where a task's own `leoronic` commands should go (its
    LEORONIC_NODE): the worker itself, or the worker a ghost is attached to ("": unchanged).

    Callbacks, on the actor's thread: `report(task_id, attempt, outcome)` once the process
    ended (not after a cancel: `cancel`'s `stopped()` instead, once its process is gone, or
    at once if it had none), or `crashed(task_id, attempt, reason)` if it could not start:
    "cannot start: ..." for expected errors (a file no node has, a bad file, an OS error),
    anything else is an executor bug for the caller's supervisor to count.
    """

    def __init__(self, node_name: str, paths: Paths, prepare: Callable[[TaskSpec, str], str],
                 clock: Callable[[], float], cluster_address: Callable[[], str] = lambda: "",
                 kill_grace_s: float = KILL_GRACE_S, sweep_s: float = SWEEP_S) -> None:
        close_inherited_fds_on_exec()
        self.ref = ExecutorActor.start(node_name, paths, prepare, clock, cluster_address,
                                       kill_grace_s)
        self._stopping = threading.Event()
        threading.Thread(target=self._sweeper, args=(sweep_s,), name="sweeper",
                         daemon=True).start()

    def _sweeper(self, every_s: float) -> None:
        """Every `every_s`, have the actor kill what ended tasks left outside their group."""
        while not self._stopping.wait(every_s):
            try:
                self.ref.tell(("sweep",))
            except pykka.ActorDeadError:
                return

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn()` on the actor's thread, after what the actor was told before (dropped
        once `stop` began). A node runs its scheduling passes so (comrade.node): they start
        and end attempts, so on this thread a start or an exit hands nothing to another
        thread, and a hand-off between two Python threads costs about 20 us of CPU here."""
        self._tell(("call", fn))

    def here_and_idle(self) -> bool:
        """True on the actor's own thread while nothing waits in its inbox (and it is not
        stopping): what `call_soon` would run next can run now instead."""
        actor = self._here()
        return actor is not None and actor.inbox.empty()

    def _here(self) -> ExecutorActor | None:
        """The actor, when called on its own thread and not stopping; else None."""
        actor: ExecutorActor | None = getattr(_actor_thread, "actor", None)
        if actor is None or actor.actor_urn != self.ref.actor_urn or self._stopping.is_set():
            return None
        return actor

    def start(self, spec: TaskSpec, attempt: int, report: Report, crashed: Crashed) -> None:
        """Run one attempt of `spec` here. Called on the actor's own thread (a scheduling pass
        is), it starts at once instead of through the inbox: a message costs about 17 us of
        CPU in a busy node, and nothing told before can concern an attempt not started yet."""
        run = _Run(spec, attempt, report, crashed)
        actor = self._here()
        if actor is not None:
            actor._start(run)
        else:
            self._tell(("start", run))  # (dropped if stopping)

    def cancel(self, key: Key, why: str, stopped: Stopped | None = None) -> None:
        """Stop an attempt's whole process group, SIGTERM then SIGKILL after the grace (or do
        not start it); it reports nothing but `stopped()`, once its process is gone."""
        self._tell(("cancel", key, why, stopped))

    def _tell(self, message: tuple[Any, ...]) -> None:
        """Send the actor a start, cancel or call; once `stop` began they are moot and dropped
        (every attempt is killed, and the stopping node's leave hands them back), not an
        error: a scheduling pass that ran while the node stopped used to crash on the
        stopped actor (ActorDeadError) and be counted by the supervisor."""
        if self._stopping.is_set():
            return
        try:
            self.ref.tell(message)
        except pykka.ActorDeadError:
            if not self._stopping.is_set():
                raise

    def stop(self) -> None:
        """Kill every running attempt and stop the actor."""
        self._stopping.set()  # first: a start or cancel from now on is moot (_tell)
        try:
            self.ref.ask(("cancel_all", "node stopping"), timeout=5)
        except (pykka.ActorDeadError, pykka.Timeout):
            pass
        self.ref.stop(block=False)


class ExecutorActor(pykka.ThreadingActor):
    """Messages: ("start", run), ("launch", key, command), ("unprepared", key, exc),
    ("exited", key, rc), ("time_up", key), ("kill", key), ("cancel", key, why, stopped),
    ("sweep",), ("call", fn), ("cancel_all", why): the last kills at once. Its inbox
    (`ExitsInbox`) adds ("reaped", pidfd) when a child exits."""

    use_daemon_thread = True  # never keeps a stopping process alive; stop() kills the tasks

    @staticmethod
    def _create_actor_inbox() -> ExitsInbox:  # pykka's hook for an actor's own inbox
        return ExitsInbox()

    def __init__(self, node_name: str, paths: Paths, prepare: Callable[[TaskSpec, str], str],
                 clock: Callable[[], float], cluster_address: Callable[[], str],
                 kill_grace_s: float = KILL_GRACE_S) -> None:
        super().__init__()
        self.inbox: ExitsInbox = self.actor_inbox  # type: ignore[assignment]
        self.kill_grace_s = kill_grace_s
        self.cluster_address = cluster_address
        self.node_name = node_name
        self.paths = paths
        self.prepare = prepare  # (spec, workdir) -> command to run (files placed, renamed)
        self.clock = clock
        self.base_env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
        self.bash = shutil.which("bash") or "/bin/bash"  # found once, not on every start
        self.spares = Spares(paths.spare)
        self.dirs = SpareDirs(paths.spare_dirs, paths.work)
        os.chdir(paths.home)  # where _spawn returns to: the same from the first task on
        self.runs: dict[Key, _Run] = {}

    def on_start(self) -> None:
        _actor_thread.actor = self

    def on_stop(self) -> None:
        self.inbox.close()

    def on_receive(self, message: Any) -> Any:
        kind = message[0]
        if kind == "reaped":
            self._reaped(message[1])
        elif kind == "start":
            self._start(message[1])
        elif kind == "launch":
            self._launch(message[1], message[2])
        elif kind == "unprepared":
            self._cannot_start(message[1], message[2])
        elif kind == "exited":
            self._exited(message[1], message[2])
        elif kind == "time_up":
            self._time_up(message[1])
        elif kind == "kill":
            self._kill(message[1])
        elif kind == "cancel":
            self._cancel(message[1], message[2], message[3])
        elif kind == "sweep":
            self._sweep()
        elif kind == "call":
            message[1]()
        elif kind == "cancel_all":
            for key in list(self.runs):
                self._cancel(key, message[1], None, graceful=False)
        return None

    def _start(self, run: _Run) -> None:
        key = (run.spec.task_id, run.attempt)
        if key in self.runs:
            return
        self.runs[key] = run
        run.workdir = workdir = self.paths.workdir(*key)
        run.out, run.err = self.paths.output(*key, "out"), self.paths.output(*key, "err")
        try:
            if not self.dirs.place(workdir):
                _mkdir(workdir)
        except OSError as exc:
            self._cannot_start(key, exc)
            return
        if not run.spec.files:
            self._launch(key, run.spec.command)
            return
        ref = self.actor_ref

        def prepare() -> None:  # may fetch files over the network: not on the actor thread
            try:
                ref.tell(("launch", key, self.prepare(run.spec, workdir)))
            except Exception as exc:
                ref.tell(("unprepared", key, exc))

        threading.Thread(target=prepare, name=f"prepare-{key[0]}", daemon=True).start()

    def _launch(self, key: Key, command: str) -> None:
        run = self.runs.get(key)
        if run is None or run.cancelled:
            self.runs.pop(key, None)
            return
        env = dict(self.base_env)  # bytes already: Popen would encode every variable per task
        env[b"LEORONIC_TASK_ID"] = os.fsencode(run.spec.task_id)
        env[b"LEORONIC_NODE_NAME"] = os.fsencode(self.node_name)
        env[b"LEORONIC_ATTEMPT"] = b"%d" % run.attempt
        env[b"LEORONIC_WORKDIR"] = os.fsencode(run.workdir)
        address = self.cluster_address()
        if address:  # `leoronic_add_task` in a task reaches the cluster that runs it
            env[b"LEORONIC_NODE"] = os.fsencode(address)
        try:
            run.started = self.clock()
            run.proc = Child(self._spawn(run, command, env))
        except Exception as exc:
            self._cannot_start(key, exc)
            return
        if not self.inbox.watch(run.proc, key):  # cannot happen: see ExitsInbox.watch
            self.actor_ref.tell(("exited", key, run.proc.reap()))
        if run.spec.time_limit > 0:
            self._after(run, run.spec.time_limit)

    def _after(self, run: _Run, seconds: float, kind: str = "time_up") -> None:
        """Send this actor (`kind`, key) in `seconds` (one timer per run at a time)."""
        ref, key = self.actor_ref, (run.spec.task_id, run.attempt)

        def time_up() -> None:  # on the timer's thread
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell((kind, key))

        run.timer = threading.Timer(seconds, time_up)
        run.timer.daemon = True
        run.timer.start()

    def _time_up(self, key: Key) -> None:
        """The run's time limit ran out: SIGTERM its group; if still running after the grace,
        SIGKILL it. Its exit is then reported as usual, marked timed out."""
        run = self.runs.get(key)
        if run is None or run.cancelled or run.proc is None or run.proc.returncode is not None:
            return  # ended meanwhile: its exit is on the way
        if not run.timed_out:
            run.timed_out = True
            log.info("task %s attempt %d ran out of its time limit (%s s): SIGTERM", key[0],
                     key[1], run.spec.time_limit)
            kill_group(run.proc.pid, signal.SIGTERM)
            self._after(run, self.kill_grace_s)
        else:
            self._kill(key)

    def _kill(self, key: Key) -> None:
        """The grace after a SIGTERM is over: SIGKILL the group if the run is still alive."""
        run = self.runs.get(key)
        if run is None or run.proc is None or run.proc.returncode is not None:
            return
        log.info("task %s attempt %d still running %s s after SIGTERM: SIGKILL", key[0], key[1],
                 self.kill_grace_s)
        kill_group(run.proc.pid)

    def _spawn(self, run: _Run, command: str, env: dict[bytes, bytes]) -> int:
        """Start `bash -c COMMAND` in the run's work dir and a session of its own, stdin from
        /dev/null, stdout and stderr to the run's files. Returns the pid.

        The work dir is entered around the spawn (posix_spawn cannot change directory in the
        child); every other path here is absolute and only this thread starts processes.
        The task starts clean: every signal at its default action and none blocked (so
        `yes | head -n 1` ends quietly, as in a terminal, although Python ignores SIGPIPE), and
        no fd but 0-2 (Python opens every fd close-on-exec, and `Executor` marks those the node
        inherited so).
        """
        # Far cheaper than the child creating the files (comrade.spares).
        run.out_at = self.spares.take() or run.out
        run.err_at = self.spares.take() or run.err
        os.chdir(run.workdir)
        try:
            return os.posix_spawn(self.bash, ["bash", "-c", command], env, setsid=True,
                                  setsigdef=_DEFAULT_SIGNALS, setsigmask=(), file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, run.out_at, _OUTPUT_FLAGS, 0o644),
                (os.POSIX_SPAWN_OPEN, 2, run.err_at, _OUTPUT_FLAGS, 0o644),
            ])
        finally:
            os.chdir(self.paths.home)

    def _sweep(self) -> None:
        """Kill the processes ended tasks left behind outside their process group (`setsid`,
        a daemon): they carry the task's mark, and no running attempt has that work dir."""
        running = {run.workdir for run in self.runs.values()}
        groups, held = sweep_processes(self.paths, running, self.paths.spare_dirs)
        self.dirs.settle(clean=not groups, running=running, held=held)
        if groups:
            log.info("killed %d process groups that ended tasks left running: %s", len(groups),
                     " ".join(map(str, groups)))

    def _cannot_start(self, key: Key, exc: BaseException) -> None:
        run = self.runs.pop(key, None)
        if run is None:
            return
        _stop_timer(run)
        if run.proc is not None and run.proc.returncode is None:
            kill_group(run.proc.pid)
        self._settle_streams(run)
        if run.cancelled:
            _call_stopped(run, key)
            return
        expected = isinstance(exc, (LeoronicError, ValueError, OSError))
        reason = f"{exc}" if expected else f"{type(exc).__name__}: {exc}"
        try:
            run.crashed(key[0], key[1], ("cannot start: " if expected else "") + reason)
        except Exception:
            log.exception("crash callback failed for task %s", key[0])

    def _reaped(self, fd: int) -> None:
        """A child's pidfd says it exited: reap it, and end its attempt."""
        watched = self.inbox.forget(fd)
        if watched is not None:
            child, key = watched
            self._exited(key, child.reap())

    def _exited(self, key: Key, rc: int) -> None:
        end = self.clock()
        run = self.runs.pop(key, None)
        if run is None:
            return
        _stop_timer(run)
        if run.cancelled:
            self._settle_streams(run)
            _call_stopped(run, key)  # nobody wants its outcome: only that it is gone
            return
        # A process killed by a signal reports -N; shells report 128+N: use the shell's form.
        code = 128 - rc if rc < 0 else rc
        out_tail, out_size, out_free = read_stream(run.out_at, TAIL_BYTES)
        err_tail, err_size, err_free = read_stream(run.err_at, TAIL_BYTES)
        self._settle_streams(run, ((out_size, out_free), (err_size, err_free)))
        kept = not self.dirs.set_aside(run.workdir)  # an empty one is a later attempt's
        outcome = Outcome(exit_code=code, start=run.started, end=end, stdout_tail=out_tail,
                          stderr_tail=err_tail, stdout_bytes=out_size, stderr_bytes=err_size,
                          timed_out=run.timed_out, workdir_kept=kept, **_usage(run.proc))
        try:
            run.report(key[0], key[1], outcome)
        except Exception:
            log.exception("report callback failed for task %s", key[0])
        if self.dirs.sweep_due():
            self._sweep()

    def _settle_streams(self, run: _Run, read: tuple[tuple[int | None, bool | None], ...]
                        = ((None, None), (None, None))) -> None:
        """The ended attempt's stream files: empty ones become spares, the others are moved to
        where its output belongs, where it is fetched from (comrade.spares). `read`: (size,
        unwritten) of stdout and stderr as `read_stream` found them (None: looked up)."""
        streams = ((run.out_at, run.out), (run.err_at, run.err))
        for (at, path), (size, unwritten) in zip(streams, read, strict=True):
            if at:
                self.spares.settle(at, path, size, unwritten)
        run.out_at = run.err_at = ""

    def _cancel(self, key: Key, why: str, stopped: Stopped | None, graceful: bool = True) -> None:
        run = self.runs.get(key)
        if run is None or run.proc is None:  # gone, or preparing (_launch drops it): no process
            if run is not None:
                run.cancelled = why
            if stopped is not None:
                stopped()
            return
        if stopped is not None:
            run.stopped.append(stopped)
        if run.proc.returncode is not None:
            return  # exited: its exit is on the way, and calls `stopped`
        if run.cancelled and graceful:
            return  # SIGTERM sent already; the grace's timer runs
        run.cancelled = why
        _stop_timer(run)
        if graceful and self.kill_grace_s > 0:
            log.info("stopping task %s attempt %d (SIGTERM, SIGKILL after %s s): %s", key[0],
                     key[1], self.kill_grace_s, why)
            kill_group(run.proc.pid, signal.SIGTERM)
            self._after(run, self.kill_grace_s, "kill")
        else:
            log.info("killing task %s attempt %d: %s", key[0], key[1], why)
            kill_group(run.proc.pid)


def _usage(proc: Child | None) -> dict[str, Any]:
    """The Outcome fields of what a reaped process used."""
    return {"cpu_s": proc.cpu_s, "max_rss": proc.max_rss, "max_rss_exact": proc.max_rss_exact} \
        if proc is not None else {}


def _call_stopped(run: _Run, key: Key) -> None:
    for stopped in run.stopped:
        try:
            stopped()
        except Exception:
            log.exception("stopped callback failed for task %s", key[0])
    run.stopped.clear()


def _stop_timer(run: _Run) -> None:
    if run.timer is not None:
        run.timer.cancel()
        run.timer = None


def _mkdir(path: str) -> None:
    """Create a fresh, empty work dir. One already there is stale: left by an earlier task
    with the same id whose record was forgotten before its files were collected."""
    try:
        os.mkdir(path)
    except FileExistsError:
        shutil.rmtree(path)
        os.mkdir(path)
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)


def close_inherited_fds_on_exec() -> None:
    """Mark every fd above 2 close-on-exec. Python opens its own so; these are the ones this
    process inherited (a pipe of whatever started the node), which tasks must not get."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own fd, closed by now
                os.set_inheritable(fd, False)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal (SIGKILL) a task's whole process group (its pid is the group id)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return  # already gone
    except PermissionError as exc:
        log.error("cannot kill task process group %d: %s", pid, exc)


def kill_orphans(paths: Paths, keep: AbstractSet[str] = frozenset()) -> list[int]:
    """Kill the task process groups a previous life of this node (the same home) left running,
    or, with `keep` (the work dirs of the attempts running now), those its ended tasks left.

    Every task process starts with `LEORONIC_WORKDIR=<home>/work/...` and its children inherit
    it: each process whose initial environment (/proc/PID/environ) holds that prefix, but not
    one of `keep`, is an orphan, and its whole process group is killed, so members that
    dropped the variable go too. The mark is exact, so a recycled pid is never mistaken for an
    orphan. Processes of other users cannot be read, and could not be killed either. Returns
    the groups killed.
    """
    return sweep_processes(paths, keep)[0]


def sweep_processes(paths: Paths, keep: AbstractSet[str] = frozenset(),
                    under: str = "") -> tuple[list[int], set[str]]:
    """`kill_orphans`, and in the same pass over /proc the entries of the folder `under` that
    some process is in (its current directory is the entry or below it; none if `under` is
    ''): (groups killed, entries held). A process may hold an ended task's work dir, set aside
    there, without the mark the orphans are found by: one that cleared its environment, or a
    window a tmux server outside the task opened in it. One readlink per process that is not
    a kernel thread (one listing of /proc and a readlink per kernel thread fewer than two
    passes took: a sweep's cost is most of a set-aside work dir's)."""
    mark = b"LEORONIC_WORKDIR=" + os.fsencode(paths.work) + b"/"
    kept = {b"LEORONIC_WORKDIR=" + os.fsencode(w) for w in keep}
    prefix = under + "/"
    held: set[str] = set()
    own = os.getpgid(0)
    groups: set[int] = set()
    names = [name for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()]
    for retry in range(EXEC_RETRIES + 1):
        if not names:
            break
        if retry:
            time.sleep(0.001)
        empty: list[str] = []  # a kernel thread, or a process in an exec (no environment yet)
        for name in names:
            try:
                env = _environ(name)
                if not env:
                    if not _has_program(name):
                        continue  # a kernel thread: no mark, always in /
                    empty.append(name)
                elif any(var.startswith(mark) and var not in kept for var in env.split(b"\0")):
                    groups.add(os.getpgid(int(name)))
                if under and not retry:
                    cwd = os.readlink(f"/proc/{name}/cwd")
                    if cwd.startswith(prefix):
                        held.add(prefix + cwd[len(prefix):].split("/", 1)[0])
            except (OSError, ValueError):
                continue  # gone, or not ours to read
        names = empty
    groups.discard(own)
    for group in sorted(groups):
        kill_group(group)
    return sorted(groups), held


#: Pids found to be kernel threads (no program, no environment): not looked at again by
#: `kill_orphans`, which would otherwise ask each for its threads' environments at every
#: sweep. A pid reused by a process only loses the reading again of an empty environment; its
#: mark is still read.
_KERNEL_THREADS: set[str] = set()
_PF_KTHREAD = 0x00200000  # a task's flags in /proc/PID/stat (include/linux/sched.h)


def _has_program(pid: str) -> bool:
    """True if process `pid` is not a kernel thread (those are remembered)."""
    if pid in _KERNEL_THREADS:
        return False
    try:
        flags = int(_read_whole(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()[6])
    except (OSError, ValueError, IndexError):
        return False  # gone
    if flags & _PF_KTHREAD:
        _KERNEL_THREADS.add(pid)
        return False
    return True


def _environ(pid: str) -> bytes:
    """A process's initial environment. One whose main thread exited while others run on
    (pthread_exit) answers ESRCH for /proc/PID/environ: its live threads still tell it."""
    try:
        return _read_whole(f"/proc/{pid}/environ")
    except ProcessLookupError:  # a kernel thread also says so: it has no threads to ask
        if not _has_program(pid):
            raise
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):
                return _read_whole(f"/proc/{pid}/task/{tid}/environ")
        raise


def _read_whole(path: str) -> bytes:
    """A file's bytes, read without Python's file objects (a sweep reads one per process: the
    buffered reader's set-up and its extra system calls doubled the sweep's cost)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)

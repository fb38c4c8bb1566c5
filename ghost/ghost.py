"""A ghost: runs tasks for the cluster without joining Raft. No journal, no votes.

It attaches to one worker (its clairvoyant), long-polls it for work with its free resources,
tags and files, runs what it is given with the same executor as workers, and hands results
back on the next poll. If the clairvoyant does not answer for `switch_after_s` (5 s), the ghost
attaches to the next worker in address order and carries on; running tasks keep running and
their results go through the new clairvoyant. It serves `output` and `pack_dir` itself, so
`leoronic_result` and `leoronic_get_all_files` reach it like a worker.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pykka

from comrade import packing, resources, rpc
from comrade.config import check_durations, check_node_options, split_address
from comrade.errors import AuthError, ClusterError, LeoronicError, RemoteError, UsageError
from comrade.executor import Executor, Paths, remove_task_files, task_files
from comrade.files import FileRef, FileStore, place_files, rewrite_command
from comrade.homelock import take_home
from comrade.model import NodeInfo, Outcome, Resources, TaskSpec

log = logging.getLogger(__name__)

#: Task ids per `tasks` question when collecting garbage.
GC_ASK_BATCH = 5000


@dataclass(frozen=True)
class GhostConfig:
    """Everything a ghost needs to start."""

    home: str
    cookie: str
    target: str = ""  # "" lowest address; "N" worker N mod count; "HOST:PORT" that one
    peers: tuple[str, ...] = ()  # workers to learn the cluster from
    port: int = 7351  # where this ghost serves output and files
    bind: str = "0.0.0.0"
    advertise: str = ""
    name: str = ""
    cores: int | None = None
    memory: int | None = None
    storage: int | None = None
    tags: tuple[str, ...] = ()
    poll_s: float = 2.0  # long-poll length; also the heartbeat period
    switch_after_s: float = 5.0  # clairvoyant silent this long: attach to the next worker
    retention_s: float = 7 * 24 * 3600.0  # finished tasks' work dirs and outputs kept this long
    file_gc_s: float = 3600.0  # stored files no running task refers to are removed after this
    gc_every_s: float = 60.0  # how often the ghost collects garbage
    kill_grace_s: float = 5.0  # SIGTERM to SIGKILL when a task is stopped (executor.KILL_GRACE_S)

    def __post_init__(self) -> None:
        # Absolute (the executor changes directory around each task start) and canonical (the
        # mark by which a restarted node finds its orphans holds it).
        object.__setattr__(self, "home", os.path.realpath(self.home))

    def validate(self) -> None:
        """Raise UsageError naming the first option that is wrong and why."""
        if not 1 <= self.port <= 65535:
            raise UsageError(f"--port: {self.port} is not a port number (1..65535)")
        check_node_options(self)
        check_durations(self, (("retention", "retention_s", False), ("file-gc", "file_gc_s", False),
                               ("gc-every", "gc_every_s", True), ("kill-grace", "kill_grace_s", False)))


def address_key(addr: str) -> tuple[Any, ...]:
    """Sort key for HOST:PORT by numeric IP (then port); names sort after addresses."""
    host, port = split_address(addr)
    try:
        return (0, int(ipaddress.ip_address(host)), port)
    except ValueError:
        return (1, host, port)


def choose(workers: Sequence[str], target: str, skip: Sequence[str] = ()) -> str:
    """Which worker to attach to, by the original's rules (see GhostConfig.target)."""
    ordered = sorted(set(workers), key=address_key)
    if not ordered:
        raise ClusterError("ghost: no worker found; name one with --peer HOST:PORT")
    if target and not target.lstrip("-").isdigit():
        return target
    if target:
        pick = ordered[int(target) % len(ordered)]
    else:
        pick = ordered[0]
    if pick in skip:  # failover: the next one in address order
        alive = [w for w in ordered if w not in skip]
        if not alive:
            return pick
        after = [w for w in alive if address_key(w) > address_key(pick)]
        return (after or alive)[0]
    return pick


#: Why a ghost gives back an attempt assigned to it that it does not run.
LOST_CLAIM = "assigned to this ghost, which does not run it (the claim never reached it, " \
    "or the ghost restarted)"


@dataclass
class _State:
    running: dict[tuple[str, int], TaskSpec] = field(default_factory=dict)
    stopping: dict[tuple[str, int], TaskSpec] = field(default_factory=dict)  # taken away, alive
    finished: list[tuple[str, int, Outcome]] = field(default_factory=list)
    #: attempts that could not start, to give back once a clairvoyant answers: (id, attempt, why)
    unreleased: list[tuple[str, int, str]] = field(default_factory=list)
    reserved: Resources = Resources()  # what `running` and `stopping` take


class Ghost:
    """One ghost process."""

    def __init__(self, cfg: GhostConfig, probe: resources.Probe | None = None) -> None:
        self.cfg = cfg
        self._home_lock: int | None = None  # fd of HOME/lock, held from start on
        for sub in ("work", "outputs", "files", "store", "logs"):
            os.makedirs(os.path.join(cfg.home, sub), exist_ok=True)
        self.paths = Paths(cfg.home)
        self.name = cfg.name or f"ghost-{socket.gethostname()}-{cfg.port}"
        self.probe = probe or resources.PsutilProbe(cfg.home)
        self.offer = resources.offered(self.probe, cfg.cores, cfg.memory, cfg.storage)
        self.tags = frozenset(cfg.tags) | frozenset(resources.automatic_tags())
        self.store = FileStore(os.path.join(cfg.home, "store"))
        self.files_dir = os.path.join(cfg.home, "files")
        self.state = _State()
        self._unknown: set[tuple[str, int]] = set()  # assigned here, not run: see _reconcile
        self.executor = Executor(self.name, self.paths, self._prepare, time.time,
                                 lambda: self.clairvoyant, cfg.kill_grace_s)
        self.lock = threading.Lock()
        # Held while stored files are collected; `_preparing` counts starts placing files.
        self._files_guard = threading.Lock()
        self._preparing = 0
        self.workers: list[str] = list(cfg.peers)
        self.clairvoyant = ""
        self.advertise = cfg.advertise or _advertise(cfg.bind, self.workers or [cfg.target])
        self.server = rpc.Server(cfg.bind, cfg.port, cfg.cookie, {
            "ping": lambda: {"name": self.name, "kind": "ghost", "clairvoyant": self.clairvoyant},
        }, packing.streams(self.paths, self.name, self.store))
        self._stop = threading.Event()
        self.failed: LeoronicError | None = None  # why the ghost stopped by itself, if it did
        self._finished_event = threading.Event()  # set when a task ends: report it at once
        self._slot_freed = threading.Event()  # set when a task ends: a full ghost polls again

    # ----- life -------------------------------------------------------------------------------

    def run(self) -> None:
        """Attach and work until stopped."""
        self._home_lock = take_home(self.paths)
        self.server.start()
        self._discover()
        self._first_attach()
        threading.Thread(target=self._reporter, name="reporter", daemon=True).start()
        threading.Thread(target=self._collector, name="gc", daemon=True).start()
        while not self._stop.is_set():
            self._poll_once()
        if self.failed is not None:
            self.stop()
            raise self.failed

    def _first_attach(self, patience_s: float = 60.0) -> None:
        """Attach to the chosen worker; a busy cluster may not answer in time (say, many
        ghosts starting at once): try it and the next ones for `patience_s` before giving up.
        A wrong cookie, or a name in use, does not get better by waiting."""
        error = self._attach_patiently(patience_s, lambda e: isinstance(e, AuthError) or (
            isinstance(e, RemoteError) and e.kind == "UsageError"))
        if error is not None:
            raise error

    def _attach_patiently(self, patience_s: float, hopeless: Callable[[LeoronicError], bool]
                          ) -> LeoronicError | None:
        """`_attach_any` in rounds a second apart (never a busy loop on a refusing worker) for
        `patience_s`; None once attached, else the last error: at once if `hopeless(error)`
        or this ghost is stopping."""
        deadline = time.monotonic() + patience_s
        while True:
            error = self._attach_any(self.cfg.target, [])
            if error is None or hopeless(error) or time.monotonic() > deadline \
                    or self._stop.wait(1.0):
                return error

    def _attach_any(self, target: str, skip: list[str]) -> LeoronicError | None:
        """Attach to the first worker that answers, trying them in `choose` order (not those
        in `skip` first); None once attached, else the last error."""
        skip = list(skip)
        error: LeoronicError | None = None
        for _ in range(max(1, len(self.workers))):  # none known: choose() says so
            worker = choose(self.workers, target, skip)
            try:
                self._attach(worker)
                return None
            except LeoronicError as exc:
                log.warning("cannot attach to %s: %s", worker, exc)
                error = exc
                skip.append(worker)
        return error

    def _reporter(self) -> None:
        """Deliver finished results as soon as they exist, even while a long poll waits."""
        while not self._stop.is_set():
            if not self._finished_event.wait(1.0):
                continue
            self._finished_event.clear()
            with self.lock:
                finished = list(self.state.finished)
                reserved = self.state.reserved
            if not finished:
                continue
            free = resources.free(self.probe, self.offer, reserved)
            try:
                rpc.call(self.clairvoyant, self.cfg.cookie, "ghost_report", self.name, free,
                         finished, timeout=self.cfg.switch_after_s)
            except LeoronicError as exc:
                log.warning("could not report results yet: %s", exc)
                continue  # the poll loop carries them, and handles failover
            self._drop_reported(finished)

    def _collector(self) -> None:
        while not self._stop.wait(self.cfg.gc_every_s):
            try:
                self.collect_garbage(time.time())
            except LeoronicError as exc:
                log.warning("garbage collection skipped: %s", exc)
            except Exception:
                log.exception("garbage collection failed")

    def collect_garbage(self, now: float) -> list[str]:
        """Remove the work dirs and outputs of tasks not running here that the cluster says
        were deleted, or that finished (or were forgotten) and whose files are older than
        `retention_s`; and stored files no running task refers to, older than `file_gc_s`.
        Returns the task ids whose files went. Without an answer from the clairvoyant nothing
        but stored files goes (LeoronicError)."""
        with self._files_guard:  # no start is placing files meanwhile (`_prepare`)
            with self.lock:
                busy = {**self.state.running, **self.state.stopping}
                running = {key[0] for key in busy}
                keep = {f[1] for spec in busy.values() for f in spec.files}
            if self._preparing:
                log.debug("stored files not collected: %d starts are placing files", self._preparing)
            else:
                self.store.gc(keep, self.cfg.file_gc_s, now)
        found = {t: items for t, items in task_files(self.paths).items() if t not in running}
        ids = sorted(found)
        states: dict[str, tuple[str, Any]] = {}
        for start in range(0, len(ids), GC_ASK_BATCH):
            states.update(rpc.call(self.clairvoyant, self.cfg.cookie, "tasks",
                                   ids[start:start + GC_ASK_BATCH], timeout=self.cfg.switch_after_s))
        cutoff = now - self.cfg.retention_s
        gone = [t for t in ids if states.get(t, ("",))[0] == "deleted" or (
            states.get(t, ("",))[0] in ("done", "failed", "unknown")
            and _last_written(found[t]) < cutoff)]
        for task_id in gone:
            remove_task_files(found[task_id])
        if gone:
            log.info("garbage: removed the work dirs and outputs of %d tasks", len(gone))
        return gone

    def _drop_reported(self, sent: list[tuple[str, int, Outcome]]) -> None:
        keys = {(t, a) for t, a, _ in sent}
        with self.lock:
            self.state.finished = [f for f in self.state.finished if (f[0], f[1]) not in keys]

    def stop(self) -> None:
        """Stop polling, kill the running tasks and leave: the cluster requeues them at once
        (as for a worker stopped with SIGTERM), not after a lease with the ghost shown up."""
        self._stop.set()
        self.executor.stop()
        if self.clairvoyant:
            try:
                rpc.call(self.clairvoyant, self.cfg.cookie, "ghost_leave", self.name, timeout=5.0)
            except LeoronicError as exc:  # unreachable: the lease requeues them
                log.warning("could not leave cleanly: %s", exc)
        self.server.stop()
        pykka.ActorRegistry.stop_all(block=True, timeout=5)

    def _discover(self) -> None:
        """Learn the active workers from the peers (or the explicit target)."""
        sources = list(self.cfg.peers)
        if self.cfg.target and not self.cfg.target.lstrip("-").isdigit():
            sources.append(self.cfg.target)
        for addr in sources:
            try:
                nodes = rpc.call(addr, self.cfg.cookie, "nodes")["nodes"]
            except AuthError:
                raise  # a wrong cookie: no other worker will take it either
            except LeoronicError as exc:
                log.warning("cannot ask %s for the workers: %s", addr, exc)
                continue
            self.workers = sorted({n["rpc"] for n in nodes if n["kind"] == "worker" and n["alive"]},
                                  key=address_key)
            return
        if not self.workers:
            raise ClusterError("ghost: no worker answered; name one with --peer HOST:PORT")

    def _info(self) -> NodeInfo:
        return NodeInfo(name=self.name, kind="ghost", rpc=f"{self.advertise}:{self.cfg.port}",
                        raft="", offered=self.offer, tags=self.tags, pid=os.getpid())

    def _attach(self, worker: str) -> None:
        reply = rpc.call(worker, self.cfg.cookie, "ghost_attach", self._info(),
                         timeout=self.cfg.switch_after_s)
        self.clairvoyant = worker
        self.workers = reply["workers"] or self.workers
        log.info("attached to clairvoyant %s (%s)", reply["clairvoyant"], worker)

    # ----- the poll loop ----------------------------------------------------------------------

    def _poll_once(self) -> None:
        with self.lock:
            finished = list(self.state.finished)
            reserved = self.state.reserved
        free = resources.free(self.probe, self.offer, reserved)
        files = _list_files(self.files_dir)
        started = time.monotonic()
        # Full: nothing can be claimed for us, so do not park a long poll on the clairvoyant;
        # heartbeat now, then sleep until a task ends or the next heartbeat is due.
        full = free.cores <= 0
        try:
            with rpc.connect(self.clairvoyant, self.cfg.cookie,
                             timeout=self.cfg.switch_after_s) as conn:
                reply = conn.call("ghost_poll", self.name, free, files, finished,
                                  0.0 if full else self.cfg.poll_s)
        except RemoteError as exc:
            if exc.kind == "UsageError":  # it answered that this ghost is not attached there
                self._reattach(exc)
            else:  # no quorum, say: it may answer later, or another worker will
                self._failover(exc, started)
            return
        except LeoronicError as exc:
            self._failover(exc, started)
            return
        self._drop_reported(finished)
        self._release_pending()
        self.workers = reply["workers"] or self.workers
        self._reconcile(set(map(tuple, reply["assigned"])),
                        {(spec.task_id, attempt) for spec, attempt in reply["tasks"]})
        for spec, attempt in reply["tasks"]:
            self._start(spec, attempt)
        if full and not reply["tasks"]:
            with self.lock:
                still_full = resources.free(self.probe, self.offer, self.state.reserved).cores <= 0
            if still_full:
                self._slot_freed.wait(self.cfg.poll_s)
                self._slot_freed.clear()

    def _reattach(self, exc: RemoteError) -> None:
        """The clairvoyant answered a poll with an error (it no longer has this ghost attached,
        say its record was replaced): attach again, there or to another worker, pacing the
        tries; give up, and stop, if no worker will have this ghost (its name is taken)."""
        log.warning("clairvoyant %s refused a poll: %s; attaching again", self.clairvoyant, exc)
        if self._stop.wait(1.0):  # pacing: not at once at the worker that just refused
            return
        error = self._attach_patiently(60.0, lambda e: False)
        if error is not None and not self._stop.is_set():
            log.error("no worker will have this ghost: %s", error)
            self.failed = error
            self._stop.set()

    def _failover(self, exc: Exception, started: float) -> None:
        log.warning("clairvoyant %s did not answer: %s", self.clairvoyant, exc)
        deadline = started + self.cfg.switch_after_s
        while not self._stop.is_set():
            if time.monotonic() >= deadline:
                if self._attach_any("", [self.clairvoyant]) is None:
                    return
                deadline = time.monotonic() + 1.0
            try:  # the old clairvoyant may be back before the switch time
                rpc.call(self.clairvoyant, self.cfg.cookie, "ping", timeout=1.0)
                return
            except LeoronicError:
                self._stop.wait(0.5)  # pacing between reconnection attempts

    def _reconcile(self, assigned: set[tuple[str, int]], delivered: set[tuple[str, int]]) -> None:
        """Match what runs here with what the cluster says runs here (`assigned`; `delivered`:
        the claims this poll brought, not started yet). Kill runs it no longer assigns to us
        (deleted, or requeued after a lease). Give back attempts it assigns to us that we do
        not run and have not finished: claimed for us, but the poll that claimed them never
        answered (its clairvoyant died, or the answer came after we gave up on it), or
        claimed in an earlier life of this ghost. Our heartbeats keep such a claim alive, so
        without this the task would wait forever.

        Only an attempt unknown here in two answers in a row goes back: an answer may have
        been written just before the finish of a task that ended here was applied, while our
        report of it went through and was forgotten here (the release would be refused, as
        releases are fenced by the attempt, but it would be noise)."""
        with self.lock:
            stale = [k for k in self.state.running if k not in assigned]
            ended = {(task_id, attempt) for task_id, attempt, _ in self.state.finished} | {
                (task_id, attempt) for task_id, attempt, _ in self.state.unreleased}
            unknown = {k for k in assigned
                       if k not in self.state.running and k not in ended and k not in delivered}
            lost = sorted(unknown & self._unknown)
            self._unknown = unknown
        for key in stale:
            with self.lock:  # out of `running`, its resources still taken until it is gone
                spec = self.state.running.pop(key, None)
                if spec is None:  # it ended (or could not start) since `stale` was read
                    continue
                self.state.stopping[key] = spec

            def stopped(key: tuple[str, int] = key) -> None:
                with self.lock:
                    self._forget(key, self.state.stopping)
            self.executor.cancel(key, "no longer assigned to this ghost", stopped)
        for task_id, attempt in lost:
            log.warning("task %s attempt %d is assigned to this ghost, which does not run it: "
                        "giving it back", task_id, attempt)
            self._release(task_id, attempt, LOST_CLAIM)  # if it fails, the next poll retries

    def _release(self, task_id: str, attempt: int, reason: str) -> bool:
        """Give an attempt back to the queue through the clairvoyant; False if unreachable."""
        try:
            rpc.call(self.clairvoyant, self.cfg.cookie, "ghost_release", self.name, task_id,
                     attempt, reason, timeout=self.cfg.switch_after_s)
            return True
        except LeoronicError as exc:
            log.warning("could not release task %s: %s", task_id, exc)
            return False

    def _start(self, spec: TaskSpec, attempt: int) -> None:
        with self.lock:
            self.state.running[(spec.task_id, attempt)] = spec
            self.state.reserved = self.state.reserved + spec.needs
        self.executor.start(spec, attempt, self._report, self._crashed)

    def _forget(self, key: tuple[str, int], table: dict[tuple[str, int], TaskSpec] | None = None
                ) -> None:
        """Drop an attempt from `running` (or `table`) and free what it reserved (under lock)."""
        entry = (self.state.running if table is None else table).pop(key, None)
        if entry is not None:
            self.state.reserved = self.state.reserved - entry.needs

    def _report(self, task_id: str, attempt: int, outcome: Outcome) -> None:
        with self.lock:
            self._forget((task_id, attempt))
            self.state.finished.append((task_id, attempt, outcome))
        self._finished_event.set()
        self._slot_freed.set()

    def _crashed(self, task_id: str, attempt: int, reason: str) -> None:
        """Starting failed: release the task through the clairvoyant, as a worker would. If
        the clairvoyant cannot be reached (say it died while the ghost fetched the task's
        files from it), the release waits for the next clairvoyant that answers a poll: the
        task never ran, so it must not end as failed (it goes back to the queue, at the
        latest when the cluster's lease on this attempt runs out)."""
        log.error("task %s attempt %d could not run: %s", task_id, attempt, reason)
        with self.lock:
            self._forget((task_id, attempt))
            self.state.unreleased.append((task_id, attempt, reason))
        self._release_pending()  # now, if the clairvoyant answers
        self._slot_freed.set()

    def _release_pending(self) -> None:
        """Give back the attempts `_crashed` could not (a poll just went through)."""
        with self.lock:
            pending = list(self.state.unreleased)
        for task_id, attempt, reason in pending:
            if self._release(task_id, attempt, reason):
                with self.lock:
                    self.state.unreleased.remove((task_id, attempt, reason))

    def _prepare(self, spec: TaskSpec, workdir: str) -> str:
        """Fetch a starting task's files into the store and place them in its work dir. Stored
        files are not collected meanwhile: a file found in the store could otherwise go
        before it is placed (the start failed, and the task went back to the queue)."""
        if not spec.files:
            return spec.command
        with self._files_guard:
            self._preparing += 1
        try:
            refs = [FileRef(n, sha, size) for n, sha, size in spec.files]
            sources = [self.clairvoyant, *(w for w in self.workers if w != self.clairvoyant)]
            for ref in refs:
                if not self.store.has(ref.sha256):  # from the clairvoyant, else any worker
                    packing.fetch_from_any(self.store, sources, self.cfg.cookie, ref.sha256)
            mapping = place_files(self.store, workdir, refs, rename=spec.rename)
        finally:
            with self._files_guard:
                self._preparing -= 1
        return rewrite_command(spec.command, mapping) if spec.rename else spec.command

    # ----- served to clients -------------------------------------------------------------------


def _last_written(items: list[str]) -> float:
    """The newest modification time of some paths (0 for those already gone)."""
    times = [0.0]
    for path in items:
        with contextlib.suppress(FileNotFoundError):
            times.append(os.stat(path).st_mtime)
    return max(times)


def _list_files(files_dir: str) -> list[str]:
    out = []
    for root, _dirs, names in os.walk(files_dir):
        for n in names:
            out.append(os.path.relpath(os.path.join(root, n), files_dir))
    return out


def _advertise(bind: str, peers: Sequence[str]) -> str:
    from comrade.membership import advertise_address

    return advertise_address(bind, [p for p in peers if p and ":" in p])

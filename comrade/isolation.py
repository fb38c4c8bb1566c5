"""Isolated mode: the last box standing keeps working without a quorum.

Raft alone stops a minority. The original promised the opposite, so a worker that has had no
quorum for `isolation_s` forks its last replicated state into a private *shadow* `Queue` (the
same pure state machine), declares every other node lost in it, and keeps claiming and running
tasks against the shadow alone. Each result is appended (fsync'd) to
`$LEORONIC_HOME/isolated.results`, so it survives SIGKILL. When a quorum is back the results
are proposed as one `merge_isolated` operation (see Queue.merge_isolated for the rule) and the
file is cleared. `--on-isolation wait` turns this off.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from comrade import resources
from comrade.errors import ClusterError
from comrade.model import Outcome, TaskSpec
from comrade.queue import MAX_NODE_DEATHS, Queue
from comrade.scheduler import LocalFacts, plan

if TYPE_CHECKING:
    from comrade.node import Node

log = logging.getLogger(__name__)


class Isolation:
    """The shadow queue, its runners and the durable list of isolated results."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.path = os.path.join(node.cfg.home, "isolated.results")
        self.shadow: Queue | None = None
        self.since: float | None = None
        self.runners: set[tuple[str, int]] = set()
        self.lock = threading.RLock()  # the shadow is changed from the actor and runner threads
        self._tail_checked = False  # a torn last record (SIGKILL mid-write) was cut off

    @property
    def active(self) -> bool:
        """True while the node runs from its shadow queue."""
        return self.shadow is not None

    def enter(self, wall_now: float) -> None:
        """Fork the replicated state and start working alone."""
        with self.node.lock:
            snap = pickle.loads(pickle.dumps(self.node.consumer.queue.snapshot()))
        shadow = Queue.restore(snap)
        for name in list(shadow.nodes):
            if name != self.node.name:
                shadow.apply(("expire_node", name, None, MAX_NODE_DEATHS), wall_now)
        saved = load_results(self.path)  # of an earlier spell (this life's or the last) not merged
        if saved:
            shadow.apply(("merge_isolated", self.node.name, saved), wall_now)
        self._absorb_pending(shadow, wall_now)
        # Tasks the replicated state says run here: our runners keep them (same attempt).
        with self.lock:
            self.shadow = shadow
            self.since = wall_now
        log.warning("no quorum for %.0f s: entering isolated mode; running the queue's tasks "
                    "that fit this node from its own copy", self.node.cfg.isolation_s)

    def _absorb_pending(self, shadow: Queue, wall_now: float) -> None:
        """Results that ended here but are not committed (they go to the cluster once quorum
        is back): record them in the shadow, so those tasks are not run again here. Called on
        entering and on every step: a task started before the cut may end during it."""
        for (task_id, attempt), (outcome, _) in list(self.node._pending_finish.items()):
            shadow.apply(("finish", task_id, self.node.name, attempt, outcome), wall_now)  # fenced if done

    def step(self) -> None:
        """Reconcile and schedule against the shadow (a pass, on the executor's thread)."""
        with self.lock:
            self._step()

    def _step(self) -> None:
        shadow = self.shadow
        if shadow is None:
            return
        me = self.node.name
        now = time.time()
        self._absorb_pending(shadow, now)
        mine = sorted(shadow.running_on(me), key=lambda t: t.seq)
        running = [t.spec for t in mine if (t.spec.task_id, t.attempt) in self.runners]
        running += self.node.busy()
        waiting = [((t.spec.task_id, t.attempt), t.spec) for t in mine
                   if not self.node.handled((t.spec.task_id, t.attempt))]
        for key, spec in self.node.fitting(waiting, running):  # claimed ahead: wait their turn
            self._start(spec, key[1])
        if self.node.note or self.node.disk_note:
            return
        reserved = shadow.reserved(me)
        free = resources.free(self.node.probe, self.node.offer, reserved)
        local = LocalFacts(tags=self.node.local_tags, has_file=self.node._has_file)
        claims, _ = plan(shadow, me, free, local, waited=lambda _t: 1e9)
        for c in claims:
            if shadow.apply(("claim", c.task_id, me, c.attempt), now).ok:
                self._start(shadow.tasks[c.task_id].spec, c.attempt)

    def _start(self, spec: TaskSpec, attempt: int) -> None:
        self.runners.add((spec.task_id, attempt))
        self.node.start_runner(spec, attempt, self._report, self._crashed)

    def _report(self, task_id: str, attempt: int, outcome: Outcome) -> None:
        with self.lock:
            if not self._tail_checked:  # appended after a torn record, a result would be unread
                _cut_torn_tail(self.path)
                self._tail_checked = True
            with open(self.path, "ab") as f:
                pickle.dump((task_id, outcome.start, outcome), f)
                f.flush()
                os.fsync(f.fileno())
            if self.shadow is not None:  # record the finish before the runner is forgotten
                self.shadow.apply(("finish", task_id, self.node.name, attempt, outcome),
                                  time.time())
            self.runners.discard((task_id, attempt))
        self.node.wake()

    def _crashed(self, task_id: str, attempt: int, reason: str) -> None:
        self.node.supervisor.child_failed(f"isolated task {task_id}", reason)
        with self.lock:
            if self.shadow is not None:
                self.shadow.apply(("release", task_id, self.node.name, attempt, reason[:200],
                                   MAX_NODE_DEATHS),
                                  time.time())
            self.runners.discard((task_id, attempt))

    def leave(self) -> None:
        """Quorum is back: stop using the shadow; running isolated tasks finish and merge."""
        log.warning("quorum is back: leaving isolated mode after %.0f s",
                    time.time() - (self.since or time.time()))
        with self.lock:
            self.shadow = None
            self.since = None

    def merge(self, propose: Callable[[list[Any]], Any]) -> int:
        """Propose the saved isolated results; clear them once committed. Returns the count."""
        runs = load_results(self.path)
        if not runs:
            return 0
        try:
            propose([("merge_isolated", self.node.name, runs)])
        except ClusterError as exc:
            log.warning("could not merge %d isolated results yet: %s", len(runs), exc)
            return 0
        # Results appended after we read the file stay for the next merge. The lock keeps a
        # runner's `_report` from appending between this read and the replace (it would go
        # to the old file and be lost).
        with self.lock:
            remaining = load_results(self.path)[len(runs):]
            tmp = self.path + ".tmp"
            with open(tmp, "wb") as f:
                for run in remaining:
                    pickle.dump(run, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        log.info("merged %d isolated results into the replicated record", len(runs))
        return len(runs)


def load_results(path: str) -> list[tuple[str, float, Outcome]]:
    """Every complete record in the results file (a torn last record is ignored)."""
    return _read_results(path)[0]


def _read_results(path: str) -> tuple[list[tuple[str, float, Outcome]], int]:
    """The complete records and the offset where they end."""
    runs: list[tuple[str, float, Outcome]] = []
    end = 0
    try:
        with open(path, "rb") as f:
            while True:
                try:
                    run = pickle.load(f)
                except EOFError:
                    break
                except (pickle.UnpicklingError, ValueError, AttributeError, IndexError,
                        TypeError, KeyError, MemoryError, ImportError):
                    log.warning("%s: ignoring a torn record at its end", path)
                    break
                if not (isinstance(run, tuple) and len(run) == 3):
                    log.warning("%s: ignoring a malformed record at its end", path)
                    break
                runs.append(run)
                end = f.tell()
    except FileNotFoundError:
        pass
    return runs, end


def _cut_torn_tail(path: str) -> None:
    """Cut the file back to its last complete record (a SIGKILL may have torn the last)."""
    _, end = _read_results(path)
    try:
        if os.path.getsize(path) > end:
            log.warning("%s: cutting off a torn record at its end", path)
            os.truncate(path, end)
    except FileNotFoundError:
        pass

"""pysyncobj glue: the replicated queue and the proposer that batches operations into Raft.

`ReplicatedQueue.apply_ops` is the only replicated method; it only delegates to
`Queue.apply_batch`. Adding or renaming a replicated method shifts pysyncobj's method ids, so
any new one must carry a higher `ver`.

Threading: pysyncobj applies committed entries on its tick thread. Readers on other threads
take `ReplicatedQueue.lock`. The `on_applied` listener runs on the tick thread and must not
block (it only hands work to actors).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated

from comrade import raftmend
from comrade.errors import ClusterError
from comrade.model import Outcome, TaskSpec
from comrade.queue import Queue, Reply

log = logging.getLogger(__name__)

Listener = Callable[[Sequence[Any], list[Reply]], None]

#: Operations per Raft entry, at most.
MAX_BATCH = 2000
#: An entry closes before its operations pass about this many bytes (`op_bytes`); a single
#: propose bigger than that is split over several entries.
ENTRY_BYTES = 1 << 20
#: pysyncobj sends an entry at least this big in pieces, and (in 0.3.17) marks the last piece
#: by the length of the command instead of the pickled entry, which is longer: when the two
#: straddle a piece boundary the follower unpickles a truncated entry, its tick thread logs a
#: traceback and sleeps 50 ms, and the commit waits for the piece after. The default, 64 KiB,
#: made that happen for a 1,000-task submit and for every task with 64 KiB of random output.
#: Entries here stay well below this (ENTRY_BYTES), so each goes in one message.
APPEND_ENTRIES_BYTES = 4 << 20


class ReplicatedQueue(SyncObjConsumer):
    """The Queue as a pysyncobj consumer. Snapshots contain `Queue.snapshot()` only."""

    def __init__(self, on_applied: Listener | None = None) -> None:
        super().__init__()
        self.queue = Queue()
        self.lock = threading.RLock()
        self._on_applied = on_applied

    @replicated
    def apply_ops(self, ops: list[Any], now: float) -> list[Reply]:
        """Apply a batch of operations at time `now` (the proposer's clock)."""
        with self.lock:
            replies = self.queue.apply_batch(ops, now)
        if self._on_applied is not None:
            try:
                self._on_applied(ops, replies)
            except Exception:  # a listener bug must not wedge the tick thread
                log.exception("on_applied listener failed")
        return replies

    def _serialize(self) -> dict[str, Any]:
        with self.lock:
            return self.queue.snapshot()

    def _deserialize(self, data: dict[str, Any]) -> None:
        with self.lock:
            self.queue = Queue.restore(data)


def make_syncobj(
    self_addr: str,
    others: Sequence[str],
    consumer: ReplicatedQueue,
    raft_dir: str,
    password: str,
    on_state_changed: Callable[[int, int], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    sync: bool = True,
    bind: str | None = None,
) -> SyncObj:
    """Start pysyncobj with the settings we learned the hard way (see ARCHITECTURE.md);
    `sync`: each journal entry reaches the disk before it is acknowledged (raftmend);
    `bind`: HOST:PORT to listen on (None: every interface, at `self_addr`'s port)."""
    os.makedirs(raft_dir, exist_ok=True)
    raftmend.mend()
    raftmend.set_sync(sync)
    conf = SyncObjConf(
        journalFile=os.path.join(raft_dir, "journal"),
        fullDumpFile=os.path.join(raft_dir, "dump"),
        password=password,
        bindAddress=bind,  # pysyncobj listens on every interface without it
        appendEntriesUseBatch=False,
        appendEntriesBatchSizeBytes=APPEND_ENTRIES_BYTES,
        dynamicMembershipChange=True,
        leaderFallbackTimeout=3.0,
        raftMinTimeout=0.4,
        raftMaxTimeout=1.2,
        connectionTimeout=2.0,
        # A re-added worker whose address sorts higher must open the connections itself:
        # retry each second, not every 5 s, so it hears the leader before it disrupts it.
        connectionRetryTime=1.0,
        commandsWaitLeader=True,
        onStateChanged=on_state_changed,
        onReady=on_ready,  # once: this replica applied the log up to the leader's commit index
        logCompactionMinEntries=20000,
        logCompactionMinTime=300,
    )
    return SyncObj(self_addr, list(others), conf=conf, consumers=[consumer])


def last_log_index(syncobj: SyncObj) -> int:
    """The index of the last entry in this replica's Raft log (its journal, at start)."""
    return int(syncobj._SyncObj__raftLog[-1][1])  # pysyncobj keeps it private


def op_bytes(op: Any) -> int:
    """About how many bytes operation `op` adds to a Raft entry, on the safe side: output tails
    and commands dominate, and are counted twice (pysyncobj's own pickle protocol, which
    raftmend replaces, stored bytes of 128 and up in two)."""
    size = 200
    for arg in op[1:]:
        if isinstance(arg, Outcome):
            size += 2 * (len(arg.stdout_tail) + len(arg.stderr_tail))
        elif isinstance(arg, TaskSpec):
            size += 2 * (len(arg.command) + len(arg.conditions)) + 200 * len(arg.files)
    return size


Callback = Callable[[list[Reply] | None, int], None]


class _Pending:
    __slots__ = ("ops", "callback", "since", "urgent", "size")

    def __init__(self, ops: list[Any], callback: Callback, urgent: bool = False,
                 size: int = 0):
        self.ops = ops
        self.callback = callback
        self.since = time.monotonic()
        self.urgent = urgent
        self.size = size  # estimated bytes (op_bytes)


def _split(ops: list[Any]) -> list[tuple[list[Any], int]]:
    """`ops` in order, cut into (part, estimated bytes) of at most ENTRY_BYTES each (an
    operation bigger than that alone)."""
    parts: list[tuple[list[Any], int]] = []
    part: list[Any] = []
    size = 0
    for op in ops:
        n = op_bytes(op)
        if part and size + n > ENTRY_BYTES:
            parts.append((part, size))
            part, size = [], 0
        part.append(op)
        size += n
    parts.append((part, size))
    return parts


def _joined(count: int, callback: Callback) -> list[Callback]:
    """Callbacks for `count` parts of one proposal: `callback` runs once, after the last part
    is answered, with every part's replies in order, or None and the first error."""
    lock = threading.Lock()
    replies: list[list[Reply]] = [[] for _ in range(count)]
    left = [count]
    error: list[int] = []

    def part(index: int) -> Callback:
        def answered(result: list[Reply] | None, err: int) -> None:
            with lock:
                if result is None:
                    error.append(err)
                else:
                    replies[index] = result
                left[0] -= 1
                if left[0]:
                    return
            if error:
                callback(None, error[0])
            else:
                callback([r for rs in replies for r in rs], FAIL_REASON.SUCCESS)
        return answered

    return [part(i) for i in range(count)]


class Proposer:
    """Coalesces operations from many threads into few Raft entries.

    Each `propose` call is delivered in order inside one entry with whatever else is waiting
    (one bigger than ENTRY_BYTES, in consecutive entries); with nothing in flight it goes at
    once (low latency when idle), under load batches grow (high throughput). Under sustained
    load (at least `busy_ops` operations sent in the last `busy_window_s`) the next entry also
    waits until `linger_s` after the previous one: every entry costs a few Raft messages per
    follower whatever it carries, so a busy node sends at most one entry per `linger_s`, and
    each carries more. A lone request never waits.

    `callback(replies, error)` gets this call's replies, or None and a pysyncobj FAIL_REASON
    (or -1 for our own timeout): the outcome is then unknown and the caller retries with the
    same ids, which the state machine makes idempotent.
    """

    def __init__(
        self, consumer: ReplicatedQueue, max_in_flight: int = 4, answer_s: float = 4.0,
        linger_s: float = 0.05, busy_ops: int = 20, busy_window_s: float = 0.1,
    ) -> None:
        self._consumer = consumer
        self._max_in_flight = max_in_flight
        self._linger_s = linger_s
        self._busy_window_s = busy_window_s
        self._busy_ops = busy_ops
        self._sent: deque[tuple[float, int]] = deque()  # (monotonic, operations) of recent entries
        self._answer_s = answer_s  # an entry unanswered this long has an unknown outcome
        self._cv = threading.Condition()
        self._waiting: list[_Pending] = []
        self._waiting_ops = 0  # operations in _waiting, and their estimated bytes (_full)
        self._waiting_bytes = 0
        # The thread waits out a linger: a proposal that may wait too need not wake it (a
        # wake, and the thread's look at the queue, for each task's finish on a busy node).
        self._lingering = False
        self._in_flight: dict[int, tuple[float, Callable[[list[Reply] | None, int], None]]] = {}
        self._next_id = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="proposer", daemon=True)
        self._thread.start()

    def propose(
        self, ops: list[Any], callback: Callable[[list[Reply] | None, int], None] | None = None,
        urgent: bool = False,
    ) -> None:
        """Queue `ops` for the next Raft entry; never blocks. `urgent`: that entry does not
        linger (say, a claim for resources that are free now)."""
        parts = _split(list(ops))
        callbacks = _joined(len(parts), callback or _ignore) if len(parts) > 1 \
            else [callback or _ignore]
        with self._cv:
            for (part, size), answered in zip(parts, callbacks, strict=True):
                self._waiting.append(_Pending(part, answered, urgent, size))
                self._waiting_ops += len(part)
                self._waiting_bytes += size
            if urgent or not self._lingering or self._full():
                self._cv.notify()

    def propose_sync(self, ops: list[Any], timeout: float = 5.0) -> list[Reply]:
        """Propose and wait; raise ClusterError when the outcome is unknown after `timeout`.
        Urgent: someone (a client, a ghost) is waiting for the answer."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def cb(replies: list[Reply] | None, err: int) -> None:
            box["r"], box["e"] = replies, err
            done.set()

        self.propose(ops, cb, urgent=True)
        if not done.wait(timeout):
            raise ClusterError("no quorum: the cluster did not commit the change in time")
        if box["r"] is None:
            raise ClusterError(f"no quorum: {_reason(box['e'])}")
        replies: list[Reply] = box["r"]
        return replies

    def stop(self) -> None:
        """Stop sending; waiting callers get an error."""
        with self._cv:
            self._stopped = True
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and (
                    not self._waiting or len(self._in_flight) >= self._max_in_flight
                ):
                    self._cv.wait(timeout=0.5)
                    self._expire_overdue()
                linger = self._linger_left()
                if linger > 0 and not self._stopped:
                    self._lingering = True
                    self._cv.wait(timeout=linger)
                    self._lingering = False
                    continue
                if self._stopped:
                    waiting, self._waiting = self._waiting, []
                    self._waiting_ops = self._waiting_bytes = 0
                    for p in waiting:
                        p.callback(None, FAIL_REASON.REQUEST_DENIED)
                    return
                batch: list[_Pending] = []
                count = size = 0
                while self._waiting and (not batch or (
                        count + len(self._waiting[0].ops) <= MAX_BATCH
                        and size + self._waiting[0].size <= ENTRY_BYTES)):
                    p = self._waiting.pop(0)
                    self._waiting_ops -= len(p.ops)
                    self._waiting_bytes -= p.size
                    batch.append(p)
                    count += len(p.ops)
                    size += p.size
                self._next_id += 1
                entry_id = self._next_id
                self._sent.append((time.monotonic(), count))
            self._send(entry_id, batch)

    def _linger_left(self) -> float:
        """Seconds the next entry should still wait to carry more (called with the lock held):
        until `linger_s` after the previous entry, or until the node is no longer busy."""
        now = time.monotonic()
        sent = self._sent
        while sent and sent[0][0] < now - self._busy_window_s:
            sent.popleft()
        recent = sum(n for _, n in sent)
        if recent < self._busy_ops or self._full():
            return 0.0
        if any(p.urgent for p in self._waiting):
            return 0.0
        quiet_at = now
        for when, n in sent:  # busy until enough of the recent entries leave the window
            recent -= n
            if recent < self._busy_ops:
                quiet_at = when + self._busy_window_s
                break
        return min(self._linger_s - (now - sent[-1][0]), quiet_at - now)

    def _full(self) -> bool:
        """True if what waits fills an entry (called with the lock held)."""
        return self._waiting_ops >= MAX_BATCH or self._waiting_bytes >= ENTRY_BYTES

    def _expire_overdue(self) -> None:
        """Give up on entries unanswered for too long (called with the lock held)."""
        now = time.monotonic()
        for entry_id, (deadline, done) in list(self._in_flight.items()):
            if now > deadline:
                self._in_flight.pop(entry_id, None)
                threading.Thread(target=done, args=(None, -1), daemon=True).start()

    def _send(self, entry_id: int, batch: list[_Pending]) -> None:
        ops = [op for p in batch for op in p.ops]
        answered = threading.Lock()

        def done(result: list[Reply] | None, err: int) -> None:
            if not answered.acquire(blocking=False):
                return  # answered already (timed out, or pysyncobj answered twice)
            with self._cv:
                self._in_flight.pop(entry_id, None)
                self._cv.notify()
            start = 0
            for p in batch:
                n = len(p.ops)
                try:
                    if err == FAIL_REASON.SUCCESS and result is not None:
                        p.callback(result[start : start + n], 0)
                    else:
                        p.callback(None, err)
                except Exception:
                    log.exception("proposal callback failed")
                start += n

        with self._cv:
            self._in_flight[entry_id] = (time.monotonic() + self._answer_s, done)
        try:
            self._consumer.apply_ops(ops, time.time(), callback=done)
        except Exception as exc:  # pysyncobj raises if the queue is full or it is stopping
            log.warning("could not propose %d operations: %s", len(ops), exc)
            done(None, FAIL_REASON.QUEUE_FULL)


def _ignore(replies: list[Reply] | None, err: int) -> None:
    return None


def _reason(err: int) -> str:
    names = {
        -1: "no answer in time (no leader, or no majority reachable)",
        FAIL_REASON.QUEUE_FULL: "command queue full",
        FAIL_REASON.MISSING_LEADER: "no leader (election in progress or no majority reachable)",
        FAIL_REASON.DISCARDED: "discarded by a new leader",
        FAIL_REASON.NOT_LEADER: "leader changed before commit",
        FAIL_REASON.LEADER_CHANGED: "leader changed before commit",
        FAIL_REASON.REQUEST_DENIED: "request denied (node stopping)",
        FAIL_REASON.UNKNOWN_OUTCOME: "unknown outcome",
    }
    return names.get(err, f"error {err}")

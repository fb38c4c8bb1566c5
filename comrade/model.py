"""Plain data records of the replicated queue: task specs, attempts, results, nodes.

Everything here is small, immutable where it can be, and picklable: it is what every Raft
snapshot contains. No I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from typing import Any

#: Bytes of stdout and of stderr kept in the replicated record of a finished attempt.
TAIL_BYTES = 64 * 1024
#: The most output-tail bytes the replicated queue keeps over all finished tasks (on every
#: node). Beyond it the oldest finished tasks' tails are dropped from their records; their full
#: output stays in files on the node that ran them, where `leoronic_result` reads it.
TAILS_BUDGET = 64 * 1024 * 1024
#: The longest time limit a task may have (a year; 0 means none).
MAX_TIME_LIMIT_S = 365 * 86400.0
#: The range of task priorities (higher runs first; 0 by default), as HyperQueue's i32.
MIN_PRIORITY, MAX_PRIORITY = -(2**31), 2**31 - 1


#: The states, as `tasks` and `wait_tasks` report them, after which a task will not change:
#: "unknown" is a task whose record was forgotten (or never existed).
WAIT_OVER = ("done", "failed", "deleted", "unknown")


class State(StrEnum):
    """Where a task is in its life."""

    QUEUED = "queued"  # waiting for a node (or for its conditions)
    RUNNING = "running"  # claimed by one node under one attempt number
    DONE = "done"  # final: exited 0
    FAILED = "failed"  # final: exited non-zero with no retries left, or could never run
    DELETED = "deleted"  # final: removed by the user (a tombstone: spec kept, output dropped)

    @property
    def final(self) -> bool:
        """True for the states a task never leaves."""
        return self in (State.DONE, State.FAILED, State.DELETED)


@dataclass(frozen=True)
class Resources:
    """An amount of memory (bytes), cores and disk (bytes)."""

    memory: int = 0
    cores: int = 0
    storage: int = 0

    def fits_in(self, other: Resources) -> bool:
        """True when every field of self is at most the same field of other."""
        return (
            self.memory <= other.memory
            and self.cores <= other.cores
            and self.storage <= other.storage
        )

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.memory + other.memory, self.cores + other.cores, self.storage + other.storage
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.memory - other.memory, self.cores - other.cores, self.storage - other.storage
        )


@dataclass(frozen=True)
class TaskSpec:
    """What a client asked for. Chosen entirely by the client, so a retried submit is identical."""

    task_id: str
    memory: int  # bytes of free memory the task needs
    cores: int
    storage: int  # bytes of free disk in the work dir, necessary files not included
    concurrent: bool  # False: nothing else runs on the node at the same time
    conditions: str  # the condition string as typed ("" for none)
    files: tuple[tuple[str, str, int], ...]  # (name as written, sha256 hex, size bytes)
    command: str
    retries: int = 0  # extra attempts after a non-zero exit
    rename: bool = True  # rename necessary files and rewrite the command
    time_limit: float = 0.0  # seconds an attempt may run before it is stopped; 0: no limit
    priority: int = 0  # as submitted: among ready tasks a higher one is dealt first
    held: bool = False  # submitted on hold: it waits until `leoronic release`

    @cached_property
    def needs(self) -> Resources:
        """Resources the task reserves while it runs; storage includes its necessary files.
        (Computed once per object: the spec is immutable and the scheduler asks often.)"""
        return Resources(self.memory, self.cores, self.storage + sum(f[2] for f in self.files))

    def __getstate__(self) -> dict[str, Any]:
        """What pickling keeps (Raft entries, snapshots, RPCs): the fields, without `needs`
        once it is cached, which the node that takes a submit computes before replicating
        it (a fifth more bytes per task in every entry, journal and snapshot)."""
        state = self.__dict__
        if "needs" not in state:
            return state
        return {k: v for k, v in state.items() if k != "needs"}


def format_duration(seconds: float) -> str:
    """A duration as a person writes it: 90s, 15m, 2h, 1d; 1.5s, 100s, 36h."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Attempt:
    """One run of a task on one node. `why` says how it ended."""

    number: int
    node: str
    start: float
    end: float | None = None
    exit_code: int | None = None
    why: str = ""  # "exit", "node lost", "node left", "deleted", "released: <reason>"
    # False: it ended with its work dir empty, and its node reused that dir (its outcome's
    # workdir_kept, kept here too: a retry's outcome replaces the task's). A record from
    # before this field reads True.
    workdir_kept: bool = True


@dataclass(frozen=True)
class Outcome:
    """The replicated result of a finished attempt."""

    exit_code: int
    start: float
    end: float
    stdout_tail: bytes = b""
    stderr_tail: bytes = b""
    stdout_bytes: int = 0  # full size of the output kept on the node
    stderr_bytes: int = 0
    tails_dropped: bool = False  # the queue dropped the tails to stay within TAILS_BUDGET
    timed_out: bool = False  # stopped by its node when it ran out of its spec's time_limit
    # What the task's process used, with the children it waited for (wait4's rusage; a record
    # from before these fields, or a task whose usage is unknown, reads 0):
    cpu_s: float = 0.0  # user + system CPU seconds
    max_rss: int = 0  # peak resident memory in bytes of the largest of those processes
    # False: max_rss is only an upper bound. The kernel counts the memory of the process that
    # started the task (the node, at its spawn) in the task's peak, so a peak no bigger than
    # the node's own says only "at most this much".
    max_rss_exact: bool = False
    # False: the work dir was empty when the attempt ended and was reused by a later attempt
    # (comrade.spares), so there is nothing to fetch. A record from before this field reads True.
    workdir_kept: bool = True


#: How the reasons a queued task shows begin: held by the queue itself (a task whose nodes keep
#: dying, `Queue._hold_after_node_deaths`), and waiting for what only an operator can give
#: (`Queue.waiting_note`). `leoronic_get_queue` shows such a reason; a release clears HELD_.
HELD_ = "held: "
WAITING_ = "waiting: "


@dataclass
class Task:
    """The replicated record of one task. Mutated only by the Queue state machine."""

    spec: TaskSpec
    seq: int  # submit order (Raft log order); unique and increasing
    submitted: float
    state: State = State.QUEUED
    attempt: int = 0  # number of the current (or last) attempt; 0 before the first claim
    node: str | None = None  # node of the current (or last) attempt
    attempts: list[Attempt] = field(default_factory=list)
    outcome: Outcome | None = None
    reason: str = ""  # why it failed without running, or why it is waiting (HELD_, WAITING_)
    failed_on: tuple[str, ...] = ()  # nodes where it exited non-zero (retries prefer others)
    retries_left: int = 0
    priority: int = 0  # the spec's, until `leoronic priority` changes it
    held: bool = False  # queued but not to be started until released (`leoronic hold`)

    def summary(self) -> Task:
        """A copy safe to hand to readers outside the state machine's lock."""
        return replace(self, attempts=list(self.attempts))


@dataclass(frozen=True)
class NodeInfo:
    """A node as it announced itself when it joined. Replicated."""

    name: str
    kind: str  # "worker" or "ghost"
    rpc: str  # HOST:PORT clients and ghosts talk to
    raft: str  # HOST:PORT of its Raft endpoint ("" for ghosts)
    offered: Resources  # the most this node will ever offer
    tags: frozenset[str] = frozenset()
    clairvoyant: str = ""  # for a ghost: the worker relaying for it
    pid: int = 0
    protocol: int = 0  # the state machine version it runs (0: before versions were announced)


@dataclass
class NodeState:
    """A node's replicated status."""

    info: NodeInfo
    tags: set[str]
    alive: bool = True
    last_seen: float = 0.0  # proposer's clock at its last heartbeat
    lost_since: float | None = None  # when it was declared lost or left
    free: Resources = Resources()  # last reported free resources
    note: str = ""  # e.g. "disk full: not claiming"
    draining: bool = False  # takes no new task (`leoronic drain`); what runs there goes on

    @property
    def takes_work(self) -> bool:
        """True when new tasks may be claimed for this node: it is alive and not draining."""
        return self.alive and not self.draining

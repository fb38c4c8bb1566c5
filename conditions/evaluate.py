"""Evaluate parsed conditions against facts about the queue and a worker.

Pure: no I/O, no clock, no randomness. The caller supplies the facts through
the small :class:`QueueView` and :class:`WorkerFacts` protocols.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from .parse import Condition
from .pattern import PatternError, compile_pattern

__all__ = [
    "READY",
    "Outcome",
    "QueueView",
    "Status",
    "TaskFacts",
    "Verdict",
    "WorkerFacts",
    "evaluate",
    "evaluate_queue",
    "evaluate_worker",
]


class Outcome(StrEnum):
    """Where a task stands: PENDING (queued or running) or finished (the rest)."""

    PENDING = "pending"
    OK = "ok"
    FAILED = "failed"
    DELETED = "deleted"

    @property
    def finished(self) -> bool:
        """True for OK, FAILED and DELETED."""
        return self is not Outcome.PENDING


@dataclass(frozen=True)
class TaskFacts:
    """What the evaluator needs to know about one task."""

    task_id: str
    seq: int
    command: str
    outcome: Outcome


class QueueView(Protocol):
    """Read-only view of the task queue used by queue-scope conditions."""

    def task(self, task_id: str) -> TaskFacts | None:
        """Return the facts of task ``task_id``, or None if it is unknown."""
        ...

    def unfinished_before(self, seq: int) -> bool:
        """Tell whether any PENDING task has a submit sequence number below ``seq``."""
        ...

    def tasks_before(self, seq: int) -> Iterable[TaskFacts]:
        """Return every known task with sequence number below ``seq`` (deleted included)."""
        ...


class WorkerFacts(Protocol):
    """What the evaluator needs to know about a worker node."""

    @property
    def tags(self) -> AbstractSet[str]:
        """The tags the node carries."""
        ...

    def has_file(self, name: str) -> bool:
        """Tell whether ``name`` exists in the node's leoronic files directory."""
        ...


class Status(StrEnum):
    """Whether a task may run: now, maybe later, or never."""

    READY = "ready"
    WAIT = "wait"
    NEVER = "never"


_STRENGTH: dict[Status, int] = {Status.READY: 0, Status.WAIT: 1, Status.NEVER: 2}


@dataclass(frozen=True)
class Verdict:
    """The result of evaluating conditions; ``reason`` is "" when READY."""

    status: Status
    reason: str = ""


READY = Verdict(Status.READY, "")


def evaluate_queue(conds: Iterable[Condition], seq: int, view: QueueView) -> Verdict:
    """Evaluate the queue-scope conditions in ``conds`` for the task with ``seq``.

    Worker-scope conditions are ignored.
    """
    return _combine(_check_queue(c, seq, view) for c in conds if c.scope == "queue")


def evaluate_worker(conds: Iterable[Condition], worker: WorkerFacts) -> Verdict:
    """Evaluate the worker-scope conditions in ``conds`` against ``worker``.

    Queue-scope conditions are ignored. The answer is READY or WAIT, never
    NEVER: a tag or file may be added to the node later.
    """
    return _combine(_check_worker(c, worker) for c in conds if c.scope == "worker")


def evaluate(conds: Iterable[Condition], seq: int, view: QueueView, worker: WorkerFacts) -> Verdict:
    """Evaluate all conditions; NEVER beats WAIT beats READY.

    The reason is that of the first condition (in the given order) with the
    strongest status.
    """
    return _combine(_check(c, seq, view, worker) for c in conds)


def _combine(verdicts: Iterable[Verdict]) -> Verdict:
    """Return the first verdict of the strongest status, or READY if there is none."""
    best = READY
    for verdict in verdicts:
        if _STRENGTH[verdict.status] > _STRENGTH[best.status]:
            best = verdict
            if verdict.status is Status.NEVER:
                break
    return best


def _check(cond: Condition, seq: int, view: QueueView, worker: WorkerFacts) -> Verdict:
    """Evaluate one condition of either scope."""
    if cond.scope == "queue":
        return _check_queue(cond, seq, view)
    if cond.scope == "worker":
        return _check_worker(cond, worker)
    return _never(f"unsupported condition '{cond}'")


def _wait(reason: str) -> Verdict:
    """Build a WAIT verdict."""
    return Verdict(Status.WAIT, reason)


def _never(reason: str) -> Verdict:
    """Build a NEVER verdict."""
    return Verdict(Status.NEVER, reason)


def _failed_word(outcome: Outcome) -> str:
    """Describe a finished, unsuccessful outcome for a reason string."""
    return "was deleted" if outcome is Outcome.DELETED else "failed"


def _check_queue(cond: Condition, seq: int, view: QueueView) -> Verdict:
    """Evaluate one queue-scope condition."""
    pred, arg = cond.predicate, cond.argument
    if pred == "is_first" and arg is None:
        if view.unfinished_before(seq):
            return _wait(f"waiting for earlier tasks to finish ({cond})")
        return READY
    if pred in ("after", "after_ok") and arg is not None:
        return _check_after(cond, arg, view)
    if pred in ("all_with_cmd_done", "all_with_cmd_ok") and arg is not None:
        return _check_all_with_cmd(cond, arg, seq, view)
    return _never(f"unsupported condition '{cond}'")


def _check_after(cond: Condition, task_id: str, view: QueueView) -> Verdict:
    """Evaluate ``queue:after ID`` or ``queue:after_ok ID``."""
    facts = view.task(task_id)
    if facts is None:
        return _never(f"unknown task '{task_id}'")
    if not facts.outcome.finished:
        return _wait(f"waiting for task '{task_id}' ({cond})")
    if cond.predicate == "after_ok" and facts.outcome is not Outcome.OK:
        return _never(f"task '{task_id}' {_failed_word(facts.outcome)} ({cond})")
    return READY


def _check_all_with_cmd(cond: Condition, pattern: str, seq: int, view: QueueView) -> Verdict:
    """Evaluate ``queue:all_with_cmd_done REGEX`` or ``queue:all_with_cmd_ok REGEX``.

    Only tasks submitted before ``seq`` count. When several tasks block, the
    reason names the earliest submitted one.
    """
    try:
        regex = compile_pattern(pattern)
    except PatternError as exc:  # refused at submit; possible in a journal from before RE2
        return _never(f"invalid regular expression '{pattern}': {exc} ({cond})")
    need_ok = cond.predicate == "all_with_cmd_ok"
    pending: TaskFacts | None = None
    bad: TaskFacts | None = None
    for facts in view.tasks_before(seq):
        if facts.seq >= seq or not regex.search(facts.command):
            continue
        if not facts.outcome.finished:
            if pending is None or facts.seq < pending.seq:
                pending = facts
        elif need_ok and facts.outcome is not Outcome.OK:
            if bad is None or facts.seq < bad.seq:
                bad = facts
    if bad is not None:
        return _never(f"task '{bad.task_id}' {_failed_word(bad.outcome)} ({cond})")
    if pending is not None:
        return _wait(f"waiting for task '{pending.task_id}' ({cond})")
    return READY


def _check_worker(cond: Condition, worker: WorkerFacts) -> Verdict:
    """Evaluate one worker-scope condition; the answer is READY or WAIT."""
    pred, arg = cond.predicate, cond.argument
    if pred == "tag" and arg is not None:
        return READY if arg in worker.tags else _wait(f"needs tag '{arg}'")
    if pred == "has_file" and arg is not None:
        return READY if worker.has_file(arg) else _wait(f"needs file '{arg}'")
    return _wait(f"unsupported condition '{cond}'")

"""Tests for conditions.evaluate against a small in-memory queue."""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from conditions import (
    READY,
    Condition,
    Outcome,
    Status,
    TaskFacts,
    Verdict,
    evaluate,
    evaluate_queue,
    evaluate_worker,
    parse,
)

P, OK, FAILED, DELETED = Outcome.PENDING, Outcome.OK, Outcome.FAILED, Outcome.DELETED


class DictQueue:
    """A QueueView over a dict of TaskFacts keyed by task id."""

    def __init__(self, tasks: Iterable[TaskFacts]) -> None:
        """Index ``tasks`` by id."""
        self.tasks = {t.task_id: t for t in tasks}

    def task(self, task_id: str) -> TaskFacts | None:
        """Return the task with ``task_id`` or None."""
        return self.tasks.get(task_id)

    def unfinished_before(self, seq: int) -> bool:
        """Tell whether a PENDING task precedes ``seq``."""
        return any(t.seq < seq and t.outcome is P for t in self.tasks.values())

    def tasks_before(self, seq: int) -> Iterable[TaskFacts]:
        """Return the tasks preceding ``seq``, newest first (order must not matter)."""
        return sorted((t for t in self.tasks.values() if t.seq < seq), key=lambda t: -t.seq)


@dataclass(frozen=True)
class Node:
    """A WorkerFacts with fixed tags and files."""

    tags: frozenset[str] = frozenset()
    files: frozenset[str] = field(default_factory=frozenset)

    def has_file(self, name: str) -> bool:
        """Tell whether the node has file ``name``."""
        return name in self.files


def _queue(*rows: tuple[str, str, Outcome]) -> DictQueue:
    """Build a queue from (id, command, outcome) rows, numbered in order from 1."""
    return DictQueue(TaskFacts(tid, i, cmd, out) for i, (tid, cmd, out) in enumerate(rows, 1))


# The task being evaluated has seq 10; tasks 1..9 precede it, 11+ follow it.
SEQ = 10


def _q(rows: list[tuple[str, str, Outcome]], later: list[tuple[str, str, Outcome]]) -> DictQueue:
    """Build a queue with ``rows`` before SEQ and ``later`` after it."""
    before = [TaskFacts(tid, i, cmd, out) for i, (tid, cmd, out) in enumerate(rows, 1)]
    after = [TaskFacts(tid, SEQ + i, cmd, out) for i, (tid, cmd, out) in enumerate(later, 1)]
    return DictQueue(before + after)


W = Status.WAIT
N = Status.NEVER
R = Status.READY

QUEUE_CASES: list[tuple[str, DictQueue, Verdict]] = [
    # no conditions
    ("", _q([], []), READY),
    # is_first
    ("queue:is_first", _q([], []), READY),
    ("queue:is_first", _q([("a", "x", OK), ("b", "y", FAILED), ("c", "z", DELETED)], []), READY),
    (
        "queue:is_first",
        _q([("a", "x", OK), ("b", "y", P)], []),
        Verdict(W, "waiting for earlier tasks to finish (queue:is_first)"),
    ),
    ("queue:is_first", _q([("a", "x", OK)], [("later", "x", P)]), READY),
    # after
    (
        "queue:after a1",
        _q([("a1", "x", P)], []),
        Verdict(W, "waiting for task 'a1' (queue:after a1)"),
    ),
    ("queue:after a1", _q([("a1", "x", OK)], []), READY),
    ("queue:after a1", _q([("a1", "x", FAILED)], []), READY),
    ("queue:after a1", _q([("a1", "x", DELETED)], []), READY),
    ("queue:after zz", _q([("a1", "x", OK)], []), Verdict(N, "unknown task 'zz'")),
    # after_ok
    (
        "queue:after_ok a1",
        _q([("a1", "x", P)], []),
        Verdict(W, "waiting for task 'a1' (queue:after_ok a1)"),
    ),
    ("queue:after_ok a1", _q([("a1", "x", OK)], []), READY),
    (
        "queue:after_ok a1",
        _q([("a1", "x", FAILED)], []),
        Verdict(N, "task 'a1' failed (queue:after_ok a1)"),
    ),
    (
        "queue:after_ok a1",
        _q([("a1", "x", DELETED)], []),
        Verdict(N, "task 'a1' was deleted (queue:after_ok a1)"),
    ),
    ("queue:after_ok zz", _q([], []), Verdict(N, "unknown task 'zz'")),
    # all_with_cmd_done
    ("queue:all_with_cmd_done ^make", _q([], []), READY),
    (
        "queue:all_with_cmd_done ^make",
        _q([("a", "make all", OK), ("b", "make x", FAILED)], []),
        READY,
    ),
    ("queue:all_with_cmd_done ^make", _q([("a", "make", DELETED), ("b", "ls", P)], []), READY),
    (
        "queue:all_with_cmd_done ^make",
        _q([("a", "make", OK), ("b", "make test", P), ("c", "make doc", P)], []),
        Verdict(W, "waiting for task 'b' (queue:all_with_cmd_done ^make)"),
    ),
    # re.search, not re.match
    (
        "queue:all_with_cmd_done train",
        _q([("a", "python train.py", P)], []),
        Verdict(W, "waiting for task 'a' (queue:all_with_cmd_done train)"),
    ),
    # later-submitted matching tasks never count
    ("queue:all_with_cmd_done ^make", _q([("a", "make", OK)], [("b", "make", P)]), READY),
    # all_with_cmd_ok
    ("queue:all_with_cmd_ok ^make", _q([], []), READY),
    ("queue:all_with_cmd_ok ^make", _q([("a", "make", OK), ("b", "ls", FAILED)], []), READY),
    (
        "queue:all_with_cmd_ok ^make",
        _q([("a", "make", OK), ("b", "make t", P)], []),
        Verdict(W, "waiting for task 'b' (queue:all_with_cmd_ok ^make)"),
    ),
    (
        "queue:all_with_cmd_ok ^make",
        _q([("a", "make", P), ("b", "make t", FAILED), ("c", "make u", FAILED)], []),
        Verdict(N, "task 'b' failed (queue:all_with_cmd_ok ^make)"),
    ),
    (
        "queue:all_with_cmd_ok ^make",
        _q([("a", "make", DELETED), ("b", "make t", P)], []),
        Verdict(N, "task 'a' was deleted (queue:all_with_cmd_ok ^make)"),
    ),
    (
        "queue:all_with_cmd_ok ^make",
        _q([("a", "make", OK)], [("b", "make", FAILED), ("c", "make", P)]),
        READY,
    ),
    # regex argument with spaces and special characters
    (
        "queue:all_with_cmd_ok python (train|eval)\\.py --n \\d+",
        _q([("a", "python train.py --n 3", P), ("b", "python eval.py --n x", FAILED)], []),
        Verdict(
            W, "waiting for task 'a' (queue:all_with_cmd_ok python (train|eval)\\.py --n \\d+)"
        ),
    ),
    # combination: NEVER beats WAIT beats READY; first reason of the strongest
    (
        "queue:after a; queue:after b; queue:after_ok c; queue:after_ok d",
        _q([("a", "x", OK), ("b", "x", P), ("c", "x", FAILED), ("d", "x", DELETED)], []),
        Verdict(N, "task 'c' failed (queue:after_ok c)"),
    ),
    (
        "queue:after a; queue:is_first; queue:after b",
        _q([("a", "x", OK), ("b", "x", P)], []),
        Verdict(W, "waiting for earlier tasks to finish (queue:is_first)"),
    ),
    # worker conditions are ignored by evaluate_queue
    ("worker:tag gpu; worker:has_file f; queue:after a", _q([("a", "x", OK)], []), READY),
]


@pytest.mark.parametrize(("text", "view", "expected"), QUEUE_CASES)
def test_evaluate_queue(text: str, view: DictQueue, expected: Verdict) -> None:
    """Queue-scope conditions give the expected verdict."""
    assert evaluate_queue(parse(text), SEQ, view) == expected


NODE = Node(tags=frozenset({"gpu", "big"}), files=frozenset({"x.txt", "data/in put.csv"}))

WORKER_CASES: list[tuple[str, Node, Verdict]] = [
    ("", NODE, READY),
    ("worker:tag gpu", NODE, READY),
    ("worker:tag gpu; worker:tag big", NODE, READY),
    ("worker:tag tpu", NODE, Verdict(W, "needs tag 'tpu'")),
    ("worker:tag gpu", Node(), Verdict(W, "needs tag 'gpu'")),
    ("worker:has_file x.txt", NODE, READY),
    ("worker:has_file data/in put.csv", NODE, READY),
    ("worker:has_file y.txt", NODE, Verdict(W, "needs file 'y.txt'")),
    ("worker:has_file z; worker:tag tpu", NODE, Verdict(W, "needs file 'z'")),
    ("worker:tag tpu; worker:has_file z", NODE, Verdict(W, "needs tag 'tpu'")),
    # queue conditions are ignored by evaluate_worker
    ("queue:after nowhere; queue:is_first; worker:tag gpu", NODE, READY),
]


@pytest.mark.parametrize(("text", "node", "expected"), WORKER_CASES)
def test_evaluate_worker(text: str, node: Node, expected: Verdict) -> None:
    """Worker-scope conditions give READY or WAIT, never NEVER."""
    verdict = evaluate_worker(parse(text), node)
    assert verdict == expected
    assert verdict.status is not Status.NEVER


def test_worker_tags_may_be_a_plain_set() -> None:
    """Any set-like tags attribute works."""

    class Mutable:
        """A worker whose tags are a mutable set."""

        def __init__(self) -> None:
            """Start with one tag."""
            self.tags = {"gpu"}

        def has_file(self, name: str) -> bool:
            """No files."""
            return False

    assert evaluate_worker(parse("worker:tag gpu"), Mutable()) == READY


COMBINED_CASES: list[tuple[str, Verdict]] = [
    ("", READY),
    ("queue:after a; worker:tag gpu", READY),
    ("worker:tag tpu; queue:after_ok c", Verdict(N, "task 'c' failed (queue:after_ok c)")),
    ("queue:after_ok c; worker:tag tpu", Verdict(N, "task 'c' failed (queue:after_ok c)")),
    ("worker:tag tpu; queue:after b", Verdict(W, "needs tag 'tpu'")),
    ("queue:after b; worker:tag tpu", Verdict(W, "waiting for task 'b' (queue:after b)")),
    ("queue:after a; worker:has_file nope", Verdict(W, "needs file 'nope'")),
    ("queue:after zz; worker:tag tpu", Verdict(N, "unknown task 'zz'")),
]


@pytest.mark.parametrize(("text", "expected"), COMBINED_CASES)
def test_evaluate_combined(text: str, expected: Verdict) -> None:
    """evaluate: NEVER beats WAIT beats READY, first reason of the strongest wins."""
    view = _q([("a", "x", OK), ("b", "x", P), ("c", "x", FAILED)], [])
    assert evaluate(parse(text), SEQ, view, NODE) == expected


def test_ready_reason_is_empty() -> None:
    """A READY verdict carries no reason."""
    assert READY == Verdict(Status.READY, "")
    assert evaluate((), SEQ, _q([], []), NODE).reason == ""


def test_tasks_in_iteration_order_do_not_matter() -> None:
    """The blocking task named is the earliest submitted, whatever the view's order."""
    view = _queue(("a", "make", OK), ("b", "make 1", P), ("c", "make 2", P))
    verdict = evaluate_queue(parse("queue:all_with_cmd_done make"), SEQ, view)
    assert verdict == Verdict(W, "waiting for task 'b' (queue:all_with_cmd_done make)")


def test_evaluate_is_total_for_odd_conditions() -> None:
    """Hand-built conditions that parse would reject never make evaluate raise."""
    view, node = _q([], []), Node()
    odd = (
        Condition("queue", "all_with_cmd_ok", "("),
        Condition("queue", "after", None),
        Condition("queue", "bogus", "x"),
        Condition("cluster", "x", None),
    )
    for cond in odd:
        assert evaluate((cond,), SEQ, view, node).status is Status.NEVER
    assert evaluate_worker((Condition("worker", "bogus", None),), node).status is Status.WAIT


def test_a_backtracking_pattern_takes_linear_time() -> None:
    """`(a+)+$` against 40 a's and a '!' takes Python's `re` days; RE2 (google-re2)
    microseconds. A condition runs on every replica's Raft thread and again on replay."""
    import time

    view = _queue(("a", "a" * 40 + "!", P), ("b", "a" * 100_000, P))
    started = time.process_time()
    verdict = evaluate_queue(parse("queue:all_with_cmd_done (a+)+$"), SEQ, view)
    assert verdict == Verdict(W, "waiting for task 'b' (queue:all_with_cmd_done (a+)+$)")
    assert time.process_time() - started < 1.0


def test_a_pattern_re2_refuses_in_an_old_record_can_never_hold() -> None:
    """A journal from before RE2 may hold a lookaround `re` accepted: never, not a raise."""
    cond = Condition("queue", "all_with_cmd_done", "make(?!-test)")
    verdict = evaluate_queue((cond,), SEQ, _queue(("a", "make", OK)))
    assert verdict.status is Status.NEVER
    assert verdict.reason.startswith("invalid regular expression 'make(?!-test)': invalid perl")


def test_data_types_pickle() -> None:
    """Facts, outcomes and verdicts survive pickling and compare as strings."""
    facts = TaskFacts("a", 1, "make", Outcome.FAILED)
    verdict = Verdict(Status.NEVER, "why")
    assert pickle.loads(pickle.dumps(facts)) == facts
    assert pickle.loads(pickle.dumps(verdict)) == verdict
    assert Outcome("ok") is Outcome.OK and Outcome.OK == "ok"
    assert Status("wait") is Status.WAIT and Status.NEVER == "never"
    assert not Outcome.PENDING.finished
    assert all(o.finished for o in (Outcome.OK, Outcome.FAILED, Outcome.DELETED))


def test_queue_helper() -> None:
    """_queue numbers rows from 1 in order (sanity check of the test helper)."""
    view = _queue(("a", "x", OK), ("b", "y", P))
    assert [t.seq for t in sorted(view.tasks.values(), key=lambda t: t.seq)] == [1, 2]
    assert view.unfinished_before(3) and not view.unfinished_before(2)

"""Proposer: operations from many callers go into few Raft entries, in order, exactly once; a
lone request goes at once, a busy node lingers so each entry carries more."""

from __future__ import annotations

import pickle
import threading
import time
from typing import Any

import pytest
from pysyncobj import FAIL_REASON

from comrade.model import Outcome, TaskSpec
from comrade.queue import Reply
from comrade.replication import APPEND_ENTRIES_BYTES, ENTRY_BYTES, MAX_BATCH, Proposer, op_bytes
from tests.cluster import wait_for


class FakeRaft:
    """Stands in for the ReplicatedQueue: commits every entry at once, recording it."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, list[Any]]] = []
        self.lock = threading.Lock()

    def apply_ops(self, ops: list[Any], now: float, callback: Any) -> None:
        with self.lock:
            self.entries.append((time.monotonic(), list(ops)))
        callback([Reply(True, f"ok {op[1]}") for op in ops], FAIL_REASON.SUCCESS)


def make(linger_s: float = 0.1, busy_ops: int = 10,
         busy_window_s: float = 0.2) -> tuple[FakeRaft, Proposer]:
    raft = FakeRaft()
    return raft, Proposer(raft, linger_s=linger_s, busy_ops=busy_ops,  # type: ignore[arg-type]
                          busy_window_s=busy_window_s)


def seconds_to_answer_when_busy(p: Proposer, urgent: bool) -> float:
    """Make `p` busy (10 operations at once), then time one more operation's answer."""
    p.propose_sync([("op", i) for i in range(10)], timeout=5.0)
    done = threading.Event()
    t0 = time.monotonic()
    p.propose([("op", "next")], lambda replies, err: done.set(), urgent=urgent)
    assert done.wait(10.0)
    return time.monotonic() - t0


def test_a_lone_request_does_not_linger() -> None:
    raft, p = make(linger_s=2.0)
    try:
        t0 = time.monotonic()
        assert p.propose_sync([("op", 1)], timeout=5.0) == [Reply(True, "ok 1")]
        assert time.monotonic() - t0 < 1.0
    finally:
        p.stop()


def test_a_busy_node_sends_fewer_bigger_entries_in_order() -> None:
    raft, p = make(linger_s=0.1, busy_ops=10)
    got: list[Reply] = []
    done = threading.Event()
    n = 60

    def collect(replies: list[Reply] | None, err: int) -> None:
        assert replies is not None, err
        got.extend(replies)
        if len(got) == n:
            done.set()

    try:
        t0 = time.monotonic()
        for i in range(n):
            p.propose([("op", i)], collect)
            time.sleep(0.01)  # load pacing: one operation every 10 ms for 0.6 s
        assert done.wait(5.0)
        span = time.monotonic() - t0
        assert [r.detail for r in got] == [f"ok {i}" for i in range(n)]
        ops = [op for _, entry in raft.entries for op in entry]
        assert ops == [("op", i) for i in range(n)]
        # Without lingering each operation would be an entry of its own (60); with it, a busy
        # proposer sends about one entry per linger_s after the first busy_ops operations.
        assert len(raft.entries) <= 12 + span / 0.1, [len(e) for _, e in raft.entries]
        busy = [t for t, _ in raft.entries][10:]  # once 10 operations went out in 0.2 s
        gaps = [b - a for a, b in zip(busy, busy[1:], strict=False)]
        assert gaps and all(g >= 0.09 for g in gaps[:-1]), gaps  # a linger apart
    finally:
        p.stop()


def test_quiet_again_means_no_linger() -> None:
    # A 2 s linger, but the node counts as busy only for 0.2 s after its burst: the next
    # operation goes once the node is quiet, long before the linger is over.
    raft, p = make(linger_s=2.0, busy_ops=5, busy_window_s=0.2)
    try:
        assert seconds_to_answer_when_busy(p, urgent=False) < 1.0
    finally:
        p.stop()


@pytest.mark.parametrize("urgent", [True, False])
def test_only_an_urgent_request_skips_the_linger_while_busy(urgent: bool) -> None:
    raft, p = make(linger_s=1.5, busy_ops=5, busy_window_s=10.0)  # busy throughout
    try:
        took = seconds_to_answer_when_busy(p, urgent)
        assert (took < 0.75) == urgent, took
    finally:
        p.stop()


def test_a_proposal_that_may_wait_does_not_wake_a_lingering_proposer() -> None:
    # A busy node's finishes come one per task: each woke the proposer, which looked at its
    # queue and went back to its linger. Now they only join the queue; the linger's end sends
    # them all, in one entry.
    raft, p = make(linger_s=0.5, busy_ops=5, busy_window_s=10.0)  # busy throughout
    looks = 0
    linger_left = p._linger_left

    def counted() -> float:
        nonlocal looks
        looks += 1
        return linger_left()

    p._linger_left = counted  # type: ignore[method-assign]
    try:
        p.propose_sync([("op", i) for i in range(10)], timeout=5.0)  # busy now
        entries = len(raft.entries)
        answered = threading.Semaphore(0)
        p.propose([("op", "late 0")], lambda replies, err: answered.release())  # wakes it
        wait_for(lambda: p._lingering, 5, "the proposer to linger")
        looks = 0
        for i in range(1, 30):
            p.propose([("op", f"late {i}")], lambda replies, err: answered.release())
        for _ in range(30):
            assert answered.acquire(timeout=5.0)
        assert looks <= 3, looks  # the linger's end (and the wait for more), not one a proposal
        assert [len(ops) for _, ops in raft.entries[entries:]] == [30]
        t0 = time.monotonic()
        assert p.propose_sync([("op", "urgent")], timeout=5.0)  # an urgent one still wakes it
        assert time.monotonic() - t0 < 0.25
    finally:
        p.stop()


def test_what_fills_an_entry_ends_the_linger_and_the_count_starts_again() -> None:
    # The proposer keeps a running count of what waits (operations and bytes): a proposal that
    # fills an entry wakes it at once; what it sent leaves the count, so the next small one
    # waits out the linger again.
    raft, p = make(linger_s=2.0, busy_ops=5, busy_window_s=10.0)  # busy throughout
    try:
        p.propose_sync([("op", i) for i in range(10)], timeout=5.0)  # busy now
        p.propose([("op", "first")])  # wakes it; it lingers
        wait_for(lambda: p._lingering, 5, "the proposer to linger")
        entries = len(raft.entries)
        t0 = time.monotonic()
        done = threading.Event()
        for i in range(MAX_BATCH - 2):
            p.propose([("op", f"fill {i}")])
        p.propose([("op", "last")], lambda replies, err: done.set())
        assert done.wait(1.5), "a full entry waited out the linger"
        assert time.monotonic() - t0 < 1.5
        assert [len(ops) for _, ops in raft.entries[entries:]] == [MAX_BATCH]
        assert (p._waiting_ops, p._waiting_bytes) == (0, 0)
        p.propose([("op", "small")])
        wait_for(lambda: p._lingering, 5, "the proposer to linger on the next one")
        assert p._waiting_ops == 1 and len(raft.entries) == entries + 1  # it waits
    finally:
        p.stop()


def finish_op(i: int, tail: int) -> tuple[Any, ...]:
    outcome = Outcome(exit_code=0, start=0.0, end=1.0, stdout_tail=b"o" * tail,
                      stderr_tail=b"e" * tail, stdout_bytes=tail, stderr_bytes=tail)
    return ("finish", f"t{i}", "n1", 1, outcome)


def test_entries_stay_under_the_byte_bound_and_a_big_proposal_is_split_in_order() -> None:
    # pysyncobj sends entries of APPEND_ENTRIES_BYTES or more in pieces (and mislabels the last
    # piece); entries are kept far below that. 40 finishes with 2 x 64 KiB of output each are
    # about 10 MiB: one proposal, answered once, with every reply in order.
    raft, p = make()
    try:
        ops = [finish_op(i, 64 * 1024) for i in range(40)]
        replies = p.propose_sync(ops, timeout=5.0)
        assert [r.detail for r in replies] == [f"ok t{i}" for i in range(40)]
        entries = [entry for _, entry in raft.entries]
        assert [op for entry in entries for op in entry] == ops
        assert len(entries) > 1
        for entry in entries:
            assert sum(op_bytes(op) for op in entry) <= ENTRY_BYTES
            assert len(pickle.dumps(entry)) < APPEND_ENTRIES_BYTES // 4
    finally:
        p.stop()


def test_a_split_proposal_fails_as_one_when_a_part_fails() -> None:
    class FailSecond(FakeRaft):
        def apply_ops(self, ops: list[Any], now: float, callback: Any) -> None:
            with self.lock:
                self.entries.append((time.monotonic(), list(ops)))
                n = len(self.entries)
            if n == 2:
                callback(None, FAIL_REASON.LEADER_CHANGED)
            else:
                callback([Reply(True, "ok") for _ in ops], FAIL_REASON.SUCCESS)

    raft = FailSecond()
    p = Proposer(raft)  # type: ignore[arg-type]
    answers: list[tuple[Any, int]] = []
    done = threading.Event()

    def answered(replies: list[Reply] | None, err: int) -> None:
        answers.append((replies, err))
        done.set()

    try:
        p.propose([finish_op(i, 64 * 1024) for i in range(40)], answered)
        assert done.wait(5.0)
        wait_for(lambda: len(raft.entries) >= 3, 5.0, "every part sent")
        assert answers == [(None, FAIL_REASON.LEADER_CHANGED)]
    finally:
        p.stop()


def test_small_operations_are_estimated_small() -> None:
    spec = TaskSpec(task_id="a", memory=1, cores=1, storage=1, concurrent=True, conditions="",
                    files=(), command="true")
    assert op_bytes(("submit", spec)) < 1000
    assert op_bytes(finish_op(1, 0)) < 1000
    assert op_bytes(("claim", "a", "n1", 1)) < 1000
    assert op_bytes(finish_op(1, 64 * 1024)) >= 4 * 64 * 1024  # two tails, maybe doubled

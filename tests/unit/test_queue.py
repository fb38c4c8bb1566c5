"""The replicated state machine: every transition, every rejection, snapshots, totality, fuzz."""

from __future__ import annotations

import dataclasses
import enum
import pickle
import random
from typing import Any

import pytest

import conditions as cond
from comrade.model import TAIL_BYTES, Attempt, NodeInfo, Outcome, Resources, State, TaskSpec
from comrade.queue import Queue, Reply, spec_problem

GiB = 1024**3


def spec(tid: str, *, conditions: str = "", concurrent: bool = True, retries: int = 0,
         cores: int = 1, command: str = "true", **kw: Any) -> TaskSpec:
    """A small task spec; keyword overrides for any other field."""
    fields: dict[str, Any] = dict(memory=0, storage=0, files=())
    fields.update(kw)
    return TaskSpec(task_id=tid, cores=cores, concurrent=concurrent, conditions=conditions,
                    command=command, retries=retries, **fields)


def info(name: str, cores: int = 8, tags: frozenset[str] = frozenset()) -> NodeInfo:
    """A worker announcing `cores` cores, 8 GiB of memory and of disk."""
    return NodeInfo(name, "worker", f"{name}:1", f"{name}:2", Resources(8 * GiB, cores, 8 * GiB),
                    tags=tags)


def out(code: int, **kw: Any) -> Outcome:
    """An outcome with exit code `code`, started at 1 and ended at 2."""
    return Outcome(code, 1.0, 2.0, **kw)


def ok(q: Queue, op: tuple[Any, ...], now: float = 0.0) -> Reply:
    """Apply `op` as a one-op batch and assert it was accepted."""
    reply = q.apply_batch([op], now)[0]
    assert reply.ok, (op, reply)
    return reply


def no(q: Queue, op: Any, contains: str = "", now: float = 0.0) -> Reply:
    """Apply `op` as a one-op batch and assert it was rejected (detail contains `contains`)."""
    reply = q.apply_batch([op], now)[0]
    assert not reply.ok, (op, reply)
    assert contains in reply.detail
    return reply


@pytest.fixture
def q() -> Queue:
    """A queue with live nodes a and b."""
    queue = Queue()
    ok(queue, ("join", info("a")))
    ok(queue, ("join", info("b")))
    return queue


def state(q: Queue, tid: str) -> State:
    task = q.get(tid)
    assert task is not None
    return task.state


def queued_ids(q: Queue) -> list[str]:
    return [t.spec.task_id for t in q.queued()]


# ----- submit ---------------------------------------------------------------------------------

def test_submit_queues_in_order_and_is_idempotent(q: Queue) -> None:
    ok(q, ("submit", spec("t1")), now=5.0)
    ok(q, ("submit", spec("t2")))
    assert q.apply(("submit", spec("t1")), 9.0) == Reply(True, "duplicate")
    assert queued_ids(q) == ["t1", "t2"]
    t1 = q.get("t1")
    assert t1 is not None and (t1.seq, t1.submitted, t1.attempt) == (1, 5.0, 0)
    assert q.pending_count() == 2


@pytest.mark.parametrize("op, contains", [
    (("submit", "not a spec"), "not a task spec"),
    (("submit", spec("t1", command="other")), "already used by a different task"),
    (("submit", spec("x", conditions="queue:after nope")), "unknown task 'nope'"),
    (("submit", spec("x", conditions="queue:after_ok t1; queue:after ghost")), "unknown task"),
    (("submit", spec("x", conditions="queue:after x")), "task 'x' names itself"),
    (("submit", spec("x", conditions="bogus:thing")), "unknown scope"),
    (("submit", spec("x", conditions="worker:tag a b")), "must not contain spaces"),
])
def test_submit_rejections(q: Queue, op: tuple[Any, ...], contains: str) -> None:
    ok(q, ("submit", spec("t1")))
    no(q, op, contains)
    assert list(q.tasks) == ["t1"]
    assert q.next_seq == 2


def test_submit_reuse_of_deleted_id_rejected_even_with_same_spec(q: Queue) -> None:
    ok(q, ("submit", spec("t1")))
    ok(q, ("delete", "t1"))
    no(q, ("submit", spec("t1")), "belonged to a deleted task")
    no(q, ("submit", spec("t1", command="new")), "belonged to a deleted task")


# ----- claim ----------------------------------------------------------------------------------

def test_claim_accepted_once(q: Queue) -> None:
    ok(q, ("submit", spec("t")))
    ok(q, ("claim", "t", "a", 1), now=3.0)
    task = q.get("t")
    assert task is not None
    assert (task.state, task.node, task.attempt) == (State.RUNNING, "a", 1)
    assert [(x.number, x.node, x.start) for x in task.attempts] == [(1, "a", 3.0)]
    assert q.running_on("a") == [task] and queued_ids(q) == []
    no(q, ("claim", "t", "a", 1), "task is running")
    no(q, ("claim", "t", "b", 1), "task is running")
    no(q, ("claim", "t", "b", 2), "task is running")
    assert task.node == "a" and q.running_on("b") == []


@pytest.mark.parametrize("attempt", [0, 2, -1, 10**30])
def test_claim_wrong_attempt_number_rejected(q: Queue, attempt: int) -> None:
    ok(q, ("submit", spec("t")))
    no(q, ("claim", "t", "a", attempt), "stale attempt")
    assert state(q, "t") is State.QUEUED


def test_claim_unknown_task_or_node_or_dead_node(q: Queue) -> None:
    ok(q, ("submit", spec("t")))
    no(q, ("claim", "nope", "a", 1), "no such task")
    no(q, ("claim", "t", "zz", 1), "not a live member")
    ok(q, ("expire_node", "b"))
    no(q, ("claim", "t", "b", 1), "not a live member")
    ok(q, ("leave", "a"))
    no(q, ("claim", "t", "a", 1), "not a live member")
    assert state(q, "t") is State.QUEUED


def test_claim_of_final_task_rejected(q: Queue) -> None:
    ok(q, ("submit", spec("t")))
    ok(q, ("claim", "t", "a", 1))
    ok(q, ("finish", "t", "a", 1, out(0)))
    no(q, ("claim", "t", "a", 2), "task is done")


def test_non_concurrent_task_needs_an_idle_node(q: Queue) -> None:
    ok(q, ("submit", spec("c")))
    ok(q, ("submit", spec("solo", concurrent=False)))
    ok(q, ("claim", "c", "a", 1))
    no(q, ("claim", "solo", "a", 1), "not concurrent and the node is busy")
    ok(q, ("claim", "solo", "b", 1))


def test_nothing_joins_a_non_concurrent_task(q: Queue) -> None:
    ok(q, ("submit", spec("solo", concurrent=False)))
    ok(q, ("submit", spec("c")))
    ok(q, ("submit", spec("solo2", concurrent=False)))
    ok(q, ("claim", "solo", "a", 1))
    no(q, ("claim", "c", "a", 1), "node runs a non-concurrent task")
    no(q, ("claim", "solo2", "a", 1), "busy")
    ok(q, ("finish", "solo", "a", 1, out(0)))
    ok(q, ("claim", "c", "a", 1))


# ----- finish and release ---------------------------------------------------------------------

def test_finish_exit_zero_is_done(q: Queue) -> None:
    ok(q, ("submit", spec("t", retries=2)))
    ok(q, ("claim", "t", "a", 1))
    ok(q, ("finish", "t", "a", 1, out(0, stdout_tail=b"hi")))
    task = q.get("t")
    assert task is not None and task.state is State.DONE
    assert task.outcome is not None and task.outcome.stdout_tail == b"hi"
    assert (task.attempts[-1].end, task.attempts[-1].exit_code, task.attempts[-1].why) == (
        2.0, 0, "exit")
    assert q.running_on("a") == [] and q.pending_count() == 0 and task.retries_left == 2


def test_each_attempt_keeps_whether_its_work_dir_was_kept(q: Queue) -> None:
    """A retry's outcome replaces the task's, so each attempt records it: `get-files` asks a
    node only for the attempts whose dirs it kept. A value that is not a bool reads kept."""
    ok(q, ("submit", spec("t", retries=2)))
    ok(q, ("claim", "t", "a", 1))
    ok(q, ("finish", "t", "a", 1, out(1, workdir_kept=False)))
    ok(q, ("claim", "t", "b", 2))
    ok(q, ("finish", "t", "b", 2, out(1, workdir_kept="no")))
    ok(q, ("claim", "t", "a", 3))
    ok(q, ("finish", "t", "a", 3, out(0)))
    task = q.get("t")
    assert task is not None and task.state is State.DONE
    assert [a.workdir_kept for a in task.attempts] == [False, True, True]


def test_an_ended_attempt_keeps_every_field_it_started_with(q: Queue) -> None:
    """Ending an attempt sets its end, exit code, why and work dir; the rest is carried over.
    The fields are listed here so that one added to Attempt is not silently dropped at its end
    (the queue builds the ended attempt field by field)."""
    assert [f.name for f in dataclasses.fields(Attempt)] == [
        "number", "node", "start", "end", "exit_code", "why", "workdir_kept"]
    ok(q, ("submit", spec("t", retries=1)))
    ok(q, ("claim", "t", "b", 1), now=5.0)
    ok(q, ("finish", "t", "b", 1, Outcome(3, 5.5, 7.25, workdir_kept=False)), now=8.0)
    ok(q, ("claim", "t", "a", 2), now=9.0)
    ok(q, ("finish", "t", "a", 2, out(0)), now=10.0)
    task = q.get("t")
    assert task is not None and task.attempts == [
        Attempt(number=1, node="b", start=5.0, end=7.25, exit_code=3, why="exit",
                workdir_kept=False),
        Attempt(number=2, node="a", start=9.0, end=2.0, exit_code=0, why="exit")]


@pytest.mark.parametrize("op, contains", [
    (("finish", "t", "b", 1, out(0)), "fenced"),
    (("finish", "t", "a", 2, out(0)), "fenced"),
    (("finish", "t", "a", 0, out(0)), "fenced"),
    (("finish", "nope", "a", 1, out(0)), "no such task"),
    (("finish", "t", "a", 1, "not an outcome"), "not an outcome"),
    (("release", "t", "b", 1, "x"), "fenced"),
    (("release", "t", "a", 2, "x"), "fenced"),
    (("release", "nope", "a", 1, "x"), "no such task"),
])
def test_finish_and_release_fencing_on_running_task(q: Queue, op: tuple[Any, ...],
                                                    contains: str) -> None:
    ok(q, ("submit", spec("t")))
    ok(q, ("claim", "t", "a", 1))
    no(q, op, contains)
    task = q.get("t")
    assert task is not None and task.state is State.RUNNING and task.attempts[-1].end is None
    assert q.running_on("a") == [task]


@pytest.mark.parametrize("verb", ["finish", "release"])
def test_finish_and_release_rejected_when_not_running(q: Queue, verb: str) -> None:
    tail: tuple[Any, ...] = (out(0),) if verb == "finish" else ("why",)
    ok(q, ("submit", spec("t")))
    no(q, (verb, "t", "a", 1, *tail), "fenced")  # queued
    ok(q, ("claim", "t", "a", 1))
    ok(q, ("finish", "t", "a", 1, out(0)))
    no(q, (verb, "t", "a", 1, *tail), "fenced")  # done
    assert state(q, "t") is State.DONE


def test_non_zero_exit_with_retries_requeues(q: Queue) -> None:
    ok(q, ("submit", spec("t", retries=1)))
    ok(q, ("claim", "t", "a", 1))
    ok(q, ("finish", "t", "a", 1, out(3)))
    task = q.get("t")
    assert task is not None
    assert (task.state, task.retries_left, task.failed_on) == (State.QUEUED, 0, ("a",))
    assert queued_ids(q) == ["t"] and q.running_on("a") == []
    no(q, ("claim", "t", "b", 1), "stale attempt 1; next is 2")
    ok(q, ("claim", "t", "b", 2))
    ok(q, ("finish", "t", "b", 2, out(4)))
    assert (task.state, task.failed_on) == (State.FAILED, ("a",))
    assert task.outcome is not None and task.outcome.exit_code == 4
    assert [(x.number, x.node, x.exit_code) for x in task.attempts] == [(1, "a", 3), (2, "b", 4)]


def test_a_timed_out_attempt_fails_with_its_limit_as_the_reason(q: Queue) -> None:
    ok(q, ("submit", spec("t", time_limit=90.0)))
    ok(q, ("claim", "t", "a", 1))
    ok(q, ("finish", "t", "a", 1, out(143, timed_out=True)))
    task = q.get("t")
    assert task is not None and task.state is State.FAILED
    assert task.reason == "stopped after its time limit of 90s"
    assert task.outcome is not None and task.outcome.timed_out and task.outcome.exit_code == 143
    assert [(a.exit_code, a.why) for a in task.attempts] == [(143, "time limit 90s")]


def test_a_timed_out_attempt_uses_a_retry_and_a_later_success_is_done(q: Queue) -> None:
    ok(q, ("submit", spec("t", retries=1, time_limit=7200.0)))
    ok(q, ("claim", "t", "a", 1))
    ok(q, ("finish", "t", "a", 1, out(0, timed_out=True)))  # exit 0 after SIGTERM: still out
    task = q.get("t")
    assert task is not None and (task.state, task.retries_left, task.reason) == (State.QUEUED, 0, "")
    ok(q, ("claim", "t", "b", 2))
    ok(q, ("finish", "t", "b", 2, out(0)))
    assert task.state is State.DONE and task.reason == ""
    assert [a.why for a in task.attempts] == ["time limit 2h", "exit"]


def test_only_a_limit_the_spec_sets_can_run_out(q: Queue) -> None:
    ok(q, ("submit", spec("t")))
    ok(q, ("claim", "t", "a", 1))
    ok(q, ("finish", "t", "a", 1, out(0, timed_out=True)))
    task = q.get("t")
    assert task is not None and task.state is State.DONE
    assert task.outcome is not None and not task.outcome.timed_out


@pytest.mark.parametrize("limit", [-1.0, float("nan"), float("inf"), 366 * 86400.0, True, "60",
                                   None])
def test_a_bad_time_limit_is_refused(q: Queue, limit: Any) -> None:
    no(q, ("submit", spec("t", time_limit=limit)), "time limit must be a number of seconds")
    assert q.get("t") is None


def test_old_records_without_time_limits_read_as_unlimited() -> None:
    """Snapshots and journals from before time limits: pickled specs and outcomes without the
    new fields load with the defaults."""
    s, o = spec("t"), out(1)
    for record in (s, o):
        del record.__dict__["time_limit" if record is s else "timed_out"]
    s2, o2 = pickle.loads(pickle.dumps(s)), pickle.loads(pickle.dumps(o))
    assert s2.time_limit == 0.0 and o2.timed_out is False


def test_a_spec_is_pickled_without_its_cached_needs() -> None:
    """The node that takes a submit computes what each task needs before replicating it: the
    entry, the journal and the snapshots still hold the fields alone, and the copy works out
    its needs again (necessary files counted in its storage)."""
    fresh, used = spec("t", files=(("a.csv", "0" * 64, 5),)), spec("t", files=(("a.csv", "0" * 64, 5),))
    assert used.needs.storage == used.storage + 5
    assert pickle.dumps(used) == pickle.dumps(fresh)
    copy = pickle.loads(pickle.dumps(used))
    assert "needs" not in copy.__dict__ and copy == used and copy.needs == used.needs


def test_old_outcomes_without_usage_read_as_unknown() -> None:
    o = out(0, cpu_s=1.5, max_rss=4096, max_rss_exact=True)
    for name in ("cpu_s", "max_rss", "max_rss_exact"):
        del o.__dict__[name]
    o2 = pickle.loads(pickle.dumps(o))
    assert (o2.cpu_s, o2.max_rss, o2.max_rss_exact) == (0.0, 0, False)


@pytest.mark.parametrize("cpu_s, max_rss, exact", [
    (-1.0, 10, True), (float("nan"), 10, True), (float("inf"), 10, True), ("x", 10, True),
    (True, 10, True), (1.0, -5, True), (1.0, 2.5, True), (1.0, None, True), (1.0, False, True),
    (1.0, 10, 1),
])
def test_a_bad_usage_in_an_outcome_reads_as_unknown_and_the_finish_still_counts(
        q: Queue, cpu_s: Any, max_rss: Any, exact: Any) -> None:
    ok(q, ("submit", spec("t")))
    ok(q, ("claim", "t", "a", 1))
    ok(q, ("finish", "t", "a", 1, out(0, cpu_s=cpu_s, max_rss=max_rss, max_rss_exact=exact)))
    task = q.tasks["t"]
    assert task.state is State.DONE and task.outcome is not None
    assert (task.outcome.cpu_s, task.outcome.max_rss, task.outcome.max_rss_exact) == (0.0, 0, False)


def test_a_good_usage_is_kept(q: Queue) -> None:
    ok(q, ("submit", spec("t")))
    ok(q, ("claim", "t", "a", 1))
    ok(q, ("finish", "t", "a", 1, out(0, cpu_s=2, max_rss=1 << 20, max_rss_exact=True)))
    o = q.tasks["t"].outcome
    assert o is not None and (o.cpu_s, o.max_rss, o.max_rss_exact) == (2, 1 << 20, True)


def test_failed_on_is_sorted_and_unique(q: Queue) -> None:
    ok(q, ("submit", spec("t", retries=3)))
    for attempt, node in enumerate(["b", "a", "b"], start=1):
        ok(q, ("claim", "t", node, attempt))
        ok(q, ("finish", "t", node, attempt, out(1)))
    task = q.get("t")
    assert task is not None and task.failed_on == ("a", "b") and task.retries_left == 0


def test_tails_truncated_to_last_64_kib(q: Queue) -> None:
    big = bytes(range(256)) * (TAIL_BYTES // 256 + 10)
    ok(q, ("submit", spec("t")))
    ok(q, ("claim", "t", "a", 1))
    ok(q, ("finish", "t", "a", 1, out(0, stdout_tail=big, stderr_tail=bytearray(b"e" * 10),
                                       stdout_bytes=len(big))))
    task = q.get("t")
    assert task is not None and task.outcome is not None
    assert task.outcome.stdout_tail == big[-TAIL_BYTES:]
    assert len(task.outcome.stdout_tail) == TAIL_BYTES
    assert task.outcome.stderr_tail == b"e" * 10 and type(task.outcome.stderr_tail) is bytes
    assert task.outcome.stdout_bytes == len(big)


def test_release_requeues_without_using_a_retry(q: Queue) -> None:
    ok(q, ("submit", spec("t")))
    ok(q, ("claim", "t", "a", 1))
    ok(q, ("release", "t", "a", 1, "no disk"), now=7.0)
    task = q.get("t")
    assert task is not None and task.state is State.QUEUED and task.retries_left == 0
    assert (task.attempts[-1].why, task.attempts[-1].end) == ("released: no disk", 7.0)
    assert task.failed_on == ()
    ok(q, ("claim", "t", "a", 2))


def test_a_task_that_cannot_start_five_times_fails_with_the_reason(q: Queue) -> None:
    ok(q, ("submit", spec("t")))
    for attempt in range(1, 5):
        ok(q, ("claim", "t", "a", attempt))
        ok(q, ("release", "t", "a", attempt, "cannot start: no space left on device"))
        task = q.get("t")
        assert task is not None and task.state is State.QUEUED and task.reason == ""
    ok(q, ("claim", "t", "b", 5))
    reply = ok(q, ("release", "t", "b", 5, "cannot start: Is a directory"))
    assert reply.detail == "failed: could not start"
    task = q.get("t")
    assert task is not None and task.state is State.FAILED
    assert task.reason == "could not start after 5 tries: cannot start: Is a directory"


def test_other_releases_never_count_as_failed_starts(q: Queue) -> None:
    """Claims given back unstarted (claimed ahead, a drain) or stopped (a hold) may recur any
    number of times; only "cannot start" releases lead to failing the task."""
    ok(q, ("submit", spec("t")))
    for attempt in range(1, 13):
        ok(q, ("claim", "t", "a", attempt))
        ok(q, ("release", "t", "a", attempt, "not started here within 1 s"))
    ok(q, ("claim", "t", "a", 13))
    ok(q, ("release", "t", "a", 13, "cannot start: no space left on device"))
    task = q.get("t")
    assert task is not None and task.state is State.QUEUED and task.reason == ""


# ----- delete ---------------------------------------------------------------------------------

@pytest.mark.parametrize("setup", ["queued", "running", "done", "failed"])
def test_delete_in_each_state(q: Queue, setup: str) -> None:
    ok(q, ("submit", spec("t")))
    if setup != "queued":
        ok(q, ("claim", "t", "a", 1))
    if setup in ("done", "failed"):
        ok(q, ("finish", "t", "a", 1, out(0 if setup == "done" else 1)))
    ok(q, ("delete", "t"), now=9.0)
    task = q.get("t")
    assert task is not None and task.state is State.DELETED
    assert task.outcome is None and task.reason == "deleted by user"
    assert queued_ids(q) == [] and q.running_on("a") == [] and q.pending_count() == 0
    if setup == "running":
        assert (task.attempts[-1].why, task.attempts[-1].end) == ("deleted", 9.0)
        no(q, ("finish", "t", "a", 1, out(0)), "fenced")
    assert q.apply(("delete", "t"), 10.0) == Reply(True, "already deleted")
    no(q, ("delete", "nope"), "no task 'nope'")


# ----- nodes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("verb, why", [("expire_node", "node lost"), ("leave", "node left")])
def test_dropping_a_node_requeues_its_tasks(q: Queue, verb: str, why: str) -> None:
    ok(q, ("submit", spec("t1")))
    ok(q, ("submit", spec("t2")))
    ok(q, ("claim", "t1", "a", 1))
    ok(q, ("claim", "t2", "a", 1))
    ok(q, (verb, "a"), now=20.0)
    ns = q.nodes["a"]
    assert (ns.alive, ns.lost_since, ns.free) == (False, 20.0, Resources())
    assert queued_ids(q) == ["t1", "t2"] and q.running_on("a") == []
    task = q.get("t1")
    assert task is not None and task.attempts[-1].why == why and task.attempts[-1].end == 20.0
    assert task.retries_left == 0 and task.failed_on == ()
    no(q, ("finish", "t1", "a", 1, out(0)), "fenced")  # the presumed-dead node comes back late
    no(q, ("claim", "t1", "b", 1), "stale attempt")
    ok(q, ("claim", "t1", "b", 2))
    ok(q, (verb, "a"), now=30.0)  # again: no-op, first loss time kept
    assert q.nodes["a"].lost_since == 20.0
    no(q, (verb, "zz"), "unknown node")


def _dies_with(q: Queue, tid: str, node: str, attempt: int, death: str, now: float,
               hold_after: int = 3) -> None:
    """`tid` is claimed by `node` as `attempt`, then the node dies: `death` is "lost",
    "restarted" (its stale claim released) or "left" (a clean stop); it comes back. Nodes
    propose the deaths with `hold_after` 3 (MAX_NODE_DEATHS)."""
    ok(q, ("claim", tid, node, attempt))
    if death == "lost":
        ok(q, ("expire_node", node, None, hold_after), now=now)
    elif death == "left":
        ok(q, ("leave", node), now=now)
    else:
        ok(q, ("release", tid, node, attempt, "node restarted", hold_after), now=now)
    ok(q, ("heartbeat", node, Resources(1 << 30, 8, 1 << 30), ""), now=now)


def test_a_task_whose_node_died_in_each_of_its_last_three_attempts_is_held(q: Queue) -> None:
    """It may be what kills its nodes: held with the reason, not dealt again; released, it
    runs again (and is held again if it kills its node once more)."""
    ok(q, ("submit", spec("t")))
    _dies_with(q, "t", "a", 1, "lost", 1.0)
    _dies_with(q, "t", "b", 2, "restarted", 2.0)
    task = q.get("t")
    assert task is not None and not task.held and [t.spec.task_id for t in q.ready()] == ["t"]
    _dies_with(q, "t", "a", 3, "lost", 3.0)
    assert task.state is State.QUEUED and task.held and list(q.ready()) == []
    assert task.reason == ("held: its node died during each of its last 3 attempts "
                           "(leoronic_release runs it again)")
    assert [a.why for a in task.attempts] == ["node lost", "released: node restarted", "node lost"]
    no(q, ("claim", "t", "b", 4), "held")
    ok(q, ("hold", "t", False))
    assert (task.held, task.reason, [t.spec.task_id for t in q.ready()]) == (False, "", ["t"])
    ok(q, ("claim", "t", "b", 4))
    ok(q, ("finish", "t", "b", 4, out(0)))
    assert task.state is State.DONE


@pytest.mark.parametrize("deaths", [
    ["lost", "lost", "left"],  # a clean stop is the operator's doing, not the task's
    ["left", "lost", "lost"],
    ["lost", "exit", "lost"],  # a run in between that ended by itself
])
def test_node_deaths_not_in_a_row_or_clean_stops_hold_nothing(q: Queue, deaths: list[str]) -> None:
    ok(q, ("submit", spec("t", retries=1)))
    for attempt, death in enumerate(deaths, start=1):
        if death == "exit":
            ok(q, ("claim", "t", "a", attempt))
            ok(q, ("finish", "t", "a", attempt, out(1)))
        else:
            _dies_with(q, "t", "a", attempt, death, float(attempt))
    task = q.get("t")
    assert task is not None and task.state is State.QUEUED and not task.held and task.reason == ""


def test_deaths_in_a_journal_from_before_protocol_9_are_replayed_as_applied_then(q: Queue) -> None:
    """Its entries lack `hold_after`: however many deaths in a row, the task was requeued."""
    ok(q, ("submit", spec("t")))
    for attempt in range(1, 5):
        _dies_with(q, "t", "a", attempt, "lost", float(attempt), hold_after=0)
    task = q.get("t")
    assert task is not None and not task.held and [t.spec.task_id for t in q.ready()] == ["t"]
    no(q, ("expire_node", "a", None, -1), "hold_after")
    no(q, ("release", "t", "a", 5, "node restarted", "3"), "hold_after")


def test_a_task_waiting_for_a_tag_no_node_that_is_up_has_says_so(q: Queue) -> None:
    ok(q, ("submit", spec("t", conditions="worker:tag gpu; worker:tag os-linux")))
    ok(q, ("submit", spec("plain")))
    task, plain = q.get("t"), q.get("plain")
    assert task is not None and plain is not None
    ok(q, ("add_tag", "a", "os-linux"))
    assert q.waiting_note(task, q.tags_up()) == "waiting: no node that is up has tag 'gpu'"
    assert q.waiting_note(plain, q.tags_up()) == ""
    ok(q, ("add_tag", "b", "gpu"))
    assert q.waiting_note(task, q.tags_up()) == ""
    ok(q, ("expire_node", "b"))  # its tags count again only once it is up
    assert q.waiting_note(task, q.tags_up()) == "waiting: no node that is up has tag 'gpu'"
    ok(q, ("heartbeat", "b", Resources(1 << 30, 8, 1 << 30), ""))
    ok(q, ("claim", "t", "b", 1))
    assert q.waiting_note(task, q.tags_up()) == ""  # running: not waiting


def test_only_a_node_that_is_down_can_be_forgotten(q: Queue) -> None:
    ok(q, ("submit", spec("t")))
    ok(q, ("claim", "t", "a", 1))
    no(q, ("forget_node", "a"), "is up")
    no(q, ("forget_node", "zz"), "unknown node")
    ok(q, ("expire_node", "a"), now=5.0)  # its task goes back to the queue
    ok(q, ("forget_node", "a"))
    assert "a" not in q.nodes and q.running_on("a") == []
    task = q.get("t")
    assert task is not None and task.attempts[-1].node == "a"  # the history keeps its name
    ok(q, ("claim", "t", "b", 2))
    ok(q, ("join", info("a")))  # the name may come back, as a new node
    assert q.nodes["a"].alive


def test_heartbeat_revives_a_lost_node(q: Queue) -> None:
    ok(q, ("expire_node", "a"), now=1.0)
    free = Resources(1, 2, 3)
    ok(q, ("heartbeat", "a", free, "disk full"), now=4.0)
    ns = q.nodes["a"]
    assert (ns.alive, ns.lost_since, ns.last_seen, ns.free, ns.note) == (
        True, None, 4.0, free, "disk full")
    ok(q, ("submit", spec("t")))
    ok(q, ("claim", "t", "a", 1))
    no(q, ("heartbeat", "zz", free, ""), "unknown node")


def test_join_refresh_keeps_added_tags(q: Queue) -> None:
    ok(q, ("add_tag", "a", "gpu"))
    ok(q, ("join", info("a", tags=frozenset({"fast"}))), now=3.0)
    assert q.nodes["a"].tags == {"gpu", "fast"}
    no(q, ("join", info("")), "not a node")
    no(q, ("join", "a"), "not a node")


def test_a_name_held_by_a_node_that_is_up_is_refused_to_another(q: Queue) -> None:
    """A second node with a live node's name (another address, or the other kind) would take
    over its record and the tasks running there: refused, and the record is unchanged."""
    from dataclasses import replace
    ok(q, ("submit", spec("t1")))
    ok(q, ("claim", "t1", "a", 1))
    elsewhere = replace(info("a"), rpc="other:1", raft="other:2")
    ghost = replace(info("a"), kind="ghost", raft="")
    no(q, ("join", elsewhere), "'a' is the name of a worker at a:1 that is up; give this worker")
    no(q, ("join", ghost), "give this ghost another --name, or stop that worker first")
    assert q.nodes["a"].info == info("a") and state(q, "t1") is State.RUNNING
    ok(q, ("join", info("a")), now=1.0)  # the same node restarting where it was: its own
    ok(q, ("expire_node", "a"), now=20.0)  # once it is lost, another may take the name
    ok(q, ("join", elsewhere), now=21.0)
    assert q.nodes["a"].info.rpc == "other:1" and q.nodes["a"].alive


@pytest.mark.parametrize("op, contains", [
    (("add_tag", "a", "has space"), "must not contain spaces"),
    (("add_tag", "a", ""), "must not be empty"),
    (("add_tag", "a", "a;b"), "';'"),
    (("add_tag", "a", "x" * 65), "at most 64"),
    (("add_tag", "zz", "gpu"), "unknown node"),
    (("del_tag", "a", "never"), "has no tag 'never'"),
    (("del_tag", "zz", "gpu"), "unknown node"),
])
def test_tag_rejections(q: Queue, op: tuple[Any, ...], contains: str) -> None:
    no(q, op, contains)
    assert q.nodes["a"].tags == set()


def test_tags_add_and_delete(q: Queue) -> None:
    ok(q, ("add_tag", "a", "gpu"))
    ok(q, ("add_tag", "a", "gpu"))
    assert q.nodes["a"].tags == {"gpu"}
    ok(q, ("del_tag", "a", "gpu"))
    assert q.nodes["a"].tags == set()
    no(q, ("del_tag", "a", "gpu"), "has no tag")


def test_a_draining_node_keeps_its_tasks_and_gets_no_new_claim(q: Queue) -> None:
    ok(q, ("submit", spec("runs")))
    ok(q, ("submit", spec("waits")))
    ok(q, ("claim", "runs", "a", 1))
    ok(q, ("drain", "a", True))
    ok(q, ("drain", "a", True))  # twice is no error
    no(q, ("claim", "waits", "a", 1), "node 'a' is draining")
    assert [t.spec.task_id for t in q.running_on("a")] == ["runs"]
    ok(q, ("finish", "runs", "a", 1, out(0)))  # what ran there ends as usual
    ok(q, ("claim", "waits", "b", 1))  # others take the rest
    assert q.tasks["runs"].state is State.DONE


def test_draining_survives_leave_loss_rejoin_and_snapshots_until_resumed(q: Queue) -> None:
    ok(q, ("drain", "a", True))
    ok(q, ("leave", "a"))
    ok(q, ("join", info("a")), now=5.0)
    assert q.nodes["a"].draining and q.nodes["a"].alive
    ok(q, ("expire_node", "a"))
    ok(q, ("join", info("a")), now=6.0)
    restored = Queue.restore(pickle.loads(pickle.dumps(q.snapshot())))
    assert restored.nodes["a"].draining and not restored.nodes["b"].draining
    ok(restored, ("drain", "a", False))
    ok(restored, ("submit", spec("t")))
    ok(restored, ("claim", "t", "a", 1))


def test_a_node_state_saved_before_draining_existed_reads_as_not_draining(q: Queue) -> None:
    del q.nodes["a"].__dict__["draining"]  # as unpickled from an older snapshot
    restored = Queue.restore(pickle.loads(pickle.dumps(q.snapshot())))
    assert restored.nodes["a"].draining is False and restored.nodes["a"].takes_work


@pytest.mark.parametrize("op, contains", [
    (("drain", "zz", True), "unknown node 'zz'"),
    (("drain", "a", 1), "not true or false"),
    (("drain", "a"), ""),
])
def test_drain_rejections(q: Queue, op: tuple[Any, ...], contains: str) -> None:
    no(q, op, contains)
    assert not q.nodes["a"].draining


# ----- priorities -----------------------------------------------------------------------------

def ready_ids(q: Queue) -> list[str]:
    return [t.spec.task_id for t in q.ready()]


def test_ready_tasks_come_higher_priority_first_then_in_submit_order(q: Queue) -> None:
    for tid, priority in [("low", -5), ("plain1", 0), ("high", 10), ("plain2", 0), ("top", 99)]:
        ok(q, ("submit", spec(tid, priority=priority)))
    assert ready_ids(q) == ["top", "high", "plain1", "plain2", "low"]
    assert queued_ids(q) == ["low", "plain1", "high", "plain2", "top"]  # still submit order


def test_priority_changes_the_order_of_a_queued_task_and_stays_with_it(q: Queue) -> None:
    for tid in ("t1", "t2", "t3"):
        ok(q, ("submit", spec(tid, retries=1)))
    ok(q, ("priority", "t3", 4))
    ok(q, ("priority", "t1", -1))
    assert ready_ids(q) == ["t3", "t2", "t1"]
    ok(q, ("claim", "t3", "a", 1))
    ok(q, ("priority", "t3", -9))  # running: kept for when it comes back
    ok(q, ("finish", "t3", "a", 1, out(1)))  # a retry: queued again, at its new place
    assert ready_ids(q) == ["t2", "t1", "t3"]
    restored = Queue.restore(pickle.loads(pickle.dumps(q.snapshot())))
    assert ready_ids(restored) == ["t2", "t1", "t3"] and restored.tasks["t3"].priority == -9
    assert q.tasks["t3"].spec.priority == 0  # the spec stays as submitted: a retried submit
    ok(q, ("submit", spec("t3", retries=1)))  # of it is still the same task
    assert q.apply_batch([("submit", spec("t3", retries=1))], 0.0)[0].detail == "duplicate"


def test_a_blocked_task_takes_its_priority_when_it_becomes_ready(q: Queue) -> None:
    ok(q, ("submit", spec("first")))
    ok(q, ("submit", spec("other")))
    ok(q, ("submit", spec("then", conditions="queue:after first")))
    ok(q, ("priority", "then", 3))
    assert ready_ids(q) == ["first", "other"]
    ok(q, ("claim", "first", "a", 1))
    ok(q, ("finish", "first", "a", 1, out(0)))
    assert ready_ids(q) == ["then", "other"]


@pytest.mark.parametrize("op, contains", [
    (("priority", "zz", 1), "no task 'zz'"),
    (("priority", "fin", 1), "task 'fin' is done"),
    (("priority", "t", 2**31), "priority must be a whole number"),
    (("priority", "t", "1"), "priority must be a whole number"),
    (("priority", "t", True), "priority must be a whole number"),
    (("priority", "t"), ""),
])
def test_priority_rejections(q: Queue, op: tuple[Any, ...], contains: str) -> None:
    ok(q, ("submit", spec("t")))
    ok(q, ("submit", spec("fin")))
    ok(q, ("claim", "fin", "a", 1))
    ok(q, ("finish", "fin", "a", 1, out(0)))
    no(q, op, contains)
    assert q.tasks["t"].priority == 0 and ready_ids(q) == ["t"]


@pytest.mark.parametrize("priority", [2**31, -(2**31) - 1, 1.5, "3", None])
def test_a_bad_priority_is_refused_at_submit(q: Queue, priority: Any) -> None:
    no(q, ("submit", spec("t", priority=priority)), "priority must be a whole number")
    assert q.get("t") is None


def test_records_saved_before_priorities_and_holds_existed_read_as_zero_and_not_held(q: Queue) -> None:
    ok(q, ("submit", spec("old")))
    ok(q, ("submit", spec("new", priority=1)))
    for field in ("priority", "held"):
        del q.tasks["old"].__dict__[field]
        del q.tasks["old"].spec.__dict__[field]
    restored = Queue.restore(pickle.loads(pickle.dumps(q.snapshot())))
    assert restored.tasks["old"].priority == 0 and restored.tasks["old"].spec.priority == 0
    assert restored.tasks["old"].held is False and restored.tasks["old"].spec.held is False
    assert ready_ids(restored) == ["new", "old"]


# ----- holding ----------------------------------------------------------------------------------

def test_a_held_task_stays_queued_unclaimable_until_released(q: Queue) -> None:
    for tid in ("t1", "t2", "t3"):
        ok(q, ("submit", spec(tid)))
    ok(q, ("hold", "t1", True))
    ok(q, ("hold", "t1", True))  # twice is no error
    assert ready_ids(q) == ["t2", "t3"] and queued_ids(q) == ["t1", "t2", "t3"]
    no(q, ("claim", "t1", "a", 1), "task is held")
    ok(q, ("priority", "t1", 5))  # its priority may change while held
    assert ready_ids(q) == ["t2", "t3"]
    restored = Queue.restore(pickle.loads(pickle.dumps(q.snapshot())))
    assert ready_ids(restored) == ["t2", "t3"] and restored.tasks["t1"].held
    ok(q, ("hold", "t1", False))
    assert ready_ids(q) == ["t1", "t2", "t3"]
    assert q.apply_batch([("hold", "t1", False)], 0.0)[0] == Reply(True, "was not held")
    ok(q, ("claim", "t1", "a", 1))


def test_a_task_submitted_held_waits_and_its_spec_stays_as_submitted(q: Queue) -> None:
    ok(q, ("submit", spec("h", held=True)))
    assert q.tasks["h"].held and ready_ids(q) == []
    ok(q, ("hold", "h", False))
    assert ready_ids(q) == ["h"]
    assert q.apply_batch([("submit", spec("h", held=True))], 0.0)[0].detail == "duplicate"


def held_behind(q: Queue, dep: str, held: str, predicate: str, exit_code: int) -> None:
    """`held` waits on `dep` (`queue:PREDICATE dep`) and is held; then `dep` exits."""
    ok(q, ("submit", spec(dep)))
    ok(q, ("submit", spec(held, conditions=f"queue:{predicate} {dep}")))
    ok(q, ("hold", held, True))
    ok(q, ("claim", dep, "a", 1))
    ok(q, ("finish", dep, "a", 1, out(exit_code)))


def test_a_held_task_blocked_by_a_dependency_stays_out_until_both_allow(q: Queue) -> None:
    held_behind(q, "first", "then", "after", 0)
    assert ready_ids(q) == []  # unblocked, still held
    ok(q, ("hold", "then", False))
    assert ready_ids(q) == ["then"]
    ok(q, ("submit", spec("third", conditions="queue:after then")))
    ok(q, ("hold", "third", True))
    ok(q, ("hold", "third", False))  # released, still blocked
    assert ready_ids(q) == ["then"]


def test_a_held_task_whose_dependency_failed_fails_and_a_deleted_one_is_not_held(q: Queue) -> None:
    held_behind(q, "dep", "ok_after", "after_ok", 1)
    assert state(q, "ok_after") is State.FAILED and not q.tasks["ok_after"].held
    ok(q, ("submit", spec("gone")))
    ok(q, ("hold", "gone", True))
    ok(q, ("delete", "gone"))
    assert state(q, "gone") is State.DELETED and not q.tasks["gone"].held


@pytest.mark.parametrize("op, contains", [
    (("hold", "zz", True), "no task 'zz'"),
    (("hold", "fin", True, True), "task 'fin' is done: only a queued or running task can be held"),
    (("hold", "gone", True, True), "task 'gone' is deleted: only a queued or running task can be held"),
    # as a journal from before PROTOCOL 6 holds it, replayed as it was applied then
    (("hold", "run", True), "task 'run' is running: only a queued task can be held"),
    (("hold", "t", 1), "hold: not true or false"),
    (("hold", "t", True, 1), "hold: not true or false"),
    (("hold", "t"), ""),
])
def test_hold_rejections(q: Queue, op: tuple[Any, ...], contains: str) -> None:
    ok(q, ("submit", spec("t")))
    for tid in ("run", "fin", "gone"):
        ok(q, ("submit", spec(tid)))
        ok(q, ("claim", tid, "a", 1))
    ok(q, ("finish", "fin", "a", 1, out(0)))
    ok(q, ("delete", "gone"))
    no(q, op, contains)
    assert not any(t.held for t in q.tasks.values()) and ready_ids(q) == ["t"]
    assert state(q, "run") is State.RUNNING


def test_holding_a_running_task_ends_its_attempt_and_queues_it_held_no_retry_used(q: Queue) -> None:
    ok(q, ("submit", spec("r", retries=1)))
    ok(q, ("submit", spec("x", concurrent=False)))
    ok(q, ("claim", "r", "a", 1))
    assert q.running_on("a") and q.reserved("a") != Resources(0, 0, 0)
    assert q.apply_batch([("hold", "r", True, True)], 5.0)[0].ok
    task = q.tasks["r"]
    assert state(q, "r") is State.QUEUED and task.held and ready_ids(q) == ["x"]
    assert task.attempts[-1].why == "held" and task.attempts[-1].end == 5.0
    assert task.retries_left == 1 and q.running_on("a") == []
    ok(q, ("claim", "x", "a", 1))  # a non-concurrent task: the node counts as free again
    no(q, ("finish", "r", "a", 1, out(0)), "fenced")  # the stopped attempt's late report
    no(q, ("claim", "r", "b", 2), "task is held")
    restored = Queue.restore(pickle.loads(pickle.dumps(q.snapshot())))
    assert restored.tasks["r"].held and ready_ids(restored) == []
    ok(q, ("hold", "r", False))
    assert ready_ids(q) == ["r"]
    ok(q, ("claim", "r", "b", 2))  # released: a fresh attempt
    ok(q, ("finish", "r", "b", 2, out(0)))
    assert state(q, "r") is State.DONE and [a.why for a in q.tasks["r"].attempts] == ["held", "exit"]


def test_a_running_task_held_waits_again_for_its_dependency_conditions(q: Queue) -> None:
    ok(q, ("submit", spec("dep")))
    ok(q, ("submit", spec("then", conditions="queue:after_ok dep")))
    ok(q, ("claim", "dep", "a", 1))
    ok(q, ("finish", "dep", "a", 1, out(0)))
    ok(q, ("claim", "then", "a", 1))
    ok(q, ("hold", "then", True, True))
    ok(q, ("delete", "dep"))  # what it depended on is gone while it was held
    assert state(q, "then") is State.FAILED and not q.tasks["then"].held


def test_a_bad_held_flag_is_refused_at_submit(q: Queue) -> None:
    no(q, ("submit", spec("t", held=1)), "held must be true or false")


# ----- dependencies ---------------------------------------------------------------------------

def test_after_ok_on_failed_task_fails_dependents_in_a_chain(q: Queue) -> None:
    ok(q, ("submit", spec("a1")))
    ok(q, ("submit", spec("b1", conditions="queue:after_ok a1")))
    ok(q, ("submit", spec("c1", conditions="queue:after_ok b1")))
    ok(q, ("submit", spec("d1", conditions="queue:after a1")))
    ok(q, ("claim", "a1", "a", 1))
    assert [state(q, t) for t in ("b1", "c1", "d1")] == [State.QUEUED] * 3
    ok(q, ("finish", "a1", "a", 1, out(2)))
    b1, c1 = q.get("b1"), q.get("c1")
    assert b1 is not None and c1 is not None
    assert b1.state is State.FAILED and "can never run" in b1.reason and "'a1' failed" in b1.reason
    assert c1.state is State.FAILED and "'b1' failed" in c1.reason
    assert state(q, "d1") is State.QUEUED  # plain `after` accepts any outcome
    assert queued_ids(q) == ["d1"] and b1.attempts == []


def test_after_ok_on_deleted_task_fails_dependent(q: Queue) -> None:
    ok(q, ("submit", spec("a1")))
    ok(q, ("delete", "a1"))
    ok(q, ("submit", spec("b1", conditions="queue:after_ok a1")))
    b1 = q.get("b1")
    assert b1 is not None and b1.state is State.FAILED and "was deleted" in b1.reason


def test_after_ok_waits_through_retries_and_succeeds(q: Queue) -> None:
    ok(q, ("submit", spec("a1", retries=1)))
    ok(q, ("submit", spec("b1", conditions="queue:after_ok a1")))
    ok(q, ("claim", "a1", "a", 1))
    ok(q, ("finish", "a1", "a", 1, out(1)))
    assert state(q, "b1") is State.QUEUED
    ok(q, ("claim", "a1", "b", 2))
    ok(q, ("finish", "a1", "b", 2, out(0)))
    assert state(q, "b1") is State.QUEUED


def test_unfinished_before_orders_is_first(q: Queue) -> None:
    for tid in ("t1", "t2", "t3"):
        ok(q, ("submit", spec(tid)))
    seqs = {tid: q.get(tid).seq for tid in ("t1", "t2", "t3")}  # type: ignore[union-attr]
    assert not q.unfinished_before(seqs["t1"])
    assert q.unfinished_before(seqs["t2"]) and q.unfinished_before(seqs["t3"])
    ok(q, ("claim", "t1", "a", 1))
    assert q.unfinished_before(seqs["t2"])  # running still counts
    ok(q, ("finish", "t1", "a", 1, out(1)))
    assert not q.unfinished_before(seqs["t2"]) and q.unfinished_before(seqs["t3"])
    ok(q, ("delete", "t2"))
    assert not q.unfinished_before(seqs["t3"])
    assert [f.task_id for f in q.tasks_before(seqs["t3"])] == ["t1", "t2"]


# ----- snapshot -------------------------------------------------------------------------------

def observe(q: Queue) -> tuple[Any, ...]:
    """Everything a reader can see, as comparable plain data."""
    return (
        {tid: (t.seq, t.state, t.attempt, t.node, t.attempts, t.outcome, t.reason, t.failed_on,
               t.retries_left, t.spec, t.priority, t.held) for tid, t in q.tasks.items()},
        {n: (s.info, s.tags, s.alive, s.last_seen, s.lost_since, s.free, s.note, s.draining)
         for n, s in q.nodes.items()},
        queued_ids(q),
        [t.spec.task_id for t in q.ready()],
        {n: sorted(t.spec.task_id for t in q.running_on(n)) for n in q.nodes},
        {n: q.reserved(n) for n in q.nodes},
        q.pending_count(), q.next_seq,
        [q.unfinished_before(s) for s in range(q.next_seq + 1)],
        q.applied,
    )


def busy_queue() -> Queue:
    """A queue with tasks in every state and a lost node."""
    q = Queue()
    q.apply_batch([("join", info("a")), ("join", info("b")), ("join", info("c")),
                   ("submit", spec("done")), ("submit", spec("fail")),
                   ("submit", spec("retry", retries=2)), ("submit", spec("run")),
                   ("submit", spec("lost")),
                   ("submit", spec("dep", conditions="queue:after_ok retry")),
                   ("submit", spec("first", conditions="queue:is_first")),
                   ("submit", spec("solo", concurrent=False)), ("submit", spec("gone")),
                   ("claim", "done", "a", 1), ("finish", "done", "a", 1, out(0)),
                   ("claim", "fail", "a", 1), ("finish", "fail", "a", 1, out(1)),
                   ("claim", "retry", "a", 1), ("finish", "retry", "a", 1, out(1)),
                   ("claim", "run", "a", 1), ("claim", "lost", "c", 1), ("expire_node", "c"),
                   ("claim", "solo", "b", 1), ("add_tag", "a", "gpu"), ("delete", "gone")], 1.0)
    return q


FURTHER: list[tuple[Any, ...]] = [
    ("claim", "retry", "a", 2), ("claim", "lost", "a", 2), ("claim", "lost", "c", 2),
    ("claim", "first", "a", 1), ("finish", "run", "a", 1, out(0)),
    ("finish", "solo", "b", 1, out(0)), ("finish", "retry", "a", 2, out(1)),
    ("claim", "retry", "b", 3), ("finish", "retry", "b", 3, out(5)),
    ("submit", spec("gone")), ("submit", spec("done")), ("heartbeat", "c", Resources(1, 1, 1), ""),
    ("claim", "lost", "c", 2), ("del_tag", "a", "gpu"), ("leave", "b"), ("delete", "first"),
]


def test_snapshot_round_trip_same_state_and_same_replies() -> None:
    q = busy_queue()
    r = Queue.restore(pickle.loads(pickle.dumps(q.snapshot())))
    assert observe(r) == observe(q)
    for op in FURTHER:
        assert r.apply_batch([op], 2.0) == q.apply_batch([op], 2.0), op
        assert observe(r) == observe(q)
    assert state(r, "dep") is State.FAILED  # the cascade ran after restore too


def test_restore_of_empty_snapshot() -> None:
    r = Queue.restore(pickle.loads(pickle.dumps(Queue().snapshot())))
    assert observe(r) == observe(Queue())


# ----- totality -------------------------------------------------------------------------------

class Weird:
    def __getitem__(self, i: Any) -> Any:
        raise RuntimeError("boom")


MALFORMED: list[Any] = [
    None, 5, 3.5, "", "garbage", "submit", b"claim", (), [], {}, {"op": "submit"}, Weird(),
    ("nope",), ("SUBMIT", spec("x")), (None,), ((),), ([1],), ({"a": 1}, 1), (10**100,),
    ("submit",), ("submit", None), ("submit", spec("x"), spec("y")), ("submit", {"task_id": "x"}),
    ("submit", spec("x", conditions=None)),  # type: ignore[arg-type]
    ("submit", spec("x", conditions=5)),  # type: ignore[arg-type]
    ("submit", spec(["unhashable"])),  # type: ignore[arg-type]
    ("claim",), ("claim", "t"), ("claim", "t", "a"), ("claim", "t", "a", 1, 2),
    ("claim", None, "a", 1), ("claim", ["t"], "a", 1), ("claim", "t", ["a"], 1),
    ("claim", "t", "a", "1"), ("claim", "t", "a", None), ("claim", "t", "a", 10**100),
    ("claim", "t", "zz", 1), ("claim", "t", "a", -(10**100)),
    ("finish", "r", "a", 1), ("finish", "r", "a", 1, None), ("finish", "r", "a", 1, 0),
    ("finish", "r", "a", 1, out(0), "extra"), ("finish", "r", "a", "1", out(0)),
    ("finish", "r", "a", 1, out(0, stdout_tail="str not bytes")),
    ("finish", "r", "a", 1, out(0, stderr_tail=12345)), ("finish", {}, "a", 1, out(0)),
    ("release", "r", "a", 1), ("release", "r", "a"), ("release", "r", "b", 1, "x"),
    ("release", "r", "a", 10**100, "x"),
    ("delete",), ("delete", None), ("delete", ["r"]), ("delete", "r", "x"),
    ("delete", "nope" * 1000),
    ("join",), ("join", None), ("join", "a"), ("join", info("")), ("join", info("n"), 1),
    ("heartbeat", "zz", Resources(), ""), ("heartbeat", "a"), ("heartbeat", ["a"], Resources(), ""),
    ("expire_node",), ("expire_node", None), ("expire_node", "zz"), ("expire_node", {}),
    ("leave", "zz"), ("leave", "a", "b"),
    ("add_tag", "a"), ("add_tag", "a", None), ("add_tag", "a", 5), ("add_tag", "a", ""),
    ("add_tag", "a", "x y"), ("add_tag", "zz", "t"), ("add_tag", None, "t"),
    ("del_tag", "a", "nope"), ("del_tag", "a", ["x"]), ("del_tag", "a"), ("del_tag", "zz", "x"),
]


@pytest.mark.parametrize("op", MALFORMED, ids=[repr(o)[:40] for o in MALFORMED])
def test_malformed_ops_are_rejected_without_change(op: Any) -> None:
    q = Queue()
    q.apply_batch([("join", info("a")), ("join", info("b")), ("submit", spec("t")),
                   ("submit", spec("r")), ("claim", "r", "a", 1)], 0.0)
    before = observe(q)
    for apply in (lambda: q.apply(op, 1.0), lambda: q.apply_batch([op], 1.0)[0]):
        reply = apply()
        assert isinstance(reply, Reply) and reply.ok is False and reply.detail
        assert observe(q)[:-1] == before[:-1]  # only the `applied` counter may move


class Cores(enum.IntEnum):
    TWO = 2


@pytest.mark.parametrize(("fields", "problem"), [
    ({"memory": True}, "memory must be a whole number >= 0"),
    ({"memory": 1.0}, "memory must be a whole number >= 0"),
    ({"storage": -1}, "storage must be a whole number >= 0"),
    ({"cores": 0}, "cores must be at least 1"),
    ({"concurrent": 1}, "concurrent, rename and held must be true or false"),
    ({"rename": None}, "concurrent, rename and held must be true or false"),
    ({"files": [("a", "0" * 64, 1)]}, "files must be (name, sha256, size) triples"),
    ({"files": (("a", "0" * 64),)}, "files must be (name, sha256, size) triples"),
    ({"files": (("a", "0" * 64, -1),)}, "files must be (name, sha256, size) triples"),
    ({"files": (("a", "0" * 64, True),)}, "files must be (name, sha256, size) triples"),
    ({"files": (("a", "0" * 64, 1), None)}, "files must be (name, sha256, size) triples"),
    ({"cores": Cores.TWO, "files": (("a", "0" * 64, 1),)}, ""),  # an int subclass is a number
])
def test_each_badly_typed_field_of_a_spec_is_named(fields: dict[str, Any], problem: str) -> None:
    assert spec_problem(spec("t", **fields)) == problem


def test_badly_typed_spec_is_rejected_or_harmless() -> None:
    q = Queue()
    q.apply_batch([("join", info("a"))], 0.0)
    reply = q.apply_batch([("submit", spec("t", retries=None))], 0.0)[0]  # type: ignore[arg-type]
    if reply.ok:
        q.apply_batch([("claim", "t", "a", 1), ("finish", "t", "a", 1, out(1))], 1.0)
        check_invariants(q)
        q.apply_batch([("expire_node", "a")], 2.0)
        assert state(q, "t") is not State.RUNNING


@pytest.mark.parametrize("op", [("heartbeat", "a", None, ""),
                                ("join", NodeInfo("n", "worker", "", "", None))])  # type: ignore[arg-type]
def test_badly_typed_node_records_rejected(op: tuple[Any, ...]) -> None:
    q = Queue()
    q.apply_batch([("join", info("a"))], 0.0)
    assert q.apply(op, 1.0).ok is False


# ----- fuzz -----------------------------------------------------------------------------------

def check_invariants(q: Queue) -> None:
    """The invariants that must hold after every operation."""
    order = queued_ids(q)
    queued = set(order)
    assert len(order) == len(queued)
    for tid, t in q.tasks.items():
        assert t.spec.task_id == tid
        if t.state is State.RUNNING:
            assert t.node is not None and any(x is t for x in q.running_on(t.node)), tid
        assert (t.state is State.QUEUED) == (tid in queued), tid  # so final => not queued
        for a in t.attempts:  # times are numbers: readers compare and print them
            assert isinstance(a.start, float | int) and isinstance(a.end, float | int | None), a
        if t.outcome is not None:
            assert all(isinstance(x, float | int) for x in (t.outcome.start, t.outcome.end)), t
        if t.attempts:
            numbers = [a.number for a in t.attempts]
            assert numbers == sorted(set(numbers)) and numbers[-1] == t.attempt, (tid, numbers)
    for name in q.nodes:
        running = q.running_on(name)
        assert all(t.state is State.RUNNING and t.node == name for t in running)
        if len(running) > 1:
            assert all(t.spec.concurrent for t in running), name
        # The count a claim checks instead of looking at every running task.
        assert q._exclusive.get(name, 0) == sum(not t.spec.concurrent for t in running), name
        # The reservation kept as tasks come and go is their sum.
        assert q.reserved(name) == sum((t.spec.needs for t in running), Resources()), name
    assert q.pending_count() == len(q.tasks) - sum(t.state.final for t in q.tasks.values())
    # A queued task whose queue conditions can never hold has been failed (settled after
    # every batch, or a replica restored from a snapshot, which settles at once, would differ).
    for t in q.queued():
        verdict = cond.evaluate_queue(q.conditions_of(t), t.seq, q)
        assert verdict.status is not cond.Status.NEVER, (t.spec.task_id, verdict)
    # The indexes settling uses instead of checking every waiting task match a rebuild.
    assert q._conditional == {t.spec.task_id for t in q.queued() if any(
        c.scope == "queue" for c in q.conditions_of(t))}
    named: dict[str, set[str]] = {}
    for tid in q._conditional:
        for c in q.conditions_of(q.tasks[tid]):
            if c.predicate in ("after", "after_ok"):
                named.setdefault(c.argument or "", set()).add(tid)
    assert q._named_by == named
    assert q._by_pattern == {tid for tid in q._conditional if any(
        c.predicate == "all_with_cmd_ok" for c in q.conditions_of(q.tasks[tid]))}
    assert q._settle or not q._to_check  # settled after each batch (a restore settles at its first)
    blocked: dict[str, set[str]] = {}
    for tid in q._conditional:
        for c in q.conditions_of(q.tasks[tid]):
            dep = q.tasks.get(c.argument or "") if c.predicate in ("after", "after_ok") else None
            if dep is not None and not dep.state.final:
                blocked.setdefault(tid, set()).add(dep.spec.task_id)
    assert q._blocked == blocked
    for tid in blocked:  # what the scheduler skips: its conditions indeed do not hold yet
        t = q.tasks[tid]
        assert cond.evaluate_queue(q.conditions_of(t), t.seq, q).status is cond.Status.WAIT
    # What the scheduler lists: every queued task not blocked nor held, higher priority first,
    # then in submit order. Only a queued task is ever held.
    assert all(t.state is State.QUEUED for t in q.tasks.values() if t.held)
    ready = sorted((t for t in q.queued() if t.spec.task_id not in blocked and not t.held),
                   key=lambda t: (-t.priority, t.seq))
    assert list(q.ready()) == ready
    q.forgettable(1e12)  # what the leader asks: never raises
    # Forgetting never takes a task an unfinished one depends on by id.
    for t in [t for t in q.tasks.values() if not t.state.final]:
        for c in q.conditions_of(t):
            if c.predicate in ("after", "after_ok"):
                assert c.argument in q.tasks, (t.spec.task_id, c)
    # The tails budget accounts for exactly the tails the records hold.
    held = {tid: len(t.outcome.stdout_tail) + len(t.outcome.stderr_tail)
            for tid, t in q.tasks.items() if t.outcome is not None}
    assert q._tails == {tid: n for tid, n in held.items() if n}
    assert q._tail_bytes == sum(held.values()) <= q.tails_budget


IDS = [f"t{i}" for i in range(24)]
NODES = ["a", "b", "c"]
CONDS = ["", "", "queue:is_first", "queue:after t1", "queue:after_ok t2; queue:after_ok t0",
         "queue:all_with_cmd_ok ^x", "worker:tag gpu", "queue:after_ok t7", "bad", "queue:after zz"]


def random_op(rng: random.Random, q: Queue) -> Any:
    """One operation, usually well formed and often valid, sometimes garbage."""
    tid, node = rng.choice(IDS), rng.choice(NODES + ["zz"])
    task = q.get(tid)
    attempt = (task.attempt if task else 0) + rng.choice([1, 1, 1, 0, 2])
    current = task.node if task and task.node and rng.random() < 0.8 else node
    kind = rng.randrange(15)
    if kind == 0:
        return ("submit", spec(tid, conditions=rng.choice(CONDS), concurrent=rng.random() < 0.8,
                               retries=rng.randrange(3), command=rng.choice(["x1", "y", "x2"]),
                               time_limit=rng.choice([0.0, 0.0, 60.0, -1.0]),
                               priority=rng.choice([0, 0, 0, 5, -3, 2**31]),
                               held=rng.random() < 0.05))
    if kind in (1, 2, 3):
        return ("claim", tid, node if rng.random() < 0.5 else rng.choice(NODES), attempt)
    if kind in (4, 5):
        size = rng.choice([0, 10, TAIL_BYTES + 5])
        return ("finish", tid, current, task.attempt if task else 1,
                Outcome(rng.choice([0, 0, 1, 137]), 0.0,
                        rng.choice([1.0, 1.0, 1.0, 1.0, None, "x"]),  # type: ignore[arg-type]
                        b"o" * size, b"e", timed_out=rng.choice([False, False, True, 1])))
    if kind == 6:
        return ("release", tid, current, task.attempt if task else 1, "r")
    if kind == 7:
        if rng.random() < 0.25:
            return ("forget", rng.sample(IDS, rng.randrange(1, 8)) if rng.random() < 0.9 else tid)
        return ("delete", tid) if rng.random() < 0.3 else ("release", tid, node, attempt, "")
    if kind == 8:
        seen = q.nodes[node].last_seen + rng.choice([-1.0, 0.0, 1.0]) if node in q.nodes else 0.0
        return rng.choice([("join", info(node)), ("leave", node), ("expire_node", node),
                           ("expire_node", node, seen)])
    if kind == 9:
        return ("heartbeat", node, Resources(1, 1, 1), "")
    if kind == 10:
        return rng.choice([("add_tag", node, "gpu"), ("del_tag", node, "gpu"),
                           ("add_tag", node, "b a d"), ("drain", node, rng.random() < 0.15),
                           ("priority", tid, rng.choice([1, -2, 7, 10**40, "x"])),
                           ("hold", tid, rng.choice([True, True, False, 1]), rng.random() < 0.5)])
    if kind == 11:
        return rng.choice(MALFORMED)
    if kind == 13:  # results a node produced while isolated, well formed or not
        return ("merge_isolated", node, [
            (rng.choice(IDS), rng.choice([0.5, None]),
             rng.choice([Outcome(rng.choice([0, 1]), 0.0, 1.0, b"i", b""),
                         Outcome(None, 0.0, 1.0), Outcome(0, 0.0, None), "x"]))  # type: ignore[arg-type]
            for _ in range(rng.randrange(1, 4))])
    if kind == 12:
        base = random_op(rng, q)
        op = list(base) if isinstance(base, tuple) else [base]
        if op:
            op.insert(rng.randrange(1, len(op) + 1), rng.choice([None, 10**40, "x", -1, b"\0"]))
        return tuple(op)
    return (rng.choice(["claim", "finish", "submit", "zap"]),
            *[rng.choice([None, 7, "t1", 10**50, [], "a"]) for _ in range(rng.randrange(5))])


@pytest.mark.parametrize("seed", [1234, 10, 31, 2024, 77, 5150])  # 10 and 31 once found bugs
def test_random_ops_never_raise_and_keep_invariants(seed: int) -> None:
    rng = random.Random(seed)
    q, replica = Queue(tails_budget=3 * TAIL_BYTES), Queue(tails_budget=3 * TAIL_BYTES)
    accepted, seen = 0, set()
    for step in range(3000):
        batch = [random_op(rng, q) for _ in range(rng.choice([1, 1, 2, 3]))]
        replies = q.apply_batch(batch, float(step))
        assert all(isinstance(r, Reply) for r in replies)
        accepted += sum(r.ok for r in replies)
        check_invariants(q)
        seen |= {t.state for t in q.tasks.values()}
        assert replica.apply_batch(batch, float(step)) == replies
        if step % 50 == 0:  # the state itself, not only the replies (about 1 s over the run)
            assert observe(replica) == observe(q), step
        if step % 500 == 250:
            replica = Queue.restore(pickle.loads(pickle.dumps(q.snapshot())))
            replica.tails_budget = q.tails_budget
            check_invariants(replica)
    assert observe(replica) == observe(q)
    assert accepted > 1000 and seen == set(State), (accepted, seen)


def test_check_submit_sees_earlier_specs_of_the_same_batch() -> None:
    q = Queue()
    first = TaskSpec("one", 1, 1, 1, True, "", (), "true")
    second = TaskSpec("two", 1, 1, 1, True, "queue:after one", (), "true")
    clash = TaskSpec("one", 1, 1, 1, True, "", (), "false")
    assert q.check_submit([first, second]) == []
    assert q.check_submit([second]) == [
        (0, "CONDITIONS: unknown task 'one' (named by a queue: condition)")]
    [(index, problem)] = q.check_submit([first, clash])
    assert index == 1 and problem.startswith("ID: task id 'one' is already used by a different task")
    # A task named before it is queued, in the same file: said so, not "unknown".
    assert q.check_submit([second, first]) == [
        (0, "CONDITIONS: task 'one' comes later in this submit: a queue: condition may name "
            "only tasks queued before it")]
    assert q.tasks == {}  # a dry run changes nothing


def test_stale_expire_is_refused_after_a_newer_heartbeat() -> None:
    q = Queue()
    info = NodeInfo(name="n1", kind="worker", rpc="h:1", raft="h:2", offered=Resources(1, 1, 1))
    assert q.apply(("join", info), 10.0).ok
    assert q.apply(("heartbeat", "n1", Resources(1, 1, 1), ""), 20.0).ok
    # Proposed by a leader that last saw a heartbeat at 10.0, applied after the one at 20.0:
    assert not q.apply(("expire_node", "n1", 10.0), 30.0).ok
    assert q.nodes["n1"].alive
    assert q.apply(("expire_node", "n1", 20.0), 31.0).ok
    assert not q.nodes["n1"].alive


# ----- the output-tails budget ----------------------------------------------------------------

def finish_with_tails(q: Queue, tid: str, out_bytes: int, err_bytes: int = 0, code: int = 0) -> None:
    """Submit, claim on a and finish `tid` with tails of the given sizes."""
    ok(q, ("submit", spec(tid)))
    ok(q, ("claim", tid, "a", 1))
    ok(q, ("finish", tid, "a", 1, out(code, stdout_tail=b"o" * out_bytes, stderr_tail=b"e" * err_bytes,
                                      stdout_bytes=out_bytes, stderr_bytes=err_bytes)))


def tails(q: Queue, tid: str) -> tuple[int, int, bool]:
    task = q.get(tid)
    assert task is not None and task.outcome is not None
    return len(task.outcome.stdout_tail), len(task.outcome.stderr_tail), task.outcome.tails_dropped


def test_oldest_finished_tails_dropped_beyond_the_budget(q: Queue) -> None:
    q.tails_budget = 1000
    finish_with_tails(q, "t1", 300, 100)
    finish_with_tails(q, "t2", 400)
    finish_with_tails(q, "t3", 200)
    assert [tails(q, t) for t in ("t1", "t2", "t3")] == [(300, 100, False), (400, 0, False),
                                                         (200, 0, False)]
    finish_with_tails(q, "t4", 1)  # 1001 bytes: the oldest, t1, goes
    assert tails(q, "t1") == (0, 0, True)
    assert [tails(q, t) for t in ("t2", "t3", "t4")] == [(400, 0, False), (200, 0, False),
                                                         (1, 0, False)]
    task = q.get("t1")
    assert task is not None and task.outcome is not None
    assert (task.outcome.stdout_bytes, task.outcome.stderr_bytes, task.state) == (300, 100, State.DONE)
    finish_with_tails(q, "t5", 0)  # no tails: costs nothing, drops nothing
    assert tails(q, "t2") == (400, 0, False)


def test_deleted_and_retried_tasks_give_their_tails_back(q: Queue) -> None:
    q.tails_budget = 1000
    finish_with_tails(q, "t1", 600)
    ok(q, ("delete", "t1"))
    finish_with_tails(q, "t2", 900)  # fits: t1's 600 bytes were given back
    assert tails(q, "t2") == (900, 0, False)
    ok(q, ("submit", spec("r", retries=1)))
    ok(q, ("claim", "r", "b", 1))
    ok(q, ("finish", "r", "b", 1, out(1, stdout_tail=b"x" * 50)))  # retried: its tails count
    assert state(q, "r") is State.QUEUED and tails(q, "t2") == (900, 0, False)
    ok(q, ("claim", "r", "b", 2))
    ok(q, ("finish", "r", "b", 2, out(0, stdout_tail=b"y" * 80)))  # replaces them: 980 in all
    assert tails(q, "r") == (80, 0, False) and tails(q, "t2") == (900, 0, False)


def test_a_node_cannot_mark_its_own_tails_dropped(q: Queue) -> None:
    ok(q, ("submit", spec("t")))
    ok(q, ("claim", "t", "a", 1))
    ok(q, ("finish", "t", "a", 1, out(0, stdout_tail=b"hi", tails_dropped=True)))
    assert tails(q, "t") == (2, 0, False)


def test_tails_budget_survives_a_snapshot_in_drop_order(q: Queue) -> None:
    q.tails_budget = 1000
    for tid in ("t1", "t2", "t3"):
        finish_with_tails(q, tid, 300)
    r = Queue.restore(pickle.loads(pickle.dumps(q.snapshot())))
    r.tails_budget = 1000
    for queue in (q, r):
        finish_with_tails(queue, "t4", 300)
    assert [tails(r, t) for t in ("t1", "t2", "t3", "t4")] == \
        [tails(q, t) for t in ("t1", "t2", "t3", "t4")] == \
        [(0, 0, True), (300, 0, False), (300, 0, False), (300, 0, False)]


def test_snapshot_without_tails_order_rebuilds_it_oldest_end_first() -> None:
    q = Queue(tails_budget=1000)
    ok(q, ("join", info("a")))
    for tid, end in (("late", 9.0), ("early", 3.0)):
        ok(q, ("submit", spec(tid)))
        ok(q, ("claim", tid, "a", 1))
        ok(q, ("finish", tid, "a", 1, Outcome(0, 1.0, end, stdout_tail=b"z" * 400)))
    data = q.snapshot()
    del data["tails"]  # written before the budget existed
    r = Queue.restore(data)
    r.tails_budget = 1000
    ok(r, ("submit", spec("new")))
    ok(r, ("claim", "new", "a", 1))
    ok(r, ("finish", "new", "a", 1, out(0, stdout_tail=b"n" * 400)))
    assert tails(r, "early") == (0, 0, True) and tails(r, "late") == (400, 0, False)


# ----- forgetting finished tasks --------------------------------------------------------------

def run_to_end(q: Queue, tid: str, code: int = 0, end: float = 2.0, **kw: Any) -> None:
    ok(q, ("submit", spec(tid, **kw)))
    ok(q, ("claim", tid, "a", 1))
    ok(q, ("finish", tid, "a", 1, Outcome(code, 1.0, end, stdout_tail=b"x")))


def test_forget_drops_old_finished_records_and_frees_their_ids(q: Queue) -> None:
    run_to_end(q, "old", end=5.0)
    run_to_end(q, "new", end=50.0)
    ok(q, ("submit", spec("never")), now=3.0)
    ok(q, ("delete", "never"))  # deleted before it ran: judged by its submission time
    ok(q, ("submit", spec("waiting")), now=1.0)
    assert q.forgettable(10.0) == ["old", "never"]
    assert ok(q, ("forget", ["old", "never", "new", "waiting", "unknown"])).detail == "forgot 3 of 5"
    assert set(q.tasks) == {"waiting"}  # "new" went too: the op decides by state, not age
    assert q._tails == {} and q._tail_bytes == 0
    ok(q, ("submit", spec("old", command="echo again")))  # the id is free again
    assert state(q, "old") is State.QUEUED


def test_forget_keeps_what_a_queued_task_depends_on(q: Queue) -> None:
    run_to_end(q, "dep")
    run_to_end(q, "x-early", command="x-job")
    run_to_end(q, "other")
    ok(q, ("submit", spec("after", conditions="queue:after_ok dep; worker:tag nowhere")))
    ok(q, ("submit", spec("all", conditions="queue:all_with_cmd_ok ^x; worker:tag nowhere")))
    run_to_end(q, "later")  # submitted after every waiting task: nothing depends on it
    assert q.forgettable(100.0) == ["later"]
    assert ok(q, ("forget", ["dep", "x-early", "other", "later"])).detail == "forgot 1 of 4"
    ok(q, ("delete", "all"))  # no queued all_with_cmd task left: only "dep" is still needed
    assert q.forgettable(100.0) == ["x-early", "other", "all"]
    ok(q, ("delete", "after"))
    assert q.forgettable(100.0) == ["dep", "x-early", "other", "after", "all"]


def test_forget_keeps_what_a_running_task_depends_on_for_its_retry(q: Queue) -> None:
    """A running task goes back to the queue, its conditions to be met again, when it exits
    non-zero with retries left or its node dies: what it depends on stays until it is final
    (forgotten, the retry failed with "can never run: unknown task")."""
    run_to_end(q, "dep")
    ok(q, ("submit", spec("t", conditions="queue:after_ok dep", retries=1)))
    ok(q, ("claim", "t", "a", 1))
    assert q.forgettable(100.0) == []
    assert ok(q, ("forget", ["dep"])).detail == "forgot 0 of 1"
    ok(q, ("finish", "t", "a", 1, out(1)))
    assert state(q, "t") is State.QUEUED and q.get("t").reason == ""  # type: ignore[union-attr]
    ok(q, ("claim", "t", "b", 2))
    ok(q, ("expire_node", "b"))  # its node dies: back to the queue again
    assert state(q, "t") is State.QUEUED and q.get("dep") is not None
    ok(q, ("join", info("b")))
    ok(q, ("claim", "t", "b", 3))
    ok(q, ("finish", "t", "b", 3, out(0)))
    assert q.forgettable(100.0) == ["dep", "t"]


def test_a_requeued_task_whose_dependency_was_deleted_while_it_ran_is_settled_at_once(
        q: Queue) -> None:
    """Its conditions are to be met again and cannot be: it fails in the same batch, as on a
    replica restored from a snapshot (which settles every conditional task), not whenever
    another task next ends (so replicas could differ on its state meanwhile)."""
    run_to_end(q, "dep")
    ok(q, ("submit", spec("t", conditions="queue:after_ok dep")))
    ok(q, ("claim", "t", "a", 1))
    ok(q, ("delete", "dep"))  # t runs: nothing to settle yet
    assert state(q, "t") is State.RUNNING
    ok(q, ("expire_node", "a"))  # back to the queue, "after_ok dep" can no longer hold
    assert state(q, "t") is State.FAILED
    assert q.get("t").reason == "can never run: task 'dep' was deleted (queue:after_ok dep)"  # type: ignore[union-attr]


def test_merge_isolated_results_the_first_final_result_wins(q: Queue) -> None:
    for tid in ("queued", "elsewhere", "final"):
        ok(q, ("submit", spec(tid)))
    ok(q, ("claim", "elsewhere", "b", 1))
    ok(q, ("claim", "final", "b", 1))
    ok(q, ("finish", "final", "b", 1, out(0)))
    runs = [(tid, 0.5, out(7)) for tid in ("queued", "elsewhere", "final", "unknown")]
    assert ok(q, ("merge_isolated", "a", runs), now=3.0).detail == "merged 2 of 4"
    for tid in ("queued", "elsewhere"):
        task = q.get(tid)
        assert task is not None and task.state is State.FAILED and task.node == "a"
        assert task.outcome is not None and task.outcome.exit_code == 7
        assert task.attempts[-1].why == "isolated run"
    assert [a.why for a in q.get("elsewhere").attempts] == [  # type: ignore[union-attr]
        "superseded by an isolated result", "isolated run"]
    final = q.get("final")
    assert final is not None and final.state is State.DONE and final.outcome.exit_code == 0  # type: ignore[union-attr]
    assert final.attempts[-1].why == "isolated run (duplicate; result not used)"
    assert q.running_on("a") == [] and q.running_on("b") == []


def test_the_same_isolated_results_merged_twice_change_nothing_the_second_time(q: Queue) -> None:
    """A merge proposed again (a timeout after it committed, a node restarted before it deleted
    its results) adds no duplicate attempt: the history stays that of one merge."""
    for tid in ("queued", "final"):
        ok(q, ("submit", spec(tid)))
    ok(q, ("claim", "final", "b", 1))
    ok(q, ("finish", "final", "b", 1, out(0)))
    runs = [(tid, 0.5, out(7)) for tid in ("queued", "final")]
    assert ok(q, ("merge_isolated", "a", runs), now=3.0).detail == "merged 1 of 2"
    once = observe(q)
    assert ok(q, ("merge_isolated", "a", runs), now=4.0).detail == "merged 0 of 2"
    assert observe(q)[:-1] == once[:-1]
    assert [a.why for a in q.get("final").attempts] == [  # type: ignore[union-attr]
        "exit", "isolated run (duplicate; result not used)"]
    # Another run of the same task (a later start) is still kept as a duplicate.
    assert ok(q, ("merge_isolated", "a", [("final", 2.5, out(7))]), now=5.0).detail == "merged 0 of 1"
    assert len(q.get("final").attempts) == 3  # type: ignore[union-attr]


@pytest.mark.parametrize("run", [
    ("t", 0.5, Outcome(None, 0.0, 1.0)),  # type: ignore[arg-type]
    ("t", 0.5, Outcome(0, 0.0, None)),  # type: ignore[arg-type]
    ("t", None, out(0)),
    ("t", 0.5, "not an outcome"),
])
def test_a_malformed_isolated_result_changes_nothing(q: Queue, run: Any) -> None:
    """Checked before anything changes: `finish` would refuse it after the task was put on
    the node, leaving it running there for good."""
    ok(q, ("submit", spec("t", concurrent=False)))
    before = observe(q)
    assert ok(q, ("merge_isolated", "a", [run])).detail == "merged 0 of 1"
    assert observe(q)[:-1] == before[:-1] and state(q, "t") is State.QUEUED


def test_an_ending_task_re_checks_only_the_tasks_waiting_on_it(
        q: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 1,000 tasks waiting each on its own root, a root's end checks its one dependent
    (none for a success), not all 1,000 (milliseconds per task on every replica)."""
    ok(q, ("submit", spec("early-x", command="x")))
    q.apply_batch([("submit", spec(f"r{i}")) for i in range(1000)], 0.0)
    q.apply_batch([("submit", spec(f"d{i}", conditions=f"queue:after_ok r{i}"))
                   for i in range(1000)] + [
                  ("submit", spec("pattern", conditions="queue:all_with_cmd_ok ^x"))], 0.0)
    checked: list[str] = []
    real = cond.evaluate_queue

    def counting(conds: Any, seq: int, view: Any) -> Any:
        checked.append(next(t.spec.task_id for t in q.tasks.values() if t.seq == seq))
        return real(conds, seq, view)

    monkeypatch.setattr(cond, "evaluate_queue", counting)
    for i, code in ((0, 0), (1, 1)):
        q.apply_batch([("claim", f"r{i}", "a", 1)], 1.0)
        q.apply_batch([("finish", f"r{i}", "a", 1, out(code))], 2.0)
    # r1 failed: its dependent d1 only ("true" does not match ^x); r0's success: nothing.
    assert checked == ["d1"], checked
    assert state(q, "d1") is State.FAILED and state(q, "d0") is State.QUEUED
    checked.clear()
    q.apply_batch([("claim", "early-x", "a", 1)], 3.0)
    q.apply_batch([("finish", "early-x", "a", 1, out(1))], 4.0)  # an earlier match failed
    assert checked == ["pattern"] and state(q, "pattern") is State.FAILED


def test_forget_refuses_what_is_not_a_list_of_ids(q: Queue) -> None:
    run_to_end(q, "t")
    for bad in ("t", ["t", 5], None, [["t"]]):
        no(q, ("forget", bad), "not a list of task ids")
    assert "t" in q.tasks

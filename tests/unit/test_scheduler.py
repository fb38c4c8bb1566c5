"""plan(): which queued tasks a node claims now, on a hand-built replicated Queue."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest

from comrade.model import NodeInfo, Outcome, Resources, TaskSpec
from comrade.queue import Queue
from comrade.scheduler import Claim, LocalFacts, fits, plan, plan_ahead

GiB = 1024**3
BIG = Resources(64 * GiB, 64, 64 * GiB)
NO_FILES = LocalFacts(frozenset(), lambda name: False)


def spec(tid: str, *, cores: int = 1, memory: int = 0, storage: int = 0, concurrent: bool = True,
         conditions: str = "", retries: int = 0,
         files: tuple[tuple[str, str, int], ...] = ()) -> TaskSpec:
    return TaskSpec(tid, memory, cores, storage, concurrent, conditions, files, "true", retries)


def node(name: str, offered: Resources = BIG, tags: Iterable[str] = ()) -> NodeInfo:
    return NodeInfo(name, "worker", f"{name}:1", f"{name}:2", offered, frozenset(tags))


def ok(q: Queue, *ops: tuple[Any, ...]) -> None:
    """Apply ops, asserting every one is accepted."""
    replies = q.apply_batch(list(ops), 0.0)
    assert all(r.ok for r in replies), list(zip(ops, replies, strict=False))


def build(nodes: Iterable[NodeInfo], specs: Iterable[TaskSpec]) -> Queue:
    q = Queue()
    ok(q, *[("join", n) for n in nodes])
    ok(q, *[("submit", s) for s in specs])
    return q


def waited(seconds: float) -> Callable[[str], float]:
    return lambda task_id: seconds


def ids(claims: list[Claim]) -> list[str]:
    return [c.task_id for c in claims]


def run_plan(q: Queue, me: str = "a", free: Resources = BIG, local: LocalFacts = NO_FILES,
             wait: float = 0.0, **kw: Any) -> tuple[list[Claim], bool]:
    return plan(q, me, free, local, waited(wait), **kw)


# ----- fitting --------------------------------------------------------------------------------

@pytest.mark.parametrize("needs, free, expected", [
    (Resources(1, 1, 1), Resources(1, 1, 1), True),
    (Resources(2, 1, 1), Resources(1, 1, 1), False),
    (Resources(1, 2, 1), Resources(1, 1, 1), False),
    (Resources(1, 1, 2), Resources(1, 1, 1), False),
    (Resources(0, 0, 0), Resources(0, 0, 0), True),
])
def test_fits(needs: Resources, free: Resources, expected: bool) -> None:
    assert fits(needs, free) is expected


@pytest.mark.parametrize("free, expected", [
    (Resources(8 * GiB, 8, 8 * GiB), ["cpu", "mem", "disk", "small"]),
    (Resources(8 * GiB, 3, 8 * GiB), ["mem", "disk", "small"]),  # cpu needs 4 cores
    (Resources(8 * GiB, 2, 8 * GiB), ["mem", "disk"]),  # no cores left: the pass stops
    (Resources(1 * GiB, 8, 8 * GiB), ["cpu", "disk", "small"]),  # mem needs 2 GiB
    (Resources(8 * GiB, 8, 1 * GiB), ["cpu", "mem", "small"]),  # disk needs 3 GiB with its file
    (Resources(0, 8, 0), ["cpu", "small"]),
    (Resources(8 * GiB, 0, 8 * GiB), []),
])
def test_fits_by_cores_memory_storage(free: Resources, expected: list[str]) -> None:
    q = build([node("a")], [
        spec("cpu", cores=4), spec("mem", memory=2 * GiB),
        spec("disk", storage=2 * GiB, files=(("f", "0" * 64, GiB),)), spec("small", cores=1),
    ])
    claims, deferred = run_plan(q, free=free)
    assert ids(claims) == expected and not deferred
    assert all(c.attempt == 1 for c in claims)


def test_free_is_consumed_in_submit_order() -> None:
    q = build([node("a")], [spec(f"t{i}", cores=2) for i in range(5)])
    claims, _ = run_plan(q, free=Resources(GiB, 5, GiB))
    assert ids(claims) == ["t0", "t1"]


def test_free_goes_to_higher_priority_first_then_submit_order() -> None:
    q = build([node("a")], [spec(f"t{i}", cores=2) for i in range(5)])
    ok(q, ("priority", "t3", 5), ("priority", "t4", 1), ("priority", "t0", -1))
    claims, _ = run_plan(q, free=Resources(GiB, 5, GiB))
    assert ids(claims) == ["t3", "t4"]
    claims, _ = run_plan(q, free=Resources(GiB, 1, GiB))
    assert ids(claims) == []  # no smaller task jumps the line here: all need 2 cores
    ok(q, ("submit", spec("one", cores=1)))
    claims, _ = run_plan(q, free=Resources(GiB, 1, GiB))
    assert ids(claims) == ["one"]  # a task that fits goes ahead of higher ones that do not


def test_ahead_takes_higher_priority_first() -> None:
    q = busy_cluster()
    for i, tid in enumerate(TASKS):  # the last submitted first
        ok(q, ("priority", tid, i))
    for me in "abc":
        share = ids(plan_ahead(q, me, 100, NO_FILES))
        assert share == sorted(share, key=TASKS.index, reverse=True)


def test_limit_and_claiming_in_flight() -> None:
    q = build([node("a")], [spec(f"t{i}") for i in range(6)])
    assert ids(run_plan(q, limit=3)[0]) == ["t0", "t1", "t2"]
    assert ids(run_plan(q, claiming=["t0", "t2"])[0]) == ["t1", "t3", "t4", "t5"]


def test_next_attempt_number_after_requeue() -> None:
    q = build([node("a")], [spec("t")])
    ok(q, ("claim", "t", "a", 1), ("release", "t", "a", 1, "no room"))
    assert run_plan(q)[0] == [Claim("t", 2)]


def test_dead_or_unknown_node_claims_nothing() -> None:
    q = build([node("a")], [spec("t")])
    assert run_plan(q, me="zz") == ([], False)
    ok(q, ("expire_node", "a"))
    assert run_plan(q) == ([], False)


# ----- CONCURRENT=false -----------------------------------------------------------------------

def test_non_concurrent_only_on_idle_node_and_stops_the_pass() -> None:
    q = build([node("a")], [spec("solo", concurrent=False), spec("c1"), spec("c2")])
    assert ids(run_plan(q)[0]) == ["solo"]


def test_non_concurrent_skipped_once_something_is_claimed() -> None:
    q = build([node("a")], [spec("c1"), spec("solo", concurrent=False), spec("c2")])
    assert ids(run_plan(q)[0]) == ["c1", "c2"]


def test_non_concurrent_skipped_while_busy_or_claiming() -> None:
    q = build([node("a")], [spec("c1"), spec("solo", concurrent=False)])
    assert ids(run_plan(q, claiming=["c1"])[0]) == []
    ok(q, ("claim", "c1", "a", 1))
    assert ids(run_plan(q)[0]) == []


def test_nothing_runs_next_to_a_non_concurrent_task() -> None:
    q = build([node("a")], [spec("solo", concurrent=False), spec("c1")])
    ok(q, ("claim", "solo", "a", 1))
    assert run_plan(q) == ([], False)


# ----- conditions -----------------------------------------------------------------------------

def test_tags_steer() -> None:
    q = build([node("a", tags=["gpu"]), node("b")], [spec("g", conditions="worker:tag gpu")])
    assert ids(run_plan(q, me="a")[0]) == ["g"]
    assert run_plan(q, me="b", wait=100.0) == ([], False)
    local = LocalFacts(frozenset({"gpu"}), lambda name: False)
    assert ids(run_plan(q, me="b", local=local, wait=100.0)[0]) == ["g"]


def test_replicated_tag_added_later_counts() -> None:
    q = build([node("a")], [spec("g", conditions="worker:tag gpu")])
    assert run_plan(q)[0] == []
    ok(q, ("add_tag", "a", "gpu"))
    assert ids(run_plan(q)[0]) == ["g"]


def test_has_file_steers() -> None:
    q = build([node("a")], [spec("f", conditions="worker:has_file data.csv"), spec("x")])
    assert ids(run_plan(q)[0]) == ["x"]
    local = LocalFacts(frozenset(), lambda name: name == "data.csv")
    assert ids(run_plan(q, local=local)[0]) == ["f", "x"]



def test_a_task_this_node_cannot_run_takes_none_of_its_room() -> None:
    """Dealt to this node by the replicated facts, but its file is not here: a one-core node
    still starts the task behind it (the deal had counted the core as taken)."""
    one = Resources(GiB, 1, GiB)
    q = build([node("a", one)], [spec("f", conditions="worker:has_file data.csv"), spec("x")])
    assert ids(run_plan(q, free=one)[0]) == ["x"]
    q = build([node("a", one)], [spec("f"), spec("x")])
    assert ids(run_plan(q, free=one, avoid=["f"])[0]) == ["x"]  # f could not start here

def test_waiting_conditions_are_skipped() -> None:
    q = build([node("a")], [spec("first"), spec("dep", conditions="queue:after first"),
                            spec("seq", conditions="queue:is_first"), spec("free")])
    assert ids(run_plan(q)[0]) == ["first", "free"]
    ok(q, ("claim", "first", "a", 1), ("claim", "free", "a", 1))
    assert ids(run_plan(q)[0]) == []
    ok(q, ("finish", "first", "a", 1, Outcome(1, 0.0, 1.0)))
    assert ids(run_plan(q)[0]) == ["dep"]  # is_first still waits for `free` (and `dep`)


# ----- ranking --------------------------------------------------------------------------------

TASKS = [f"task-{i}" for i in range(40)]


@pytest.mark.parametrize("task_id", TASKS)
def test_two_idle_nodes_exactly_one_claims_at_once(task_id: str) -> None:
    q = build([node("a"), node("b")], [spec(task_id)])
    results = {me: run_plan(q, me=me, wait=0.0, defer_s=0.05) for me in ("a", "b")}
    claimed = [me for me, (claims, _) in results.items() if claims]
    assert len(claimed) == 1
    other = "b" if claimed == ["a"] else "a"
    assert results[claimed[0]] == ([Claim(task_id, 1)], False)
    assert results[other] == ([], True)
    # the deferring node takes it once the task has waited defer_s (one rank place)
    assert run_plan(q, me=other, wait=0.049, defer_s=0.05) == ([], True)
    assert run_plan(q, me=other, wait=0.05, defer_s=0.05) == ([Claim(task_id, 1)], False)


def test_the_hash_spreads_single_tasks_over_both_nodes() -> None:
    winners = set()
    for t in TASKS:
        q = build([node("a"), node("b")], [spec(t)])
        winners |= {me for me in ("a", "b") if run_plan(q, me=me)[0]}
    assert winners == {"a", "b"}


def test_two_idle_nodes_split_a_burst_of_tasks_at_once() -> None:
    q = build([node("a"), node("b")], [spec(t) for t in TASKS])
    mine = {me: set(ids(run_plan(q, me=me)[0])) for me in ("a", "b")}
    assert mine["a"] & mine["b"] == set()
    assert mine["a"] | mine["b"] == set(TASKS)


@pytest.mark.parametrize("wait, both", [(0.0, False), (0.049, False), (0.05, True), (1.0, True)])
def test_deferred_node_claims_after_defer_s(wait: float, both: bool) -> None:
    q = build([node("a"), node("b")], [spec(t) for t in TASKS])
    for me in ("a", "b"):
        claims, deferred = run_plan(q, me=me, wait=wait, defer_s=0.05)
        assert (len(claims) == len(TASKS)) == both
        assert deferred is not both


@pytest.mark.parametrize("task_id", TASKS[:10])
def test_loaded_node_defers_to_idle_one(task_id: str) -> None:
    q = build([node("a", Resources(GiB, 4, GiB)), node("b", Resources(GiB, 4, GiB))],
              [spec("busy"), spec(task_id)])
    ok(q, ("claim", "busy", "a", 1))
    assert run_plan(q, me="a", free=Resources(GiB, 3, GiB)) == ([], True)
    assert run_plan(q, me="b", free=Resources(GiB, 4, GiB)) == ([Claim(task_id, 1)], False)


def test_nodes_that_cannot_fit_or_lack_the_tag_do_not_outrank() -> None:
    small = Resources(GiB, 1, GiB)
    q = build([node("a"), node("b", small), node("c")],
              [spec(t, cores=2, conditions="worker:tag x") for t in TASKS[:20]])
    ok(q, ("add_tag", "a", "x"))
    assert len(run_plan(q, me="a")[0]) == 20  # b too small, c untagged: a is best


def test_lost_node_does_not_outrank() -> None:
    q = build([node("a"), node("b")], [spec(t) for t in TASKS])
    ok(q, ("expire_node", "b"))
    assert len(run_plan(q, me="a")[0]) == len(TASKS)


def test_a_draining_node_claims_nothing_and_does_not_outrank() -> None:
    q = build([node("a"), node("b")], [spec(t) for t in TASKS])
    ok(q, ("drain", "b", True))
    assert run_plan(q, me="b") == ([], False)
    assert len(run_plan(q, me="a")[0]) == len(TASKS)  # none left for b, none deferred
    ok(q, ("drain", "b", False))
    assert run_plan(q, me="b")[0]  # resumed: b takes its share again


def test_task_that_failed_on_a_prefers_b() -> None:
    q = build([node("a"), node("b")], [spec(t, retries=1) for t in TASKS])
    for t in TASKS:
        ok(q, ("claim", t, "a", 1), ("finish", t, "a", 1, Outcome(1, 0.0, 1.0)))
    a_claims, a_deferred = run_plan(q, me="a")
    b_claims, _ = run_plan(q, me="b")
    assert (a_claims, a_deferred) == ([], True)
    assert b_claims == [Claim(t, 2) for t in TASKS]
    assert len(run_plan(q, me="a", wait=0.3)[0]) == len(TASKS)


# ----- claiming ahead -------------------------------------------------------------------------

TWO = Resources(GiB, 2, GiB)


def busy_cluster(names: Iterable[str] = ("a", "b", "c"), extra: Iterable[TaskSpec] = (),
                 offered: Resources = TWO) -> Queue:
    """Every node runs two one-core tasks (full); 40 more wait, then `extra`."""
    names = list(names)
    running = [spec(f"run-{n}-{i}") for n in names for i in range(2)]
    q = build([node(n, offered) for n in names], running + [spec(t) for t in TASKS] + list(extra))
    ok(q, *[("claim", f"run-{n}-{i}", n, 1) for n in names for i in range(2)])
    return q


def test_ahead_each_full_node_takes_its_own_share() -> None:
    q = busy_cluster()
    shares = {me: ids(plan_ahead(q, me, 100, NO_FILES)) for me in "abc"}
    assert all(shares.values())
    assert sum(len(s) for s in shares.values()) == len(TASKS)
    assert set().union(*map(set, shares.values())) == set(TASKS)
    for me in "abc":
        assert shares[me] == sorted(shares[me], key=TASKS.index)  # in submit order


def test_ahead_room_limits_and_claims_are_next_attempts() -> None:
    q = busy_cluster()
    claims = plan_ahead(q, "a", 3, NO_FILES)
    assert len(claims) == 3 and all(c.attempt == 1 and c.ahead for c in claims)
    assert plan_ahead(q, "a", 0, NO_FILES) == []


def test_ahead_nothing_while_another_node_can_start_the_task_now() -> None:
    q = busy_cluster(names=("a", "b"))
    ok(q, ("finish", "run-b-0", "b", 1, Outcome(0, 0.0, 1.0)))  # b has a free core
    assert plan_ahead(q, "a", 100, NO_FILES) == []


def test_ahead_skips_non_concurrent_and_in_flight_and_avoided() -> None:
    q = busy_cluster(names=("a",), extra=[spec("alone", concurrent=False)])
    got = ids(plan_ahead(q, "a", 100, NO_FILES, claiming=TASKS[:5], avoid=TASKS[5:10]))
    assert got == TASKS[10:]


def test_ahead_nothing_next_to_a_non_concurrent_task() -> None:
    q = build([node("a", TWO)], [spec("alone", concurrent=False), spec("next")])
    ok(q, ("claim", "alone", "a", 1))
    assert plan_ahead(q, "a", 100, NO_FILES) == []


def test_ahead_respects_offer_tags_and_conditions() -> None:
    extra = [spec("big", cores=3), spec("tagged", conditions="worker:tag x"),
             spec("later", conditions="queue:after run-a-0")]
    q = busy_cluster(names=("a",), extra=extra)
    assert not {"big", "tagged", "later"} & set(ids(plan_ahead(q, "a", 100, NO_FILES)))
    tagged = LocalFacts(frozenset({"x"}), lambda name: False)
    assert "tagged" in ids(plan_ahead(q, "a", 100, tagged))


def test_ahead_a_task_only_one_node_can_run_is_that_nodes_share() -> None:
    q = busy_cluster(names=("a", "b"), extra=[spec("x-only", conditions="worker:tag x")])
    ok(q, ("add_tag", "b", "x"))
    assert "x-only" in ids(plan_ahead(q, "b", 100, NO_FILES))
    assert "x-only" not in ids(plan_ahead(q, "a", 100, NO_FILES))


def test_ahead_not_for_a_lost_or_unknown_node() -> None:
    q = busy_cluster(names=("a", "b"))
    ok(q, ("expire_node", "b"))
    assert plan_ahead(q, "b", 100, NO_FILES) == []
    assert plan_ahead(q, "zz", 100, NO_FILES) == []
    claims = plan_ahead(q, "a", 100, NO_FILES)  # b's share, and b's requeued tasks, fall to a
    assert claims[:2] == [Claim("run-b-0", 2, ahead=True), Claim("run-b-1", 2, ahead=True)]
    assert ids(claims[2:]) == TASKS


def test_ahead_not_for_a_draining_node_whose_share_falls_to_the_others() -> None:
    q = busy_cluster(names=("a", "b"))
    ok(q, ("drain", "b", True))
    assert plan_ahead(q, "b", 100, NO_FILES) == []
    assert ids(plan_ahead(q, "a", 100, NO_FILES)) == TASKS


def test_ahead_past_an_idle_ghost_which_gets_tasks_through_its_relay() -> None:
    q = busy_cluster(names=("a",))
    ghost = NodeInfo("g", "ghost", "g:1", "", TWO, frozenset(), clairvoyant="a")
    ok(q, ("join", ghost))
    assert ids(plan_ahead(q, "a", 100, NO_FILES)) == TASKS  # g is idle, but not a worker


def test_tasks_waiting_on_a_running_task_are_skipped_without_evaluating(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass runs after every applied entry: with 1,000 tasks waiting on one that runs, it
    skips them by the queue's index instead of evaluating each one's conditions."""
    import conditions as cond

    q = build([node("a")], [spec("root")] + [spec(f"w{i}", conditions="queue:after_ok root")
                                              for i in range(1000)] + [spec("free")])
    ok(q, ("claim", "root", "a", 1))
    calls: list[int] = []
    real = cond.evaluate_queue
    monkeypatch.setattr(cond, "evaluate_queue", lambda *a: calls.append(1) or real(*a))
    assert ids(run_plan(q)[0]) == ["free"] and len(calls) == 1  # "free" only
    ok(q, ("finish", "root", "a", 1, Outcome(0, 1.0, 2.0)))  # now they may run
    assert ids(run_plan(q, free=Resources(GiB, 3, GiB))[0]) == ["w0", "w1", "w2"]


@pytest.mark.parametrize("seed", range(20))
def test_plans_over_random_queues_claim_only_what_may_run_within_free(seed: int) -> None:
    """Random queues (the queue test's operations, conditions and malformed ones included):
    every claim is a queued task's next attempt whose conditions hold, never one in flight,
    within the free resources, a non-concurrent one alone on an idle node; claims ahead are
    concurrent and ready too."""
    import random

    import conditions as cond
    from tests.unit.test_queue import IDS, NODES, random_op

    rng = random.Random(seed)
    q = Queue()
    made = 0
    for step in range(400):
        q.apply_batch([random_op(rng, q) for _ in range(rng.choice([1, 2, 3]))], float(step))
        if step % 20:
            continue
        for me in NODES:
            free = Resources(rng.choice([0, 1, 8]) * GiB, rng.choice([0, 1, 2, 8]), 8 * GiB)
            local = LocalFacts(frozenset(rng.choice([(), ("gpu",)])), lambda name: False)
            claiming = set(rng.sample(IDS, 2))
            claims, _ = plan(q, me, free, local, waited(10.0), claiming=claiming)
            ahead = plan_ahead(q, me, rng.choice([0, 1, 4]), local, claiming=claiming)
            assert len(set(ids(claims))) == len(claims)
            total = Resources()
            for c in claims + ahead:
                t = q.tasks[c.task_id]
                assert t.state.value == "queued" and c.attempt == t.attempt + 1, (c, t.state)
                assert c.task_id not in claiming
                assert cond.evaluate_queue(q.conditions_of(t), t.seq, q).status is cond.Status.READY
            for c in claims:
                t = q.tasks[c.task_id]
                total = total + t.spec.needs
                if not t.spec.concurrent:
                    assert len(claims) == 1 and not q.running_on(me), (me, ids(claims))
            assert not claims or total.fits_in(free), (total, free)
            assert all(q.tasks[c.task_id].spec.concurrent for c in ahead)
            if any(not t.spec.concurrent for t in q.running_on(me)):
                assert not claims and not ahead
            if me not in q.nodes or not q.nodes[me].takes_work:  # lost, or draining
                assert not claims and not ahead
            made += len(claims) + len(ahead)
    # The queues gave the planner something to do (the fewest, 6 for seed 5, where the one
    # live worker is draining most of the run; the others made 15 to 64).
    assert made > 5

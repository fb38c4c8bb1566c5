"""A node's claims on its own copy of the queue: claims that fit start at once, claims made
ahead wait for a running task to end, and a claim that cannot start in time is given back.

The node is built without starting it (no network); the executor and the proposer are fakes
that record what the node asks of them, and the clock is the test's."""

from __future__ import annotations

from typing import Any

import pytest

from comrade import node as node_mod
from comrade.config import Config
from comrade.model import NodeInfo, Outcome, Resources, TaskSpec
from comrade.node import AHEAD_MAX, GIVE_BACK_S, Node
from comrade.resources import FixedProbe

GiB = 1024**3


class FakeExecutor:
    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.cancelled: list[tuple[str, int]] = []
        self.stopped: dict[tuple[str, int], Any] = {}  # the callbacks of cancelled attempts

    def start(self, spec: TaskSpec, attempt: int, report: Any, crashed: Any) -> None:
        self.started.append((spec.task_id, attempt))

    def cancel(self, key: tuple[str, int], why: str, stopped: Any = None) -> None:
        self.cancelled.append(key)
        self.stopped[key] = stopped


class FakeProposer:
    def __init__(self) -> None:
        self.ops: list[Any] = []
        self.callbacks: list[Any] = []

    def propose(self, ops: list[Any], callback: Any = None, urgent: bool = False) -> None:
        self.ops.extend(ops)
        self.callbacks.append(callback)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(node_mod.time, "monotonic", c)
    return c


def make_node(tmp_path: Any, cores: int = 2) -> tuple[Node, FakeExecutor, FakeProposer]:
    cfg = Config(home=str(tmp_path), name="a", cookie="secret", discovery=False, cores=cores)
    n = Node(cfg, probe=FixedProbe(Resources(8 * GiB, 8, 100 * GiB)))
    ex, prop = FakeExecutor(), FakeProposer()
    n.executor, n.proposer = ex, prop  # type: ignore[assignment]
    n._registered.set()
    info = NodeInfo("a", "worker", "a:1", "a:2", n.offer, frozenset())
    apply(n, ("join", info))
    return n, ex, prop


def apply(n: Node, *ops: Any) -> None:
    replies = n.consumer.queue.apply_batch(list(ops), 0.0)
    assert all(r.ok for r in replies), replies


def claim(n: Node, *task_ids: str) -> None:
    """Submit and claim tasks for node a as this life of the node would."""
    for t in task_ids:
        apply(n, ("submit", TaskSpec(t, 1, 1, 1, True, "", (), "true")), ("claim", t, "a", 1))
        n._claimed_here.add((t, 1))


def test_claims_start_while_cores_last_then_wait(tmp_path: Any, clock: Clock) -> None:
    n, ex, prop = make_node(tmp_path, cores=2)
    claim(n, "t1", "t2", "t3", "t4")
    n.reconcile()
    assert ex.started == [("t1", 1), ("t2", 1)]
    n.reconcile()
    assert ex.started == [("t1", 1), ("t2", 1)]  # nothing twice, t3 and t4 wait
    n._report_finish("t1", 1, Outcome(0, 0.0, 1.0))  # t1 ended: its core is free at once
    n.reconcile()
    assert ex.started == [("t1", 1), ("t2", 1), ("t3", 1)]
    assert prop.ops == []


def test_claims_waiting_here_start_higher_priority_first(tmp_path: Any, clock: Clock) -> None:
    n, ex, prop = make_node(tmp_path, cores=1)
    claim(n, "t1", "t2", "t3", "t4")  # claimed ahead: all but the first wait for the core
    n.reconcile()
    apply(n, ("priority", "t4", 2), ("priority", "t2", -1))
    for _ in range(3):
        task_id, attempt = ex.started[-1]
        n._report_finish(task_id, attempt, Outcome(0, 0.0, 1.0))
        n.reconcile()
    assert ex.started == [("t1", 1), ("t4", 1), ("t3", 1), ("t2", 1)]


def test_a_claim_that_cannot_start_in_time_is_given_back_once(tmp_path: Any, clock: Clock) -> None:
    n, ex, prop = make_node(tmp_path, cores=1)
    claim(n, "long", "waits")
    n.reconcile()
    assert ex.started == [("long", 1)]
    clock.now += GIVE_BACK_S - 0.01
    n.reconcile()
    assert prop.ops == []
    clock.now += 0.02
    n.reconcile()
    n.reconcile()
    assert [op[:4] for op in prop.ops] == [("release", "waits", "a", 1)]
    assert "not started here" in prop.ops[0][4]
    apply(n, *prop.ops)  # committed: back in the queue, and this node leaves it alone a while
    assert n.consumer.queue.tasks["waits"].state.value == "queued"
    assert "waits" in n._avoid
    n.reconcile()
    assert ex.started == [("long", 1)]
    assert n._given_back == {}


def test_a_claim_given_back_never_starts_here_and_its_release_is_retried(
        tmp_path: Any, clock: Clock) -> None:
    n, ex, prop = make_node(tmp_path, cores=1)
    claim(n, "long", "waits")
    n.reconcile()
    clock.now += GIVE_BACK_S + 0.01
    n.reconcile()  # "waits" given back; the release is not applied yet (slow, or no quorum)
    assert [op[:2] for op in prop.ops] == [("release", "waits")]
    n._report_finish("long", 1, Outcome(0, 0.0, 1.0))  # the core is free now
    n.reconcile()
    assert ex.started == [("long", 1)]  # but a claim given back does not start here
    clock.now += node_mod.RELEASE_RETRY_S - 0.1
    n.reconcile()
    assert len(prop.ops) == 1  # not yet proposed again
    clock.now += 0.2
    n.reconcile()
    assert [op[:2] for op in prop.ops if op[0] == "release"] == [("release", "waits")] * 2
    apply(n, prop.ops[0])  # the first release is applied at last; the second is fenced
    replies = n.consumer.queue.apply_batch([prop.ops[-1]], 0.0)
    assert not replies[0].ok
    n.reconcile()
    assert n._given_back == {} and ex.started == [("long", 1)]


def test_an_attempt_that_could_not_start_is_not_started_again_before_its_release_applies(
        tmp_path: Any, clock: Clock) -> None:
    n, ex, prop = make_node(tmp_path, cores=2)
    claim(n, "t1")
    n.reconcile()
    assert ex.started == [("t1", 1)]
    n._runner_crashed("t1", 1, "cannot start: too many open files")  # the executor's thread
    for _ in range(3):  # passes before the release is applied: the state still says t1 runs here
        n.reconcile()
    assert ex.started == [("t1", 1)]
    assert prop.ops == [("release", "t1", "a", 1, "cannot start: too many open files", 3)]
    apply(n, *prop.ops)
    assert n.consumer.queue.tasks["t1"].state.value == "queued"
    assert n._avoid["t1"] >= clock.now + node_mod.AVOID_S - 0.01  # other nodes try it first
    n.reconcile()
    assert ex.started == [("t1", 1)] and n._given_back == {} and n._new_releases == {}


def test_the_release_of_an_attempt_that_could_not_start_is_retried_with_its_reason(
        tmp_path: Any, clock: Clock) -> None:
    n, ex, prop = make_node(tmp_path, cores=2)
    claim(n, "t1")
    n.reconcile()
    n._runner_crashed("t1", 1, "cannot start: no space left on device")
    n.reconcile()  # the release is lost (a leader change): nothing else is applied
    clock.now += node_mod.RELEASE_RETRY_S + 0.1
    n.reconcile()
    assert prop.ops == [("release", "t1", "a", 1, "cannot start: no space left on device", 3)] * 2
    assert ex.started == [("t1", 1)]
    apply(n, prop.ops[-1])
    assert n.consumer.queue.tasks["t1"].attempts[-1].why == \
        "released: cannot start: no space left on device"  # counted as a failed start


def test_the_release_of_a_previous_lifes_tasks_is_retried_until_applied(
        tmp_path: Any, clock: Clock) -> None:
    n, ex, prop = make_node(tmp_path, cores=2)
    apply(n, ("submit", TaskSpec("old", 1, 1, 1, True, "", (), "true")), ("claim", "old", "a", 1))
    n._release_stale()  # registering: "old" runs here by the state, but not in this life
    assert prop.ops == [("release", "old", "a", 1, "node restarted", 3)]
    n.reconcile()  # the release is lost (a leader change while the node came back)
    clock.now += node_mod.RELEASE_RETRY_S + 0.1
    n.reconcile()
    assert prop.ops == [("release", "old", "a", 1, "node restarted", 3)] * 2
    assert ex.started == []
    apply(n, prop.ops[-1])
    assert n.consumer.queue.tasks["old"].state.value == "queued"
    n.reconcile()
    assert n._given_back == {} and n._new_releases == {}


def test_stopping_an_attempt_that_just_ended_is_no_error(tmp_path: Any, clock: Clock) -> None:
    n, ex, prop = make_node(tmp_path, cores=2)
    claim(n, "t1")
    n.reconcile()
    n._report_finish("t1", 1, Outcome(0, 0.0, 1.0))  # ended just as the pass decided to stop it
    n._stop_runner(("t1", 1), "no longer assigned to this node")
    assert ex.cancelled == [] and n._stopping == {}


def test_a_claim_taken_away_is_cancelled(tmp_path: Any, clock: Clock) -> None:
    n, ex, prop = make_node(tmp_path, cores=2)
    claim(n, "t1")
    n.reconcile()
    apply(n, ("delete", "t1"))
    n.reconcile()
    assert ex.cancelled == [("t1", 1)]


def test_a_held_runner_keeps_its_core_until_its_process_is_gone(tmp_path: Any, clock: Clock) -> None:
    n, ex, prop = make_node(tmp_path, cores=1)
    claim(n, "t1", "t2")  # t2 claimed ahead, waiting for the one core
    n.reconcile()
    apply(n, ("hold", "t1", True, True))
    n.reconcile()
    assert ex.cancelled == [("t1", 1)] and ex.started == [("t1", 1)]  # t1 is still stopping
    n.reconcile()
    assert ex.started == [("t1", 1)]
    ex.stopped[("t1", 1)]()  # its process is gone
    n.reconcile()
    assert ex.started == [("t1", 1), ("t2", 1)]
    assert n._stopping == {}


def busy(n: Node, *task_ids: str) -> None:
    """Claim tasks and start what fits (the first ones run, the rest wait here); the cap on
    claims ahead as if it had grown all the way (see the slow start test)."""
    claim(n, *task_ids)
    n.reconcile()
    n._starts.clear()
    n._ahead_cap = AHEAD_MAX


def test_room_to_claim_ahead_follows_the_start_rate(tmp_path: Any, clock: Clock) -> None:
    n, ex, prop = make_node(tmp_path, cores=2)
    busy(n, "t1", "t2")
    assert n._ahead_room(clock.now)[0] == 0  # no start known, no run time: never claim ahead
    n._starts.extend([clock.now - 0.5] * 100)  # 100 starts in the last second
    assert n._ahead_room(clock.now)[0] == int(100 * n.cfg.claim_ahead_s)
    claim(n, "t3")  # t3 waits here: one less to claim ahead
    n.reconcile()
    assert n._ahead_room(clock.now)[0] == int(100 * n.cfg.claim_ahead_s) - 1
    clock.now += 1.0  # those starts are over a second old: the rate is 0 again
    assert n._ahead_room(clock.now)[0] <= 0


def test_room_to_claim_ahead_keeps_up_with_a_fast_node(tmp_path: Any, clock: Clock) -> None:
    # Claims ride in Raft entries sent at most every 50 ms while the node is busy, so the room
    # bounds what the node can start: a cap of 24 held a lone node at 24 / 0.05 = 480 tasks/s.
    n, ex, prop = make_node(tmp_path, cores=2)
    busy(n, "t1", "t2")
    n._starts.extend([clock.now - 0.5] * 1500)  # 1,500 starts in the last second
    assert n._ahead_room(clock.now)[0] == int(1500 * n.cfg.claim_ahead_s)
    n._starts.extend([clock.now - 0.5] * 100_000)
    assert n._ahead_room(clock.now)[0] == AHEAD_MAX  # still bounded


def test_claims_ahead_wait_for_quick_runs_after_idling_and_shrink_when_made_in_vain(
        tmp_path: Any, clock: Clock) -> None:
    """The rates come from the tasks before: after 3 ms tasks, a batch of 1 s ones was claimed
    ahead dozens at a time and given back. So after an idle spell nothing is claimed ahead
    until tasks run here quickly; each quick run doubles the cap (at least to the cores), a
    claimed-ahead task that waited long halves it, one given back unstarted zeroes it."""
    n, ex, prop = make_node(tmp_path, cores=2)
    claim(n, "t1", "t2", "t3", "t4")
    n.reconcile()  # t1, t2 run; t3, t4 wait here
    n._starts.extend([clock.now - 0.5] * 1500)  # a fast node's rate, from tasks before
    assert n._ahead_room(clock.now)[1] == 0  # but nothing ran here quickly yet
    clock.now += 0.1
    n._report_finish("t1", 1, Outcome(0, 0.0, 0.01))  # ran 10 ms
    n.reconcile()  # t3 starts in its place
    assert n._ahead_room(clock.now)[1] == 4 and n._ahead_cap == 4  # 2 cores, doubled
    clock.now += 0.5
    n._report_finish("t2", 1, Outcome(0, 0.0, 2.0))  # ran 2 s: not quick
    n.reconcile()  # t4 waited 0.6 s: the tasks are longer than the rate says
    assert n._ahead_cap == 2
    for t in ("t3", "t4"):
        n._report_finish(t, 1, Outcome(0, 0.0, 2.0))
    n.reconcile()
    clock.now += 1.0
    claim(n, "t5", "t6", "t7")
    n.reconcile()  # t5, t6 start after a second without any task here
    assert n._ahead_cap == 0  # idle a while: nothing is known of the next tasks
    n._ahead_cap = 64
    clock.now += GIVE_BACK_S
    n.reconcile()  # t7 waited a second: given back, and claiming ahead stops
    assert [op[:2] for op in prop.ops] == [("release", "t7")] and n._ahead_cap == 0


def test_room_to_claim_ahead_is_known_from_run_times_before_a_second_passes(
        tmp_path: Any, clock: Clock) -> None:
    n, ex, prop = make_node(tmp_path, cores=2)
    busy(n, "t1", "t2", "t3")  # t1, t2 run; t3 waits; no start known: only run times tell
    assert n._ahead_room(clock.now)[0] == 0  # no run time known yet
    n._report_finish("t1", 1, Outcome(0, 10.0, 10.01))  # ran 10 ms
    n.reconcile()  # t3 starts in t1's place: t2 and t3 run
    # two running tasks of about 10 ms: 200 starts a second, so 20 in claim_ahead_s = 0.1 s
    assert n._ahead_room(clock.now)[0] == min(node_mod.AHEAD_MAX, int(2 / 0.01 * 0.1))
    n._report_finish("t2", 1, Outcome(0, 10.0, 70.0))  # a long task pulls the average up
    n._report_finish("t3", 1, Outcome(0, 10.0, 70.0))
    n._starts.clear()
    assert n._ahead_room(clock.now)[0] == 0  # nothing runs: no rate from run times


def test_planning_is_skipped_only_while_claims_wait_and_nothing_new_was_applied(
        tmp_path: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    n, ex, prop = make_node(tmp_path, cores=1)
    plans: list[int] = []
    monkeypatch.setattr(n, "_plan_claims", lambda: plans.append(n.applied_gen) or [])
    claim(n, "t1", "t2")
    n.reconcile()  # t1 runs, t2 waits
    n.schedule()
    n.schedule()  # same queue, a claim waits here: no new plan
    assert plans == [0]
    n.applied_gen += 1  # an entry was applied
    n.schedule()
    n.schedule()
    assert plans == [0, 1]
    n._report_finish("t1", 1, Outcome(0, 0.0, 1.0))
    n.reconcile()  # t2 starts: nothing waits any more
    n.schedule()
    assert plans == [0, 1, 1]
    assert [op[:2] for op in prop.ops] == [("finish", "t1")]


def test_a_pass_after_a_local_end_starts_the_next_claim_without_reading_the_state_again(
        tmp_path: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    n, ex, prop = make_node(tmp_path, cores=1)
    claim(n, "t1", "t2", "t3", "t4")
    n.reconcile()  # t1 runs; t2-t4 (claimed ahead) wait for the core
    reads: list[str] = []
    running_on = n.consumer.queue.running_on
    monkeypatch.setattr(n.consumer.queue, "running_on",
                        lambda name: reads.append(name) or running_on(name))
    n._report_finish("t1", 1, Outcome(0, 0.0, 1.0))  # nothing applied since the last pass
    n.reconcile()
    assert ex.started == [("t1", 1), ("t2", 1)] and reads == []
    apply(n, ("delete", "t3"))  # the state changed: a claim taken away must not start
    n._report_finish("t2", 1, Outcome(0, 0.0, 1.0))
    n.reconcile()
    assert ex.started == [("t1", 1), ("t2", 1), ("t4", 1)] and reads == ["a"]


def test_a_pass_after_a_local_end_does_not_sort_out_the_waiting_claims_again(
        tmp_path: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between two reads of the state a claim stops waiting only by starting here: such a pass
    takes the claims still waiting from the pass before, and looks at none of them again."""
    n, ex, prop = make_node(tmp_path, cores=1)
    claim(n, *[f"t{i}" for i in range(50)])
    n.reconcile()  # t0 runs; 49 claimed ahead wait
    looked: list[tuple[str, int]] = []
    handled = n.handled
    monkeypatch.setattr(n, "handled", lambda key: looked.append(key) or handled(key))
    for i in range(3):
        n._report_finish(f"t{i}", 1, Outcome(0, 0.0, 1.0))
        n.reconcile()
    assert ex.started == [(f"t{i}", 1) for i in range(4)] and looked == []
    assert n._waiting_n == 46
    apply(n, ("delete", "t5"))  # the state changed: read again, every claim looked at
    n._report_finish("t3", 1, Outcome(0, 0.0, 1.0))
    n.reconcile()
    assert ex.started[-1] == ("t4", 1) and len(looked) >= 45 and n._waiting_n == 44
    n._report_finish("t4", 1, Outcome(0, 0.0, 1.0))
    n.reconcile()
    assert ex.started[-1] == ("t6", 1), "a claim taken away started"


def test_isolated_mode_does_not_rerun_a_task_that_ended_during_it(tmp_path: Any, clock: Clock) -> None:
    n, ex, prop = make_node(tmp_path, cores=1)
    claim(n, "t1", "t2")
    n.reconcile()  # t1 runs; t2 (claimed ahead) waits for the core
    n.isolation.enter(1000.0)  # no quorum for a while: work from the shadow copy
    n.isolation.step()
    assert ex.started == [("t1", 1)]  # t1 keeps its runner; t2 still waits
    n._report_finish("t1", 1, Outcome(0, 0.0, 1.0))  # t1 ends: its finish cannot commit
    n.isolation.step()
    n.isolation.step()
    assert ex.started == [("t1", 1), ("t2", 1)]  # t2 takes the core; t1 is not run again
    assert n.isolation.shadow is not None
    assert n.isolation.shadow.tasks["t1"].state.value == "done"
    n.isolation.leave()
    n.reconcile()  # back with the cluster: t2 runs in isolated mode's runner, not twice
    assert ex.started == [("t1", 1), ("t2", 1)]


def test_a_claim_whose_entry_is_lost_frees_its_core_at_once(tmp_path: Any, clock: Clock) -> None:
    """A leader cut off before the claim committed: pysyncobj answers LEADER_CHANGED, and the
    node claims again with that core rather than holding it for CLAIM_FORGET_S."""
    from pysyncobj import FAIL_REASON
    n, ex, prop = make_node(tmp_path, cores=1)
    apply(n, ("submit", TaskSpec("t1", 1, 1, 1, True, "", (), "true")))
    n.schedule()
    assert [op[:4] for op in prop.ops] == [("claim", "t1", "a", 1)]
    clock.now += 1.0
    n.applied_gen += 1  # something else was applied: a pass plans again
    n.schedule()
    assert len(prop.ops) == 1, "the claim in flight holds the only core"
    prop.callbacks[0](None, FAIL_REASON.LEADER_CHANGED)
    n.applied_gen += 1
    n.schedule()
    assert [op[:4] for op in prop.ops] == [("claim", "t1", "a", 1)] * 2
    assert clock.now - 1000.0 < node_mod.CLAIM_FORGET_S


def test_a_refused_claim_frees_its_core_at_once(tmp_path: Any, clock: Clock) -> None:
    n, ex, prop = make_node(tmp_path, cores=1)
    apply(n, ("submit", TaskSpec("t1", 1, 1, 1, True, "", (), "true")))
    n.schedule()
    replies = n.consumer.queue.apply_batch([("claim", "t1", "a", 2)], 0.0)  # refused: stale
    assert not replies[0].ok
    n.applied_gen += 1
    n.schedule()
    assert len(prop.ops) == 1
    prop.callbacks[0](replies, 0)
    n.applied_gen += 1
    n.schedule()
    assert [op[:4] for op in prop.ops] == [("claim", "t1", "a", 1)] * 2


def test_per_task_bookkeeping_is_pruned(tmp_path: Any, clock: Clock) -> None:
    """A node that runs millions of tasks must not remember each one: after a pruning pass only
    the claims of tasks still queued or running here, and the first sightings of queued tasks,
    remain."""
    n, _, _ = make_node(tmp_path)
    claim(n, "done1", "running")
    apply(n, ("finish", "done1", "a", 1, Outcome(0, 1.0, 2.0)))
    apply(n, ("submit", TaskSpec("waiting", 1, 1, 1, True, "", (), "true")))
    n._claimed_here.add(("waiting", 1))  # a claim proposed, not applied yet
    n._claimed_here.add(("gone", 1))  # a task forgotten since
    for t in ("done1", "running", "waiting", "gone"):
        n._waited(t)
    n.prune_bookkeeping()
    assert n._claimed_here == {("running", 1), ("waiting", 1)}
    assert set(n._first_seen) == {"waiting"}


def test_a_draining_node_runs_on_what_it_started_and_gives_back_the_rest_at_once(
        tmp_path: Any, clock: Clock) -> None:
    n, ex, prop = make_node(tmp_path, cores=1)
    claim(n, "long", "ahead1", "ahead2")
    n.reconcile()
    assert ex.started == [("long", 1)]
    apply(n, ("drain", "a", True))
    n.reconcile()  # a new entry was applied: the claims waiting here go back, not in 5 s
    assert [op for op in prop.ops] == [
        ("release", "ahead1", "a", 1, "this node is draining", 3),
        ("release", "ahead2", "a", 1, "this node is draining", 3)]
    assert ex.cancelled == []  # the one running goes on
    n._report_finish("long", 1, Outcome(0, 0.0, 1.0))
    n.reconcile()
    assert ex.started == [("long", 1)]  # a free core starts nothing while draining
    apply(n, *prop.ops)
    assert n._plan_claims() == []  # nor does it claim anything
    apply(n, ("drain", "a", False))
    clock.now += GIVE_BACK_S + 1  # past the time it leaves tasks it gave back alone
    assert [c.task_id for c in n._plan_claims()] == ["ahead1"]

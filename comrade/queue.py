"""THE replicated state machine: the task queue, as a pure class.

Every node holds one `Queue` and applies the same operations in the same (Raft log) order, so
every copy is identical. Rules that keep it safe:

- No I/O, no clock, no randomness: time is the `now` argument chosen by the proposer, ids are
  chosen by clients.
- Total: no method raises on any input. A bad operation returns a rejection `Reply`; an
  exception inside a replicated method would wedge the whole cluster.
- Fencing: a claim carries the attempt number; `finish` and `release` for any other attempt are
  ignored, so a node presumed dead that comes back cannot overwrite a newer run.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Container, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import replace
from typing import Any, NamedTuple

import conditions as cond
from comrade.model import (
    HELD_,
    MAX_PRIORITY,
    MAX_TIME_LIMIT_S,
    MIN_PRIORITY,
    TAIL_BYTES,
    TAILS_BUDGET,
    WAITING_,
    Attempt,
    NodeInfo,
    NodeState,
    Outcome,
    Resources,
    State,
    Task,
    TaskSpec,
    format_duration,
)


class Reply(NamedTuple):
    """The result of one operation: accepted or not, and why."""

    ok: bool
    detail: str = ""


OK = Reply(True)
#: No resources: what a node with nothing running reserves.
_NOTHING = Resources()

#: The version of the replicated state machine: bumped whenever an operation is added or changes
#: meaning, since workers of different versions would apply the same log differently. Workers
#: compare it when one joins or restarts into a cluster (`membership.check_protocol`).
#: It also covers what workers ask of each other over RPC, and how their Raft messages are
#: sealed (`comrade.sealing`), which must match as well.
#: 1: `forget` and the output-tails budget. 2: time limits (a timed-out attempt's outcome);
#: condition patterns run by RE2 (a lookaround `re` accepted now can never hold). 3: necessary
#: files pass between workers as a streamed `file_parts` (no `file_get`). 4: uploads are a
#: streamed `file_upload` (no `file_put`); `drain` (a draining node's claims are refused).
#: 5: task priorities (the order in which ready tasks are dealt) and `priority`; `hold`.
#: 6: `hold` with `stop` also stops a running task and queues it held. 7: `merge_isolated`
#: skips a run already merged. 8: `join` refuses a name held by a node that is up elsewhere
#: or of the other kind. 9: a task whose node died during each of its last
#: MAX_NODE_DEATHS attempts is held; `forget_node`. 10: Raft messages sealed with
#: AES-GCM-SIV, not Fernet.
PROTOCOL = 10


def name_taken(name: str, kind: str, rpc: str, newcomer: str) -> str:
    """Why a node may not take `name`: a `kind` at `rpc` that is up holds it."""
    return (f"--name: {name!r} is the name of a {kind} at {rpc} that is up; give this "
            f"{newcomer} another --name, or stop that {kind} first")


#: A task that could not be started this many times (e.g. no node can supply a necessary file
#: with the right hash) fails with the reason instead of bouncing forever.
MAX_FAILED_STARTS = 5
#: A task whose node died (lost, or restarted) during each of its last this many attempts is
#: held, not run again: it may be what kills its nodes (HTCondor holds a job whose starts keep
#: failing, Slurm holds one after launch failures). `leoronic_release` runs it again.
MAX_NODE_DEATHS = 3
_NODE_DEATHS = ("node lost", "released: node restarted")

_OUTCOME = {
    State.QUEUED: cond.Outcome.PENDING,
    State.RUNNING: cond.Outcome.PENDING,
    State.DONE: cond.Outcome.OK,
    State.FAILED: cond.Outcome.FAILED,
    State.DELETED: cond.Outcome.DELETED,
}


class Queue:
    """The replicated task queue. Mutated only through `apply`; read through the accessors."""

    def __init__(self, tails_budget: int = TAILS_BUDGET) -> None:
        self.tasks: dict[str, Task] = {}  # insertion order is submit order
        self.nodes: dict[str, NodeState] = {}
        self.next_seq = 1
        self.applied = 0  # operations applied, for equality checks across replicas
        self.tails_budget = tails_budget
        # Finished tasks whose record holds output tails, oldest finish first -> their bytes.
        # Replicated state (in the snapshot): which tails go first must be the same everywhere.
        self._tails: dict[str, int] = {}
        self._tail_bytes = 0
        self._derive()

    # ----- snapshot -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain data for a Raft snapshot (derived indexes are rebuilt, not stored)."""
        return {
            "tasks": self.tasks,
            "nodes": self.nodes,
            "next_seq": self.next_seq,
            "applied": self.applied,
            "tails": list(self._tails),
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Queue:
        """Rebuild a Queue from `snapshot()` output."""
        q = cls()
        q.tasks = data["tasks"]
        q.nodes = data["nodes"]
        q.next_seq = data["next_seq"]
        q.applied = data["applied"]
        order = data.get("tails")
        if order is None:  # a snapshot from before the budget: oldest end first
            held = [(t.outcome.end, t.seq, t.spec.task_id) for t in q.tasks.values()
                     if t.outcome is not None]
            order = [task_id for _, _, task_id in sorted(held)]
        for task_id in order:
            if task_id in q.tasks:
                q._keep_tails(q.tasks[task_id])
        q._derive()
        return q

    def _derive(self) -> None:
        """Rebuild the indexes that follow from `tasks` and `nodes`."""
        self._queued: dict[int, str] = {}  # seq -> id, in seq order unless _queued_unsorted
        self._queued_unsorted = False
        # The queued tasks not in `_blocked`, keyed by `rank` (higher priority first, then
        # submit order) and sorted the same lazy way: what the scheduler looks at, so a pass
        # costs what is ready, not what waits (bench.dependencies).
        self._ready: dict[tuple[int, int], str] = {}
        self._ready_unsorted = False
        self._pending: dict[int, str] = {}  # queued or running, seq -> id, seq order
        self._running: dict[str, set[str]] = {name: set() for name in self.nodes}
        self._exclusive: dict[str, int] = {}  # node -> non-concurrent tasks in _running
        self._conditional: set[str] = set()  # queued tasks with queue-scope conditions
        self._parsed: dict[str, tuple[cond.Condition, ...]] = {}
        # Settling fails queued tasks whose queue conditions can never hold. Only a task that
        # failed or was deleted makes another's conditions impossible (a success never does),
        # so after a batch only these are checked (`_to_check`): conditional tasks it queued,
        # those naming a task that failed or was deleted (`_named_by`), and those submitted
        # after it with an `all_with_cmd_ok` pattern its command matches (`_by_pattern`).
        # Checking every waiting task after every end cost milliseconds per task on every
        # replica with 10,000 waiting (bench.dependencies). `_settle`: check them all (after
        # a restore, as a replica that applied the log would have none left to fail).
        self._named_by: dict[str, set[str]] = {}  # task id -> conditional tasks naming it
        self._by_pattern: set[str] = set()  # conditional tasks with all_with_cmd_ok
        # conditional task -> the tasks it names that are not final yet: it cannot start
        # before they end, which the scheduler learns here instead of evaluating it
        self._blocked: dict[str, set[str]] = {}
        self._to_check: set[str] = set()
        self._settle = True
        # node -> what the tasks in `_running` need, kept as they come and go: a scheduling
        # pass asks for every worker's, and summing 50 claims ahead took 40 us a node
        self._reserved: dict[str, list[int]] = {}  # [memory, cores, storage]
        for task in sorted(self.tasks.values(), key=lambda t: t.seq):
            if task.state is State.QUEUED:
                self._queued[task.seq] = task.spec.task_id
            if not task.state.final:
                self._pending[task.seq] = task.spec.task_id
            if task.state is State.RUNNING and task.node is not None:
                self._run_on(task.node, task)
            if task.state is State.QUEUED and self._has_queue_conditions(task):
                self._wait_on_conditions(task)
        self._ready = dict(sorted((rank(self.tasks[t]), t) for t in self._queued.values()
                                  if t not in self._blocked and not self.tasks[t].held))

    # ----- dispatch -------------------------------------------------------------------------

    def apply(self, op: Any, now: float) -> Reply:
        """Apply one operation (a tuple: name, *args). Never raises."""
        try:
            name, args = op[0], tuple(op[1:])
            method = _OPS.get(name)
            if method is None:
                return Reply(False, f"unknown operation {name!r}")
            reply: Reply = method(self, *args, now=now)
        except Exception as exc:  # noqa: BLE001 - totality: a bad op must never wedge Raft
            return Reply(False, f"malformed operation: {type(exc).__name__}: {exc}")
        self.applied += 1
        return reply

    def apply_batch(self, ops: Iterable[Any], now: float) -> list[Reply]:
        """Apply operations in order, then settle dependencies that can never be met."""
        replies = [self.apply(op, now) for op in ops]
        if self._settle or self._to_check:
            try:
                self._fail_unsatisfiable(now)
            except Exception as exc:  # noqa: BLE001 - totality: never raise into Raft
                replies.append(Reply(False, f"dependency check failed: {exc}"))
        return replies

    # ----- tasks ----------------------------------------------------------------------------

    def check_submit(self, specs: list[TaskSpec]) -> list[tuple[int, str]]:
        """Dry run of submitting `specs` in order: (index, problem) for each that would be refused.

        Read-only. Lets a client refuse a whole file before queuing any of it.
        """
        problems = []
        earlier: dict[str, TaskSpec] = {}
        batch = {getattr(spec, "task_id", None) for spec in specs}
        for i, spec in enumerate(specs):
            problem, _ = self._submit_problem(spec, earlier, batch)
            if problem:
                problems.append((i, problem))
            else:
                earlier[spec.task_id] = spec
        return problems

    def _submit_problem(self, spec: Any, earlier: dict[str, TaskSpec],
                        batch: Container[Any] = frozenset()
                        ) -> tuple[str | None, tuple[cond.Condition, ...]]:
        """('', its parsed conditions) if `spec` can be queued, (None, ()) if it is an
        idempotent duplicate, else (the problem, ()). `batch`: the ids submitted with it, to
        say why a task it names later in the same file is refused."""
        problem = spec_problem(spec)
        if problem:
            return problem, ()
        old = self.tasks.get(spec.task_id)
        old_spec = old.spec if old is not None else earlier.get(spec.task_id)
        if old is not None and old.state is State.DELETED:
            return f"task id {spec.task_id!r} belonged to a deleted task", ()
        if old_spec is not None:
            if old_spec == spec:
                return None, ()
            return (f"ID: task id {spec.task_id!r} is already used by a different task (command, "
                    "resources, conditions, files, or --retries, --time-limit, --priority, "
                    "--hold)"), ()
        if not spec.conditions:
            return "", ()  # (most tasks: parse("") is () too)
        try:
            parsed = cond.parse(spec.conditions)
        except cond.ConditionError as exc:
            return str(exc), ()
        for dep in cond.dependency_ids(parsed):
            if dep not in self.tasks and dep not in earlier:
                if dep == spec.task_id:
                    return f"CONDITIONS: task {dep!r} names itself in a queue: condition", ()
                if dep in batch:
                    return (f"CONDITIONS: task {dep!r} comes later in this submit: a queue: "
                            "condition may name only tasks queued before it"), ()
                return f"CONDITIONS: unknown task {dep!r} (named by a queue: condition)", ()
        return "", parsed

    def submit(self, spec: TaskSpec, *, now: float) -> Reply:
        """Queue a task. The same spec twice is accepted once (idempotent retry)."""
        problem, parsed = self._submit_problem(spec, {})
        if problem is None:
            return Reply(True, "duplicate")
        if problem:
            return Reply(False, problem)
        task = Task(spec=spec, seq=self.next_seq, submitted=now, retries_left=spec.retries,
                    priority=spec.priority, held=spec.held)
        self.next_seq += 1
        self.tasks[spec.task_id] = task
        self._parsed[spec.task_id] = parsed  # parsed once (conditions_of's cache)
        self._pending[task.seq] = spec.task_id
        self._enqueue(task)
        return OK

    def claim(self, task_id: str, node: str, attempt: int, *, now: float) -> Reply:
        """Give a queued task to `node` as attempt number `attempt` (must be the next one)."""
        task = self.tasks.get(task_id)
        if task is None:
            return Reply(False, "no such task")
        if task.state is not State.QUEUED:
            return Reply(False, f"task is {task.state.value}")
        if attempt != task.attempt + 1:
            return Reply(False, f"stale attempt {attempt}; next is {task.attempt + 1}")
        ns = self.nodes.get(node)
        if ns is None or not ns.alive:
            return Reply(False, f"node {node!r} is not a live member")
        if ns.draining:
            return Reply(False, f"node {node!r} is draining")
        if task.held:
            return Reply(False, "task is held")
        running = self._running.setdefault(node, set())
        if running and not task.spec.concurrent:
            return Reply(False, "task is not concurrent and the node is busy")
        if self._exclusive.get(node):
            return Reply(False, "node runs a non-concurrent task")
        task.state = State.RUNNING
        task.attempt = attempt
        task.node = node
        task.attempts.append(Attempt(number=attempt, node=node, start=now))
        self._dequeue(task)
        self._run_on(node, task)
        return OK

    def finish(
        self, task_id: str, node: str, attempt: int, outcome: Outcome, *, now: float
    ) -> Reply:
        """Record the end of a running attempt; retry on a non-zero exit or a time limit that
        ran out (the outcome says so; only a limit the spec sets counts) while retries remain."""
        task = self.tasks.get(task_id)
        if task is None:
            return Reply(False, "no such task")
        if task.state is not State.RUNNING or task.node != node or task.attempt != attempt:
            return Reply(False, "fenced: not the current attempt")
        if not isinstance(outcome, Outcome) or not _is_int(outcome.exit_code) \
                or not _is_time(outcome.start) or not _is_time(outcome.end):
            return Reply(False, "not an outcome")
        out, err = outcome.stdout_tail, outcome.stderr_tail
        if not (type(out) is bytes and type(err) is bytes
                and len(out) <= TAIL_BYTES and len(err) <= TAIL_BYTES):
            outcome = replace(outcome, stdout_tail=bytes(out[-TAIL_BYTES:]),
                              stderr_tail=bytes(err[-TAIL_BYTES:]))
        if not (_is_time(outcome.cpu_s) and math.isfinite(outcome.cpu_s) and outcome.cpu_s >= 0
                and _is_int(outcome.max_rss) and outcome.max_rss >= 0
                and isinstance(outcome.max_rss_exact, bool)):
            outcome = replace(outcome, cpu_s=0.0, max_rss=0, max_rss_exact=False)  # unknown
        if not isinstance(outcome.workdir_kept, bool):
            outcome = replace(outcome, workdir_kept=True)  # whatever it says: look for it
        timed_out = outcome.timed_out is True and task.spec.time_limit > 0
        if outcome.timed_out is not timed_out:  # only a limit the spec sets can run out
            outcome = replace(outcome, timed_out=timed_out)
        why = f"time limit {format_duration(task.spec.time_limit)}" if timed_out else "exit"
        self._end_attempt(task, why=why, now=outcome.end, exit_code=outcome.exit_code,
                          workdir_kept=outcome.workdir_kept)
        task.outcome = replace(outcome, tails_dropped=False) if outcome.tails_dropped else outcome
        self._keep_tails(task)
        if outcome.exit_code == 0 and not timed_out:
            self._finalize(task, State.DONE)
        elif task.retries_left > 0:
            task.retries_left -= 1
            task.failed_on = tuple(sorted(set(task.failed_on) | {node}))
            self._requeue(task)
        else:
            if timed_out:
                task.reason = f"stopped after its time limit of {format_duration(task.spec.time_limit)}"
            self._finalize(task, State.FAILED)
        return OK

    def release(self, task_id: str, node: str, attempt: int, reason: str, hold_after: int = 0,
                *, now: float) -> Reply:
        """A node could not start (or had to stop) its attempt: back to the queue, no retry used.
        `hold_after` (0: never; entries from before PROTOCOL 9 lack it and are replayed as they
        were applied then): see `_hold_after_node_deaths`."""
        if not _is_int(hold_after) or hold_after < 0:
            return Reply(False, "hold_after: not a whole number >= 0")
        task = self.tasks.get(task_id)
        if task is None:
            return Reply(False, "no such task")
        if task.state is not State.RUNNING or task.node != node or task.attempt != attempt:
            return Reply(False, "fenced: not the current attempt")
        self._end_attempt(task, why=f"released: {reason}", now=now)
        if self._hold_after_node_deaths(task, hold_after):
            return Reply(True, "held: its node died during each of its last attempts")
        failed_starts = sum(1 for a in task.attempts if a.why.startswith("released: cannot start"))
        if failed_starts >= MAX_FAILED_STARTS:
            task.reason = f"could not start after {failed_starts} tries: {reason}"
            self._finalize(task, State.FAILED)
            return Reply(True, "failed: could not start")
        self._requeue(task)
        return OK

    def delete(self, task_id: str, *, now: float) -> Reply:
        """Remove a queued task, cancel a running one, forget a finished one's output."""
        task = self.tasks.get(task_id)
        if task is None:
            return Reply(False, f"no task {task_id!r}")
        if task.state is State.DELETED:
            return Reply(True, "already deleted")
        if task.state is State.RUNNING:
            self._end_attempt(task, why="deleted", now=now)
        task.outcome = None
        self._keep_tails(task)
        task.reason = "deleted by user"
        self._finalize(task, State.DELETED)
        return OK

    def priority(self, task_id: str, priority: int, *, now: float) -> Reply:
        """Change the priority of a task not finished yet: among ready tasks a higher one is
        dealt first. A running task keeps it if it goes back to the queue."""
        task = self.tasks.get(task_id)
        if task is None:
            return Reply(False, f"no task {task_id!r}")
        if task.state.final:
            return Reply(False, f"task {task_id!r} is {task.state.value}")
        if not _is_int(priority) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            return Reply(False, f"priority must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}")
        ready = self._ready.pop(rank(task), None) is not None
        task.priority = priority
        if ready:
            self._make_ready(task)
        return OK

    def hold(self, task_id: str, on: bool, stop: bool = False, *, now: float) -> Reply:
        """Hold a queued task (it stays queued, but is not dealt to any node), or release it.
        With `stop`, a running task too: its attempt ends as `held` (its node kills it, as the
        attempt is no longer assigned there) and it is queued held, no retry used (Slurm's
        `scontrol requeuehold`); released, it starts afresh. Without `stop` (every `hold` in a
        journal from before PROTOCOL 6, replayed as it was applied then) a running task is
        refused. Releasing a task not held is no error."""
        task = self.tasks.get(task_id)
        if task is None:
            return Reply(False, f"no task {task_id!r}")
        if not isinstance(on, bool) or not isinstance(stop, bool):
            return Reply(False, "hold: not true or false")
        if not on:
            if not task.held:
                return Reply(True, "was not held")
            task.held = False
            if task.reason.startswith(HELD_):  # said by _hold_after_node_deaths
                task.reason = ""
            if task.state is State.QUEUED and task_id not in self._blocked:
                self._make_ready(task)
            return OK
        if task.state.final or (task.state is State.RUNNING and not stop):
            can = "a queued or running task" if stop else "a queued task"
            return Reply(False, f"task {task_id!r} is {task.state.value}: only {can} can be held")
        task.held = True
        if task.state is State.RUNNING:
            self._end_attempt(task, why="held", now=now)
            self._requeue(task)  # held: it stays out of the ready index
        else:
            self._ready.pop(rank(task), None)
        return OK

    def forget(self, task_ids: list[str], *, now: float) -> Reply:
        """Drop the records of finished tasks (the leader proposes `forgettable` ones); their
        ids can be used again. Tasks a queued task still depends on are kept."""
        if not isinstance(task_ids, list) or not all(isinstance(t, str) for t in task_ids):
            return Reply(False, "not a list of task ids")
        needed = self.needed()
        forgotten = 0
        for task_id in task_ids:
            task = self.tasks.get(task_id)
            if task is None or not task.state.final or needed(task):
                continue
            del self.tasks[task_id]
            self._tail_bytes -= self._tails.pop(task_id, 0)
            self._parsed.pop(task_id, None)
            forgotten += 1
        if forgotten:
            self._settle = True  # (nothing waiting names them, but settle as a restore would)
        return Reply(True, f"forgot {forgotten} of {len(task_ids)}")

    def forgettable(self, ended_before: float) -> list[str]:
        """Finished tasks whose last attempt ended (or, never run, that were submitted) before
        `ended_before` and that no queued task depends on: what `forget` would drop."""
        return forgettable_in(list(self.tasks.values()), self.needed(), ended_before)

    def needed(self) -> Callable[[Task], bool]:
        """Whether a finished task must be kept for an unfinished task's conditions: named by
        its `queue:after`/`after_ok`, or submitted before one with a `queue:all_with_cmd_*`
        condition (whose verdict it could change). A running task counts too: it goes back to
        the queue, its conditions to be met again, if its node dies or it exits non-zero with
        retries left (kept only for queued ones, such a task failed as "unknown task")."""
        named: set[str] = set()
        cmd_before = 0
        running = (t for ids in self._running.values() for t in ids)
        for task_id in itertools.chain(self._conditional, running):
            waiting = self.tasks[task_id]
            for c in self.conditions_of(waiting):
                if c.predicate in ("after", "after_ok") and c.argument is not None:
                    named.add(c.argument)
                elif c.predicate.startswith("all_with_cmd"):
                    cmd_before = max(cmd_before, waiting.seq)
        return lambda task: task.spec.task_id in named or task.seq < cmd_before

    def merge_isolated(
        self, node: str, runs: list[tuple[str, float, Outcome]], *, now: float
    ) -> Reply:
        """Merge results a node produced while isolated (no quorum), by this rule:

        the first final result to reach the replicated log wins. A run of a task that is already
        final is kept in its history as a duplicate; a run of a task still queued, or running
        elsewhere (that attempt is ended as superseded), is applied like a `finish`. A run
        already in the task's history (the same merge again: proposed once more after a
        timeout, or re-sent by a node restarted before it deleted its results) is skipped.
        """
        merged = 0
        for task_id, start, outcome in runs:
            task = self.tasks.get(task_id)
            if task is None or not isinstance(outcome, Outcome) or not _is_int(outcome.exit_code) \
                    or not all(_is_time(t) for t in (start, outcome.start, outcome.end)):
                continue  # before any change: `finish` would refuse it, leaving it running
            if any(a.node == node and a.start == start and a.end == outcome.end
                   and a.why.startswith("isolated run") for a in task.attempts):
                continue
            number = max([a.number for a in task.attempts] + [task.attempt]) + 1
            run = Attempt(number=number, node=node, start=start, end=outcome.end,
                          exit_code=outcome.exit_code, why="isolated run",
                          workdir_kept=outcome.workdir_kept is not False)
            if task.state.final:
                task.attempts.append(replace(run, why="isolated run (duplicate; result not used)"))
                task.attempt = number
                continue
            if task.state is State.RUNNING:
                self._end_attempt(task, why="superseded by an isolated result", now=now)
                self._requeue(task)
            self._dequeue(task)
            task.state = State.RUNNING
            task.attempt = number
            task.node = node
            task.attempts.append(replace(run, end=None, exit_code=None))
            self._run_on(node, task)
            self.finish(task_id, node, number, outcome, now=now)
            task.attempts[-1] = replace(task.attempts[-1], why="isolated run")
            merged += 1
        return Reply(True, f"merged {merged} of {len(runs)}")

    # ----- nodes ----------------------------------------------------------------------------

    def join(self, info: NodeInfo, *, now: float) -> Reply:
        """Register a node, or refresh one that comes back (its tags added later are kept).
        A name is one node's: while a node that is up holds it, another kind of node, or one
        at another address, is refused (a second ghost or worker started with the same
        --name, or a ghost named after a worker, would otherwise take over its record and
        its running tasks). A node that restarts at the same address takes its record back;
        one that moved can once its old record is lost (the lease)."""
        if not (isinstance(info, NodeInfo) and isinstance(info.name, str) and info.name
                and _is_resources(info.offered) and isinstance(info.tags, frozenset)
                and isinstance(info.kind, str) and isinstance(info.rpc, str)):
            return Reply(False, "not a node")
        old = self.nodes.get(info.name)
        if old is not None and old.alive and (old.info.kind, old.info.rpc) != (info.kind, info.rpc):
            return Reply(False, name_taken(info.name, old.info.kind, old.info.rpc, info.kind))
        tags = set(info.tags) | (old.tags if old else set())
        self.nodes[info.name] = NodeState(info=info, tags=tags, alive=True, last_seen=now,
                                          draining=bool(old and old.draining))
        self._running.setdefault(info.name, set())
        return OK

    def heartbeat(self, node: str, free: Resources, note: str, *, now: float) -> Reply:
        """A node is alive; record its free resources and any note (e.g. why it is not claiming)."""
        ns = self.nodes.get(node)
        if ns is None:
            return Reply(False, f"unknown node {node!r}")
        if not _is_resources(free) or not isinstance(note, str):
            return Reply(False, "heartbeat: malformed resources or note")
        ns.alive = True
        ns.lost_since = None
        ns.last_seen = now
        ns.free = free
        ns.note = note
        return OK

    def expire_node(self, node: str, seen: float | None = None, hold_after: int = 0, *,
                    now: float) -> Reply:
        """Declare a node lost: its running tasks go back to the queue (attempt + 1 on claim),
        or held (`hold_after`, as in `release`).

        `seen` is the node's `last_seen` the proposer judged by: if a heartbeat was applied
        since (a stale proposal from a leader that was cut off, committed after the heal), the
        node is alive and the operation is refused.
        """
        if not _is_int(hold_after) or hold_after < 0:
            return Reply(False, "hold_after: not a whole number >= 0")
        ns = self.nodes.get(node)
        if ns is not None and seen is not None and ns.last_seen > seen:
            return Reply(False, f"node {node!r} heartbeated after this was proposed")
        return self._drop_node(node, "node lost", now, hold_after)

    def leave(self, node: str, *, now: float) -> Reply:
        """A node leaves cleanly: its running tasks go back to the queue."""
        return self._drop_node(node, "node left", now)

    def forget_node(self, node: str, *, now: float) -> Reply:
        """Drop the record of a node that is down (Slurm's `scontrol delete nodename`): say,
        a box retired for good, or the old name of a worker restarted under another one. Its
        tasks' histories keep its name. (Whether a worker is still a Raft member is not in
        this state: the service checks that first.)"""
        ns = self.nodes.get(node)
        if ns is None:
            return Reply(False, f"unknown node {node!r}")
        if ns.alive:
            return Reply(False, f"node {node!r} is up: only a node that is down can be forgotten")
        if self._running.get(node):
            return Reply(False, f"node {node!r} still has tasks assigned")
        del self.nodes[node]
        self._running.pop(node, None)
        self._exclusive.pop(node, None)
        self._reserved.pop(node, None)
        return OK

    def drain(self, node: str, on: bool, *, now: float) -> Reply:
        """Stop (`on`) or resume giving a node new tasks; the tasks it runs go on. Kept when
        it leaves, is lost or restarts, until resumed."""
        ns = self.nodes.get(node)
        if ns is None:
            return Reply(False, f"unknown node {node!r}")
        if not isinstance(on, bool):
            return Reply(False, "drain: not true or false")
        ns.draining = on
        return OK

    def add_tag(self, node: str, tag: str, *, now: float) -> Reply:
        """Add a tag to a node."""
        ns = self.nodes.get(node)
        if ns is None:
            return Reply(False, f"unknown node {node!r}")
        try:
            cond.validate_tag(tag)
        except cond.ConditionError as exc:
            return Reply(False, str(exc))
        ns.tags.add(tag)
        return OK

    def del_tag(self, node: str, tag: str, *, now: float) -> Reply:
        """Remove a tag from a node."""
        ns = self.nodes.get(node)
        if ns is None:
            return Reply(False, f"unknown node {node!r}")
        if tag not in ns.tags:
            return Reply(False, f"node {node!r} has no tag {tag!r}")
        ns.tags.discard(tag)
        return OK

    # ----- reads ----------------------------------------------------------------------------

    def get(self, task_id: str) -> Task | None:
        """The task record, or None."""
        return self.tasks.get(task_id)

    def queued(self) -> Iterator[Task]:
        """Queued tasks in submit order."""
        if self._queued_unsorted:
            self._queued = dict(sorted(self._queued.items()))
            self._queued_unsorted = False
        for task_id in list(self._queued.values()):
            yield self.tasks[task_id]

    def ready(self) -> Iterator[Task]:
        """Queued tasks, higher priority first and then in submit order, less those `blocked`:
        the ones whose conditions may hold now (or that have none). Do not change the queue
        while iterating."""
        if self._ready_unsorted:
            self._ready = dict(sorted(self._ready.items()))
            self._ready_unsorted = False
        for task_id in self._ready.values():
            yield self.tasks[task_id]

    def queued_count(self) -> int:
        """How many tasks are queued."""
        return len(self._queued)

    def running_on(self, node: str) -> list[Task]:
        """Tasks running on a node."""
        return [self.tasks[t] for t in self._running.get(node, ())]

    def reserved(self, node: str) -> Resources:
        """Resources reserved by the tasks running on a node."""
        kept = self._reserved.get(node)
        return Resources(*kept) if kept else _NOTHING

    def tags_up(self) -> set[str]:
        """Every tag some node that is up carries."""
        return set().union(*(ns.tags for ns in self.nodes.values() if ns.alive))

    def waiting_note(self, task: Task, tags_up: AbstractSet[str]) -> str:
        """Why a queued task waits, when it is for something only an operator can give: a
        `worker:tag` no node that is up carries (`tags_up`); "" otherwise."""
        if task.state is not State.QUEUED or task.reason:
            return ""
        for c in self.conditions_of(task):
            if c.scope == "worker" and c.predicate == "tag" and c.argument not in tags_up:
                return f"{WAITING_}no node that is up has tag {c.argument!r}"
        return ""

    def conditions_of(self, task: Task) -> tuple[cond.Condition, ...]:
        """The parsed conditions of a task (cached; parse is total for accepted specs)."""
        parsed = self._parsed.get(task.spec.task_id)
        if parsed is None:
            try:
                parsed = cond.parse(task.spec.conditions)
            except cond.ConditionError:
                parsed = ()
            self._parsed[task.spec.task_id] = parsed
        return parsed

    def blocked(self, task_id: str) -> bool:
        """True if a queued task names (`queue:after`/`after_ok`) a task that has not ended:
        its conditions do not hold yet, known without evaluating them."""
        return task_id in self._blocked

    def pending_count(self) -> int:
        """Tasks queued or running."""
        return len(self._pending)

    # QueueView for conditions/
    def task(self, task_id: str) -> cond.TaskFacts | None:
        """Facts about one task, for condition evaluation."""
        t = self.tasks.get(task_id)
        return None if t is None else _facts(t)

    def unfinished_before(self, seq: int) -> bool:
        """True if a task submitted before `seq` is still queued or running."""
        first = next(iter(self._pending), None)
        return first is not None and first < seq

    def tasks_before(self, seq: int) -> Iterator[cond.TaskFacts]:
        """Facts about every task submitted before `seq`, in submit order."""
        for t in self.tasks.values():
            if t.seq >= seq:
                break
            yield _facts(t)

    # ----- internals ------------------------------------------------------------------------

    def _has_queue_conditions(self, task: Task) -> bool:
        return any(c.scope == "queue" for c in self.conditions_of(task))

    def _end_attempt(
        self, task: Task, *, why: str, now: float, exit_code: int | None = None,
        workdir_kept: bool = True,
    ) -> None:
        last = task.attempts[-1]
        # (not dataclasses.replace: this runs for every attempt on every replica, and replace
        # looks up the fields and checks its arguments each time, at twice the cost)
        task.attempts[-1] = Attempt(last.number, last.node, last.start, now, exit_code, why,
                                    last.workdir_kept and workdir_kept)
        self._not_running(task)

    def _run_on(self, node: str, task: Task) -> None:
        """Count `task` among those running on `node`."""
        running = self._running.setdefault(node, set())
        if task.spec.task_id not in running:
            running.add(task.spec.task_id)
            _count(self._reserved.setdefault(node, [0, 0, 0]), task.spec.needs, 1)
            if not task.spec.concurrent:
                self._exclusive[node] = self._exclusive.get(node, 0) + 1

    def _not_running(self, task: Task) -> None:
        """No longer count `task` among those running on its node (if it was)."""
        running = self._running.get(task.node, set()) if task.node is not None else set()
        if task.spec.task_id in running:
            running.discard(task.spec.task_id)
            _count(self._reserved[task.node], task.spec.needs, -1)  # type: ignore[index]
            if not task.spec.concurrent:
                self._exclusive[task.node] -= 1  # type: ignore[index]

    def _keep_tails(self, task: Task) -> None:
        """Account for the output tails `task.outcome` now holds (it was just set or cleared),
        then drop the oldest finished tasks' tails while the total is over the budget."""
        task_id = task.spec.task_id
        self._tail_bytes -= self._tails.pop(task_id, 0)
        o = task.outcome
        size = len(o.stdout_tail) + len(o.stderr_tail) if o is not None else 0
        if size:
            self._tails[task_id] = size
            self._tail_bytes += size
        while self._tail_bytes > self.tails_budget and self._tails:
            old_id = next(iter(self._tails))
            self._tail_bytes -= self._tails.pop(old_id)
            old = self.tasks[old_id]
            if old.outcome is not None:
                old.outcome = replace(old.outcome, stdout_tail=b"", stderr_tail=b"",
                                      tails_dropped=True)

    def _hold_after_node_deaths(self, task: Task, hold_after: int) -> bool:
        """Whether `task`, whose attempt just ended, was queued held because its node died
        during each of its last `hold_after` attempts (MAX_NODE_DEATHS, as nodes propose;
        0: never)."""
        if hold_after <= 0 or len(task.attempts) < hold_after \
                or any(a.why not in _NODE_DEATHS for a in task.attempts[-hold_after:]):
            return False
        task.held = True
        task.reason = (f"{HELD_}its node died during each of its last {hold_after} attempts "
                       "(leoronic_release runs it again)")
        self._requeue(task)  # held: it stays out of the ready index
        return True

    def _requeue(self, task: Task) -> None:
        # Its conditions are to be met again, and may no longer be able to (what it depends
        # on was deleted or failed while it ran): checked after this batch (_enqueue).
        task.state = State.QUEUED
        self._enqueue(task)

    def _enqueue(self, task: Task) -> None:
        """`task` (state QUEUED) joins the queue's indexes: queued, and ready unless blocked."""
        if self._queued and task.seq < next(reversed(self._queued)):
            self._queued_unsorted = True  # re-sorted lazily by queued()
        self._queued[task.seq] = task.spec.task_id
        if self._has_queue_conditions(task):
            self._wait_on_conditions(task)
        if task.spec.task_id not in self._blocked:
            self._make_ready(task)

    def _make_ready(self, task: Task) -> None:
        """`task`, queued and not blocked, joins the ready index unless it is held."""
        if task.held:
            return
        key = rank(task)
        if self._ready and key < next(reversed(self._ready)):
            self._ready_unsorted = True  # re-sorted lazily by ready()
        self._ready[key] = task.spec.task_id

    def _dequeue(self, task: Task) -> None:
        """`task` leaves the queue (claimed or final): out of every queued index. (A held
        task leaves it only as a result merged from an isolated node, or deleted: not held.)"""
        task.held = False
        self._queued.pop(task.seq, None)
        self._ready.pop(rank(task), None)
        self._stop_waiting(task)

    def _finalize(self, task: Task, state: State) -> None:
        task.state = state
        task_id = task.spec.task_id
        for waiting in self._named_by.get(task_id, ()):
            blockers = self._blocked.get(waiting)
            if blockers is not None:
                blockers.discard(task_id)
                if not blockers:  # (a blocked task is queued: it leaves _blocked when it leaves)
                    del self._blocked[waiting]
                    self._make_ready(self.tasks[waiting])
        if state is not State.DONE:  # the conditions of those waiting on it may no longer hold
            self._to_check |= self._named_by.get(task_id, set())
            self._to_check.update(t for t in self._by_pattern if self.tasks[t].seq > task.seq
                                  and self._pattern_matches(t, task.spec.command))
        self._pending.pop(task.seq, None)
        self._dequeue(task)
        self._parsed.pop(task.spec.task_id, None)  # a cache for deciding runs: parsed again if asked
        self._not_running(task)

    def _drop_node(self, node: str, why: str, now: float, hold_after: int = 0) -> Reply:
        ns = self.nodes.get(node)
        if ns is None:
            return Reply(False, f"unknown node {node!r}")
        for task in self.running_on(node):
            self._end_attempt(task, why=why, now=now)
            if not self._hold_after_node_deaths(task, hold_after):
                self._requeue(task)
        if ns.alive:
            ns.alive = False
            ns.lost_since = now
        ns.free = Resources()
        return OK

    def _wait_on_conditions(self, task: Task) -> None:
        """`task` is queued with queue conditions: index it, and check it after this batch."""
        task_id = task.spec.task_id
        self._conditional.add(task_id)
        for c in self.conditions_of(task):
            if c.predicate in ("after", "after_ok") and c.argument is not None:
                self._named_by.setdefault(c.argument, set()).add(task_id)
                dep = self.tasks.get(c.argument)
                if dep is not None and not dep.state.final:
                    self._blocked.setdefault(task_id, set()).add(c.argument)
            elif c.predicate == "all_with_cmd_ok":
                self._by_pattern.add(task_id)
        self._to_check.add(task_id)

    def _pattern_matches(self, waiting_id: str, command: str) -> bool:
        """Whether an `all_with_cmd_ok` pattern of a waiting task matches `command` (a pattern
        RE2 refuses counts as matching: evaluating the task then fails it)."""
        for c in self.conditions_of(self.tasks[waiting_id]):
            if c.predicate == "all_with_cmd_ok":
                try:
                    if cond.compile_pattern(c.argument or "").search(command):
                        return True
                except cond.PatternError:
                    return True
        return False

    def _stop_waiting(self, task: Task) -> None:
        """`task` left the queue (claimed or final): drop it from the conditional indexes."""
        task_id = task.spec.task_id
        if task_id not in self._conditional:
            return
        self._conditional.discard(task_id)
        self._by_pattern.discard(task_id)
        self._blocked.pop(task_id, None)
        for c in self.conditions_of(task):
            waiting = self._named_by.get(c.argument or "") if c.predicate.startswith("after") else None
            if waiting is not None:
                waiting.discard(task_id)
                if not waiting:
                    del self._named_by[c.argument or ""]

    def _fail_unsatisfiable(self, now: float) -> None:
        """Fail queued tasks whose queue conditions can never hold, cascading to their
        dependents: those in `_to_check` (every conditional task after a restore, `_settle`);
        a task failed here adds the tasks waiting on it for the next pass."""
        while self._settle or self._to_check:
            check = self._conditional if self._settle else self._to_check & self._conditional
            self._settle = False
            self._to_check = set()
            for task_id in sorted(check, key=lambda t: self.tasks[t].seq):
                task = self.tasks[task_id]
                if task.state is not State.QUEUED:
                    continue  # failed earlier in this pass
                verdict = cond.evaluate_queue(self.conditions_of(task), task.seq, self)
                if verdict.status is cond.Status.NEVER:
                    task.reason = f"can never run: {verdict.reason}"
                    self._finalize(task, State.FAILED)


def _count(kept: list[int], needs: Resources, sign: int) -> None:
    """Add (sign 1) or take away (-1) what a task needs to or from a node's reservation."""
    kept[0] += sign * needs.memory
    kept[1] += sign * needs.cores
    kept[2] += sign * needs.storage


def _is_int(v: Any) -> bool:
    return type(v) is int or (isinstance(v, int) and not isinstance(v, bool))


def _is_time(t: Any) -> bool:
    return isinstance(t, (int, float)) and not isinstance(t, bool)


def _is_resources(r: Any) -> bool:
    return isinstance(r, Resources) and all(_is_int(v) for v in (r.memory, r.cores, r.storage))


def spec_problem(spec: Any) -> str:
    """'' if `spec` is a well-typed TaskSpec, else what is wrong (submit rejects it)."""
    if not isinstance(spec, TaskSpec):
        return "not a task spec"
    if not isinstance(spec.task_id, str) or not spec.task_id:
        return "task id must be a non-empty string"
    for name in ("memory", "cores", "storage", "retries"):
        value = getattr(spec, name)
        if not _is_int(value) or value < 0:
            return f"{name} must be a whole number >= 0"
    if spec.cores < 1:
        return "cores must be at least 1"
    limit = spec.time_limit
    if not isinstance(limit, (int, float)) or isinstance(limit, bool) \
            or not 0 <= limit <= MAX_TIME_LIMIT_S:  # NaN fails the comparison too
        return "time limit must be a number of seconds from 0 (none) to a year"
    if not _is_int(spec.priority) or not MIN_PRIORITY <= spec.priority <= MAX_PRIORITY:
        return f"priority must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}"
    if not (type(spec.concurrent) is bool and type(spec.rename) is bool
            and type(spec.held) is bool):  # (bool has no subclasses)
        return "concurrent, rename and held must be true or false"
    if not isinstance(spec.command, str) or not isinstance(spec.conditions, str):
        return "command and conditions must be strings"
    files = spec.files
    if not isinstance(files, tuple) or (files and not all(
        isinstance(f, tuple) and len(f) == 3 and isinstance(f[0], str)
        and isinstance(f[1], str) and _is_int(f[2]) and f[2] >= 0 for f in files
    )):
        return "files must be (name, sha256, size) triples"
    return ""


def rank(task: Task) -> tuple[int, int]:
    """Where a task stands in the deal, and among claims waiting on a node: higher priority
    first, then submit order."""
    return -task.priority, task.seq


def _facts(t: Task) -> cond.TaskFacts:
    return cond.TaskFacts(task_id=t.spec.task_id, seq=t.seq, command=t.spec.command,
                          outcome=_OUTCOME[t.state])


def forgettable_in(tasks: Iterable[Task], needed: Callable[[Task], bool],
                   ended_before: float) -> list[str]:
    """`Queue.forgettable` over given records: a node copies the records under its lock and
    scans them outside it (the `forget` operation checks each id again when applied)."""
    return [t.spec.task_id for t in tasks if t.state.final and not needed(t)
            and ((t.attempts[-1].end or ended_before) if t.attempts else t.submitted)
            < ended_before]


_OPS: dict[str, Any] = {
    "submit": Queue.submit,
    "claim": Queue.claim,
    "finish": Queue.finish,
    "release": Queue.release,
    "delete": Queue.delete,
    "forget": Queue.forget,
    "join": Queue.join,
    "heartbeat": Queue.heartbeat,
    "expire_node": Queue.expire_node,
    "leave": Queue.leave,
    "add_tag": Queue.add_tag,
    "merge_isolated": Queue.merge_isolated,
    "del_tag": Queue.del_tag,
    "drain": Queue.drain,
    "forget_node": Queue.forget_node,
    "priority": Queue.priority,
    "hold": Queue.hold,
}

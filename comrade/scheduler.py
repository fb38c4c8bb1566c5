"""Which queued tasks this node should claim now. Pure: the caller passes every fact.

Every node runs `plan` on its own copy of the replicated queue. To spread work and avoid two
nodes racing for the same task, each node ranks the live nodes that could take a task (free
capacity by the replicated reservations, tags) by load (reserved cores / offered cores), ties
broken by a hash of (task, node). The best-ranked node claims at once; the others claim only
after the task has waited `defer_s` per rank place, which covers a best node that cannot take
it after all (local facts such as files or real free memory). The state machine still accepts
only the first claim, so a race costs one rejected claim, never a double run.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import conditions as cond
from comrade.model import NodeState, Resources, Task
from comrade.queue import Queue


@dataclass(frozen=True)
class LocalFacts:
    """What the scheduler knows about this node beyond the replicated queue."""

    tags: frozenset[str]
    has_file: Callable[[str], bool]


@dataclass(frozen=True)
class Claim:
    """A claim to propose: run `task_id` as attempt `attempt`."""

    task_id: str
    attempt: int


def fits(needs: Resources, free: Resources) -> bool:
    """True when a task needing `needs` fits in `free`."""
    return needs.fits_in(free)


def plan(
    queue: Queue,
    me: str,
    free: Resources,
    local: LocalFacts,
    waited: Callable[[str], float],
    claiming: Iterable[str] = (),
    defer_s: float = 0.05,
    limit: int = 256,
) -> tuple[list[Claim], bool]:
    """Claims this node should propose now, and whether some task was deferred to a better node.

    free: this node's free resources (already net of running tasks and claims in flight).
    waited(task_id): seconds since this node first saw the task queued.
    claiming: ids whose claim is in flight (skipped).
    """
    skip = set(claiming)
    claims: list[Claim] = []
    deferred = False
    running_here = queue.running_on(me)
    if any(not t.spec.concurrent for t in running_here):
        return claims, deferred
    my_state = queue.nodes.get(me)
    if my_state is None or not my_state.alive:
        return claims, deferred
    others = _capacity(queue, me)
    my_offer = my_state.info.offered
    my_reserved = queue.reserved(me)
    busy = bool(running_here) or bool(skip)
    for task in queue.queued():
        if free.cores <= 0 or len(claims) >= limit:
            break
        task_id = task.spec.task_id
        if task_id in skip:
            continue
        needs = task.spec.needs
        if not fits(needs, free):
            continue
        if not task.spec.concurrent and (busy or claims):
            continue
        conds = queue.conditions_of(task)
        verdict = cond.evaluate(conds, task.seq, queue, _Worker(my_state, local))
        if verdict.status is not cond.Status.READY:
            continue
        rank = _rank(task, me, my_offer, my_reserved, others, conds)
        if rank > 0 and waited(task_id) < defer_s * rank:
            deferred = True
            continue
        claims.append(Claim(task_id, task.attempt + 1))
        free = free - needs  # ranks use replicated loads only, so peers agree on them
        if not task.spec.concurrent:
            break
    return claims, deferred


class _Worker:
    """WorkerFacts for conditions/: replicated tags plus local files."""

    def __init__(self, state: NodeState, local: LocalFacts) -> None:
        self.tags = frozenset(state.tags) | local.tags
        self._has_file = local.has_file

    def has_file(self, name: str) -> bool:
        return self._has_file(name)


def _capacity(queue: Queue, me: str) -> list[tuple[str, NodeState, Resources]]:
    """Other live nodes with their replicated free capacity (offer - reservations)."""
    out = []
    for name, ns in queue.nodes.items():
        if name == me or not ns.alive:
            continue
        out.append((name, ns, ns.info.offered - queue.reserved(name)))
    return out


def _load(offer: Resources, reserved: Resources) -> float:
    return reserved.cores / offer.cores if offer.cores > 0 else 1.0


def _tiebreak(task_id: str, node: str) -> int:
    return zlib.crc32(f"{task_id}|{node}".encode())


def _rank(
    task: Task,
    me: str,
    my_offer: Resources,
    my_reserved: Resources,
    others: list[tuple[str, NodeState, Resources]],
    conds: tuple[cond.Condition, ...],
) -> int:
    """How many other nodes should get this task before us (0 = we are the best)."""
    needs = task.spec.needs
    tags = [c.argument for c in conds if c.scope == "worker" and c.predicate == "tag"]
    task_id = task.spec.task_id
    failed_here = me in task.failed_on
    mine = (failed_here, _load(my_offer, my_reserved), _tiebreak(task_id, me))
    rank = 0
    for name, ns, cap in others:
        if not fits(needs, cap) or any(t not in ns.tags for t in tags):
            continue
        reserved = ns.info.offered - cap
        theirs = (name in task.failed_on, _load(ns.info.offered, reserved), _tiebreak(task_id, name))
        if theirs < mine:
            rank += 1
    return rank

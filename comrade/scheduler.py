"""Which queued tasks this node should claim now. Pure: the caller passes every fact.

Every node runs `plan` on its own copy of the replicated queue and *deals* the queued tasks,
in submit order, to the live nodes as if it were a central scheduler: each task goes to the
candidate (free capacity by the replicated reservations, tags) that has not failed it, is least
loaded (reserved / offered cores, counting tasks dealt so far) and wins a hash tie-break of
(task, node). All nodes see the same replicated state, so they deal alike and each claims only
its own share: no races and work spreads. A node claims a task dealt to another only after it
has waited `defer_s` (covering local facts others cannot see: files, real free memory). The
state machine still accepts only the first claim, so a race costs one rejected claim, never a
double run.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import conditions as cond
from comrade.model import NodeState, Resources, Task
from comrade.queue import Queue

NOTHING = Resources()


@dataclass(frozen=True)
class LocalFacts:
    """What the scheduler knows about this node beyond the replicated queue."""

    tags: frozenset[str]
    has_file: Callable[[str], bool]


@dataclass(frozen=True)
class Claim:
    """A claim to propose: run `task_id` as attempt `attempt` (`ahead`: claimed ahead)."""

    task_id: str
    attempt: int
    ahead: bool = False


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
    defer_s: float = 0.3,
    limit: int = 256,
    freeing: Resources = NOTHING,
    avoid: Iterable[str] = (),
) -> tuple[list[Claim], bool]:
    """Claims this node should propose now, and whether some task was left to another node.

    free: this node's free resources (net of running tasks and claims in flight).
    waited(task_id): seconds since this node first saw the task queued.
    claiming: ids whose claim by this node is in flight (dealt to us, not claimed again).
    freeing: resources of our tasks that ended but whose finish is not applied yet.
    avoid: ids this node must not claim now (it could not start them); others may.
    """
    skip = set(claiming)
    shunned = set(avoid)
    claims: list[Claim] = []
    deferred = False
    running_here = queue.running_on(me)
    my_state = queue.nodes.get(me)
    if my_state is None or not my_state.takes_work or free.cores <= 0:
        return claims, deferred
    if any(not t.spec.concurrent for t in running_here):
        return claims, deferred
    worker = _Worker(my_state, local)
    caps = {name: ns.info.offered - queue.reserved(name)
            for name, ns in queue.nodes.items() if ns.takes_work}
    caps[me] = caps[me] + freeing
    dealt_to: dict[str, int] = {}  # tasks dealt this pass, per node (non-concurrent check)
    busy = {name: bool(queue.running_on(name)) for name in caps}
    busy[me] = bool(running_here) or bool(skip)
    for task in queue.ready():  # tasks waiting for a named task to end are not even listed
        task_id = task.spec.task_id
        if free.cores <= 0 or len(claims) >= limit:
            break
        if all(c.cores <= 0 for c in caps.values()):
            break
        needs = task.spec.needs
        conds = queue.conditions_of(task)
        if task_id in skip:
            caps[me] = caps[me] - needs
            continue
        if cond.evaluate_queue(conds, task.seq, queue).status is not cond.Status.READY:
            continue
        tags = _tags(conds)
        best = _deal(task, needs, tags, caps, busy, dealt_to, queue, me, worker, conds)
        if best is None:
            continue
        caps[best] = caps[best] - needs
        dealt_to[best] = dealt_to.get(best, 0) + 1
        mine_ok = (task_id not in shunned and fits(needs, free)
                   and _runs_here(task, conds, worker, busy[me], claims))
        if best != me:
            if not mine_ok:
                continue
            if waited(task_id) < defer_s:
                deferred = True  # dealt elsewhere; take it only if it is still queued later
                continue
        elif not mine_ok:  # dealt here, but it cannot start here now: no room kept for it
            caps[me] = caps[me] + needs
            dealt_to[me] -= 1
            continue
        claims.append(Claim(task_id, task.attempt + 1))
        free = free - needs
        if not task.spec.concurrent:
            break
    return claims, deferred


def plan_ahead(
    queue: Queue,
    me: str,
    room: int,
    local: LocalFacts,
    claiming: Iterable[str] = (),
    avoid: Iterable[str] = (),
) -> list[Claim]:
    """Claims ahead: up to `room` queued tasks for this node to start the moment its running
    tasks end, although it has no free resources now (the caller makes sure of that).

    A task is claimed ahead only if no other live worker could start it now (otherwise the
    deal gives it to that worker; ghosts, whose claims go through a relay, get what is left
    beyond the bounded claims ahead), if it is concurrent and could ever run here (offer,
    tags, worker conditions), and if it is this node's share: among the live workers whose
    offer and tags fit it, this node wins the hash tie-break, so nodes claiming ahead
    together take different tasks.
    """
    my_state = queue.nodes.get(me)
    if room <= 0 or my_state is None or not my_state.takes_work:
        return []
    if any(not t.spec.concurrent for t in queue.running_on(me)):
        return []
    worker = _Worker(my_state, local)
    open_others = [(name, cap) for name, ns in queue.nodes.items()
                   if ns.takes_work and name != me and ns.info.kind == "worker"
                   for cap in [ns.info.offered - queue.reserved(name)] if cap.cores > 0]
    workers = sorted(name for name, ns in queue.nodes.items()
                     if ns.takes_work and ns.info.kind == "worker")
    skip = set(claiming) | set(avoid)
    claims: list[Claim] = []
    scan = 32 + 2 * room * max(1, len(workers))  # each worker's share is about 1/workers
    # The workers whose offer and tags fit, the same for alike tasks: keyed by plain values,
    # which hash in C (a Resources hashes through a Python call).
    fit_cache: dict[tuple[int, int, int, tuple[str | None, ...]], list[str]] = {}
    for i, task in enumerate(queue.ready()):
        if i >= scan or len(claims) >= room:
            break
        spec = task.spec
        task_id = spec.task_id
        if task_id in skip or not spec.concurrent:
            continue
        needs = spec.needs
        conds = queue.conditions_of(task)
        tags = _tags(conds) if conds else ()
        key = (needs.memory, needs.cores, needs.storage, tags)
        fit = fit_cache.get(key)
        if fit is None:
            fit = [n for n in workers if fits(needs, queue.nodes[n].info.offered)
                   and _tagged(queue, worker, me, n, tags)]
            fit_cache[key] = fit
        if _share(task, fit) != me:
            continue
        if any(fits(needs, cap) and _tagged(queue, worker, me, name, tags) for name, cap in open_others):
            continue  # another node can start it now
        if conds and cond.evaluate_queue(conds, task.seq, queue).status is not cond.Status.READY:
            continue
        if conds and not _runs_here(task, conds, worker, False, claims):
            continue
        claims.append(Claim(task_id, task.attempt + 1, ahead=True))
    return claims


def _tags(conds: tuple[cond.Condition, ...]) -> tuple[str | None, ...]:
    """The tags a task's `worker:tag` conditions ask for."""
    return tuple(c.argument for c in conds if c.scope == "worker" and c.predicate == "tag")


def _runs_here(task: Task, conds: tuple[cond.Condition, ...], worker: _Worker, busy: bool,
               claims: list[Claim]) -> bool:
    if not task.spec.concurrent and (busy or claims):
        return False
    return cond.evaluate_worker(conds, worker).status is cond.Status.READY


def _deal(
    task: Task,
    needs: Resources,
    tags: tuple[str | None, ...],
    caps: dict[str, Resources],
    busy: dict[str, bool],
    dealt_to: dict[str, int],
    queue: Queue,
    me: str,
    worker: _Worker,
    conds: tuple[cond.Condition, ...],
) -> str | None:
    """The node this task is dealt to: the best-ranked candidate, or None if none fits."""
    best: tuple[object, ...] | None = None
    best_name = None
    for name, cap in caps.items():
        if not fits(needs, cap):
            continue
        if not _tagged(queue, worker, me, name, tags):
            continue
        ns = queue.nodes[name]
        if not task.spec.concurrent and (busy[name] or dealt_to.get(name)):
            continue
        offered = ns.info.offered
        load = (offered.cores - cap.cores) / offered.cores if offered.cores > 0 else 1.0
        key = (name in task.failed_on, load, _tiebreak(task.spec.task_id, name))
        if best is None or key < best:
            best, best_name = key, name
    return best_name


def _share(task: Task, fit: list[str]) -> str | None:
    """The worker whose share of the backlog a task is: one of the workers that `fit` it
    (preferring those it has not failed on), picked by a hash of its id."""
    if task.failed_on:
        fit = [n for n in fit if n not in task.failed_on] or fit
    return fit[zlib.crc32(task.spec.task_id.encode()) % len(fit)] if fit else None


def _tagged(queue: Queue, worker: _Worker, me: str, name: str, tags: Sequence[str | None]) -> bool:
    """True if node `name` carries every tag in `tags` (this node: with its local tags)."""
    node_tags = worker.tags if name == me else queue.nodes[name].tags
    return all(t in node_tags for t in tags)


class _Worker:
    """WorkerFacts for conditions/: replicated tags plus local files."""

    def __init__(self, state: NodeState, local: LocalFacts) -> None:
        self.tags = frozenset(state.tags) | local.tags
        self._has_file = local.has_file

    def has_file(self, name: str) -> bool:
        return self._has_file(name)


def _tiebreak(task_id: str, node: str) -> int:
    return zlib.crc32(f"{task_id}|{node}".encode())

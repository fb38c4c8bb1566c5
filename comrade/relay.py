"""The clairvoyant side of ghosts: claim on their behalf through Raft, relay heartbeats and results.

A ghost has no Raft. It calls `ghost_attach` once, then `ghost_poll` in a loop: each poll
carries its free resources, the names in its files directory, and the results it finished. The
clairvoyant proposes the ghost's heartbeat and finishes, then looks for the first queued tasks
the ghost can run (all conditions and resources, as for a worker), claims them for the ghost,
and returns them. With nothing to do the poll waits, woken by every applied Raft entry, until a
fitting task arrives or `timeout` passes (a long poll: an idle ghost costs one call per
`timeout`, which doubles as its heartbeat).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from comrade.errors import ClusterError, UsageError
from comrade.model import NodeInfo, Outcome, Resources, State, TaskSpec
from comrade.queue import MAX_NODE_DEATHS
from comrade.scheduler import LocalFacts, plan

if TYPE_CHECKING:
    from comrade.node import Node

log = logging.getLogger(__name__)

#: The tag a worker carries while it has ghosts.
CLAIRVOYANT = "clairvoyant"


class Relay:
    """Ghost-facing RPC handlers of one worker."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def handlers(self) -> dict[str, Any]:
        """Method name -> handler."""
        return {"ghost_attach": self.attach, "ghost_poll": self.poll, "ghost_report": self.report,
                "ghost_release": self.release, "ghost_leave": self.leave}

    def leave(self, name: str) -> bool:
        """A ghost stops (SIGTERM) having killed its tasks: they go back to the queue now
        (`node left`) and it is no longer shown up."""
        self._check_ghost(name)
        [reply] = self.node.service._propose([("leave", name)])
        return bool(reply.ok)

    def release(self, name: str, task_id: str, attempt: int, reason: str) -> bool:
        """A ghost could not start a task (e.g. a necessary file): back to the queue, as for a
        worker (the state machine fails it after repeated "cannot start" releases)."""
        self._check_ghost(name)
        [reply] = self.node.service._propose([("release", task_id, name, attempt, reason[:200],
                                                      MAX_NODE_DEATHS)])
        return bool(reply.ok)

    def report(self, name: str, free: Resources,
               finished: Sequence[tuple[str, int, Outcome]]) -> bool:
        """Relay results at once (a ghost's poll may be waiting); no claiming."""
        self._check_ghost(name)
        self.node.service._propose(_heartbeat_and_finishes(name, free, finished))
        return True

    def _check_ghost(self, name: str) -> None:
        with self.node.lock:
            ns = self.node.consumer.queue.nodes.get(name)
            if ns is None or ns.info.kind != "ghost":
                raise UsageError(f"ghost {name!r} is not attached; attach first")

    def attach(self, info: NodeInfo) -> dict[str, Any]:
        """Register a ghost with this worker as its clairvoyant; return the known workers."""
        if not isinstance(info, NodeInfo) or info.kind != "ghost":
            raise UsageError("ghost_attach: not a ghost")
        info = replace(info, clairvoyant=self.node.name)
        ops: list[Any] = [("join", info)]
        with self.node.lock:
            me = self.node.consumer.queue.nodes.get(self.node.name)
            tagged = me is not None and CLAIRVOYANT in me.tags
        if not tagged:
            ops.append(("add_tag", self.node.name, CLAIRVOYANT))
        joined = self.node.service._propose(ops)[0]
        if not joined.ok:  # its name is held by a node that is up elsewhere
            raise UsageError(joined.detail)
        log.info("ghost %s attached (%s)", info.name, info.rpc)
        return {"clairvoyant": self.node.name, "workers": self._workers()}

    def poll(
        self,
        name: str,
        free: Resources,
        files: Sequence[str],
        finished: Sequence[tuple[str, int, Outcome]],
        timeout: float,
    ) -> dict[str, Any]:
        """Relay the ghost's heartbeat and results; return tasks claimed for it (may wait)."""
        self._check_ghost(name)
        self.node.service._propose(_heartbeat_and_finishes(name, free, finished))
        deadline = time.monotonic() + min(max(timeout, 0.0), 10.0)
        have = frozenset(files)
        while True:
            work = self._claim_for(name, free, have)
            if work or time.monotonic() >= deadline:
                return {"tasks": work, "workers": self._workers(),
                        "assigned": self._assigned(name)}
            with self.node.applied_cv:
                self.node.applied_cv.wait(max(0.0, deadline - time.monotonic()))

    def _claim_for(self, ghost: str, free: Resources, files: frozenset[str]) -> list[Any]:
        node = self.node
        with node.lock:
            queue = node.consumer.queue
            ns = queue.nodes.get(ghost)
            if ns is None or not ns.alive:
                return []
            local = LocalFacts(tags=frozenset(), has_file=files.__contains__)
            claims, _ = plan(queue, ghost, free, local, waited=lambda _t: 1e9, limit=8)
        if not claims:
            return []
        try:
            replies = node.service._propose(
                [("claim", c.task_id, ghost, c.attempt) for c in claims], deadline_s=5)
        except ClusterError:
            return []
        out: list[tuple[TaskSpec, int]] = []
        with node.lock:
            for c, r in zip(claims, replies, strict=False):
                task = node.consumer.queue.tasks.get(c.task_id)
                if r.ok and task is not None:
                    out.append((task.spec, c.attempt))
        return out

    def _assigned(self, ghost: str) -> list[tuple[str, int]]:
        """(task id, attempt) the replicated state says run on the ghost (it kills the rest)."""
        with self.node.lock:
            return [(t.spec.task_id, t.attempt) for t in self.node.consumer.queue.running_on(ghost)
                    if t.state is State.RUNNING]

    def _workers(self) -> list[str]:
        with self.node.lock:
            return sorted(ns.info.rpc for ns in self.node.consumer.queue.nodes.values()
                          if ns.info.kind == "worker" and ns.alive)


def _heartbeat_and_finishes(name: str, free: Resources,
                            finished: Sequence[tuple[str, int, Outcome]]) -> list[Any]:
    """The operations relaying a ghost's heartbeat and finished results."""
    return [("heartbeat", name, free, "")] + [
        ("finish", tid, name, att, outcome) for tid, att, outcome in finished]

"""What a node answers over RPC: submit, queue, results, nodes, tags, files, membership.

Each handler validates against the replicated state, proposes through Raft when it changes
something, and returns plain data. Handlers run on RPC threads; they read the queue under its
lock and never hold the lock while waiting for Raft.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from comrade import packing, rpc
from comrade.errors import ClusterError, LeoronicError, NotChanged, UsageError
from comrade.membership import protocol_mismatch, rpc_of_raft
from comrade.model import WAIT_OVER, Resources, State, Task, TaskSpec
from comrade.queue import PROTOCOL
from comrade.taskfields import command_too_long, conditions_too_long

if TYPE_CHECKING:
    from comrade.node import Node

log = logging.getLogger(__name__)

#: How long a change (a submit, delete, hold, priority, drain or tag) keeps retrying an unknown
#: outcome (a leader change, no quorum) before answering that it may still be made: at most
#: this, and no longer than the client's own LEORONIC_RETRY_S, which it sends with the change...
SUBMIT_DEADLINE_S = 20.0
#: ...but at least this (a commit takes milliseconds, an election about a second).
CHANGE_WAIT_MIN_S = 2.0
#: How long a read waits for a node that just started to catch up with the log its leader had
#: committed (the wait ends as soon as it has; without a quorum it does not wait).
READ_CATCH_UP_S = 5.0


def change_wait(wait_s: Any) -> float:
    """How long a change waits for a quorum: the client's wait (None from an older client, or
    a bad value: SUBMIT_DEADLINE_S), within CHANGE_WAIT_MIN_S..SUBMIT_DEADLINE_S."""
    if not isinstance(wait_s, (int, float)) or isinstance(wait_s, bool) or wait_s != wait_s:
        return SUBMIT_DEADLINE_S
    return min(max(float(wait_s), CHANGE_WAIT_MIN_S), SUBMIT_DEADLINE_S)


class Service:
    """RPC handlers of one node."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def uploads(self) -> dict[str, Callable[..., Any]]:
        """Upload method name -> handler (`rpc.Server`'s uploads)."""
        return {"file_upload": self.file_upload}

    def handlers(self) -> dict[str, Callable[..., Any]]:
        """Method name -> handler."""
        return {
            "ping": self.ping,
            "members": self.members,
            "add_member": self.add_member,
            "remove_member": self.remove_member,
            "submit": self.submit,
            "check": self.check,
            "queue": self.queue,
            "tasks": self.tasks,
            "wait_tasks": self.wait_tasks,
            "not_done": self.not_done,
            "held": self.held,
            "task": self.task,
            "delete": self.delete,
            "priority": self.priority,
            "hold": self.hold,
            "nodes": self.nodes,
            "add_tag": self.add_tag,
            "del_tag": self.del_tag,
            "drain": self.drain,
            "forget_node": self.forget_node,
            "drained": self.drained,
            "file_missing": self.file_missing,
            "capacity": self.capacity,
        }

    # ----- helpers ----------------------------------------------------------------------------

    def _change(self, ops: list[Any], wait_s: float | None = None) -> list[Any]:
        """`_propose` for a client's change (submit, delete, hold, priority, drain, tags):
        refused at once, and so certainly not made, while this node is isolated: it has had
        no quorum for --isolation-after already, and waiting SUBMIT_DEADLINE_S more for one
        only to say "unknown outcome" helped nobody. `wait_s`: the client's LEORONIC_RETRY_S,
        so a client that gives up after 1 s is not kept 20 s (`change_wait`)."""
        since = self.node.isolation.since
        if since is not None:
            raise NotChanged(
                f"no quorum: node {self.node.name} is isolated since "
                f"{time.strftime('%H:%M:%S', time.localtime(since))} (a majority of the workers "
                "is unreachable); changes need a majority, so nothing was changed")
        try:
            return self._propose(ops, change_wait(wait_s))
        except ClusterError as exc:
            if ops and ops[0][0] == "submit":
                raise  # the client says which tasks may be queued
            raise ClusterError(f"{exc}: the change may still be made once a majority is back "
                               "(repeating it then is safe)") from None

    def _propose(self, ops: list[Any], deadline_s: float = SUBMIT_DEADLINE_S) -> list[Any]:
        """Propose and wait, retrying unknown outcomes with the same (idempotent) operations."""
        assert self.node.proposer is not None
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                return self.node.proposer.propose_sync(
                    ops, timeout=min(6.0, max(deadline - time.monotonic(), 0.1)))
            except ClusterError:
                if time.monotonic() >= deadline:
                    raise
                log.info("retrying %d operations after an unknown outcome", len(ops))

    def _read(self, fn: Callable[[Any], Any], stale_ok: bool = False) -> Any:
        """Apply `fn` to the queue readers should see: the replicated one, or while this node
        is isolated its shadow copy (with the results it produced alone and the other nodes
        marked lost), so `leoronic_result`, `get_queue` and `nodes` show what it is doing.
        A node that just started waits (up to READ_CATCH_UP_S) until its copy has caught up
        with the log the leader had committed: a restarted worker replaying its journal once
        listed half the queue right after `leoronic_nodes` showed it up, and after a restart of
        every worker, before they had elected a leader, `get_queue` answered from an empty
        copy and `leoronic_wait` exited 0 with tasks queued. Still behind after that, it says
        so (ClusterError: the client retries, or tries another worker), unless `stale_ok`
        (`leoronic_nodes`, which shows the missing quorum itself)."""
        iso = self.node.isolation
        with iso.lock:
            if iso.shadow is not None:
                return fn(iso.shadow)
        if not self._wait_caught_up() and not stale_ok:
            raise ClusterError(f"node {self.node.name} has not caught up with the cluster's "
                               "log since it started (no leader yet): its copy may be behind")
        with self.node.lock:
            return fn(self.node.consumer.queue)

    def _wait_caught_up(self) -> bool:
        """Wait (up to READ_CATCH_UP_S) for a node that just (re)started to catch up with the
        log; checked every 20 ms, only in those seconds. True once it has."""
        node, deadline = self.node, time.monotonic() + READ_CATCH_UP_S
        while node.syncobj is not None and not node.caught_up():
            if time.monotonic() >= deadline or node._stop.wait(0.02):
                return False
        return True

    # ----- cluster ----------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        """Who this node is."""
        return {"name": self.node.name, "kind": "worker", "rpc": self.node.rpc_addr,
                "raft": self.node.raft_addr, "protocol": PROTOCOL}

    def members(self) -> list[str]:
        """The Raft member addresses, this node included."""
        return self.node._members()

    def add_member(self, raft_addr: str, protocol: int = 0) -> bool:
        """Add a node to the Raft membership (waits for the change to commit), if it runs this
        node's version of the replicated state machine (older nodes do not say: 0)."""
        if protocol != PROTOCOL:
            raise UsageError(protocol_mismatch(protocol, PROTOCOL, "the joining node", "this cluster"))
        return self._change_membership("add", raft_addr)

    def remove_member(self, raft_addr: str) -> bool:
        """Remove a node from the Raft membership."""
        return self._change_membership("remove", raft_addr)

    def _change_membership(self, kind: str, raft_addr: str) -> bool:
        members = self.node._members()
        if (kind == "add") == (raft_addr in members):
            return True  # already so: idempotent
        done = threading.Event()
        box: dict[str, Any] = {}

        def cb(result: Any, err: int) -> None:
            box["err"] = err
            done.set()

        change = self.node.syncobj.addNodeToCluster if kind == "add" else \
            self.node.syncobj.removeNodeFromCluster
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            done.clear()
            change(raft_addr, callback=cb)
            if done.wait(5.0) and box.get("err") == 0:
                return True
            if (kind == "add") == (raft_addr in self.node._members()):
                return True
            time.sleep(0.2)  # pacing between retries of a refused change (one at a time)
        raise ClusterError(f"could not {kind} member {raft_addr}: error {box.get('err')}")

    def capacity(self) -> dict[str, Any]:
        """The largest offer among live nodes (for submit-time checks)."""
        return self._read(_largest)

    # ----- tasks ------------------------------------------------------------------------------

    def check(self, specs: Sequence[TaskSpec]) -> list[tuple[int, str]]:
        """Dry run of a submit: (index, problem) for every spec that would be refused."""
        biggest = self._read(_largest)
        problems = self._read(lambda q: q.check_submit(list(specs)))
        for i, spec in enumerate(specs):
            why = _unrunnable(spec, biggest)
            if why:
                problems.append((i, why))
        return sorted(problems)

    def submit(self, specs: Sequence[TaskSpec], wait_s: float | None = None
               ) -> list[tuple[str, bool, str]]:
        """Queue tasks; returns (id, accepted, detail) for each. Impossible tasks are refused.
        `wait_s`, here and in every change: how long the client waits (`change_wait`)."""
        biggest = self._read(_largest)
        for spec in specs:
            why = _unrunnable(spec, biggest)
            if why:
                raise UsageError(why)
        replies = self._change([("submit", s) for s in specs], wait_s)
        return [(s.task_id, r.ok, r.detail) for s, r in zip(specs, replies, strict=False)]

    def queue(self, states: Sequence[str] = (), node: str = "") -> list[tuple[Any, ...]]:
        """One row per task: id, state, node, attempt, submitted, command, reason, exit code;
        only tasks in `states` (if given) last placed on `node` (if given)."""
        wanted = set(states)

        def rows(q: Any) -> list[tuple[Any, ...]]:
            tags_up = q.tags_up()
            return [
                (t.spec.task_id, t.state.value, t.node or "", t.attempt, t.submitted,
                 t.spec.command, t.reason or q.waiting_note(t, tags_up),
                 t.outcome.exit_code if t.outcome else None, t.priority, t.held)
                for t in q.tasks.values()
                if (not wanted or t.state.value in wanted) and (not node or t.node == node)
            ]
        return self._read(rows)

    def tasks(self, ids: Sequence[str]) -> dict[str, tuple[str, int | None]]:
        """State and exit code of the given tasks (all tasks if none are given)."""
        def pick(q: Any) -> dict[str, tuple[str, int | None]]:
            chosen = ids or list(q.tasks)
            out: dict[str, tuple[str, int | None]] = {}
            for tid in chosen:
                t = q.tasks.get(tid)
                out[tid] = ("unknown", None) if t is None else _state_of(t)
            return out
        return self._read(pick)

    def not_done(self) -> tuple[int, dict[str, tuple[str, int | None]]]:
        """Where `leoronic wait` for every task starts: how many tasks are done (a task deleted
        after it succeeded counts), and the state and exit code of each other task. A queue
        keeps a month of finished tasks: those that succeeded cost a count, not a record
        each sent to the client (about 1.4 ms per thousand, client and node)."""
        def pick(q: Any) -> tuple[int, dict[str, tuple[str, int | None]]]:
            done, rest = 0, {}
            for tid, t in q.tasks.items():
                if t.state is State.DONE or (t.state is State.DELETED and _had_succeeded(t)):
                    done += 1
                else:
                    rest[tid] = _state_of(t)
            return done, rest
        return self._read(pick)

    def held(self, ids: Sequence[str]) -> list[str]:
        """Those of `ids` that are queued and held: nothing but `release` starts them."""
        def pick(q: Any) -> list[str]:
            return [tid for tid in ids if (t := q.tasks.get(tid)) is not None and t.held
                    and t.state == State.QUEUED]
        return self._read(pick)

    def wait_tasks(self, ids: Sequence[str], timeout: float) -> dict[str, tuple[str, int | None]]:
        """Like `tasks`, but waits up to `timeout` s (at most 30) for all of them to finish.

        After each applied entry only the first unfinished task (in the given or submit order)
        is looked at again until it is final, so a wait costs O(1) per entry, not O(tasks)."""
        deadline = time.monotonic() + min(max(timeout, 0.0), 30.0)
        states = self.tasks(ids)
        remaining = [t for t, (s, _) in states.items() if s not in WAIT_OVER]
        done = 0  # remaining[:done] are final

        def advance(q: Any) -> None:
            nonlocal done
            while done < len(remaining):
                t = q.tasks.get(remaining[done])
                if t is not None and not t.state.final:  # an unknown task counts as final
                    return
                done += 1

        while done < len(remaining):
            with self.node.applied_cv:
                gen = self.node.applied_gen
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wait_entry(gen, left)
            self._read(advance)
        if remaining:
            states.update(self.tasks(remaining))  # outside the cv
        return self._succeeded_as_done(states)

    def _succeeded_as_done(self, states: dict[str, tuple[str, int | None]]
                           ) -> dict[str, tuple[str, int | None]]:
        """`states` with each task deleted after it had succeeded shown done: deleting it
        forgot its output, not its success (`wait` exited 1 for it from then on)."""
        deleted = [t for t, (s, _) in states.items() if s == State.DELETED.value]
        if deleted:
            def succeeded(q: Any) -> list[str]:
                return [tid for tid in deleted if (t := q.tasks.get(tid)) is not None
                        and _had_succeeded(t)]
            for tid in self._read(succeeded):
                states[tid] = (State.DONE.value, 0)
        return states

    def _wait_entry(self, gen: int, timeout: float) -> None:
        """Sleep until an entry after number `gen` is applied, or `timeout` seconds pass."""
        cv = self.node.applied_cv
        with cv:
            cv.wait_for(lambda: self.node.applied_gen != gen, timeout)

    def task(self, task_id: str) -> Task:
        """The whole record of one task."""
        def pick(q: Any) -> Task | None:
            t = q.tasks.get(task_id)
            if t is None:
                return None
            summary: Task = t.summary()
            note = q.waiting_note(t, q.tags_up())
            return replace(summary, reason=note) if note else summary
        t = self._read(pick)
        if t is None:
            raise UsageError(f"ID: no task {task_id!r}")
        return t

    def delete(self, ids: Sequence[str], wait_s: float | None = None
               ) -> list[tuple[str, bool, str]]:
        """Delete tasks (queued: removed; running: killed; finished: forgotten)."""
        return self._each(ids, lambda tid: ("delete", tid), wait_s)

    def priority(self, ids: Sequence[str], priority: int, wait_s: float | None = None
                 ) -> list[tuple[str, bool, str]]:
        """Give tasks not finished yet a new priority."""
        return self._each(ids, lambda tid: ("priority", tid, priority), wait_s)

    def hold(self, ids: Sequence[str], on: bool, wait_s: float | None = None
             ) -> list[tuple[str, bool, str]]:
        """Hold queued and running tasks (on: a running one is stopped) or release them."""
        return self._each(ids, lambda tid: ("hold", tid, on, True) if on else ("hold", tid, on),
                          wait_s)

    def _each(self, ids: Sequence[str], op: Callable[[str], Any], wait_s: float | None
              ) -> list[tuple[str, bool, str]]:
        """Propose one operation per task id: (id, accepted, detail) for each."""
        replies = self._change([op(tid) for tid in ids], wait_s)
        return [(tid, r.ok, r.detail) for tid, r in zip(ids, replies, strict=False)]

    # ----- nodes and tags ---------------------------------------------------------------------

    def nodes(self) -> dict[str, Any]:
        """Every node: address, role, tags, offered and free resources, running tasks."""
        leader = self.node.syncobj._getLeader() if self.node.syncobj else None
        leader_addr = leader.id if leader is not None else ""

        members = set(self.node._members())

        def rows(q: Any) -> list[dict[str, Any]]:
            # A Raft address is one member's: a worker restarted there under another name left
            # a record that must not take the role of the worker there now (the one up, else
            # the one seen last).
            holder: dict[str, str] = {}
            for name, ns in sorted(q.nodes.items(), key=lambda kv: (kv[1].alive, kv[1].last_seen)):
                if ns.info.kind == "worker":
                    holder[ns.info.raft] = name
            out = []
            for name, ns in q.nodes.items():
                role = ns.info.kind
                if ns.info.kind == "worker":
                    role = "leader" if ns.info.raft == leader_addr else "follower"
                    if ns.info.raft not in members:
                        role = "not a Raft member"
                    elif holder[ns.info.raft] != name:
                        role = f"not a Raft member (its address is {holder[ns.info.raft]}'s)"
                out.append({
                    "name": name, "kind": ns.info.kind, "rpc": ns.info.rpc, "role": role,
                    "tags": sorted(ns.tags), "offered": ns.info.offered, "free": ns.free,
                    "running": sorted(t.spec.task_id for t in q.running_on(name)),
                    "alive": ns.alive, "lost_since": ns.lost_since, "note": ns.note,
                    "draining": ns.draining,
                    "clairvoyant": ns.info.clairvoyant,
                })
            return out
        iso = self.node.isolation
        shown = rpc_of_raft(leader_addr) if leader_addr else ""  # what LEORONIC_NODE takes
        return {"self": self.node.name, "leader": shown, "nodes": self._read(rows, stale_ok=True),
                "isolated_since": iso.since, "on_isolation": self.node.cfg.on_isolation,
                "quorum": bool(self.node.syncobj and self.node.syncobj.hasQuorum)}

    def add_tag(self, node: str, tag: str, wait_s: float | None = None) -> str:
        """Tag a node (this one if node is empty)."""
        return self._tag("add_tag", node or self.node.name, tag, wait_s)

    def del_tag(self, node: str, tag: str, wait_s: float | None = None) -> str:
        """Untag a node (this one if node is empty)."""
        return self._tag("del_tag", node or self.node.name, tag, wait_s)

    def forget_node(self, node: str, wait_s: float | None = None) -> None:
        """Drop the record of a node that is down. A worker still in the Raft membership is
        refused: its record is what lets the leader remove it (after --remove-after), and a
        member that never comes back would count against the majority for good."""
        def look(q: Any) -> tuple[str, bool] | None:
            ns = q.nodes.get(node)
            return None if ns is None else (ns.info.raft, ns.alive)
        seen = self._read(look)
        if seen is None:
            raise UsageError(f"NAME: unknown node {node!r}")
        raft, alive = seen
        if alive:
            raise UsageError(f"NAME: node {node!r} is up: only a node that is down can be "
                             "forgotten")
        if raft and raft in set(self.node._members()):
            raise UsageError(
                f"NAME: node {node!r} is still a Raft member: the leader removes a worker lost "
                "for --remove-after (see Fault tolerance); forget it after that")
        [reply] = self._change([("forget_node", node)], wait_s)
        if not reply.ok and not reply.detail.startswith("unknown node"):  # unknown now: a
            raise UsageError(f"NAME: {reply.detail}")  # retry whose first try was applied

    def drain(self, node: str, on: bool, wait_s: float | None = None) -> dict[str, Any]:
        """Stop (`on`) or resume giving a node (this one if node is empty) new tasks; its
        state as `drained` gives it."""
        name = node or self.node.name
        [reply] = self._change([("drain", name, bool(on))], wait_s)
        if not reply.ok:
            raise UsageError(f"--node: {reply.detail}")
        return self.drained(name, 0.0)

    def drained(self, node: str, timeout: float) -> dict[str, Any]:
        """{"node", "draining", "running"}: whether the node (this one if node is empty) is
        draining and the tasks still on it, after waiting up to `timeout` s (at most 30) for
        it to run none."""
        name = node or self.node.name
        deadline = time.monotonic() + min(max(timeout, 0.0), 30.0)

        def look(q: Any) -> dict[str, Any] | None:
            ns = q.nodes.get(name)
            return None if ns is None else {
                "node": name, "draining": ns.draining,
                "running": sorted(t.spec.task_id for t in q.running_on(name))}

        while True:
            with self.node.applied_cv:
                gen = self.node.applied_gen
            state = self._read(look)
            if state is None:
                raise UsageError(f"--node: unknown node {name!r}")
            left = deadline - time.monotonic()
            if not state["running"] or left <= 0:
                return state
            self._wait_entry(gen, left)

    def _tag(self, op: str, node: str, tag: str, wait_s: float | None) -> str:
        [reply] = self._change([(op, node, tag)], wait_s)
        if not reply.ok:
            field = "--node" if reply.detail.startswith("unknown node") else "TAG"
            raise UsageError(f"{field}: {reply.detail}")
        return node

    # ----- files ------------------------------------------------------------------------------

    def file_missing(self, shas: Sequence[str]) -> list[str]:
        """Which of these hashes this node's store lacks (those it has are kept alive: a client
        that is told a file is here submits a task using it without uploading it)."""
        return [s for s in shas if not self.node.store.keep_alive(s)]

    def file_upload(self, parts: Iterable[bytes], sha: str, copies: int = 2) -> int:
        """Store an uploaded file, written to the store part by part as it comes (hash-checked
        at the end; nothing is stored if it does not match), and pass it on, the same way,
        until `copies` nodes hold it, before answering: the client submits the tasks that use
        it once this returns, and a node killed right after had held the only copy (the
        tasks failed after five starts, "no node could supply it"). With no other worker
        reachable the one copy is all there is (a one-node cluster). Returns its size."""
        with self.node.store.writer(sha) as out:
            for part in parts:
                out.write(part)
        if copies > 1:
            self._spread(sha, copies - 1)
        return out.size

    def _spread(self, sha: str, copies: int) -> None:
        for addr in self._other_workers():
            if copies <= 0:
                return
            try:
                with rpc.connect(addr, self.node.cfg.cookie) as conn:
                    if conn.call("file_missing", [sha]):
                        conn.call("file_upload", sha, 1,
                                  parts=self.node.store.read_chunks(sha, rpc.PART_BYTES))
                    copies -= 1
            except LeoronicError as exc:
                log.warning("could not copy file %s to %s: %s", sha[:12], addr, exc)

    def fetch_file(self, sha: str) -> None:
        """Get a file from any node that has it into the local store (hash-checked)."""
        packing.fetch_from_any(self.node.store, self._other_workers(), self.node.cfg.cookie, sha)

    def _other_workers(self) -> list[str]:
        def addrs(q: Any) -> list[str]:
            return [ns.info.rpc for name, ns in q.nodes.items()
                    if name != self.node.name and ns.alive and ns.info.kind == "worker"]
        return self._read(addrs)


def _state_of(t: Any) -> tuple[str, int | None]:
    """A task's state and exit code, as `tasks`, `wait_tasks` and `not_done` answer them."""
    return t.state.value, t.outcome.exit_code if t.outcome else None


def _had_succeeded(t: Any) -> bool:
    """Whether the task's last attempt exited 0 (for a deleted task: deleting it forgot its
    output, not its success)."""
    return bool(t.attempts) and t.attempts[-1].why == "exit" and t.attempts[-1].exit_code == 0


def _largest(q: Any) -> dict[str, Any]:
    best: dict[str, Any] = {"memory": (0, ""), "cores": (0, ""), "storage": (0, "")}
    for name, ns in q.nodes.items():
        if not ns.alive:
            continue
        offer: Resources = ns.info.offered
        for field in best:
            value = getattr(offer, field)
            if value > best[field][0]:
                best[field] = (value, name)
    return best


def _unrunnable(spec: TaskSpec, biggest: dict[str, Any]) -> str:
    """Why no node could ever run this task ('' if one could): a command too long for bash -c,
    conditions longer than taken, or more than any live node offers."""
    if isinstance(spec, TaskSpec):
        for too_long, text in ((command_too_long, spec.command),
                               (conditions_too_long, spec.conditions)):
            why = too_long(text, spec.task_id) if isinstance(text, str) else ""
            if why:
                return why
    return _impossible(spec, biggest)


def _impossible(spec: TaskSpec, biggest: dict[str, Any]) -> str:
    """Why a task asks for more than any live node could ever offer ('' if it does not)."""
    if not biggest["cores"][1]:
        return ""  # no node known yet: nothing to compare with
    needs = spec.needs if spec.files else spec  # without files, it needs what it asks for
    if needs.memory <= biggest["memory"][0] and needs.cores <= biggest["cores"][0] \
            and needs.storage <= biggest["storage"][0]:
        return ""  # (checked for every task of every submit: first the common case, quickly)
    labels = {"memory": "MEM", "cores": "CORES", "storage": "STORAGE"}
    for field, label in labels.items():
        value, name = biggest[field]
        if getattr(needs, field) > value:
            unit = "" if field == "cores" else " bytes"
            return (f"{label}: task {spec.task_id} asks for {getattr(needs, field)}{unit}, more "
                    f"than any node offers (largest: {name} with {value}{unit})")
    return ""

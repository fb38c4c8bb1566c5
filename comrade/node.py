"""A worker node: wires replication, scheduling, execution, RPC and membership together.

This is the only module that knows all the others. Threads:
- pysyncobj's tick thread applies committed entries and calls `_on_applied` (never blocks);
- the `Executor` actor that runs this node's tasks and reaps them (one epoll set for its
  inbox and the children's pidfds); the scheduling passes (reconcile the running tasks with
  the replicated state, then schedule) run on its thread too (`Executor.call_soon`), one at
  a time;
- the ticker thread: heartbeats, the leader's lease checks, retries, membership file;
- the RPC server's threads answer clients and ghosts.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pykka

from comrade import collector, discovery, journal_check, membership, packing, raftmend, resources, rpc
from comrade.config import Config, binds_everywhere
from comrade.errors import ClusterError, LeoronicError
from comrade.executor import Crashed, Executor, Paths, Report, remove_task_files, task_files
from comrade.files import FileRef as FileRefT
from comrade.files import FileStore, place_files, rewrite_command
from comrade.homelock import take_home
from comrade.isolation import Isolation
from comrade.model import NodeInfo, Outcome, Resources, State, TaskSpec
from comrade.queue import MAX_NODE_DEATHS, PROTOCOL, Reply, forgettable_in, rank
from comrade.relay import CLAIRVOYANT, Relay
from comrade.removal import Removal
from comrade.replication import Proposer, ReplicatedQueue, last_log_index, make_syncobj
from comrade.rpc import Server, check_port_free
from comrade.scheduler import Claim, LocalFacts, plan, plan_ahead
from comrade.service import Service
from comrade.supervisor import RestartPolicy, Supervisor

log = logging.getLogger(__name__)

_LEADER = 2  # pysyncobj _RAFT_STATE.LEADER
_ROLE = {0: "follower", 1: "candidate", 2: "leader"}  # pysyncobj _RAFT_STATE
#: Seconds a node leaves alone a task it could not start (others may have the file).
AVOID_S = 10.0
#: A task claimed ahead that has not started after this many seconds goes back to the queue.
GIVE_BACK_S = 1.0
#: A release of a claim given back that has not been applied is proposed again after this.
RELEASE_RETRY_S = 3.0
#: The most tasks a node holds claimed ahead. Claims ride in Raft entries a busy node sends at
#: most every 50 ms (the proposer's linger), so this bounds how fast one node can start tasks:
#: at 24 a lone node started at most 480 a second.
AHEAD_MAX = 256
#: A task that ran here in under this many seconds shows tasks are short enough to claim ahead:
#: the cap on claims ahead doubles; one claimed ahead that waited longer halves it
#: (`_ahead_room`).
QUICK_S = GIVE_BACK_S / 4
#: A node that ran nothing for this long knows nothing of the next tasks: it claims none ahead
#: until some run quickly (`_ahead_room`).
IDLE_S = 0.05
#: A claim with no answer this long stops holding resources here (its entry was lost).
CLAIM_FORGET_S = 10.0
#: Task ids per `forget` operation (the leader forgets old tasks in entries of this size).
FORGET_BATCH = 5000


class Node:
    """One worker: a full Raft member that also runs tasks."""

    def __init__(self, cfg: Config, probe: resources.Probe | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self._home_lock: int | None = None  # fd of HOME/lock, held from start on
        self.paths = Paths(cfg.home)
        for sub in ("raft", "work", "outputs", "files", "store", "logs"):
            os.makedirs(os.path.join(cfg.home, sub), exist_ok=True)
        self.name = cfg.name or f"{socket.gethostname()}-{cfg.port}"
        self.advertise = cfg.advertise or membership.advertise_address(cfg.bind, cfg.peers)
        self.raft_addr = f"{self.advertise}:{cfg.raft_port}"
        self.rpc_addr = f"{self.advertise}:{cfg.port}"
        self.raft_local = self.raft_addr  # where this process reaches its own Raft port (start)
        self._saved_members: list[str] = []  # what raft/members.json holds (_save_members)
        self.probe = probe or resources.PsutilProbe(cfg.home)
        self.offer = resources.offered(self.probe, cfg.cores, cfg.memory, cfg.storage)
        self.local_tags = frozenset(cfg.tags) | frozenset(resources.automatic_tags())
        self.store = FileStore(os.path.join(cfg.home, "store"))
        self.files_dir = os.path.join(cfg.home, "files")
        self.consumer = ReplicatedQueue(on_applied=self._on_applied)
        self.lock = self.consumer.lock
        self.supervisor = Supervisor(RestartPolicy(), time.monotonic, self._escalate)
        self.note = ""  # why this node is not claiming, if it is not
        self.disk_note = ""  # set while $LEORONIC_HOME's disk is (nearly) full
        self._no_quorum_since: float | None = None
        self._registered = threading.Event()  # set once this life's join is applied
        # Until this replica has applied its own journal (up to the last index it held at
        # start) and the log up to its leader's commit index as first learned (pysyncobj's
        # onReady), a restarted node's copy is still replaying: see `caught_up`.
        self._ready = threading.Event()
        self._replay_to = 0
        self._caught_up = False
        self._next_readd = 0.0
        self._runners: dict[tuple[str, int], TaskSpec] = {}  # attempts the executor runs
        # Attempts taken away whose processes the executor is still stopping (SIGTERM, then
        # SIGKILL after --kill-grace): their resources stay taken until they are gone.
        self._stopping: dict[tuple[str, int], TaskSpec] = {}
        self._claimed_here: set[tuple[str, int]] = set()  # claims proposed in this life
        self.full_gc = collector.FullCollections()  # (a worker's process: see collector)
        self._claims_in_flight: dict[str, tuple[int, Resources, float]] = {}
        self._pending_finish: dict[tuple[str, int], tuple[Outcome, float]] = {}
        self._first_seen: dict[str, float] = {}
        self._starts: deque[float] = deque()  # when attempts started here in the last second
        self._run_s: float | None = None  # moving average of how long tasks ran here
        self._ahead_cap = 0  # at most this many claimed ahead (_ahead_room)
        self._quick_runs = 0  # tasks that ran in under QUICK_S since the last pass looked
        self._idle_since: float | None = None  # when the last runner here ended (none run)
        self._waiting_since: dict[tuple[str, int], float] = {}  # claimed, not started yet
        # Releases proposed, retried until applied: (monotonic when proposed, why).
        self._given_back: dict[tuple[str, int], tuple[float, str]] = {}
        # Releases proposed off the actor's thread (`_propose_releases`: attempts that could
        # not start here or whose runner crashed, on the executor's thread; a previous life's,
        # at registering), moved into `_given_back` by the next pass. Until a release is
        # applied the state still says the attempt runs here; `handled` keeps the passes from
        # starting it again meanwhile.
        self._new_releases: dict[tuple[str, int], tuple[float, str]] = {}
        self._waiting_n = 0  # claims waiting here to start, as of the last reconcile
        self._claims: list[tuple[tuple[str, int], TaskSpec]] = []  # this life's, in rank order
        self._waiting: list[tuple[tuple[str, int], TaskSpec]] = []  # of them, not started yet
        self._known_claims: tuple[Any, int] | None = None  # (queue, applied) _claims is of
        self._recheck_at = float("inf")  # when a claim waiting here is due to be given back
        self._planned_gen = -1  # applied_gen when claims were last planned
        self._avoid: dict[str, float] = {}  # task id -> until when this node does not claim it
        self._rewake = threading.Event()
        self._pass_queued = False  # a scheduling pass is queued and has not begun (wake)
        self._in_pass = False  # a pass runs (on the executor's thread)
        self._passes = False  # passes may be asked for: the executor runs
        self._unsent: list[Any] = []  # finishes waiting for the next pass's Raft entry
        self._unsent_lock = threading.Lock()
        self._file_locks: dict[str, threading.Lock] = {}  # sha -> lock: one fetch of a file
        self._verified: dict[str, tuple[int, int]] = {}  # sha -> (size, mtime_ns) last verified
        self._file_locks_guard = threading.Lock()
        self._hb_seen: dict[str, float] = {}
        self._leader_since: float | None = None
        self._judging_since: float | None = None  # leader with quorum since (monotonic)
        self.applied_cv = threading.Condition()  # notified after every applied entry
        self.applied_gen = 0  # entries applied so far (under applied_cv)
        self._stop = threading.Event()
        self.syncobj: Any = None
        self.executor: Executor | None = None
        self.proposer: Proposer | None = None
        self.server: Server | None = None
        self.beacon: discovery.Beacon | None = None
        self.service = Service(self)
        self.isolation = Isolation(self)
        self.relay = Relay(self)
        self.removal = Removal(lambda: self.syncobj, self._members, self.raft_addr,
                               lambda addr: membership.answers(addr, cfg.cookie), cfg.remove_after_s)
        self._merging = threading.Lock()

    # ----- life -----------------------------------------------------------------------------

    def start(self) -> None:
        """Join or form the cluster and start serving; returns once the node is registered."""
        self._home_lock = take_home(self.paths)
        # Both ports first, so a busy one is a one-line refusal at once (pysyncobj would only
        # log its bind failures, over and over); the server accepts once started below.
        self.server = Server(self.cfg.bind, self.cfg.port, self.cfg.cookie,
                             {**self.service.handlers(), **self.relay.handlers()},
                             packing.streams(self.paths, self.name, self.store),
                             self.service.uploads())
        # Probed where pysyncobj will listen: --advertise need not be an address of this box
        # (it was probed there, and refused as "--bind: ... not an address").
        everywhere = binds_everywhere(self.cfg.bind)
        raft_host = ("::" if ":" in self.advertise else "0.0.0.0") if everywhere \
            else self.cfg.bind  # as pysyncobj picks without a bindAddress
        check_port_free(raft_host, self.cfg.raft_port, "--port (Raft uses PORT+1)")
        self.raft_local = f"{'::1' if raft_host == '::' else '127.0.0.1'}:{self.cfg.raft_port}" \
            if everywhere else f"{raft_host}:{self.cfg.raft_port}"
        if self.cfg.advertise:
            membership.check_resolves(self.cfg.advertise, "--advertise")
        raft_dir = os.path.join(self.cfg.home, "raft")
        membership.check_cluster_mark(raft_dir, discovery.fingerprint(self.cfg.cookie))
        journal_check.check_journal(os.path.join(raft_dir, "journal"))
        journal_check.check_dump(os.path.join(raft_dir, "dump"))
        members_file = os.path.join(self.cfg.home, "raft", "members.json")
        peers = self.cfg.peers
        use_lan = self.cfg.discovery and discovery.enabled(self.cfg.bind)
        if not peers and use_lan and not membership.load_members(members_file):
            peers = tuple(a for a in discovery.discover(self.cfg.cookie, self.cfg.bind,
                                                        self.cfg.discovery_s) if a != self.rpc_addr)
            log.info("discovery: %s", f"found {', '.join(peers)}" if peers else
                     "no cluster on the LAN; forming a new one")
        others, joining = membership.initial_members(
            members_file, self.raft_addr, peers, self.cfg.cookie, self._stop
        )
        membership.check_protocol(list(peers) if joining else
                                  [membership.rpc_of_raft(m) for m in others], self.cfg.cookie)
        if joining:
            membership.check_name(list(peers), self.cfg.cookie, self.name, "worker", self.rpc_addr)
        log.info("node %s: rpc %s, raft %s, peers %s", self.name, self.rpc_addr, self.raft_addr,
                 others or "none (new cluster)")
        self.syncobj = make_syncobj(
            self.raft_addr,
            others,
            self.consumer,
            os.path.join(self.cfg.home, "raft"),
            self.cfg.cookie,
            on_state_changed=self._on_raft_state,
            on_ready=self._ready.set,
            sync=self.cfg.sync_journal,
            bind=None if everywhere else f"{raft_host}:{self.cfg.raft_port}",
        )
        self._replay_to = last_log_index(self.syncobj)
        self.proposer = Proposer(self.consumer)
        self.executor = Executor(self.name, self.paths, self._prepare, time.time,
                                 lambda: self.rpc_addr, self.cfg.kill_grace_s)
        self._passes = True
        self.server.start()
        if joining:
            membership.ask_to_be_added(peers, self.raft_addr, self.cfg.cookie, self._stop)
        # The ticker runs before registering: a node that left the membership (SIGTERM) or was
        # removed while away asks to be re-added from there.
        threading.Thread(target=self._ticker, name="ticker", daemon=True).start()
        if not self._register():
            return  # stopped (SIGTERM) while waiting for a quorum to register this node
        self._save_members()
        if use_lan:
            self.beacon = discovery.Beacon(self.name, "worker", self.advertise, self.cfg.port,
                                           self.cfg.bind, self.cfg.cookie)
            self.beacon.start()
        log.info("node %s is up", self.name)

    def stop(self, leave: bool = True) -> None:
        """Stop: kill running tasks, leave the cluster cleanly if asked, shut everything down."""
        self._stop.set()
        if self.beacon is not None:
            self.beacon.stop()
        if self.executor is not None:
            self.executor.stop()
        if leave and self.proposer is not None:
            try:
                self.proposer.propose_sync([("leave", self.name)], timeout=3.0)
                membership.remove_self(self._members(), self.raft_addr, self.consumer, self.cfg.cookie,
                                       self.raft_local)
            except ClusterError as exc:
                log.warning("could not leave cleanly: %s", exc)
        if self.server is not None:
            self.server.stop()
        if self.proposer is not None:
            self.proposer.stop()
        pykka.ActorRegistry.stop_all(block=True, timeout=5)
        if self.syncobj is not None:
            self.syncobj.destroy()

    def _register(self) -> bool:
        """Join the replicated state, retrying until a quorum commits it; False if stopped
        first."""
        info = NodeInfo(
            name=self.name,
            kind="worker",
            rpc=self.rpc_addr,
            raft=self.raft_addr,
            offered=self.offer,
            tags=self.local_tags,
            pid=os.getpid(),
            protocol=PROTOCOL,
        )
        while not self._stop.is_set():  # as long as it takes: the others may still be booting
            try:
                assert self.proposer is not None
                [reply] = self.proposer.propose_sync([("join", info)], timeout=5.0)
                if not reply.ok:  # the name is held elsewhere (until that node is lost)
                    log.warning("the cluster does not register this node yet: %s", reply.detail)
                    self._stop.wait(1.0)  # pacing: a lease has to run out first
                    continue
                self._release_stale()
                self._say_kept_tags()
                self._registered.set()
                self.wake()
                return True
            except ClusterError as exc:
                log.info("waiting for the cluster to register this node: %s", exc)
        return False

    def _say_kept_tags(self) -> None:
        """Log the tags the cluster keeps for this node that its options do not give (added
        with leoronic_add_tag, or given with --tag in an earlier life): they still draw tasks."""
        with self.consumer.lock:
            ns = self.consumer.queue.nodes.get(self.name)
            kept = sorted(ns.tags - set(self.local_tags)) if ns is not None else []
        if kept:
            log.info("tags kept from the cluster, not given by this start's options: %s "
                     "(leoronic_del_tag TAG --node %s drops one)", " ".join(kept), self.name)

    def interrupt(self) -> None:
        """Ask a `start` still waiting for a quorum to register this node to give up (signal
        handlers); `stop` then shuts down what was started."""
        self._stop.set()

    def _release_stale(self) -> None:
        """Tasks the state says run here but that this life never started: back to the queue."""
        with self.lock:
            stale = [(t.spec.task_id, t.attempt) for t in self.consumer.queue.running_on(self.name)]
        releases = [(key, "node restarted") for key in stale if key not in self._claimed_here]
        if releases:
            log.warning("releasing %d tasks of a previous life of this node", len(releases))
            self._propose_releases(releases)

    def caught_up(self) -> bool:
        """True once this replica's copy is no longer replaying the log it missed or held."""
        if not self._caught_up:
            self._caught_up = self._ready.is_set() and self.syncobj is not None \
                and self.syncobj.raftLastApplied >= self._replay_to
        return self._caught_up

    def _members(self) -> list[str]:
        if self.syncobj is None:
            return [self.raft_addr]
        return sorted({self.raft_addr} | {n.id for n in self.syncobj.otherNodes})

    def _save_members(self) -> None:
        """Write the Raft member list to raft/members.json, where a restart finds its peers,
        when it differs from what was last written: not every heartbeat, as each write is a
        new file made, synced and renamed over the old."""
        members = self._members()
        if members != self._saved_members:
            membership.save_members(os.path.join(self.cfg.home, "raft", "members.json"), members)
            self._saved_members = members

    # ----- raft callbacks (tick thread: never block) ----------------------------------------

    def _on_applied(self, ops: Any, replies: list[Reply]) -> None:
        now = time.monotonic()
        for op in ops:
            if op[0] == "heartbeat":
                self._hb_seen[op[1]] = now
            elif op[0] == "join":
                self._hb_seen[op[1].name] = now
        with self.applied_cv:
            self.applied_gen += 1
            self.applied_cv.notify_all()
        self.wake()

    def _on_raft_state(self, old: int, new: int) -> None:
        log.info("raft: %s -> %s", _ROLE.get(old, old), _ROLE.get(new, new))
        self._leader_since = time.monotonic() if new == _LEADER else None
        self._judging_since = None

    def is_leader(self) -> bool:
        return self._leader_since is not None

    # ----- reconcile and schedule (passes, on the executor's actor thread) -------------------

    def wake(self) -> None:
        """Ask for a reconcile-and-schedule pass (any thread). Wakes coalesce: while a pass is
        queued and has not begun, no other is queued (the pass clears the flag before it reads
        anything, so it sees what the wakes it absorbed were about). Passes run on the
        executor's actor thread, one at a time, between its starts and exits (until 2026-11-24
        on an actor of their own: two more hand-offs between threads per task).

        A wake on that thread itself (a task ended here) with nothing else waiting in its
        inbox runs the pass at once, not behind a message of its own (about 17 us of CPU a
        task in a busy node); with messages waiting (more exits) it is queued behind them,
        so one pass serves them all, and never inside a pass (a start that failed wakes)."""
        if self._passes and not self._pass_queued:
            self._pass_queued = True
            assert self.executor is not None
            if not self._in_pass and self.executor.here_and_idle():
                self._pass()
            else:
                self.executor.call_soon(self._pass)

    def _pass(self) -> None:
        """One pass: reconcile and schedule (against the shadow queue in isolated mode). An
        error is logged and counted by the supervisor, which may escalate; the next wake runs
        the next pass."""
        self._pass_queued = False  # before reading: a wake from now on queues a pass
        self._in_pass = True
        try:
            if self.isolation.active:
                self.isolation.step()
            else:
                self.reconcile()
                self.schedule()
        except Exception as exc:
            log.exception("reconcile/schedule pass failed")
            self.supervisor.child_failed("node actor", f"{type(exc).__name__}: {exc}")
        finally:
            self._in_pass = False

    def reconcile(self) -> None:
        """Start the claims the state gave us as their resources free up here (a task claimed
        ahead waits for a running one to end); cancel runners the state took away; give back
        claims that could not start within GIVE_BACK_S (a claim given back never starts here;
        the release is proposed again every RELEASE_RETRY_S until it is applied).

        The claims are read from the state only when it changed since the last pass, or when
        a claim is due to be given back: a pass after a task ended here, with nothing applied
        meanwhile, only starts the next of the claims it already knows, which is most passes
        of a busy node (reading and sorting its claims each time cost a lone node 0.13 ms per
        task). Such a pass also takes the claims still waiting from the pass before
        (`_waiting`) instead of sorting out again those it started, ended or gave back: between
        two reads of the state a claim stops waiting only by being started here (given back
        only as the state is read, released only with a read to follow), unless isolated
        mode runs some (then they are sorted out again)."""
        now = time.monotonic()
        queue = self.consumer.queue
        stamp = (queue, queue.applied)  # read before the state: a change after it comes again
        known = self._known_claims
        full = known is None or known[0] is not stamp[0] or known[1] != stamp[1] \
            or now >= self._recheck_at or bool(self._new_releases)
        if full:
            self._known_claims = stamp
            self._read_claims()
        if full or self.isolation.runners:
            waiting = [(key, spec) for key, spec in self._claims if not self.handled(key)]
        else:
            waiting = self._waiting
        mine = queue.nodes.get(self.name)
        draining = mine is not None and mine.draining
        start = [] if draining else self.fitting(waiting, self.busy())
        for key, spec in start:
            since = self._waiting_since.pop(key, None)
            if since is not None and now - since > QUICK_S:  # claimed ahead, waited long
                self._ahead_cap //= 2  # (see _ahead_room)
            self._start_runner(spec, key[1])
        self._waiting = waiting[len(start):]
        self._waiting_n = len(self._waiting)
        if full:
            self._give_back(self._waiting, now, "this node is draining" if draining else "")
            self._waiting = [(key, spec) for key, spec in self._waiting if not self.handled(key)]

    def _read_claims(self) -> None:
        """From the state: this life's claims on this node, higher priority first and then in
        submit order (`_claims`, the order they start in); and forget the runners, finishes
        and give-backs of attempts no longer assigned here."""
        with self.lock:
            queue = self.consumer.queue
            mine = {(t.spec.task_id, t.attempt): t.spec
                    for t in sorted(queue.running_on(self.name), key=rank)}
            finished = [k for k in list(self._pending_finish)  # the executor's thread adds
                        if k not in mine]
        for key in finished:
            self._pending_finish.pop(key, None)
        for key in list(self._runners):
            if key not in mine:
                self._stop_runner(key, "no longer assigned to this node")
        for table in (self._waiting_since, self._given_back):
            for key in list(table):
                if key not in mine:
                    del table[key]
        self._claims = [(key, spec) for key, spec in mine.items()
                        if key in self._claimed_here]  # a previous life's: see _release_stale

    def _give_back(self, waiting: list[tuple[tuple[str, int], TaskSpec]], now: float,
                   at_once: str = "") -> None:
        """Give back the `waiting` claims that have waited here GIVE_BACK_S (all of them now,
        for the reason `at_once` if given), take over the releases proposed off this thread
        (`_new_releases`), and propose again the releases unapplied for RELEASE_RETRY_S;
        `_recheck_at` is when the next is due."""
        for key, (since, why) in list(self._new_releases.items()):
            self._given_back[key] = (since, why)  # in one or the other throughout: handled()
            del self._new_releases[key]
            if why.startswith("cannot start: "):
                self._avoid[key[0]] = since + AVOID_S  # let other nodes try first
        why = at_once or f"not started here within {GIVE_BACK_S:.0f} s of being claimed"
        releases = [(key, why) for key, _ in waiting
                    if self._waiting_since.setdefault(key, now) <= now - GIVE_BACK_S or at_once]
        releases += [(key, old_why) for key, (since, old_why) in self._given_back.items()
                     if since <= now - RELEASE_RETRY_S]
        for key, reason in releases:
            self._waiting_since.pop(key, None)
            self._given_back[key] = (now, reason)
            if reason == why and not at_once:  # claimed ahead in vain: no more for now
                self._ahead_cap = 0
            self._avoid[key[0]] = max(self._avoid.get(key[0], 0.0), now + GIVE_BACK_S)
        if releases and self.proposer is not None:
            self.proposer.propose([("release", tid, self.name, attempt, reason, MAX_NODE_DEATHS)
                                   for (tid, attempt), reason in releases])
        self._recheck_at = min(
            [self._waiting_since[key] + GIVE_BACK_S for key, _ in waiting
             if key in self._waiting_since]
            + [since + RELEASE_RETRY_S for since, _ in self._given_back.values()],
            default=float("inf"))

    def handled(self, key: tuple[str, int]) -> bool:
        """True if this node must not start this attempt now: it runs it (or isolated mode's
        runner does), it ended here and the finish is not applied yet, or it was given back."""
        return (key in self._runners or key in self._pending_finish or key in self._given_back
                or key in self._new_releases or key in self.isolation.runners)

    def fitting(self, waiting: list[tuple[tuple[str, int], TaskSpec]],
                running: list[TaskSpec]) -> list[tuple[tuple[str, int], TaskSpec]]:
        """The first of the `waiting` claims (in `_claims` order) that fit here beside `running`;
        with nothing running, the first always starts (it fitted when it was claimed)."""
        free = resources.free(self.probe, self.offer, sum((s.needs for s in running), Resources()))
        start: list[tuple[tuple[str, int], TaskSpec]] = []
        for key, spec in waiting:
            if (running or start) and not spec.needs.fits_in(free):
                break
            free = free - spec.needs
            start.append((key, spec))
        return start

    def _start_runner(self, spec: TaskSpec, attempt: int) -> None:
        now = time.monotonic()
        self._forget_ahead_if_idle(now)
        self._idle_since = None
        self._runners[(spec.task_id, attempt)] = spec
        self._starts.append(now)
        self.start_runner(spec, attempt, self._report_finish, self._runner_crashed)

    def start_runner(self, spec: TaskSpec, attempt: int, report: Report, crashed: Crashed) -> None:
        """Run one attempt here, reporting to the given callbacks."""
        assert self.executor is not None
        self.executor.start(spec, attempt, report, crashed)

    def busy(self) -> list[TaskSpec]:
        """What takes this node's resources: the attempts it runs and those it is stopping."""
        return list(self._runners.values()) + list(self._stopping.values())

    def _stop_runner(self, key: tuple[str, int], why: str) -> None:
        """Stop an attempt taken away from this node; its resources stay taken until its
        process is gone (the executor says so, on its thread), then a pass starts what waits."""
        spec = self._runners.pop(key, None)
        if spec is None:  # it ended on the executor's thread since the caller looked
            return
        self._stopping[key] = spec

        def stopped() -> None:
            self._stopping.pop(key, None)
            self.wake()
        self.cancel_runner(key, why, stopped)

    def cancel_runner(self, key: tuple[str, int], why: str,
                      stopped: Callable[[], None] | None = None) -> None:
        """Stop an attempt started with `start_runner` (it reports nothing but `stopped()`)."""
        if self.executor is not None:
            self.executor.cancel(key, why, stopped)

    def schedule(self) -> None:
        """Propose finished results and claims for the queued tasks that fit here now.

        Planning is skipped while nothing was applied since the last plan and claims still
        wait here to start: the node is full and the queue it would plan from is the same, so
        a pass after a task ended here only starts the next waiting claim."""
        finishes = self._take_unsent()
        gen = self.applied_gen
        if gen == self._planned_gen and self._waiting_n > 0:
            claims: list[Claim] = []
        else:
            self._planned_gen = gen
            claims = self._plan_claims()
        ops = finishes + [("claim", c.task_id, self.name, c.attempt) for c in claims]
        if ops and self.proposer is not None:
            # No lingering for claims of resources free now, nor for finishes once nothing is
            # queued: no more work will ride along, and someone may be waiting for the end.
            urgent = any(not c.ahead for c in claims) or (
                bool(finishes) and self.consumer.queue.queued_count() == 0)
            self.proposer.propose(ops, self._claims_answered(claims) if claims else None,
                                  urgent=urgent)

    def _claims_answered(self, claims: list[Claim]) -> Callable[[list[Reply] | None, int], None]:
        """The callback of a proposal carrying `claims`: a claim refused, or whose entry was
        lost (a leader cut off or changed before it committed), stops holding its resources
        here at once, and the node plans again, rather than after CLAIM_FORGET_S."""
        keys = [(c.task_id, c.attempt) for c in claims]

        def answered(replies: list[Reply] | None, err: int) -> None:
            with self.lock:
                for tid, att in keys:
                    held = self._claims_in_flight.get(tid)
                    if held is not None and held[0] == att:
                        del self._claims_in_flight[tid]
            if replies is None:
                self.wake()  # nothing was applied to wake the node: plan again
        return answered

    def _plan_claims(self) -> list[Claim]:
        if self._stop.is_set() or self.note or self.disk_note or self.proposer is None:
            return []
        if not self._registered.is_set():
            return []  # not caught up with a previous life's claims yet
        now = time.monotonic()
        with self.lock:
            queue = self.consumer.queue
            for tid, (att, _, since) in list(self._claims_in_flight.items()):
                task = queue.get(tid)
                if task is None or task.state is not State.QUEUED or task.attempt >= att \
                        or now - since > CLAIM_FORGET_S:
                    del self._claims_in_flight[tid]
            if any(not queue.tasks[t].spec.concurrent for t in self._claims_in_flight
                   if t in queue.tasks):
                return []
            reserved = queue.reserved(self.name)
            for _, needs, _ in self._claims_in_flight.values():
                reserved = reserved + needs
            # Tasks that ended here but whose finish is not applied yet free their slot now, so
            # the next claim can ride in the same Raft entry as the finish.
            freeing = Resources()
            for tid, att in list(self._pending_finish):
                task = queue.get(tid)
                if task is not None and task.state is State.RUNNING and task.attempt == att:
                    freeing = freeing + task.spec.needs
            free = resources.free(self.probe, self.offer, reserved - freeing)
            local = LocalFacts(tags=self.local_tags, has_file=self._has_file)
            self._avoid = {t: until for t, until in self._avoid.items() if until > now}
            claims, deferred = plan(queue, self.name, free, local, self._waited,
                                    claiming=self._claims_in_flight, avoid=self._avoid,
                                    freeing=freeing)
            left = free
            for c in claims:
                left = left - queue.tasks[c.task_id].spec.needs
            room, want = self._ahead_room(now)
            if left.cores <= 0 and room > 0 and room >= want // 4:  # top up in chunks
                claims += plan_ahead(queue, self.name, room, local,
                                     claiming=set(self._claims_in_flight) | {c.task_id for c in claims},
                                     avoid=self._avoid)
            for c in claims:
                self._claims_in_flight[c.task_id] = (c.attempt, queue.tasks[c.task_id].spec.needs, now)
                self._claimed_here.add((c.task_id, c.attempt))
        if deferred and self._passes and not self._rewake.is_set():
            self._rewake.set()  # one timer at a time: look again when deferred tasks fall due
            threading.Timer(0.1, self._wake_again).start()
        return claims

    def _ahead_room(self, now: float) -> tuple[int, int]:
        """(room, want): this node wants claimed ahead what it starts in `claim_ahead_s`;
        room is that less the claims waiting here (as the last reconcile found them, given
        back ones included) or in flight. The start rate is the last second's, or (sooner
        known, while tasks run) the running tasks over their average run time here. Long
        tasks start rarely, so they are never claimed ahead; short ones start back to back.

        Both rates come from the tasks before, which may not be like the next ones (a batch
        of 1 s tasks after one of 3 ms tasks was claimed ahead dozens at a time, then given
        back a second later, each with an attempt spent), so claims ahead are also capped, as
        TCP's slow start caps what is in flight: none after IDLE_S without a task running
        (`_start_runner`) or a claim given back unstarted; each task that ran here in under
        QUICK_S doubles the cap (at least to the node's cores), and each one claimed ahead
        that waited longer halves it."""
        self._forget_ahead_if_idle(now)
        quick, self._quick_runs = self._quick_runs, 0  # (counted on the executor's thread)
        if quick:
            self._ahead_cap = min(AHEAD_MAX, max(int(self.offer.cores), self._ahead_cap) << min(quick, 8))
        while self._starts and self._starts[0] < now - 1.0:
            self._starts.popleft()
        rate = float(len(self._starts))
        if self._run_s is not None and self._runners:
            rate = max(rate, len(self._runners) / max(self._run_s, 0.001))
        want = min(AHEAD_MAX, self._ahead_cap, int(rate * self.cfg.claim_ahead_s))
        if want <= 0:
            return 0, 0
        waiting = self._waiting_n + len(self._given_back)
        return want - waiting - len(self._claims_in_flight), want

    def _forget_ahead_if_idle(self, now: float) -> None:
        """After IDLE_S with no task running here, claim none ahead until some run quickly."""
        idle = self._idle_since
        if not self._runners and idle is not None and now - idle > IDLE_S:
            self._ahead_cap = self._quick_runs = 0

    def _wake_again(self) -> None:
        self._rewake.clear()
        self.wake()

    def _waited(self, task_id: str) -> float:
        now = time.monotonic()
        return now - self._first_seen.setdefault(task_id, now)

    def _has_file(self, name: str) -> bool:
        path = os.path.normpath(os.path.join(self.files_dir, name))
        return path.startswith(self.files_dir + os.sep) and os.path.exists(path)

    # ----- runner callbacks -------------------------------------------------------------------

    def _prepare(self, spec: TaskSpec, workdir: str) -> str:
        """Fetch and place the necessary files; return the command to run."""
        if not spec.files:
            return spec.command
        refs = [FileRefT(name, sha, size) for name, sha, size in spec.files]
        for ref in refs:
            with self._file_lock(ref.sha256):  # tasks starting together fetch a file once
                if not self._good_copy(ref.sha256):
                    self.service.fetch_file(ref.sha256)
        mapping = place_files(self.store, workdir, refs, rename=spec.rename)
        return rewrite_command(spec.command, mapping) if spec.rename else spec.command

    def _good_copy(self, sha: str) -> bool:
        """True if the store holds an intact copy. The hash is re-checked whenever the file's
        size or mtime changed since it was last verified (a corrupted copy is dropped)."""
        try:
            st = os.stat(self.store.path(sha))
        except FileNotFoundError:
            return False
        stamp = (st.st_size, st.st_mtime_ns)
        if self._verified.get(sha) == stamp:
            return True
        if not self.store.verify(sha):
            return False
        self._verified[sha] = stamp
        return True

    def _file_lock(self, sha: str) -> threading.Lock:
        with self._file_locks_guard:
            return self._file_locks.setdefault(sha, threading.Lock())

    def _report_finish(self, task_id: str, attempt: int, outcome: Outcome) -> None:
        """A runner ended: the finish is proposed by the next scheduling pass, in the same Raft
        entry as the claim that reuses the freed slot."""
        self._pending_finish[(task_id, attempt)] = (outcome, time.monotonic())
        took = max(0.0, outcome.end - outcome.start)
        self._run_s = took if self._run_s is None else 0.8 * self._run_s + 0.2 * took
        if took < QUICK_S:
            self._quick_runs += 1  # (read and reset by _ahead_room)
        self._runners.pop((task_id, attempt), None)
        if not self._runners:
            self._idle_since = time.monotonic()
        with self._unsent_lock:
            self._unsent.append(("finish", task_id, self.name, attempt, outcome))
        self.wake()

    def _take_unsent(self) -> list[Any]:
        with self._unsent_lock:
            ops, self._unsent = self._unsent, []
        return ops

    def _runner_crashed(self, task_id: str, attempt: int, reason: str) -> None:
        """The executor's thread: an attempt could not start or its runner crashed. Its release
        is proposed now (and again by the passes until applied); it must not start again here
        meanwhile, so it is in `_new_releases` before it leaves `_runners`."""
        if reason.startswith("cannot start: "):
            log.warning("task %s attempt %d %s", task_id, attempt, reason)
        else:
            self.supervisor.child_failed(f"task {task_id} attempt {attempt}", reason)
        self._propose_releases([((task_id, attempt), reason[:200])])
        self._runners.pop((task_id, attempt), None)

    def _propose_releases(self, releases: list[tuple[tuple[str, int], str]]) -> None:
        """Any thread: propose these releases ((task id, attempt), why) now; the passes propose
        them again until applied (`_give_back`) and do not start them meanwhile (`handled`)."""
        now = time.monotonic()
        for key, why in releases:
            self._new_releases[key] = (now, why)
        assert self.proposer is not None
        self.proposer.propose([("release", tid, self.name, attempt, why, MAX_NODE_DEATHS)
                               for (tid, attempt), why in releases])
        self.wake()

    def _escalate(self, why: str) -> None:
        self.note = f"not claiming: executor keeps crashing ({why})"

    # ----- ticker: heartbeats, leases, retries ------------------------------------------------

    def collect_garbage(self, now: float) -> tuple[list[str], list[str]]:
        """Remove unreferenced stored files and expired work dirs/outputs; return what went.

        A stored file goes when no queued or running task refers to it and it is older than
        `file_gc_s`. A task's work dirs and outputs go when the task was deleted, finished more
        than `retention_s` ago, or is unknown (its record was forgotten) once this node has
        caught up with the log.
        """
        # Files first, the queue after: a task that has files when they are listed had its
        # claim applied here before, so it counts as known below (unless it was forgotten).
        found = task_files(self.paths)
        with self.lock:  # copy under the lock, scan outside it (a final state never changes)
            tasks = list(self.consumer.queue.tasks.values())
            registered = self._registered.is_set()
        keep = {f[1] for t in tasks if not t.state.final for f in t.spec.files}
        expired = {t.spec.task_id for t in tasks
                   if t.state is State.DELETED or (t.state.final and t.attempts
                   and (t.attempts[-1].end or now) < now - self.cfg.retention_s)}
        known = {t.spec.task_id for t in tasks} if registered else None
        running = {k[0] for k in list(self._runners) + list(self._stopping)}

        def gone(task_id: str) -> bool:
            return task_id not in running and (
                task_id in expired or (known is not None and task_id not in known))

        files = self.store.gc(keep, self.cfg.file_gc_s, now)
        dirs = []
        for task_id, items in found.items():
            if gone(task_id):
                remove_task_files(items)
                dirs += [os.path.basename(p) for p in items if os.path.dirname(p) == self.paths.work]
        if files or dirs:
            log.info("garbage: removed %d stored files and %d work dirs", len(files), len(dirs))
        return files, dirs

    def prune_bookkeeping(self) -> None:
        """Drop what this node remembers per task once the task no longer needs it, so a node
        that runs millions of tasks keeps its memory flat: the claims this life made, for
        tasks now final, gone, or past that attempt; when it first saw tasks no longer queued."""
        with self.lock:
            tasks = self.consumer.queue.tasks
            self._claimed_here = {
                (tid, att) for tid, att in self._claimed_here
                if (t := tasks.get(tid)) is not None and not t.state.final and t.attempt <= att}
            self._first_seen = {tid: at for tid, at in self._first_seen.items()
                                if (t := tasks.get(tid)) is not None and t.state is State.QUEUED}

    def _ticker(self) -> None:
        next_hb = 0.0
        next_gc = next_forget = time.monotonic() + self.cfg.gc_every_s
        while not self._stop.wait(0.25):
            now = time.monotonic()
            try:
                if now >= next_hb:
                    next_hb = now + self.cfg.heartbeat_s
                    self._heartbeat()
                    self._save_members()
                self._retry_finishes(now)
                if now >= next_gc:
                    next_gc = now + self.cfg.gc_every_s
                    self.collect_garbage(time.time())
                    self.prune_bookkeeping()
                    with self.lock:
                        records = len(self.consumer.queue.tasks)
                    self.full_gc.maybe(records, idle=not self._runners and not self._stopping)
                if self.is_leader():
                    self._expire_silent_nodes(now)
                    self._remove_long_lost(time.time())
                    if now >= next_forget:
                        next_forget = now + self.cfg.gc_every_s
                        self._forget_old(time.time())
                self._watch_quorum(now)
                self.wake()
            except Exception:
                log.exception("ticker step failed")

    def _forget_old(self, wall_now: float) -> None:
        """Leader: propose forgetting the tasks that finished more than `forget_after_s` ago,
        so the queue every node holds stays bounded over weeks of work."""
        with self.lock:  # copy under the lock, scan outside it: a million records take a while
            tasks, needed = list(self.consumer.queue.tasks.values()), self.consumer.queue.needed()
        old = forgettable_in(tasks, needed, wall_now - self.cfg.forget_after_s)
        assert self.proposer is not None
        for start in range(0, len(old), FORGET_BATCH):
            self.proposer.propose([("forget", old[start:start + FORGET_BATCH])])

    def _heartbeat(self) -> None:
        if not self._registered.is_set():
            return  # the name may be another node's until registering succeeds (Queue.join)
        with self.lock:
            reserved = self.consumer.queue.reserved(self.name)
        free = resources.free(self.probe, self.offer, reserved)
        self._drop_clairvoyant_tag()
        # A journal that could not be written (raftmend) is a full disk too, of another kind.
        self.disk_note = membership.disk_note(self.cfg.home) or raftmend.journal_fault()
        if self.disk_note:
            log.warning("%s", self.disk_note)
        note = self.note or self.disk_note
        assert self.proposer is not None
        self.proposer.propose([("heartbeat", self.name, free, note)])

    def _drop_clairvoyant_tag(self) -> None:
        """The clairvoyant tag is carried only while this worker has live ghosts."""
        with self.lock:
            q = self.consumer.queue
            me = q.nodes.get(self.name)
            has_ghosts = any(ns.alive and ns.info.clairvoyant == self.name
                             for ns in q.nodes.values() if ns.info.kind == "ghost")
        if me is not None and CLAIRVOYANT in me.tags and not has_ghosts:
            assert self.proposer is not None
            self.proposer.propose([("del_tag", self.name, CLAIRVOYANT)])

    def _retry_finishes(self, now: float) -> None:
        for key, (outcome, since) in list(self._pending_finish.items()):
            if now - since > 3.0:
                self._pending_finish[key] = (outcome, now)
                assert self.proposer is not None
                self.proposer.propose([("finish", key[0], self.name, key[1], outcome)])

    def _expire_silent_nodes(self, now: float) -> None:
        """Leader: declare lost the nodes whose last heartbeat is older than the lease.

        Heartbeats are judged by when this node saw them applied (its monotonic clock) and by
        the replicated `last_seen` (the proposer's wall clock; boxes' clocks need only agree
        within a few seconds, NTP). While nothing could commit (an election, a lost quorum) no
        heartbeat could either, so after leading with a quorum again every node gets two
        heartbeat periods to be heard before it is judged: a dead node is declared lost at
        the latest `max(its last heartbeat + lease, judging start + 2 heartbeats)`.
        """
        wall = time.time()
        with self.lock:
            alive = [(n, ns.last_seen) for n, ns in self.consumer.queue.nodes.items() if ns.alive]
        if self.syncobj is None or not self.syncobj.hasQuorum:
            self._judging_since = None
            return  # a leader cut off from the others must not judge them
        if self._judging_since is None:
            self._judging_since = now
        grace_from = self._judging_since - self.cfg.lease_s + 2 * self.cfg.heartbeat_s
        for name, last_seen in alive:
            if name == self.name:
                continue
            replicated_age = wall - last_seen
            local_age = now - max(self._hb_seen.get(name, grace_from), grace_from)
            if min(replicated_age, local_age) > self.cfg.lease_s:
                log.warning("node %s silent for over %.0f s: declaring it lost", name, self.cfg.lease_s)
                assert self.proposer is not None
                self.proposer.propose([("expire_node", name, last_seen, MAX_NODE_DEATHS)])
                self._hb_seen[name] = now  # do not repeat before the next lease

    def _remove_long_lost(self, wall_now: float) -> None:
        """Leader: drop workers lost for over `remove_after_s` from the Raft membership, so the
        rest keep a majority as boxes die one after another (see comrade.removal)."""
        with self.lock:
            lost = {ns.info.raft: ns.info.rpc for ns in self.consumer.queue.nodes.values()
                    if ns.info.kind == "worker" and not ns.alive and ns.lost_since is not None
                    and wall_now - ns.lost_since > self.cfg.remove_after_s}
        self.removal.step(lost, self._leader_since, time.monotonic())

    def _watch_quorum(self, now: float) -> None:
        """Without quorum for a while, ask the others to (re-)add us: we may have been removed
        while we were away."""
        if self.syncobj is None:
            return
        if self.syncobj.hasQuorum and self.syncobj._getLeader() is not None:
            self._no_quorum_since = None
            if self.isolation.active:
                self.isolation.leave()
            if os.path.exists(self.isolation.path) and os.path.getsize(self.isolation.path) \
                    and self._merging.acquire(blocking=False):
                threading.Thread(target=self._merge_isolated, daemon=True).start()
            return
        if self._no_quorum_since is None:
            self._no_quorum_since = now
            return
        if (now - self._no_quorum_since > self.cfg.isolation_s and self.cfg.on_isolation == "run"
                and not self.isolation.active):
            self.isolation.enter(time.time())
        if now - self._no_quorum_since > 3.0 and now >= self._next_readd:
            self._next_readd = now + 2.0
            threading.Thread(target=self._ask_readd, daemon=True).start()

    def _merge_isolated(self) -> None:
        try:
            self.isolation.merge(lambda ops: self.service._propose(ops, deadline_s=10))
        finally:
            self._merging.release()

    def _ask_readd(self) -> None:
        with self.lock:
            addrs = [ns.info.rpc for n, ns in self.consumer.queue.nodes.items()
                     if n != self.name and ns.info.kind == "worker"]
        addrs += [p for p in self.cfg.peers if p not in addrs]
        for addr in addrs:
            try:
                rpc.call(addr, self.cfg.cookie, "add_member", self.raft_addr, PROTOCOL, timeout=2.0)
                log.debug("asked %s to re-add this node to the Raft membership", addr)
                return
            except LeoronicError as exc:
                log.debug("re-add via %s failed: %s", addr, exc)

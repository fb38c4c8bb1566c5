"""The leader's removal of long-lost workers from the Raft membership.

A worker lost for `--remove-after` seconds leaves the membership, so the rest keep a majority
as boxes die one after another; when it returns it asks to be added back (`Node._watch_quorum`).
Removing one that is already back would undo its return and start an add/remove loop: a
re-added worker talks Raft with the leader only once a connection opens (pysyncobj leaves
opening it to whichever address sorts higher, on a retry timer), and its heartbeat cannot
commit before. So a lost worker is spared while

- it was (re-)added less than `--remove-after` seconds ago, as seen by this leader: a new
  leader judges from when it took over, not from a stale earlier term;
- it talks Raft with the leader (catching up, its heartbeat not yet applied);
- its RPC port answers a ping: the process is back and rejoining. A worker that answers but
  still cannot talk Raft after REJOIN_PATIENCE_S (its Raft port blocked, say) is removed all
  the same, so a half-dead box cannot hold the majority hostage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: How long a lost worker that answers pings but cannot talk Raft is spared (seconds).
REJOIN_PATIENCE_S = 60.0
#: Pause between two pings of a lost worker that answered (seconds).
PING_EVERY_S = 2.0


class Removal:
    """Run by the leader's ticker (`step`); the ping and the removal run on a helper thread,
    one at a time, so a dead box's ping timeout never stalls the ticker."""

    def __init__(self, syncobj: Callable[[], Any], members: Callable[[], list[str]],
                 self_raft: str, answers: Callable[[str], bool], remove_after_s: float) -> None:
        """`answers(rpc_address)`: whether a worker's RPC port answers a ping (may block for
        up to a second or so)."""
        self._syncobj = syncobj
        self._members = members
        self._self_raft = self_raft
        self._answers = answers
        self._remove_after_s = remove_after_s
        self._stint: float | None = None  # the leadership `_since` was recorded in
        self._since: dict[str, float] = {}  # raft address -> first seen a member (this stint)
        self._answering: dict[str, float] = {}  # raft address -> first answered a ping
        self._next_ping: dict[str, float] = {}  # raft address -> not before (monotonic)
        self._busy = threading.Lock()

    def step(self, lost: dict[str, str], leader_since: float | None, now: float) -> None:
        """`lost`: raft address -> RPC address of every worker lost for over --remove-after."""
        if leader_since != self._stint:
            self._stint, self._since = leader_since, {}
        members = set(self._members())
        for raft in members:
            self._since.setdefault(raft, now)
        for raft in [r for r in self._since if r not in members]:
            del self._since[raft]
        if self._busy.locked():
            return  # a ping or a removal is under way (only this thread takes the lock)
        for book in (self._answering, self._next_ping):
            for raft in [r for r in book if r not in lost]:
                del book[raft]
        if not lost:
            return
        syncobj = self._syncobj()
        connected = {n.id for n in syncobj.otherNodes if syncobj.isNodeConnected(n)}
        for raft, rpc_addr in sorted(lost.items()):
            if raft not in members or raft == self._self_raft or raft in connected:
                continue  # gone already, or it talks Raft with us: re-added and catching up
            if now - self._since.get(raft, now) < self._remove_after_s:
                continue  # (re-)added recently: give it time to catch up and heartbeat
            if now < self._next_ping.get(raft, 0.0):
                continue
            self._busy.acquire()
            threading.Thread(target=self._judge, args=(raft, rpc_addr), name="removal",
                             daemon=True).start()
            return  # one membership change at a time

    def _judge(self, raft: str, rpc_addr: str) -> None:
        try:
            if self._answers(rpc_addr):
                now = time.monotonic()
                first = self._answering.setdefault(raft, now)
                if now - first < REJOIN_PATIENCE_S:
                    if first == now:
                        log.info("not removing %s from the Raft membership: lost, but it answers "
                                 "(rejoining)", raft)
                    self._next_ping[raft] = now + PING_EVERY_S
                    return
            log.warning("removing %s from the Raft membership: lost for over %.0f s",
                        raft, self._remove_after_s)
            self._syncobj().removeNodeFromCluster(raft)
        except Exception:
            log.exception("removing %s failed", raft)
        finally:
            self._busy.release()

"""Joining and leaving the Raft membership, the member list on disk, the node's address.

pysyncobj's dynamic membership: a new node starts its SyncObj with the current members as its
peers, then asks a member to add it (`addNodeToCluster`, forwarded to the leader). The member
list is saved to `$LEORONIC_HOME/raft/members.json` so a restarted node rejoins the same
cluster without `--peer`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from pysyncobj.utility import TcpUtility, UtilityException

from comrade import (
    raftmend,  # noqa: F401 - undoes what importing pysyncobj did to socket
    rpc,
)
from comrade.config import binds_everywhere, split_address
from comrade.errors import EXIT_AUTH, EXIT_USAGE, AuthError, ClusterError, LeoronicError, UsageError
from comrade.queue import PROTOCOL, name_taken

log = logging.getLogger(__name__)

#: Below this much free disk in $LEORONIC_HOME a node stops claiming (bytes).
MIN_FREE_DISK = 64 * 1024 * 1024


def check_resolves(host: str, option: str) -> None:
    """UsageError naming `option` unless `host` is an address or a name that resolves."""
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) else "not a host name"
        raise UsageError(f"{option}: {host!r} is not a known address ({why})") from None


def advertise_address(bind: str, peers: Sequence[str]) -> str:
    """The address other boxes reach this one at.

    A specific bind address is used as is. Otherwise: the local address of the route to the
    first peer (a UDP socket `connect` sends no packet), else the host name's address, else
    127.0.0.1.
    """
    if not binds_everywhere(bind):
        return bind
    for peer in peers:
        host, port = split_address(peer, "--peer")
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((host, port))
                return str(s.getsockname()[0])
        except OSError:
            continue
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def load_members(path: str) -> list[str]:
    """The saved Raft member list ([] if none)."""
    try:
        with open(path) as f:
            data = json.load(f)
        return [str(m) for m in data["members"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError) as exc:
        raise ClusterError(
            f"{path}: unreadable member list ({exc}); delete it to rejoin with --peer"
        ) from None


def save_members(path: str, members: Sequence[str]) -> None:
    """Atomically write the member list (safe from several threads: a unique temp file each)."""
    write_atomically(path, json.dumps({"members": sorted(members)}))


def write_atomically(path: str, text: str) -> None:
    """Replace the file at `path` with `text`, synced: a SIGKILL or power cut leaves the old
    file or the whole new one (a unique temp file each, so safe from several threads)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk, say: no temp file left behind
        raise


def check_cluster_mark(raft_dir: str, mark: str) -> None:
    """A home's replicated state belongs to the cluster whose cookie made it: `raft/cluster`
    holds that cookie's fingerprint (`mark`; public, as mDNS beacons carry it). UsageError if
    it is another cluster's, since this node would rejoin that cluster's members and, cut off
    from them, could run that queue's unfinished tasks; else the mark is written (a new home,
    or one from before the mark)."""
    path = os.path.join(raft_dir, "cluster")
    try:
        with open(path) as f:
            saved = f.read().strip()
    except FileNotFoundError:
        saved = ""
    if saved == mark:
        return
    if saved:
        raise UsageError(
            f"--home: {os.path.dirname(raft_dir)} holds the replicated state of another cluster "
            "(made with another cookie): start it with that cluster's cookie, or with a fresh "
            f"--home; if this cluster's cookie was changed on purpose, delete {path}")
    os.makedirs(raft_dir, exist_ok=True)
    write_atomically(path, mark + "\n")


def initial_members(
    path: str, self_raft: str, peers: Sequence[str], cookie: str,
    stop: threading.Event | None = None,
) -> tuple[list[str], bool]:
    """The Raft peers to start with, and whether this node must ask to be added.

    A node with a saved member list restarts into that cluster. A new node with --peer asks a
    peer for the current members and must then be added. A new node without peers forms a
    one-node cluster. Asking the peers gives up when `stop` is set.
    """
    saved = load_members(path)
    if saved:
        return [m for m in saved if m != self_raft], False
    if not peers:
        return [], False
    members = _ask_peers(peers, cookie, "members", stop=stop)
    return [m for m in members if m != self_raft], True


#: Seconds a joining worker keeps asking its peers (they may still be starting).
ASK_PEERS_S = 30.0


def _ask_peers(peers: Sequence[str], cookie: str, method: str, *args: Any,
               stop: threading.Event | None = None) -> Any:
    """The first answer of a peer to `method`; ClusterError after ASK_PEERS_S without one,
    or at once when `stop` is set (SIGTERM while joining)."""
    stop = stop or threading.Event()
    last: Exception | None = None
    deadline = time.monotonic() + ASK_PEERS_S
    while time.monotonic() < deadline and not stop.is_set():
        for peer in peers:
            try:
                return rpc.call(peer, cookie, method, *args)
            except LeoronicError as exc:
                if exc.exit_code in (EXIT_AUTH, EXIT_USAGE):  # waiting will not mend these
                    raise
                last = exc
        stop.wait(0.5)  # retry pacing while peers start up
    if stop.is_set():
        raise ClusterError(f"stopped before a peer answered {method}")
    raise ClusterError(f"no peer answered {method} in {ASK_PEERS_S:.0f} s: {last}")


def protocol_mismatch(theirs: int, ours: int, who: str, where: str) -> str:
    """The one-line refusal when two workers run different state machine versions."""
    return (f"protocol: {who} runs version {theirs} of the replicated state, {where} "
            f"{ours}: stop every worker and upgrade them together (README: Upgrading)")


def _first_answer(contacts: Sequence[str], cookie: str, method: str,
                  timeout_s: float) -> tuple[str, Any] | None:
    """(address, answer to `method`) of the first of `contacts` that answers within
    `timeout_s` in all, or None if none does (AuthError is raised: no other node will take
    the cookie)."""
    deadline = time.monotonic() + timeout_s
    for addr in contacts:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            return addr, rpc.call(addr, cookie, method, timeout=left)
        except AuthError:
            raise
        except LeoronicError:
            continue
    return None


def check_protocol(contacts: Sequence[str], cookie: str, timeout_s: float = 3.0) -> None:
    """Before joining or rejoining a cluster: ask the first of `contacts` (RPC addresses) that
    answers within `timeout_s` in all which state machine version it runs, and raise
    UsageError if it is not ours. If none answers (the whole cluster is down, say for an
    upgrade), go on."""
    first = _first_answer(contacts, cookie, "ping", timeout_s)
    if first is None:
        return
    addr, answer = first
    theirs = answer.get("protocol", 0)
    if theirs != PROTOCOL:
        raise UsageError(protocol_mismatch(theirs, PROTOCOL, f"the cluster at {addr}", "this node"))


def check_name(contacts: Sequence[str], cookie: str, name: str, kind: str, rpc_addr: str,
               timeout_s: float = 3.0) -> None:
    """Before a new node joins: ask the first of `contacts` that answers within `timeout_s`
    which nodes there are, and raise UsageError if one that is up holds `name` at another
    address or is of the other kind (the cluster would refuse to register this node:
    `Queue.join`). If none answers, go on: registering refuses it then."""
    first = _first_answer(contacts, cookie, "nodes", timeout_s)
    for n in first[1]["nodes"] if first is not None else ():
        if n["name"] == name and n["alive"] and (n["kind"], n["rpc"]) != (kind, rpc_addr):
            raise UsageError(name_taken(name, n["kind"], n["rpc"], kind))


def rpc_of_raft(raft_addr: str) -> str:
    """A worker's RPC address from its Raft address (Raft uses the RPC port + 1)."""
    host, port = raft_addr.rsplit(":", 1)
    return f"{host}:{int(port) - 1}"


def answers(rpc_addr: str, cookie: str, timeout_s: float = 1.0) -> bool:
    """Whether the worker at `rpc_addr` answers a ping within `timeout_s`."""
    try:
        rpc.call(rpc_addr, cookie, "ping", timeout=timeout_s)
        return True
    except LeoronicError:
        return False


def ask_to_be_added(peers: Sequence[str], self_raft: str, cookie: str,
                    stop: threading.Event | None = None) -> None:
    """Ask the cluster (through any peer) to add us to the Raft membership."""
    _ask_peers(peers, cookie, "add_member", self_raft, PROTOCOL, stop=stop)
    log.info("added to the cluster as %s", self_raft)


#: Seconds a stopping leader tries to hand leadership over before it leaves.
HAND_OVER_S = 5.0


def hand_over_leadership(syncobj: Any, raft_local: str, cookie: str,
                         timeout_s: float = HAND_OVER_S) -> bool:
    """If this node leads, make another member the leader (Raft's TimeoutNow, to the most
    caught-up follower); True once this node does not lead (at once if it did not), False if
    it still leads after `timeout_s`.

    pysyncobj never removes its own leader: the leader refuses the change (REQUEST_DENIED, its
    error 6) whoever asks, so a leader that leaves must first stop leading. The transfer goes
    through pysyncobj's admin command on our own Raft port (at `raft_local`), so it runs on
    pysyncobj's thread (its transport is not safe to send on from another); a follower not
    caught up yet is refused, so it is asked again until one is."""
    deadline = time.monotonic() + timeout_s
    asked = 0.0
    while syncobj._isLeader():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if time.monotonic() - asked >= 0.5:
            if not asked:
                log.info("leaving: handing the Raft leadership over first")
            asked = time.monotonic()
            try:  # answers "SUCCESS TRANSFER " once sent, "FAIL ..." if no follower caught up
                TcpUtility(cookie, timeout=min(left, 1.0)).executeCommand(raft_local, ["transfer", ""])
            except (UtilityException, OSError):
                pass  # asked again on the next round, until the deadline
        time.sleep(0.05)  # pacing: the follower's election takes a tick or two
    return True


def remove_self(members: Sequence[str], self_raft: str, consumer: Any, cookie: str,
                raft_local: str = "") -> None:
    """On a clean stop, ask another member to remove us from the Raft membership (a leader
    first hands leadership over, through its Raft port at `raft_local`, default `self_raft`:
    the leader cannot be removed)."""
    others = [m for m in members if m != self_raft]
    if not others:
        return
    syncobj = consumer._syncObj
    if not hand_over_leadership(syncobj, raft_local or self_raft, cookie):
        log.warning("still the Raft leader after %.0f s: leaving without being removed from the "
                    "membership (the others remove this node after --remove-after)", HAND_OVER_S)
        return
    rpcs = []
    with consumer.lock:
        for ns in consumer.queue.nodes.values():
            if ns.info.raft in others and ns.alive:
                rpcs.append(ns.info.rpc)
    for addr in rpcs:
        try:
            rpc.call(addr, cookie, "remove_member", self_raft, timeout=3.0)
            log.info("removed from the Raft membership by %s", addr)
            return
        except LeoronicError as exc:
            log.warning("member %s could not remove us: %s", addr, exc)
    del syncobj


def disk_note(home: str) -> str:
    """'' if the home's disk has room, else why this node stops claiming."""
    try:
        free = shutil.disk_usage(home).free
    except OSError as exc:
        return f"not claiming: cannot read disk usage of {home}: {exc}"
    if free < MIN_FREE_DISK:
        return f"not claiming: disk full ({free} bytes free in {home}, need {MIN_FREE_DISK})"
    return ""

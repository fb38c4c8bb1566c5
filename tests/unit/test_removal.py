"""The leader's removal of long-lost workers: who is removed, who is spared, and why."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from comrade import removal
from comrade.removal import Removal

ME, N2, N3 = "10.0.0.1:9001", "10.0.0.2:9001", "10.0.0.3:9001"
LOST = {N3: "10.0.0.3:9000"}


@dataclass(frozen=True)
class _Peer:
    id: str


@dataclass
class FakeRaft:
    members: set[str] = field(default_factory=lambda: {ME, N2, N3})
    connected: set[str] = field(default_factory=set)
    removed: list[str] = field(default_factory=list)

    @property
    def otherNodes(self) -> set[_Peer]:  # noqa: N802 (pysyncobj's name)
        return {_Peer(m) for m in self.members - {ME}}

    def isNodeConnected(self, node: _Peer) -> bool:  # noqa: N802
        return node.id in self.connected

    def removeNodeFromCluster(self, raft: str) -> None:  # noqa: N802
        self.removed.append(raft)
        self.members.discard(raft)


def make(raft: FakeRaft, answers: bool = False, remove_after_s: float = 6.0) -> tuple[Removal, list[str]]:
    pinged: list[str] = []

    def answer(addr: str) -> bool:
        pinged.append(addr)
        return answers
    return Removal(lambda: raft, lambda: sorted(raft.members), ME, answer, remove_after_s), pinged


def settle(r: Removal) -> None:
    """Wait (with a deadline) until the helper thread of the last step is done."""
    deadline = time.monotonic() + 5
    while r._busy.locked():
        assert time.monotonic() < deadline, "removal thread still busy"
        time.sleep(0.005)  # poll interval, bounded by the deadline above


def test_a_dead_worker_is_removed_once_it_was_a_member_for_remove_after() -> None:
    raft = FakeRaft()
    r, pinged = make(raft)
    r.step(LOST, leader_since=100.0, now=100.0)  # first sight: a member "since now"
    settle(r)
    assert raft.removed == []
    r.step(LOST, leader_since=100.0, now=106.5)
    settle(r)
    assert pinged == [LOST[N3]]
    assert raft.removed == [N3]


def test_a_worker_that_talks_raft_with_the_leader_is_not_removed() -> None:
    raft = FakeRaft(connected={N3})
    r, pinged = make(raft)
    r.step(LOST, leader_since=0.0, now=0.0)
    r.step(LOST, leader_since=0.0, now=100.0)
    settle(r)
    assert raft.removed == [] and pinged == []


def test_a_worker_that_answers_pings_is_spared_until_the_patience_runs_out(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    raft = FakeRaft()
    r, pinged = make(raft, answers=True)
    r.step(LOST, leader_since=0.0, now=0.0)
    r.step(LOST, leader_since=0.0, now=10.0)
    settle(r)
    assert raft.removed == [] and pinged == [LOST[N3]]
    r.step(LOST, leader_since=0.0, now=10.1)  # the next ping waits PING_EVERY_S
    settle(r)
    assert pinged == [LOST[N3]]
    monkeypatch.setattr(removal, "REJOIN_PATIENCE_S", 0.0)
    r._next_ping.clear()
    r.step(LOST, leader_since=0.0, now=20.0)
    settle(r)
    assert raft.removed == [N3]


def test_a_new_leader_judges_membership_from_when_it_took_over() -> None:
    raft = FakeRaft()
    r, _ = make(raft)
    r.step({}, leader_since=0.0, now=0.0)  # an earlier term led by this node
    r.step(LOST, leader_since=50.0, now=50.0)  # leads again: n3 may have been re-added meanwhile
    r.step(LOST, leader_since=50.0, now=55.0)
    settle(r)
    assert raft.removed == []
    r.step(LOST, leader_since=50.0, now=56.5)
    settle(r)
    assert raft.removed == [N3]


def test_nothing_is_removed_that_is_not_lost_or_not_a_member_or_this_node() -> None:
    raft = FakeRaft(members={ME, N2})
    r, pinged = make(raft)
    lost: dict[str, Any] = {N3: "10.0.0.3:9000", ME: "10.0.0.1:9000"}
    r.step(lost, leader_since=0.0, now=0.0)
    r.step(lost, leader_since=0.0, now=100.0)
    r.step({}, leader_since=0.0, now=200.0)
    settle(r)
    assert raft.removed == [] and pinged == []


@pytest.mark.parametrize("answers", [False, True])
def test_one_judgement_at_a_time(answers: bool) -> None:
    raft = FakeRaft(members={ME, N2, N3, "10.0.0.4:9001"})
    gate = threading.Event()
    seen: list[str] = []

    def slow(addr: str) -> bool:
        seen.append(addr)
        gate.wait(5)
        return answers
    r = Removal(lambda: raft, lambda: sorted(raft.members), ME, slow, 6.0)
    lost = {N3: "10.0.0.3:9000", "10.0.0.4:9001": "10.0.0.4:9000"}
    r.step(lost, leader_since=0.0, now=0.0)
    r.step(lost, leader_since=0.0, now=10.0)
    r.step(lost, leader_since=0.0, now=10.5)  # busy: no second ping
    gate.set()
    settle(r)
    assert len(seen) == 1
    assert raft.removed == ([] if answers else [N3])

"""Workers of different state machine versions never run together: a node asks its cluster's
version before joining or restarting into it."""

from __future__ import annotations

from typing import Any

import pytest

from comrade import membership
from comrade.errors import AuthError, ClusterError, UsageError
from comrade.queue import PROTOCOL


def answers(replies: dict[str, Any], asked: list[str]) -> Any:
    def call(addr: str, cookie: str, method: str, *args: Any, timeout: float = 0) -> Any:
        assert method == "ping" and timeout > 0
        asked.append(addr)
        reply = replies[addr]
        if isinstance(reply, Exception):
            raise reply
        return reply
    return call


def test_the_first_node_that_answers_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(membership.rpc, "call", answers({
        "h:1": ClusterError("refused"), "h:2": {"protocol": PROTOCOL}, "h:3": {"protocol": 0}}, asked))
    membership.check_protocol(["h:1", "h:2", "h:3"], "c")
    assert asked == ["h:1", "h:2"]


def test_an_older_cluster_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(membership.rpc, "call", answers({"h:1": {"name": "old"}}, []))  # no version
    with pytest.raises(UsageError) as err:
        membership.check_protocol(["h:1"], "c")
    assert str(err.value) == (
        f"protocol: the cluster at h:1 runs version 0 of the replicated state, this node "
        f"{PROTOCOL}: stop every worker and upgrade them together (README: Upgrading)")


def test_nobody_answering_is_no_reason_to_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(membership.rpc, "call", answers({"h:1": ClusterError("down")}, []))
    membership.check_protocol(["h:1"], "c")
    membership.check_protocol([], "c")


def test_a_wrong_cookie_is_not_waited_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(membership.rpc, "call", answers({"h:1": AuthError("authentication failed")}, []))
    with pytest.raises(AuthError):
        membership.check_protocol(["h:1", "h:2"], "c")


def test_rpc_address_of_a_raft_member() -> None:
    assert membership.rpc_of_raft("10.0.0.5:7342") == "10.0.0.5:7341"
    assert membership.rpc_of_raft("[::1]:7342") == "[::1]:7341"


class _Raft:
    """A SyncObj that leads until `transfer` was asked `leads_for` times."""

    def __init__(self, leads_for: int) -> None:
        self.leads_for = leads_for

    def _isLeader(self) -> bool:  # noqa: N802 - pysyncobj's name
        return self.leads_for > 0


def test_a_leaving_leader_hands_leadership_over_and_a_follower_does_not_ask(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, list[str]]] = []
    raft = _Raft(0)

    class Utility:
        def __init__(self, password: str, timeout: float) -> None:
            assert password == "c" and 0 < timeout <= 1.0

        def executeCommand(self, node: str, command: list[str]) -> str:  # noqa: N802
            asked.append((node, command))
            raft.leads_for -= 1
            return "SUCCESS TRANSFER "
    monkeypatch.setattr(membership, "TcpUtility", Utility)
    assert membership.hand_over_leadership(raft, "127.0.0.1:2", "c")
    assert asked == []  # not the leader: nothing to hand over
    raft.leads_for = 2  # the first transfer is refused (no follower caught up yet)
    assert membership.hand_over_leadership(raft, "127.0.0.1:2", "c", timeout_s=5)
    assert asked == [("127.0.0.1:2", ["transfer", ""])] * 2
    raft.leads_for = 100
    assert not membership.hand_over_leadership(raft, "127.0.0.1:2", "c", timeout_s=0.3)

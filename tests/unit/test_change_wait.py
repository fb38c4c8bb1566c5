"""How long a change waits for a quorum on the worker it reached: as long as the client waits
(its LEORONIC_RETRY_S, sent with the change), within CHANGE_WAIT_MIN_S..SUBMIT_DEADLINE_S.
A client that gives up after 1 s was kept 20 s before, whatever it had asked for."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from comrade import service as service_module
from comrade.errors import ClusterError
from comrade.model import TaskSpec
from comrade.service import CHANGE_WAIT_MIN_S, SUBMIT_DEADLINE_S, Service, change_wait


@pytest.mark.parametrize(("asked", "waits"), [
    (1.0, CHANGE_WAIT_MIN_S),  # a commit takes milliseconds: never less than the minimum
    (0, CHANGE_WAIT_MIN_S),
    (7.5, 7.5),
    (600, SUBMIT_DEADLINE_S),  # the client retries itself after that, with the same ids
    (None, SUBMIT_DEADLINE_S),  # a client that does not say
    ("7", SUBMIT_DEADLINE_S),  # nor anything that is not seconds
    (float("nan"), SUBMIT_DEADLINE_S),
    (True, SUBMIT_DEADLINE_S),
])
def test_change_wait_is_the_clients_within_bounds(asked: Any, waits: float) -> None:
    assert change_wait(asked) == waits


class NoQuorum:
    """A proposer whose every entry times out: each try moves a fake clock by its timeout."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.timeouts: list[float] = []

    def propose_sync(self, ops: list[Any], timeout: float) -> list[Any]:
        self.timeouts.append(timeout)
        self.clock[0] += timeout
        raise ClusterError("no quorum: no answer in time")


def no_quorum_service(monkeypatch: pytest.MonkeyPatch) -> tuple[Service, NoQuorum, list[float]]:
    clock = [1000.0]
    monkeypatch.setattr(service_module.time, "monotonic", lambda: clock[0])
    proposer = NoQuorum(clock)
    node = SimpleNamespace(proposer=proposer, isolation=SimpleNamespace(since=None), name="n1")
    return Service(node), proposer, clock  # type: ignore[arg-type]


@pytest.mark.parametrize(("wait_s", "bound"), [(3.0, 3.0), (1.0, CHANGE_WAIT_MIN_S),
                                               (None, SUBMIT_DEADLINE_S)])
def test_a_change_without_quorum_answers_once_the_clients_wait_is_over(
        monkeypatch: pytest.MonkeyPatch, wait_s: float | None, bound: float) -> None:
    svc, proposer, clock = no_quorum_service(monkeypatch)
    with pytest.raises(ClusterError, match="may still be made once a majority is back"):
        svc.delete(["t1", "t2"], wait_s)
    waited = clock[0] - 1000.0
    # Each try is cut to what is left of the wait (but given at least 0.1 s).
    assert bound <= waited <= bound + 0.1, (waited, proposer.timeouts)
    assert max(proposer.timeouts) <= 6.0


def test_a_submit_without_quorum_is_bounded_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    svc, proposer, clock = no_quorum_service(monkeypatch)
    monkeypatch.setattr(Service, "_read", lambda self, fn, stale_ok=False: None)
    monkeypatch.setattr(service_module, "_unrunnable", lambda spec, biggest: "")
    spec = TaskSpec("t1", 1, 1, 1, True, "", (), "true")
    with pytest.raises(ClusterError, match="no quorum"):
        svc.submit([spec], 2.5)
    assert 2.5 <= clock[0] - 1000.0 <= 2.6, proposer.timeouts


# ----- a client talking to a worker of the version before -------------------------------------


def test_a_worker_whose_changes_take_no_wait_is_asked_again_without_it() -> None:
    """A worker one version older has `delete(ids)`: the wait is refused with a TypeError
    before anything is done, and the client asks again without it (a mixed cluster, mid
    upgrade, answered every change 'submit() takes 2 positional arguments')."""
    from comrade import rpc
    from comrade.client import Client
    from comrade.errors import RemoteError
    from tests.unit.test_rpc_upload import COOKIE, free_port

    deleted: list[list[str]] = []

    def old_delete(ids: list[str]) -> list[tuple[str, bool, str]]:
        deleted.append(ids)
        return [(i, True, "") for i in ids]

    def broken(ids: list[str], wait_s: float) -> None:
        raise TypeError("something else went wrong")

    handlers: dict[str, Any] = {"delete": old_delete, "hold": broken,
                                "nodes": lambda: {"nodes": []}}
    port = free_port()
    srv = rpc.Server("127.0.0.1", port, COOKIE, handlers, {}, {})
    srv.start()
    try:
        client = Client(f"127.0.0.1:{port}", COOKIE)
        assert client.change("delete", ["t1", "t2"]) == [("t1", True, ""), ("t2", True, "")]
        assert deleted == [["t1", "t2"]]  # done once, by the second request
        with pytest.raises(RemoteError, match="something else went wrong"):
            client.change("hold", ["t1"])  # any other TypeError is the node's answer
        client.close()
    finally:
        srv.stop()

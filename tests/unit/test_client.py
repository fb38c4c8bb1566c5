"""`Client.submit`: every spec is checked before anything is queued, then the specs go in
order, a small first batch (so the cluster starts while the rest is sent) and full ones after.
`Client.full_output`: the tail in the record, else the node's file, else a warning that says
which copy is left."""

from __future__ import annotations

from typing import Any

import pytest

from comrade.client import Client
from comrade.errors import UsageError
from comrade.model import Outcome, State, Task, TaskSpec


class Recording(Client):
    def __init__(self, problems: list[tuple[int, str]] | None = None) -> None:
        super().__init__("127.0.0.1:1", "cookie")
        self.problems = problems or []
        self.calls: list[tuple[str, list[str]]] = []

    def call(self, method: str, *args: Any, retry_s: float = 0) -> Any:
        specs = args[0]
        self.calls.append((method, [s.task_id for s in specs]))
        if method == "check":
            return self.problems
        assert method == "submit"
        return [(s.task_id, True, "") for s in specs]


def specs(n: int) -> list[TaskSpec]:
    return [TaskSpec(f"t{i}", 1024, 1, 1024, True, "", (), "true") for i in range(n)]


def test_small_first_batch_then_full_ones_in_order() -> None:
    client = Recording()
    ids = client.submit(specs(2100), batch=1000, first=50)
    assert ids == [f"t{i}" for i in range(2100)]
    assert [(m, len(c)) for m, c in client.calls] == [
        ("check", 2100), ("submit", 50), ("submit", 1000), ("submit", 1000), ("submit", 50)]
    assert [t for m, c in client.calls[1:] for t in c] == ids


def test_few_tasks_go_in_one_batch() -> None:
    client = Recording()
    assert client.submit(specs(3)) == ["t0", "t1", "t2"]
    assert [(m, len(c)) for m, c in client.calls] == [("check", 3), ("submit", 3)]


def test_a_refused_spec_queues_nothing_and_names_its_line() -> None:
    client = Recording(problems=[(1, "CORES: more than any node offers")])
    with pytest.raises(UsageError, match=r"^line 2: CORES: more than any node offers$"):
        client.submit(specs(3), labels=["line 1: ", "line 2: ", "line 3: "])
    assert [m for m, _ in client.calls] == ["check"]


class NodeGone(Client):
    def __init__(self) -> None:
        super().__init__("127.0.0.1:1", "cookie")

    def call(self, method: str, *args: Any, retry_s: float = 0) -> Any:
        assert method == "nodes"
        return {"nodes": []}  # the node that ran the task has left the cluster


def finished(outcome: Outcome) -> Task:
    return Task(spec=specs(1)[0], seq=1, submitted=0.0, state=State.DONE, attempt=1, node="n2",
                outcome=outcome)


def test_small_output_comes_from_the_record_alone() -> None:
    task = finished(Outcome(0, 1.0, 2.0, stdout_tail=b"hello\n", stdout_bytes=6))
    assert NodeGone().full_output(task, "out") == (b"hello\n", "")


def test_node_gone_shows_the_kept_tail() -> None:
    task = finished(Outcome(0, 1.0, 2.0, stdout_tail=b"end\n", stdout_bytes=100_000))
    assert NodeGone().full_output(task, "out") == (
        b"end\n", "node n2 is unknown; showing the last 4 bytes")


def test_node_gone_and_tail_dropped_says_neither_copy_is_left() -> None:
    task = finished(Outcome(0, 1.0, 2.0, stdout_bytes=100_000, tails_dropped=True))
    data, warning = NodeGone().full_output(task, "out")
    assert data == b""
    assert warning == ("node n2 is unknown; the queue no longer keeps its last 64 KiB either "
                       "(it keeps 64 MiB of the newest tails)")

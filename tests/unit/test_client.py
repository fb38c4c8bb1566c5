"""`Client.submit`: every spec is checked before anything is queued, then the specs go in
order, a small first batch (so the cluster starts while the rest is sent) and growing ones after.
`Client.write_output`: the tail in the record, else the node's file in parts, else a warning
that says which copy is left."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comrade import packing, rpc
from comrade.client import Client
from comrade.errors import ClusterError, RemoteError, UsageError
from comrade.executor import Paths
from comrade.files import FileStore
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


def test_small_first_batch_then_growing_ones_in_order() -> None:
    client = Recording()
    ids = client.submit(specs(3100), batch=1000, first=50)
    assert ids == [f"t{i}" for i in range(3100)]
    assert [(m, len(c)) for m, c in client.calls] == [
        ("check", 3100), ("submit", 50), ("submit", 200), ("submit", 800), ("submit", 1000),
        ("submit", 1000), ("submit", 50)]
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



class QuorumLost(Recording):
    """Answers `answered` submits, then loses its quorum: the outcome of the rest is unknown."""

    def __init__(self, error: Exception, answered: int = 1) -> None:
        super().__init__()
        self.error = error
        self.answered = answered

    def call(self, method: str, *args: Any, retry_s: float = 0) -> Any:
        if method == "submit" and len(self.calls) == 1 + self.answered:
            raise self.error
        return super().call(method, *args, retry_s=retry_s)


def test_a_submit_cut_off_by_a_lost_quorum_names_the_ids_that_may_be_queued() -> None:
    with pytest.raises(ClusterError) as err:
        QuorumLost(ClusterError("no quorum: no answer in time")).submit(specs(120), first=50)
    assert str(err.value) == (
        "no quorum: no answer in time; 50 tasks were queued, and 70 tasks, t50 to t119, may "
        "still be queued once the cluster has a quorum again: submit them again with the same "
        "ids to be sure (a no-op for those that were)")
    with pytest.raises(ClusterError, match=r"; 0 tasks were queued, and task t0 may still be"):
        QuorumLost(ClusterError("x"), answered=0).submit(specs(1))
    with pytest.raises(UsageError, match="^bad$"):  # not about the outcome: as it was
        QuorumLost(UsageError("bad")).submit(specs(120), first=50)
    refused = RemoteError("NotChanged", "no quorum: node n1 is isolated; nothing was changed")
    with pytest.raises(RemoteError, match="nothing was changed$"):  # a known outcome
        QuorumLost(refused).submit(specs(120), first=50)

class NodeGone(Client):
    def __init__(self) -> None:
        super().__init__("127.0.0.1:1", "cookie")

    def call(self, method: str, *args: Any, retry_s: float = 0) -> Any:
        assert method == "nodes"
        return {"nodes": []}  # the node that ran the task has left the cluster


def finished(outcome: Outcome) -> Task:
    return Task(spec=specs(1)[0], seq=1, submitted=0.0, state=State.DONE, attempt=1, node="n2",
                outcome=outcome)


def output(client: Client, task: Task, stream: str = "out") -> tuple[bytes, str]:
    """(what `write_output` wrote, its warning)."""
    parts: list[bytes] = []
    warning = client.write_output(task, stream, parts.append)
    return b"".join(parts), warning


def test_small_output_comes_from_the_record_alone() -> None:
    task = finished(Outcome(0, 1.0, 2.0, stdout_tail=b"hello\n", stdout_bytes=6))
    assert output(NodeGone(), task) == (b"hello\n", "")


def test_node_gone_shows_the_kept_tail() -> None:
    task = finished(Outcome(0, 1.0, 2.0, stdout_tail=b"end\n", stdout_bytes=100_000))
    assert output(NodeGone(), task) == (b"end\n", "node n2 is unknown; showing the last 4 bytes")


def test_node_gone_and_tail_dropped_says_neither_copy_is_left() -> None:
    task = finished(Outcome(0, 1.0, 2.0, stdout_bytes=100_000, tails_dropped=True))
    data, warning = output(NodeGone(), task)
    assert data == b""
    assert warning == ("node n2 is unknown; the queue no longer keeps its last 64 KiB either "
                       "(it keeps 64 MiB of the newest tails)")


class NodeAt(Client):
    """The node that ran the task listens at `address` (a real rpc.Server)."""

    def __init__(self, address: str) -> None:
        super().__init__("127.0.0.1:1", COOKIE)
        self.node_address = address

    def call(self, method: str, *args: Any, retry_s: float = 0) -> Any:
        assert method == "nodes"
        return {"nodes": [{"name": "n2", "rpc": self.node_address}]}


COOKIE = "test-cookie-0123456789"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[str, Paths]]:
    """A real RPC server on 127.0.0.1 serving `packing.streams` of a home under tmp_path, and
    one request that sends two parts and then fails."""
    paths = Paths(str(tmp_path / "home"))
    os.makedirs(paths.outputs)

    def breaks(send: Any) -> int:
        send(b"first part\n")
        send(b"second part\n")
        raise OSError("disk gone")

    store = FileStore(os.path.join(paths.home, "store"))
    server = rpc.Server("127.0.0.1", free_port(), COOKIE, {},
                        {**packing.streams(paths, "n2", store), "breaks": breaks})
    server.start()
    try:
        yield f"127.0.0.1:{server._listener.address[1]}", paths
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_output_comes_from_the_node_in_parts(node: tuple[str, Paths]) -> None:
    address, paths = node
    data = os.urandom(3 * packing.PART_BYTES + 12345)
    with open(paths.output("t0", 1, "out"), "wb") as f:
        f.write(data)
    task = finished(Outcome(0, 1.0, 2.0, stdout_tail=data[-100:], stdout_bytes=len(data)))
    parts: list[bytes] = []
    assert NodeAt(address).write_output(task, "out", parts.append) == ""
    assert b"".join(parts) == data
    assert [len(p) for p in parts] == [packing.PART_BYTES] * 3 + [12345]  # never whole


def test_output_collected_on_the_node_falls_back_to_the_tail(node: tuple[str, Paths]) -> None:
    address, _ = node
    task = finished(Outcome(0, 1.0, 2.0, stdout_tail=b"end\n", stdout_bytes=100_000))
    data, warning = output(NodeAt(address), task)
    assert data == b"end\n"
    assert warning == ("node n2 cannot give it (no out output of task 't0' attempt 1 here); "
                       "showing the last 4 bytes"), warning


def test_a_stream_that_fails_midway_delivers_its_parts_then_the_error(node: tuple[str, Paths]) -> None:
    address, _ = node
    parts: list[bytes] = []
    with rpc.connect(address, COOKIE) as conn:
        with pytest.raises(RemoteError, match="disk gone"):
            conn.call("breaks", sink=parts.append)
        assert parts == [b"first part\n", b"second part\n"]
        with pytest.raises(ClusterError, match="streamed an answer"):
            conn.call("breaks")  # parts with nowhere to go: refused, not mistaken for a reply


def test_work_dirs_come_packed_in_parts_and_unpack_whole(node: tuple[str, Paths],
                                                          tmp_path: Path) -> None:
    address, paths = node
    wd = Path(paths.workdir("t0", 1))
    (wd / "sub").mkdir(parents=True)
    data = os.urandom(2 * packing.PART_BYTES + 7)  # random: gzip cannot shrink it to one part
    (wd / "sub" / "big.bin").write_bytes(data)
    (wd / "note.txt").write_text("hello\n")
    Path(paths.workdir("other", 1)).mkdir()  # another task's: not sent
    sizes: list[int] = []

    def fetch(sink: Any) -> object:
        def counted(part: bytes) -> None:
            sizes.append(len(part))
            sink(part)
        return NodeAt(address).stream_from(address, "pack_parts", "task", "t0", sink=counted)

    dest = tmp_path / "dest"
    packing.receive_pack(fetch, str(dest))
    assert len(sizes) >= 2 and max(sizes) <= packing.PART_BYTES, sizes
    assert sorted(p.name for p in dest.iterdir()) == ["t0-a1"]  # the spool is gone too
    assert (dest / "t0-a1" / "sub" / "big.bin").read_bytes() == data
    assert (dest / "t0-a1" / "note.txt").read_text() == "hello\n"


def test_a_pack_from_an_unreachable_node_leaves_no_dest(tmp_path: Path) -> None:
    dest = tmp_path / "n3"

    def fetch(sink: Any) -> object:
        return NodeAt("127.0.0.1:1").stream_from("127.0.0.1:1", "pack_parts", "work",
                                                 sink=sink, connect_s=0)

    with pytest.raises(ClusterError, match="cannot reach node"):
        packing.receive_pack(fetch, str(dest))
    assert not dest.exists()


def test_a_running_task_shows_what_it_has_written_so_far(node: tuple[str, Paths]) -> None:
    address, paths = node
    with open(paths.output("t0", 1, "err"), "wb") as f:
        f.write(b"so far\n")
    task = Task(spec=specs(1)[0], seq=1, submitted=0.0, state=State.RUNNING, attempt=1, node="n2")
    assert output(NodeAt(address), task, "err") == (b"so far\n", "")
    assert output(NodeAt(address), task, "out") == (
        b"", "node n2: cannot give it (no out output of task 't0' attempt 1 here)")


def test_a_necessary_file_comes_in_parts_into_the_store(node: tuple[str, Paths],
                                                        tmp_path: Path) -> None:
    address, paths = node
    theirs = FileStore(os.path.join(paths.home, "store"))  # the node's store
    data = os.urandom(2 * packing.PART_BYTES + 5)
    sha = theirs.put_bytes(data)
    mine = FileStore(str(tmp_path / "mine"))
    assert packing.receive_file(mine, address, COOKIE, sha)
    with open(mine.path(sha), "rb") as f:
        assert f.read() == data
    lacking = "0" * 64
    assert not packing.receive_file(mine, address, COOKIE, lacking)
    assert not mine.has(lacking)
    # A corrupt copy on the node: refused by its hash, nothing stored, no temp file left.
    os.chmod(theirs.path(sha), 0o644)
    with open(theirs.path(sha), "r+b") as f:
        f.write(b"X")
    other = FileStore(str(tmp_path / "other"))
    with pytest.raises(ValueError, match="content hash is"):
        packing.receive_file(other, address, COOKIE, sha)
    assert not other.has(sha) and os.listdir(tmp_path / "other" / "tmp") == []


class _NoQuorumYet:
    """A connection whose node answers 'no quorum' (as a worker not caught up does) `times`
    times, then answers."""

    def __init__(self, kind: str, times: int) -> None:
        self.kind, self.times = kind, times
        self.calls = 0

    def call(self, method: str, *args: Any, parts: Any = None) -> Any:
        if method == "nodes":
            return {"nodes": []}
        self.calls += 1
        if self.calls <= self.times:
            raise RemoteError(self.kind, "no quorum: not caught up", 3)
        return "answer"

    def close(self) -> None:
        pass


@pytest.mark.parametrize("kind", ["ClusterError", "NotChanged"])
def test_a_node_without_quorum_is_asked_again_within_the_retry_time(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = _NoQuorumYet(kind, times=2)
    monkeypatch.setattr(rpc, "connect", lambda address, cookie, **kw: conn)
    assert Client("127.0.0.1:1", "cookie").call("queue", retry_s=5) == "answer"
    assert conn.calls == 3
    conn = _NoQuorumYet(kind, times=99)
    with pytest.raises(RemoteError, match="^no quorum: not caught up$"):  # then as it was
        Client("127.0.0.1:1", "cookie").call("queue", retry_s=0)
    assert conn.calls == 1
    conn = _NoQuorumYet("UsageError", times=1)
    with pytest.raises(RemoteError):  # bad input is not tried again
        Client("127.0.0.1:1", "cookie").call("queue", retry_s=5)
    assert conn.calls == 1

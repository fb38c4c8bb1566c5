"""Streamed requests (uploads) over a real rpc.Server on 127.0.0.1, and Client.upload into a
node's store through Service.file_upload."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from comrade import rpc
from comrade.client import Client
from comrade.errors import ClusterError, RemoteError, UsageError
from comrade.files import FileError, FileStore, read_files_field
from comrade.service import Service

COOKIE = "test-cookie-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Recorder:
    """Upload handlers that record what reached them."""

    def __init__(self) -> None:
        self.received: list[list[bytes]] = []
        self.ended = threading.Event()  # set when a handler's iteration ended, however

    def collect(self, parts: Iterable[bytes], label: str) -> tuple[str, int]:
        got = []
        try:
            for part in parts:
                got.append(part)
        finally:
            self.received.append(got)
            self.ended.set()
        return label, sum(map(len, got))

    def fails_after_one(self, parts: Iterable[bytes]) -> None:
        for _ in parts:
            raise OSError("disk full")


@pytest.fixture
def server() -> Iterator[tuple[str, Recorder]]:
    rec = Recorder()
    srv = rpc.Server("127.0.0.1", free_port(), COOKIE, {"ping": lambda: "pong"}, {},
                     {"collect": rec.collect, "fails": rec.fails_after_one})
    srv.start()
    try:
        yield f"127.0.0.1:{srv._listener.address[1]}", rec
    finally:
        srv.stop()


def test_parts_reach_the_handler_in_order_in_pieces_no_larger_than_a_part(
        server: tuple[str, Recorder]) -> None:
    address, rec = server
    big = os.urandom(2 * rpc.PART_BYTES + 10)
    with rpc.connect(address, COOKIE) as conn:
        assert conn.call("collect", "x", parts=[b"a", big, b"", b"z"]) == ("x", len(big) + 2)
        assert conn.call("ping") == "pong"  # the same connection goes on
    [got] = rec.received
    assert b"".join(got) == b"a" + big + b"z"
    assert [len(p) for p in got] == [1, rpc.PART_BYTES, rpc.PART_BYTES, 10, 1]


def test_a_handler_failing_midway_answers_its_error_and_the_connection_goes_on(
        server: tuple[str, Recorder]) -> None:
    address, _ = server
    with rpc.connect(address, COOKIE) as conn:
        with pytest.raises(RemoteError, match="fails: disk full"):
            conn.call("fails", parts=[b"one", b"two", b"three"])  # the rest is read and dropped
        assert conn.call("ping") == "pong"
        with pytest.raises(RemoteError, match="unknown upload 'nothing'") as exc:
            conn.call("nothing", parts=[b"one", b"two"])
        assert exc.value.exit_code == 2
        assert conn.call("collect", "after", parts=[b"ok"]) == ("after", 2)


def test_a_source_that_cannot_be_read_is_a_usage_error_and_nothing_is_stored(
        server: tuple[str, Recorder]) -> None:
    address, rec = server

    def source() -> Iterator[bytes]:
        yield b"first"
        raise OSError(5, "Input/output error")

    conn = rpc.connect(address, COOKIE)
    with pytest.raises(UsageError, match="collect: could not read what to send: Input/output error"):
        conn.call("collect", "y", parts=source())
    assert rec.ended.wait(5)
    assert rec.received == [[b"first"]]  # the handler saw the upload break off, and returned nothing
    with pytest.raises(ClusterError):
        conn.call("ping")  # that connection was closed, being out of step
    assert rpc.call(address, COOKIE, "ping") == "pong"  # the server goes on


def test_an_upload_sending_something_else_is_dropped(server: tuple[str, Recorder]) -> None:
    address, rec = server
    conn = rpc.connect(address, COOKIE)
    raw = conn._conn
    raw.send(("collect", ("z",), "parts"))
    raw.send(("part", b"fine"))
    raw.send(("ping", ()))  # a request in the middle of an upload: out of step
    with pytest.raises(EOFError):
        raw.recv()
    assert rec.received == [[b"fine"]]
    conn.close()


# ----- Client.upload into a store -------------------------------------------------------------


class LoneService(Service):
    """A node with no other worker to copy files to."""

    def _other_workers(self) -> list[str]:
        return []


def empty_soon(path: str) -> list[str]:
    """What is left in `path` once it is empty, or after 5 s (the server drops an upload that
    broke off when it reads the break)."""
    deadline = time.monotonic() + 5
    while os.listdir(path) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling interval
    return os.listdir(path)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[str, FileStore]]:
    """A real server answering file_missing and file_upload from a Service over a store."""
    store = FileStore(str(tmp_path / "store"))
    service = LoneService(SimpleNamespace(store=store))  # type: ignore[arg-type]
    handlers: dict[str, Any] = {"file_missing": service.file_missing,
                                "nodes": lambda: {"nodes": []}}
    srv = rpc.Server("127.0.0.1", free_port(), COOKIE, handlers, {}, service.uploads())
    srv.start()
    try:
        yield f"127.0.0.1:{srv._listener.address[1]}", store
    finally:
        srv.stop()


def local(tmp_path: Path, name: str, data: bytes) -> Any:
    (tmp_path / name).write_bytes(data)
    [f] = read_files_field(name, 2**40, cwd=str(tmp_path))
    return f


def test_upload_stores_the_file_from_its_parts(node: tuple[str, FileStore], tmp_path: Path) -> None:
    address, store = node
    data = os.urandom(3 * rpc.PART_BYTES + 77)
    f = local(tmp_path, "big.bin", data)
    Client(address, COOKIE).upload([f])
    digest = hashlib.sha256(data).hexdigest()
    assert f.ref.sha256 == digest and store.has(digest)
    with open(store.path(digest), "rb") as fh:
        assert fh.read() == data
    assert os.listdir(store._tmpdir) == []


@pytest.mark.parametrize("change", ["same size", "shorter", "longer"])
def test_a_file_changed_after_it_was_hashed_is_refused_by_name_and_not_stored(
        node: tuple[str, FileStore], tmp_path: Path, change: str,
        caplog: pytest.LogCaptureFixture) -> None:
    address, store = node
    data = os.urandom(rpc.PART_BYTES + 5)
    f = local(tmp_path, "data.bin", data)
    changed = {"same size": bytes(len(data)), "shorter": data[:-1], "longer": data + b"!"}[change]
    (tmp_path / "data.bin").write_bytes(changed)
    with pytest.raises(FileError, match=r"^necessary file 'data.bin': changed while it was being sent"):
        Client(address, COOKIE).upload([f])
    assert empty_soon(store._tmpdir) == []

    def refusals() -> list[Any]:  # the node's log: one line, which a file that shrank (the
        # client breaks the upload off) has the server write after it dropped the part file
        return [r for r in caplog.records if r.name == "comrade.rpc"]
    deadline = time.monotonic() + 5
    while not refusals() and time.monotonic() < deadline:
        time.sleep(0.01)  # polling interval
    assert [(r.levelname, r.exc_info) for r in refusals()] == [("WARNING", None)], refusals()
    assert not store.has(f.ref.sha256)


def test_the_server_sends_each_reply_at_once_without_waiting_for_an_ack(
        server: tuple[str, Recorder]) -> None:
    """A reply over 16 KiB goes out as two writes (its length, then its body): with Nagle's
    algorithm on the server's socket the body waited for the client's delayed ACK, 40 ms per
    reply (`leoronic_wait` on 2,000 tasks). The server's end of every connection has
    TCP_NODELAY."""
    address, _ = server
    port = int(address.rsplit(":", 1)[1])
    with rpc.connect(address, COOKIE) as conn:
        assert conn.call("ping") == "pong"
        served = [c for c in psutil.Process().net_connections("tcp")
                  if c.laddr and c.laddr.port == port and c.raddr]
        assert len(served) == 1, served
        with socket.socket(fileno=os.dup(served[0].fd)) as sock:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0

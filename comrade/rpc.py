"""The one protocol clients and ghosts use to talk to a node, authenticated by the cookie.

Transport: `multiprocessing.connection` (stdlib). Every connection first runs its HMAC
challenge-response in both directions with the cookie as the key; only after both succeed is
any message unpickled. A wrong cookie gets "authentication failed" and nothing else.

A request is `(method, args)`; a reply is `("ok", value)` or `("err", kind, message, exit)`.
A streamed reply (task output, packed work dirs: anything that may be larger than memory) is
any number of `("part", bytes)` messages before that last one, so neither side ever holds it
whole. A streamed request (an upload) is `(method, args, "parts")`, then any number of
`("part", bytes)` and `("end",)`; the server reads every part, even after its handler failed
or when it does not know the method, so the connection stays in step.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener, answer_challenge, deliver_challenge
from typing import TYPE_CHECKING, Any

from comrade.config import split_address
from comrade.errors import (
    EXIT_CLUSTER,
    AuthError,
    ClusterError,
    LeoronicError,
    RemoteError,
    UsageError,
)
from comrade.files import FileError

if TYPE_CHECKING:
    import logging


def _log() -> logging.Logger:
    """This module's logger. Only the server logs: a client command does not import logging
    (a few ms of every command's start)."""
    import logging
    return logging.getLogger(__name__)


Handler = Callable[..., Any]
Send = Callable[[bytes], object]
#: A streamed handler: `fn(send, *args)` calls `send(part)` for each part, then returns a value.
StreamHandler = Callable[..., Any]
#: An upload handler: `fn(parts, *args)` iterates the parts the client sends, returns a value.
UploadHandler = Callable[..., Any]

#: The most bytes one part of a streamed reply or request carries.
PART_BYTES = 1 << 20

#: Seconds a client waits to connect and authenticate.
CONNECT_TIMEOUT_S = 5.0


def listen_problem(exc: BaseException, bind: str, port: int, option: str) -> str:
    """The one-line reason a node cannot listen on `bind`:`port` (`option` names the port)."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, OverflowError):
        return f"{option}: {port} is not a port number (1..65535)"
    if code == errno.EACCES:
        return f"{option}: {port} needs privileges this process lacks (ports below 1024 need root)"
    if code == errno.EADDRINUSE:
        return f"{option}: {port} is already in use on {bind} (another leoronic, or another program)"
    if isinstance(exc, socket.gaierror):
        return f"--bind: {bind!r} is not a known address ({exc.strerror})"
    if code == errno.EADDRNOTAVAIL:
        return f"--bind: {bind} is not an address of this machine"
    return f"--bind: cannot listen on {bind}:{port}: {getattr(exc, 'strerror', None) or exc}"


def check_port_free(host: str, port: int, option: str) -> None:
    """Raise UsageError (`listen_problem`) if nothing could listen on `host`:`port` now: a
    port that a server started later (pysyncobj's, which only logs bind failures) needs."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as pysyncobj binds
        try:
            probe.bind((host, port))
        except (OSError, OverflowError) as exc:
            raise UsageError(listen_problem(exc, host, port, option)) from None


class Server:
    """Serves `handlers[method](*args)`, `streams[method](send, *args)` and
    `uploads[method](parts, *args)` to authenticated connections, one thread each."""

    def __init__(self, bind: str, port: int, cookie: str, handlers: dict[str, Handler],
                 streams: dict[str, StreamHandler] | None = None,
                 uploads: dict[str, UploadHandler] | None = None) -> None:
        self._key = cookie.encode()
        self._handlers = handlers
        self._streams = streams or {}
        self._uploads = uploads or {}
        try:
            self._listener = Listener((bind, port), backlog=128)
        except (OSError, OverflowError) as exc:
            raise UsageError(listen_problem(exc, bind, port, "--port")) from None
        self._stopped = False
        self._thread = threading.Thread(target=self._accept_loop, name="rpc-accept", daemon=True)

    def start(self) -> None:
        """Start accepting connections."""
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting; connections in progress end when their peer hangs up."""
        self._stopped = True
        try:
            self._listener.close()
        except OSError:
            _log().debug("listener already closed")

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                # Raw accept (private attribute): authentication then happens per thread.
                conn = self._listener._listener.accept()  # type: ignore[attr-defined]
                _no_delay(conn)
            except OSError:
                if self._stopped:
                    return
                _log().exception("accept failed")
                continue
            threading.Thread(target=self._serve, args=(conn,), name="rpc-conn", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        try:
            _authenticate_server(conn, self._key)
        except (AuthenticationError, EOFError, OSError) as exc:
            _log().warning("refused a connection: authentication failed (%s)", exc)
            conn.close()
            return
        try:
            while True:
                try:
                    method, args, *upload = conn.recv()
                except (EOFError, OSError):
                    return
                if upload:
                    parts = _Parts(conn)
                    reply = self._dispatch_upload(method, args, parts)
                    parts.drain()
                else:
                    reply = self._dispatch(method, args, conn)
                conn.send(reply)
        except (OSError, EOFError, _OutOfStep) as exc:
            if isinstance(exc, _OutOfStep):
                _log().warning("dropped a connection: %s", exc)
            return
        finally:
            conn.close()

    def _dispatch_upload(self, method: str, args: Any, parts: _Parts) -> tuple[Any, ...]:
        upload = self._uploads.get(method)
        if upload is None:
            return ("err", "UsageError", f"unknown upload {method!r}", 2)
        return _answer(method, lambda: upload(parts, *args))

    def _dispatch(self, method: str, args: Any, conn: Connection) -> tuple[Any, ...]:
        handler = self._handlers.get(method)
        stream = self._streams.get(method)
        if stream is not None:
            return _answer(method, lambda: stream(lambda part: conn.send(("part", part)), *args))
        if handler is None:
            return ("err", "UsageError", f"unknown request {method!r}", 2)
        return _answer(method, lambda: handler(*args))


def _answer(method: str, fn: Callable[[], Any]) -> tuple[Any, ...]:
    """`fn()` as a reply: its value, or its error (an upload out of step is not answered)."""
    try:
        return ("ok", fn())
    except _OutOfStep:
        raise
    except LeoronicError as exc:
        return ("err", type(exc).__name__, str(exc), exc.exit_code)
    except FileError as exc:  # what a client sent was refused (a file that changed while it
        _log().warning("request %s refused: %s", method, exc)  # was sent): no traceback
        return ("err", type(exc).__name__, f"{method}: {exc}", EXIT_CLUSTER)
    except Exception as exc:  # report, keep serving
        _log().exception("request %s failed", method)
        return ("err", type(exc).__name__, f"{method}: {exc}", EXIT_CLUSTER)


class _OutOfStep(Exception):
    """An upload's connection broke, or sent something other than a part or its end: the
    connection is dropped."""


class _Parts:
    """The parts of an upload, read from the connection as they are iterated."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._ended = False

    def __iter__(self) -> Iterator[bytes]:
        while not self._ended:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError) as exc:
                raise _OutOfStep(f"the upload broke off: {exc or 'connection closed'}") from None
            if msg == ("end",):
                self._ended = True
            elif isinstance(msg, tuple) and len(msg) == 2 and msg[0] == "part" \
                    and isinstance(msg[1], bytes):
                yield msg[1]
            else:
                raise _OutOfStep(f"an upload sent {type(msg).__name__} instead of a part")

    def drain(self) -> None:
        """Read what the handler left unread (it failed, or stopped early)."""
        for _ in self:
            pass


def _authenticate_server(conn: Connection, key: bytes) -> None:
    _recv_timeout(conn, CONNECT_TIMEOUT_S)
    deliver_challenge(conn, key)
    answer_challenge(conn, key)
    _recv_timeout(conn, 0)


def _no_delay(conn: Connection) -> None:
    """Send each message at once (TCP_NODELAY). `Connection.send` writes a message over 16 KiB
    as two writes, its length then its body; with Nagle's algorithm the body waited for the
    peer's delayed acknowledgement of the length, 40 ms here: `leoronic_wait` on 2,000 tasks
    spent 44 ms in its last reply, most of the time from the last task's end to its exit."""
    _set_option(conn, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _recv_timeout(conn: Connection, seconds: float) -> None:
    """Bound blocking reads on a connection (0 = no bound), keeping the socket blocking."""
    whole = int(seconds)
    _set_option(conn, socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                struct.pack("ll", whole, int((seconds - whole) * 1e6)))


def _set_option(conn: Connection, level: int, option: int, value: int | bytes) -> None:
    """setsockopt on a Connection's socket, which stays the Connection's."""
    sock = socket.socket(fileno=conn.fileno())
    try:
        sock.setsockopt(level, option, value)
    finally:
        sock.detach()


class Connection_:
    """A client connection to one node. Reuse it for many calls; close it when done."""

    def __init__(self, address: str, cookie: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
        host, port = split_address(address, "LEORONIC_NODE")
        self.address = address
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ClusterError(f"cannot reach node {address}: {exc.strerror or exc}") from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock.detach())
        try:
            _recv_timeout(conn, timeout)
            answer_challenge(conn, cookie.encode())
            deliver_challenge(conn, cookie.encode())
            _recv_timeout(conn, 0)
        except AuthenticationError:
            conn.close()
            raise AuthError(f"authentication failed: node {address} refused our cookie") from None
        except (EOFError, OSError) as exc:  # a node that died (or stopped) mid-handshake:
            conn.close()  # not a refusal, which comes as one (AuthenticationError)
            raise ClusterError(f"node {address} hung up during the handshake: "
                               f"{exc or 'connection closed'} (a worker's Raft port, its "
                               "PORT+1, would do this: clients use PORT)") from None
        self._conn = conn
        self._lock = threading.Lock()

    def call(self, method: str, *args: Any, sink: Send | None = None,
             parts: Iterable[bytes] | None = None) -> Any:
        """Send one request and return its value; raise the node's error as a LeoronicError.
        The parts of a streamed reply go to `sink`, in order, as they arrive. With `parts`, the
        request is an upload: each part is sent as it is taken, in pieces of at most
        PART_BYTES. If taking a part raises, the connection is closed (it is out of step) and
        that error propagates."""
        with self._lock:
            try:
                if parts is None:
                    self._conn.send((method, args))
                else:
                    self._send_parts(method, args, parts)
                reply = self._conn.recv()
                while reply[0] == "part":
                    if sink is None:
                        raise ClusterError(f"node {self.address} streamed an answer to {method}")
                    sink(reply[1])
                    reply = self._conn.recv()
            except (EOFError, OSError) as exc:
                raise ClusterError(f"node {self.address} hung up: {exc or 'connection closed'}") from None
        if reply[0] == "ok":
            return reply[1]
        _, kind, message, exit_code = reply
        raise RemoteError(kind, message, exit_code)

    def _send_parts(self, method: str, args: Any, parts: Iterable[bytes]) -> None:
        self._conn.send((method, args, "parts"))
        source = iter(parts)
        while True:
            try:
                part = next(source, None)
            except BaseException as exc:
                self._conn.close()  # out of step: the node drops its half of the upload
                if isinstance(exc, OSError):  # not the connection's: do not retry as if it were
                    raise UsageError(f"{method}: could not read what to send: "
                                     f"{exc.strerror or exc}") from None
                raise
            if part is None:
                break
            for at in range(0, len(part), PART_BYTES):
                self._conn.send(("part", bytes(part[at : at + PART_BYTES])))
        self._conn.send(("end",))

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> Connection_:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(address: str, cookie: str, timeout: float = CONNECT_TIMEOUT_S) -> Connection_:
    """Open an authenticated connection to a node."""
    return Connection_(address, cookie, timeout)


def call(address: str, cookie: str, method: str, *args: Any, timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """One request on a fresh connection."""
    with connect(address, cookie, timeout) as conn:
        return conn.call(method, *args)


__all__ = ["Server", "Connection_", "connect", "call", "Client"]

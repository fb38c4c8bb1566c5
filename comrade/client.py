"""The client side of every user command: find the node, authenticate, retry, read results.

The node is `LEORONIC_NODE=HOST:PORT` (default 127.0.0.1 and `LEORONIC_PORT` or 7341). The
cookie file is `LEORONIC_COOKIE` (a path; default `~/.leoronic_cookie`).
"""

from __future__ import annotations

import functools
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from comrade import rpc
from comrade.config import DEFAULT_PORT, default_cookie_path, is_seconds, parse_number
from comrade.errors import (
    EXIT_CLUSTER,
    AuthError,
    ClusterError,
    LeoronicError,
    RemoteError,
    UsageError,
)
from comrade.files import (
    DEFAULT_MAX_FILE_BYTES,
    FileError,
    LocalFile,
    read_files_field,
    upload_parts,
)
from comrade.model import TAIL_BYTES, TAILS_BUDGET, TaskSpec
from comrade.renaming import rename_plan

if TYPE_CHECKING:  # (the commands that build tasks import it; `wait` and the others need not)
    from comrade.taskfields import Fields

#: Seconds a command keeps retrying a node that is unreachable or has no quorum (an election
#: takes about a second; a worker restarting, a few).
DEFAULT_RETRY_S = 15.0


def env_retry_s() -> float:
    """LEORONIC_RETRY_S, else DEFAULT_RETRY_S; UsageError naming it if it is not seconds >= 0."""
    raw = os.environ.get("LEORONIC_RETRY_S", "")
    if not raw:
        return DEFAULT_RETRY_S
    value = parse_number(raw)
    if value is None or not is_seconds(value):
        raise UsageError(f"LEORONIC_RETRY_S: {raw!r} is not a number of seconds >= 0")
    return value


#: A cookie file bigger than this is refused (a made one holds 65 bytes).
MAX_COOKIE_BYTES = 4096


def cookie_path() -> str:
    """Where the cookie lives: $LEORONIC_COOKIE, else ~/.leoronic_cookie."""
    return os.environ.get("LEORONIC_COOKIE") or default_cookie_path()


def read_cookie(create: bool = False) -> str:
    """The cluster secret; created (random, mode 0600) if missing and `create` is set.
    UsageError, naming the file and how it was chosen, if it is missing, empty or unreadable."""
    path = cookie_path()
    where = (f"LEORONIC_COOKIE: {path}" if os.environ.get("LEORONIC_COOKIE")
             else f"cookie: {path} (set LEORONIC_COOKIE to use another file)")
    try:
        # Not blocking: opening a FIFO would wait for a writer; /dev/zero would never end.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UsageError(f"{where} is not a regular file")
            raw = f.read(MAX_COOKIE_BYTES + 1)
        if len(raw) > MAX_COOKIE_BYTES:
            raise UsageError(f"{where} is over {MAX_COOKIE_BYTES} bytes: not a cookie")
        secret = raw.decode().strip()
    except FileNotFoundError:
        if not create:
            raise UsageError(f"{where} does not exist: start a node first, or copy the "
                             "cluster's cookie there") from None
        return _new_cookie(path, where)
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not text"
        raise UsageError(f"{where} cannot be read: {why}") from None
    if not secret:
        raise UsageError(f"{where} is empty: put the cluster's secret in it")
    return secret


def _new_cookie(path: str, where: str) -> str:
    """A new random secret written to `path` (mode 0600)."""
    secret = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise UsageError(f"{where} cannot be made: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())  # the workers started with it must find it after a power cut
    return secret


class SubmitCutOff(ClusterError):
    """A submit cut off by a lost quorum: `queued` (ids) were queued; the specs from index
    `start` on may or may not be (`reason`: what the node said)."""

    def __init__(self, reason: str, queued: list[str], unsure: Sequence[TaskSpec],
                 start: int) -> None:
        super().__init__(f"{reason}; {_maybe_queued(unsure, len(queued))}")
        self.reason, self.queued, self.start = reason, queued, start


def _maybe_queued(unsure: Sequence[TaskSpec], queued: int) -> str:
    """What a submit cut off by a lost quorum leaves: tasks it cannot know about (a node may
    commit them once it has a quorum again), which only the same ids can safely resubmit."""
    ids = [s.task_id for s in unsure]
    which = f"task {ids[0]}" if len(ids) == 1 else f"{len(ids)} tasks, {ids[0]} to {ids[-1]},"
    return (f"{queued} tasks were queued, and {which} may still be queued once the cluster has a "
            "quorum again: submit them again with the same ids to be sure (a no-op for those "
            "that were)")


def node_address() -> str:
    """The node this client talks to: LEORONIC_NODE, else this box at LEORONIC_PORT."""
    node = os.environ.get("LEORONIC_NODE")
    if node:
        return node
    port = os.environ.get("LEORONIC_PORT", "") or str(DEFAULT_PORT)
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise UsageError(f"LEORONIC_PORT: {port!r} is not a port number (1..65535)")
    return f"127.0.0.1:{port}"


def max_file_bytes() -> int:
    """The necessary-file size limit (LEORONIC_MAX_FILE_BYTES, default 256 MiB)."""
    raw = os.environ.get("LEORONIC_MAX_FILE_BYTES", "")
    if not raw:
        return DEFAULT_MAX_FILE_BYTES
    if not (raw.isascii() and raw.isdigit()):
        raise UsageError(f"LEORONIC_MAX_FILE_BYTES: {raw!r} is not a number of bytes")
    return int(raw)


#: Errors a node answers with when it lacks a quorum: the client tries again (LEORONIC_RETRY_S).
_NO_QUORUM = ("ClusterError", "NotChanged")


class Client:
    """A connection to one node, re-opened and retried while the cluster is unavailable."""

    def __init__(self, address: str | None = None, cookie: str | None = None) -> None:
        self.address = address or node_address()
        self.retry_s = env_retry_s()  # LEORONIC_RETRY_S, checked before any cluster is asked
        self.cookie = cookie if cookie is not None else read_cookie()
        self._conn: rpc.Connection_ | None = None
        self._others: list[str] = []  # other workers, learned once connected: failover targets

    def call(self, method: str, *args: Any, retry_s: float | None = None,
             parts: Callable[[], Iterable[bytes]] | None = None) -> Any:
        """Call a method; on connection failures or no quorum, retry (moving to another
        worker of the cluster if ours is gone) for `retry_s` seconds. With `parts`, an upload:
        each try sends the parts `parts()` gives."""
        if retry_s is None:
            retry_s = self.retry_s
        deadline = time.monotonic() + retry_s
        candidates = [self.address]
        turn = 0
        while True:
            try:
                if self._conn is None:
                    address = candidates[turn % len(candidates)]
                    self._conn = rpc.connect(address, self.cookie)
                    if not self._others and method != "nodes":
                        self._learn_others()
                return self._conn.call(method, *args, parts=None if parts is None else parts())
            except AuthError:
                raise
            except (ClusterError, RemoteError) as exc:
                # A node that answered may still lack a quorum (or not have caught up since it
                # started): that too is worth another try, here or at another worker.
                if isinstance(exc, RemoteError) and exc.kind not in _NO_QUORUM:
                    raise
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                if time.monotonic() > deadline:
                    if isinstance(exc, RemoteError):
                        raise
                    raise ClusterError(f"{exc} (gave up after {retry_s:g} s)") from None
                candidates = [self.address] + [a for a in self._others if a != self.address]
                turn += 1
                time.sleep(0.2)  # pacing between reconnection attempts

    def change(self, method: str, *args: Any) -> Any:
        """`call` for a change (a submit, delete, hold, priority, drain or tag): the node is told
        how long this client waits (LEORONIC_RETRY_S), and waits no longer for a quorum. A
        worker of the version before, whose changes took no wait, refuses the extra argument
        before doing anything (a TypeError): it is asked again without it."""
        try:
            return self.call(method, *args, self.retry_s)
        except RemoteError as exc:
            if exc.kind != "TypeError" or "positional argument" not in str(exc):
                raise
            return self.call(method, *args)

    def own_name(self) -> str:
        """The name of the node this client was pointed at (LEORONIC_NODE), asked of that node
        alone, retried for `retry_s`: a change meant for "this node" must never land on another
        worker the client moved to because this one did not answer."""
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                with rpc.connect(self.address, self.cookie) as conn:
                    return str(conn.call("ping")["name"])
            except ClusterError as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(f"{exc} (gave up after {self.retry_s:g} s); to change "
                                       "another node, name it with --node") from None
                time.sleep(0.2)  # pacing between reconnection attempts

    def _learn_others(self) -> None:
        assert self._conn is not None
        try:
            nodes = self._conn.call("nodes")["nodes"]
        except LeoronicError:  # a ghost does not answer `nodes`: nothing to fail over to
            self._others = ["-"]
            return
        self._others = [n["rpc"] for n in nodes if n["kind"] == "worker" and n["alive"]]

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ----- submit -----------------------------------------------------------------------------

    def build_specs(
        self, rows: Sequence[Fields], retries: int = 0, rename: bool = True,
        time_limit: float = 0.0, priority: int = 0, held: bool = False,
        labels: Sequence[str] = (),
    ) -> tuple[list[TaskSpec], list[LocalFile]]:
        """Read every row's files (validating all first) and build the specs. A FileError
        names the field, after the row's label if given (e.g. "line 3: FILES: ...")."""
        limit = max_file_bytes()
        specs, uploads, seen = [], [], set()
        for i, fields in enumerate(rows):
            try:  # most rows name no file: nothing to read (and no getcwd per row)
                files = self._row_files(fields, limit, rename) if fields.files else []
            except FileError as exc:
                raise FileError(f"{labels[i] if i < len(labels) else ''}FILES: {exc}") from None
            for f in files:
                if f.ref.sha256 not in seen:
                    seen.add(f.ref.sha256)
                    uploads.append(f)
            specs.append(TaskSpec(
                task_id=fields.task_id, memory=fields.memory, cores=fields.cores,
                storage=fields.storage, concurrent=fields.concurrent,
                conditions=fields.conditions,
                files=tuple((f.ref.name, f.ref.sha256, f.ref.size) for f in files),
                command=fields.command, retries=retries, rename=rename, time_limit=time_limit,
                priority=priority, held=held,
            ))
        return specs, uploads

    @staticmethod
    def _row_files(fields: Fields, limit: int, rename: bool) -> list[LocalFile]:
        """The necessary files of one row, read and hashed; FileError if one cannot be used."""
        files = read_files_field(fields.files, limit)
        for f in files:
            try:  # what a node would refuse when placing it, refused now
                f.ref.name.encode()
            except UnicodeEncodeError:  # undecodable bytes of the file system's name
                raise FileError(f"necessary file {f.ref.name!r}: its name is not UTF-8 "
                                "text; rename it") from None
        rename_plan([f.ref for f in files], rename)  # names it would place twice
        return files

    def upload(self, files: Sequence[LocalFile]) -> None:
        """Upload the files the node lacks (each once, by hash), in parts read as they are
        sent: a file is never whole in memory, here or on the node."""
        if not files:
            return
        missing = set(self.call("file_missing", [f.ref.sha256 for f in files]))
        for f in files:
            if f.ref.sha256 in missing:
                try:
                    self.call("file_upload", f.ref.sha256,
                              parts=functools.partial(upload_parts, f, rpc.PART_BYTES))
                except RemoteError as exc:
                    if exc.kind != "HashMismatch":
                        raise
                    raise FileError(f"necessary file {f.ref.name!r}: changed while it was "
                                    "being sent") from None
                missing.discard(f.ref.sha256)

    def submit(self, specs: Sequence[TaskSpec], labels: Sequence[str] = (), batch: int = 1000,
               first: int = 50) -> list[str]:
        """Check every spec first (nothing is queued if one would be refused; the error is
        prefixed with its label, e.g. "line 3: "), then submit in batches. The first batch is
        small (`first`), so the cluster starts working while the rest is still being sent, and
        each next one four times larger up to `batch`: the first tasks' claims, which commit
        after the batch before them, wait less for a huge one (50, 200, 800, 1000, ...)."""
        for index, problem in self.call("check", list(specs))[:1]:
            label = labels[index] if index < len(labels) else ""
            raise UsageError(f"{label}{problem}")
        ids: list[str] = []
        start, size = 0, min(first, batch)
        while start < len(specs):
            chunk = list(specs[start : start + size])
            try:
                answers = self.change("submit", chunk)
            except LeoronicError as exc:
                if exc.exit_code != EXIT_CLUSTER or getattr(exc, "kind", "") == "NotChanged":
                    raise  # not about an unknown outcome
                raise SubmitCutOff(str(exc), ids, specs[start:], start) from None
            start, size = start + size, min(size * 4, batch)
            for task_id, ok, detail in answers:
                if not ok:
                    raise UsageError(f"task {task_id}: {detail}")
                ids.append(task_id)
        return ids

    # ----- results ----------------------------------------------------------------------------

    def write_output(self, task: Any, stream: str, sink: rpc.Send) -> str:
        """Write a finished attempt's whole stdout ("out") or stderr ("err") to `sink`, in
        parts as they come from the node that ran it (never whole in memory), or the tail the
        record keeps when that is all of it or the node cannot give it; for a running task,
        what its attempt has written so far. Returns a warning saying what was shown instead
        ('' if it was all)."""
        outcome = task.outcome
        if outcome is None:  # running: only its node has anything
            written, problem = self._from_node(task, stream, sink)
            return f"node {task.node}: {problem}" if problem else ""
        tail = outcome.stdout_tail if stream == "out" else outcome.stderr_tail
        size = outcome.stdout_bytes if stream == "out" else outcome.stderr_bytes
        if size <= len(tail):
            sink(tail)
            return ""
        showing = (f"the queue no longer keeps its last {TAIL_BYTES // 1024} KiB either (it keeps "
                   f"{TAILS_BUDGET // 2**20} MiB of the newest tails)" if outcome.tails_dropped
                   else f"showing the last {len(tail)} bytes")
        written, problem = self._from_node(task, stream, sink)
        if not problem:
            return ""
        if written:
            return f"output cut after {written} of {size} bytes: node {task.node}: {problem}"
        sink(tail)
        return f"node {task.node} {problem}; {showing}"

    def _from_node(self, task: Any, stream: str, sink: rpc.Send) -> tuple[int, str]:
        """Stream the task's attempt's output file from its node to `sink`: (bytes written,
        '' or what went wrong: "is unknown", "cannot give it (...)")."""
        nodes = self.call("nodes")["nodes"]
        addr = next((n["rpc"] for n in nodes if n["name"] == task.node), None)
        if addr is None:
            return 0, "is unknown"
        written = 0

        def counted(part: bytes) -> None:
            nonlocal written
            sink(part)
            written += len(part)

        try:
            self.stream_from(addr, "output_parts", task.spec.task_id, task.attempt, stream,
                             sink=counted)
            return written, ""
        except AuthError:
            raise
        except LeoronicError as exc:  # unreachable, or its files were collected
            return written, f"cannot give it ({exc})"

    def stream_from(self, address: str, method: str, *args: Any, sink: rpc.Send,
                    connect_s: float = 2.0) -> Any:
        """A streamed request to one node (trying to connect for `connect_s` seconds): its
        parts go to `sink`. Not retried once sent: the parts already went."""
        deadline = time.monotonic() + connect_s
        while True:
            try:
                conn = rpc.connect(address, self.cookie)
                break
            except AuthError:
                raise
            except ClusterError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # pacing between connection attempts
        with conn:
            return conn.call(method, *args, sink=sink)

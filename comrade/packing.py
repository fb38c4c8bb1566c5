"""Sending what a node holds (task output, work dirs) in parts, and receiving it.

Outputs and work dirs may be larger than a node's memory (a task that printed 20 GB), so they
go as a streamed reply (`comrade.rpc`): parts of at most PART_BYTES, read from disk (or
packed with the stdlib tarfile, gzipped) as they are sent. The receiver writes each part where
it belongs (stdout, or a temporary file the pack is then extracted from).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from comrade import rpc
from comrade.errors import ClusterError, LeoronicError, NotFound, UsageError
from comrade.executor import Paths, workdir_task_id
from comrade.files import FileStore
from comrade.rpc import PART_BYTES, Send

log = logging.getLogger(__name__)


def send_file(path: str, send: Send, what: str) -> int:
    """Send a file's bytes in parts, up to its end when it is opened (a running task's output
    may grow meanwhile); returns how many were sent. UsageError naming `what` if it is missing.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise UsageError(f"no {what} here") from None
    with f:
        left = os.fstat(f.fileno()).st_size
        sent = 0
        while left > 0:
            part = f.read(min(PART_BYTES, left))
            if not part:
                break  # truncated meanwhile
            send(part)
            sent += len(part)
            left -= len(part)
    return sent


class _PartWriter:
    """A write-only file object that sends what is written in parts of PART_BYTES."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._buf = bytearray()
        self.sent = 0

    def write(self, data: bytes) -> int:
        self._buf += data
        while len(self._buf) >= PART_BYTES:
            self._flush(PART_BYTES)
        return len(data)

    def close(self) -> None:
        if self._buf:
            self._flush(len(self._buf))

    def _flush(self, n: int) -> None:
        part = bytes(self._buf[:n])
        del self._buf[:n]
        self._send(part)
        self.sent += len(part)


def send_pack(root: str, names: list[str], send: Send) -> int:
    """Send a gzipped tar of `names` (relative to `root`; symlinks kept as links) in parts, as
    it is made; returns the bytes sent."""
    out = _PartWriter(send)
    with tarfile.open(fileobj=out, mode="w|gz") as tar:  # type: ignore[call-overload]
        for name in names:
            path = os.path.join(root, name)
            if os.path.exists(path):
                tar.add(path, arcname=name)
    out.close()
    return out.sent


def send_work(work: str, what: str, task_id: str, owner: str, send: Send) -> int:
    """Send a node's whole work dir ("work") or one task's attempt dirs ("task") as a pack."""
    if what == "work":
        return send_pack(work, ["."], send)
    if what == "task":
        dirs = sorted(d for d in os.listdir(work) if workdir_task_id(d) == task_id)
        if not dirs:
            raise NotFound(f"ID: no work dir of task {task_id!r} on {owner} (an empty one is "
                           "reused when its attempt ends; the others go after the retention time)")
        return send_pack(work, dirs, send)
    raise UsageError(f"pack_dir: unknown {what!r}")


def streams(paths: Paths, owner: str, store: FileStore) -> dict[str, Callable[..., Any]]:
    """The streamed requests every worker and ghost serves (`rpc.Server`'s streams): an
    attempt's stdout or stderr ("output_parts"), work dirs packed ("pack_parts"), and a
    necessary file from the store ("file_parts": False, with no parts, if it is not there)."""

    def output(send: Send, task_id: str, attempt: int, stream: str) -> int:
        if stream not in ("out", "err"):
            raise UsageError(f"stream: {stream!r} is not out or err")
        return send_file(paths.output(task_id, attempt, stream), send,
                         f"{stream} output of task {task_id!r} attempt {attempt}")

    def pack(send: Send, what: str, task_id: str = "") -> int:
        return send_work(paths.work, what, task_id, owner, send)

    def file(send: Send, sha: str) -> bool:
        if not store.has(sha):
            return False
        for part in store.read_chunks(sha, PART_BYTES):
            send(part)
        return True

    return {"output_parts": output, "pack_parts": pack, "file_parts": file}


class _Lacks(Exception):
    """The node asked for a file does not have it."""


def receive_file(store: FileStore, address: str, cookie: str, sha: str) -> bool:
    """Get a necessary file from the node at `address` into `store`, in parts written as they
    come (a file is never whole in memory); False if that node lacks it. HashMismatch (a
    ValueError) if its copy is corrupt, LeoronicError if it cannot be reached; nothing is
    stored then."""
    try:
        with store.writer(sha) as out, rpc.connect(address, cookie, timeout=10) as conn:
            if not conn.call("file_parts", sha, sink=out.write):
                raise _Lacks  # leaves the writer without publishing anything
    except _Lacks:
        return False
    return True


def fetch_from_any(store: FileStore, addresses: Iterable[str], cookie: str, sha: str) -> None:
    """Get a necessary file into `store` from the first of `addresses` that has a good copy:
    one that lacks it, cannot be reached, or sends a corrupted copy (rejected by its hash) is
    passed over. ClusterError naming each node's answer if none could supply it."""
    errors = []
    for addr in addresses:
        try:
            if receive_file(store, addr, cookie, sha):
                return
        except LeoronicError as exc:
            errors.append(f"{addr}: {exc}")
        except ValueError as exc:  # HashMismatch: a corrupted copy; try the next node
            log.warning("file %s from %s rejected: %s", sha[:12], addr, exc)
            errors.append(f"{addr}: {exc}")
    raise ClusterError(f"file {sha[:12]}: no node could supply it "
                       f"({'; '.join(errors) or 'none has it'})")


def receive_pack(fetch: Callable[[Send], object], dest: str) -> None:
    """Receive a pack through `fetch(sink)` into a temporary file in `dest` (never whole in
    memory), then extract it into `dest`, refusing members that would land outside it. If the
    fetch fails, a `dest` made for it is removed again (when still empty)."""
    with made_for(dest), tempfile.TemporaryFile(dir=dest) as spool:
        fetch(spool.write)
        spool.seek(0)
        unpack_file(spool, dest)


@contextlib.contextmanager
def made_for(dest: str, what: str = "") -> Iterator[None]:
    """Make the folder `dest` for the block; if the block fails, a `dest` made here is removed
    again when still empty. With `what` (the argument's name), a `dest` that cannot be made is
    a UsageError naming it, and so is an empty one."""
    if what and not dest.strip():
        raise UsageError(f"{what}: empty; give the folder to copy into")
    made = not os.path.isdir(dest)
    try:
        os.makedirs(dest, exist_ok=True)
    except OSError as exc:
        if not what:
            raise
        raise UsageError(f"{what}: cannot make {dest!r}: {exc.strerror or exc}") from None
    try:
        yield
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(dest)
        raise


def unpack_file(f: IO[bytes], dest: str) -> None:
    """Extract a gzipped tar from an open file into `dest` (data filter: nothing outside it,
    no devices, no setuid)."""
    with tarfile.open(fileobj=f, mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python before 3.11.4 (Debian 12's 3.11.2) has no extraction filters
            tar.extractall(dest, members=_data_members(tar, dest))


def _data_members(tar: tarfile.TarFile, dest: str) -> Iterator[tarfile.TarInfo]:
    """The members of `tar` as the stdlib's "data" filter lets them through: TarError for one
    that is not a file, directory or link, or that (or whose link) would land outside `dest`;
    modes stripped of setuid, setgid, sticky and group/other write bits."""
    root = os.path.realpath(dest)

    def inside(path: str) -> bool:
        return os.path.commonpath([root, os.path.realpath(path)]) == root

    for member in tar:
        where = os.path.join(root, member.name)
        if os.path.isabs(member.name) or not inside(where):
            raise tarfile.TarError(f"{member.name!r} would be extracted outside {dest}")
        if member.issym() and not inside(os.path.join(os.path.dirname(where), member.linkname)) \
                or member.islnk() and not inside(os.path.join(root, member.linkname)):
            raise tarfile.TarError(f"{member.name!r} links outside {dest}")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise tarfile.TarError(f"{member.name!r} is not a file, directory or link")
        member.mode &= 0o755
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        yield member

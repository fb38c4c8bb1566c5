"""Necessary files: read them on the client, keep them in a content store, place them for a task.

Everything here is local; moving bytes between machines is someone else's job.

* Client side: :func:`read_files_field` turns the task's ``;``-separated field
  into :class:`LocalFile` records (path + :class:`FileRef`), hashing each file.
* Node side: :class:`FileStore` keeps content under its SHA-256;
  :func:`place_files` puts a task's files into its work dir under the names of
  :func:`rename_plan`, and :func:`rewrite_command` fixes up the command.

Sizes are in bytes, times in seconds since the epoch.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from comrade.renaming import (
    FileError,
    FileRef,
    parse_files_field,
    rename_plan,
    rewrite_command,
    unique_name,
)

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "CHUNK_BYTES",
    "FileError",
    "HashMismatch",
    "FileRef",
    "LocalFile",
    "parse_files_field",
    "read_files_field",
    "sha256_file",
    "FileStore",
    "StoreWriter",
    "unique_name",
    "rename_plan",
    "rewrite_command",
    "place_files",
]

#: Documented limit per necessary file, in bytes.  The environment variable
#: ``LEORONIC_MAX_FILE_BYTES`` overrides it; the caller reads it, not this module.
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024

#: Read/hash chunk size, in bytes.
CHUNK_BYTES = 1 << 20

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class HashMismatch(FileError):
    """Content did not hash to the SHA-256 it was announced under."""


@dataclass(frozen=True)
class LocalFile:
    """A necessary file on the submitting machine: its :class:`FileRef` and absolute ``path``."""

    ref: FileRef
    path: str


def upload_parts(f: LocalFile, part_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The bytes of a necessary file, read in parts as they are sent. FileError if it can no
    longer be read, or it is no longer the size it was hashed at (the node checks the hash)."""
    what = f"necessary file {f.ref.name!r}"
    size = 0
    try:
        with open(f.path, "rb") as fh:
            while part := fh.read(part_bytes):
                size += len(part)
                if size > f.ref.size:
                    break
                yield part
    except OSError as exc:
        raise FileError(f"{what}: not readable ({_strerror(exc)})") from None
    if size != f.ref.size:
        raise FileError(f"{what}: changed while it was being sent (it was {f.ref.size} bytes)")


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def sha256_file(path: str) -> tuple[str, int]:
    """Hash the file at ``path`` streaming in 1 MiB chunks; return (hex digest, size in bytes).

    Raises :class:`OSError` when it cannot be opened or read.
    """
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def read_files_field(field: str, max_bytes: int, cwd: str | None = None) -> list[LocalFile]:
    """Read and hash every file named in ``field`` (see :func:`parse_files_field`).

    Relative names are resolved against ``cwd`` (default: the current
    directory); ``max_bytes`` is the limit per file, in bytes.  Raises
    :class:`FileError` with one of these messages, PATH as written in the field:
    "necessary file 'PATH': no such file" / "is a directory" / "not readable
    (<strerror>)" / "N bytes is over the limit of M bytes
    (LEORONIC_MAX_FILE_BYTES)" / "listed twice" / "name must not contain NUL or
    newline".  Something other than a regular file (a FIFO, a device) is "not
    readable (not a regular file)".
    """
    base = os.getcwd() if cwd is None else cwd
    out: list[LocalFile] = []
    seen: set[str] = set()
    for name in parse_files_field(field):
        what = f"necessary file {name!r}"
        if name in seen:
            raise FileError(f"{what}: listed twice")
        seen.add(name)
        full = os.path.join(base, name)
        try:
            st = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            raise FileError(f"{what}: no such file") from None
        except OSError as exc:
            raise FileError(f"{what}: not readable ({_strerror(exc)})") from None
        if stat.S_ISDIR(st.st_mode):
            raise FileError(f"{what}: is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise FileError(f"{what}: not readable (not a regular file)")
        over = f"bytes is over the limit of {max_bytes} bytes (LEORONIC_MAX_FILE_BYTES)"
        if st.st_size > max_bytes:
            raise FileError(f"{what}: {st.st_size} {over}")
        digest = hashlib.sha256()
        size = 0
        try:
            with open(full, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:  # it grew since the stat
                        raise FileError(f"{what}: {max(size, os.fstat(f.fileno()).st_size)} {over}")
                    digest.update(chunk)
        except OSError as exc:
            raise FileError(f"{what}: not readable ({_strerror(exc)})") from None
        ref = FileRef(name=name, sha256=digest.hexdigest(), size=size)
        out.append(LocalFile(ref=ref, path=os.path.realpath(full)))
    return out


def _fsync_dir(path: str) -> None:
    """Best-effort fsync of a directory so a rename in it survives a crash."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class StoreWriter:
    """Streams content into a :class:`FileStore`; made by :meth:`FileStore.writer`.

    Use as a context manager: :meth:`write` bytes, and on a clean exit the
    content is verified and atomically published.  On a hash mismatch
    :class:`HashMismatch` is raised; on any error the temp file is removed and
    nothing is stored.
    """

    def __init__(self, store: FileStore, expected_sha256: str) -> None:
        self._store = store
        self._expected = store._check(expected_sha256)
        self._digest = hashlib.sha256()
        self.size = 0  #: bytes written so far
        fd, self._tmp = tempfile.mkstemp(dir=store._tmpdir, prefix="in-")
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        """Append ``data``; raises :class:`OSError` on a write failure."""
        self._file.write(data)
        self._digest.update(data)
        self.size += len(data)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            if exc_type is not None:
                return
            actual = self._digest.hexdigest()
            if actual != self._expected:
                raise HashMismatch(
                    f"file {self._expected}: content hash is {actual}, expected {self._expected}"
                )
            self._store._publish(self._tmp, self._expected)
            self._tmp = ""
        finally:
            if not self._file.closed:
                self._file.close()
            if self._tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._tmp)


class FileStore:
    """Content-addressed store rooted at a directory: ``ROOT/ab/<full sha256 hex>``.

    Writes are atomic: a temp file in ``ROOT/tmp`` is fsynced, made read-only
    (0444) and moved into place with :func:`os.replace`.  Every method that
    takes a SHA-256 raises :class:`FileError` unless it is 64 lowercase hex
    characters (this guards against path traversal).
    """

    def __init__(self, root: str) -> None:
        """Open (creating if needed) the store at ``root``."""
        self.root = os.path.abspath(root)
        self._tmpdir = os.path.join(self.root, "tmp")
        os.makedirs(self._tmpdir, exist_ok=True)

    @staticmethod
    def _check(sha256: str) -> str:
        if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
            raise FileError(f"file {sha256!r}: not a SHA-256 (64 lowercase hex characters)")
        return sha256

    def _publish(self, tmp: str, sha256: str) -> None:
        os.chmod(tmp, 0o444)
        dest = self.path(sha256)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(tmp, dest)
        _fsync_dir(os.path.dirname(dest))

    def has(self, sha256: str) -> bool:
        """Whether content with this hash is stored (not re-verified)."""
        return os.path.isfile(self.path(sha256))

    def keep_alive(self, sha256: str) -> bool:
        """Whether content with this hash is stored; if so its modification time becomes now,
        so that garbage collection (by age, for files no task refers to yet) keeps it for a
        whole period while the task that was just told it exists gets queued."""
        try:
            os.utime(self.path(sha256))
            return True
        except FileNotFoundError:
            return False

    def path(self, sha256: str) -> str:
        """The path where this content is, or would be, stored."""
        self._check(sha256)
        return os.path.join(self.root, sha256[:2], sha256)

    def put_file(self, src_path: str) -> FileRef:
        """Copy the file at ``src_path`` in, hashing it; returns ``FileRef(src_path, sha, size)``.

        Raises :class:`OSError` when it cannot be read.
        """
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self._tmpdir, prefix="in-")
        try:
            with os.fdopen(fd, "wb") as out, open(src_path, "rb") as src:
                while chunk := src.read(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            self._publish(tmp, sha)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return FileRef(name=src_path, sha256=sha, size=size)

    def put_bytes(self, data: bytes, expected_sha256: str | None = None) -> str:
        """Store ``data``; return its SHA-256 hex.

        Raises :class:`HashMismatch` ("file <sha>: content hash is <actual>,
        expected <sha>") and stores nothing when ``expected_sha256`` is given
        and differs.
        """
        actual = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None:
            self._check(expected_sha256)
            if actual != expected_sha256:
                raise HashMismatch(
                    f"file {expected_sha256}: content hash is {actual}, expected {expected_sha256}"
                )
        with self.writer(actual) as w:
            w.write(data)
        return actual

    def writer(self, expected_sha256: str) -> StoreWriter:
        """A :class:`StoreWriter` that streams content expected to hash to ``expected_sha256``."""
        return StoreWriter(self, expected_sha256)

    def read_chunks(self, sha256: str, chunk: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Yield the stored content in chunks of ``chunk`` bytes.

        Raises :class:`FileError` (at once) when the content is not stored.
        """
        path = self.path(sha256)
        if not os.path.isfile(path):
            raise FileError(f"file {sha256}: not in the store")

        def chunks() -> Iterator[bytes]:
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                raise FileError(f"file {sha256}: not in the store") from None
            with f:
                while data := f.read(chunk):
                    yield data

        return chunks()

    def verify(self, sha256: str) -> bool:
        """Re-hash the stored copy; True when it matches.

        A corrupted copy is removed and False returned; a missing one gives False.
        """
        path = self.path(sha256)
        try:
            actual, _ = sha256_file(path)
        except FileNotFoundError:
            return False
        if actual == sha256:
            return True
        self.remove(sha256)
        return False

    def remove(self, sha256: str) -> None:
        """Remove the stored copy, if any."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(sha256))

    def list(self) -> list[str]:
        """All stored hashes, sorted."""
        found: list[str] = []
        try:
            subdirs = os.listdir(self.root)
        except FileNotFoundError:
            return found
        for sub in subdirs:
            if len(sub) != 2:
                continue
            try:
                names = os.listdir(os.path.join(self.root, sub))
            except (FileNotFoundError, NotADirectoryError):
                continue
            found.extend(n for n in names if _SHA256_RE.fullmatch(n) and n[:2] == sub)
        return sorted(found)

    def total_bytes(self) -> int:
        """Sum of the sizes of all stored files, in bytes."""
        total = 0
        for sha in self.list():
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(self.path(sha)).st_size
        return total

    def gc(self, keep: set[str], older_than_s: float, now: float) -> builtins.list[str]:
        """Remove stored files not in ``keep`` last modified before ``now - older_than_s``.

        ``now`` is seconds since the epoch (no clock is read here).  Leftover
        temp files older than the same cutoff are removed too.  Returns the
        removed hashes, sorted.
        """
        cutoff = now - older_than_s
        removed: builtins.list[str] = []
        for sha in self.list():
            if sha in keep:
                continue
            try:
                if os.stat(self.path(sha)).st_mtime < cutoff:
                    self.remove(sha)
                    removed.append(sha)
            except FileNotFoundError:
                continue
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self._tmpdir):
                tmp = os.path.join(self._tmpdir, name)
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(tmp).st_mtime < cutoff:
                        os.unlink(tmp)
        return removed


def place_files(
    store: FileStore, workdir: str, refs: Sequence[FileRef], rename: bool = True
) -> dict[str, str]:
    """Put each of ``refs`` into ``workdir`` under its planned name; return the plan.

    The plan is :func:`rename_plan` (old name as written -> name in the work
    dir).  Each file is hard-linked from the store (copied when linking is not
    possible, e.g. across file systems) and is read-only: a hard link shares
    the store's inode, so writing to it would corrupt the store
    (:meth:`FileStore.verify` catches that).  An existing file of the same name
    in ``workdir`` is replaced.  Raises :class:`FileError` when a ref is not in
    the store or a planned name would land outside ``workdir``.
    """
    plan = rename_plan(refs, rename=rename)
    root = os.path.abspath(workdir)
    os.makedirs(root, exist_ok=True)
    done: set[str] = set()
    for ref in refs:
        new = plan[ref.name]
        if new in done:
            continue
        target = os.path.normpath(os.path.join(root, new))
        if os.path.dirname(target) != root:
            raise FileError(f"necessary file {ref.name!r}: would be placed outside the work dir")
        src = store.path(ref.sha256)
        if not os.path.isfile(src):
            raise FileError(
                f"necessary file {ref.name!r}: content {ref.sha256} is not in the store"
            )
        if os.path.lexists(target):
            os.unlink(target)
        try:
            try:
                os.link(src, target)
            except FileNotFoundError:
                raise
            except OSError:  # other file system, hard links refused, link limit: copy
                shutil.copyfile(src, target)
                os.chmod(target, 0o444)
        except FileNotFoundError:
            raise FileError(
                f"necessary file {ref.name!r}: content {ref.sha256} is not in the store"
            ) from None
        done.add(new)
    return plan

"""Spare output files: empty files of ended attempts, written at by the next ones.

Every attempt's stdout and stderr go to files of their own. Creating a file is an inode
allocation, which on the benchmark machine's disk costs the task's process about 0.2 ms
each, 0.4 ms per task: a third of what a `true` task costs and more than all of its bash.
Opening an existing empty file with O_TRUNC is as cheap as opening it. So an attempt that
ended with an empty stream keeps that file here (it holds nothing worth keeping: the record
says the stream was empty), and the next attempt's stream is written at that spare, in this
folder; when it ends with output, the file is renamed to where the attempt's output belongs
(`Paths.output`), before its outcome is reported. A stream that stays empty, as most of a
short task's do, is thus never renamed: renaming a file in and out for each stream, as was
done before, cost four renames (about 0.04 ms of CPU) per task.

A file is kept only if no process has it open for writing: a descendant of the task that
outlived it (and left its process group) may still write to the task's stdout, and must never
write into another task's output (such a file goes where the attempt's output belongs). A
read lease is granted exactly when no one has the file open for writing (fcntl(2)), so
taking one (and dropping it at once) is that check; should anyone open the file in that
instant, the lease break is signalled with SIGURG, whose default action is to ignore it,
rather than SIGIO, whose default action would end the node. Where leases cannot be taken (a
file system without them) no file is kept and every stream is created, as without spares.

Work dirs are reused the same way (`SpareDirs`): a `mkdir` is an inode allocation too, and on
that disk it cost the executor 0.15-0.7 ms per task, more than the rest of what it does for
one. An ended attempt's work dir that is empty moves out of the way at once and, once no
process can still write into it, becomes the next attempt's work dir (a rename). No lease
tells whether a process is in a directory, so that is left to the executor's sweep: it kills
every process that carries an ended task's work dir in LEORONIC_WORKDIR (`kill_orphans`), and a
dir set aside before a sweep that found none (and still empty then) can no longer be written
by a process of its task.

Single-threaded: only the executor's actor uses them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import stat
import struct
from collections.abc import Set as AbstractSet

log = logging.getLogger(__name__)

#: Spare files kept, at most (an empty stream beyond that is removed).
SPARES_MAX = 64
#: Work dirs set aside, waiting for a sweep, before one is asked for early (`SpareDirs`): a
#: sweep reads every process's environment and cwd (about 0.5 ms with 65 processes, three
#: times that on a busy machine), so a sweep per 16 tasks cost a `true` task 0.06 ms.
DIRS_BATCH = 64
#: Work dirs set aside and free, at most: a batch waiting for its sweep while the one before
#: it is handed out.
DIRS_MAX = 2 * DIRS_BATCH
#: ioctl(2) request for a file's inode flags (`chattr`, `lsattr`).
FS_IOC_GETFLAGS = 0x80086601


class Spares:
    """A folder of empty files for attempts' streams to be written at, and the list of the
    free ones."""

    def __init__(self, folder: str, limit: int = SPARES_MAX) -> None:
        self.folder = folder
        self.limit = limit
        self._free: list[str] = []
        self._count = 0
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):  # a previous life's: not known to be unused
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(os.path.join(folder, name))

    def __len__(self) -> int:
        return len(self._free)

    def take(self) -> str | None:
        """A spare file for a starting attempt's stream to be written at (its child opens it
        with O_TRUNC, so one removed meanwhile is made again); None if none is left. It is
        the caller's until `settle`."""
        if not self._free:
            return None
        return self._free.pop()

    def settle(self, at: str, path: str, size: int | None = None,
               unwritten: bool | None = None) -> None:
        """An ended attempt's stream, written at `at` (a spare from `take`, or `path` itself),
        `size` bytes (None: look): an empty one that no process has open for writing
        (`unwritten`, as `read_stream` found it; None: look) is kept as a spare (or removed,
        when there are enough); any other ends at `path`, where the attempt's output belongs."""
        if size is None:
            try:
                size = os.stat(at).st_size
            except OSError:
                return  # gone: nothing to keep or to move
        if size == 0 and (_empty_and_unwritten(at) if unwritten is None else unwritten):
            self._keep(at, taken=at != path)
        elif at != path:
            try:
                os.rename(at, path)
            except OSError as exc:  # its outputs folder gone: nowhere to keep it
                log.warning("could not keep an output at %s: %s", path, exc)

    def _keep(self, path: str, taken: bool) -> None:
        """Keep `path`, an empty file no process writes, as a spare (a rename into the folder,
        unless it was `taken` from there), or remove it if there are enough."""
        if len(self._free) >= self.limit:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        if not taken:
            self._count += 1
            spare = os.path.join(self.folder, str(self._count))
            try:
                os.rename(path, spare)
            except OSError:  # another file system, or gone: nothing to keep
                return
            path = spare
        self._free.append(path)


#: How an ended attempt's stream file is opened to be read: not through a link a task put in
#: its place, nor blocking on a FIFO.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def read_stream(path: str, limit: int) -> tuple[bytes, int, bool]:
    """An ended attempt's stream file, opened once: its last `limit` bytes, its size, and
    whether it is an empty file no process has open for writing (a spare to keep: `settle`).
    A missing file (or a link put in its place) reads as (b"", 0, False)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return b"", 0, False
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return b"", 0, _unwritten(fd)
        if size > limit:
            os.lseek(fd, size - limit, os.SEEK_SET)
        parts = []
        left = limit
        while left > 0:
            part = os.read(fd, left)
            if not part:
                break
            parts.append(part)
            left -= len(part)
        return b"".join(parts), size, False
    except OSError:
        return b"", 0, False
    finally:
        os.close(fd)


def _empty_and_unwritten(path: str) -> bool:
    """True if `path` is an empty regular file that no process has open for writing."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return False
    try:
        return _unwritten(fd)
    finally:
        os.close(fd)


def _unwritten(fd: int) -> bool:
    """True if open file `fd` is empty and no process has it open for writing (a read lease
    is granted only then)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)  # a lease break must not kill us
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)  # EAGAIN if anyone has it open to write
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return os.fstat(fd).st_size == 0
    except OSError:
        return False


class SpareDirs:
    """A folder of empty work dirs to rename into place: `cooling` ones, set aside by attempts
    that ended, and `free` ones, cleared by a sweep since.

    `set_aside(workdir)` as an attempt ends: an empty work dir moves into the folder (True), or
    stays where it is (False: it holds files, it is a link, or enough are set aside already).
    `settle(clean)` after each sweep: when the sweep found no process of an ended task (clean),
    every dir set aside before it that is still empty and as `mkdir` made it in `made_in` is
    free, any other (written into, or changed by its task: mode, ACL, inode flags) is removed;
    otherwise they wait for the next sweep. `sweep_due()` asks for a sweep sooner than the
    periodic one, once a batch was set aside and none is free. `place(workdir)` renames a free
    one into place.
    """

    def __init__(self, folder: str, made_in: str, limit: int = DIRS_MAX,
                 batch: int = DIRS_BATCH) -> None:
        self.folder = folder
        self.limit = limit
        self.batch = batch
        self._free: list[str] = []
        self._cooling: list[tuple[str, str]] = []  # (spare, the work dir it was)
        self._since_sweep = 0  # set aside since the last sweep
        self._count = 0
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):  # a previous life's: not known to be unused
            remove_tree(os.path.join(folder, name))
        os.makedirs(made_in, exist_ok=True)
        probe = os.path.join(made_in, f".probe-{os.getpid()}")  # a fresh work dir, as made
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(probe)
        os.mkdir(probe)
        try:
            fd = os.open(probe, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._made = _made_of(fd)
            finally:
                os.close(fd)
        finally:
            os.rmdir(probe)

    def __len__(self) -> int:
        return len(self._free)

    def place(self, workdir: str) -> bool:
        """Rename a free dir to `workdir`; False if none is left or `workdir` is a folder with
        something in it (the caller makes a fresh one)."""
        while self._free:
            spare = self._free.pop()
            try:
                os.rename(spare, workdir)  # replaces an empty dir there; a full one: ENOTEMPTY
                return True
            except FileNotFoundError:
                if os.path.isdir(spare):  # workdir's parent is missing
                    self._free.append(spare)
                    return False
            except OSError:
                self._free.append(spare)
                return False
        return False

    def set_aside(self, workdir: str) -> bool:
        """An ended attempt's work dir: move it into the folder if it is an empty dir (not a
        link) and there is room (True), else leave it where it is. Whether it is still as
        made is asked only when it would be handed on (`settle`): one the task changed is then
        removed, as one written into after it was set aside is."""
        if len(self._free) + len(self._cooling) >= self.limit or not _is_empty_dir(workdir):
            return False
        self._count += 1
        spare = os.path.join(self.folder, str(self._count))
        try:
            os.rename(workdir, spare)
        except OSError:
            return False
        self._cooling.append((spare, workdir))
        self._since_sweep += 1
        return True

    def sweep_due(self) -> bool:
        """True when a batch was set aside since the last sweep and no dir is free."""
        return not self._free and self._since_sweep >= self.batch

    def settle(self, clean: bool, running: AbstractSet[str] = frozenset(),
               held: AbstractSet[str] = frozenset()) -> None:
        """After a sweep: if it found no process of an ended task, the dirs set aside before it
        are free (or removed, if something was written into one meanwhile). One whose work dir
        path a `running` attempt has again (a task id used again) waits: the sweep spared every
        process marked with that path, its old task's too. One some process is in (`held`: a
        process without the mark, see `sweep_processes`) is removed at once, clean or not: what is
        in it can then create nothing there, and it is never handed on."""
        self._since_sweep = 0
        waiting: list[tuple[str, str]] = []
        for spare, workdir in self._cooling:
            if spare in held:
                remove_tree(spare)
            elif not clean or workdir in running:
                waiting.append((spare, workdir))
            elif _as_made(spare, self._made):
                self._free.append(spare)
            else:
                remove_tree(spare)
        self._cooling = waiting


def _as_made(path: str, made: tuple[object, ...]) -> bool:
    """True if `path` is a directory as `mkdir` makes a work dir: not a link, the same mode,
    owner, group, extended attributes (an ACL is one; names and values) and inode flags as
    `made`, nothing in it. A task may have changed its dir (`chmod 500 .`, `setfacl -d`,
    `chattr +S .`): such a one is never handed on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if _made_of(fd) != made:
            return False
        with os.scandir(fd) as entries:
            return next(entries, None) is None
    except OSError:
        return False
    finally:
        os.close(fd)


def _is_empty_dir(path: str) -> bool:
    """True if `path` is a directory, not a link, with nothing in it. Six system calls, where
    `_as_made`'s open without following links then `scandir` of that fd took ten (CPython
    duplicates the fd, and the C library checks and rewinds it): one that became a link in
    between is moved aside all the same, and `settle` removes it."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _made_of(fd: int) -> tuple[object, ...]:
    """What a task may change of its open dir `fd` and a later task would inherit."""
    st = os.fstat(fd)
    xattrs = sorted((name, os.getxattr(fd, name)) for name in os.listxattr(fd))
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(4)))[0]
    except OSError:  # a file system without inode flags
        flags = None
    return st.st_mode, st.st_uid, st.st_gid, xattrs, flags


def remove_tree(path: str) -> None:
    """Remove a dir with all in it, or a file, or a symlink (not what it points to); one
    already gone is skipped."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

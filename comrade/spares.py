"""Spare output files: empty files of ended attempts, renamed into place for the next ones.

Every attempt's stdout and stderr go to files of their own. Creating a file is an inode
allocation, which on the benchmark machine's disk costs the task's process about 0.2 ms
each, 0.4 ms per task: a third of what a `true` task costs and more than all of its bash.
Renaming an existing empty file costs about 0.013 ms, and opening it with O_TRUNC is as cheap
as opening it. So an attempt that ended with an empty stream gives that file back here (it
holds nothing worth keeping: the record says the stream was empty), and the next attempt's
stream is renamed from a spare before its process starts.

A file goes back only if no process has it open for writing: a descendant of the task that
outlived it (and left its process group) may still write to the task's stdout, and must never
write into another task's output. A read lease is granted exactly when no one has the file
open for writing (fcntl(2)), so taking one (and dropping it at once) is that check; should
anyone open the file in that instant, the lease break is signalled with SIGURG, whose default
action is to ignore it, rather than SIGIO, whose default action would end the node. Where
leases cannot be taken (a file system without them) no file goes back and every stream is
created, as without spares.

Single-threaded: only the executor's actor uses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal

#: Spare files kept, at most (an empty stream beyond that is removed).
SPARES_MAX = 64


class Spares:
    """A folder of empty files to rename into place, and the list of them."""

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

    def place(self, path: str) -> bool:
        """Put an empty spare file at `path` (replacing what is there); False if none is left."""
        while self._free:
            spare = self._free.pop()
            try:
                os.rename(spare, path)
                return True
            except FileNotFoundError:  # removed behind our back: try the next
                continue
        return False

    def give_back(self, path: str) -> None:
        """An ended attempt's stream file: if it is empty and no process has it open for
        writing, keep it as a spare (or remove it, when there are enough); else leave it."""
        if not _empty_and_unwritten(path):
            return
        if len(self._free) >= self.limit:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        self._count += 1
        spare = os.path.join(self.folder, str(self._count))
        try:
            os.rename(path, spare)
        except OSError:  # another file system, or gone: nothing to keep
            return
        self._free.append(spare)


def _empty_and_unwritten(path: str) -> bool:
    """True if `path` is an empty regular file that no process has open for writing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)  # a lease break must not kill us
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)  # EAGAIN if anyone has it open to write
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return os.fstat(fd).st_size == 0
    except OSError:
        return False
    finally:
        os.close(fd)

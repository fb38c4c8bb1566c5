"""Taking over a home: one process per home, and the orphans of its previous life killed.

A worker or ghost holds an exclusive lock on `HOME/lock` for its life.

A second `leoronic` started on the same home (say, `bash leoronic` typed twice) would take
the first one's task processes for orphans of a previous life and kill them, and share its
journal; it stops instead, before it touches anything. The lock is `flock(2)`: the kernel drops
it when the holder dies, SIGKILL included, so a restart after a crash is never blocked, and
task processes do not inherit it (the fd is close-on-exec).
"""

from __future__ import annotations

import fcntl
import logging
import os

from comrade.errors import UsageError
from comrade.executor import Paths, kill_orphans

log = logging.getLogger(__name__)


def take_home(paths: Paths) -> int:
    """Start-up of a worker or ghost, before anything touches the home: take its lock (returns
    the fd; keep it open), then kill the task processes its previous life left running."""
    fd = lock_home(paths.home)
    killed = kill_orphans(paths)
    if killed:
        log.warning("killed %d orphaned task process groups of a previous life", len(killed))
    return fd


def lock_home(home: str) -> int:
    """Take the home's lock for this process (returns its fd; keep it open), or UsageError
    naming the process that holds it."""
    path = os.path.join(home, "lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip()
        os.close(fd)
        raise UsageError(f"--home: {home} is in use by another leoronic process"
                         + (f" (pid {holder})" if holder.isdigit() else "")) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd

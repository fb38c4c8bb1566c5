"""Packing directories for transfer (get_all_files, get_files) with the stdlib tarfile."""

from __future__ import annotations

import io
import os
import tarfile

from comrade.errors import UsageError
from comrade.executor import workdir_task_id


def pack(root: str, *names: str) -> bytes:
    """A gzipped tar of `names` (relative to `root`), symlinks kept as links."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in names:
            path = os.path.join(root, name)
            if os.path.exists(path):
                tar.add(path, arcname=name)
    return buf.getvalue()


def unpack(data: bytes, dest: str) -> None:
    """Extract a pack into `dest`, refusing members that would land outside it."""
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")


def pack_work(work: str, what: str, task_id: str, owner: str) -> bytes:
    """Pack a node's whole work dir ("work") or one task's attempt dirs ("task")."""
    if what == "work":
        return pack(work, ".")
    if what == "task":
        dirs = sorted(d for d in os.listdir(work) if workdir_task_id(d) == task_id)
        if not dirs:
            raise UsageError(f"ID: no work dir of task {task_id!r} on {owner}")
        return pack(work, *dirs)
    raise UsageError(f"pack_dir: unknown {what!r}")

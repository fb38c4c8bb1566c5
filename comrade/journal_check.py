"""Checking pysyncobj's journal and snapshot before start, so a damaged one is refused clearly.

pysyncobj reads its journal without checks: a truncated or corrupted file makes it load garbage
or crash deep inside. We walk the same format first (header; records framed by their size
before and after; consecutive indexes) and unpickle the snapshot, and refuse to start with one
line saying what is wrong and how to rejoin from the other nodes.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct

from comrade import raftmend  # noqa: F401 - unpickling imports pysyncobj: undo what that does to socket
from comrade.errors import ClusterError

_NAME_SIZE, _VERSION_SIZE = 24, 8
_LAST_OFFSET_AT = _NAME_SIZE + _VERSION_SIZE + 4
_FIRST_RECORD = _NAME_SIZE + _VERSION_SIZE + 8
_APP = b"PYSYNCOBJ"


class JournalDamaged(ClusterError):
    """Raised when the journal or snapshot under $LEORONIC_HOME/raft cannot be trusted."""


def rejoin_hint(raft_dir: str) -> str:
    """How an operator rejoins a node whose Raft files are damaged."""
    return (f"to rejoin from the other nodes: mv {raft_dir} {raft_dir}.damaged, then start "
            "this node again with --peer HOST:PORT of a live node")


def check_journal(path: str) -> int:
    """Validate a pysyncobj journal file; return its record count. Raise JournalDamaged."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        data = f.read()
    raft_dir = os.path.dirname(path)

    def bad(why: str) -> JournalDamaged:
        return JournalDamaged(f"journal {path} is damaged ({why}); {rejoin_hint(raft_dir)}")

    if len(data) < _FIRST_RECORD:
        raise bad(f"only {len(data)} bytes, shorter than its header")
    if data[:_NAME_SIZE].rstrip(b"\0") != _APP:
        raise bad("not a pysyncobj journal header")
    (last,) = struct.unpack_from("<I", data, _LAST_OFFSET_AT)
    if last > len(data) or last < _FIRST_RECORD:
        raise bad(f"its end marker points at byte {last} of {len(data)}")
    offset, count, prev_idx = _FIRST_RECORD, 0, None
    while offset < last:
        if offset + 4 > last:
            raise bad(f"record {count + 1} at byte {offset} is cut off")
        (size,) = struct.unpack_from("<I", data, offset)
        end = offset + 4 + size
        if size < 16 or end + 4 > last:
            raise bad(f"record {count + 1} at byte {offset} has an impossible size {size}")
        (trailer,) = struct.unpack_from("<I", data, end)
        if trailer != size:
            raise bad(f"record {count + 1} at byte {offset} is corrupted (frame sizes differ)")
        idx, _term = struct.unpack_from("<QQ", data, offset + 4)
        if prev_idx is not None and idx != prev_idx + 1:
            raise bad(f"record {count + 1} has index {idx} after {prev_idx}")
        command = data[offset + 20 : end]
        why = _command_problem(command)
        if why:
            raise bad(f"record {count + 1} (index {idx}) {why}")
        prev_idx, offset, count = idx, end + 4, count + 1
    return count


_NO_OP, _PICKLED = 1, (0, 2, 3)  # pysyncobj _COMMAND_TYPE: REGULAR, NO_OP, MEMBERSHIP, VERSION


def _command_problem(command: bytes) -> str:
    """'' if a journal command looks whole, else what is wrong with it."""
    if not command:
        return "is empty"
    kind = command[0]
    if kind == _NO_OP:
        return ""
    if kind not in _PICKLED:
        return f"has an unknown command type {kind}"
    try:
        pickle.loads(command[1:])
    except Exception as exc:  # garbage in a record: say so rather than load it
        return f"does not decode ({type(exc).__name__})"
    return ""


def check_dump(path: str) -> None:
    """Validate pysyncobj's snapshot (gzip + pickle). Raise JournalDamaged."""
    if not os.path.exists(path):
        return
    try:
        with open(path, "rb") as f, gzip.GzipFile(fileobj=f) as g:
            pickle.load(g)
    except Exception as exc:  # any failure to read it means it cannot be trusted
        raise JournalDamaged(
            f"snapshot {path} is damaged ({type(exc).__name__}: {exc}); "
            f"{rejoin_hint(os.path.dirname(path))}"
        ) from None

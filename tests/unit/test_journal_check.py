"""The journal/snapshot check refuses damaged Raft files with a clear message."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import pytest
from pysyncobj.journal import FileJournal

from comrade.journal_check import JournalDamaged, check_dump, check_journal


def _journal(tmp_path, n: int = 5) -> str:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "journal")
    j = FileJournal(path)
    j.add(b"\x01", 1, 1)  # NO_OP
    for i in range(2, n + 1):
        j.add(b"\x00" + pickle.dumps((0, ([("heartbeat", "n1")], 1.0))), i, 1)
    j._destroy()
    return path


def _second() -> int:
    """Byte offset of the second record: header 40 + first record (4 + 16 + 1 + 4)."""
    return 40 + 25


def _size2(path: str) -> int:
    return struct.unpack_from("<I", open(path, "rb").read(), _second())[0]


def _flip(path: str, offset: int) -> None:
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_intact_journal_passes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert check_journal(_journal(tmp_path)) == 5


def test_missing_files_are_fine(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert check_journal(str(tmp_path / "none")) == 0
    check_dump(str(tmp_path / "none"))


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda p: _flip(p, 0), "not a pysyncobj journal header"),
        (lambda p: _flip(p, _second() + 4 + 2), "has index"),  # 2nd record's index
        (lambda p: _flip(p, _second() + 3), "impossible size"),  # 2nd record's leading size
        (lambda p: _flip(p, _second() + 4 + _size2(p) + 1), "frame sizes differ"),  # its trailer
        (lambda p: _flip(p, _second() + 4 + 16 + 3), "does not decode"),  # a pickle byte
        (lambda p: os.truncate(p, 30), "shorter than its header"),
        (lambda p: os.truncate(p, 120), "end marker points at byte"),
    ],
)
def test_damaged_journal_is_refused_with_a_hint(tmp_path, damage, expected) -> None:  # type: ignore[no-untyped-def]
    path = _journal(tmp_path)
    damage(path)
    with pytest.raises(JournalDamaged) as info:
        check_journal(path)
    message = str(info.value)
    assert expected in message
    assert "--peer" in message and "damaged" in message
    assert info.value.exit_code == 3


def test_damaged_snapshot_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "dump")
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb") as g:
        pickle.dump({"ok": 1}, g)
    check_dump(path)
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(JournalDamaged, match="snapshot .* is damaged"):
        check_dump(path)

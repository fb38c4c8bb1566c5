"""Spare output files: what is given back, what is kept, what is placed."""

from __future__ import annotations

import os
from typing import Any

from comrade.spares import Spares


def _file(path: str, data: bytes = b"") -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_an_empty_unwritten_file_is_kept_and_placed_for_the_next_attempt(tmp_path: Any) -> None:
    spares = Spares(str(tmp_path / "spare"))
    old = _file(str(tmp_path / "t.1.out"))
    spares.give_back(old)
    assert not os.path.exists(old) and len(spares) == 1
    new = str(tmp_path / "u.1.out")
    assert spares.place(new) and os.path.getsize(new) == 0
    assert len(spares) == 0 and os.listdir(tmp_path / "spare") == []
    assert not spares.place(str(tmp_path / "v.1.out")), "placed a spare it does not have"


def test_a_file_with_output_or_open_for_writing_stays_where_it_is(tmp_path: Any) -> None:
    spares = Spares(str(tmp_path / "spare"))
    full = _file(str(tmp_path / "full.1.out"), b"x")
    held = _file(str(tmp_path / "held.1.out"))
    with open(held, "ab"):  # a process that outlived its task still writes here
        spares.give_back(held)
    spares.give_back(full)
    spares.give_back(str(tmp_path / "missing.1.out"))
    assert os.path.exists(full) and os.path.exists(held) and len(spares) == 0


def test_beyond_the_limit_an_empty_file_is_removed(tmp_path: Any) -> None:
    spares = Spares(str(tmp_path / "spare"), limit=1)
    a, b = _file(str(tmp_path / "a.1.err")), _file(str(tmp_path / "b.1.err"))
    spares.give_back(a)
    spares.give_back(b)
    assert not os.path.exists(a) and not os.path.exists(b) and len(spares) == 1


def test_a_previous_lifes_spares_are_removed_at_start(tmp_path: Any) -> None:
    folder = tmp_path / "spare"
    folder.mkdir()
    _file(str(folder / "7"))
    spares = Spares(str(folder))
    assert os.listdir(folder) == [] and len(spares) == 0

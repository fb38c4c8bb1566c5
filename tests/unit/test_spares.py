"""Spare output files and work dirs: what is given back, what is kept, what is placed."""

from __future__ import annotations

import os
from typing import Any

from comrade.spares import SpareDirs, Spares, read_stream


def _file(path: str, data: bytes = b"") -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_an_empty_unwritten_file_is_kept_and_written_at_by_the_next_attempt(tmp_path: Any) -> None:
    folder = tmp_path / "spare"
    spares = Spares(str(folder))
    assert spares.take() is None, "took a spare it does not have"
    old = _file(str(tmp_path / "t.1.out"))
    spares.settle(old, old, 0)  # created at its own path (no spare was free), left empty
    assert not os.path.exists(old) and len(spares) == 1
    (kept,) = os.listdir(folder)
    at = spares.take()
    assert at == str(folder / kept) and len(spares) == 0 and spares.take() is None
    inode = os.stat(at).st_ino
    spares.settle(at, str(tmp_path / "u.1.out"), 0)  # the next attempt's, left empty too:
    assert os.stat(at).st_ino == inode and len(spares) == 1  # kept where it is, no rename
    assert not os.path.exists(tmp_path / "u.1.out")
    at = spares.take()
    assert at is not None
    _file(at, b"out\n")  # the attempt after that writes: its output goes where it belongs
    spares.settle(at, str(tmp_path / "v.1.out"), 4)
    with open(tmp_path / "v.1.out", "rb") as f:
        assert f.read() == b"out\n"
    assert os.stat(tmp_path / "v.1.out").st_ino == inode
    assert os.listdir(folder) == [] and len(spares) == 0


def test_a_file_with_output_or_open_for_writing_is_never_kept(tmp_path: Any) -> None:
    spares = Spares(str(tmp_path / "spare"))
    full = _file(str(tmp_path / "full.1.out"), b"x")
    held = _file(str(tmp_path / "held.1.out"))
    with open(held, "ab"):  # a process that outlived its task still writes here
        spares.settle(held, held, 0)
    spares.settle(full, full)  # size unknown: looked up
    spares.settle(str(tmp_path / "missing.1.out"), str(tmp_path / "missing.1.out"))
    assert os.path.exists(full) and os.path.exists(held) and len(spares) == 0
    empty = _file(str(tmp_path / "e.1.err"))
    spares.settle(empty, empty, 0)
    at = spares.take()
    assert at is not None
    with open(at, "ab"):  # a survivor holds the spare it wrote at: it becomes the attempt's
        spares.settle(at, str(tmp_path / "w.1.err"), 0)
    assert not os.path.exists(at) and os.path.exists(tmp_path / "w.1.err")
    assert len(spares) == 0 and spares.take() is None


def test_a_stream_is_read_once_for_its_tail_its_size_and_whether_it_is_a_spare(
        tmp_path: Any) -> None:
    big = _file(str(tmp_path / "big.1.out"), bytes(range(256)) * 40)  # 10,240 bytes
    assert read_stream(big, 1000) == ((bytes(range(256)) * 40)[-1000:], 10_240, False)
    assert read_stream(big, 20_000) == (bytes(range(256)) * 40, 10_240, False)
    empty = _file(str(tmp_path / "e.1.out"))
    assert read_stream(empty, 1000) == (b"", 0, True)
    with open(empty, "ab"):  # a process that outlived its task still has it open to write
        assert read_stream(empty, 1000) == (b"", 0, False)
    assert read_stream(str(tmp_path / "missing.1.out"), 1000) == (b"", 0, False)
    link = str(tmp_path / "link.1.out")  # a task put a link where its stream was: not followed
    os.symlink(big, link)
    assert read_stream(link, 1000) == (b"", 0, False)
    spares = Spares(str(tmp_path / "spare"))
    _, size, unwritten = read_stream(empty, 1000)
    spares.settle(empty, empty, size, unwritten)  # as found: kept without looking again
    assert len(spares) == 1 and not os.path.exists(empty)


def test_beyond_the_limit_an_empty_file_is_removed(tmp_path: Any) -> None:
    spares = Spares(str(tmp_path / "spare"), limit=1)
    a, b = _file(str(tmp_path / "a.1.err")), _file(str(tmp_path / "b.1.err"))
    spares.settle(a, a, 0)
    spares.settle(b, b, 0)
    assert not os.path.exists(a) and not os.path.exists(b) and len(spares) == 1


def test_a_previous_lifes_spares_are_removed_at_start(tmp_path: Any) -> None:
    folder = tmp_path / "spare"
    folder.mkdir()
    _file(str(folder / "7"))
    spares = Spares(str(folder))
    assert os.listdir(folder) == [] and len(spares) == 0


def test_an_empty_work_dir_is_set_aside_and_placed_only_after_a_clean_sweep(tmp_path: Any) -> None:
    dirs = SpareDirs(str(tmp_path / "spare-dirs"), str(tmp_path / "work"), batch=2)
    old = tmp_path / "work" / "t-a1"
    old.mkdir(parents=True)
    inode = os.stat(old).st_ino
    assert dirs.set_aside(str(old)) and not old.exists()
    assert len(dirs) == 0 and not dirs.place(str(tmp_path / "work" / "u-a1")), \
        "a dir no sweep has cleared was handed on"
    dirs.settle(clean=False)  # the sweep found a process of an ended task: keep waiting
    assert len(dirs) == 0
    dirs.settle(clean=True)
    new = tmp_path / "work" / "u-a1"
    assert len(dirs) == 1 and dirs.place(str(new))
    assert os.stat(new).st_ino == inode and os.listdir(new) == []
    assert os.listdir(tmp_path / "spare-dirs") == []


def test_a_work_dir_with_files_or_a_link_in_its_place_stays(tmp_path: Any) -> None:
    dirs = SpareDirs(str(tmp_path / "spare-dirs"), str(tmp_path / "work"))
    full = tmp_path / "work" / "full-a1"
    full.mkdir()
    _file(str(full / "result.txt"), b"x")
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "link-a1"
    link.symlink_to(tmp_path / "elsewhere")
    assert not dirs.set_aside(str(full)) and not dirs.set_aside(str(link))
    assert not dirs.set_aside(str(tmp_path / "missing-a1"))
    assert full.is_dir() and link.is_symlink() and (tmp_path / "elsewhere").is_dir()
    dirs.settle(clean=True)
    assert len(dirs) == 0


def test_an_empty_work_dir_of_another_mode_is_set_aside_but_removed_not_handed_on(
        tmp_path: Any) -> None:
    """The task ran `chmod 500 .` and left its dir empty: nothing in it to keep, and a later
    task must not get a dir it cannot write in."""
    dirs = SpareDirs(str(tmp_path / "spare-dirs"), str(tmp_path / "work"))
    locked = tmp_path / "work" / "locked-a1"
    locked.mkdir(mode=0o500)
    if dirs.set_aside(str(locked)):  # (a node that is not root cannot move it: it stays)
        assert not locked.exists()
    dirs.settle(clean=True)
    assert len(dirs) == 0 and os.listdir(tmp_path / "spare-dirs") == []
    assert not dirs.place(str(tmp_path / "work" / "next-a1"))


def test_a_dir_written_into_after_it_was_set_aside_is_removed_not_reused(tmp_path: Any) -> None:
    dirs = SpareDirs(str(tmp_path / "spare-dirs"), str(tmp_path / "work"))
    old = tmp_path / "work" / "t-a1"
    old.mkdir()
    assert dirs.set_aside(str(old))
    (spare,) = os.listdir(tmp_path / "spare-dirs")
    _file(str(tmp_path / "spare-dirs" / spare / "late.txt"), b"a survivor wrote this")
    dirs.settle(clean=True)
    assert len(dirs) == 0 and os.listdir(tmp_path / "spare-dirs") == []


def test_a_sweep_is_due_after_a_batch_with_none_free_and_placing_never_empties_a_full_dir(
        tmp_path: Any) -> None:
    dirs = SpareDirs(str(tmp_path / "spare-dirs"), str(tmp_path / "work"), batch=2, limit=3)
    work = tmp_path / "work"
    for name in ("a", "b", "c", "d"):
        (work / name).mkdir()
    assert dirs.set_aside(str(work / "a")) and not dirs.sweep_due()
    assert dirs.set_aside(str(work / "b")) and dirs.sweep_due()
    dirs.settle(clean=True)
    assert not dirs.sweep_due() and len(dirs) == 2
    assert dirs.set_aside(str(work / "c"))
    assert not dirs.set_aside(str(work / "d")), "set aside beyond the limit"
    stale = tmp_path / "stale-a1"  # left by a forgotten task with the same id
    stale.mkdir()
    _file(str(stale / "old.txt"), b"old")
    assert not dirs.place(str(stale)) and len(dirs) == 2
    assert os.listdir(stale) == ["old.txt"]


def test_a_previous_lifes_spare_dirs_are_removed_at_start(tmp_path: Any) -> None:
    folder = tmp_path / "spare-dirs"
    (folder / "3").mkdir(parents=True)
    _file(str(folder / "3" / "x"))
    dirs = SpareDirs(str(folder), str(tmp_path / "work"))
    assert os.listdir(folder) == [] and len(dirs) == 0

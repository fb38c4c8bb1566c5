"""The necessary-files field on the client: parsing, reading, hashing, errors."""

from __future__ import annotations

import builtins
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

import comrade.files as files_module
from comrade.files import (
    DEFAULT_MAX_FILE_BYTES,
    FileError,
    FileRef,
    LocalFile,
    parse_files_field,
    read_files_field,
)

MAX = DEFAULT_MAX_FILE_BYTES


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("", []),
        ("   ", []),
        (";;", []),
        ("a.txt", ["a.txt"]),
        (" a.txt ; in/b.csv ;", ["a.txt", "in/b.csv"]),
        ("a.txt;;b.txt", ["a.txt", "b.txt"]),
        ("\ta.txt\t", ["a.txt"]),
        ("with space.txt", ["with space.txt"]),
    ],
)
def test_parse_files_field(field: str, expected: list[str]) -> None:
    assert parse_files_field(field) == expected


@pytest.mark.parametrize("name", ["a\0b", "a\nb", "a\rb"])
def test_name_with_nul_or_newline(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileError) as info:
        read_files_field(f"ok.txt;{name}", MAX, cwd=str(tmp_path))
    assert str(info.value) == f"necessary file {name!r}: name must not contain NUL or newline"


def test_default_limit() -> None:
    assert DEFAULT_MAX_FILE_BYTES == 256 * 1024 * 1024


def test_happy_path_two_files(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "a.txt").write_bytes(b"alpha\n")
    (tmp_path / "in" / "b.csv").write_bytes(b"1,2,3\n")
    got = read_files_field(" a.txt ; in/b.csv ", MAX, cwd=str(tmp_path))
    assert got == [
        LocalFile(
            ref=FileRef("a.txt", hashlib.sha256(b"alpha\n").hexdigest(), 6),
            path=str(tmp_path / "a.txt"),
        ),
        LocalFile(
            ref=FileRef("in/b.csv", hashlib.sha256(b"1,2,3\n").hexdigest(), 6),
            path=str(tmp_path / "in" / "b.csv"),
        ),
    ]
    assert all(os.path.isabs(f.path) for f in got)


def test_empty_field_is_no_files(tmp_path: Path) -> None:
    assert read_files_field("", MAX, cwd=str(tmp_path)) == []


def test_absolute_path_and_default_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.txt").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    (rel,) = read_files_field("a.txt", MAX)
    (absolute,) = read_files_field(str(tmp_path / "a.txt"), MAX, cwd="/")
    assert rel.path == absolute.path == str(tmp_path / "a.txt")
    assert rel.ref.sha256 == absolute.ref.sha256
    assert absolute.ref.name == str(tmp_path / "a.txt")


def test_file_of_exactly_the_limit_is_fine(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    (got,) = read_files_field("a.bin", 10, cwd=str(tmp_path))
    assert got.ref.size == 10


def error_of(field: str, cwd: Path, max_bytes: int = MAX) -> str:
    with pytest.raises(FileError) as info:
        read_files_field(field, max_bytes, cwd=str(cwd))
    return str(info.value)


def test_missing(tmp_path: Path) -> None:
    assert error_of("nope.txt", tmp_path) == "necessary file 'nope.txt': no such file"


def test_missing_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"x")
    assert error_of("a.txt/b", tmp_path) == "necessary file 'a.txt/b': no such file"


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    assert error_of(" d ", tmp_path) == "necessary file 'd': is a directory"


def test_over_limit(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"x" * 11)
    assert error_of("big.bin", tmp_path, max_bytes=10) == (
        "necessary file 'big.bin': 11 bytes is over the limit of 10 bytes (LEORONIC_MAX_FILE_BYTES)"
    )


def test_listed_twice(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"x")
    assert error_of("a.txt; a.txt", tmp_path) == "necessary file 'a.txt': listed twice"


def test_unreadable_chmod(tmp_path: Path) -> None:
    """A mode-000 file. Root reads it anyway, so as root the check runs in a forked child
    that first drops to the unprivileged uid/gid 65534 (nobody), in a directory it may enter."""
    folder = Path(tempfile.mkdtemp(dir="/tmp")) if os.geteuid() == 0 else tmp_path
    try:
        folder.chmod(0o755)
        secret = folder / "secret.txt"
        secret.write_bytes(b"x")
        secret.chmod(0)
        assert unprivileged_error_of("secret.txt", folder) == (
            f"necessary file 'secret.txt': not readable ({os.strerror(13)})"
        )
    finally:
        if folder != tmp_path:
            shutil.rmtree(folder)


def unprivileged_error_of(field: str, cwd: Path) -> str:
    """`error_of`, in a child without root's rights when this process has them."""
    if os.geteuid() != 0:
        return error_of(field, cwd)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop the rights, check, write the message, leave at once
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                read_files_field(field, MAX, cwd=str(cwd))
                message = "no error"
            except FileError as exc:
                message = str(exc)
            os.write(w, message.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return message


def test_unreadable_open_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret.txt").write_bytes(b"x")

    def refuse(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith("secret.txt"):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(files_module, "open", refuse, raising=False)
    assert error_of("secret.txt", tmp_path) == (
        "necessary file 'secret.txt': not readable (Permission denied)"
    )


def test_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    assert error_of("pipe", tmp_path) == (
        "necessary file 'pipe': not readable (not a regular file)"
    )


def test_first_error_wins_in_field_order(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    assert error_of("missing.txt;d", tmp_path) == "necessary file 'missing.txt': no such file"

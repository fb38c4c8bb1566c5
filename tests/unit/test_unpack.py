"""Extracting a received pack of work dirs: nothing may land outside the destination, with
the stdlib's data filter where the Python has one (3.11.4+) and with Leoronic's own check of
the same rules where it has not (Debian 12's 3.11.2)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from comrade import packing


def pack(*members: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    buf.seek(0)
    return buf


def member(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644,
           link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    return info


@pytest.fixture(params=["stdlib filter", "own check"])
def filtered(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each test with the stdlib's data filter (if this Python has it) and without it."""
    if request.param == "own check":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile data filter")  # the other case still runs
    return str(request.param)


def test_files_dirs_and_links_inside_are_extracted(filtered: str, tmp_path: Path) -> None:
    packing.unpack_file(pack(
        (member("t1", tarfile.DIRTYPE, 0o755), b""),
        (member("t1/out", mode=0o4777), b"hello"),
        (member("t1/link", tarfile.SYMTYPE, link="out"), b""),
    ), str(tmp_path))
    assert (tmp_path / "t1" / "out").read_bytes() == b"hello"
    assert os.readlink(tmp_path / "t1" / "link") == "out"
    mode = stat.S_IMODE((tmp_path / "t1" / "out").stat().st_mode)
    assert not mode & (stat.S_ISUID | stat.S_IWGRP | stat.S_IWOTH), oct(mode)


@pytest.mark.parametrize("bad", [
    member("../escape"),
    member("t1/../../escape"),
    member("t1/up", tarfile.SYMTYPE, link="../../escape"),
    member("t1/abs", tarfile.SYMTYPE, link="/etc/passwd"),
    member("t1/hard", tarfile.LNKTYPE, link="../escape"),
    member("t1/fifo", tarfile.FIFOTYPE),
    member("t1/dev", tarfile.CHRTYPE),
], ids=lambda m: m.name)
def test_a_member_that_would_land_outside_or_is_a_device_is_refused(
        filtered: str, tmp_path: Path, bad: tarfile.TarInfo) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(tarfile.TarError):
        packing.unpack_file(pack((member("t1", tarfile.DIRTYPE, 0o755), b""), (bad, b"x")),
                            str(dest))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]
    assert not (dest / "t1" / bad.name.rsplit("/", 1)[-1]).exists()


def test_an_absolute_name_never_lands_at_that_path(filtered: str, tmp_path: Path) -> None:
    """The stdlib filter strips the leading slash; the own check refuses the member."""
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    try:
        packing.unpack_file(pack((member(str(outside)), b"x")), str(dest))
    except tarfile.TarError:
        assert filtered == "own check"
    else:
        assert (dest / str(outside).lstrip("/")).read_bytes() == b"x"
    assert not outside.exists()

"""Configuration objects: --home is resolved once, where the node starts, to an absolute and
canonical path: the executor changes directory around each task start (no path may depend on
the cwd), and a restarted node finds its orphans by a mark holding the home's path, so two
spellings of one home must give the same mark."""

from __future__ import annotations

import os
from typing import Any

import pytest

from comrade.config import MAX_DURATION_S, Config, parse_number, split_address
from comrade.errors import UsageError
from comrade.executor import Paths
from ghost.ghost import GhostConfig


def test_a_relative_or_symlinked_home_is_made_absolute_and_canonical(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    expected = os.path.realpath(real)
    for home in ("real", "link", str(tmp_path / "link"), "./link/"):
        assert Config(home=home).home == expected, home
        assert GhostConfig(home=home, cookie="c").home == expected, home
        assert Paths(home).work == os.path.join(expected, "work"), home


@pytest.mark.parametrize("option, field, value, expected", [
    ("--lease", "lease_s", -1.0, "more than 0; got -1"),
    ("--lease", "lease_s", 0.0, "more than 0; got 0"),
    ("--gc-every", "gc_every_s", 0.0, "more than 0; got 0"),
    ("--retention", "retention_s", -5.0, "0 or more; got -5"),
    ("--forget-after", "forget_after_s", float("nan"), "0 or more; got nan"),
    ("--file-gc", "file_gc_s", float("inf"), "0 or more; got inf"),
    ("--isolation-after", "isolation_s", -0.5, "0 or more; got -0.5"),
    ("--remove-after", "remove_after_s", -1.0, "0 or more; got -1"),
    ("--kill-grace", "kill_grace_s", -1.0, "0 or more; got -1"),
])
def test_bad_durations_are_refused_naming_the_option(option: str, field: str, value: float,
                                                      expected: str, tmp_path: Any) -> None:
    with pytest.raises(UsageError) as err:
        Config(home=str(tmp_path), cookie="c", **{field: value}).validate()
    assert str(err.value) == f"{option}: must be a number of seconds, {expected}"


def test_zero_durations_that_mean_at_once_are_accepted(tmp_path: Any) -> None:
    Config(home=str(tmp_path), cookie="c", retention_s=0, forget_after_s=0, file_gc_s=0,
           isolation_s=0, remove_after_s=0, kill_grace_s=0).validate()
    GhostConfig(home=str(tmp_path), cookie="c", retention_s=0, file_gc_s=0, kill_grace_s=0).validate()


def test_a_ghost_refuses_a_bad_kill_grace(tmp_path: Any) -> None:
    with pytest.raises(UsageError) as err:
        GhostConfig(home=str(tmp_path), cookie="c", kill_grace_s=float("nan")).validate()
    assert str(err.value) == "--kill-grace: must be a number of seconds, 0 or more; got nan"



@pytest.mark.parametrize("field", ["kill_grace_s", "lease_s", "retention_s", "forget_after_s"])
def test_durations_over_100_years_are_refused(field: str, tmp_path: Any) -> None:
    """1e308 s of --kill-grace was taken, and the timer of the first task stopped raised
    OverflowError in the worker."""
    with pytest.raises(UsageError, match="s is more than 100 years"):
        Config(home=str(tmp_path), cookie="c", **{field: 1e308}).validate()
    Config(home=str(tmp_path), cookie="c", **{field: MAX_DURATION_S}).validate()
    with pytest.raises(UsageError, match="--kill-grace: 1e\\+10 s is more than 100 years"):
        GhostConfig(home=str(tmp_path), cookie="c", kill_grace_s=1e10).validate()


@pytest.mark.parametrize("text, number", [
    ("5", 5.0), ("0.5", 0.5), (".5", 0.5), ("5.", 5.0), ("1e3", 1000.0), ("-1", -1.0),
    (" 2 ", 2.0), ("+3", 3.0), ("1e400", float("inf")),
    ("２", None), ("١", None), ("1_000", None), ("nan", None), ("inf", None), ("", None),
    ("0x10", None), ("1 2", None), ("e3", None), (".", None),
])
def test_numbers_are_ascii_digits_only(text: str, number: float | None) -> None:
    assert parse_number(text) == number


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:7341", ("127.0.0.1", 7341)), ("box-2.lan:1", ("box-2.lan", 1)),
    ("::1:7341", ("::1", 7341)), ("[::1]:7341", ("::1", 7341)),
    ("[fe80::1]:80", ("fe80::1", 80)),
])
def test_addresses_that_are_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert split_address(text, "LEORONIC_NODE") == expected


@pytest.mark.parametrize("text", [
    "127.0.0.1:7341:5", "::1", "host", ":7341", "host:", "host:0", "host:65536", "host:x",
    "a b:1", "a/b:1", "[host]:1", "[::1]", "host:１",
])
def test_addresses_that_are_not_host_and_port(text: str) -> None:
    with pytest.raises(UsageError) as err:
        split_address(text, "LEORONIC_NODE")
    assert str(err.value) == f"LEORONIC_NODE: {text!r} is not HOST:PORT"

def test_the_log_file_rotates(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from comrade import cli

    monkeypatch.setattr(cli, "LOG_BYTES", 1000)
    root = logging.getLogger()
    before = list(root.handlers)
    path = tmp_path / "node.log"
    try:
        cli._setup_logging(str(path))
        for i in range(200):
            logging.getLogger("leoronic.test").info("line %d of a long enough log message", i)
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler.close()
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["node.log"] + [f"node.log.{i}" for i in range(1, cli.LOG_BACKUPS + 1)]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    assert "line 199 " in path.read_text()

"""Configuration objects: --home is resolved once, where the node starts, to an absolute and
canonical path: the executor changes directory around each task start (no path may depend on
the cwd), and a restarted node finds its orphans by a mark holding the home's path, so two
spellings of one home must give the same mark."""

from __future__ import annotations

import os
from typing import Any

import pytest

from comrade.config import Config
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

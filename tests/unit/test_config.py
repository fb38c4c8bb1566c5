"""Configuration objects: a relative --home is resolved once, where the node starts (the
executor changes directory around each task start, so no path may depend on the cwd)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from comrade.config import Config
from comrade.executor import Paths
from ghost.ghost import GhostConfig


def test_a_relative_home_is_made_absolute(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    expected = os.path.join(str(tmp_path), "h")
    assert Config(home="h").home == expected
    assert GhostConfig(home="h", cookie="c").home == expected
    assert Paths("h").home == expected and Paths("h").work == os.path.join(expected, "work")

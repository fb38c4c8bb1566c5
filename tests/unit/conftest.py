"""Fixtures shared by the unit tests that run a real executor."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from comrade.executor import Paths


@pytest.fixture
def paths(tmp_path: Any) -> Iterator[Paths]:
    """A node home with its work and outputs folders; the test's working directory is put
    back afterwards (the executor enters work dirs around each spawn)."""
    p = Paths(str(tmp_path / "home"))
    for d in (p.work, p.outputs):
        os.makedirs(d)
    cwd = os.getcwd()
    try:
        yield p
    finally:
        os.chdir(cwd)

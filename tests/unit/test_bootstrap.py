"""`bash leoronic`'s install check, run against a copy of the script beside a stand-in venv whose
programs only record how they were called (no pip, no network)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "leoronic"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout: the real `leoronic` script, a pyproject.toml, and a venv of stand-ins."""
    shutil.copy(SCRIPT, tmp_path / "leoronic")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    for d in ("comrade", "ghost", "conditions"):
        (tmp_path / d).mkdir()
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("leoronic", "python"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp_path}/calls"\n')
        stub.chmod(0o755)
    return tmp_path


def run(checkout: Path, *args: str) -> list[str]:
    """Run `bash leoronic ARGS` from another directory; the stand-ins' calls, in order."""
    calls = checkout / "calls"
    calls.unlink(missing_ok=True)
    r = subprocess.run(["bash", str(checkout / "leoronic"), *args], cwd="/",
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "LEORONIC_PYTHON": str(checkout / ".venv/bin/python")})
    assert r.returncode == 0, r.stderr
    return calls.read_text().splitlines() if calls.exists() else []


def installs(calls: list[str]) -> bool:
    return any("pip install" in c for c in calls)


def test_install_runs_when_never_done_and_then_only_when_pyproject_changes(checkout: Path) -> None:
    first = run(checkout, "nodes")
    assert installs(first) and first[-1] == "leoronic nodes"
    assert run(checkout, "nodes") == ["leoronic nodes"]  # installed: straight to the command

    # Rewritten after the install but unchanged (a checkout did it): no install, and the
    # stamp is renewed, so the next command again starts no process to compare.
    stamp = checkout / ".venv" / ".leoronic-installed"
    now = time.time()
    os.utime(stamp, (now - 100, now - 100))
    os.utime(checkout / "pyproject.toml", (now - 50, now - 50))
    assert run(checkout, "wait", "a b") == ["leoronic wait a b"]
    assert stamp.stat().st_mtime > now - 50
    assert run(checkout, "nodes") == ["leoronic nodes"]

    (checkout / "pyproject.toml").write_text("[project]\nname = 'x'\nversion = '2'\n")
    os.utime(stamp, (now - 100, now - 100))
    changed = run(checkout, "nodes")
    assert installs(changed) and changed[-1] == "leoronic nodes"
    assert run(checkout, "nodes") == ["leoronic nodes"]


def test_the_script_finds_its_venv_when_run_by_a_relative_path(checkout: Path) -> None:
    run(checkout, "nodes")  # installed
    r = subprocess.run(["bash", "leoronic", "nodes"], cwd=checkout, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (checkout / "calls").read_text().splitlines()[-1] == "leoronic nodes"

"""What a `leoronic` command loads before it runs: every command pays for every import at
its start (bench.cli measures it), so what only some commands or only the worker need is
imported by those alone."""

from __future__ import annotations

import subprocess
import sys

from tests.cluster import REPO

#: Modules that `wait`, `get-queue`, `result` and the like never need: the task fields and
#: their conditions (commands that build tasks), logging (the worker and ghost, which log to
#: files), tarfile and json (two commands each).
NOT_AT_START = ("comrade.taskfields", "conditions", "logging", "tarfile", "json")


def _loaded_after(code: str) -> list[str]:
    probe = (f"import sys\n{code}\n"
             f"print(' '.join(m for m in {NOT_AT_START!r} if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_the_command_line_loads_no_module_only_some_commands_need() -> None:
    assert _loaded_after("import comrade.cli") == []


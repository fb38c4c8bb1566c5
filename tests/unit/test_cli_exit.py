"""The `leoronic` program skips the interpreter's teardown after a client command
(`comrade.cli.entry`): what it printed must still all arrive, and its exit code stay the same."""

from __future__ import annotations

import subprocess
from pathlib import Path

from comrade.taskfields import FORMAT_HELP

LEORONIC = Path(__file__).resolve().parents[2] / "leoronic"


def leoronic(*args: str, cookie: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "LEORONIC_RETRY_S": "0", "LEORONIC_NODE": "127.0.0.1:1"}
    if cookie is not None:  # the machine's own cookie may not exist (a fresh CI machine)
        env["LEORONIC_COOKIE"] = str(cookie)
    return subprocess.run(["bash", str(LEORONIC), *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_output_to_a_pipe_arrives_whole_before_the_fast_exit() -> None:
    # A pipe is block-buffered and os._exit drops what is buffered: every write must have been
    # flushed (click.echo flushes each one; `entry` flushes whatever else is left).
    r = leoronic("task-format")
    assert (r.returncode, r.stdout, r.stderr) == (0, FORMAT_HELP, "")


def test_errors_keep_their_line_and_exit_code(tmp_path: Path) -> None:
    cookie = tmp_path / "cookie"
    cookie.write_text("secret\n")
    r = leoronic("add-task", "--", "1024", "0", "1024", "true", "", "", "echo")
    assert r.returncode == 2 and r.stdout == "", r
    assert r.stderr.startswith("leoronic: CORES") and r.stderr.count("\n") == 1, r
    r = leoronic("get-queue", cookie=cookie)  # nothing listens on port 1
    assert r.returncode == 3 and r.stderr.startswith("leoronic: cannot reach node"), r
    r = leoronic("no-such-command")
    assert r.returncode == 2 and "no-such-command" in r.stderr, r

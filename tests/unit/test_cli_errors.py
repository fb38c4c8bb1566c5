"""A bad option or argument to any `leoronic` command is one line on stderr naming it, and
exit 2 (click's own three-line usage error is folded into that form); --help still works."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from comrade import cli


@pytest.mark.parametrize("args, line", [
    (["wait", "--timeout", "abc"],
     "leoronic: Invalid value for '--timeout': 'abc' is not a valid float. (see leoronic wait --help)"),
    (["--on-isolation", "x"],
     "leoronic: Invalid value for '--on-isolation': 'x' is not one of 'run', 'wait'. "
     "(see leoronic --help)"),
    (["ghost", "--zzz", "3"], "leoronic: No such option '--zzz'. (see leoronic ghost --help)"),
    (["result"], "leoronic: Missing argument 'TASK_ID'. (see leoronic result --help)"),
    (["no-such-command"], "leoronic: No such command 'no-such-command'. (see leoronic --help)"),
])
def test_bad_options_and_arguments_are_one_line(args: list[str], line: str) -> None:
    r = CliRunner().invoke(cli.main, args, prog_name="leoronic")
    assert r.exit_code == 2, r.output
    assert r.stdout == ""
    assert r.stderr.splitlines() == [line]


def test_help_still_prints_and_exits_0() -> None:
    r = CliRunner().invoke(cli.main, ["wait", "--help"], prog_name="leoronic")
    assert r.exit_code == 0 and r.stdout.startswith("Usage: leoronic wait"), r.output


@pytest.mark.parametrize("args, line", [
    (["del-task"], "leoronic: ID: give one or more task ids, or --state STATE"),
    (["hold", "t1", "--state", "queued"], "leoronic: --state: give task ids or --state, not both"),
    (["release"], "leoronic: ID: give one or more task ids, or --state STATE"),
    (["priority", "3"], "leoronic: ID: give one or more task ids, or --state STATE"),
    (["priority", "x", "t1"], "leoronic: PRIORITY: 'x' is not a whole number"),
    (["del-task", "--state", "deleted"],
     "leoronic: Invalid value for '--state': 'deleted' is not one of 'queued', 'running', 'done', "
     "'failed'. (see leoronic del-task --help)"),
])
def test_selecting_tasks_needs_ids_or_a_state_checked_before_any_cluster(
        args: list[str], line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEORONIC_COOKIE", "/nonexistent/cookie")  # never read: no cluster asked
    r = CliRunner().invoke(cli.main, args, prog_name="leoronic")
    assert (r.exit_code, r.stdout, r.stderr.splitlines()) == (2, "", [line]), r.output

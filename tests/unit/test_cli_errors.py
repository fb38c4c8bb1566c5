"""A bad option or argument to any `leoronic` command is one line on stderr naming it, and
exit 2 (click's own three-line usage error is folded into that form); --help still works."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from comrade import cli
from comrade.errors import UsageError


@pytest.mark.parametrize("args, line", [
    (["wait", "--timeout", "abc"],
     "leoronic: Invalid value for '--timeout': 'abc' is not a number of seconds (see leoronic wait --help)"),
    (["--on-isolation", "x"],
     "leoronic: Invalid value for '--on-isolation': 'x' is not one of 'run', 'wait'. "
     "(see leoronic --help)"),
    (["ghost", "--zzz", "3"], "leoronic: No such option '--zzz'. (see leoronic ghost --help)"),
    (["result"], "leoronic: Missing argument 'TASK_ID'. (see leoronic result --help)"),
    (["no-such-command"], "leoronic: No such command 'no-such-command'. (see leoronic --help)"),
    # A worker's option typed before a command would be dropped silently (the ghost started
    # in ~/.leoronic with --home given).
    (["--home", "/tmp/x", "ghost"], "leoronic: --home: an option of the worker (`leoronic` with "
     "no command); give a 'ghost' option after 'ghost' (see leoronic --help)"),
    (["--cores", "0", "nodes"], "leoronic: --cores: an option of the worker (`leoronic` with no "
     "command); give a 'nodes' option after 'nodes' (see leoronic --help)"),
    # `--peer "$PEER"` with PEER unset must not quietly mean "find a cluster another way".
    (["ghost", "--peer", ""], "leoronic: --peer: '' is not HOST:PORT"),
    (["ghost", "--no-discovery", "--peer", ""], "leoronic: --peer: '' is not HOST:PORT"),
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


@pytest.mark.parametrize("args, synced", [([], True), (["--no-sync-journal"], False)])
def test_the_worker_options_reach_its_config(args: list[str], synced: bool, tmp_path: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import logging
    import signal

    from comrade import node as node_module

    configs: list[Any] = []

    class Stub:
        def __init__(self, cfg: Any) -> None:
            configs.append(cfg)

        def start(self) -> None:
            raise UsageError("stub: not started")

        def stop(self, leave: bool = True) -> None:
            pass

    monkeypatch.setattr(node_module, "Node", Stub)
    monkeypatch.setenv("LEORONIC_COOKIE", str(tmp_path / "cookie"))
    handlers = list(logging.getLogger().handlers)
    signals = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        r = CliRunner().invoke(cli.main, ["--home", str(tmp_path / "home"), *args])
    finally:
        for sig, handler in signals.items():  # the worker's own handlers
            signal.signal(sig, handler)
        for handler in logging.getLogger().handlers:  # the worker's own logging set-up
            if handler not in handlers:
                logging.getLogger().removeHandler(handler)
                handler.close()
    assert r.exit_code == 2 and "stub: not started" in r.stderr, r.output
    assert [c.sync_journal for c in configs] == [synced]


@pytest.mark.parametrize("text, shown", [
    ("echo hi", "echo hi"),
    ("printf 'a\rb'", "printf 'a\\rb'"),  # a carriage return would overwrite the row
    ("echo \x1b[2Jgone", "echo \\x1b[2Jgone"),  # an escape sequence would clear the screen
    ("tab\there", "tab\\there"),
])
def test_commands_and_reasons_are_printed_with_control_characters_escaped(
        text: str, shown: str) -> None:
    assert cli.printable(text) == shown

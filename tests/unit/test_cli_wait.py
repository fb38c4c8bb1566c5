"""`leoronic wait`: asks again only about unfinished tasks, a task whose record was
forgotten between two looks (it finished, outcome lost) does not count as a success, and held
tasks are said, unless the worker is of a version that cannot tell."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from comrade import cli
from comrade.errors import RemoteError


class Scripted:
    """Answers `wait_tasks` from a script of states, recording what was asked; `held`: the
    held tasks (None: a worker without the request)."""

    def __init__(self, script: list[dict[str, tuple[str, int | None]]],
                 held: frozenset[str] | None = frozenset(), not_done: bool = True) -> None:
        self.script = script
        self.held = held
        self.not_done = not_done  # False: a worker without the request
        self.asked: list[Any] = []
        self.asked_held: list[list[str]] = []

    def __call__(self) -> Scripted:  # stands in for the Client class
        return self

    def call(self, method: str, ids: list[str] = (), timeout: float = 0.0) -> Any:  # type: ignore[assignment]
        if method == "not_done":
            if not self.not_done:
                raise RemoteError("UsageError", "unknown request 'not_done'", 2)
            self.asked.append("not_done")
            answer = self.script.pop(0)
            rest = {t: v for t, v in answer.items() if v[0] != "done"}
            return len(answer) - len(rest), rest
        if method == "held":
            self.asked_held.append(list(ids))
            if self.held is None:
                raise RemoteError("UsageError", "unknown request 'held'", 2)
            return [t for t in ids if t in self.held]
        assert method == "wait_tasks"
        self.asked.append(list(ids))
        answer = self.script.pop(0)
        return {t: answer[t] for t in (ids or answer)}


def test_only_unfinished_tasks_are_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    client = Scripted([
        {"a": ("done", 0), "b": ("running", None), "c": ("queued", None)},
        {"b": ("done", 0), "c": ("running", None)},
        {"c": ("done", 0)},
    ])
    monkeypatch.setattr(cli, "Client", client)
    r = CliRunner().invoke(cli.main, ["wait"])
    assert r.exit_code == 0, r.output
    assert client.asked == ["not_done", ["b", "c"], ["c"]]


def test_waiting_for_all_tasks_counts_those_done_without_listing_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every task: the first look counts the done ones (a month of history is a number, not a
    record each); the failed ones are still named, out of the total."""
    history = {f"old{i}": ("done", 0) for i in range(1000)}
    client = Scripted([{**history, "bad": ("failed", 3), "b": ("running", None)},
                       {"b": ("done", 0)}])
    monkeypatch.setattr(cli, "Client", client)
    r = CliRunner().invoke(cli.main, ["wait"])
    assert client.asked == ["not_done", ["b"]]
    assert r.exit_code == 1
    assert r.stderr.strip() == "leoronic: 1 of 1002 tasks did not succeed: bad"


def test_a_worker_without_not_done_is_asked_for_every_task(monkeypatch: pytest.MonkeyPatch) -> None:
    client = Scripted([
        {"a": ("done", 0), "b": ("running", None), "c": ("failed", 1)},
        {"b": ("done", 0)},
    ], not_done=False)
    monkeypatch.setattr(cli, "Client", client)
    r = CliRunner().invoke(cli.main, ["wait"])
    assert client.asked == [[], ["b"]]
    assert r.exit_code == 1
    assert r.stderr.strip() == "leoronic: 1 of 3 tasks did not succeed: c"


def test_a_task_forgotten_between_two_looks_is_not_a_success(monkeypatch: pytest.MonkeyPatch) -> None:
    client = Scripted([
        {"a": ("done", 0), "b": ("running", None)},
        {"b": ("unknown", None)},
    ])
    monkeypatch.setattr(cli, "Client", client)
    r = CliRunner().invoke(cli.main, ["wait", "a", "b"])
    assert r.exit_code == 1
    assert r.stderr.strip() == "leoronic: 1 of 2 tasks did not succeed: b"


def test_held_tasks_are_said_once_all_left_are_held(monkeypatch: pytest.MonkeyPatch) -> None:
    client = Scripted([
        {"a": ("running", None), "h": ("queued", None)},
        {"a": ("done", 0), "h": ("queued", None)},
        {"h": ("queued", None)},
        {"h": ("done", 0)},
    ], held=frozenset({"h"}))
    monkeypatch.setattr(cli, "Client", client)
    r = CliRunner().invoke(cli.main, ["wait", "a", "h"])
    assert r.exit_code == 0, r.output
    # Asked at the start, after each look where some were held; said once, not per look.
    assert client.asked_held == [["a", "h"], ["h"], ["h"]]
    assert r.stderr == ("leoronic wait: every task left is held (1): nothing starts them but "
                        "leoronic_release\n")


def test_a_worker_that_cannot_tell_held_tasks_still_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    client = Scripted([{"h": ("queued", None)}, {"h": ("queued", None)}], held=None)
    monkeypatch.setattr(cli, "Client", client)
    r = CliRunner().invoke(cli.main, ["wait", "--timeout", "0", "h"])
    assert r.exit_code == 5, r.output
    assert r.stderr == "leoronic: 1 of 1 tasks not finished after 0 s\n"

"""`leoronic wait`: asks again only about unfinished tasks, and a task whose record was
forgotten between two looks (it finished, outcome lost) does not count as a success."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from comrade import cli


class Scripted:
    """Answers `wait_tasks` from a script of states, recording what was asked."""

    def __init__(self, script: list[dict[str, tuple[str, int | None]]]) -> None:
        self.script = script
        self.asked: list[list[str]] = []

    def __call__(self) -> Scripted:  # stands in for the Client class
        return self

    def call(self, method: str, ids: list[str], timeout: float) -> Any:
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
    assert client.asked == [[], ["b", "c"], ["c"]]


def test_a_task_forgotten_between_two_looks_is_not_a_success(monkeypatch: pytest.MonkeyPatch) -> None:
    client = Scripted([
        {"a": ("done", 0), "b": ("running", None)},
        {"b": ("unknown", None)},
    ])
    monkeypatch.setattr(cli, "Client", client)
    r = CliRunner().invoke(cli.main, ["wait", "a", "b"])
    assert r.exit_code == 1
    assert r.stderr.strip() == "leoronic: 1 of 2 tasks did not succeed: b"

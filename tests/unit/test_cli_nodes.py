"""`leoronic nodes` while the cluster starts: before any node's join is applied there are no
rows, and the command says so instead of printing a bare header."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from comrade import cli, cli_nodes


class StartingClient:
    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        assert method == "nodes"
        return {"self": "n1", "leader": "", "nodes": [], "quorum": False}


def test_nodes_before_any_node_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_nodes, "Client", StartingClient)
    r = CliRunner().invoke(cli.main, ["nodes"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        "asked n1; leader none; quorum NO",
        "no node registered yet: the cluster is starting (or electing a leader)",
    ]

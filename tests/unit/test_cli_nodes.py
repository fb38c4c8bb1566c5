"""`leoronic nodes` while the cluster starts: before any node's join is applied there are no
rows, and the command says so instead of printing a bare header."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from comrade import cli, cli_nodes
from comrade.client import Client


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


def test_get_all_files_skips_a_node_whose_name_is_not_one_folder_name(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A node named before names were checked (`--name ../../x`) would have its work dir
    copied outside DEST: it is skipped and named (exit 3, as for a node not reached); the
    others are copied."""
    fetched: list[str] = []

    class Nodes:
        def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
            assert method == "nodes"
            return {"nodes": [{"name": "../../escape", "rpc": "127.0.0.1:9"},
                              {"name": "w1", "rpc": "127.0.0.1:10"}]}

    monkeypatch.setattr(cli, "Client", Nodes)
    monkeypatch.setattr(cli, "_receive", lambda client, rpc, where, *what: fetched.append(where))
    dest = tmp_path / "dest"
    r = CliRunner().invoke(cli.main, ["get-all-files", str(dest)])
    assert r.exit_code == 3, r.output
    assert fetched == [str(dest / "w1")]
    assert r.stdout.splitlines() == [f"w1: {dest / 'w1'}"]
    assert r.stderr.splitlines() == [
        "leoronic: node '../../escape': skipped, its name is not one safe folder name"]


@pytest.mark.parametrize("args, method, sent", [
    (["drain"], "drain", ("n2", True)),
    (["resume"], "drain", ("n2", False)),
    (["add-tag", "gpu"], "add_tag", ("n2", "gpu")),
    (["drain", "--node", "n3"], "drain", ("n3", True)),
])
def test_a_change_for_this_node_names_it(monkeypatch: pytest.MonkeyPatch, args: list[str],
                                         method: str, sent: tuple[Any, ...]) -> None:
    """Without --node, a change is for the node LEORONIC_NODE points at, and is sent with its
    name (asked of that node alone): sent as "this node" (''), the client's retry at another
    worker, after its own stopped answering, drained or tagged that worker instead."""
    calls: list[tuple[str, tuple[Any, ...]]] = []

    class Recording:
        retry_s = 7.5  # LEORONIC_RETRY_S: sent with every change, the node waits no longer
        change = Client.change

        def own_name(self) -> str:
            return "n2"

        def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
            calls.append((method, args))
            name = args[0]
            return {"node": name, "draining": method == "drain" and args[1], "running": []} \
                if method == "drain" else name
    monkeypatch.setattr(cli_nodes, "Client", Recording)
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 0, r.output
    assert calls == [(method, (*sent, 7.5))]


def test_a_del_tag_whose_retry_finds_the_tag_gone_succeeds_and_a_typo_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Removing a tag is made idempotent by checking first: a retry of a removal that was
    applied (the node answered "has no tag") is success; a tag the node never had is exit 2."""
    from comrade.errors import RemoteError
    calls: list[tuple[str, tuple[Any, ...]]] = []

    class Retried:
        retry_s = 7.5
        change = Client.change

        def own_name(self) -> str:
            return "n2"

        def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
            calls.append((method, args))
            if method == "nodes":
                return {"nodes": [{"name": "n2", "tags": ["gpu", "os-linux"]}]}
            assert method == "del_tag"
            raise RemoteError("UsageError", "TAG: node 'n2' has no tag 'gpu'", 2)
    monkeypatch.setattr(cli_nodes, "Client", Retried)
    r = CliRunner().invoke(cli.main, ["del-tag", "gpu"])
    assert (r.exit_code, r.output) == (0, "n2: -gpu\n")
    assert calls[-1] == ("del_tag", ("n2", "gpu", 7.5))
    r = CliRunner().invoke(cli.main, ["del-tag", "gpx"], prog_name="leoronic")
    assert r.exit_code == 2 and r.stderr == "leoronic: TAG: node 'n2' has no tag 'gpx'\n", r.output

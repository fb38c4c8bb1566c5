"""`leoronic` commands about nodes: list them (`nodes`), tag them, drain and resume them, forget them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click

from comrade.cli import (
    EXIT_NOT_FINISHED,
    SECONDS,
    check_timeout,
    fail,
    friendly,
    human_size,
    main,
    node_option,
)
from comrade.client import Client
from comrade.errors import RemoteError, UsageError


@main.command("nodes")
@friendly
def nodes() -> None:
    """Each node: address, Raft role, tags, offered and free memory/cores/disk, running tasks."""
    info = Client().call("nodes")
    click.echo(f"asked {info['self']}; leader {info['leader'] or 'none'}; "
               f"quorum {'yes' if info['quorum'] else 'NO'}")
    if info.get("isolated_since"):
        click.echo(f"{info['self']} is ISOLATED (no quorum) since {_when(info['isolated_since'])}: "
                   "running queued tasks from its own copy; results merge when the others return")
    rows = info["nodes"]
    if not rows:
        click.echo("no node registered yet: the cluster is starting (or electing a leader)")
    workers = [n for n in rows if n["kind"] != "ghost"]
    ghosts = [n for n in rows if n["kind"] == "ghost"]
    for n in workers:
        _print_node(n, "")
        for g in ghosts:
            if g["clairvoyant"] == n["name"]:
                _print_node(g, "    ")
    for g in ghosts:
        if g["clairvoyant"] not in {n["name"] for n in workers}:
            _print_node(g, "")


def _print_node(n: dict[str, Any], indent: str) -> None:
    off, free = n["offered"], n["free"]
    status = "up" if n["alive"] else f"UNREACHABLE since {_when(n['lost_since'])}"
    if n.get("draining"):
        status += ", draining (takes no new task)" if n["running"] else ", drained"
    role = f"ghost of {n['clairvoyant']}" if n["kind"] == "ghost" else n["role"]
    click.echo(f"{indent}{n['name']}  {n['rpc']}  {role}  {status}")
    click.echo(f"{indent}    cores {free.cores}/{off.cores} free   "
               f"memory {human_size(free.memory)}/{human_size(off.memory)} free   "
               f"disk {human_size(free.storage)}/{human_size(off.storage)} free")
    click.echo(f"{indent}    tags: {' '.join(n['tags']) or '-'}")
    click.echo(f"{indent}    running: {' '.join(n['running']) or '-'}")
    if n["note"]:
        click.echo(f"{indent}    note: {n['note']}")


def _when(ts: float | None) -> str:
    return "?" if ts is None else datetime.fromtimestamp(ts).strftime("%H:%M:%S")


@main.command("add-tag")
@click.argument("tag")
@click.option("--node", default=None, help="Node name (default: the node LEORONIC_NODE points at).")
@friendly
def add_tag(tag: str, node: str | None) -> None:
    """Tag a node; replicated, survives restarts."""
    from comrade import taskfields  # (not imported by every command)
    taskfields.validate_tags([tag], "TAG", whole=True)
    client = Client()
    name = client.change("add_tag", _named(client, node), tag)
    click.echo(f"{name}: +{tag}")


@main.command("del-tag")
@click.argument("tag")
@click.option("--node", default=None, help="Node name (default: the node LEORONIC_NODE points at).")
@friendly
def del_tag(tag: str, node: str | None) -> None:
    """Remove a tag from a node."""
    client = Client()
    name = _named(client, node)
    rows = {n["name"]: n for n in client.call("nodes")["nodes"]}
    if name in rows and tag not in rows[name]["tags"]:
        raise UsageError(f"TAG: node {name!r} has no tag {tag!r}")
    _change_once(client, f"has no tag {tag!r}", "del_tag", name, tag)
    click.echo(f"{name}: -{tag}")


@main.command("forget-node")
@click.argument("names", nargs=-1, required=True)
@friendly
def forget_node(names: Sequence[str]) -> None:
    """Drop the records of nodes that are down for good (not a Raft member any more)."""
    client = Client()
    known = {n["name"] for n in client.call("nodes")["nodes"]}
    for name in dict.fromkeys(names):
        if name not in known:
            raise UsageError(f"NAME: unknown node {name!r}")
        _change_once(client, f"unknown node {name!r}", "forget_node", name)
        click.echo(f"{name} forgotten")


def _change_once(client: Client, applied: str, method: str, *args: Any) -> None:
    """`client.change`, where a refusal saying `applied` (checked not to hold before) can only
    be a retry whose first try was applied (its answer lost with the connection): done."""
    try:
        client.change(method, *args)
    except RemoteError as exc:
        if applied not in str(exc):
            raise


@main.command("drain")
@click.option("--node", default=None, help="Node name (default: the node LEORONIC_NODE points at).")
@click.option("--wait", "wait_", is_flag=True,
              help="Then block until the node runs no task (for maintenance: stop it after).")
@click.option("--timeout", type=SECONDS, default=None,
              help="With --wait: give up after this many seconds (exit 5).")
@friendly
def drain(node: str | None, wait_: bool, timeout: float | None) -> None:
    """Give a node no new task; the tasks it runs go on, its claims not started yet go back to
    the queue. Replicated, kept across restarts until `resume`."""
    if timeout is not None and not wait_:
        raise UsageError("--timeout: only with --wait")
    check_timeout(timeout)
    client = Client()
    state = client.change("drain", _named(client, node), True)
    deadline = None if timeout is None else time.monotonic() + timeout
    while wait_ and state["draining"] and state["running"]:
        if deadline is not None and time.monotonic() > deadline:
            fail(f"{_drain_state(state)} after {abs(timeout or 0.0):g} s", EXIT_NOT_FINISHED)
        left = 5.0 if deadline is None else max(0.0, min(5.0, deadline - time.monotonic()))
        state = client.call("drained", state["node"], left)
    if not state["draining"]:
        fail(f"{state['node']}: resumed by someone else while draining", EXIT_NOT_FINISHED)
    click.echo(_drain_state(state))


def _drain_state(state: dict[str, Any]) -> str:
    running = state["running"]
    if not running:
        return f"{state['node']}: drained (runs no task)"
    more = f" and {len(running) - 10} more" if len(running) > 10 else ""
    return f"{state['node']}: draining, still running {len(running)}: {' '.join(running[:10])}{more}"


@main.command("resume")
@click.option("--node", default=None, help="Node name (default: the node LEORONIC_NODE points at).")
@friendly
def resume(node: str | None) -> None:
    """Let a drained (or draining) node take tasks again."""
    client = Client()
    state = client.change("drain", _named(client, node), False)
    click.echo(f"{state['node']}: taking tasks")


def _named(client: Client, node: str | None) -> str:
    """The node a change is for: --node, else the one LEORONIC_NODE points at, by name (sent
    as "this node", a retry at another worker changed that worker instead)."""
    return node_option(node) or client.own_name()

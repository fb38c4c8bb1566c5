"""`leoronic` commands that change tasks already queued: delete, priority, hold and release,
each taking task ids or `--state S` for every task in that state, with a line per task."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from comrade.cli import friendly, main, one_line
from comrade.client import Client
from comrade.errors import EXIT_USAGE, UsageError


def _selecting(*states: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """TASK_IDS, or `--state S` (repeatable, one of `states`) for every task in that state."""
    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.argument("task_ids", nargs=-1)(command)
        return click.option("--state", "states", multiple=True, type=click.Choice(states),
                            help="Every task in this state instead of IDs; repeatable.")(command)
    return decorate


def _chosen(task_ids: Sequence[str], states: Sequence[str],
            held: bool | None = None) -> tuple[Client, list[str]]:
    """A client, and the ids given or those of every task in `states` (held or not held only,
    if `held` is given); UsageError for neither or both, before reaching the cluster."""
    if task_ids and states:
        raise UsageError("--state: give task ids or --state, not both")
    if not task_ids and not states:
        raise UsageError("ID: give one or more task ids, or --state STATE")
    client = Client()
    if not states:
        return client, list(dict.fromkeys(task_ids))  # each once: one line per task
    return client, [row[0] for row in client.call("queue", list(states), "")
                    if held is None or row[-1] is held]


@main.command("del-task")
@_selecting("queued", "running", "done", "failed")
@friendly
def del_task(task_ids: Sequence[str], states: Sequence[str]) -> None:
    """Remove queued tasks, kill running ones, forget finished ones."""
    _report_each(*_chosen(task_ids, states), "delete", (), "deleted")


@main.command("priority", context_settings={"ignore_unknown_options": True})
@click.argument("priority")
@_selecting("queued", "running")
@friendly
def priority(priority: str, task_ids: Sequence[str], states: Sequence[str]) -> None:
    """Give tasks not finished yet a new PRIORITY: among ready tasks, higher starts first."""
    from comrade import taskfields  # (not imported by every command)
    rank = taskfields.parse_priority(priority, "PRIORITY")
    _report_each(*_chosen(task_ids, states), "priority", (rank,), f"priority {rank}")


@main.command("hold")
@_selecting("queued", "running")
@friendly
def hold(task_ids: Sequence[str], states: Sequence[str]) -> None:
    """Keep tasks from starting until `leoronic release`: a queued one stays queued, a running
    one is stopped and queued again (no retry used)."""
    _report_each(*_chosen(task_ids, states, held=False), "hold", (True,), "held")


@main.command("release")
@_selecting("queued")
@friendly
def release(task_ids: Sequence[str], states: Sequence[str]) -> None:
    """Let held tasks start again (`--state queued`: every held task)."""
    _report_each(*_chosen(task_ids, states, held=True), "hold", (False,), "released")


def _report_each(client: Client, task_ids: list[str], method: str, args: tuple[Any, ...],
                 done: str) -> None:
    """Apply a per-task change (`method` with the ids, then `args`): a line per task; exit 2
    if any was refused (each named)."""
    if not task_ids:
        click.echo("leoronic: no task to change: none is in that state", err=True)
        return
    lines, errors = [], []
    for task_id, ok, detail in client.change(method, task_ids, *args):
        if ok:
            lines.append(f"{task_id} {done}" + (f" ({detail})" if detail else ""))
        else:
            errors.append(f"leoronic: ID: {one_line(detail)}")
    if lines:
        click.echo("\n".join(lines))  # one write: a selection may be a million tasks
    if errors:
        click.echo("\n".join(errors), err=True)
        sys.exit(EXIT_USAGE)

"""A submit of many tasks cut off by a lost quorum: the user can see exactly what was queued
and resubmit exactly what may not have been (with the same ids, which is safe)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from comrade import cli
from comrade.client import Client
from comrade.errors import ClusterError
from comrade.taskfields import parse_fields, parse_task_file


class CutOff(Client):
    """A node that queues the first batch and loses its quorum during the second."""

    submits = 0
    cut: list[str] = []  # the ids of the batch whose outcome is unknown

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "check":
            return []
        assert method == "submit", method
        CutOff.submits += 1
        if CutOff.submits == 2:
            CutOff.cut = [s.task_id for s in args[0]]
        if CutOff.submits > 1:
            raise ClusterError("no quorum: no answer in time (no leader, or no majority reachable)")
        return [(s.task_id, True, "") for s in args[0]]


def test_the_queued_ids_are_printed_and_the_unsure_tasks_written_to_resubmit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cookie = tmp_path / "cookie"
    cookie.write_text("secret\n")
    cookie.chmod(0o600)
    monkeypatch.setenv("LEORONIC_COOKIE", str(cookie))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "Client", CutOff)
    CutOff.submits = 0
    lines = [f"1024 1 1024 true 'worker:tag x' '' 'echo \"task {i}\" > out-{i}.txt'"
             for i in range(120)]  # no ids: the client makes them
    (tmp_path / "tasks.txt").write_text("".join(line + "\n" for line in lines))
    r = CliRunner().invoke(cli.main, ["add-tasks-from-file", "tasks.txt"], prog_name="leoronic")
    assert r.exit_code == 3, r.output
    queued = r.stdout.split()
    assert len(queued) == 50 and len(set(queued)) == 50  # the first batch
    [message] = r.stderr.splitlines()
    assert message.startswith("leoronic: no quorum: ") and "50 tasks were queued" in message
    written = message.split("they are in ", 1)[1].split(",", 1)[0]
    assert written.startswith("leoronic-unsure-") and f"`leoronic_add_tasks_from_file {written}`" \
        in message
    unsure = [parse_fields(fields) for _n, fields in parse_task_file(
        (tmp_path / written).read_text())]
    assert len(unsure) == 70
    originals = [parse_fields(fields) for _n, fields in parse_task_file(
        "".join(line + "\n" for line in lines[50:]))]
    for got, typed in zip(unsure, originals, strict=True):
        assert (got.memory, got.cores, got.storage, got.concurrent, got.conditions, got.files,
                got.command) == (typed.memory, typed.cores, typed.storage, typed.concurrent,
                                 typed.conditions, typed.files, typed.command)
    assert [u.task_id for u in unsure] == CutOff.cut  # the ids they may be queued under

"""The isolated results file: every result a runner reports while a merge rewrites the file
is kept for the next merge (a chaos run lost one this way), and a merge that cannot reach
the cluster keeps them all."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from comrade import isolation as isolation_mod
from comrade.errors import ClusterError
from comrade.isolation import Isolation, load_results
from comrade.model import Outcome


def make(tmp_path: Path) -> Isolation:
    node = SimpleNamespace(cfg=SimpleNamespace(home=str(tmp_path)), name="n1",
                           wake=lambda: None)
    return Isolation(node)  # type: ignore[arg-type]


def outcome(t: float) -> Outcome:
    return Outcome(exit_code=0, start=t, end=t + 1)


def test_a_result_reported_while_the_file_is_rewritten_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    iso = make(tmp_path)
    iso._report("a", 1, outcome(1.0))
    iso._report("b", 1, outcome(2.0))
    proposed: list[Any] = []
    late: list[threading.Thread] = []
    real_replace = os.replace

    def replace_while_a_runner_reports(src: str, dst: str) -> None:
        # A runner ends just as the merge swaps the file in: give it every chance to write.
        t = threading.Thread(target=iso._report, args=("c", 1, outcome(3.0)))
        t.start()
        late.append(t)
        t.join(timeout=0.5)  # with the lock held by the merge it cannot finish here
        real_replace(src, dst)

    monkeypatch.setattr(isolation_mod.os, "replace", replace_while_a_runner_reports)
    assert iso.merge(proposed.extend) == 2
    late[0].join(timeout=10)
    assert not late[0].is_alive()
    monkeypatch.setattr(isolation_mod.os, "replace", real_replace)
    assert [tid for tid, _, _ in proposed[0][2]] == ["a", "b"]
    assert [tid for tid, _, _ in load_results(iso.path)] == ["c"]
    assert iso.merge(proposed.extend) == 1
    assert [tid for tid, _, _ in proposed[1][2]] == ["c"]
    assert load_results(iso.path) == []


def test_results_reported_during_the_proposal_wait_for_the_next_merge(tmp_path: Path) -> None:
    iso = make(tmp_path)
    iso._report("a", 1, outcome(1.0))

    def propose(ops: list[Any]) -> None:
        iso._report("b", 1, outcome(2.0))  # ends while the merge is on its way to the log
    assert iso.merge(propose) == 1
    assert [tid for tid, _, _ in load_results(iso.path)] == ["b"]


def test_a_merge_that_cannot_reach_the_cluster_keeps_every_result(tmp_path: Path) -> None:
    iso = make(tmp_path)
    for i in range(3):
        iso._report(f"t{i}", 1, outcome(time.time()))

    def unreachable(ops: list[Any]) -> None:
        raise ClusterError("no quorum")
    assert iso.merge(unreachable) == 0
    assert [tid for tid, _, _ in load_results(iso.path)] == ["t0", "t1", "t2"]

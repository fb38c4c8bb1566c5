"""The isolated results file: every result a runner reports while a merge rewrites the file
is kept for the next merge (a chaos run lost one this way), and a merge that cannot reach
the cluster keeps them all."""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from comrade import isolation as isolation_mod
from comrade.errors import ClusterError
from comrade.isolation import Isolation, load_results
from comrade.model import NodeInfo, Outcome, Resources, TaskSpec
from comrade.queue import Queue


def make(tmp_path: Path, queue: Queue | None = None) -> Isolation:
    """Isolated mode of a node "n1" whose replicated copy is `queue` (one life per call)."""
    node = SimpleNamespace(cfg=SimpleNamespace(home=str(tmp_path), isolation_s=15.0), name="n1",
                           wake=lambda: None, lock=threading.Lock(), _pending_finish={},
                           consumer=SimpleNamespace(queue=queue or Queue()))
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


def test_a_result_appended_after_a_torn_record_is_read(tmp_path: Path) -> None:
    """SIGKILL mid-write leaves part of a record at the end; the next life's results must not
    land behind it, where no reader reaches them (and a merge would delete them)."""
    iso = make(tmp_path)
    iso._report("a", 1, outcome(1.0))
    whole = pickle.dumps(("b", 2.0, outcome(2.0)))
    with open(iso.path, "ab") as f:
        f.write(whole[: len(whole) // 2])  # killed half way through
    assert [tid for tid, _, _ in load_results(iso.path)] == ["a"]
    again = make(tmp_path)  # the restarted node
    again._report("c", 1, outcome(3.0))
    assert [tid for tid, _, _ in load_results(again.path)] == ["a", "c"]
    proposed: list[Any] = []
    assert again.merge(proposed.extend) == 2
    assert load_results(again.path) == []


def test_isolated_again_a_node_does_not_rerun_what_it_ran_isolated_before(tmp_path: Path) -> None:
    """Results of an earlier isolated spell not merged yet (the node was killed, or the
    quorum was lost again first) count in the new spell's shadow queue."""
    queue = Queue()
    info = NodeInfo("n1", "worker", "n1:1", "n1:2", Resources(1 << 30, 2, 1 << 30), frozenset())
    for op in (("join", info), ("submit", TaskSpec("ran", 1, 1, 1, True, "", (), "true")),
               ("submit", TaskSpec("not-yet", 1, 1, 1, True, "", (), "true"))):
        assert queue.apply(op, 1.0).ok
    make(tmp_path, queue)._report("ran", 1, outcome(5.0))
    iso = make(tmp_path, queue)  # a later life
    iso.enter(10.0)
    assert iso.shadow is not None
    assert iso.shadow.tasks["ran"].state.value == "done"
    assert iso.shadow.tasks["not-yet"].state.value == "queued"
    assert queue.tasks["ran"].state.value == "queued"  # the replicated copy is not touched

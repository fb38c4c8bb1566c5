"""How a ghost matches what it runs with what the cluster says it runs (`Ghost._reconcile`).

A real `Ghost` (its executor and server on 127.0.0.1, never attached); its calls to the
clairvoyant are recorded instead of sent. The whole flow, with real processes, is in
tests/integration/test_ghosts.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from comrade.model import Outcome, TaskSpec
from ghost import ghost as ghost_module
from ghost.ghost import LOST_CLAIM, Ghost, GhostConfig
from tests.cluster import free_port_pair

Key = tuple[str, int]


@pytest.fixture
def ghost(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Ghost, list[Key]]]:
    """A ghost and the (task id, attempt) pairs it gave back, in order."""
    released: list[Key] = []

    def call(address: str, cookie: str, method: str, *args: Any, **kwargs: Any) -> bool:
        if method == "ghost_leave":  # the ghost stopping at the end
            return True
        assert method == "ghost_release", method
        name, task_id, attempt, reason = args
        assert (name, reason) == ("g1", LOST_CLAIM)
        released.append((task_id, attempt))
        return True

    monkeypatch.setattr(ghost_module.rpc, "call", call)
    g = unattached_ghost(tmp_path)
    try:
        yield g, released
    finally:
        g.stop()


def unattached_ghost(tmp_path: Any) -> Ghost:
    """A ghost named g1 (one core, 1 GiB) whose clairvoyant is an address nothing answers at."""
    g = Ghost(GhostConfig(home=str(tmp_path / "home"), cookie="secret", port=free_port_pair(),
                          bind="127.0.0.1", name="g1", cores=1, memory=1 << 30, storage=1 << 30))
    g.clairvoyant = "127.0.0.1:9"
    return g


def spec(task_id: str) -> TaskSpec:
    return TaskSpec(task_id, 1024, 1, 1024, True, "", (), "true")


def test_an_attempt_assigned_but_not_run_here_goes_back_after_two_answers(ghost: Any) -> None:
    g, released = ghost
    g._reconcile({("lost", 1)}, set())
    assert released == []  # one answer may predate the apply of a finish
    g._reconcile({("lost", 1)}, set())
    assert released == [("lost", 1)]


def test_what_runs_finished_or_just_arrived_here_never_goes_back(ghost: Any) -> None:
    g, released = ghost
    g.state.running[("running", 1)] = spec("running")
    g.state.finished.append(("ended", 1, Outcome(0, 1.0, 2.0, b"", b"", 0, 0)))
    assigned = {("running", 1), ("ended", 1), ("delivered", 1)}
    for _ in range(3):
        g._reconcile(assigned, {("delivered", 1)})
    assert released == []
    assert ("running", 1) in g.state.running  # and it was not killed


def test_an_attempt_unknown_in_answers_that_are_not_consecutive_stays(ghost: Any) -> None:
    g, released = ghost
    g._reconcile({("flicker", 1)}, set())
    g._reconcile(set(), set())
    g._reconcile({("flicker", 1)}, set())
    assert released == []
    g._reconcile({("flicker", 1)}, set())
    assert released == [("flicker", 1)]


def test_a_task_that_ends_while_it_is_being_taken_away_is_no_error(
        ghost: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor's thread reports the end between the pass's reading of what is stale and
    its taking the task out of `running` (the ghost's poll loop used to die of a KeyError)."""
    g, released = ghost
    g.state.running[("ending", 1)] = spec("ending")
    g.state.reserved = spec("ending").needs
    real = g.lock
    entered = [0]

    class EndsOnSecondEntry:
        """The ghost's lock; just before the pass takes it a second time, the task ends."""

        def __enter__(self) -> None:
            entered[0] += 1
            if entered[0] == 2:
                g._report("ending", 1, Outcome(0, 1.0, 2.0, b"", b"", 0, 0))
            real.__enter__()

        def __exit__(self, *exc: Any) -> None:
            real.__exit__(*exc)

    cancelled: list[Key] = []
    monkeypatch.setattr(g, "lock", EndsOnSecondEntry())
    monkeypatch.setattr(g.executor, "cancel", lambda key, why, stopped=None: cancelled.append(key))
    g._reconcile(set(), set())  # no longer assigned here
    assert entered[0] >= 2, "the pass no longer takes the lock twice: the test shows nothing"
    assert cancelled == [] and g.state.stopping == {} and g.state.running == {}
    assert [f[:2] for f in g.state.finished] == [("ending", 1)]
    assert g.state.reserved == spec("ending").needs - spec("ending").needs


def test_stored_files_are_not_collected_while_a_start_places_them(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A garbage collection that comes while a task's start has found its file in the store but
    not placed it yet leaves the file: removed there, the start failed (and the task went back
    to the queue). A collection with no start under way removes it."""
    monkeypatch.setattr(ghost_module.rpc, "call", lambda *a, **k: {})  # the clairvoyant: "tasks"
    g = unattached_ghost(tmp_path)
    try:
        sha = g.store.put_bytes(b"input data\n")
        later = time.time() + 2 * g.cfg.file_gc_s  # the stored file is long unused by then
        place = ghost_module.place_files

        def place_after_a_collection(*args: Any, **kwargs: Any) -> Any:
            g.collect_garbage(later)  # the collector thread, between `has` and placing
            return place(*args, **kwargs)
        monkeypatch.setattr(ghost_module, "place_files", place_after_a_collection)
        task = TaskSpec("t", 1024, 1, 1024, True, "", (("in.txt", sha, 11),), "cat in.txt",
                        rename=False)
        workdir = tmp_path / "work"
        workdir.mkdir()
        g._prepare(task, str(workdir))
        assert (workdir / "in.txt").read_bytes() == b"input data\n"
        g.collect_garbage(later)
        assert not g.store.has(sha)
    finally:
        g.stop()


def test_a_start_that_failed_while_the_clairvoyant_was_gone_is_released_later_not_failed(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clairvoyant died while the ghost was getting a task's files from it: the start
    failed and so did its release. The task never ran, so it must not be reported as ended
    (it was reported as exit 127, and failed for good); it is given back through the next
    clairvoyant that answers a poll, and meanwhile is not given back twice as unknown."""
    up = {"now": False}
    released: list[tuple[str, int, str]] = []

    def call(address: str, cookie: str, method: str, *args: Any, **kwargs: Any) -> bool:
        if method == "ghost_leave":
            return True
        assert method == "ghost_release", method
        if not up["now"]:
            raise ghost_module.ClusterError(f"node {address} hung up: connection refused")
        released.append((args[1], args[2], args[3]))
        return True
    monkeypatch.setattr(ghost_module.rpc, "call", call)
    g = unattached_ghost(tmp_path)
    try:
        g.state.running[("t", 1)] = TaskSpec("t", 1024, 1, 1024, True, "", (), "true")
        g._crashed("t", 1, "cannot start: node 127.0.0.1:9 hung up")
        assert g.state.finished == [] and ("t", 1) not in g.state.running
        assert released == []
        for _ in range(2):  # still assigned to it: not "unknown", so not given back as such
            g._reconcile({("t", 1)}, set())
        assert released == []
        up["now"] = True  # a poll went through, to the next clairvoyant
        g._release_pending()
        assert released == [("t", 1, "cannot start: node 127.0.0.1:9 hung up")]
        assert g.state.unreleased == []
    finally:
        g.stop()

"""A worker's full garbage collections: CPython's automatic ones are turned off, young ones
kept, and the worker's own run while it is idle (or hourly) and only with a queue small enough
for the pause to stay under the Raft election timeout."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from comrade import collector
from comrade.collector import FULL_EVERY_S, FULL_MAX_RECORDS, NEVER, FullCollections


@pytest.fixture
def taken_over(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    before = gc.get_threshold()
    monkeypatch.setattr(collector, "_taken_over", False)
    try:
        collector.take_over()
        yield
    finally:
        gc.set_threshold(*before)


def test_taking_over_keeps_young_collections_and_stops_automatic_full_ones(taken_over: None) -> None:
    young, older, full = gc.get_threshold()
    assert full == NEVER and young >= 1 and older >= 1
    assert collector.taken_over()
    # Young collections still run on their own: a cycle made now is collected without a call.
    class Cycle:
        pass
    before = gc.get_stats()[0]["collections"]
    for _ in range(10 * young):
        a, b = Cycle(), Cycle()
        a.other, b.other = b, a  # type: ignore[attr-defined]
    assert gc.get_stats()[0]["collections"] > before


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def collections(clock: Clock) -> tuple[FullCollections, list[float]]:
    ran: list[float] = []
    return FullCollections(clock=clock, collect=lambda: ran.append(clock.now)), ran


def test_an_idle_worker_with_a_small_queue_collects_at_each_tick(taken_over: None) -> None:
    clock = Clock()
    full, ran = collections(clock)
    assert full.maybe(10, idle=True) and full.maybe(FULL_MAX_RECORDS, idle=True)
    assert ran == [1000.0, 1000.0]


def test_a_busy_worker_collects_only_hourly(taken_over: None) -> None:
    clock = Clock()
    full, ran = collections(clock)
    clock.now += FULL_EVERY_S - 1
    assert not full.maybe(10, idle=False)
    clock.now += 1
    assert full.maybe(10, idle=False)
    clock.now += 60
    assert not full.maybe(10, idle=False)  # an hour from the last one
    assert ran == [1000.0 + FULL_EVERY_S]


def test_a_large_queue_is_never_collected_whole(taken_over: None) -> None:
    clock = Clock()
    full, ran = collections(clock)
    clock.now += 10 * FULL_EVERY_S
    assert not full.maybe(FULL_MAX_RECORDS + 1, idle=True)
    assert not full.maybe(FULL_MAX_RECORDS + 1, idle=False)
    assert ran == []


def test_a_process_that_did_not_take_over_leaves_collections_to_cpython(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "_taken_over", False)
    clock = Clock()
    full, ran = collections(clock)
    assert not full.maybe(10, idle=True) and ran == []

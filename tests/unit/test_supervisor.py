"""The restart policy: restarts within budget, escalation once past it, crashes ageing out."""

from __future__ import annotations

import logging

import pytest

from comrade.supervisor import RestartPolicy, Supervisor


class Clock:
    """A settable clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(max_restarts: int = 3, period_s: float = 60.0,
         now: float = 1000.0) -> tuple[Supervisor, Clock, list[str]]:
    """A supervisor on a fake clock, with the escalation messages it sends."""
    clock, calls = Clock(now), list[str]()
    sup = Supervisor(RestartPolicy(max_restarts, period_s), clock, calls.append)
    return sup, clock, calls


def test_default_policy() -> None:
    assert RestartPolicy() == RestartPolicy(max_restarts=5, period_s=60.0)


@pytest.mark.parametrize("max_restarts", [0, 1, 3, 5])
def test_restarts_allowed_up_to_max_then_escalate_once(max_restarts: int) -> None:
    sup, _, calls = make(max_restarts)
    for i in range(max_restarts):
        assert sup.child_failed(f"task t{i}", "boom") is True
    assert calls == [] and sup.escalated == ""
    assert sup.child_failed("task last attempt 2", "disk gone") is False
    assert calls == [sup.escalated]
    assert calls[0] == (f"{max_restarts + 1} crashes in 60 s, "
                        "last: task last attempt 2: disk gone")
    for _ in range(3):
        assert sup.child_failed("other", "again") is False
    assert len(calls) == 1 and "task last attempt 2" in sup.escalated


def test_crashes_spread_over_time_within_period_still_count() -> None:
    sup, clock, calls = make(max_restarts=2, period_s=60.0)
    for t in (0.0, 30.0):
        clock.now = 1000.0 + t
        assert sup.child_failed("c", "r")
    clock.now = 1059.0
    assert sup.child_failed("c", "r") is False
    assert len(calls) == 1 and calls[0].startswith("3 crashes in 60 s")


def test_old_crashes_age_out() -> None:
    sup, clock, calls = make(max_restarts=2, period_s=60.0)
    assert sup.child_failed("c", "r")  # t=1000
    clock.now = 1010.0
    assert sup.child_failed("c", "r")
    clock.now = 1061.0  # the first crash is now older than the period
    assert sup.child_failed("c", "r") is True
    clock.now = 1070.0  # exactly period_s after the second: still inside the window
    assert sup.child_failed("c", "r") is False
    assert len(calls) == 1


def test_many_slow_crashes_never_escalate() -> None:
    sup, clock, calls = make(max_restarts=1, period_s=10.0)
    for i in range(50):
        clock.now = 1000.0 + 11.0 * i
        assert sup.child_failed("slow", "r") is True
    assert calls == [] and sup.escalated == ""


def test_reset_forgets_crashes_and_escalation() -> None:
    sup, _, calls = make(max_restarts=1)
    sup.child_failed("c", "r")
    assert sup.child_failed("c", "r") is False
    sup.reset()
    assert sup.escalated == ""
    assert sup.child_failed("c", "r") is True
    assert sup.child_failed("c", "again") is False
    assert len(calls) == 2 and calls[1].endswith("last: c: again")


def test_crashes_are_logged_with_child_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    sup, _, _ = make(max_restarts=1)
    with caplog.at_level(logging.WARNING, logger="comrade.supervisor"):
        sup.child_failed("node actor", "KeyError: 'x'")
        sup.child_failed("task t1 attempt 3", "OSError: no space")
    warn, err = caplog.records
    assert warn.levelno == logging.WARNING and "node actor" in warn.getMessage()
    assert "KeyError: 'x'" in warn.getMessage()
    assert err.levelno == logging.ERROR
    assert "task t1 attempt 3: OSError: no space" in err.getMessage()


def test_stays_escalated_until_reset() -> None:
    sup, clock, calls = make(max_restarts=1, period_s=10.0)
    sup.child_failed("c", "r")
    assert sup.child_failed("c", "r") is False
    clock.now += 100.0
    assert sup.escalated
    assert sup.child_failed("c", "r") is False

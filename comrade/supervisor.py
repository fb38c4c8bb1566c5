"""Restart policy for actors, as data, like an OTP supervisor.

A child that crashes is restarted (or, for a task runner, its task is released back to the
queue) while it has crashed fewer than `max_restarts` times within `period_s`; past that the
supervisor escalates (the node stops claiming and says why). Every crash is logged with the
child's name and the reason.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    """At most `max_restarts` restarts within `period_s` seconds, then escalate."""

    max_restarts: int = 5
    period_s: float = 60.0


class Supervisor:
    """Counts crashes against a policy. `clock` returns seconds (monotonic)."""

    def __init__(
        self,
        policy: RestartPolicy,
        clock: Callable[[], float],
        on_escalate: Callable[[str], None],
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._on_escalate = on_escalate
        self._crashes: deque[float] = deque()
        self.escalated = ""

    def child_failed(self, child: str, reason: str) -> bool:
        """Record a crash; True if the child may be restarted, False once escalated."""
        now = self._clock()
        if self.escalated:
            log.error("child %s crashed (%s) after escalation", child, reason)
            return False
        self._crashes.append(now)
        while self._crashes and self._crashes[0] < now - self.policy.period_s:
            self._crashes.popleft()
        if len(self._crashes) > self.policy.max_restarts:
            if not self.escalated:
                self.escalated = (
                    f"{len(self._crashes)} crashes in {self.policy.period_s:.0f} s, "
                    f"last: {child}: {reason}"
                )
                log.error("supervisor escalates: %s", self.escalated)
                self._on_escalate(self.escalated)
            return False
        log.warning("child %s crashed (%s); restarting (%d/%d in %.0f s)", child, reason,
                    len(self._crashes), self.policy.max_restarts, self.policy.period_s)
        return True

    def reset(self) -> None:
        """Forget past crashes (after an operator fixed the cause)."""
        self._crashes.clear()
        self.escalated = ""

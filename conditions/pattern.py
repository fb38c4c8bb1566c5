"""The command patterns of `queue:all_with_cmd_done/ok REGEX`, run by RE2 (google-re2).

RE2 matches in time linear in the command whatever the pattern, where Python's `re`
backtracks: `(a+)+$` against a command of 40 `a`s and a `!` takes days. A condition is
evaluated on every replica, on its Raft thread, and again when a restarted worker replays its
journal, so one such pattern would stall the whole cluster for good. RE2's syntax is Python's
without backreferences and lookaround (and `$` matches only at the very end); a pattern RE2
refuses is refused at submit with RE2's reason.
"""

from __future__ import annotations

import functools
from typing import Any


class PatternError(ValueError):
    """RE2 refused a pattern; the message says why."""


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> Any:
    """The compiled pattern (with `.search(text)`), or PatternError. Compiled once."""
    import re2  # here: loading RE2 is about 1.5 ms of every `leoronic` command's start

    options = re2.Options()
    options.log_errors = False  # RE2 would log every refused pattern to stderr; the caller says it
    try:
        return re2.compile(pattern, options)
    except Exception as exc:  # noqa: BLE001 - re2's own error type, whose message is bytes
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise PatternError(str(reason)) from None

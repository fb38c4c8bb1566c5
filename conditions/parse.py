"""Parse and validate the condition string a user gives with a task.

A condition string is a ``;``-separated list of ``scope:predicate`` or
``scope:predicate ARGUMENT`` items, for example::

    queue:after_ok build-1; worker:tag gpu; worker:has_file data/in.csv

This module is pure: it does no I/O and imports nothing from the project but this package.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .pattern import PatternError, compile_pattern

__all__ = [
    "QUEUE_PREDICATES",
    "SCOPES",
    "WORKER_PREDICATES",
    "Condition",
    "ConditionError",
    "dependency_ids",
    "format_conditions",
    "parse",
    "validate_tag",
    "validate_task_id",
]

SCOPES: tuple[str, ...] = ("queue", "worker")
QUEUE_PREDICATES: tuple[str, ...] = (
    "is_first",
    "all_with_cmd_done",
    "all_with_cmd_ok",
    "after",
    "after_ok",
)
WORKER_PREDICATES: tuple[str, ...] = ("tag", "has_file")

# What each predicate's argument is, for the "needs an argument" message.
# A predicate missing from this table takes no argument.
_ARGUMENT_KIND: dict[str, str] = {
    "all_with_cmd_done": "a regular expression",
    "all_with_cmd_ok": "a regular expression",
    "after": "a task id",
    "after_ok": "a task id",
    "tag": "a tag",
    "has_file": "a file name",
}

# Predicates whose argument is one word: more than one space before it is forgiven. (A regular
# expression or a file name is kept exactly as written after the first space.)
_WORD_ARGUMENTS = frozenset({"after", "after_ok", "tag"})

_PREDICATES: dict[str, tuple[str, ...]] = {
    "queue": QUEUE_PREDICATES,
    "worker": WORKER_PREDICATES,
}

_TASK_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")  # any id a task may have (or once had)
# A new task's id: not "-x" (an option to every command), not "." or ".." (a path).
_NEW_TASK_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_MAX_TAG_LEN = 64


class ConditionError(ValueError):
    """A condition string, tag or task id is not valid; the message says why."""


@dataclass(frozen=True)
class Condition:
    """One parsed condition: ``scope:predicate [argument]``."""

    scope: str
    predicate: str
    argument: str | None = None

    def __str__(self) -> str:
        """Return the condition in the text form that :func:`parse` accepts."""
        head = f"{self.scope}:{self.predicate}"
        return head if self.argument is None else f"{head} {self.argument}"


def validate_task_id(task_id: str) -> str:
    """Return ``task_id`` unchanged if it is a valid task id, else raise ConditionError.

    A valid id is 1 to 128 characters from ``[A-Za-z0-9._-]``, not starting with ``.`` or
    ``-``.
    """
    if _NEW_TASK_ID_RE.fullmatch(task_id) is None:
        raise ConditionError(f"task id {task_id!r} is not valid {_NEW_TASK_ID_RULE}")
    return task_id


def validate_tag(tag: str) -> str:
    """Return ``tag`` unchanged if it is a valid worker tag, else raise ConditionError.

    A tag must be non-empty, at most 64 characters, and contain no whitespace,
    ``;`` or ``:`` (those would clash with the condition syntax).
    """
    reason = _tag_problem(tag)
    if reason is not None:
        raise ConditionError(f"tag '{tag}' is not valid: {reason}")
    return tag


def parse(text: str) -> tuple[Condition, ...]:
    """Parse a condition string into a tuple of conditions.

    Empty segments (an empty string, whitespace, ``;;``, a trailing ``;``) are
    skipped. Raises ConditionError, with the 1-based index of the offending
    condition among non-empty segments, if any condition is malformed.
    """
    bad = next((ch for ch in text if not ch.isprintable() and ch not in " \t\r\n"), None)
    if bad is not None:
        raise ConditionError(f"must not contain control characters (found {bad!r})")
    conditions: list[Condition] = []
    for segment in text.split(";"):
        stripped = segment.strip()
        if stripped:
            conditions.append(_parse_one(len(conditions) + 1, stripped))
    return tuple(conditions)


def format_conditions(conds: Iterable[Condition]) -> str:
    """Join conditions back into one string that :func:`parse` accepts."""
    return "; ".join(str(cond) for cond in conds)


def dependency_ids(conds: Iterable[Condition]) -> tuple[str, ...]:
    """Return the task ids named by ``queue:after``/``queue:after_ok``, in order.

    Each id appears once, at the position of its first mention.
    """
    seen: dict[str, None] = {}
    for cond in conds:
        if (
            cond.scope == "queue"
            and cond.predicate in ("after", "after_ok")
            and cond.argument is not None
        ):
            seen.setdefault(cond.argument, None)
    return tuple(seen)


_TASK_ID_RULE = "(letters, digits, '.', '_', '-'; at most 128)"
_NEW_TASK_ID_RULE = "(letters, digits, '.', '_', '-', not starting with '.' or '-'; at most 128)"


def _is_task_id(task_id: str) -> bool:
    """Tell whether ``task_id`` matches the task id rule."""
    return _TASK_ID_RE.fullmatch(task_id) is not None


def _tag_problem(tag: str) -> str | None:
    """Return why ``tag`` is not a valid tag, or None if it is valid."""
    if not tag:
        return "must not be empty"
    if any(ch.isspace() for ch in tag):
        return "must not contain spaces"
    if not tag.isprintable():
        return "must not contain control characters"
    if ";" in tag:
        return "must not contain ';'"
    if ":" in tag:
        return "must not contain ':'"
    if len(tag) > _MAX_TAG_LEN:
        return f"must be at most {_MAX_TAG_LEN} characters"
    return None


def _file_name_ok(name: str) -> bool:
    """Tell whether ``name`` is a relative path that stays inside a directory and names
    something in it (not the directory itself, no control characters: a newline passed)."""
    if not name or not name.isprintable() or name.startswith("/"):
        return False
    return ".." not in name.split("/") and posixpath.normpath(name) != "."


def _split_head(text: str) -> tuple[str, str | None]:
    """Split a stripped segment at its first whitespace into head and argument."""
    match = re.search(r"\s", text)
    if match is None:
        return text, None
    return text[: match.start()], text[match.end() :]


def _parse_one(index: int, text: str) -> Condition:
    """Parse one stripped, non-empty segment; ``index`` is used in error messages."""
    prefix = f"condition {index} '{text}': "
    head, argument = _split_head(text)
    scope, colon, predicate = head.partition(":")
    if not colon or scope not in _PREDICATES:
        raise ConditionError(
            f"{prefix}unknown scope '{scope}'; expected one of {', '.join(SCOPES)}"
        )
    allowed = _PREDICATES[scope]
    if predicate not in allowed:
        raise ConditionError(
            f"{prefix}unknown predicate '{predicate}'; expected one of {', '.join(allowed)}"
        )
    kind = _ARGUMENT_KIND.get(predicate)
    if kind is None:
        if argument is not None:
            raise ConditionError(f"{prefix}predicate '{predicate}' takes no argument")
        return Condition(scope, predicate, None)
    if argument is None:
        raise ConditionError(f"{prefix}predicate '{predicate}' needs an argument ({kind})")
    if predicate in _WORD_ARGUMENTS:  # a task id or tag never holds a space: more spaces
        argument = argument.lstrip()  # before it are a typo, not part of it
    _check_argument(prefix, predicate, argument)
    return Condition(scope, predicate, argument)


def _check_argument(prefix: str, predicate: str, argument: str) -> None:
    """Raise ConditionError (message starting with ``prefix``) if ``argument`` is bad."""
    if predicate in ("all_with_cmd_done", "all_with_cmd_ok"):
        try:
            compile_pattern(argument)
        except PatternError as exc:
            raise ConditionError(
                f"{prefix}invalid regular expression '{argument}': {exc}"
            ) from None
    elif predicate in ("after", "after_ok"):
        if not _is_task_id(argument):
            raise ConditionError(f"{prefix}task id '{argument}' is not valid {_TASK_ID_RULE}")
    elif predicate == "tag":
        reason = _tag_problem(argument)
        if reason == "must not contain spaces":
            raise ConditionError(f"{prefix}tag '{argument}' must not contain spaces")
        if reason is not None:
            raise ConditionError(f"{prefix}tag '{argument}' is not valid: {reason}")
    elif predicate == "has_file" and not _file_name_ok(argument):
        raise ConditionError(
            f"{prefix}file name '{argument}' must be a relative path inside the "
            "leoronic files directory (no '..', not absolute, not the directory itself, no "
            "control characters)"
        )

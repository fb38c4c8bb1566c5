"""Table-driven tests for conditions.parse."""

from __future__ import annotations

import pickle

import pytest

from conditions import (
    Condition,
    ConditionError,
    dependency_ids,
    format_conditions,
    parse,
    validate_tag,
    validate_task_id,
)

Q = "queue"
W = "worker"

VALID: list[tuple[str, tuple[Condition, ...]]] = [
    ("", ()),
    ("   ", ()),
    (";", ()),
    (" ; ;; ", ()),
    ("queue:is_first", (Condition(Q, "is_first", None),)),
    ("  queue:is_first  ", (Condition(Q, "is_first", None),)),
    ("queue:is_first;", (Condition(Q, "is_first", None),)),
    (";;queue:is_first;;", (Condition(Q, "is_first", None),)),
    ("queue:after a1", (Condition(Q, "after", "a1"),)),
    ("queue:after_ok build-1.2_x", (Condition(Q, "after_ok", "build-1.2_x"),)),
    ("queue:after " + "x" * 128, (Condition(Q, "after", "x" * 128),)),
    ("queue:all_with_cmd_done ^make", (Condition(Q, "all_with_cmd_done", "^make"),)),
    (
        "queue:all_with_cmd_ok python train.py --epochs \\d+",
        (Condition(Q, "all_with_cmd_ok", "python train.py --epochs \\d+"),),
    ),
    (
        "queue:all_with_cmd_done (a|b)*[x-z]{2,3}$ ",
        (Condition(Q, "all_with_cmd_done", "(a|b)*[x-z]{2,3}$"),),
    ),
    # Only the first space separates; the rest of a pattern or file name is kept exactly,
    ("queue:all_with_cmd_done  two", (Condition(Q, "all_with_cmd_done", " two"),)),
    ("worker:has_file  x", (Condition(W, "has_file", " x"),)),
    # but a task id or tag, which never holds a space, may follow more than one.
    ("queue:after_ok  a1", (Condition(Q, "after_ok", "a1"),)),
    ("queue:after \t a1", (Condition(Q, "after", "a1"),)),
    ("worker:tag   gpu", (Condition(W, "tag", "gpu"),)),
    ("queue:all_with_cmd_done a:b 'c'", (Condition(Q, "all_with_cmd_done", "a:b 'c'"),)),
    ("worker:tag gpu", (Condition(W, "tag", "gpu"),)),
    ("worker:tag " + "t" * 64, (Condition(W, "tag", "t" * 64),)),
    ("worker:has_file x.txt", (Condition(W, "has_file", "x.txt"),)),
    ("worker:has_file data/in put.csv", (Condition(W, "has_file", "data/in put.csv"),)),
    ("worker:has_file ./a/.../b", (Condition(W, "has_file", "./a/.../b"),)),
    ("worker:has_file a..b", (Condition(W, "has_file", "a..b"),)),
    ("queue:after\ta1", (Condition(Q, "after", "a1"),)),
    (
        " queue:after_ok a1 ; worker:tag gpu ;worker:has_file m.bin; queue:is_first ; ",
        (
            Condition(Q, "after_ok", "a1"),
            Condition(W, "tag", "gpu"),
            Condition(W, "has_file", "m.bin"),
            Condition(Q, "is_first", None),
        ),
    ),
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_parse_valid(text: str, expected: tuple[Condition, ...]) -> None:
    """Every valid form parses to the expected conditions."""
    assert parse(text) == expected


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_round_trip(text: str, expected: tuple[Condition, ...]) -> None:
    """str() of each condition, and format_conditions of all, parse back to the same."""
    conds = parse(text)
    for cond in conds:
        assert parse(str(cond)) == (cond,)
    assert parse(format_conditions(conds)) == conds


def _e(n: int, text: str, rest: str) -> str:
    """Build an expected error message for condition ``n`` with segment ``text``."""
    return f"condition {n} '{text}': {rest}"


SCOPE_TAIL = "; expected one of queue, worker"
QPRED_TAIL = "; expected one of is_first, all_with_cmd_done, all_with_cmd_ok, after, after_ok"
WPRED_TAIL = "; expected one of tag, has_file"
ID_TAIL = " is not valid (letters, digits, '.', '_', '-'; at most 128)"
FILE_TAIL = (" must be a relative path inside the leoronic files directory (no '..', not absolute, "
             "not the directory itself, no control characters)")


def _re_error(pattern: str) -> str:
    """Return the reason RE2 (google-re2, which runs the patterns) gives for ``pattern``."""
    import re2

    options = re2.Options()
    options.log_errors = False
    try:
        re2.compile(pattern, options)
    except Exception as exc:  # noqa: BLE001 - re2's error type; its message is bytes
        return bytes(exc.args[0]).decode()
    raise AssertionError(f"{pattern!r} compiled")


ERRORS: list[tuple[str, str]] = [
    ("foo", _e(1, "foo", "unknown scope 'foo'" + SCOPE_TAIL)),
    ("is_first", _e(1, "is_first", "unknown scope 'is_first'" + SCOPE_TAIL)),
    ("node:tag gpu", _e(1, "node:tag gpu", "unknown scope 'node'" + SCOPE_TAIL)),
    (":after a", _e(1, ":after a", "unknown scope ''" + SCOPE_TAIL)),
    ("Queue:is_first", _e(1, "Queue:is_first", "unknown scope 'Queue'" + SCOPE_TAIL)),
    ("queue after:x", _e(1, "queue after:x", "unknown scope 'queue'" + SCOPE_TAIL)),
    (
        "queue:is_first; bogus ; worker:tag x",
        _e(2, "bogus", "unknown scope 'bogus'" + SCOPE_TAIL),
    ),
    (
        ";; queue:is_first ;; ; queue:nope x",
        _e(2, "queue:nope x", "unknown predicate 'nope'" + QPRED_TAIL),
    ),
    ("queue:", _e(1, "queue:", "unknown predicate ''" + QPRED_TAIL)),
    ("queue:tag gpu", _e(1, "queue:tag gpu", "unknown predicate 'tag'" + QPRED_TAIL)),
    ("worker:after a1", _e(1, "worker:after a1", "unknown predicate 'after'" + WPRED_TAIL)),
    ("worker:", _e(1, "worker:", "unknown predicate ''" + WPRED_TAIL)),
    (
        "queue:all_with_cmd_done",
        _e(
            1,
            "queue:all_with_cmd_done",
            "predicate 'all_with_cmd_done' needs an argument (a regular expression)",
        ),
    ),
    (
        "queue:all_with_cmd_ok   ",
        _e(
            1,
            "queue:all_with_cmd_ok",
            "predicate 'all_with_cmd_ok' needs an argument (a regular expression)",
        ),
    ),
    (
        "queue:after",
        _e(1, "queue:after", "predicate 'after' needs an argument (a task id)"),
    ),
    (
        "queue:after_ok ;",
        _e(1, "queue:after_ok", "predicate 'after_ok' needs an argument (a task id)"),
    ),
    ("worker:tag", _e(1, "worker:tag", "predicate 'tag' needs an argument (a tag)")),
    (
        "worker:has_file",
        _e(1, "worker:has_file", "predicate 'has_file' needs an argument (a file name)"),
    ),
    (
        "queue:is_first now",
        _e(1, "queue:is_first now", "predicate 'is_first' takes no argument"),
    ),
    (
        "queue:all_with_cmd_done (",
        _e(
            1,
            "queue:all_with_cmd_done (",
            "invalid regular expression '(': " + _re_error("("),
        ),
    ),
    (
        "queue:all_with_cmd_ok a[b",
        _e(
            1,
            "queue:all_with_cmd_ok a[b",
            "invalid regular expression 'a[b': " + _re_error("a[b"),
        ),
    ),
    (
        "queue:all_with_cmd_done *x",
        _e(
            1,
            "queue:all_with_cmd_done *x",
            "invalid regular expression '*x': " + _re_error("*x"),
        ),
    ),
    (  # what RE2 cannot do in linear time: backreferences, lookaround
        r"queue:all_with_cmd_done (a)\1",
        _e(1, r"queue:all_with_cmd_done (a)\1",
           r"invalid regular expression '(a)\1': invalid escape sequence: \1"),
    ),
    (
        "queue:all_with_cmd_ok make(?!-test)",
        _e(1, "queue:all_with_cmd_ok make(?!-test)",
           "invalid regular expression 'make(?!-test)': invalid perl operator: (?!"),
    ),
    ("worker:tag a b", _e(1, "worker:tag a b", "tag 'a b' must not contain spaces")),
    ("worker:tag a\tb", _e(1, "worker:tag a\tb", "tag 'a\tb' must not contain spaces")),
    (
        "worker:tag a:b",
        _e(1, "worker:tag a:b", "tag 'a:b' is not valid: must not contain ':'"),
    ),
    (
        "worker:tag " + "t" * 65,
        _e(
            1,
            "worker:tag " + "t" * 65,
            "tag '" + "t" * 65 + "' is not valid: must be at most 64 characters",
        ),
    ),
    (
        "worker:has_file /etc/passwd",
        _e(1, "worker:has_file /etc/passwd", "file name '/etc/passwd'" + FILE_TAIL),
    ),
    ("worker:has_file ..", _e(1, "worker:has_file ..", "file name '..'" + FILE_TAIL)),
    ("worker:has_file ../x", _e(1, "worker:has_file ../x", "file name '../x'" + FILE_TAIL)),
    ("worker:has_file a/../b", _e(1, "worker:has_file a/../b", "file name 'a/../b'" + FILE_TAIL)),
    ("worker:has_file a/..", _e(1, "worker:has_file a/..", "file name 'a/..'" + FILE_TAIL)),
    ("worker:has_file .", _e(1, "worker:has_file .", "file name '.'" + FILE_TAIL)),
    ("worker:has_file ./", _e(1, "worker:has_file ./", "file name './'" + FILE_TAIL)),
    ("worker:has_file a\nb", _e(1, "worker:has_file a\nb", "file name 'a\nb'" + FILE_TAIL)),
    ("worker:has_file a\tb", _e(1, "worker:has_file a\tb", "file name 'a\tb'" + FILE_TAIL)),
    ("worker:has_file a\0b", "must not contain control characters (found '\\x00')"),
    ("queue:after x\x1b[2J", "must not contain control characters (found '\\x1b')"),
    ("worker:tag a\x7f", "must not contain control characters (found '\\x7f')"),
    ("queue:after a/b", _e(1, "queue:after a/b", "task id 'a/b'" + ID_TAIL)),
    ("queue:after_ok a b", _e(1, "queue:after_ok a b", "task id 'a b'" + ID_TAIL)),
    ("queue:after é", _e(1, "queue:after é", "task id 'é'" + ID_TAIL)),
    (
        "queue:after " + "x" * 129,
        _e(1, "queue:after " + "x" * 129, "task id '" + "x" * 129 + "'" + ID_TAIL),
    ),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_parse_errors(text: str, message: str) -> None:
    """Every malformed condition raises ConditionError with the exact message."""
    with pytest.raises(ConditionError) as info:
        parse(text)
    assert str(info.value) == message


def test_condition_error_is_value_error() -> None:
    """ConditionError is a ValueError, so generic handlers catch it."""
    assert issubclass(ConditionError, ValueError)


def test_condition_is_frozen_and_picklable() -> None:
    """Conditions are immutable, hashable and survive pickling."""
    conds = parse("queue:after_ok a1; worker:tag gpu; queue:is_first")
    assert pickle.loads(pickle.dumps(conds)) == conds
    assert len(set(conds)) == 3
    with pytest.raises(AttributeError):
        conds[0].argument = "b"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("queue:is_first; worker:tag gpu", ()),
        ("queue:after a1", ("a1",)),
        ("queue:after_ok b; queue:after a; worker:tag c", ("b", "a")),
        ("queue:after a; queue:after_ok a; queue:after b", ("a", "b")),
        ("queue:all_with_cmd_ok x; queue:after z", ("z",)),
    ],
)
def test_dependency_ids(text: str, expected: tuple[str, ...]) -> None:
    """dependency_ids lists after/after_ok ids in order, each once."""
    assert dependency_ids(parse(text)) == expected


@pytest.mark.parametrize("tag", ["gpu", "big-mem", "x86_64", "a.b", "T" * 64, "é"])
def test_validate_tag_ok(tag: str) -> None:
    """Valid tags are returned unchanged."""
    assert validate_tag(tag) == tag


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ("", "tag '' is not valid: must not be empty"),
        ("a b", "tag 'a b' is not valid: must not contain spaces"),
        (" gpu", "tag ' gpu' is not valid: must not contain spaces"),
        ("a\nb", "tag 'a\nb' is not valid: must not contain spaces"),
        ("a;b", "tag 'a;b' is not valid: must not contain ';'"),
        ("a:b", "tag 'a:b' is not valid: must not contain ':'"),
        ("t" * 65, "tag '" + "t" * 65 + "' is not valid: must be at most 64 characters"),
    ],
)
def test_validate_tag_errors(tag: str, message: str) -> None:
    """Invalid tags raise ConditionError with the exact message."""
    with pytest.raises(ConditionError) as info:
        validate_tag(tag)
    assert str(info.value) == message


@pytest.mark.parametrize("task_id", ["a", "a1", "A.b_c-d", "0", "x" * 128, "_x", "a..b", "a-"])
def test_validate_task_id_ok(task_id: str) -> None:
    """Valid task ids are returned unchanged."""
    assert validate_task_id(task_id) == task_id


@pytest.mark.parametrize("task_id", ["", "a b", "a/b", "a:b", "a;b", "é", "x" * 129, "a\n",
                                     "-x", ".", "..", ".hidden", "１"])
def test_validate_task_id_errors(task_id: str) -> None:
    """Invalid task ids raise ConditionError with the exact message: not "-x" (an option), not
    "." or ".." (a path), only ASCII."""
    with pytest.raises(ConditionError) as info:
        validate_task_id(task_id)
    assert str(info.value) == f"task id {task_id!r} is not valid (letters, digits, '.', '_', " \
        "'-', not starting with '.' or '-'; at most 128)"

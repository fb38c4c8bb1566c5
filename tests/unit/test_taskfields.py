"""Parsing the 7 task fields, byte units, tasks files and --tag values."""

from __future__ import annotations

import random
import re
import shlex
import subprocess
from collections.abc import Callable

import pytest

from comrade.errors import UsageError
from comrade.model import format_duration
from comrade.taskfields import (
    FIELDS,
    MAX_COMMAND_BYTES,
    MAX_CONDITIONS_BYTES,
    Fields,
    new_task_id,
    parse_bool,
    parse_bytes,
    parse_cores,
    parse_duration,
    parse_fields,
    parse_priority,
    parse_task_file,
    split_fields,
    validate_tags,
)

K, M, G, T = 1024, 1024**2, 1024**3, 1024**4
ID_RULE = "(letters, digits, '.', '_', '-', not starting with '.' or '-'; at most 128)"


def row(mem: str = "1024", cores: str = "1", storage: str = "1024", concurrent: str = "true",
        conditions: str = "", files: str = "", command: str = "echo hi",
        *extra: str) -> list[str]:
    """Seven fields (plus any extra), defaulting to a valid task."""
    return [mem, cores, storage, concurrent, conditions, files, command, *extra]


@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("1024", 1024), ("1K", K), ("1k", K), ("512M", 512 * M), ("2G", 2 * G),
    ("3T", 3 * T), ("2GiB", 2 * G), ("2gb", 2 * G), ("7B", 7), (" 512M ", 512 * M),
    ("99999999999999999999G", 99999999999999999999 * G),
    # A fraction with a unit, as leoronic_nodes shows sizes; a part of a byte is rounded up.
    ("1.5G", 3 * G // 2), (".5K", 512), ("0.1K", 103), ("2.0M", 2 * M), ("1.25GiB", 5 * G // 4),
])
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text, "MEM") == expected


@pytest.mark.parametrize("text", ["", "x", "-1", "1.5", "1.5B", "1.G", "1..5G", ".G",
                                  "1 G", "1P", "G", "1GG", "0x10", "1e3", "-1.5G"])
def test_parse_bytes_errors(text: str) -> None:
    msg = f"STORAGE: {text!r} is not a number of bytes (e.g. 1024, 512M, 1.5G)"
    with pytest.raises(UsageError, match=f"^{re.escape(msg)}$"):
        parse_bytes(text, "STORAGE")


@pytest.mark.parametrize("text, expected", [("1", 1), ("16", 16), (" 4 ", 4), ("007", 7)])
def test_parse_cores(text: str, expected: int) -> None:
    assert parse_cores(text) == expected


@pytest.mark.parametrize("text, msg", [
    ("0", "CORES: must be at least 1, got 0"),
    ("00", "CORES: must be at least 1, got 0"),
    ("-1", "CORES: '-1' is not a whole number of cores"),
    ("1.5", "CORES: '1.5' is not a whole number of cores"),
    ("two", "CORES: 'two' is not a whole number of cores"),
    ("", "CORES: '' is not a whole number of cores"),
    ("+2", "CORES: '+2' is not a whole number of cores"),
])
def test_parse_cores_errors(text: str, msg: str) -> None:
    with pytest.raises(UsageError, match=f"^{re.escape(msg)}$"):
        parse_cores(text)


@pytest.mark.parametrize("text, expected", [
    ("true", True), ("True", True), ("TRUE", True), (" true ", True),
    ("false", False), ("False", False), ("fAlSe", False),
])
def test_parse_bool(text: str, expected: bool) -> None:
    assert parse_bool(text) is expected


@pytest.mark.parametrize("text", ["yes", "1", "0", "", "t", "truee"])
def test_parse_bool_errors(text: str) -> None:
    msg = f"CONCURRENT: {text!r} is not true or false"
    with pytest.raises(UsageError, match=f"^{re.escape(msg)}$"):
        parse_bool(text)


# ----- parse_fields ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds, shown", [
    ("90", 90.0, "90s"), ("90s", 90.0, "90s"), (" 15m ", 900.0, "15m"), ("1.5h", 5400.0, "90m"),
    ("2d", 172800.0, "2d"), ("36h", 129600.0, "36h"), (".5", 0.5, "0.5s"), ("0", 0.0, "0s"),
    ("365d", 365 * 86400.0, "365d"),
])
def test_parse_and_show_durations(text: str, seconds: float, shown: str) -> None:
    assert parse_duration(text, "--time-limit") == seconds
    assert format_duration(seconds) == shown


@pytest.mark.parametrize("text, why", [
    ("", "is not a duration"), ("soon", "is not a duration"), ("-5", "is not a duration"),
    ("1e3", "is not a duration"), ("inf", "is not a duration"), ("nan", "is not a duration"),
    ("1 h", "is not a duration"), ("3M", "is not a duration"), ("2w", "is not a duration"),
    ("366d", "is more than a year"),
])
def test_parse_duration_errors(text: str, why: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_duration(text, "--time-limit")
    assert str(info.value) == f"--time-limit: {text!r} {why}" + (
        " (e.g. 90, 90s, 15m, 1.5h, 2d)" if why == "is not a duration" else "")


@pytest.mark.parametrize("text, priority", [
    ("0", 0), ("5", 5), ("-3", -3), ("+7", 7), (" 12 ", 12), ("2147483647", 2**31 - 1),
    ("-2147483648", -(2**31)),
])
def test_parse_priority(text: str, priority: int) -> None:
    assert parse_priority(text, "--priority") == priority


@pytest.mark.parametrize("text, message", [
    ("high", "'high' is not a whole number"), ("1.5", "'1.5' is not a whole number"),
    ("", "'' is not a whole number"), ("1e3", "'1e3' is not a whole number"),
    ("2147483648", "2147483648 is outside -2147483648 to 2147483647"),
    ("-2147483649", "-2147483649 is outside -2147483648 to 2147483647"),
])
def test_parse_priority_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_priority(text, "PRIORITY")
    assert str(info.value) == f"PRIORITY: {message}"


@pytest.mark.parametrize("args, expected", [
    (row("1024", "1", "1024", "true", "", "", "echo hi", "job-1"),
     Fields(1024, 1, 1024, True, "", "", "echo hi", "job-1")),
    (row("512M", "2", "1G", "False", "worker:tag gpu", "a.csv;b.csv", "wc -l a.csv", "x.y_z"),
     Fields(512 * M, 2, G, False, "worker:tag gpu", "a.csv;b.csv", "wc -l a.csv", "x.y_z")),
    (row("2G", "16", "0", "TRUE", "queue:after prep; queue:is_first", "", "make\nmake install",
         "A" * 128),
     Fields(2 * G, 16, 0, True, "queue:after prep; queue:is_first", "", "make\nmake install",
            "A" * 128)),
])
def test_parse_fields_valid(args: list[str], expected: Fields) -> None:
    assert parse_fields(args) == expected


def test_parse_fields_without_id_makes_a_random_one() -> None:
    a, b = parse_fields(row()), parse_fields(row())
    assert re.fullmatch(r"[0-9a-f]{12}", a.task_id) and a.task_id != b.task_id
    assert re.fullmatch(r"[0-9a-f]{12}", new_task_id())


FIELD_LIST = " ".join(FIELDS)


@pytest.mark.parametrize("args, msg", [
    (row("1x"), "MEM: '1x' is not a number of bytes (e.g. 1024, 512M, 1.5G)"),
    (row("-5"), "MEM: '-5' is not a number of bytes (e.g. 1024, 512M, 1.5G)"),
    (row(storage="lots"), "STORAGE: 'lots' is not a number of bytes (e.g. 1024, 512M, 1.5G)"),
    (row(cores="0"), "CORES: must be at least 1, got 0"),
    (row(cores="-2"), "CORES: '-2' is not a whole number of cores"),
    (row(cores="2.5"), "CORES: '2.5' is not a whole number of cores"),
    (row(concurrent="maybe"), "CONCURRENT: 'maybe' is not true or false"),
    (row(command=""), "COMMAND: empty; give the bash command(s) to run"),
    (row(command="  \n\t"), "COMMAND: empty; give the bash command(s) to run"),
    (row(command="echo \0"), "COMMAND: must not contain a NUL byte"),
    (row(command=":" + " " * (128 * 1024 - 1)),
     "COMMAND: 131072 bytes, but Linux passes at most 131071 bytes as the one argument of "
     "bash -c; put a longer script in a file and send it as a necessary file"),
    (row(command="echo " + "é" * 65534),  # counted in UTF-8 bytes, not characters
     "COMMAND: 131073 bytes, but Linux passes at most 131071 bytes as the one argument of "
     "bash -c; put a longer script in a file and send it as a necessary file"),
    (row()[:6], f"expected 7 fields ({FIELD_LIST}) and an optional ID, got 6"),
    (row("1", "1", "1", "true", "", "", "c", "id", "more"),
     f"expected 7 fields ({FIELD_LIST}) and an optional ID, got 9"),
    ([], f"expected 7 fields ({FIELD_LIST}) and an optional ID, got 0"),
    (row("1", "1", "1", "true", "", "", "c", "a b"), f"ID: task id 'a b' is not valid {ID_RULE}"),
    (row("1", "1", "1", "true", "", "", "c", ""), f"ID: task id '' is not valid {ID_RULE}"),
    (row("1", "1", "1", "true", "", "", "c", "-x"), f"ID: task id '-x' is not valid {ID_RULE}"),
    (row("1", "1", "1", "true", "", "", "c", ".."), f"ID: task id '..' is not valid {ID_RULE}"),
    (row("１", "1", "1", "true", "", "", "c"), "MEM: '１' is not a number of bytes (e.g. 1024, 512M, 1.5G)"),
    (row("1", "２", "1", "true", "", "", "c"), "CORES: '２' is not a whole number of cores"),
    (row("1", "1", "1", "true", "", "", "c", "x" * 129),
     f"ID: task id '{'x' * 129}' is not valid {ID_RULE}"),
    (row(conditions="foo"),
     "CONDITIONS: condition 1 'foo': unknown scope 'foo'; expected one of queue, worker"),
    (row(conditions="queue:after a;" * 4682),  # 14 bytes each: 65548
     "CONDITIONS: 65548 bytes, at most 65536 are taken; to wait for many tasks, match their "
     "commands with queue:all_with_cmd_done REGEX"),
    (row(conditions="queue:after"),
     "CONDITIONS: condition 1 'queue:after': predicate 'after' needs an argument (a task id)"),
    (row(conditions="worker:tag gpu; queue:nope"),
     "CONDITIONS: condition 2 'queue:nope': unknown predicate 'nope'; expected one of "
     "is_first, all_with_cmd_done, all_with_cmd_ok, after, after_ok"),
])
def test_parse_fields_errors(args: list[str], msg: str) -> None:
    with pytest.raises(UsageError, match=f"^{re.escape(msg)}$"):
        parse_fields(args)
    with pytest.raises(UsageError, match=f"^{re.escape('line 3: ' + msg)}$"):
        parse_fields(args, where="line 3: ")


def test_first_bad_field_is_reported() -> None:
    with pytest.raises(UsageError, match="^MEM: "):
        parse_fields(row("x", "0", "y", "maybe", "bad", "", ""))


def test_rows_with_the_same_resources_are_each_checked_whole() -> None:
    """The fields rows share are parsed once, but each row's own fields are checked, and a bad
    shared field is refused every time it comes, with that row's label."""
    assert parse_fields(row(command="echo a")).command == "echo a"
    with pytest.raises(UsageError, match="^line 2: COMMAND: empty"):
        parse_fields(row(command=" "), where="line 2: ")
    for n in (3, 4):
        with pytest.raises(UsageError, match=f"^line {n}: CONDITIONS: "):
            parse_fields(row(conditions="queue:nonsense"), where=f"line {n}: ")


# ----- tasks files ----------------------------------------------------------------------------

def test_parse_task_file_comments_blanks_and_quoting() -> None:
    text = (
        "# a comment\n"
        "\n"
        "   \n"
        '1024 1 1024 true "" "" "echo hello world"\n'
        "  # an indented comment\n"
        "512M 2 1G false 'queue:after t1; worker:tag gpu' 'a b.csv' 'echo \"#not a comment\"' t2\n"
        "1 1 1 true '' '' echo\\ escaped\\ space\r\n"
    )
    assert parse_task_file(text) == [
        (4, ["1024", "1", "1024", "true", "", "", "echo hello world"]),
        (6, ["512M", "2", "1G", "false", "queue:after t1; worker:tag gpu", "a b.csv",
             'echo "#not a comment"', "t2"]),
        (7, ["1", "1", "1", "true", "", "", "echo escaped space"]),
    ]



def test_parse_task_file_lines_end_only_at_newlines() -> None:
    """A form feed, vertical tab, NEL or U+2028 is part of its line, as in bash: the end of a
    comment holding one is no task, and a quoted command holding one is whole."""
    text = ('# 1 1 1 true "" "" "echo off" \x0b 1 1 1 true "" "" "echo commented" c1\n'
            "1 1 1 true '' '' 'printf \"a\x0cb\u2028c\x85d\"' t2\n"
            "# a\x0cb\n"
            "1 1 1 true '' '' 'echo last' t4")  # no newline at the end
    assert parse_task_file(text) == [
        (2, ["1", "1", "1", "true", "", "", 'printf "a\x0cb\u2028c\x85d"', "t2"]),
        (4, ["1", "1", "1", "true", "", "", "echo last", "t4"]),
    ]

def test_parse_task_file_rows_feed_parse_fields() -> None:
    rows = parse_task_file('1G 2 0 False "" "" "sleep 1" s1\n')
    assert parse_fields(rows[0][1], f"line {rows[0][0]}: ") == Fields(
        G, 2, 0, False, "", "", "sleep 1", "s1")


def test_parse_task_file_empty() -> None:
    assert parse_task_file("") == [] and parse_task_file("\n# x\n\n") == []


@pytest.mark.parametrize("text, line", [
    ('1 1 1 true "" "" "echo hi\n', 1),
    ("# ok\n\n1 1 1 true '' '' 'unbalanced\n", 3),
    ('1 1 1 true "" "" ok\n1 1 1 true "" "" "x\\"\n', 2),
])
def test_parse_task_file_unbalanced_quotes(text: str, line: int) -> None:
    msg = f"line {line}: cannot split into fields: No closing quotation"
    with pytest.raises(UsageError, match=f"^{re.escape(msg)}$"):
        parse_task_file(text)


# ----- tags -----------------------------------------------------------------------------------

@pytest.mark.parametrize("tags, expected", [
    ([], ()), (["gpu"], ("gpu",)), (["gpu", "fast"], ("gpu", "fast")),
    (["gpu fast", "big"], ("gpu", "fast", "big")), (["x" * 64], ("x" * 64,)),
    (["a.b-c_d/e"], ("a.b-c_d/e",)),
])
def test_validate_tags(tags: list[str], expected: tuple[str, ...]) -> None:
    assert validate_tags(tags) == expected


@pytest.mark.parametrize("tags, msg", [
    ([""], "--tag: empty tag"),
    (["  "], "--tag: empty tag"),
    (["ok", ""], "--tag: empty tag"),
    (["a;b"], "--tag: tag 'a;b' is not valid: must not contain ';'"),
    (["a:b"], "--tag: tag 'a:b' is not valid: must not contain ':'"),
    (["ok", "x" * 65], f"--tag: tag '{'x' * 65}' is not valid: must be at most 64 characters"),
])
def test_validate_tags_errors(tags: list[str], msg: str) -> None:
    with pytest.raises(UsageError, match=f"^{re.escape(msg)}$"):
        validate_tags(tags)


# ----- splitting a tasks-file line: exactly shlex.split ----------------------------------------

_ALPHABET = ["a", "b", " ", "\t", "'", '"', "\\", "#", "$", "é", "\r", "x y", '""', "''", ";"]


def _shlex_or_error(split: Callable[[str], list[str]], line: str) -> object:
    try:
        return split(line)
    except ValueError as exc:
        return ("error", str(exc))


def test_split_fields_is_shlex_split_on_random_lines() -> None:
    rng = random.Random(7)
    for _ in range(50000):
        line = "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 16)))
        assert _shlex_or_error(split_fields, line) == _shlex_or_error(
            lambda s: shlex.split(s, comments=False), line), repr(line)


@pytest.mark.parametrize("line, fields", [
    ('1024 1 1024 true "" "" "echo hi" t-1', ["1024", "1", "1024", "true", "", "", "echo hi", "t-1"]),
    ("1 1 1 false '' '' 'a \"b\" \\\\c'", ["1", "1", "1", "false", "", "", 'a "b" \\\\c']),
    ('x "a\\"b\\\\c\\$d" e\\ f', ["x", 'a"b\\c\\$d', "e f"]),
    ("  lead  and\ttabs  ", ["lead", "and", "tabs"]),
    ('ab"c d"\'e f\'g', ["abc de fg"]),
])
def test_split_fields_examples(line: str, fields: list[str]) -> None:
    assert split_fields(line) == fields == shlex.split(line, comments=False)


@pytest.mark.parametrize("line", ['a "open', "a 'open", "trailing \\"])
def test_split_fields_unbalanced_lines_raise_like_shlex(line: str) -> None:
    with pytest.raises(ValueError):
        split_fields(line)


def test_the_longest_command_bash_c_can_take_is_accepted_and_runs() -> None:
    command = ":" + " " * (MAX_COMMAND_BYTES - 1)
    assert parse_fields(row(command=command)).command == command
    assert subprocess.run(["bash", "-c", command]).returncode == 0
    with pytest.raises(OSError):  # one byte more: the reason for the limit
        subprocess.run(["bash", "-c", command + " "])


def test_the_limit_counts_a_commands_bytes_not_its_characters() -> None:
    """Fewer characters than the limit can still be too many bytes: `é` takes two."""
    assert parse_fields(row(command="é" * (MAX_COMMAND_BYTES // 2))).command
    with pytest.raises(UsageError, match=f"COMMAND: {2 * (MAX_COMMAND_BYTES // 2 + 1)} bytes"):
        parse_fields(row(command="é" * (MAX_COMMAND_BYTES // 2 + 1)))


def test_conditions_up_to_the_limit_are_taken() -> None:
    conditions = ("queue:after a;" * 4681).ljust(MAX_CONDITIONS_BYTES)  # 65534 bytes, then spaces
    assert len(conditions) == MAX_CONDITIONS_BYTES
    assert parse_fields(row(conditions=conditions)).conditions == conditions

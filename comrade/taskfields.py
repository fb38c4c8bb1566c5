"""Parsing the original's task format: MEM CORES STORAGE CONCURRENT CONDITIONS FILES COMMAND [ID].

Pure: no I/O. Every error is a UsageError whose one line names the field and the reason.
"""

from __future__ import annotations

import functools
import math
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

import conditions as cond
from comrade.errors import UsageError
from comrade.model import MAX_PRIORITY, MAX_TIME_LIMIT_S, MIN_PRIORITY

FIELDS = ("MEM", "CORES", "STORAGE", "CONCURRENT", "CONDITIONS", "FILES", "COMMAND")

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_BYTES_RE = re.compile(r"^(\d+|\d*\.\d+)([KMGT]?)(i?B)?$", re.IGNORECASE | re.ASCII)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd]?)", re.ASCII)


@dataclass(frozen=True)
class Fields:
    """A task as typed, validated; files not yet read."""

    memory: int
    cores: int
    storage: int
    concurrent: bool
    conditions: str
    files: str
    command: str
    task_id: str


def parse_bytes(text: str, field: str) -> int:
    """Bytes, optionally with K, M, G or T (powers of 1024): 1024, 512M, 2G, 1.5G (as
    `leoronic_nodes` shows sizes); a fraction of a byte is rounded up."""
    m = _BYTES_RE.match(text.strip())
    if not m or ("." in m.group(1) and not m.group(2)):
        raise UsageError(f"{field}: {text!r} is not a number of bytes (e.g. 1024, 512M, 1.5G)")
    number, unit = m.group(1), _UNITS[m.group(2).upper()]
    if "." not in number:  # the common case, exact without a Fraction (a fifth of the cost)
        return int(number) * unit
    from fractions import Fraction  # only here: its import is about 1.5 ms of a command's start

    return math.ceil(Fraction(number) * unit)


def parse_duration(text: str, field: str) -> float:
    """Seconds, as a number optionally followed by s, m, h or d: 90, 90s, 1.5h, 15m, 2d.
    0 means no limit; at most a year."""
    m = _DURATION_RE.fullmatch(text.strip())
    if not m:
        raise UsageError(f"{field}: {text!r} is not a duration (e.g. 90, 90s, 15m, 1.5h, 2d)")
    seconds = float(m.group(1)) * _SECONDS[m.group(2)]
    if seconds > MAX_TIME_LIMIT_S:
        raise UsageError(f"{field}: {text!r} is more than a year")
    return seconds


def parse_priority(text: str, field: str) -> int:
    """A task priority: a whole number, negative allowed, higher runs first."""
    if not re.fullmatch(r"[+-]?[0-9]+", text.strip()):
        raise UsageError(f"{field}: {text!r} is not a whole number")
    priority = int(text)
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise UsageError(f"{field}: {priority} is outside {MIN_PRIORITY} to {MAX_PRIORITY}")
    return priority


def parse_cores(text: str) -> int:
    """A whole number of cores, at least 1."""
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise UsageError(f"CORES: {text!r} is not a whole number of cores")
    cores = int(text)
    if cores <= 0:
        raise UsageError(f"CORES: must be at least 1, got {cores}")
    return cores


def parse_bool(text: str) -> bool:
    """true or false (any case)."""
    low = text.strip().lower()
    if low not in ("true", "false"):
        raise UsageError(f"CONCURRENT: {text!r} is not true or false")
    return low == "true"


def validate_tags(tags: Sequence[str], field: str = "--tag", whole: bool = False) -> tuple[str, ...]:
    """Check tags given on the command line (each may hold several, blank-separated, unless
    `whole`: then each is one tag); UsageError names `field` and the bad one."""
    out = []
    for tag in tags:
        if not tag.strip():
            raise UsageError(f"{field}: empty tag")
        for one in [tag] if whole else tag.split():
            try:
                out.append(cond.validate_tag(one))
            except cond.ConditionError as exc:
                raise UsageError(f"{field}: {exc}") from None
    return tuple(out)


def new_task_id() -> str:
    """A fresh random task id (12 hex digits; `uuid` would cost every command 2 ms of imports)."""
    return os.urandom(6).hex()


#: The longest COMMAND that can run: it is one argument of `bash -c`, and Linux refuses a single
#: argument (with its terminating NUL) longer than 128 KiB (MAX_ARG_STRLEN) with E2BIG.
MAX_COMMAND_BYTES = 128 * 1024 - 1


def command_problem(command: str) -> str:
    """'' if `command` can run as `bash -c COMMAND`, else the one-line reason (with COMMAND:)."""
    if not command.strip():
        return "COMMAND: empty; give the bash command(s) to run"
    if "\0" in command:
        return "COMMAND: must not contain a NUL byte"
    return command_too_long(command)


def command_too_long(command: str, task_id: str = "") -> str:
    """'' if `command` fits in one argument of `bash -c`, else the one-line reason."""
    return _too_long("COMMAND", command, MAX_COMMAND_BYTES, task_id, _COMMAND_LIMIT)


_COMMAND_LIMIT = (f"but Linux passes at most {MAX_COMMAND_BYTES} bytes as the one argument of "
                  "bash -c; put a longer script in a file and send it as a necessary file")


def _too_long(field: str, text: str, limit: int, task_id: str, rest: str) -> str:
    """'' if `text` has at most `limit` bytes in UTF-8, else `FIELD: [task ID has ]N bytes, rest`.
    (Checked for every task by the CLI, the node's check and its submit.)"""
    if len(text) * 4 <= limit:  # no character takes more than 4 bytes
        return ""
    size = len(text.encode("utf-8", "surrogateescape"))
    if size <= limit:
        return ""
    whose = f"task {task_id} has " if task_id else ""
    return f"{field}: {whose}{size} bytes, {rest}"


#: The longest CONDITIONS: it is kept in every replica's record of the task and re-read by the
#: scheduler. 64 KiB is about 3,800 `queue:after ID` dependencies; beyond that, name the tasks
#: to wait for by their command with `queue:all_with_cmd_done REGEX`.
MAX_CONDITIONS_BYTES = 64 * 1024


def conditions_too_long(conditions: str, task_id: str = "") -> str:
    """'' if `conditions` is within MAX_CONDITIONS_BYTES, else the one-line reason."""
    return _too_long("CONDITIONS", conditions, MAX_CONDITIONS_BYTES, task_id, _CONDITIONS_LIMIT)


_CONDITIONS_LIMIT = (f"at most {MAX_CONDITIONS_BYTES} are taken; to wait for many tasks, match "
                     "their commands with queue:all_with_cmd_done REGEX")


def parse_fields(args: Sequence[str], where: str = "") -> Fields:
    """Validate the 7 fields (and optional ID). `where` prefixes messages (e.g. 'line 3: ')."""
    try:
        if len(args) not in (7, 8):
            raise UsageError(
                f"expected 7 fields ({' '.join(FIELDS)}) and an optional ID, got {len(args)}"
            )
        memory, cores, storage, concurrent = _first_five(*args[:5])
        problem = command_problem(args[6])
        if problem:
            raise UsageError(problem)
        task_id = args[7] if len(args) == 8 else new_task_id()
        try:
            cond.validate_task_id(task_id)
        except cond.ConditionError as exc:
            raise UsageError(f"ID: {exc}") from None
        return Fields(memory, cores, storage, concurrent, args[4], args[5], args[6], task_id)
    except UsageError as exc:
        raise UsageError(f"{where}{exc}") from None


@functools.lru_cache(maxsize=256)
def _first_five(mem: str, cores: str, storage: str, concurrent: str, conditions: str
                ) -> tuple[int, int, int, bool]:
    """MEM, CORES, STORAGE and CONCURRENT parsed and CONDITIONS checked, in that order (the
    first bad one raises). Remembered: the lines of a tasks file mostly repeat these fields,
    and this is half the cost of checking a line (an error is not remembered)."""
    memory = parse_bytes(mem, "MEM")
    n_cores = parse_cores(cores)
    n_storage = parse_bytes(storage, "STORAGE")
    shared = parse_bool(concurrent)
    problem = conditions_too_long(conditions)
    if problem:
        raise UsageError(problem)
    try:
        cond.parse(conditions)
    except cond.ConditionError as exc:
        raise UsageError(f"CONDITIONS: {exc}") from None
    return memory, n_cores, n_storage, shared


_WS = " \t\r\n"  # shlex's whitespace
_PIECE = r"""[^ \t\r\n'"\\]+|'[^']*'|"(?:[^"\\]|\\.)*"|\\."""
_TOKEN = re.compile(f"(?:{_PIECE})+", re.S)
_PIECES = re.compile(r"""([^ \t\r\n'"\\]+)|'([^']*)'|"((?:[^"\\]|\\.)*)"|\\(.)""", re.S)
_DQ_ESCAPE = re.compile(r'\\(["\\])')
_SIMPLE = re.compile(r"""[^'"\\]*|"[^"\\]*"|'[^']*'""")
# A line whose every field is one bare word, one "..." without backslashes or one '...', each
# followed by whitespace or the end (most lines of most files): checked whole, then split by
# one findall, whose groups hold each field's text without its quotes.
_SIMPLE_LINE = re.compile(r"""[ \t\r\n]*(?:(?:[^ \t\r\n'"\\]+|"[^"\\]*"|'[^']*')(?:[ \t\r\n]+|\Z))*""")
_SIMPLE_FIELD = re.compile(r"""([^ \t\r\n'"\\]+)|"([^"\\]*)"|'([^']*)'""")


def split_fields(line: str) -> list[str]:
    """`shlex.split(line)`, exactly, but about five times faster for well-formed lines (a tasks
    file can have a million): a regular expression splits the line; anything it does not
    consume whole (an unclosed quote, a trailing backslash) goes to shlex, which decides and
    raises its own error. tests/unit/test_taskfields.py checks both agree."""
    if _SIMPLE_LINE.fullmatch(line):
        return [bare or double or single for bare, double, single in _SIMPLE_FIELD.findall(line)]
    fields: list[str] = []
    pos, end = 0, len(line)
    while True:
        while pos < end and line[pos] in _WS:
            pos += 1
        if pos == end:
            return fields
        m = _TOKEN.match(line, pos)
        if m is None or (m.end() < end and line[m.end()] not in _WS):
            return shlex.split(line, comments=False)
        token = m.group()
        if _SIMPLE.fullmatch(token):  # most fields: bare, or one "..." or '...' without escapes
            fields.append(token[1:-1] if token[0] in "'\"" else token)
        else:
            fields.append("".join(_unquote(p) for p in _PIECES.finditer(token)))
        pos = m.end()


def _unquote(piece: re.Match[str]) -> str:
    bare, single, double, escaped = piece.groups()
    if bare is not None:
        return bare
    if single is not None:
        return single
    if double is not None:  # inside "...", a backslash escapes only " and itself
        return _DQ_ESCAPE.sub(r"\1", double)
    return escaped


def parse_task_file(text: str) -> list[tuple[int, list[str]]]:
    """Split a tasks file into (line number, fields); `#` comments and blank lines skipped.
    Lines end at '\\n' (or '\\r\\n') only, as bash reads them: str.splitlines also splits at
    '\\v', '\\f', '\\x1c'-'\\x1e', '\\x85' and U+2028, which queued the end of a comment as a
    task and cut quoted commands holding one."""
    rows = []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the last line's newline
    for number, line in enumerate(lines, start=1):
        if line.endswith("\r"):
            line = line[:-1]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            rows.append((number, split_fields(line)))
        except ValueError as exc:
            raise UsageError(f"line {number}: cannot split into fields: {exc}") from None
    return rows


FORMAT_HELP = """\
A task is 7 fields, exactly the original Leoronic's format, and an optional 8th:

  MEM         free memory the task needs, bytes (1024, 512M, 1.5G: K/M/G/T are powers of 1024)
  CORES       cores the task needs, a whole number >= 1
  STORAGE     free disk the task needs in its work dir, bytes (necessary files come on top)
  CONCURRENT  true: may share its node with other tasks; false: runs alone on its node
  CONDITIONS  ';'-separated conditions that must all hold, or "" (see below)
  FILES       ';'-separated files on this machine the task needs, or ""; each is shipped,
              placed in the task's work dir under a unique name, and the command rewritten
  COMMAND     the bash command(s), run with bash -c in a fresh work dir
  ID          optional task id (letters, digits, . _ -); default: a random one. Submitting
              the same task with the same id again is a no-op, so retries are safe.

Conditions:
  queue:is_first                  every task submitted before it has finished
  queue:all_with_cmd_done REGEX   every earlier task whose command matches REGEX has finished
  queue:all_with_cmd_ok REGEX     ... and all of them succeeded (else this task fails)
  queue:after ID                  task ID has finished (any outcome)
  queue:after_ok ID               task ID succeeded (else this task fails)
  worker:tag TAG                  run only on a node with tag TAG
  worker:has_file NAME            run only on a node with NAME in $LEORONIC_HOME/files/

Options, for every task a command queues (as environment variables for leoronic_add_task):
  LEORONIC_RETRIES=N          extra attempts after a non-zero exit or a time limit (default 0)
  LEORONIC_TIME_LIMIT=15m     stop each attempt after 90, 90s, 15m, 1.5h or 2d: SIGTERM to its
                              process group, SIGKILL the node's --kill-grace (default 5 s)
                              later (default 0: no limit)
  LEORONIC_PRIORITY=N         among waiting tasks a higher one starts first (default 0;
                              negative allowed); change it later with leoronic_priority
  LEORONIC_HOLD=1             queue on hold: it starts after leoronic_release
  LEORONIC_NO_RENAME=1        keep necessary files' original names

Examples (the second waits for a node tagged has_gpu; the third, for a task with id prep,
and ships ./data.csv from where it is typed):
  leoronic_add_task 1024 1 1024 false "" "" "echo hello world"
  leoronic_add_task 512M 2 1G true "worker:tag has_gpu" "" "nvidia-smi"
  leoronic_add_task 1024 1 1024 true "queue:after prep" "data.csv" "wc -l data.csv" count
  leoronic_add_task 1024 1 1024 true "queue:all_with_cmd_done ^make" "" "make install"
"""

"""The `leoronic` command: start a worker (no subcommand) or talk to the cluster.

No logic beyond parsing and printing: the work is in comrade.node and comrade.client.
Exit codes: 0 ok, 1 a task failed, 2 bad input, 3 cluster unreachable / no quorum,
4 authentication failed, 5 the task has not finished yet.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import signal
import stat
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import wraps
from typing import TYPE_CHECKING, Any

import click

from comrade.client import Client, SubmitCutOff, read_cookie
from comrade.config import (
    DEFAULT_PORT,
    Config,
    default_home,
    is_seconds,
    parse_number,
    split_address,
    valid_node_name,
)
from comrade.errors import (
    EXIT_CLUSTER,
    EXIT_USAGE,
    ClusterError,
    LeoronicError,
    NotFound,
    RemoteError,
    TaskFailed,
    UsageError,
)
from comrade.model import HELD_, WAIT_OVER, WAITING_, State, TaskSpec, format_duration

if TYPE_CHECKING:  # imported by the commands that need it: the others start sooner
    from comrade import taskfields

EXIT_NOT_FINISHED = 5


#: The most characters of an error line: a 100 KB field is not echoed back whole.
MAX_ERROR_CHARS = 500


def one_line(message: str) -> str:
    """`message` as one line of at most MAX_ERROR_CHARS: a newline or other control character
    (from a field the user gave) shown escaped, the rest cut with how much was left out."""
    message = printable(message)
    if len(message) > MAX_ERROR_CHARS:
        cut = len(message) - MAX_ERROR_CHARS
        message = f"{message[:MAX_ERROR_CHARS]}... ({cut} more characters)"
    return message


def printable(text: str) -> str:
    """`text` with every control character shown escaped (`\\r`, `\\x1b`): a command or
    a reason printed as it is could move the cursor and overwrite the lines above."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def fail(message: str, code: int) -> None:
    click.echo(f"leoronic: {one_line(message)}", err=True)
    sys.exit(code)


def node_option(node: str | None) -> str:
    """A --node value for the cluster ('' for the node asked); UsageError if it was given empty
    (`--node ''` from an unset variable must not quietly mean this node)."""
    if node is None:
        return ""
    if not node.strip():
        raise UsageError("--node: empty; give a node name (leoronic_nodes lists them)")
    return node


def check_timeout(timeout: float | None) -> None:
    """UsageError unless `timeout` (--timeout) is None or a finite number of seconds >= 0."""
    if timeout is not None and not is_seconds(timeout):
        raise UsageError(f"--timeout: {timeout:g} is not a number of seconds >= 0")


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn LeoronicErrors into one line on stderr and their exit code."""
    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LeoronicError as exc:
            fail(str(exc), exc.exit_code)
        except ValueError as exc:  # FileError and friends: bad input
            fail(str(exc), EXIT_USAGE)
    return run


def human_size(n: int) -> str:
    """Bytes as 1.5K, 2.0G ... (binary units)."""
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n = n / 1024  # type: ignore[assignment]
    return str(n)


def _bytes_opt(value: str | None, name: str) -> int | None:
    from comrade import taskfields
    return None if value is None else taskfields.parse_bytes(value, name)


class _WholeNumber(click.ParamType):
    """click's int, but only ASCII digits: Python's int() also takes '１' (fullwidth)."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            self.fail(f"{value!r} is not a whole number", param, ctx)
        return int(text)


WHOLE = _WholeNumber()


class _Seconds(click.ParamType):
    """click's float, but only ASCII digits (Python's float() also takes '２' and '1_000');
    whether the value is in range is for the command to say."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        number = parse_number(str(value))
        if number is None or not math.isfinite(number):  # 1e400 reads as inf
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return number


SECONDS = _Seconds()


def _runner_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--retention, --file-gc, --gc-every and --kill-grace, the same for workers and ghosts."""
    for option in (
        click.option("--kill-grace", type=SECONDS, default=5.0, envvar="LEORONIC_KILL_GRACE",
                     help="Seconds from SIGTERM to SIGKILL when a task is stopped: deleted, "
                     "held, taken away or past its time limit; 0: SIGKILL at once "
                     "(LEORONIC_KILL_GRACE)."),
        click.option("--gc-every", type=SECONDS, default=60.0, envvar="LEORONIC_GC_EVERY",
                     help="Seconds between garbage collections (LEORONIC_GC_EVERY)."),
        click.option("--file-gc", type=SECONDS, default=3600.0, envvar="LEORONIC_FILE_GC",
                     help="Seconds an unreferenced necessary file is kept (LEORONIC_FILE_GC)."),
        click.option("--retention", type=SECONDS, default=7 * 24 * 3600.0, envvar="LEORONIC_RETENTION",
                     help="Seconds finished tasks' work dirs and outputs are kept (LEORONIC_RETENTION)."),
    ):
        command = option(command)
    return command


class _Cli(click.Group):
    """The `leoronic` command group; a bad option or argument is one line on stderr,
    `leoronic: MESSAGE (see COMMAND --help)`, and exit 2, like every other bad input."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            message = exc.format_message()
            if isinstance(exc, click.BadParameter) and exc.param is not None:
                said = exc.message
                if isinstance(exc.param.type, click.types.BoolParamType):
                    said = re.sub(r"\. Recognized values: .*", " (give 1 or 0, true or false, "
                                  "yes or no, on or off)", said)
                if exc.param.name and exc.ctx is not None \
                        and _from_environment(exc.ctx, exc.param.name):
                    message = f"{exc.param.envvar}: {said}"  # named as set: not typed
                elif said != exc.message:
                    message = message.replace(exc.message, said)
            click.echo(f"leoronic: {one_line(message)}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _from_environment(ctx: click.Context, name: str) -> bool:
    """Whether option `name` of the command being run took its value from its variable."""
    from click.core import ParameterSource
    return ctx.get_parameter_source(name) is ParameterSource.ENVIRONMENT


def option_name(flag: str, envvar: str) -> str:
    """How to name an option in an error: its variable when the value came from there (the
    shell functions pass options only that way), else its flag."""
    ctx = click.get_current_context(silent=True)
    name = flag.lstrip("-").replace("-", "_")
    return envvar if ctx is not None and _from_environment(ctx, name) else flag


#: Set once this process has served as a worker or a ghost: it then exits the usual way.
_served = False


def entry() -> None:
    """The `leoronic` program (pyproject's script): `main`, then the exit.

    A client command skips the interpreter's teardown, about 10 ms of freeing modules (a tenth
    of a whole `leoronic_add_task`): it has flushed its output and holds nothing else that
    needs closing (its socket closes with the process). A worker or a ghost, and an exit code
    that is not a number, exit the usual way.
    """
    try:
        main()
        code: Any = 0
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
    if _served or not isinstance(code, int):
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): the output is moot
            pass
    os._exit(code)


@click.group(cls=_Cli, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--port", type=WHOLE, default=DEFAULT_PORT, envvar="LEORONIC_PORT",
              help="Port for clients and ghosts (LEORONIC_PORT); Raft uses PORT+1.")
@click.option("--bind", default="0.0.0.0", envvar="LEORONIC_BIND",
              help="Interface to listen on (LEORONIC_BIND).")
@click.option("--advertise", default="", envvar="LEORONIC_ADVERTISE",
              help="Address other boxes reach this one at (LEORONIC_ADVERTISE; default: worked out).")
@click.option("--home", default=None, envvar="LEORONIC_HOME",
              help="Journal, snapshots, outputs, work dirs (LEORONIC_HOME; default ~/.leoronic).")
@click.option("--name", default="", envvar="LEORONIC_NAME",
              help="Node name (LEORONIC_NAME; default HOSTNAME-PORT).")
@click.option("--peer", "peers", multiple=True, envvar="LEORONIC_PEERS",
              help="HOST:PORT of a node of the cluster to join; repeatable "
              "(LEORONIC_PEERS, space-separated).")
@click.option("--cores", type=WHOLE, default=None, envvar="LEORONIC_CORES",
              help="Cap the cores this node offers (LEORONIC_CORES; default all).")
@click.option("--memory", default=None, envvar="LEORONIC_MEMORY",
              help="Cap the memory this node offers, bytes, e.g. 4G (LEORONIC_MEMORY; default all).")
@click.option("--storage", default=None, envvar="LEORONIC_STORAGE",
              help="Cap the disk this node offers, bytes (LEORONIC_STORAGE; default all free).")
@click.option("--tag", "tags", multiple=True, envvar="LEORONIC_TAGS",
              help="Tag this node; repeatable (LEORONIC_TAGS, space-separated).")
@click.option("--lease", type=SECONDS, default=10.0, envvar="LEORONIC_LEASE",
              help="Seconds of silence after which a node's running tasks are requeued (LEORONIC_LEASE).")
@_runner_options
@click.option("--forget-after", type=SECONDS, default=30 * 24 * 3600.0, envvar="LEORONIC_FORGET_AFTER",
              help="Seconds after a task finished that the cluster forgets its record; the "
              "leader's setting counts (LEORONIC_FORGET_AFTER; default 30 days).")
@click.option("--discovery/--no-discovery", default=True, envvar="LEORONIC_DISCOVERY",
              help="Announce this node on the LAN (mDNS) and, with no --peer, join a cluster "
              "found there (LEORONIC_DISCOVERY). Always off on a loopback --bind.")
@click.option("--sync-journal/--no-sync-journal", default=True, envvar="LEORONIC_SYNC_JOURNAL",
              help="Sync each Raft journal entry to disk before acknowledging it, so a power "
              "cut of most boxes loses nothing committed; off: more tasks/s (README: "
              "benchmarks), and the kernel writes the journal back within about 30 s "
              "(LEORONIC_SYNC_JOURNAL).")
@click.option("--on-isolation", type=click.Choice(["run", "wait"]), default="run",
              envvar="LEORONIC_ON_ISOLATION",
              help="Without quorum for --isolation-after: keep running tasks from the local "
              "copy, or wait (LEORONIC_ON_ISOLATION).")
@click.option("--isolation-after", type=SECONDS, default=15.0, envvar="LEORONIC_ISOLATION_AFTER",
              help="Seconds without quorum before isolated mode (LEORONIC_ISOLATION_AFTER).")
@click.option("--claim-ahead", type=SECONDS, default=0.1, envvar="LEORONIC_CLAIM_AHEAD",
              help="While every node is busy, claim ahead what this node starts in this many "
              "seconds at its current rate, so short tasks run back to back; 0: never "
              "(LEORONIC_CLAIM_AHEAD).")
@click.option("--remove-after", type=SECONDS, default=30.0, envvar="LEORONIC_REMOVE_AFTER",
              help="Seconds a lost worker stays in the Raft membership (LEORONIC_REMOVE_AFTER).")
@click.pass_context
def main(ctx: click.Context, **opts: Any) -> None:
    """Leoronic: a fault-tolerant cluster for shell tasks.

    With no subcommand, start a worker in the foreground (logs to stderr and HOME/logs/).
    """
    if ctx.invoked_subcommand is None:
        start_worker(opts)
        return
    from click.core import ParameterSource
    for param in ctx.command.params:  # typed before a subcommand: it would be ignored
        if param.name and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
            flag = max(param.opts, key=len)
            raise click.UsageError(
                f"{flag}: an option of the worker (`leoronic` with no command); give a "
                f"{ctx.invoked_subcommand!r} option after {ctx.invoked_subcommand!r}", ctx)


def _peers(values: Sequence[str]) -> tuple[str, ...]:
    """The --peer values (each may hold several, space-separated); UsageError for one that is
    not HOST:PORT, an empty one included (`--peer "$PEER"` with PEER unset must not quietly
    mean "find a cluster some other way")."""
    peers = tuple(p for chunk in values for p in (chunk.split() or [chunk]))
    for peer in peers:
        split_address(peer, "--peer")
    return peers


@friendly
def start_worker(opts: dict[str, Any]) -> None:
    """Build the config, start the node, block until SIGTERM/SIGINT, then leave cleanly."""
    import logging

    from comrade import taskfields
    global _served
    _served = True
    home = _make_home(default_home() if opts["home"] is None else opts["home"])
    _setup_logging(os.path.join(home, "logs", "node.log"))
    cfg = Config(
        home=home, port=opts["port"], bind=opts["bind"], advertise=opts["advertise"],
        name=opts["name"], peers=_peers(opts["peers"]), cores=opts["cores"],
        memory=_bytes_opt(opts["memory"], "--memory"),
        storage=_bytes_opt(opts["storage"], "--storage"),
        tags=taskfields.validate_tags(opts["tags"]), cookie=read_cookie(create=True),
        lease_s=opts["lease"], heartbeat_s=min(2.0, opts["lease"] / 3),
        discovery=opts["discovery"], sync_journal=opts["sync_journal"],
        on_isolation=opts["on_isolation"], isolation_s=opts["isolation_after"],
        remove_after_s=opts["remove_after"], retention_s=opts["retention"],
        forget_after_s=opts["forget_after"],
        file_gc_s=opts["file_gc"], gc_every_s=opts["gc_every"], claim_ahead_s=opts["claim_ahead"],
        kill_grace_s=opts["kill_grace"],
    )
    from comrade import collector
    from comrade.node import Node

    collector.take_over()  # full collections when the worker can afford them
    node = Node(cfg)
    stop = threading.Event()

    def on_signal(*_: Any) -> None:
        stop.set()
        node.interrupt()  # a start still waiting for a quorum gives up
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        node.start()
    except BaseException:
        node.stop(leave=False)  # its actor threads would keep the process alive
        if stop.is_set():  # SIGTERM while joining: a stop, not a failure
            return
        raise
    stop.wait()
    logging.getLogger("leoronic").info("stopping: leaving the cluster")
    node.stop(leave=True)


def _make_home(home: str) -> str:
    """`home` with its logs folder made; UsageError naming --home if it cannot be (or is
    given empty: `--home "$DIR"` with DIR unset must not start in ~/.leoronic)."""
    if not home.strip():
        raise UsageError("--home: empty; give the folder for the journal, outputs and work dirs")
    try:
        os.makedirs(os.path.join(home, "logs"), exist_ok=True)
        probe = os.path.join(home, "logs", f".probe-{os.getpid()}")
        with open(probe, "w"):  # a folder we may not write into (/proc, read-only) fails here
            pass
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--home: cannot use {home!r}: {exc.strerror or exc}") from None
    return home


#: The log file is rotated at this size, keeping this many older files (path.1 ... path.N).
LOG_BYTES, LOG_BACKUPS = 10 * 2**20, 5


def _setup_logging(path: str) -> None:
    import logging
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    from logging.handlers import RotatingFileHandler  # only nodes and ghosts log to a file

    rotating = RotatingFileHandler(path, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS)
    for handler in (logging.StreamHandler(sys.stderr), rotating):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)


@main.command("ghost")
@click.argument("target", required=False, default="")
@click.option("--peer", "peers", multiple=True, envvar="LEORONIC_PEERS",
              help="HOST:PORT of a worker to learn the cluster from; repeatable (LEORONIC_PEERS).")
@click.option("--port", type=WHOLE, default=7351, envvar="LEORONIC_GHOST_PORT",
              help="Port this ghost serves outputs and files on (LEORONIC_GHOST_PORT).")
@click.option("--bind", default="0.0.0.0", envvar="LEORONIC_BIND")
@click.option("--advertise", default="", envvar="LEORONIC_ADVERTISE")
@click.option("--home", default=None, envvar="LEORONIC_HOME")
@click.option("--name", default="", envvar="LEORONIC_NAME")
@click.option("--cores", type=WHOLE, default=None, envvar="LEORONIC_CORES")
@click.option("--memory", default=None, envvar="LEORONIC_MEMORY")
@click.option("--storage", default=None, envvar="LEORONIC_STORAGE")
@click.option("--tag", "tags", multiple=True, envvar="LEORONIC_TAGS")
@click.option("--discovery/--no-discovery", default=True, envvar="LEORONIC_DISCOVERY",
              help="With no --peer and no HOST:PORT target, find the workers on the LAN (mDNS; "
              "LEORONIC_DISCOVERY). Always off on a loopback --bind.")
@_runner_options
@friendly
def ghost(target: str, **opts: Any) -> None:
    """Start a ghost: runs tasks for the cluster without joining Raft.

    TARGET: nothing = the worker with the lowest address; an integer N = worker N mod the
    number of active workers (address order); HOST:PORT = that worker.
    """
    global _served
    _served = True
    import dataclasses

    from comrade import taskfields
    from ghost.ghost import Ghost, GhostConfig

    if target and not re.fullmatch(r"-?[0-9]+", target):
        try:
            split_address(target)
        except UsageError:
            raise UsageError(f"TARGET: {target!r} is not an integer or HOST:PORT") from None
    peers = _peers(opts["peers"])
    home = _make_home(default_home() if opts["home"] is None else opts["home"])
    cfg = GhostConfig(
        home=home, cookie=read_cookie(), target=target, peers=peers, port=opts["port"],
        bind=opts["bind"], advertise=opts["advertise"], name=opts["name"], cores=opts["cores"],
        memory=_bytes_opt(opts["memory"], "--memory"),
        storage=_bytes_opt(opts["storage"], "--storage"),
        tags=taskfields.validate_tags(opts["tags"]), retention_s=opts["retention"],
        file_gc_s=opts["file_gc"], gc_every_s=opts["gc_every"], kill_grace_s=opts["kill_grace"],
    )
    cfg.validate()
    _setup_logging(os.path.join(home, "logs", "ghost.log"))
    if not peers and not (target and ":" in target):
        from comrade import discovery

        if opts["discovery"] and discovery.enabled(opts["bind"]):
            peers = tuple(discovery.discover(cfg.cookie, opts["bind"]))
        peers = peers or (os.environ.get("LEORONIC_NODE") or f"127.0.0.1:{DEFAULT_PORT}",)
        cfg = dataclasses.replace(cfg, peers=peers)
    g = Ghost(cfg)
    signal.signal(signal.SIGTERM, lambda *_: g.stop())
    signal.signal(signal.SIGINT, lambda *_: g.stop())
    g.run()


# ----- submitting -----------------------------------------------------------------------------

_PRIORITY_HELP = ("Among tasks ready to run, a higher priority is started first (LEORONIC_PRIORITY; "
                  "a whole number, negative allowed; default 0).")
_HOLD_HELP = "Queue on hold: it starts only after `leoronic release` (LEORONIC_HOLD=1)."
_RETRIES_HELP = "Extra attempts after a non-zero exit or a time limit (LEORONIC_RETRIES; default 0)."
_NO_RENAME_HELP = "Keep necessary files' original names (LEORONIC_NO_RENAME=1)."
_TIME_LIMIT_HELP = ("Stop each attempt after this long: SIGTERM to its process group, SIGKILL "
                    "the node's --kill-grace later (LEORONIC_TIME_LIMIT; 90, 90s, 15m, 1.5h, 2d; "
                    "default 0: none).")


@main.command("add-task", context_settings={"ignore_unknown_options": True})
@click.option("--retries", type=WHOLE, default=None, envvar="LEORONIC_RETRIES", help=_RETRIES_HELP)
@click.option("--time-limit", default=None, envvar="LEORONIC_TIME_LIMIT", help=_TIME_LIMIT_HELP)
@click.option("--priority", default=None, envvar="LEORONIC_PRIORITY", help=_PRIORITY_HELP)
@click.option("--hold", is_flag=True, envvar="LEORONIC_HOLD", help=_HOLD_HELP)
@click.option("--no-rename", is_flag=True, envvar="LEORONIC_NO_RENAME", help=_NO_RENAME_HELP)
@click.argument("fields", nargs=-1, required=True)
@friendly
def add_task(fields: Sequence[str], retries: int | None, time_limit: str | None,
             priority: str | None, hold: bool, no_rename: bool) -> None:
    """Queue one task: MEM CORES STORAGE CONCURRENT CONDITIONS FILES COMMAND [ID]."""
    from comrade import taskfields
    parsed = taskfields.parse_fields(list(fields))
    _submit([parsed], retries, time_limit, priority, hold, no_rename)


@main.command("add-tasks-from-file")
@click.option("--retries", type=WHOLE, default=None, envvar="LEORONIC_RETRIES", help=_RETRIES_HELP)
@click.option("--time-limit", default=None, envvar="LEORONIC_TIME_LIMIT", help=_TIME_LIMIT_HELP)
@click.option("--priority", default=None, envvar="LEORONIC_PRIORITY", help=_PRIORITY_HELP)
@click.option("--hold", is_flag=True, envvar="LEORONIC_HOLD", help=_HOLD_HELP)
@click.option("--no-rename", is_flag=True, envvar="LEORONIC_NO_RENAME", help=_NO_RENAME_HELP)
@click.argument("path", metavar="FILE")  # checked by _read_tasks_file, naming FILE
@friendly
def add_tasks_from_file(path: str, retries: int | None, time_limit: str | None,
                        priority: str | None, hold: bool, no_rename: bool) -> None:
    """Queue one task per line (same fields, shell-quoted); all lines are checked first."""
    from comrade import taskfields
    lines = taskfields.parse_task_file(_read_tasks_file(path))
    rows = [taskfields.parse_fields(f, where=f"line {n}: ") for n, f in lines]
    if not rows:
        raise UsageError(f"FILE: {path} holds no tasks")
    _submit(rows, retries, time_limit, priority, hold, no_rename,
            [f"line {n}: " for n, _ in lines])


#: The most retries a task may ask for: a task that fails a thousand times will not pass.
MAX_RETRIES = 1000

#: The largest tasks file taken: about ten million short tasks.
MAX_TASKS_FILE_BYTES = 1 << 30


def _read_tasks_file(path: str) -> str:
    """The text of a tasks file (`-`: standard input); UsageError naming FILE if it is not a
    regular file or a pipe (a device such as /dev/zero never ends), is larger than
    MAX_TASKS_FILE_BYTES, or is not UTF-8 (naming the line)."""
    try:
        if path == "-":
            f = sys.stdin.buffer
        else:
            f = open(path, "rb")  # noqa: SIM115 (closed below; stdin is not)
            mode = os.fstat(f.fileno()).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
                f.close()
                raise UsageError(f"FILE: {path} is not a regular file or a pipe")
        try:
            data = f.read(MAX_TASKS_FILE_BYTES + 1)
        finally:
            if path != "-":
                f.close()
    except OSError as exc:
        raise UsageError(f"FILE: cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_TASKS_FILE_BYTES:
        raise UsageError(f"FILE: {path} is larger than {MAX_TASKS_FILE_BYTES >> 20} MiB; "
                         "split it and queue each part")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UsageError(f"FILE: {path} line {line}: not UTF-8 text") from None


def _submit(rows: list[taskfields.Fields], retries: int | None, time_limit: str | None,
            priority: str | None, hold: bool, no_rename: bool,
            labels: Sequence[str] = ()) -> None:
    from comrade import taskfields
    if retries is not None and not 0 <= retries <= MAX_RETRIES:
        raise UsageError(f"{option_name('--retries', 'LEORONIC_RETRIES')}: must be 0 to "
                         f"{MAX_RETRIES}, got {retries}")
    # Given empty ('--time-limit ""'), they are refused, not taken for the default.
    limit = 0.0 if time_limit is None else taskfields.parse_duration(
        time_limit, option_name("--time-limit", "LEORONIC_TIME_LIMIT"))
    rank = 0 if priority is None else taskfields.parse_priority(
        priority, option_name("--priority", "LEORONIC_PRIORITY"))
    client = Client()
    specs, uploads = client.build_specs(rows, retries=retries or 0, rename=not no_rename,
                                        time_limit=limit, priority=rank, held=hold,
                                        labels=labels)
    client.upload(uploads)
    try:
        ids = client.submit(specs, labels)
    except SubmitCutOff as cut:
        if cut.queued:  # a script reading the ids gets those it can count on
            click.echo("\n".join(cut.queued))
        if len(specs) - cut.start < 2:
            raise
        path = _write_unsure(rows[cut.start:], specs[cut.start:])
        raise ClusterError(
            f"{cut.reason}; {len(cut.queued)} tasks were queued (their ids are on stdout), and "
            f"{len(specs) - cut.start} may still be queued once the cluster has a quorum again: "
            f"they are in {path}, with their ids; `leoronic_add_tasks_from_file {path}`, with "
            "the options given here, from this folder, queues them again safely (a no-op for "
            "those that were)") from None
    click.echo("\n".join(ids))  # one write for a million ids


def _write_unsure(rows: Sequence[taskfields.Fields], specs: Sequence[TaskSpec]) -> str:
    """Write tasks whose submit had an unknown outcome as a tasks file, each with the id it
    was submitted with, in this folder (else the temp folder); return its path."""
    lines = "".join(shlex.join([str(r.memory), str(r.cores), str(r.storage),
                                "true" if r.concurrent else "false", r.conditions, r.files,
                                r.command, spec.task_id]) + "\n" for r, spec in zip(rows, specs, strict=True))
    for folder in (os.getcwd(), tempfile.gettempdir()):
        try:
            fd, path = tempfile.mkstemp(prefix="leoronic-unsure-", suffix=".tasks", dir=folder)
        except OSError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(lines)
        return os.path.relpath(path) if folder == os.getcwd() else path
    raise ClusterError("no quorum, and no folder to write the tasks that may still be queued to")


# ----- reading --------------------------------------------------------------------------------

@main.command("get-queue")
@click.option("--state", "states", multiple=True, type=click.Choice([s.value for s in State]),
              help="Only tasks in this state; repeatable.")
@click.option("--node", default=None, help="Only tasks whose current (or last) attempt is on NODE.")
@click.option("--summary", is_flag=True, help="Counts of tasks per state instead of the table.")
@friendly
def get_queue(states: Sequence[str], node: str | None, summary: bool) -> None:
    """A table of tasks: id, state, node, attempt, age, command."""
    client = Client()
    rows = client.call("queue", list(states), node_option(node))
    if not rows and node and node not in {n["name"] for n in client.call("nodes")["nodes"]}:
        raise UsageError(f"--node: unknown node {node!r} (leoronic_nodes lists them)")
    if summary:
        counts = Counter(row[1] for row in rows)
        held = sum(1 for row in rows if row[-1])
        click.echo("  ".join(f"{s.value} {counts[s.value]}" for s in State) + f"  total {len(rows)}"
                   + (f"  (held {held} of the queued)" if held else ""))
        return
    now = time.time()
    lines = [f"{'ID':<14} {'STATE':<8} {'NODE':<20} {'TRY':>3} {'AGE':>7}  COMMAND"]
    for tid, state, where, attempt, submitted, command, reason, code, rank, held in rows:
        shown = printable(command.replace("\n", "; "))
        if len(shown) > 60:
            shown = shown[:57] + "..."
        extra = f"  [exit {code}]" if code not in (None, 0) else ""
        extra += f"  [{printable(reason)}]" if reason and (
            state == "failed" or reason.startswith(WAITING_)) else ""
        extra += f"  [priority {rank}]" if rank and state in ("queued", "running") else ""
        extra += ("  [held]" if not reason.startswith(HELD_) else f"  [{printable(reason)}]") \
            if held else ""
        age = _age(now - submitted)
        lines.append(f"{tid:<14} {state:<8} {where:<20} {attempt:>3} {age:>7}  {shown}{extra}")
    click.echo("\n".join(lines))  # one write: a queue may hold a million tasks


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@main.command("result")
@click.argument("task_id")
@click.option("--partial", is_flag=True,
              help="For a running task: print what its attempt has written so far, then exit "
                   "5. For a finished one whose whole output cannot be had (its node is "
                   "down): exit with the task's code after the part shown, not 3.")
@friendly
def result(task_id: str, partial: bool) -> None:
    """Print a task's stdout (stderr to stderr) and exit with its exit code; exit 3 if only part
    of its output could be shown (its node is down), so `result ID > out && ...` never goes on
    with a cut output (--partial: the task's code all the same)."""
    client = Client()
    task = client.call("task", task_id)
    state = task.state.value
    if state in ("queued", "running"):
        where = f" on {task.node} (attempt {task.attempt})" if state == "running" else ""
        why = f": {task.reason}" if task.reason else ""
        if partial and state == "running":
            _write_streams(client, task)
        fail(f"task {task_id} is still {state}{where}{why}", EXIT_NOT_FINISHED)
    if state == "deleted":
        ran = f" after {len(task.attempts)} attempt(s)" if task.attempts else " before it ran"
        fail(f"task {task_id} was deleted{ran}; its output is forgotten", 1)
    if task.outcome is None:
        fail(f"task {task_id} {state} without running: {task.reason}", 1)
    code = task.outcome.exit_code
    if task.outcome.timed_out:
        click.echo(f"leoronic: task {task_id} was stopped after its time limit of "
                   f"{format_duration(task.spec.time_limit)}", err=True)
        if code < 128:  # it exited on its own after the SIGTERM (a trap): it still failed
            code = 128 + signal.SIGTERM
    if not _write_streams(client, task) and not partial:
        fail(f"task {task_id} exited {code}, but only part of its output was shown (above); "
             "`leoronic_result --partial` exits with the task's code all the same", EXIT_CLUSTER)
    sys.exit(code)


def _write_streams(client: Client, task: Any) -> bool:
    """A task's stdout to stdout and its stderr to stderr, then a line per warning; False if
    either was not shown whole."""
    sys.stdout.flush()  # what click wrote before: the output comes after it
    warn_out = client.write_output(task, "out", sys.stdout.buffer.write)
    sys.stdout.flush()
    sys.stderr.flush()
    warn_err = client.write_output(task, "err", sys.stderr.buffer.write)
    sys.stderr.flush()
    for warning in {warn_out, warn_err} - {""}:
        click.echo(f"leoronic: {warning}", err=True)
    return not (warn_out or warn_err)


@main.command("task-info")
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per task, one per line.")
@friendly
def task_info(task_ids: Sequence[str], as_json: bool) -> None:
    """Everything recorded about tasks: resources, every attempt, the result."""
    client = Client()
    unknown: list[str] = []
    for task_id in dict.fromkeys(task_ids):  # each once, in the order given
        try:
            record = _record(client.call("task", task_id))
        except RemoteError as exc:
            if exc.exit_code != EXIT_USAGE:
                raise
            unknown.append(task_id)  # never submitted, or forgotten: the others are shown
            continue
        click.echo(_json(record) if as_json else _describe(record))
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise UsageError(f"ID: no task {unknown[0]!r}{more}")


def _record(task: Any) -> dict[str, Any]:
    """A task's replicated record as plain JSON-able data (times: seconds since the epoch)."""
    spec, out = task.spec, task.outcome
    return {
        "id": spec.task_id, "state": task.state.value, "node": task.node, "attempt": task.attempt,
        "submitted": task.submitted, "command": spec.command, "reason": task.reason,
        "memory": spec.memory, "cores": spec.cores, "storage": spec.storage,
        "concurrent": spec.concurrent, "conditions": spec.conditions,
        "files": [name for name, _, _ in spec.files], "retries_left": task.retries_left,
        "time_limit": spec.time_limit, "priority": task.priority, "held": task.held,
        "attempts": [{"number": a.number, "node": a.node, "claimed": a.start, "ended": a.end,
                      "exit_code": a.exit_code, "why": a.why} for a in task.attempts],
        "result": None if out is None else {
            "exit_code": out.exit_code, "start": out.start, "end": out.end,
            "stdout_bytes": out.stdout_bytes, "stderr_bytes": out.stderr_bytes,
            "timed_out": out.timed_out, "cpu_s": out.cpu_s, "max_rss": out.max_rss,
            "max_rss_exact": out.max_rss_exact},
    }


def _json(record: dict[str, Any]) -> str:
    import json  # only `leoronic task --json` needs it

    return json.dumps(record)


def _describe(r: dict[str, Any]) -> str:
    """The human form of `_record`."""
    from datetime import datetime

    def when(t: float | None) -> str:
        return "-" if t is None else datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    lines = [f"{r['id']}: {r['state']}" + (f" on {r['node']}, attempt {r['attempt']}" if r["node"] else "")
             + (f" ({r['reason']})" if r["reason"] else ""),
             f"  needs memory {human_size(r['memory'])}, {r['cores']} cores, "
             f"disk {human_size(r['storage'])}; "
             f"{'concurrent' if r['concurrent'] else 'alone on its node'}; "
             f"conditions: {r['conditions'] or '-'}; files: {' '.join(r['files']) or '-'}"
             + (f"; time limit {format_duration(r['time_limit'])}" if r["time_limit"] else "")
             + (f"; priority {r['priority']}" if r["priority"] else "")
             + ("; held (leoronic release starts it)" if r["held"] else ""),
             f"  submitted {when(r['submitted'])}; command: {printable(r['command'])}"]
    for a in r["attempts"]:
        code = "" if a["exit_code"] is None else f", exit {a['exit_code']}"
        lines.append(f"  attempt {a['number']} on {a['node']}: claimed {when(a['claimed'])}, "
                     f"ended {when(a['ended'])}{code}{', ' + a['why'] if a['why'] else ''}")
    res = r["result"]
    if res is not None:
        lines.append(f"  result: exit {res['exit_code']}, ran {when(res['start'])} to {when(res['end'])}"
                     f" ({res['end'] - res['start']:.3f} s); stdout {res['stdout_bytes']} B, "
                     f"stderr {res['stderr_bytes']} B"
                     + ("; stopped by its time limit" if res["timed_out"] else ""))
        if res["max_rss"]:  # 0: not known (a record from before usage was kept)
            peak = human_size(res["max_rss"]) if res["max_rss_exact"] else \
                f"at most {human_size(res['max_rss'])} (no more than its node's own)"
            lines.append(f"  used: cpu {res['cpu_s']:.3f} s, peak memory {peak} of "
                         f"{human_size(r['memory'])} asked (its process and the children it "
                         "waited for)")
    return "\n".join(lines)


@main.command("wait")
@click.argument("task_ids", nargs=-1)
@click.option("--timeout", type=SECONDS, default=None, help="Give up after this many seconds (exit 5).")
@friendly
def wait(task_ids: Sequence[str], timeout: float | None) -> None:
    """Block until the tasks (default: all) are finished; exit 1 if any failed."""
    check_timeout(timeout)
    client = Client()
    deadline = None if timeout is None else time.monotonic() + timeout
    show = sys.stderr.isatty()
    if task_ids:
        done, states = 0, client.call("wait_tasks", list(task_ids), 0.0)
    else:
        done, states = _not_done(client)
    unknown = [t for t, (s, _) in states.items() if s == "unknown"]
    if unknown:
        raise UsageError(f"ID: no task {unknown[0]!r}")
    total = done + len(states)
    with click.progressbar(length=total, label=WAIT_LABEL, file=sys.stderr) if show \
            else _NoBar() as bar:
        pending = [t for t, (s, _) in states.items() if s not in WAIT_OVER]
        bar.update(total - len(pending))
        held = _Held(client, bar)
        if pending:
            held.look(pending)
        while pending:  # only unfinished tasks are asked about again
            if deadline is not None and time.monotonic() > deadline:
                break  # said after the bar has ended its line
            left = 5.0 if deadline is None else max(0.0, min(5.0, deadline - time.monotonic()))
            # "unknown" now: it finished and its record was forgotten (--forget-after) between
            # two looks; its outcome is lost, so it does not count as a success.
            states.update(client.call("wait_tasks", pending, left))
            still = [t for t in pending if states[t][0] not in WAIT_OVER]
            bar.update(len(pending) - len(still))
            if still and (len(still) == len(pending) or held.count):
                held.look(still)  # nothing moved, or some were held: say which are
            pending = still
    if pending:
        fail(f"{len(pending)} of {total} tasks not finished after {abs(timeout or 0.0):g} s"
             + (f" ({held.count} of them held: leoronic_release starts them)"
                if held.look(pending, quiet=True) else ""), EXIT_NOT_FINISHED)
    bad = [t for t, (s, _) in states.items() if s != "done"]
    if bad:
        raise TaskFailed(f"{len(bad)} of {total} tasks did not succeed: {', '.join(sorted(bad)[:10])}")


WAIT_LABEL = "tasks finished"


def _not_done(client: Client) -> tuple[int, dict[str, tuple[str, int | None]]]:
    """How many tasks are done, and the state and exit code of every other (`Service.not_done`);
    from a worker of a version without that request, worked out from every task's state."""
    try:
        done, rest = client.call("not_done")
        return done, rest
    except RemoteError as exc:
        if "unknown request" not in str(exc):
            raise
    states = client.call("wait_tasks", [], 0.0)
    rest = {t: v for t, v in states.items() if v[0] != "done"}
    return len(states) - len(rest), rest


class _Held:
    """How many of the tasks `wait` still waits for are held, which nothing but `release`
    starts: on a terminal in the progress bar's label; otherwise said once on stderr when
    every task left is held (`wait` goes on waiting: another shell may release them)."""

    def __init__(self, client: Client, bar: Any) -> None:
        self.client = client
        self.bar = bar
        self.count = 0
        self.said = False

    def look(self, pending: Sequence[str], quiet: bool = False) -> int:
        try:
            self.count = len(self.client.call("held", list(pending)))
        except RemoteError:  # a worker of a version without "held": nothing is said
            self.count = 0
        if quiet:
            return self.count
        if isinstance(self.bar, _NoBar):
            if self.count == len(pending) and not self.said:
                click.echo(f"leoronic wait: every task left is held ({self.count}): nothing "
                           "starts them but leoronic_release", err=True)
            self.said = self.count == len(pending)
        else:
            self.bar.label = WAIT_LABEL + (f" ({self.count} held)" if self.count else "")
            self.bar.render_progress()  # shown now, not at the next task finished
        return self.count


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


@main.command("task-format")
def task_format() -> None:
    """Explain the task fields, with working examples."""
    from comrade import taskfields
    click.echo(taskfields.FORMAT_HELP, nl=False)


@main.command("get-all-files")
@click.argument("dest", type=click.Path(file_okay=False))
@friendly
def get_all_files(dest: str) -> None:
    """Copy every reachable node's work dir (and children) into DEST/<node-name>/."""
    client = Client()
    from comrade.packing import made_for

    with made_for(dest, "DEST"):
        unreachable = 0
        for n in client.call("nodes")["nodes"]:
            where = os.path.join(dest, n["name"])
            if not valid_node_name(n["name"]):  # from a version that took any --name
                click.echo(f"leoronic: node {n['name']!r}: skipped, its name is not one safe "
                           "folder name", err=True)
                unreachable += 1
                continue
            try:
                _receive(client, n["rpc"], where, "work")
            except LeoronicError as exc:
                click.echo(f"leoronic: node {n['name']} ({n['rpc']}): not reachable: {exc}", err=True)
                unreachable += 1
                continue
            click.echo(f"{n['name']}: {where}")
        if unreachable:  # in the block: a DEST made for nothing is removed again
            sys.exit(EXIT_CLUSTER)


@main.command("get-files")
@click.argument("task_id")
@click.argument("dest", type=click.Path(file_okay=False))
@friendly
def get_files(task_id: str, dest: str) -> None:
    """Copy one task's work dir(s) from the node(s) that ran it into DEST/."""
    client = Client()
    from comrade.packing import made_for

    with made_for(dest, "DEST"):
        task = client.call("task", task_id)
        nodes = {n["name"]: n["rpc"] for n in client.call("nodes")["nodes"]}
        ran_on = sorted({a.node for a in task.attempts})
        if not ran_on:
            raise UsageError(f"ID: task {task_id} has not run yet")
        missed = lacked = 0
        for name in ran_on:
            if _left_no_files(task, name):
                click.echo(f"{name}: nothing: task {task_id} left its work dir empty")
                continue
            try:
                if name not in nodes:
                    raise ClusterError("it is no longer a member of the cluster")
                _receive(client, nodes[name], dest, "task", task_id)
            except LeoronicError as exc:  # the other nodes' copies still come, then exit 3 or 2
                if getattr(exc, "kind", "") == NotFound.__name__:
                    lacked += 1  # its dirs went after the retention time, or with the node
                elif exc.exit_code == EXIT_CLUSTER:
                    missed += 1
                else:
                    raise
                click.echo(f"leoronic: node {name}: {exc}", err=True)
                continue
            click.echo(f"{name}: {dest}")
        if missed or lacked:  # in the block: a DEST made for nothing is removed again
            sys.exit(EXIT_CLUSTER if missed else EXIT_USAGE)


def _left_no_files(task: Any, node: str) -> bool:
    """True if every attempt of `task` on `node` ended with its work dir empty: the node reused
    those dirs (comrade.spares), so it holds nothing of the task."""
    there = [a for a in task.attempts if a.node == node]
    return bool(there) and not any(a.workdir_kept for a in there)


def _receive(client: Client, address: str, dest: str, *what: str) -> None:
    """Receive a node's pack of work dirs (`pack_parts` WHAT...) and extract it into `dest`."""
    from comrade import packing  # tarfile: imported only by the two commands that need it

    packing.receive_pack(
        lambda sink: client.stream_from(address, "pack_parts", *what, sink=sink), dest)


if __name__ == "__main__":
    entry()


# The commands of these modules join `main` when they are imported (after it exists).
from comrade import cli_changes, cli_nodes  # noqa: E402, F401

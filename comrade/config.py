"""The node's configuration: one frozen object, every field documented, validated in one place.

The CLI takes its defaults from here; every option is also an environment variable
(`LEORONIC_<FIELD>` in upper case), read by click.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from comrade.errors import UsageError

#: The port clients and ghosts talk to; Raft uses the port after it.
DEFAULT_PORT = 7341


def default_home() -> str:
    """`$LEORONIC_HOME`, else `~/.leoronic`."""
    return os.environ.get("LEORONIC_HOME") or os.path.expanduser("~/.leoronic")


def default_cookie_path() -> str:
    """`~/.leoronic_cookie`: one shared secret per cluster."""
    return os.path.expanduser("~/.leoronic_cookie")


@dataclass(frozen=True)
class Config:
    """Everything a worker needs to start."""

    home: str = field(default_factory=default_home)  # journal, snapshots, outputs, work dirs
    port: int = DEFAULT_PORT  # client/ghost RPC port; Raft listens on port + 1
    bind: str = "0.0.0.0"  # interface to listen on
    advertise: str = ""  # address other boxes reach us at; "" = worked out at start
    name: str = ""  # node name; "" = "<hostname>-<port>"
    peers: tuple[str, ...] = ()  # HOST:PORT of nodes of the cluster to join
    cores: int | None = None  # cap on cores offered; None = all
    memory: int | None = None  # cap on memory offered (bytes); None = all
    storage: int | None = None  # cap on disk offered (bytes); None = all free
    tags: tuple[str, ...] = ()
    discovery: bool = True  # announce on the LAN (mDNS) and find peers there when none is named
    sync_journal: bool = True  # each Raft journal entry reaches the disk before it is acknowledged
    discovery_s: float = 2.0  # how long a new node listens for peers before forming a cluster
    cookie: str = ""  # the secret itself (normally read from the cookie file)
    lease_s: float = 10.0  # a node silent this long is lost; its running tasks are requeued
    heartbeat_s: float = 2.0  # how often a node says it is alive
    remove_after_s: float = 30.0  # a worker lost this long leaves the Raft membership
    claim_ahead_s: float = 0.1  # claim ahead what this node starts in this long (0: never)
    kill_grace_s: float = 5.0  # SIGTERM to SIGKILL when a task is stopped (executor.KILL_GRACE_S)
    isolation_s: float = 15.0  # without quorum this long, a worker enters isolated mode
    on_isolation: str = "run"  # "run": keep running tasks from the local copy; "wait": do not
    retention_s: float = 7 * 24 * 3600.0  # finished tasks' work dirs and outputs kept this long
    forget_after_s: float = 30 * 24 * 3600.0  # leader: finished tasks' records kept this long
    file_gc_s: float = 3600.0  # stored files no unfinished task refers to are removed after this
    gc_every_s: float = 60.0  # how often the node collects garbage

    def __post_init__(self) -> None:
        # Absolute (the executor changes directory around each task start) and canonical (the
        # mark by which a restarted node finds its orphans holds it).
        object.__setattr__(self, "home", os.path.realpath(self.home))

    @property
    def raft_port(self) -> int:
        """The Raft port: the RPC port + 1."""
        return self.port + 1

    def validate(self) -> None:
        """Raise UsageError naming the first field that is wrong and why."""
        if not 1 <= self.port <= 65534:
            raise UsageError(f"--port: {self.port} is not a port number (1..65534, Raft uses port+1)")
        check_node_options(self)
        for peer in self.peers:
            split_address(peer, "--peer")
        check_durations(self, _DURATIONS)
        if self.heartbeat_s * 2 > self.lease_s:
            raise UsageError(
                f"--lease: {self.lease_s} s must be at least twice the heartbeat ({self.heartbeat_s} s)"
            )
        if not 0 <= self.claim_ahead_s <= 10:
            raise UsageError(f"--claim-ahead: {self.claim_ahead_s} s is not between 0 and 10")
        if self.on_isolation not in ("run", "wait"):
            raise UsageError(f"--on-isolation: {self.on_isolation!r} is not run or wait")
        if not self.cookie:
            raise UsageError("cookie: empty; put a secret in ~/.leoronic_cookie or LEORONIC_COOKIE")


#: A node name: it names the node's folder in `get-all-files` DEST/ and its work dirs' owner.
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}", re.ASCII)


def valid_node_name(name: str) -> bool:
    """Whether `name` is a node name a node may be given (one safe path component)."""
    return _NAME_RE.fullmatch(name) is not None


def check_node_options(config: object) -> None:
    """Raise UsageError for a --name, --advertise, --cores, --memory or --storage a worker and
    a ghost both refuse: a name that is not one safe path component, an address that is not a
    host, a cap that is not positive."""
    name, advertise = config.name, config.advertise  # type: ignore[attr-defined]
    if advertise and not valid_host(advertise):
        raise UsageError(f"--advertise: {advertise!r} is not a host name or address")
    if name and not valid_node_name(name):
        raise UsageError(f"--name: {name!r} is not a node name (letters, digits, '.', '_', '-', "
                         "not starting with '.' or '-'; at most 100)")
    for option in ("cores", "memory", "storage"):
        value = getattr(config, option)
        if value is not None and value <= 0:
            raise UsageError(f"--{option}: must be a positive number, got {value}")


#: Duration options: (option, Config field, must be more than 0 rather than 0 or more).
_DURATIONS = (
    ("lease", "lease_s", True), ("gc-every", "gc_every_s", True),
    ("retention", "retention_s", False), ("forget-after", "forget_after_s", False),
    ("file-gc", "file_gc_s", False), ("isolation-after", "isolation_s", False),
    ("remove-after", "remove_after_s", False), ("kill-grace", "kill_grace_s", False),
)


#: The longest duration an option takes: about 100 years (also below what a thread's timed
#: wait accepts; 1e308 made a stopped task's kill timer raise OverflowError).
MAX_DURATION_S = 100 * 365.25 * 24 * 3600
#: A number as typed: ASCII digits only (Python's float() also takes '２' and '1_000').
_NUMBER_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)


def parse_number(text: str) -> float | None:
    """`text` as a number, or None unless it is one written with ASCII digits (no '_', no
    'nan' or 'inf'; blanks around it are ignored)."""
    text = text.strip()
    return float(text) if _NUMBER_RE.fullmatch(text) else None


def is_seconds(value: float, positive: bool = False) -> bool:
    """Whether `value` is a finite number of seconds, 0 or more (more than 0 if `positive`);
    NaN is not."""
    return (value > 0 if positive else value >= 0) and math.isfinite(value)


def check_durations(config: object, durations: Sequence[tuple[str, str, bool]]) -> None:
    """Raise UsageError naming the first duration option that is negative (or 0 where it
    must be more), not a number or infinite. `durations`: (option, field, must be > 0)."""
    for option, attr, positive in durations:
        value = getattr(config, attr)
        if not is_seconds(value, positive):
            more = "more than 0" if positive else "0 or more"
            raise UsageError(f"--{option}: must be a number of seconds, {more}; got {value:g}")
        if value > MAX_DURATION_S:
            raise UsageError(f"--{option}: {value:g} s is more than 100 years")


def binds_everywhere(bind: str) -> bool:
    """Whether `--bind` means every interface (its default) rather than one address."""
    return bind in ("0.0.0.0", "", "::")


def split_address(text: str, what: str = "address") -> tuple[str, int]:
    """Parse HOST:PORT; raise UsageError naming `what` if it is not one."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]") and ":" in host:  # [IPv6]:PORT
        host = host[1:-1]
    if not sep or not valid_host(host) or not (port.isascii() and port.isdigit()) \
            or not 1 <= int(port) <= 65535:
        raise UsageError(f"{what}: {text!r} is not HOST:PORT")
    return host, int(port)


#: A host name or address: letters, digits, '.', '-', '_' and (IPv6) ':'.
_HOST_RE = re.compile(r"[A-Za-z0-9._:-]{1,253}", re.ASCII)


def valid_host(host: str) -> bool:
    """Whether `host` can be a host name or IP address (no spaces, slashes or the like; a ':'
    only in an IPv6 address, so HOST:PORT:PORT is refused)."""
    if _HOST_RE.fullmatch(host) is None:
        return False
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
    return True

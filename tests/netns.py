"""Network namespaces for partition tests: N hosts on one private bridge, the host untouched.

Layout (every name carries this process's pid, so parallel runs never collide):

    lrb-<pid>              holds the bridge `br0` and one veth end `lrv<i>` per host
    lrn-<pid>-<i>          "host" i: loopback up, `eth0` = 10.231.<k>.<i>/24 (the veth's other end)

The veth pairs are created inside `lrb-<pid>` with their peer moved straight into the host's
namespace, so no interface, address or route ever appears in the machine's own namespace and
no packet leaves these namespaces. `cut(i)` sets `lrv<i>` down on the bridge side (host i can
reach nobody and nobody reaches it; its own address and loopback still work); `heal(i)` sets
it up again.

Processes are started with `ip netns exec NS ...` in their own session and stopped by PID in
`teardown()`, which also kills by PID whatever else still runs in the namespaces (`ip netns
pids`: e.g. task processes that live in sessions of their own), then deletes the namespaces
(deleting a namespace deletes its veth ends, and with them the pairs). `teardown()` is safe to
call more than once and after a failed `build()`.

Needs root and iproute2: `available()` says why not when they are missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

IP = shutil.which("ip") or "/usr/sbin/ip"
_OURS = re.compile(r"^lr[bn]-(\d+)(?:-\d+)?$")


def available() -> str:
    """'' when namespaces can be built here, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not os.path.exists(IP):
        return "iproute2 (`ip`) is not installed"
    probe = f"lrprobe-{os.getpid()}"
    try:
        p = subprocess.run([IP, "netns", "add", probe], capture_output=True, text=True, timeout=10)
        if p.returncode != 0:
            return f"`ip netns add` does not work here: {p.stderr.strip() or p.returncode}"
        q = subprocess.run([IP, "netns", "exec", probe, IP, "link", "set", "lo", "up"],
                           capture_output=True, text=True, timeout=10)
        if q.returncode != 0:
            return f"`ip netns exec` does not work here: {q.stderr.strip() or q.returncode}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns` is unavailable: {exc}"
    finally:
        subprocess.run([IP, "netns", "del", probe], capture_output=True, timeout=10)
    return ""


def _ip(*args: str, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([IP, *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: rc {p.returncode}: {p.stderr.strip()}")
    return p


def _namespaces() -> list[str]:
    p = _ip("netns", "list", check=False)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_pids_in(ns: str) -> None:
    """SIGKILL, by PID, every process still in namespace `ns`."""
    p = _ip("netns", "pids", ns, check=False)
    for word in p.stdout.split():
        if word.isdigit() and int(word) != os.getpid():
            try:
                os.kill(int(word), signal.SIGKILL)
            except ProcessLookupError:
                pass


def remove_stale() -> list[str]:
    """Delete the namespaces a previous run left behind (those whose owner pid is dead)."""
    removed = []
    for ns in _namespaces():
        m = _OURS.match(ns)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _kill_pids_in(ns)
            _ip("netns", "del", ns, check=False)
            removed.append(ns)
    return removed


@dataclass
class Net:
    """N namespaces on one bridge. Build with `build()`, always `teardown()`."""

    count: int
    pid: int = field(default_factory=os.getpid)
    subnet: int = -1  # k in 10.231.<k>.<i>; default derived from the pid
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    built: bool = False

    def __post_init__(self) -> None:
        if self.subnet < 0:
            self.subnet = self.pid % 200 + 20
        self.bridge_ns = f"lrb-{self.pid}"
        self.namespaces = [f"lrn-{self.pid}-{i}" for i in range(1, self.count + 1)]

    # ----- names and addresses ----------------------------------------------------------------

    def ns(self, i: int) -> str:
        """The namespace of host i (1-based)."""
        return self.namespaces[i - 1]

    def addr(self, i: int) -> str:
        """Host i's address (inside the namespaces only)."""
        return f"10.231.{self.subnet}.{i}"

    def veth(self, i: int) -> str:
        """The bridge-side end of host i's link (lives in the bridge namespace)."""
        return f"lrv{i}"

    # ----- life -------------------------------------------------------------------------------

    def build(self) -> Net:
        """Create the bridge namespace, the host namespaces and their links."""
        self.built = True  # from here on teardown has something to undo
        _ip("netns", "add", self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "set", "lo", "up")
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for i in range(1, self.count + 1):
            ns = self.ns(i)
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.bridge_ns, "link", "add", self.veth(i), "type", "veth",
                "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.bridge_ns, "link", "set", self.veth(i), "master", "br0")
            _ip("-n", self.bridge_ns, "link", "set", self.veth(i), "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        self.wait_connected()
        return self

    def reachable(self, i: int, j: int, timeout: float = 1.0) -> bool:
        """True when host i reaches host j: a TCP connect to a closed port is refused (an
        answer came back) rather than timing out. No ping needed; nothing leaves the
        namespaces."""
        script = ("import socket, sys\n"
                  "s = socket.socket(); s.settimeout(float(sys.argv[2]))\n"
                  "try:\n    s.connect((sys.argv[1], 9))\nexcept ConnectionRefusedError:\n"
                  "    sys.exit(0)\nexcept OSError:\n    sys.exit(1)\nsys.exit(0)\n")
        p = self.run(i, [sys.executable, "-c", script, self.addr(j), str(timeout)],
                     timeout=timeout + 10, check=False)
        return p.returncode == 0

    def wait_connected(self, timeout: float = 15.0) -> None:
        """Wait until host 1 reaches every other host."""
        from tests.cluster import wait_for

        def all_reached() -> bool:  # the bridge ports may take a moment to forward
            return all(self.reachable(1, i) for i in range(2, self.count + 1))

        wait_for(all_reached, timeout, f"{self.ns(1)} to reach every other host", interval=0.2)

    def teardown(self) -> None:
        """Stop everything started in the namespaces (by PID) and delete them. Idempotent."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        if not self.built:
            return
        present = set(_namespaces())
        for ns in [*self.namespaces, self.bridge_ns]:
            if ns in present:
                _kill_pids_in(ns)
        from tests.cluster import wait_for

        deadline = time.monotonic() + 10
        for ns in [*self.namespaces, self.bridge_ns]:
            if ns not in present:
                continue
            with contextlib.suppress(AssertionError):  # still there at the deadline: delete anyway
                wait_for(lambda ns=ns: not _ip("netns", "pids", ns, check=False).stdout.split(),
                         max(0.1, deadline - time.monotonic()),
                         f"the SIGKILLed processes in {ns} to go", interval=0.05)
            _ip("netns", "del", ns, check=False)
        self.built = False

    # ----- running things ---------------------------------------------------------------------

    def argv(self, i: int, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run inside host i's namespace."""
        return [IP, "netns", "exec", self.ns(i), *argv]

    def spawn(self, i: int, argv: Sequence[str], env: Mapping[str, str] | None = None,
              stdout: int | None = None, cwd: str | None = None) -> subprocess.Popen[bytes]:
        """Start a long-running process in host i's namespace (own session; stopped by PID in
        teardown, or earlier by `stop`)."""
        proc = subprocess.Popen(self.argv(i, argv), stdout=stdout, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(env) if env is not None else None,
                                cwd=cwd, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signal a process started by `spawn` (its process group) and wait for it."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            proc.wait(timeout=20)

    def run(self, i: int, argv: Sequence[str], env: Mapping[str, str] | None = None,
            timeout: float = 60, check: bool = True, input: str | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside host i's namespace."""
        p = subprocess.run(self.argv(i, argv), capture_output=True, text=True, timeout=timeout,
                           env=dict(env) if env is not None else None, input=input, cwd=cwd)
        if check and p.returncode != 0:
            raise RuntimeError(f"in {self.ns(i)}: {' '.join(argv)}: rc {p.returncode}: "
                               f"{p.stdout[-2000:]}{p.stderr[-2000:]}")
        return p

    # ----- faults -----------------------------------------------------------------------------

    def cut(self, i: int) -> None:
        """Partition host i away from all others (its link down on the bridge side)."""
        _ip("-n", self.bridge_ns, "link", "set", self.veth(i), "down")

    def heal(self, i: int) -> None:
        """Reconnect host i."""
        _ip("-n", self.bridge_ns, "link", "set", self.veth(i), "up")

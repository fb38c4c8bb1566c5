"""A real Leoronic cluster of `leoronic` processes on 127.0.0.1, for integration tests and benches.

Every node gets its own port pair, home dir and log; all share one cookie file made for the
cluster. Commands are run the way a user types them: `bash -c 'source leoronic_utilities.sh;
leoronic_add_task ...'`. Everything started is stopped by PID in `stop()`.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from comrade.client import Client
from comrade.executor import Paths, kill_orphans

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEORONIC = os.path.join(REPO, "leoronic")
UTILITIES = os.path.join(REPO, "leoronic_utilities.sh")


def peak_rss(pid: int) -> int:
    """The most resident memory a process has had (VmHWM), bytes."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def process_gone(pid: int) -> bool:
    """Whether a process has exited (gone, or a zombie not yet reaped); safe against it
    vanishing while it is looked at."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.05) -> Any:
    """Poll `check()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)  # poll interval, bounded by the deadline above
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def stays(check: Callable[[], Any], seconds: float, what: str, interval: float = 0.25) -> None:
    """Assert `check()` stays truthy for `seconds` (polled; fails at the first falsy answer)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), f"no longer true: {what}"
        time.sleep(interval)  # poll interval, bounded by the deadline above


def _port_range() -> tuple[int, int]:
    """Where test ports come from: below the kernel's range of ephemeral ports if there is room
    (Linux: 32768-60999). A port in that range can be taken by any outgoing connection while
    a test's node is down, and the node, restarted, could not listen on its port again."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return (10000, low - 2) if low > 12000 else (20000, 59000)


def free_port_pair() -> int:
    """A port P such that P and P+1 are both free on 127.0.0.1 (and, where the system allows,
    outside the ephemeral range, so a node's port is still free when it restarts)."""
    low, high = _port_range()
    for _ in range(200):
        port = random.randint(low, high)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


@dataclass
class Result:
    """What a CLI command did."""

    rc: int
    out: str
    err: str

    def __repr__(self) -> str:
        return f"Result(rc={self.rc}, out={self.out[-500:]!r}, err={self.err[-500:]!r})"


@dataclass
class NodeProc:
    """One `leoronic` worker process."""

    name: str
    port: int
    home: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


def new_cookie(path: str | os.PathLike[str]) -> str:
    """Write a new random cookie to `path` (mode 0600, as a worker makes one); return it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(16) + "\n")
    return str(path)


def lan_env(cookie: str, node: str, retry_s: float = 3) -> dict[str, str]:
    """A user's shell on a box of a network-namespace test: talks to `node` with `cookie`;
    discovery as an operator has it (on, unless a worker is started with --no-discovery)."""
    env = dict(os.environ)
    env.update(LEORONIC_COOKIE=cookie, LEORONIC_NODE=node, LEORONIC_RETRY_S=str(retry_s))
    env.pop("LEORONIC_DISCOVERY", None)
    return env


@dataclass
class Cluster:
    """A set of workers on loopback sharing one cookie."""

    root: str
    nodes: list[NodeProc] = field(default_factory=list)
    cookie_path: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        self.cookie_path = os.path.join(self.root, "cookie")
        if not os.path.exists(self.cookie_path):
            new_cookie(self.cookie_path)

    def env(self, node: NodeProc | None = None, **extra: str) -> dict[str, str]:
        """The environment a user's shell would have to talk to `node` (default: the first)."""
        env = dict(os.environ)
        env.update(self.extra_env)
        env["LEORONIC_COOKIE"] = self.cookie_path
        env["LEORONIC_DISCOVERY"] = "0"  # no multicast from tests on the host network
        target = node or (self.nodes[0] if self.nodes else None)
        if target is not None:
            env["LEORONIC_NODE"] = target.address
        env.update(extra)
        return env

    def client(self, node: NodeProc | None = None) -> Client:
        """A Python client of `node` (default: the first) with the cluster's cookie; close it."""
        with open(self.cookie_path) as f:
            return Client((node or self.nodes[0]).address, f.read().strip())

    def start_node(self, *args: str, peer: NodeProc | None = None, name: str = "",
                   wait: bool = True) -> NodeProc:
        """Start a worker (joining `peer` if given) and wait until it is registered."""
        index = len(self.nodes) + 1
        name = name or f"n{index}"
        port = free_port_pair()
        home = os.path.join(self.root, name)
        argv = ["--bind", "127.0.0.1", "--port", str(port), "--home", home, "--name", name]
        if peer is not None:
            argv += ["--peer", peer.address]
        node = NodeProc(name=name, port=port, home=home, args=argv + list(args))
        self.nodes.append(node)
        self.launch(node)
        if wait:
            self.wait_registered(node)
        return node

    def launch(self, node: NodeProc) -> None:
        """(Re)start a node's process with its arguments."""
        os.makedirs(node.home, exist_ok=True)
        node.log_path = os.path.join(self.root, f"{node.name}.out")
        out = open(node.log_path, "ab")
        env = self.env(node)
        del env["LEORONIC_NODE"]  # as typed by a person: nodes are told their peers by flags
        node.proc = subprocess.Popen(
            ["bash", LEORONIC, *node.args], stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )
        out.close()

    def start_ghost(self, *args: str, target: str = "", peer: NodeProc | None = None,
                    name: str = "", wait: bool = True) -> NodeProc:
        """Start `leoronic ghost [TARGET]` (learning the cluster from `peer`, default the first
        worker) and wait until `leoronic nodes` lists it as up."""
        name = name or f"g{sum(1 for n in self.nodes if n.name.startswith('g')) + 1}"
        port = free_port_pair()
        home = os.path.join(self.root, name)
        via = peer or self.nodes[0]
        argv = ["ghost", *([target] if target else []), "--bind", "127.0.0.1", "--port", str(port),
                "--home", home, "--name", name, "--peer", via.address]
        node = NodeProc(name=name, port=port, home=home, args=argv + list(args))
        self.nodes.append(node)
        self.launch(node)
        if wait:
            def up() -> bool:
                if node.proc is not None and node.proc.poll() is not None:
                    raise AssertionError(f"ghost {name} exited: {node.log()[-3000:]}")
                r = self.cli("nodes", node=via, timeout=10, retry_s="1")
                return any(line.strip().startswith(f"{name}  ") and line.rstrip().endswith(" up")
                           for line in r.out.splitlines())
            wait_for(up, 30, f"ghost {name} to attach", interval=0.2)
        return node

    def wait_registered(self, node: NodeProc, timeout: float = 40.0) -> None:
        """Wait until `leoronic nodes` on that node lists it as up."""
        def up() -> bool:
            if node.proc is not None and node.proc.poll() is not None:
                raise AssertionError(f"node {node.name} exited: {node.log()[-3000:]}")
            r = self.cli("nodes", node=node, timeout=10, retry_s="1")
            return r.rc == 0 and f"{node.name}  {node.address}" in r.out and "quorum yes" in r.out
        wait_for(up, timeout, f"node {node.name} to register", interval=0.2)

    def sh(self, script: str, node: NodeProc | None = None, timeout: float = 60,
           input: str | None = None, **env: str) -> Result:
        """Run a bash script with leoronic_utilities.sh sourced, as a user would."""
        full = f"source {UTILITIES}\n{script}"
        p = subprocess.run(["bash", "-c", full], capture_output=True, text=True, timeout=timeout,
                           env=self.env(node, **env), input=input, cwd=self.root)
        return Result(p.returncode, p.stdout, p.stderr)

    def cli(self, *args: str, node: NodeProc | None = None, timeout: float = 60,
            retry_s: str = "15", **env: str) -> Result:
        """Run `leoronic ARGS...` directly."""
        p = subprocess.run(["bash", LEORONIC, *args], capture_output=True, text=True,
                           timeout=timeout, env=self.env(node, LEORONIC_RETRY_S=retry_s, **env),
                           cwd=self.root)
        return Result(p.returncode, p.stdout, p.stderr)

    def kill(self, node: NodeProc, sig: int = signal.SIGKILL) -> None:
        """Send a signal to a node's process group and wait for it to exit."""
        if node.proc is None or node.proc.poll() is not None:
            return
        try:
            os.killpg(node.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            node.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop every node (SIGKILL: tests do not need a clean leave) and their tasks."""
        try:
            for node in self.nodes:
                try:
                    self.kill(node, signal.SIGKILL)
                except subprocess.TimeoutExpired:  # unkillable (D state): go on with the others
                    pass
        finally:
            # Task process groups are sessions of their own, which a killed node leaves
            # running: each is found by the LEORONIC_WORKDIR its processes carry, as a
            # restarted node does.
            for node in self.nodes:
                kill_orphans(Paths(node.home))


def wait_ok(cluster: Cluster, *ids: str, timeout: float = 30) -> None:
    """`leoronic_wait --timeout` on the tasks; fail unless all succeeded."""
    r = cluster.sh(f"leoronic_wait --timeout {timeout} " + " ".join(ids), timeout=timeout + 30)
    assert r.rc == 0, r


def result_out(cluster: Cluster, task_id: str) -> str:
    """A finished task's stdout via `leoronic_result`; fail unless it exited 0."""
    r = cluster.sh(f"leoronic_result {task_id}")
    assert r.rc == 0, r
    return r.out


def start_cluster(root: str, count: int = 3, per_node_args: Sequence[Sequence[str]] = ()) -> Cluster:
    """Start `count` workers, each joining the first."""
    cluster = Cluster(root)
    try:
        first = cluster.start_node(*(per_node_args[0] if per_node_args else ()))
        for i in range(1, count):
            args = per_node_args[i] if i < len(per_node_args) else ()
            cluster.start_node(*args, peer=first)
    except BaseException:
        cluster.stop()
        raise
    return cluster

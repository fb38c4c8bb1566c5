"""LAN discovery: workers started without --peer find each other (mDNS), only inside network
namespaces the test builds (no multicast reaches the host's own network)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests import netns
from tests.cluster import LEORONIC, UTILITIES, lan_env, new_cookie, wait_for

pytestmark = pytest.mark.netns


@pytest.fixture
def net(ns_net: netns.Net) -> netns.Net:
    """The shared three-namespace network (tests/conftest.py)."""
    return ns_net


def _start(net: netns.Net, i: int, tmp: Path, cookie: str, *extra: str) -> subprocess.Popen[bytes]:
    addr = net.addr(i)
    log = open(tmp / f"w{i}.log", "ab")
    argv = ["bash", LEORONIC, "--bind", addr, "--port", "7341", "--home", str(tmp / f"w{i}"),
            "--name", f"w{i}", *extra]
    proc = net.spawn(i, argv, env=lan_env(cookie, f"{addr}:7341"), stdout=log.fileno())
    log.close()
    return proc


def _nodes(net: netns.Net, i: int, cookie: str) -> str:
    p = net.run(i, ["bash", "-c", f"source {UTILITIES}; leoronic_nodes"],
                env=lan_env(cookie, f"{net.addr(i)}:7341"), check=False, timeout=30)
    return p.stdout if p.returncode == 0 else ""


def test_workers_without_peers_find_each_other_and_a_ghost_finds_them(
        net: netns.Net, tmp_path: Path) -> None:
    cookie = new_cookie(tmp_path / "cookie")
    _start(net, 1, tmp_path, cookie)
    wait_for(lambda: "w1  " in _nodes(net, 1, cookie), 40, "w1 up")
    _start(net, 2, tmp_path, cookie)
    _start(net, 3, tmp_path, cookie)
    out = wait_for(lambda: (lambda o: o if all(f"w{i}  {net.addr(i)}:7341" in o for i in (1, 2, 3))
                            else "")(_nodes(net, 1, cookie)), 60, "three workers in one cluster")
    assert out.count("  leader  ") == 1 and "quorum yes" in out, out
    # A ghost with neither --peer nor a target finds the workers and attaches to the lowest.
    log = open(tmp_path / "g.log", "ab")
    net.spawn(3, ["bash", LEORONIC, "ghost", "--bind", net.addr(3), "--port", "7351",
                  "--home", str(tmp_path / "g"), "--name", "g1"],
              env=lan_env(cookie, f"{net.addr(3)}:7341"), stdout=log.fileno())
    log.close()
    low = min((net.addr(i) for i in (1, 2, 3)), key=lambda a: tuple(int(x) for x in a.split(".")))
    wait_for(lambda: "ghost of w" in _nodes(net, 1, cookie), 40, "the ghost to attach")
    out = _nodes(net, 1, cookie)
    owner = next(line for line in out.splitlines() if "g1  " in line).split("ghost of ")[1].split()[0]
    assert f"{owner}  {low}:7341" in out, out
    # A task submitted anywhere runs; the cluster is one.
    p = net.run(2, ["bash", "-c", f"source {UTILITIES}; leoronic_add_task 1024 1 1024 true '' '' "
                    "'echo found' t1 && leoronic_wait t1 && leoronic_result t1"],
                env=lan_env(cookie, f"{net.addr(2)}:7341"), check=False, timeout=60)
    assert p.returncode == 0 and p.stdout.splitlines()[-1] == "found", p


def test_a_worker_with_another_cookie_forms_its_own_cluster(net: netns.Net, tmp_path: Path) -> None:
    ours = new_cookie(tmp_path / "ours")
    theirs = new_cookie(tmp_path / "theirs")
    _start(net, 1, tmp_path, ours)
    wait_for(lambda: "w1  " in _nodes(net, 1, ours), 40, "w1 up")
    stranger = _start(net, 2, tmp_path, theirs)
    wait_for(lambda: "w2  " in _nodes(net, 2, theirs), 40, "w2 up on its own")
    assert "w2  " not in _nodes(net, 1, ours)
    assert "w1  " not in _nodes(net, 2, theirs)
    net.stop(stranger, signal.SIGKILL)


def test_no_discovery_keeps_a_worker_alone(net: netns.Net, tmp_path: Path) -> None:
    cookie = new_cookie(tmp_path / "cookie")
    _start(net, 1, tmp_path, cookie)
    wait_for(lambda: "w1  " in _nodes(net, 1, cookie), 40, "w1 up")
    _start(net, 2, tmp_path, cookie, "--no-discovery")
    wait_for(lambda: "w2  " in _nodes(net, 2, cookie), 40, "w2 up")
    assert "w1  " not in _nodes(net, 2, cookie)

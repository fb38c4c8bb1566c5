"""What a user sees when something is wrong: bad cookie, bad input, no cluster.

Covers issue #2, part 3. Every refusal is one `leoronic: ...` line on stderr, a distinct exit
code, and leaves the queue exactly as it was.
"""

from __future__ import annotations

import os
import secrets
import shlex

import pytest

from tests.cluster import Cluster, Result, free_port_pair, result_out, wait_for, wait_ok

EXIT_USAGE = 2
EXIT_CLUSTER = 3
EXIT_AUTH = 4

GiB = 1024**3


def queue_ids(c: Cluster) -> list[str]:
    """The ids `leoronic_get_queue` lists, in order."""
    r = c.sh("leoronic_get_queue")
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[0].split()[0] == "ID", r
    return [line.split()[0] for line in lines[1:]]


def one_line_error(r: Result, code: int) -> str:
    assert r.rc == code, r
    assert r.err.startswith("leoronic: ") and r.err.count("\n") == 1, r
    assert r.out == "", r
    return r.err


def add_task(c: Cluster, *fields: str, cookie: str = "") -> Result:
    script = "leoronic_add_task " + " ".join(shlex.quote(f) for f in fields)
    return c.sh(script, LEORONIC_COOKIE=cookie) if cookie else c.sh(script)


BAD_INPUTS = [
    # (fields, words the one-line message must contain)
    (["abc", "1", "1024", "false", "", "", "echo x"], ["MEM", "'abc'"]),
    (["1024", "1", "-5", "false", "", "", "echo x"], ["STORAGE", "'-5'"]),
    (["1024", "0", "1024", "false", "", "", "echo x"], ["CORES", "at least 1"]),
    (["1024", "-1", "1024", "false", "", "", "echo x"], ["CORES", "'-1'"]),
    (["1024", "1.5", "1024", "false", "", "", "echo x"], ["CORES", "'1.5'"]),
    (["1024", "1", "1024", "maybe", "", "", "echo x"], ["CONCURRENT", "'maybe'"]),
    (["1024", "1", "1024", "false", "", "", ""], ["COMMAND", "empty"]),
    (["1024", "1", "1024", "false", "", "", "   "], ["COMMAND", "empty"]),
    (["1024", "1", "1024", "false", "", ""], ["7 fields", "got 6"]),
    (["1024", "1", "1024", "false", "", "", "echo x", "id9", "extra"], ["7 fields", "got 9"]),
    (["1024", "1", "1024", "false", "worker:bogus x", "", "echo x"], ["CONDITIONS", "bogus"]),
    (["1024", "1", "1024", "false", "queue:after", "", "echo x"], ["CONDITIONS", "argument"]),
    (["1024", "1", "1024", "false", "nonsense", "", "echo x"], ["CONDITIONS", "nonsense"]),
    (["1024", "1", "1024", "false", "", "", "echo x", "bad id!"], ["ID", "bad id!"]),
    # Too much for any node (n2 offers the most: 2 cores, 2G).
    (["3G", "1", "1024", "false", "", "", "echo x"],
     ["MEM", "more than any node offers", f"largest: n2 with {2 * GiB} bytes"]),
    (["1024", "3", "1024", "false", "", "", "echo x"],
     ["CORES", "more than any node offers", "largest: n2 with 2"]),
]


def test_bad_cookie_bad_inputs_and_unreachable_node(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores for the 2-core node")
    c = make_cluster(3, per_node_args=[["--cores", "1", "--memory", "1G"],
                                       ["--cores", "2", "--memory", "2G"],
                                       ["--cores", "1", "--memory", "1G"]])
    r = add_task(c, "1024", "1", "1024", "true", "", "", "echo fine", "kept")
    assert r.rc == 0, r
    before = queue_ids(c)
    assert before == ["kept"]

    # A client with another cluster's cookie.
    wrong = tmp_path / "wrong_cookie"
    wrong.write_text(secrets.token_hex(16) + "\n")
    wrong.chmod(0o600)
    r = add_task(c, "1024", "1", "1024", "true", "", "", "echo sneaky", "sneaky",
                 cookie=str(wrong))
    err = one_line_error(r, EXIT_AUTH)
    assert "authentication failed" in err, r
    for cmd in ("leoronic_get_queue", "leoronic_nodes", "leoronic_result kept"):
        r = c.sh(cmd, LEORONIC_COOKIE=str(wrong))
        assert "authentication failed" in one_line_error(r, EXIT_AUTH), (cmd, r)

    # Bad input: exit 2, one line naming the field.
    for fields, words in BAD_INPUTS:
        r = add_task(c, *fields)
        err = one_line_error(r, EXIT_USAGE)
        for word in words:
            assert word in err, (fields, word, r)
    # A dependency on a task that does not exist is refused by the node.
    r = add_task(c, "1024", "1", "1024", "false", "queue:after ghost-task", "", "echo x")
    err = one_line_error(r, EXIT_USAGE)
    assert "conditions" in err.lower() and "ghost-task" in err, r
    # Nothing was queued by any of them.
    assert queue_ids(c) == before

    # A node nobody listens on: exit 3, soon, with a clear message.
    port = free_port_pair()
    for cmd in ('leoronic_add_task 1024 1 1024 false "" "" "echo x"', "leoronic_get_queue"):
        r = c.sh(cmd, LEORONIC_NODE=f"127.0.0.1:{port}", LEORONIC_RETRY_S="1", timeout=20)
        err = one_line_error(r, EXIT_CLUSTER)
        assert f"cannot reach node 127.0.0.1:{port}" in err, r
    assert queue_ids(c) == before


def test_a_second_process_on_the_same_home_stops_and_kills_nothing(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`bash leoronic` typed twice on one home: the second worker (or a ghost) must not take
    the first one's running tasks for orphans of a previous life."""
    c = make_cluster(1)
    n1 = c.nodes[0]
    gate = tmp_path / "gate"
    r = add_task(c, "1024", "1", "1024", "true", "", "",
                 f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done; echo survived", "keep")
    assert r.rc == 0, r
    wait_for(lambda: "running" in c.sh("leoronic_get_queue").out, 20, "the task to run")
    for extra in ([], ["ghost", "--peer", n1.address]):
        port = str(free_port_pair())
        r = c.cli(*extra, "--bind", "127.0.0.1", "--port", port, "--home", n1.home,
                  "--name", "dup", timeout=30)
        err = one_line_error(r, EXIT_USAGE)
        assert "--home" in err and "in use by another leoronic process" in err, r
        assert n1.proc is not None and f"pid {n1.proc.pid}" in err, r
    queued = c.sh("leoronic_get_queue").out
    assert "keep" in queued and "running" in queued, queued
    gate.touch()
    wait_ok(c, "keep")
    assert result_out(c, "keep") == "survived\n"


def test_workers_of_another_state_machine_version_never_join(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A worker refuses to join a cluster that runs another version of the replicated state
    (here an older one, which does not announce its version), and a cluster refuses to add
    such a worker: their copies of the queue would differ."""
    from comrade import rpc
    from comrade.errors import LeoronicError
    from comrade.queue import PROTOCOL

    c = make_cluster(1)
    cookie = open(c.cookie_path).read().strip()
    old_port = free_port_pair()
    old = rpc.Server("127.0.0.1", old_port, cookie, {  # what an older worker answers
        "ping": lambda: {"name": "old", "kind": "worker", "rpc": f"127.0.0.1:{old_port}",
                         "raft": f"127.0.0.1:{old_port + 1}"},
        "members": lambda: [f"127.0.0.1:{old_port + 1}"],
    })
    old.start()
    try:
        r = c.cli("--bind", "127.0.0.1", "--port", str(free_port_pair()), "--no-discovery",
                  "--home", str(tmp_path / "new"), "--peer", f"127.0.0.1:{old_port}", timeout=60)
    finally:
        old.stop()
    err = one_line_error(r, EXIT_USAGE)
    assert err == (f"leoronic: protocol: the cluster at 127.0.0.1:{old_port} runs version 0 of "
                   f"the replicated state, this node {PROTOCOL}: stop every worker and upgrade "
                   "them together (README: Upgrading)\n"), r

    # An older worker asks to be added without a version: refused, the membership unchanged.
    n1 = c.nodes[0]
    with pytest.raises(LeoronicError) as refused:
        rpc.call(n1.address, cookie, "add_member", "127.0.0.1:9")
    assert "the joining node runs version 0 of the replicated state, this cluster" in str(refused.value)
    assert rpc.call(n1.address, cookie, "members") == [f"127.0.0.1:{n1.port + 1}"]
    assert rpc.call(n1.address, cookie, "ping")["protocol"] == PROTOCOL

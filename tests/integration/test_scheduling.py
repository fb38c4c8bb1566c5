"""Where and when tasks run: resource fit, CONCURRENT, spreading work, `leoronic_nodes`.

Covers issue #2, part 2. Tasks append `start`/`end` lines with their node's name to a log file
in the test's tmp dir, so overlaps are judged from the times the tasks themselves recorded.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

from tests.cluster import Cluster, wait_for

GiB = 1024**3


def logged(log: Path, seconds: float) -> str:
    """A task command that records its interval and node in `log`."""
    stamp = 'echo {} $(date +%s.%N) "$LEORONIC_NODE_NAME" "$LEORONIC_TASK_ID" >> ' + str(log)
    return f"{stamp.format('start')}; sleep {seconds}; {stamp.format('end')}"


def intervals(log: Path) -> dict[str, tuple[str, float, float]]:
    """task id -> (node, start, end) from the log."""
    starts: dict[str, tuple[str, float]] = {}
    out: dict[str, tuple[str, float, float]] = {}
    for line in log.read_text().splitlines():
        kind, when, node, task = line.split()
        if kind == "start":
            starts[task] = (node, float(when))
        else:
            node0, start = starts[task]
            assert node0 == node, line
            out[task] = (node, start, float(when))
    return out


def overlaps(a: tuple[str, float, float], b: tuple[str, float, float]) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def submit_file(c: Cluster, path: Path, lines: list[str]) -> list[str]:
    path.write_text("".join(line + "\n" for line in lines))
    r = c.sh(f"leoronic_add_tasks_from_file {path}")
    assert r.rc == 0, r
    return r.out.split()


def test_memory_fit_and_concurrent_flag(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if (os.cpu_count() or 1) < 2 or psutil.virtual_memory().available < 5 * GiB:
        pytest.skip("needs 2 cores and 5 GiB of free memory for the 2-core, 8G node")
    c = make_cluster(3, per_node_args=[["--cores", "1", "--memory", "1G"],
                                       ["--cores", "1", "--memory", "1G"],
                                       ["--cores", "2", "--memory", "8G"]])

    # 4G fits only on n3.
    r = c.sh("leoronic_add_task 4G 1 1024 true '' '' 'echo $LEORONIC_NODE_NAME' big-mem")
    assert r.rc == 0, r
    assert c.sh("leoronic_wait big-mem").rc == 0
    res = c.sh("leoronic_result big-mem")
    assert (res.rc, res.out) == (0, "n3\n"), res

    # CONCURRENT=false: never two at once on a node, whichever nodes they land on.
    solo_log = tmp_path / "solo.log"
    ids = submit_file(c, tmp_path / "solo.txt", [
        f"1024 1 1024 false '' '' '{logged(solo_log, 0.3)}' solo-{i}" for i in range(6)
    ])
    # CONCURRENT=true: two 2G tasks fit only on n3, and together (2 cores, 8G).
    pair_log = tmp_path / "pair.log"
    ids += submit_file(c, tmp_path / "pair.txt", [
        f"2G 1 1024 true '' '' '{logged(pair_log, 1.0)}' pair-{i}" for i in range(2)
    ])
    w = c.sh("leoronic_wait " + " ".join(ids))
    assert w.rc == 0, w

    solo = intervals(solo_log)
    assert sorted(solo) == [f"solo-{i}" for i in range(6)], solo
    by_node: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    for span in solo.values():
        by_node[span[0]].append(span)
    # The pair ran on n3 too: a solo task must not share n3 with them either.
    pair = intervals(pair_log)
    assert {span[0] for span in pair.values()} == {"n3"}, pair
    for node, spans in by_node.items():
        spans.sort(key=lambda s: s[1])
        for a, b in zip(spans, spans[1:], strict=False):
            assert a[2] <= b[1], f"non-concurrent tasks overlapped on {node}: {a} {b}"
        if node == "n3":
            for s in spans:
                for p in pair.values():
                    assert not overlaps(s, p), f"a non-concurrent task shared n3: {s} {p}"
    assert overlaps(pair["pair-0"], pair["pair-1"]), f"concurrent tasks did not overlap: {pair}"


def test_work_spreads_and_nodes_listing(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores for three 2-core nodes")
    c = make_cluster(3, per_node_args=[["--cores", "2", "--memory", "1G"],
                                       ["--cores", "2", "--memory", "1G", "--tag", "fast"],
                                       ["--cores", "2", "--memory", "1G"]])
    log = tmp_path / "spread.log"
    ids = submit_file(c, tmp_path / "spread.txt", [
        f"1024 1 1024 true '' '' '{logged(log, 1.0)}' s-{i}" for i in range(6)
    ])

    # While they run, `leoronic_nodes` lists all three with roles, resources, tags, tasks.
    def listing_with_running() -> str:
        r = c.sh("leoronic_nodes")
        assert r.rc == 0, r
        return r.out if re.search(r"running: s-\d", r.out) else ""
    out = wait_for(listing_with_running, 20, "nodes to show running tasks")
    head = re.match(r"asked n1; leader (\S+); quorum yes\n", out)
    assert head and head.group(1) in {n.address for n in c.nodes}, out  # LEORONIC_NODE takes it
    blocks = re.findall(
        r"^(n\d)  127\.0\.0\.1:\d+  (leader|follower)  up\n"
        r"    cores (\d+)/(\d+) free   memory \S+/(\S+) free   disk \S+/\S+ free\n"
        r"    tags: (.*)\n"
        r"    running: (.*)$", out, re.M)
    assert [b[0] for b in blocks] == ["n1", "n2", "n3"], out
    assert [b[1] for b in blocks].count("leader") == 1, out
    for name, _role, free_cores, offered_cores, offered_mem, tags, _running in blocks:
        assert offered_cores == "2" and offered_mem == "1.0G", out
        assert 0 <= int(free_cores) <= 2, out
        assert "os-linux" in tags.split(), out
        assert ("fast" in tags.split()) == (name == "n2"), out
    running = [t for b in blocks for t in b[6].split() if t != "-"]
    assert running and set(running) <= set(ids), out

    w = c.sh("leoronic_wait")
    assert w.rc == 0, w
    spans = intervals(log)
    assert sorted(spans) == sorted(ids), spans
    nodes_used = {span[0] for span in spans.values()}
    # No node ran more than its 2 cores' worth at once.
    for node in nodes_used:
        mine = [s for s in spans.values() if s[0] == node]
        for s in mine:
            at_once = sum(1 for o in mine if o[1] <= s[1] < o[2])
            assert at_once <= 2, f"{node} ran {at_once} 1-core tasks at once: {mine}"
    # Afterwards nothing is listed as running.
    after = c.sh("leoronic_nodes")
    assert after.rc == 0 and after.out.count("running: -") == 3, after


def test_two_tasks_on_idle_nodes_go_to_two_nodes(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Among nodes that fit, the least loaded takes the task: two 1-core tasks submitted
    together to three idle 2-core nodes run on two different nodes at once (a first-fit
    scheduler would put both on one node, which has room for both)."""
    c = make_cluster(3, per_node_args=[["--cores", "2", "--memory", "1G"]] * 3)
    gate = tmp_path / "gate"
    ran = tmp_path / "ran"
    ran.mkdir()
    hold = f'echo "$LEORONIC_NODE_NAME" > {ran}/"$LEORONIC_TASK_ID"; ' \
           f"while [ ! -e {gate} ]; do sleep 0.05; done"
    try:
        ids = submit_file(c, tmp_path / "two.txt",
                          [f"1024 1 1024 true '' '' '{hold}' pair-{i}" for i in range(2)])
        def both_started() -> dict[str, str]:
            seen = {p.name: p.read_text().strip() for p in ran.iterdir()}
            return seen if len(seen) == 2 and all(seen.values()) else {}
        nodes = wait_for(both_started, 30, "both tasks to start")
        assert sorted(nodes) == sorted(ids), nodes
        assert len(set(nodes.values())) == 2, f"both tasks run on one node: {nodes}"
    finally:
        gate.touch()
    assert c.sh("leoronic_wait").rc == 0


Span = tuple[str, float, float]


def claimed_ahead(c: Cluster, log: Path, ids: list[str]) -> tuple[dict[str, list[Span]], int]:
    """Per node, the tasks' own (node, start, end) in start order; and how many tasks were
    claimed (replicated claim time, from `leoronic_task_info --json`) before the task that
    ran before them on the same node had ended: claimed ahead, while the node was full."""
    import json

    spans = intervals(log)
    assert sorted(spans) == sorted(ids), spans
    r = c.sh("leoronic_task_info --json " + " ".join(ids))
    assert r.rc == 0, r
    claimed = {rec["id"]: rec["attempts"][-1]["claimed"] for rec in map(json.loads, r.out.splitlines())}
    by_node: dict[str, list[Span]] = defaultdict(list)
    ahead = 0
    for task, (node, start, end) in sorted(spans.items(), key=lambda kv: kv[1][1]):
        mine = by_node[node]
        if mine and claimed[task] < mine[-1][2]:
            ahead += 1
        mine.append((task, start, end))
    return by_node, ahead


@pytest.mark.parametrize("claim_ahead", ["0.1", "0"])
def test_short_tasks_claimed_ahead_never_overrun_a_node(make_cluster, tmp_path, claim_ahead) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster(3, per_node_args=[["--cores", "1", "--claim-ahead", claim_ahead]] * 3)
    log = tmp_path / "short.log"
    ids = submit_file(c, tmp_path / "short.txt", [
        f"1024 1 1024 true '' '' '{logged(log, 0)}' q-{i}" for i in range(240)
    ])
    w = c.sh("leoronic_wait", timeout=120)
    assert w.rc == 0, w
    by_node, ahead = claimed_ahead(c, log, ids)
    assert len(by_node) == 3, {n: len(s) for n, s in by_node.items()}
    for node, spans in by_node.items():  # one core each: never two at once, claimed ahead or not
        for a, b in zip(spans, spans[1:], strict=False):
            assert a[2] <= b[1], f"{node} ran two 1-core tasks at once: {a} {b}"
    if claim_ahead == "0":
        assert ahead == 0, f"{ahead} tasks were claimed while their node was full"
    else:
        assert ahead > 0, "no task was claimed ahead although every node was busy"


def test_long_tasks_after_short_ones_are_not_claimed_ahead_in_vain(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Audit finding: after a batch of millisecond tasks, each node took the next batch's
    1.5 s tasks dozens at a time, ahead, and gave them back unstarted a second later (each
    with a wasted attempt: TRY 2). Now only tasks that run quickly here let it claim ahead."""
    import json

    c = make_cluster(3, per_node_args=[["--cores", "2"]] * 3)
    submit_file(c, tmp_path / "short.txt", [f"1024 1 1024 true '' '' 'true' s-{i}" for i in range(300)])
    assert c.sh("leoronic_wait --timeout 60").rc == 0
    ids = submit_file(c, tmp_path / "long.txt", [
        f"1024 1 1024 true '' '' 'sleep 1.5' l-{i}" for i in range(12)])
    assert c.sh("leoronic_wait --timeout 60 " + " ".join(ids), timeout=90).rc == 0
    r = c.sh("leoronic_task_info --json " + " ".join(ids))
    records = [json.loads(line) for line in r.out.splitlines()]
    assert all([a["why"] for a in rec["attempts"]] == ["exit"] for rec in records), "\n".join(
        f"{rec['id']}: " + "; ".join(f"{a['node']} {a['claimed']:.3f}-{a['ended']:.3f} {a['why']}"
                                     for a in rec["attempts"]) for rec in records)

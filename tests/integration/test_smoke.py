"""The original README's three example tasks on a 3-worker cluster."""

import os
from pathlib import Path

import psutil

from tests.cluster import Cluster, process_gone, start_cluster, wait_for


def test_original_examples_complete_and_read_back(cluster3: Cluster) -> None:
    r = cluster3.sh(
        'leoronic_add_task 1024 1 1024 false "" "" "echo hello world" a\n'
        'leoronic_add_task 1024 1 1024 false "" "" "echo hi there; echo folks" b\n'
        "leoronic_add_task 1024 1 1024 false \"\" \"\" \"echo what's up\" c\n"
        "leoronic_add_task 1024 1 1024 false \"\" \"\" \"echo \\\"what's up\\\"\" d\n"
    )
    assert r.rc == 0, r
    assert r.out.split() == ["a", "b", "c", "d"]
    # The original's third example has an unbalanced quote: bash itself rejects it, and the
    # user sees bash's message and exit code; the quoted form works.
    wait = cluster3.sh("leoronic_wait a b c d")
    assert wait.rc == 1 and "1 of 4 tasks did not succeed: c" in wait.err, wait
    assert cluster3.sh("leoronic_result a").out == "hello world\n"
    assert cluster3.sh("leoronic_result b").out == "hi there\nfolks\n"
    c = cluster3.sh("leoronic_result c")
    assert c.rc == 2 and "unexpected EOF" in c.err, c
    assert cluster3.sh("leoronic_result d").out == "what's up\n"


def test_stopping_a_test_cluster_leaves_no_task_running(tmp_path: Path) -> None:
    """The harness's own promise (every test stops what it started): nodes are SIGKILLed,
    which leaves their tasks' sessions running, and `stop` then kills those too."""
    cluster = start_cluster(str(tmp_path / "cluster"), 1)
    try:
        r = cluster.sh('leoronic_add_task 1024 1 1024 true "" "" "echo \\$\\$ > pid; exec sleep 300" s')
        assert r.rc == 0, r
        pid_file = os.path.join(cluster.nodes[0].home, "work", "s-a1", "pid")
        pid = int(wait_for(lambda: os.path.exists(pid_file) and open(pid_file).read().strip(),
                           30, "the task to start"))
        wait_for(lambda: "sleep" in psutil.Process(pid).cmdline(), 10, "the task to exec sleep")
    finally:
        cluster.stop()
    wait_for(lambda: process_gone(pid), 10, "the task's process to be killed")

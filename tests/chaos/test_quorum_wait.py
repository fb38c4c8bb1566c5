"""A change that reaches a worker without a quorum waits there only as long as its client does.

Two of three workers are killed with SIGKILL; the survivor has no quorum but is not isolated yet
(`--isolation-after` is long here, so it does not refuse changes at once). A command run with
`LEORONIC_RETRY_S=1` must exit 3 after the worker's minimum wait (2 s) and its own second,
saying that the change may still be made, not after the 20 s every change used to wait.
"""

from __future__ import annotations

import time

from tests.chaos.test_failover import nodes_view, queue_states, submit
from tests.cluster import Cluster, wait_for

#: Seconds a command with LEORONIC_RETRY_S=1 may take here: the worker's 2 s minimum, the
#: client's 1 s, its tries at the dead workers and the start of two Python processes, with
#: room for a loaded machine. The old wait alone was 20 s.
BOUND_S = 12.0


def test_changes_on_a_worker_without_quorum_wait_as_long_as_the_client(make_cluster) -> None:  # type: ignore[no-untyped-def]
    args = [["--lease", "3", "--remove-after", "600", "--isolation-after", "600"]] * 3
    cluster: Cluster = make_cluster(3, per_node_args=args)
    n1, n2, n3 = cluster.nodes
    held = submit(cluster, "true", "", "qw-held", node=n1, LEORONIC_HOLD="1")
    assert queue_states(cluster, n1)[held] == "queued"

    cluster.kill(n2)
    cluster.kill(n3)
    wait_for(lambda: (v := nodes_view(cluster, n1)) is not None and not v.quorum, 30,
             "n1 to see it has no quorum", interval=0.3)

    for script, says in [
        ("leoronic_add_task 1024 1 1024 true '' '' true qw-new",
         "task qw-new may still be queued once the cluster has a quorum again"),
        (f"leoronic_del_task {held}", "the change may still be made once a majority is back"),
        (f"leoronic_priority 5 {held}", "the change may still be made once a majority is back"),
        ("leoronic_add_tag gpu", "the change may still be made once a majority is back"),
    ]:
        started = time.monotonic()
        r = cluster.sh(script, node=n1, timeout=60, LEORONIC_RETRY_S="1")
        took = time.monotonic() - started
        assert r.rc == 3 and says in r.err, r
        assert took < BOUND_S, f"{script}: took {took:.1f} s (the worker waited for a quorum)"
        # ...but no less than the worker's minimum: it did wait for a quorum before answering.
        assert took >= 2.0, f"{script}: answered in {took:.1f} s"

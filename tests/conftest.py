"""Shared fixtures: real clusters on loopback, stopped by PID after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import netns
from tests.cluster import Cluster, start_cluster


@pytest.fixture
def cluster3(tmp_path) -> Iterator[Cluster]:  # type: ignore[no-untyped-def]
    """Three workers on 127.0.0.1 joined by --peer, each offering the machine's resources."""
    cluster = start_cluster(str(tmp_path / "cluster"), 3)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def make_cluster(tmp_path) -> Iterator:  # type: ignore[no-untyped-def,type-arg]
    """Factory: make_cluster(count, per_node_args) -> Cluster; all are stopped afterwards."""
    made: list[Cluster] = []

    def make(count: int = 3, per_node_args=()) -> Cluster:  # type: ignore[no-untyped-def]
        cluster = start_cluster(str(tmp_path / f"cluster{len(made)}"), count, per_node_args)
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for c in made:
            c.stop()


@pytest.fixture
def ns_net() -> Iterator[netns.Net]:
    """Three hosts in network namespaces on a private bridge (skipped without root/iproute2);
    torn down, with every process started in them, afterwards."""
    why = netns.available()
    if why:
        pytest.skip(f"network namespaces unavailable: {why}")
    netns.remove_stale()
    net = netns.Net(3)
    try:
        net.build()
        net.wait_connected()
        yield net
    finally:
        net.teardown()

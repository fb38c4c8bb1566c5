"""Shared fixtures: real clusters on loopback, stopped by PID after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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

"""Search-test fixtures: one two-node Ray cluster on this machine, shared by the whole test session.

Starting Ray costs ~10-20 s on the 2-core test machine, so every Ray test uses this cluster (started
lazily by the first test that asks for it). It has two nodes with 1 CPU each and a custom resource
per node (``lb_node0``, ``lb_node1``) so tests can pin one actor per node and check that candidates
are scored on every node.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

NODE_RESOURCES = ("lb_node0", "lb_node1")


@dataclass
class RayCluster:
    address: str
    node_resources: tuple[str, ...]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A running two-node Ray cluster this process is connected to (shut down at session end)."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # pragma: no cover - another fixture or plugin started Ray
        pytest.skip("Ray is already initialised in this process; the shared test cluster needs its own")
    store = 200 * 1024 * 1024
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {NODE_RESOURCES[0]: 1}, "object_store_memory": store,
                        "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=1, resources={NODE_RESOURCES[1]: 1}, object_store_memory=store)
        ray.init(address=cluster.address, include_dashboard=False, logging_level="ERROR")
        cluster.wait_for_nodes()
        yield RayCluster(cluster.address, NODE_RESOURCES)
    finally:
        ray.shutdown()
        cluster.shutdown()

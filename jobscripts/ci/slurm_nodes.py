"""Which SLURM node each mpray node (MPI rank) runs on, checked from inside mpray.

    sbatch --wait --nodes=2 jobscripts/multi_node.sbatch jobscripts/ci/slurm_nodes.py

Rank 0 runs this; one task pinned to each mpray node reports the SLURM variables of the
rank that ran it (its workers inherit them), so the lines printed show that every rank
srun started joined the cluster, on the SLURM node srun put it on.  A value made on the
last rank is read on rank 0 too (RMA between "nodes").  tests/test_jobscripts.py reads the
``rank ... on SLURM node ...`` lines and ``OK slurm_nodes``.
"""

import os

import numpy as np

import mpray as ray
from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ray.remote
def where():
    env = os.environ
    return (ray.get_runtime_context().get_node_id(), env.get("SLURMD_NODENAME"),
            env.get("SLURM_NODEID"), env.get("SLURM_PROCID"))


@ray.remote
def produce(n):
    return np.full(n, 2.0)


def main() -> None:
    ray.init()
    nodes = ray.nodes()
    nodes.sort(key=lambda n: n["MPIRank"])
    slurm_nodes = set()
    for node in nodes:
        pin = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        node_id, name, slurm_id, procid = ray.get(where.options(scheduling_strategy=pin).remote())
        assert node_id == node["NodeID"], (node, node_id)  # it ran where it was pinned
        slurm_nodes.add(name)
        # (SLURM_PROCID is the MPI rank under srun; under mpiexec it numbers hydra's proxies)
        print(f"rank {node['MPIRank']} on SLURM node {name} "
              f"(SLURM_NODEID {slurm_id}, SLURM_PROCID {procid})")
    last = NodeAffinitySchedulingStrategy(nodes[-1]["NodeID"], soft=False)
    arr = ray.get(produce.options(scheduling_strategy=last).remote(1 << 20))
    assert arr.sum() == 2.0 * (1 << 20)
    ray.shutdown()
    print(f"OK slurm_nodes: {len(nodes)} ranks on {len(slurm_nodes)} SLURM node(s)")


if __name__ == "__main__":
    main()

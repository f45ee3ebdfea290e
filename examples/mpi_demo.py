"""mpray across MPI ranks: tasks, actors and large arrays, one script for any launcher.

    mpiexec -n 4 python examples/mpi_demo.py
    srun -n 4 python examples/mpi_demo.py          (inside a SLURM allocation)
    python examples/mpi_demo.py                    (one host: the same program runs)

Rank 0 runs this script; every other rank serves as a node inside ``ray.init()`` and
exits when rank 0 shuts down.  Written against the Ray API: ``import ray`` runs it too.
"""

import time

import numpy as np

import mpray as ray
from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ray.remote
def partial_sum(block):
    """A chunk of work: where it ran, and the sum of its block."""
    return ray.get_runtime_context().get_node_id(), float(block.sum())


@ray.remote
class Accumulator:
    """One per node: keeps a running vector, fed by many tasks."""

    def __init__(self, n):
        self.total = np.zeros(n)
        self.updates = 0

    def add(self, v):
        self.total += v
        self.updates += 1
        return self.updates

    def result(self):
        return ray.get_runtime_context().get_node_id(), self.updates, self.total


@ray.remote
def make_and_push(acc, n, seed):
    v = np.random.default_rng(seed).random(n)
    ray.get(acc.add.remote(v))
    return float(v.sum())


def main() -> None:
    t0 = time.perf_counter()
    ray.init()
    nodes = ray.nodes()
    print(f"init: {(time.perf_counter() - t0) * 1e3:.0f} ms, {len(nodes)} node(s), "
          f"{ray.cluster_resources()['CPU']:.0f} CPUs")

    # 1. a 100 MB array split into blocks, summed wherever there is room
    data = np.random.default_rng(0).random(100 * 2**20 // 8)
    blocks = [ray.put(b) for b in np.array_split(data, 16)]
    t = time.perf_counter()
    parts = ray.get([partial_sum.options(scheduling_strategy="SPREAD").remote(b)
                     for b in blocks])
    total = sum(s for _n, s in parts)
    used = len({n for n, _s in parts})
    print(f"sum of 100 MB over {used} node(s): {total:.3f} (numpy: {data.sum():.3f}) "
          f"in {time.perf_counter() - t:.3f} s")
    assert abs(total - data.sum()) < 1e-6 * data.sum()

    # 2. an actor pinned to each node; tasks anywhere push vectors to them
    n = 1 << 16
    accs = []
    for node in nodes:
        pin = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)

        @ray.remote(scheduling_strategy=pin)
        def create(n):
            return Accumulator.remote(n)

        accs.append(ray.get(create.remote(n)))
    sums = ray.get([make_and_push.options(scheduling_strategy="SPREAD").remote(
        accs[i % len(accs)], n, i) for i in range(4 * len(accs))])
    results = ray.get([a.result.remote() for a in accs])
    assert abs(sum(float(r[2].sum()) for r in results) - sum(sums)) < 1e-6 * sum(sums)
    print("accumulators: " + ", ".join(f"{nid[:6]}: {k} updates" for nid, k, _t in results))

    # 3. a large array produced on the last node, consumed on the driver (by RMA there)
    @ray.remote
    def produce(n):
        return np.full(n, 3.0)

    last = NodeAffinitySchedulingStrategy(nodes[-1]["NodeID"], soft=False)
    t = time.perf_counter()
    arr = ray.get(produce.options(scheduling_strategy=last).remote(50 * 2**20 // 8))
    print(f"50 MB array from node {nodes[-1]['MPIRank']}: sum {arr.sum():.0f} "
          f"in {(time.perf_counter() - t) * 1e3:.0f} ms")

    ray.shutdown()
    print("OK mpi_demo")


if __name__ == "__main__":
    main()

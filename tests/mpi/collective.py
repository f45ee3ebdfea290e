"""Run under mpiexec -n N (N >= 2): ``mpray.util.collective`` among members on different
ranks.

A group of N + 1 actors (two on rank 0, one on each other rank: uneven), pinned by node
affinity, runs every collective for three dtypes and an uneven size, once with the backend
chosen automatically (shared memory: the ranks share this host) and once through the
object store (arrays cross ranks by RMA, as between hosts).  Prints "OK collective" on
rank 0 when every check held (ranks > 0 never get past init)."""

import faulthandler
import signal

import numpy as np

import mpray as ray
from mpray_mpi.launch import detect
import mpray.util.collective as col
from mpray.util.collective import ReduceOp
from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

faulthandler.register(signal.SIGUSR2, all_threads=True)  # a hang: kill -USR2 dumps stacks
ray.init()
size = detect().size  # (the launcher's own count: MPICH, Open MPI, srun)
nodes = ray.nodes()
assert len(nodes) == size >= 2, (nodes, size)


def data(rank, n, dtype):
    return ((np.arange(n) * 7 + rank) % 4 + 1).astype(dtype)


@ray.remote(num_cpus=0)
class Member:
    def __init__(self, k, rank, backend, group):
        self.k, self.rank, self.group = k, rank, group
        col.init_collective_group(k, rank, backend=backend, group_name=group)

    def where(self):
        return ray.get_runtime_context().get_node_id(), col.get_group_backend(self.group)

    def run(self, n, dtype):
        k, r, g = self.k, self.rank, self.group
        a = data(r, n, dtype)
        col.allreduce(a, g)
        b = data(r, n, dtype)
        col.broadcast(b, k - 1, g)
        lst = [np.zeros(n, dtype) for _ in range(k)]
        col.allgather(lst, data(r, n, dtype), g)
        rs = np.zeros(n, dtype)
        col.reducescatter(rs, [data(r * 10 + i, n, dtype) for i in range(k)], g,
                          op=ReduceOp.MAX)
        col.barrier(g)
        got = np.zeros(n, dtype)
        if r % 2 == 0:
            col.send(a, (r + 1) % k, g)
            col.recv(got, (r - 1) % k, g)
        else:
            col.recv(got, (r - 1) % k, g)
            col.send(a, (r + 1) % k, g)
        return a, b, lst, rs, got

    def leave(self):
        col.destroy_collective_group(self.group)


def check(backend: str, want_backend: str) -> None:
    k = size + 1
    places = [nodes[0]] + nodes  # two members on rank 0
    ms = [Member.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        places[r]["NodeID"], soft=False)).remote(k, r, backend, f"mpi-{backend}")
        for r in range(k)]
    where = ray.get([m.where.remote() for m in ms])
    assert [w[0] for w in where] == [p["NodeID"] for p in places], where
    assert {w[1] for w in where} == {want_backend}, where
    for dtype in ("float64", "int32", "uint8"):
        for n in (1001, 70_001):
            want = np.add.reduce(np.stack([data(r, n, dtype) for r in range(k)]), axis=0,
                                 dtype=dtype)
            for r, (a, b, lst, rs, got) in enumerate(ray.get([m.run.remote(n, dtype)
                                                              for m in ms])):
                np.testing.assert_array_equal(a, want)
                np.testing.assert_array_equal(b, data(k - 1, n, dtype))
                for j, x in enumerate(lst):
                    np.testing.assert_array_equal(x, data(j, n, dtype))
                np.testing.assert_array_equal(rs, np.maximum.reduce(
                    np.stack([data(j * 10 + r, n, dtype) for j in range(k)]), axis=0))
                np.testing.assert_array_equal(got, want)
    ray.get([m.leave.remote() for m in ms])


check("auto", "shm")
check("store", "store")
ray.shutdown()
print("OK collective")

"""Run under mpiexec -n N with many ranks (the test runs it at 64): every rank is reached
by a pinned task and holds an actor, and values cross ranks both ways by RMA.

Prints "OK many_ranks" on rank 0 when every check held (ranks > 0 never get past init)."""

import faulthandler
import signal

import numpy as np

import mpray as ray
from mpray_mpi.launch import detect
from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

faulthandler.register(signal.SIGUSR2, all_threads=True)  # a hang: kill -USR2 dumps stacks
ray.init()
size = detect().size
nodes = ray.nodes()
assert [n["MPIRank"] for n in nodes] == list(range(size)), [n["MPIRank"] for n in nodes]
ids = [n["NodeID"] for n in nodes]
assert len(set(ids)) == size
pinned = [Affinity(nid, soft=False) for nid in ids]
# (over the inline limit: these values move by RMA, not inside messages)
N = 200_000


@ray.remote
def where(k):
    return ray.get_runtime_context().get_node_id(), k


@ray.remote
def make(n):
    return np.arange(n, dtype=np.float64)


@ray.remote
def total(a):
    return ray.get_runtime_context().get_node_id(), float(a.sum())


@ray.remote
class Resident:
    def __init__(self, k):
        self.k = k

    def hello(self, x):
        return ray.get_runtime_context().get_node_id(), self.k, x + self.k


# a task pinned to each rank runs there, and every result comes home in order
out = ray.get([where.options(scheduling_strategy=p).remote(k) for k, p in enumerate(pinned)],
              timeout=120)
assert out == [(nid, k) for k, nid in enumerate(ids)], out

# an actor on each rank, called from the driver
actors = [Resident.options(scheduling_strategy=p).remote(k) for k, p in enumerate(pinned)]
got = ray.get([a.hello.remote(1000) for a in actors], timeout=120)
assert got == [(nid, k, 1000 + k) for k, nid in enumerate(ids)], got

# a value made on the last rank, read on rank 0
a = ray.get(make.options(scheduling_strategy=pinned[-1]).remote(N), timeout=60)
assert a.shape == (N,) and a[-1] == N - 1

# a value made on rank 0, read by a task on every rank
ref = ray.put(np.ones(N))
sums = ray.get([total.options(scheduling_strategy=p).remote(ref) for p in pinned], timeout=120)
assert sums == [(nid, float(N)) for nid in ids], sums

del actors, a, ref
print("OK many_ranks", flush=True)
ray.shutdown()

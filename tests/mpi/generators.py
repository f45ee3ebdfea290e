"""Run under mpiexec -n N (N >= 2): generator tasks in a job of ranks.

A streaming generator runs where its placement puts it (its values stream home, in
order); its refs, and a dynamic generator's, travel between ranks like any refs.
Prints "OK generators" on rank 0 when every check held."""


import numpy as np

import mpray as ray
from mpray_mpi.launch import detect
from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

ray.init()
size = detect().size  # (the launcher's own count: MPICH, Open MPI, srun)
ids = [n["NodeID"] for n in ray.nodes()]
assert len(ids) == size >= 2
here = ray.get_runtime_context().get_node_id()


@ray.remote
def count(n):
    for i in range(n):
        yield i, ray.get_runtime_context().get_node_id()


@ray.remote
def arrays(n):
    for i in range(n):
        yield np.full(100_000, i)


@ray.remote(num_returns="dynamic")
def dyn(n):
    for i in range(n):
        yield np.full(50_000, i)


@ray.remote
def stream_here(n):
    """On another rank: iterate a generator there and send back the values."""
    return [ray.get(r) for r in count.remote(n)], ray.get_runtime_context().get_node_id()


@ray.remote
def total(a):
    return int(a.sum()), ray.get_runtime_context().get_node_id()


# the driver's stream: on rank 0, or on the rank its placement names (its values come
# home one by one, in order, with backpressure across the ranks too)
assert [ray.get(r) for r in count.remote(3)] == [(i, here) for i in range(3)]
for nid in ids:
    there = count.options(scheduling_strategy=Affinity(nid, soft=False),
                          _generator_backpressure_num_objects=2).remote(20)
    assert [ray.get(r, timeout=60) for r in there] == [(i, nid) for i in range(20)]

# many streams from the far rank, back to back: each one's end must come home before its
# task's end does (they once raced: the end found no task, and the next() waited forever)
for _ in range(40):
    there = count.options(scheduling_strategy=Affinity(ids[-1], soft=False),
                          _generator_backpressure_num_objects=2).remote(20)
    assert len([ray.get(r, timeout=60) for r in there]) == 20


@ray.remote
def fails_at(n):
    for i in range(n):
        yield i
    raise ValueError("boom")


got = []
for r in fails_at.options(scheduling_strategy=Affinity(ids[-1], soft=False)).remote(2):
    try:
        got.append(ray.get(r, timeout=60))
    except ValueError:
        got.append("error")
assert got == [0, 1, "error"], got

# every rank streams to its own tasks
for nid in ids:
    vals, where = ray.get(stream_here.options(
        scheduling_strategy=Affinity(nid, soft=False)).remote(4), timeout=60)
    assert where == nid and vals == [(i, nid) for i in range(4)], (vals, where, nid)

# streamed values in the store go to a task on another rank
refs = list(arrays.remote(3))
out = ray.get([total.options(scheduling_strategy=Affinity(ids[-1], soft=False)).remote(r)
               for r in refs], timeout=60)
assert out == [(i * 100_000, ids[-1]) for i in range(3)], out

# a dynamic generator run on another rank: its refs come home with its value
gen = ray.get(dyn.options(scheduling_strategy=Affinity(ids[-1], soft=False)).remote(3),
              timeout=60)
assert [int(ray.get(r)[0]) for r in gen] == [0, 1, 2]
# an actor's generator method, on this rank or another one
@ray.remote
class Source:
    def count(self, n):
        for i in range(n):
            yield i, ray.get_runtime_context().get_node_id()

    @ray.method(num_returns="dynamic")
    def batch(self, n):
        for i in range(n):
            yield i


here_actor = Source.remote()
assert [ray.get(r) for r in here_actor.count.remote(3)] == [(i, here) for i in range(3)]
there = Source.options(scheduling_strategy=Affinity(ids[-1], soft=False)).remote()
assert [ray.get(r) for r in ray.get(there.batch.remote(4), timeout=60)] == [0, 1, 2, 3]
assert [ray.get(r, timeout=60) for r in there.count.remote(3)] == [(i, ids[-1])
                                                                  for i in range(3)]
print("OK generators", flush=True)
ray.shutdown()

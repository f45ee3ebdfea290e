"""Run under mpiexec -n N (N >= 2): generator tasks in a job of ranks.

A streaming generator runs on its caller's rank (its values stream to its owner there);
its refs, and a dynamic generator's, travel between ranks like any refs.
Prints "OK generators" on rank 0 when every check held."""

import os

import numpy as np

import mpray as ray
from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

ray.init()
size = int(os.environ.get("PMI_SIZE") or os.environ.get("SLURM_STEP_NUM_TASKS") or 0)
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


# the driver's stream: on rank 0 (a stream does not move: a hard affinity to another
# rank fails clearly, SPREAD keeps it here with a warning)
assert [ray.get(r) for r in count.remote(3)] == [(i, here) for i in range(3)]
assert [ray.get(r) for r in count.options(scheduling_strategy="SPREAD").remote(2)] == [
    (i, here) for i in range(2)]
try:
    [ray.get(r, timeout=60) for r in count.options(
        scheduling_strategy=Affinity(ids[-1], soft=False)).remote(2)]
    raise AssertionError("a stream moved to another rank")
except ray.exceptions.TaskUnschedulableError as e:
    assert "caller's rank" in str(e), e

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
# an actor's generator method: streamed on its own rank, dynamic from another one (a
# stream across ranks is refused clearly)
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
try:
    [ray.get(r, timeout=60) for r in there.count.remote(2)]
    raise AssertionError("a stream across ranks ran")
except ray.exceptions.RayError as e:
    assert "another rank" in str(e), e
print("OK generators", flush=True)
ray.shutdown()

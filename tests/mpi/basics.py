"""Run under mpiexec -n N (N >= 2): ranks are nodes; tasks placed, objects moved by RMA.

Prints "OK basics" on rank 0 when every check held (ranks > 0 never get past init)."""

import faulthandler
import gc
import signal
import time

import numpy as np
import psutil

import mpray as ray
from mpray_mpi.launch import detect
from mpray import exceptions as exc
from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

faulthandler.register(signal.SIGUSR2, all_threads=True)  # a hang: kill -USR2 dumps stacks
ray.init()
size = detect().size  # (the launcher's own count: MPICH, Open MPI, srun)
nodes = ray.nodes()
assert len(nodes) == size, (len(nodes), size)
assert [n["MPIRank"] for n in nodes] == list(range(size))
ids = [n["NodeID"] for n in nodes]
assert len(set(ids)) == size
assert ray.cluster_resources()["CPU"] == sum(n["Resources"]["CPU"] for n in nodes)
# every rank's free resources, summed (nothing runs yet), and ranks on one host share
# its memory rather than each claiming all of it
assert ray.available_resources()["CPU"] == ray.cluster_resources()["CPU"]
assert ray.cluster_resources()["memory"] <= psutil.virtual_memory().total
assert ray.get_runtime_context().get_node_id() == ids[0]


@ray.remote
def where(x):
    return ray.get_runtime_context().get_node_id(), x * 2


# SPREAD reaches every rank; results come home in order
out = ray.get([where.options(scheduling_strategy="SPREAD").remote(i) for i in range(4 * size)])
assert {o[0] for o in out} == set(ids), out
assert [o[1] for o in out] == [2 * i for i in range(4 * size)]



# a function's first batch, before its run time is known, goes to ranks with an idle CPU
# once this rank's are taken (the paper's local scheduler forwards when overloaded): one
# 0.5 s task a rank (a CPU each), all running at once, not waiting for the first's time
@ray.remote
def nap(_i):
    start = time.time()
    time.sleep(0.5)
    return ray.get_runtime_context().get_node_id(), start, time.time()


runs = ray.get([nap.remote(i) for i in range(size)])
assert sorted(r[0] for r in runs) == sorted(ids), runs
assert max(r[1] for r in runs) < min(r[2] for r in runs), runs  # (their runs overlap)

# node affinity pins a task to a rank; a hard affinity to a missing node fails clearly
for nid in ids:
    assert ray.get(where.options(scheduling_strategy=Affinity(nid, soft=False)).remote(1))[0] == nid
try:
    ray.get(where.options(scheduling_strategy=Affinity("00" * 8, soft=False)).remote(1))
    raise AssertionError("a hard affinity to a missing node ran")
except exc.TaskUnschedulableError as e:
    assert "does not exist" in str(e)
assert ray.get(where.options(scheduling_strategy=Affinity("00" * 8, soft=True)).remote(2))[1] == 4

last = Affinity(ids[-1], soft=False)


@ray.remote
def make(n):
    return np.arange(n, dtype=np.float64)


@ray.remote
def total(a):
    return float(a.sum())


# a large result travels home by RMA; a large argument travels out by RMA
n = 3_000_000
a = ray.get(make.options(scheduling_strategy=last).remote(n))
assert a.shape == (n,) and a[-1] == n - 1 and not a.flags.writeable
ref = ray.put(np.ones(n))
assert ray.get(total.options(scheduling_strategy=last).remote(ref)) == float(n)
# chained across ranks: an argument that is the (pending) result of another rank's task
r1 = make.options(scheduling_strategy=Affinity(ids[1], soft=False)).remote(1000)
assert ray.get(total.options(scheduling_strategy=last).remote(r1)) == float(sum(range(1000)))


# objects created on another rank, their refs returned to the driver
@ray.remote
def put_there(n):
    return [ray.put(np.full(n, 7.0)), ray.put("small")]


@ray.remote
def store_used():
    return ray.api._node_stats()["arena_used"]


base = ray.get(store_used.options(scheduling_strategy=last).remote())
big_ref, small_ref = ray.get(put_there.options(scheduling_strategy=last).remote(500_000))
assert ray.get(small_ref) == "small"
assert float(ray.get(big_ref).sum()) == 7.0 * 500_000
assert ray.get(store_used.options(scheduling_strategy=last).remote()) > base
# a ref read out of a value fetched from there keeps its object alive there too
@ray.remote
def nest_there():
    return ray.put([ray.put(np.full(300_000, 3.0))])


outer = ray.get(nest_there.options(scheduling_strategy=last).remote())
inner = ray.get(outer)[0]
del outer
gc.collect()
time.sleep(0.5)  # (the outer object is gone there by now)
assert float(ray.get(inner, timeout=20).sum()) == 3.0 * 300_000
del inner
# they live on while the driver holds their refs, and go there once it drops them
del big_ref, small_ref
deadline = time.monotonic() + 10
while ray.get(store_used.options(scheduling_strategy=last).remote()) > base:
    assert time.monotonic() < deadline, "objects another rank returned refs to stayed there"
    time.sleep(0.05)


# a ref passed on by a rank that is not its object's home still holds it there (the
# driver lends on to the last rank the hold that rank 1 lent it)
mid = Affinity(ids[1], soft=False)


@ray.remote
class Keeper:
    def keep(self, refs):
        self.refs = refs

    def total(self):
        return float(ray.get(self.refs[0]).sum())

    def drop(self):
        self.refs = None


base = ray.get(store_used.options(scheduling_strategy=mid).remote())
held = ray.get(put_there.options(scheduling_strategy=mid).remote(400_000))
keeper = Keeper.options(scheduling_strategy=last).remote()
ray.get(keeper.keep.remote(held))
del held
gc.collect()
time.sleep(0.5)
assert ray.get(keeper.total.remote(), timeout=20) == 7.0 * 400_000
ray.get(keeper.drop.remote())
deadline = time.monotonic() + 10
while ray.get(store_used.options(scheduling_strategy=mid).remote()) > base:
    assert time.monotonic() < deadline, "objects passed on between ranks stayed at home"
    time.sleep(0.05)
del keeper


# nested: a task on another rank spreads its own tasks over the ranks
@ray.remote
def fan_out(k):
    refs = [where.options(scheduling_strategy="SPREAD").remote(i) for i in range(k)]
    return sorted({r[0] for r in ray.get(refs)}), ray.get_runtime_context().get_node_id()


seen, ran_on = ray.get(fan_out.options(scheduling_strategy=last).remote(4 * size))
assert ran_on == ids[-1] and set(seen) == set(ids), (seen, ids)


# errors keep their type across ranks
@ray.remote
def boom():
    raise KeyError("remote failure")


try:
    ray.get(boom.options(scheduling_strategy=last).remote())
    raise AssertionError("no error")
except KeyError as e:
    assert isinstance(e, exc.RayTaskError) and "remote failure" in str(e)

ray.shutdown()
print("OK basics", flush=True)

"""Run under mpiexec -n N (N >= 2): values beyond a rank's store spill there and come
back when another rank fetches them, and when tasks there read them.

Prints "OK spill" on rank 0 when every check held (ranks > 0 never get past init)."""

import faulthandler
import signal

import numpy as np

import mpray as ray
from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

faulthandler.register(signal.SIGUSR2, all_threads=True)  # a hang: kill -USR2 dumps stacks
MB = 1 << 20
STORE, VALUE = 48 * MB, 4 * MB
N = 3 * STORE // VALUE
ray.init(object_store_memory=STORE)
ids = [n["NodeID"] for n in ray.nodes()]


def value(i):
    return np.full(VALUE // 8, i, dtype=np.int64)


def intact(a, i):
    return a.shape == (VALUE // 8,) and int(a[0]) == i and int(a[-1]) == i and \
        int(a.sum()) == i * (VALUE // 8)


@ray.remote
def produce(i):
    return value(i)


@ray.remote
def check(a, i):
    return intact(a, i)


def stats():
    return ray.api._node_stats()["spill"]


there = Affinity(ids[1], soft=False)
# values made on rank 1, three times its store: spilled there, fetched here one by one
made = [produce.options(scheduling_strategy=there).remote(i) for i in range(N)]
ray.wait(made, num_returns=N, timeout=120, fetch_local=False)
for i, r in enumerate(made):
    assert intact(ray.get(r, timeout=60), i), f"value {i} from rank 1 changed"
# values put here, three times this store: spilled here, read by tasks on rank 1
puts = [ray.put(value(100 + i)) for i in range(N)]
assert stats()["spilled"] > 0, stats()
ok = ray.get([check.options(scheduling_strategy=there).remote(r, 100 + i)
              for i, r in enumerate(puts)], timeout=120)
assert ok == [True] * N, ok
# and read back here too (fetched copies of rank 1's values took room meanwhile)
assert all(intact(ray.get(r), 100 + i) for i, r in enumerate(puts))
del made, puts
ray.shutdown()
print("OK spill")

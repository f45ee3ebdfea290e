"""Run under mpiexec -n N (N >= 2): ``mpray.util.multiprocessing.Pool`` spans the ranks.

The default pool has one process per CPU of the whole job, spread over every rank; map,
starmap, imap on a generator, apply_async with callbacks, the initializer and errors
behave as on one host.  Prints "OK pool" on rank 0 when every check held (ranks > 0
never get past init)."""

import faulthandler
import itertools
import signal
import time

import mpray as ray
from mpray_mpi.launch import detect
from mpray.util.multiprocessing import Pool

faulthandler.register(signal.SIGUSR2, all_threads=True)  # a hang: kill -USR2 dumps stacks
ray.init()
size = detect().size  # (the launcher's own count: MPICH, Open MPI, srun)
ids = [n["NodeID"] for n in ray.nodes()]
assert len(ids) == size >= 2, (ids, size)
cpus = int(ray.cluster_resources()["CPU"])

_state = {}


def init_state(tag):
    _state["tag"] = tag


def where(x):
    time.sleep(0.05)  # (slow enough that every process gets some of the items)
    return ray.get_runtime_context().get_node_id(), _state.get("tag"), x * x


def add(a, b):
    return a + b


def fail_on_5(x):
    if x == 5:
        raise KeyError("item 5")
    return x


with Pool(initializer=init_state, initargs=("init",)) as pool:
    assert f"pool_size={cpus}" in repr(pool), (repr(pool), cpus)
    out = pool.map(where, range(8 * cpus), chunksize=1)
    assert [o[2] for o in out] == [x * x for x in range(8 * cpus)]
    assert {o[1] for o in out} == {"init"}  # the initializer ran in every process
    assert {o[0] for o in out} == set(ids), out  # every rank ran some of them
    assert pool.map(abs, range(-50_000, 0)) == list(range(50_000, 0, -1))
    assert pool.starmap(add, [(i, i) for i in range(100)]) == [2 * i for i in range(100)]
    gen = (i for i in range(200))
    assert list(pool.imap(abs, gen, 7)) == list(range(200))
    assert sorted(pool.imap_unordered(abs, range(-30, 0))) == list(range(1, 31))
    assert list(itertools.islice(pool.imap(abs, itertools.count()), 5)) == list(range(5))
    got = []
    r = pool.apply_async(add, (2, 3), callback=got.append)
    assert r.get(timeout=60) == 5 and got == [5]
    try:
        pool.map(fail_on_5, range(10))
        raise AssertionError("no error")
    except KeyError as e:
        assert "item 5" in str(e)

pool = Pool(2 * size)
assert sorted(pool.map(abs, range(-10, 0))) == list(range(1, 11))
pool.close()
pool.join()

ray.shutdown()
print("OK pool", flush=True)

"""pytest-benchmark suite for mpray's core operations.

    python -m pytest benchmarks/ --benchmark-only

Not collected by the default ``pytest`` run (testpaths=["tests"]).  Set
``MPRAY_BENCH_MODULE=ray`` to run the very same benchmarks against Ray
(pip install ray) for comparison; ``--benchmark-save``/``--benchmark-compare``
then put the two side by side.
"""

import importlib
import os

import numpy as np
import pytest

MODULE = os.environ.get("MPRAY_BENCH_MODULE", "mpray")
MiB = 1 << 20
N_SUBMIT = 1000
N_NESTED = 100

# The whole module may take a while on 2 cores (Ray's init alone is seconds).
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def ray():
    mod = importlib.import_module(MODULE)
    kw = {"num_cpus": 2}
    if MODULE == "ray":
        kw.update(include_dashboard=False, logging_level="WARNING")
    mod.init(**kw)
    try:
        yield mod
    finally:
        mod.shutdown()


@pytest.fixture(scope="module")
def fns(ray):
    # Local functions: pickled by value, so workers need not import this file.
    def noop():
        return None

    def nested(n):
        inner = ray.remote(noop)
        return len(ray.get([inner.remote() for _ in range(n)]))

    f = {"noop": ray.remote(noop), "nested": ray.remote(nested)}
    # Warm-up: workers started, functions exported.
    ray.get([f["noop"].remote() for _ in range(50)])
    assert ray.get(f["nested"].remote(N_NESTED)) == N_NESTED
    return f


def test_noop_round_trip(benchmark, ray, fns):
    noop = fns["noop"]
    benchmark.group = "tasks"
    benchmark(lambda: ray.get(noop.remote()))


def test_submit_1000_then_get(benchmark, ray, fns):
    noop = fns["noop"]
    benchmark.group = "tasks"
    benchmark.extra_info["tasks"] = N_SUBMIT

    def run():
        return ray.get([noop.remote() for _ in range(N_SUBMIT)])

    out = benchmark.pedantic(run, rounds=10, warmup_rounds=1)
    assert len(out) == N_SUBMIT


def test_nested_100(benchmark, ray, fns):
    nested = fns["nested"]
    benchmark.group = "tasks"
    benchmark.extra_info["inner_tasks"] = N_NESTED
    out = benchmark.pedantic(lambda: ray.get(nested.remote(N_NESTED)),
                             rounds=10, warmup_rounds=1)
    assert out == N_NESTED


def test_put_small(benchmark, ray):
    benchmark.group = "objects"
    benchmark(ray.put, 12345)


def test_get_small(benchmark, ray):
    benchmark.group = "objects"
    ref = ray.put(12345)
    assert benchmark(ray.get, ref) == 12345


def test_put_10mib(benchmark, ray):
    benchmark.group = "objects"
    arr = np.ones(10 * MiB // 8)
    benchmark.extra_info["bytes"] = arr.nbytes
    benchmark(ray.put, arr)


def test_get_10mib(benchmark, ray):
    benchmark.group = "objects"
    arr = np.ones(10 * MiB // 8)
    ref = ray.put(arr)
    benchmark.extra_info["bytes"] = arr.nbytes
    out = benchmark(ray.get, ref)
    assert out.nbytes == arr.nbytes
    assert not out.flags.writeable


@pytest.fixture(scope="module")
def actor(ray):
    class Bench:
        def noop(self):
            return None

        def total(self, a):
            return float(a.sum())

    a = ray.remote(Bench).remote()
    ray.get([a.noop.remote() for _ in range(50)])  # created and warm
    return a


def test_actor_round_trip(benchmark, ray, actor):
    benchmark.group = "actors"
    benchmark(lambda: ray.get(actor.noop.remote()))


def test_actor_submit_1000_then_get(benchmark, ray, actor):
    benchmark.group = "actors"
    benchmark.extra_info["calls"] = N_SUBMIT

    def run():
        return ray.get([actor.noop.remote() for _ in range(N_SUBMIT)])

    out = benchmark.pedantic(run, rounds=10, warmup_rounds=1)
    assert len(out) == N_SUBMIT


def test_actor_create_10(benchmark, ray):
    benchmark.group = "actors"

    class Empty:
        def ping(self):
            return 1

    cls = ray.remote(Empty)

    def run():
        actors = [cls.remote() for _ in range(10)]
        out = ray.get([a.ping.remote() for a in actors])
        for a in actors:
            ray.kill(a)
        return out

    assert benchmark.pedantic(run, rounds=5, warmup_rounds=1) == [1] * 10


def test_actor_arg_by_ref_10mib(benchmark, ray, actor):
    benchmark.group = "actors"
    arr = np.ones(10 * MiB // 8)
    ref = ray.put(arr)
    assert benchmark(lambda: ray.get(actor.total.remote(ref))) == float(arr.sum())

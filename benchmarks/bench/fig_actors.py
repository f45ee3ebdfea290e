"""Actor figures (Ray-API peers): round trip, async calls, n:n, creation, 100 MiB by ref."""

from __future__ import annotations

import gc
import time

from bench.measure import Skip, array, round_trips_us


def _actors_only(B):
    if not B.ray_api:
        raise Skip("no actors")


def fig_actor_rtt(B, p):
    _actors_only(B)
    return round_trips_us(B.fns["actor"].remote().noop.remote, B.get, p, 100)


def fig_actor_async(B, p):
    _actors_only(B)
    a = B.fns["actor"].remote()
    call, n = a.noop.remote, p["n"]
    B.get_many([call() for _ in range(200)])
    samples = []
    for _ in range(p["repeat"]):
        gc.collect()
        t0 = time.perf_counter()
        B.get_many([call() for _ in range(n)])
        samples.append(n / (time.perf_counter() - t0))
    return samples


def fig_actor_nn(B, p):
    _actors_only(B)
    targets = [B.fns["actor"].remote() for _ in range(2)]
    callers = [B.fns["caller"].remote(B.modname, targets) for _ in range(2)]
    k = p["nn_calls"] // 2
    B.get_many([c.run.remote(10) for c in callers])  # warm-up
    samples = []
    for _ in range(p["repeat"]):
        t0 = time.perf_counter()
        done = sum(B.get_many([c.run.remote(k) for c in callers]))
        samples.append(done / (time.perf_counter() - t0))
    return samples


def fig_actor_create(B, p):
    _actors_only(B)
    cls, n = B.fns["actor"], p["actors_n"]
    warm = [cls.remote() for _ in range(2)]
    B.get_many([a.noop.remote() for a in warm])
    del warm
    samples = []
    for _ in range(p["repeat"]):
        gc.collect()
        t0 = time.perf_counter()
        actors = [cls.remote() for _ in range(n)]
        B.get_many([a.noop.remote() for a in actors])
        samples.append(n / (time.perf_counter() - t0))
        for a in actors:
            B.ray.kill(a)
        del actors
        time.sleep(0.5)  # let the killed actors' processes go before the next round
    return samples


def fig_actor_arg_mid(B, p):
    _actors_only(B)
    a = B.fns["actor"].remote()
    arr = array(p["mid_bytes"])
    expect = float(arr.sum())
    ref = B.ray.put(arr)
    assert B.get(a.sum.remote(ref)) == expect  # warm-up + correctness
    samples = []
    for _ in range(p["repeat"]):
        gc.collect()
        t0 = time.perf_counter()
        B.get(a.sum.remote(ref))
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples

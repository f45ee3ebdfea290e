"""Task figures: start-up, idle footprint, no-op tasks, wait, 100 MiB by value."""

from __future__ import annotations

import gc
import time

from bench.backends import FuturesBackend
from bench.measure import FigError, Skip, array, round_trips_us
from bench.params import MiB
from bench.procs import tree_cpu_seconds, tree_pss


def fig_init_shutdown(B, p):
    """init / init+first task / shutdown, R cycles after one warm-up cycle."""
    out = {"init_s": [], "init_first_s": [], "shutdown_s": []}
    for i in range(p["repeat"] + 1):
        gc.collect()
        t0 = time.perf_counter()
        B.start()
        try:
            t1 = time.perf_counter()
            B.get(B.submitter("noop")())
            t2 = time.perf_counter()
        except BaseException:
            B.stop()  # leave the peer stopped for the next figures
            raise
        B.stop()
        t3 = time.perf_counter()
        if i == 0:
            continue  # warm-up cycle (imports, first-time setup)
        out["init_s"].append(t1 - t0)
        out["init_first_s"].append(t2 - t0)
        out["shutdown_s"].append(t3 - t2)
    return out


def fig_idle_memory(B, p):
    noop = B.submitter("noop")
    pss, nprocs, cpu = [], [], []
    for _ in range(p["repeat"]):
        B.get_many([noop() for _ in range(10)])
        gc.collect()
        time.sleep(1.0)
        total, n = tree_pss()
        pss.append(total / MiB)
        nprocs.append(n)
        # CPU used by the whole process tree while idle (a 2 s window), % of one core
        c0, t0 = tree_cpu_seconds(), time.perf_counter()
        time.sleep(2.0)
        cpu.append(100 * (tree_cpu_seconds() - c0) / (time.perf_counter() - t0))
    return {"idle_pss_mib": pss, "idle_nprocs": nprocs, "idle_cpu_pct": cpu}


def fig_noop_rtt(B, p):
    return round_trips_us(B.submitter("noop"), B.get, p, 50)


def fig_submit_get(B, p):
    noop, n = B.submitter("noop"), p["n"]
    B.get_many([noop() for _ in range(min(n, 200))])
    samples = []
    for _ in range(p["repeat"]):
        gc.collect()
        t0 = time.perf_counter()
        hs = [noop() for _ in range(n)]
        B.get_many(hs)
        samples.append(n / (time.perf_counter() - t0))
        del hs
    return samples


def fig_nested(B, p):
    if not B.ray_api:
        raise Skip("Ray API peers only")
    nested, n = B.submitter("nested"), p["nested_n"]
    for _ in range(2):  # warm-up (Ray may start an extra worker here)
        B.get(nested(B.modname, n))
    return [n / B.get(nested(B.modname, n)) for _ in range(p["repeat"])]


def fig_generator(B, p):
    """Streaming generator throughput: one task yields n values; the caller takes each
    ref as it comes and gets it."""
    if not B.ray_api:
        raise Skip("Ray API peers only")
    stream, n = B.submitter("stream"), p["n"]

    def once():
        t0 = time.perf_counter()
        k = 0
        for ref in stream(n):
            B.get(ref)
            k += 1
        if k != n:
            raise FigError(f"the generator gave {k} values, not {n}")
        return n / (time.perf_counter() - t0)

    once()  # warm-up
    return [once() for _ in range(p["repeat"])]


def _drainer(B):
    """``drain(handles)``: wait for one handle per call until none is left."""
    if B.ray_api:
        wait = B.ray.wait

        def drain(hs):
            pending, calls = hs, 0
            while pending:
                _, pending = wait(pending, num_returns=1)
                calls += 1
            return calls

    elif isinstance(B, FuturesBackend):
        cf = B.cf

        def drain(hs):
            # Same contract as ray.wait(num_returns=1): one future per call.
            pending, calls = set(hs), 0
            while pending:
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                pending.discard(next(iter(done)))
                calls += 1
            return calls

    else:
        raise Skip("Pool has no wait-for-any")
    return drain


def fig_wait(B, p):
    n = p["wait_n"]
    noop = B.submitter("noop")
    drain = _drainer(B)
    drain([noop() for _ in range(min(n, 100))])  # warm-up
    samples = []
    for _ in range(p["repeat"]):
        gc.collect()
        hs = [noop() for _ in range(n)]
        t0 = time.perf_counter()
        calls = drain(hs)
        samples.append(calls / (time.perf_counter() - t0))
        del hs
    return samples


def fig_arg_mid(B, p):
    arr = array(p["mid_bytes"])
    f = B.submitter("sum")
    expect = float(arr.sum())
    assert B.get(f(arr)) == expect  # warm-up + correctness
    samples = []
    for _ in range(p["repeat"]):
        gc.collect()
        t0 = time.perf_counter()
        B.get(f(arr))
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def fig_ret_mid(B, p):
    f, nbytes = B.submitter("big"), p["mid_bytes"]
    for _ in range(2):  # warm-up: both workers build their cached array
        x = B.get_many([f(nbytes), f(nbytes)])
        assert x[0].nbytes == nbytes
        del x
    samples = []
    for _ in range(p["repeat"]):
        gc.collect()
        t0 = time.perf_counter()
        x = B.get(f(nbytes))
        samples.append((time.perf_counter() - t0) * 1e3)
        del x
    return samples

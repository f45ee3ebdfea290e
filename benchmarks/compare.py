#!/usr/bin/env python
"""Compare mpray with Ray, multiprocessing.Pool and ProcessPoolExecutor.

Usage::

    python benchmarks/compare.py [--peers mpray,pool,futures,ray] [--repeat 5]
                                 [--quick] [--json out.json]

Every peer runs in a fresh subprocess (this same file, started with the
hidden ``--_worker PEER`` option), so peers never disturb each other.  Each
figure is measured ``--repeat`` times and the median is reported.  A peer
that fails (import error, crash, hang) gets a clear error line; the other
peers are still measured.

The Ray-API workloads (``mpray`` and ``ray``) are written once, against a
module object, so both run exactly the same code path.  ``pool`` and
``futures`` go through the same generic task figures via a thin adapter.

See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

ALL_PEERS = ("mpray", "pool", "futures", "ray")
RAY_API_PEERS = ("mpray", "ray")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Memory needed before the 1 GiB figures are attempted.
BIG_MEM_NEEDED = 6 * GiB


# ---------------------------------------------------------------------------
# Parameters and figure table (shared by the parent and the workers)
# ---------------------------------------------------------------------------


def params(args) -> dict:
    quick = args.quick
    n = args.n or (2000 if quick else 10000)
    return {
        "quick": quick,
        "repeat": args.repeat,
        "n": n,
        # ray.wait / futures.wait scan the whole pending list on every call,
        # so the wait loop is O(N^2): it uses a smaller N by default.
        "wait_n": args.wait_n or max(1, n // 5),
        "rtt_loops": 200 if quick else 1000,
        "nested_n": 100,
        "mid_bytes": 100 * MiB,
        "big_bytes": GiB,
        "big": (not quick) and not args.no_big,
        "nn_calls": 500 if quick else 2000,
        "actors_n": 20 if quick else 50,
        "figure_timeout": args.figure_timeout,
        "only": [g.strip() for g in (args.only or "").split(",") if g.strip()],
    }


def figures(p: dict) -> list[dict]:
    """Rows of the table: key, label, unit, which direction is better."""
    n, wn = p["n"], p["wait_n"]
    rows = [
        ("init_s", "init", "s", "lower"),
        ("init_first_s", "init + first task done", "s", "lower"),
        ("shutdown_s", "shutdown", "s", "lower"),
        ("idle_pss_mib", "idle PSS, driver + descendants", "MiB", "lower"),
        ("idle_cpu_pct", "idle CPU, driver + descendants", "% core", "lower"),
        ("idle_nprocs", "  processes counted for idle PSS", "procs", None),
        ("noop_rtt_us", "no-op task round trip", "us", "lower"),
        ("submit_get_rate", f"submit {n} no-ops, then get all", "tasks/s", "higher"),
        ("nested_rate", f"nested: task submits+gets {p['nested_n']} no-ops",
         "tasks/s", "higher"),
        ("wait_rate", f"wait(num_returns=1) loop over {wn} tasks", "waits/s",
         "higher"),
        ("put_small_rate", f"put small int x{n}", "puts/s", "higher"),
        ("get_small_rate", f"get small object x{n}", "gets/s", "higher"),
        ("put_mid_first_gbs", "put 100 MiB ndarray, fresh space", "GB/s", "higher"),
        ("put_mid_reuse_gbs", "put 100 MiB ndarray, reused space", "GB/s",
         "higher"),
        ("get_mid_ms", "get 100 MiB ndarray", "ms", "lower"),
        ("put_big_first_gbs", "put 1 GiB ndarray, fresh space", "GB/s", "higher"),
        ("put_big_reuse_gbs", "put 1 GiB ndarray, reused space", "GB/s", "higher"),
        ("get_big_ms", "get 1 GiB ndarray", "ms", "lower"),
        ("get_readonly", "got 100 MiB ndarray is read-only", "check", None),
        ("get_big_readonly", "got 1 GiB ndarray is read-only", "check", None),
        ("arg_mid_ms", "task(100 MiB ndarray arg) -> sum", "ms", "lower"),
        ("ret_mid_ms", "task returns 100 MiB ndarray, get", "ms", "lower"),
        ("actor_rtt_us", "actor call round trip", "us", "lower"),
        ("actor_async_rate", f"actor: submit {n} calls, then get all", "calls/s",
         "higher"),
        ("actor_nn_rate", f"n:n actor calls (2 callers x 2 actors, {p['nn_calls']} each)",
         "calls/s", "higher"),
        ("actor_create_rate", f"create {p['actors_n']} actors, each answers once",
         "actors/s", "higher"),
        ("actor_arg_mid_ms", "actor method(ref to 100 MiB ndarray) -> sum", "ms",
         "lower"),
    ]
    return [dict(key=k, label=lab, unit=u, better=b) for k, lab, u, b in rows]


# ---------------------------------------------------------------------------
# Task bodies.  Module level so Pool/Executor (fork) can pickle them by
# reference; Ray and mpray pickle them by value with cloudpickle.
# ---------------------------------------------------------------------------


def _noop():
    return None


def _sum(a):
    return float(a.sum())


def _big(nbytes):
    # The array is cached in the worker process so that the figure measures
    # moving the result back, not the worker's page faults.
    import numpy as np

    a = getattr(sys, "_mpray_bench_big", None)
    if a is None or a.nbytes != nbytes:
        a = np.ones(nbytes // 8, dtype=np.float64)
        sys._mpray_bench_big = a
    return a


def _nested(modname, n):
    """Runs inside a task: submit ``n`` no-ops and get them; returns seconds."""
    import importlib as _il
    import time as _t

    mod = _il.import_module(modname)
    f = mod.remote(_noop)
    mod.get(f.remote())  # warm-up: exports the function
    t0 = _t.perf_counter()
    refs = [f.remote() for _ in range(n)]
    mod.get(refs)
    return _t.perf_counter() - t0


class _BenchActor:
    """The actor of the actor figures (Ray API peers)."""

    def noop(self):
        return None

    def sum(self, a):
        return float(a.sum())


class _BenchCaller:
    """n:n figure: calls every target ``k`` times, round robin, then gets them all."""

    def __init__(self, modname, targets):
        import importlib as _il

        self.get = _il.import_module(modname).get
        self.targets = targets

    def run(self, k):
        calls = [t.noop.remote() for _ in range(k) for t in self.targets]
        self.get(calls)
        return len(calls)


# ---------------------------------------------------------------------------
# Backends: a uniform submit/get interface over the four peers
# ---------------------------------------------------------------------------


class RayAPIBackend:
    """mpray and ray: the same code, parameterised by the module."""

    ray_api = True

    def __init__(self, modname: str):
        self.modname = modname
        self.ray = importlib.import_module(modname)
        self.fns = {}

    def version(self):
        return getattr(self.ray, "__version__", "?")

    def init_kwargs(self):
        kw = {"num_cpus": 2}
        if self.modname == "ray":
            kw.update(include_dashboard=False, logging_level="WARNING")
        return kw

    def start(self):
        self.ray.init(**self.init_kwargs())
        r = self.ray.remote
        self.fns = {
            "noop": r(_noop),
            "sum": r(_sum),
            "big": r(_big),
            "nested": r(_nested),
            "actor": r(_BenchActor),
            "caller": r(_BenchCaller),
        }

    def stop(self):
        self.ray.shutdown()
        self.fns = {}

    def submitter(self, name):
        return self.fns[name].remote

    def get(self, h):
        return self.ray.get(h)

    def get_many(self, hs):
        return self.ray.get(hs)


class PoolBackend:
    ray_api = False

    def __init__(self):
        import multiprocessing

        self.ctx = multiprocessing.get_context("fork")
        self.pool = None

    def version(self):
        return platform.python_version()

    def start(self):
        self.pool = self.ctx.Pool(2)

    def stop(self):
        self.pool.close()
        self.pool.join()
        self.pool = None

    def submitter(self, name):
        fn = {"noop": _noop, "sum": _sum, "big": _big}[name]
        apply_async = self.pool.apply_async
        return lambda *a: apply_async(fn, a)

    def get(self, h):
        return h.get()

    def get_many(self, hs):
        return [h.get() for h in hs]


class FuturesBackend:
    ray_api = False

    def __init__(self):
        import concurrent.futures as cf

        self.cf = cf
        self.ex = None

    def version(self):
        return platform.python_version()

    def start(self):
        self.ex = self.cf.ProcessPoolExecutor(2)

    def stop(self):
        self.ex.shutdown(wait=True)
        self.ex = None

    def submitter(self, name):
        fn = {"noop": _noop, "sum": _sum, "big": _big}[name]
        submit = self.ex.submit
        return lambda *a: submit(fn, *a)

    def get(self, h):
        return h.result()

    def get_many(self, hs):
        return [h.result() for h in hs]


def make_backend(peer):
    if peer in RAY_API_PEERS:
        return RayAPIBackend(peer)
    if peer == "pool":
        return PoolBackend()
    if peer == "futures":
        return FuturesBackend()
    raise ValueError(f"unknown peer {peer!r}")


# ---------------------------------------------------------------------------
# Figures.  Each returns a list of samples (one per repeat), a dict
# {key: samples}, or raises Skip.
# ---------------------------------------------------------------------------


class Skip(Exception):
    pass


class FigureTimeout(Exception):
    pass


def _median(xs):
    return statistics.median(xs)


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


def _tree_pss():
    import psutil

    me = psutil.Process()
    procs = [me] + me.children(recursive=True)
    total, n = 0, 0
    for pr in procs:
        try:
            total += pr.memory_full_info().pss
            n += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total, n


def _tree_cpu_seconds() -> float:
    import psutil

    me = psutil.Process()
    total = 0.0
    for pr in [me] + me.children(recursive=True):
        try:
            t = pr.cpu_times()
            total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def fig_idle_memory(B, p):
    noop = B.submitter("noop")
    pss, nprocs, cpu = [], [], []
    for _ in range(p["repeat"]):
        B.get_many([noop() for _ in range(10)])
        gc.collect()
        time.sleep(1.0)
        total, n = _tree_pss()
        pss.append(total / MiB)
        nprocs.append(n)
        # CPU used by the whole process tree while idle (a 2 s window), % of one core
        c0, t0 = _tree_cpu_seconds(), time.perf_counter()
        time.sleep(2.0)
        cpu.append(100 * (_tree_cpu_seconds() - c0) / (time.perf_counter() - t0))
    return {"idle_pss_mib": pss, "idle_nprocs": nprocs, "idle_cpu_pct": cpu}


def _round_trips_us(call, get, p, warmup):
    """Median latency of ``get(call())`` per repeat, in µs."""
    for _ in range(warmup):
        get(call())
    samples = []
    pc = time.perf_counter
    for _ in range(p["repeat"]):
        lat = []
        for _ in range(p["rtt_loops"]):
            t0 = pc()
            get(call())
            lat.append(pc() - t0)
        samples.append(_median(lat) * 1e6)
    return samples


def fig_noop_rtt(B, p):
    return _round_trips_us(B.submitter("noop"), B.get, p, 50)


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


def fig_wait(B, p):
    n = p["wait_n"]
    noop = B.submitter("noop")
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


def fig_small_put_get(B, p):
    if not B.ray_api:
        raise Skip("no object store")
    ray, n = B.ray, p["n"]
    put, get = ray.put, ray.get
    get([put(i) for i in range(min(n, 200))])  # warm-up
    puts, gets = [], []
    for _ in range(p["repeat"]):
        gc.collect()
        t0 = time.perf_counter()
        refs = [put(i) for i in range(n)]
        t1 = time.perf_counter()
        for r in refs:
            get(r)
        t2 = time.perf_counter()
        puts.append(n / (t1 - t0))
        gets.append(n / (t2 - t1))
        del refs
    return {"put_small_rate": puts, "get_small_rate": gets}


def _array(nbytes):
    import numpy as np

    return np.ones(nbytes // 8, dtype=np.float64)  # written: pages touched


class FigError:
    """A failed sub-figure inside a group whose other figures succeeded."""

    def __init__(self, exc):
        self.error = f"{type(exc).__name__}: {exc}"
        self.traceback = traceback.format_exc()


def _big_put_get(B, p, nbytes, tag, max_held):
    """put fresh / get / put reused for one array size.

    Returns ({key: samples or FigError}, readonly-ok or None)."""
    ray = B.ray
    arr = _array(nbytes)
    ray.get(ray.put(b"warm-up"))
    out, ok = {}, None
    k_fresh, k_get, k_reuse = (f"put_{tag}_first_gbs", f"get_{tag}_ms",
                               f"put_{tag}_reuse_gbs")

    # Fresh space: keep every ref alive so each put lands in new store space.
    held, fresh = [], []
    try:
        for _ in range(max(1, min(p["repeat"], max_held))):
            t0 = time.perf_counter()
            held.append(ray.put(arr))
            fresh.append(nbytes / 1e9 / (time.perf_counter() - t0))
        out[k_fresh] = fresh
    except Exception as e:  # noqa: BLE001
        out[k_fresh] = FigError(e)

    # get: expected O(1) (a zero-copy view on the store).
    try:
        ref = held[0] if held else ray.put(arr)
        x = ray.get(ref)
        ok = _readonly_ok(x, nbytes)
        del x
        gets = []
        for _ in range(p["repeat"]):
            t0 = time.perf_counter()
            x = ray.get(ref)
            gets.append((time.perf_counter() - t0) * 1e3)
            ok = ok and _readonly_ok(x, nbytes)
            del x
        del ref
        out[k_get] = gets
    except Exception as e:  # noqa: BLE001
        out[k_get] = FigError(e)
    del held
    gc.collect()

    # Reused space: put, drop the ref, put again (first put is warm-up).
    reuse = []
    try:
        for i in range(p["repeat"] + 1):
            t0 = time.perf_counter()
            ref = ray.put(arr)
            dt = time.perf_counter() - t0
            del ref
            gc.collect()
            if i:
                reuse.append(nbytes / 1e9 / dt)
        out[k_reuse] = reuse
    except Exception as e:  # noqa: BLE001
        out[k_reuse] = FigError(e)
    return out, ok


def _readonly_ok(x, nbytes):
    import numpy as np

    return (isinstance(x, np.ndarray) and x.nbytes == nbytes
            and not x.flags.writeable)


def fig_mid_put_get(B, p):
    if not B.ray_api:
        raise Skip("no object store")
    out, ok = _big_put_get(B, p, p["mid_bytes"], "mid", max_held=p["repeat"])
    if ok is not None:
        out["get_readonly"] = ["yes" if ok else "NO"]
    return out


def fig_big_put_get(B, p):
    if not B.ray_api:
        raise Skip("no object store")
    if not p["big"]:
        raise Skip("--quick / --no-big")
    import psutil

    avail = psutil.virtual_memory().available
    if avail < BIG_MEM_NEEDED:
        raise Skip(f"only {avail / GiB:.1f} GiB available, need "
                   f"{BIG_MEM_NEEDED / GiB:.0f}")
    out, ok = _big_put_get(B, p, p["big_bytes"], "big", max_held=3)
    if ok is not None:
        out["get_big_readonly"] = ["yes" if ok else "NO"]
    return out


def fig_arg_mid(B, p):
    arr = _array(p["mid_bytes"])
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


def _actors_only(B):
    if not B.ray_api:
        raise Skip("no actors")


def fig_actor_rtt(B, p):
    _actors_only(B)
    return _round_trips_us(B.fns["actor"].remote().noop.remote, B.get, p, 100)


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
    arr = _array(p["mid_bytes"])
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


# ---------------------------------------------------------------------------
# Worker (runs in the per-peer subprocess)
# ---------------------------------------------------------------------------


def worker_main(peer, p, results_path):
    out = open(results_path, "a", buffering=1)

    def emit(**rec):
        out.write(json.dumps(rec) + "\n")
        out.flush()

    def on_alarm(signum, frame):
        raise FigureTimeout(f"figure exceeded {p['figure_timeout']} s")

    signal.signal(signal.SIGALRM, on_alarm)

    def run(name, fn, *args):
        """Run one figure group, emit its results (or skip/error)."""
        if p["only"] and name not in p["only"]:
            return None
        gc.collect()
        signal.alarm(p["figure_timeout"])
        try:
            res = fn(*args)
        except Skip as e:
            emit(group=name, skip=str(e))
            return None
        except BaseException as e:  # noqa: BLE001 - report, keep going
            if isinstance(e, KeyboardInterrupt):
                raise
            emit(group=name, error=f"{type(e).__name__}: {e}",
                 traceback=traceback.format_exc())
            print(f"[{peer}] {name} failed:\n{traceback.format_exc()}",
                  file=sys.stderr, flush=True)
            return None
        finally:
            signal.alarm(0)
        if not isinstance(res, dict):
            res = {name: res}
        for key, samples in res.items():
            if isinstance(samples, FigError):
                emit(key=key, error=samples.error,
                     traceback=samples.traceback)
                print(f"[{peer}] {key} failed:\n{samples.traceback}",
                      file=sys.stderr, flush=True)
            else:
                emit(key=key, samples=samples)
        print(f"[{peer}] {name} done", file=sys.stderr, flush=True)
        return res

    try:
        B = make_backend(peer)
    except BaseException as e:  # noqa: BLE001
        emit(fatal=f"cannot load peer {peer!r}: {type(e).__name__}: {e}",
             traceback=traceback.format_exc())
        return 2
    emit(meta={"peer": peer, "version": B.version()})

    run("init_shutdown", fig_init_shutdown, B, p)
    gc.collect()
    try:
        B.start()
    except BaseException as e:  # noqa: BLE001
        emit(fatal=f"init failed: {type(e).__name__}: {e}",
             traceback=traceback.format_exc())
        return 3
    try:
        run("idle_memory", fig_idle_memory, B, p)
        run("noop_rtt_us", fig_noop_rtt, B, p)
        run("submit_get_rate", fig_submit_get, B, p)
        run("nested_rate", fig_nested, B, p)
        run("wait_rate", fig_wait, B, p)
        run("small_put_get", fig_small_put_get, B, p)
        # Large puts first, while the store's space is still untouched, so
        # that "fresh space" means it; the task figures below reuse space.
        run("mid_put_get", fig_mid_put_get, B, p)
        run("big_put_get", fig_big_put_get, B, p)
        run("arg_mid_ms", fig_arg_mid, B, p)
        run("ret_mid_ms", fig_ret_mid, B, p)
        run("actor_rtt_us", fig_actor_rtt, B, p)
        run("actor_async_rate", fig_actor_async, B, p)
        run("actor_nn_rate", fig_actor_nn, B, p)
        run("actor_create_rate", fig_actor_create, B, p)
        run("actor_arg_mid_ms", fig_actor_arg_mid, B, p)
    finally:
        try:
            B.stop()
        except BaseException as e:  # noqa: BLE001
            emit(error_shutdown=f"{type(e).__name__}: {e}",
                 traceback=traceback.format_exc())
    emit(done=True)
    out.close()
    return 0


GROUPS = ("init_shutdown", "idle_memory", "noop_rtt_us", "submit_get_rate",
          "nested_rate", "wait_rate", "small_put_get", "mid_put_get",
          "big_put_get", "arg_mid_ms", "ret_mid_ms", "actor_rtt_us",
          "actor_async_rate", "actor_nn_rate", "actor_create_rate", "actor_arg_mid_ms")

# Which figure keys each group produces (to mark skips/errors per key).
GROUP_KEYS = {
    "init_shutdown": ["init_s", "init_first_s", "shutdown_s"],
    "idle_memory": ["idle_pss_mib", "idle_nprocs", "idle_cpu_pct"],
    "nested_rate": ["nested_rate"],
    "small_put_get": ["put_small_rate", "get_small_rate"],
    "mid_put_get": ["put_mid_first_gbs", "put_mid_reuse_gbs", "get_mid_ms",
                    "get_readonly"],
    "big_put_get": ["put_big_first_gbs", "put_big_reuse_gbs", "get_big_ms",
                    "get_big_readonly"],
}


# ---------------------------------------------------------------------------
# Parent: run peers, collect, print
# ---------------------------------------------------------------------------


def _descendants(pid):
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:  # noqa: BLE001
        return []


def _kill_tree(proc):
    """Kill a timed-out worker and everything it started, by PID."""
    import psutil

    kids = _descendants(proc.pid)  # snapshot before the parent dies
    try:
        proc.kill()
    except OSError:
        pass
    for pr in kids:
        try:
            pr.kill()
        except psutil.Error:
            pass
    proc.wait()
    psutil.wait_procs(kids, timeout=10)


def run_peer(peer, args, p):
    """Run one peer's worker subprocess; return its parsed records."""
    res = {"records": [], "status": "ok", "error": None}
    if peer == "ray" and importlib.util.find_spec("ray") is None:
        res.update(status="skipped", error="ray is not importable "
                   "(pip install ray); skipped")
        return res
    fd, path = tempfile.mkstemp(prefix=f"mpray-bench-{peer}-", suffix=".jsonl")
    os.close(fd)
    errf = tempfile.TemporaryFile(mode="w+")
    env = dict(os.environ)
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", peer,
           "--_results", path, "--repeat", str(args.repeat),
           "--figure-timeout", str(args.figure_timeout)]
    if args.quick:
        cmd.append("--quick")
    if args.no_big:
        cmd.append("--no-big")
    if args.n:
        cmd += ["--n", str(args.n)]
    if args.wait_n:
        cmd += ["--wait-n", str(args.wait_n)]
    if args.only:
        cmd += ["--only", args.only]
    t0 = time.perf_counter()
    # Popen + wait(timeout) is what subprocess.run(timeout=) does, but on a
    # timeout we also kill the worker's descendants (Ray's raylet/gcs, pool
    # workers), by PID, rather than orphaning them.
    proc = subprocess.Popen(cmd, stdout=errf, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, cwd=REPO_ROOT)
    try:
        rc = proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        rc = None
    except KeyboardInterrupt:
        _kill_tree(proc)
        raise
    elapsed = time.perf_counter() - t0
    errf.seek(0)
    log = errf.read()
    errf.close()
    with open(path) as fh:
        for line in fh:
            try:
                res["records"].append(json.loads(line))
            except json.JSONDecodeError:
                pass
    os.unlink(path)
    res["elapsed_s"] = elapsed
    res["log_tail"] = log[-4000:]
    fatal = [r for r in res["records"] if "fatal" in r]
    if fatal:
        res.update(status="failed", error=fatal[0]["fatal"],
                   traceback=fatal[0].get("traceback"))
    elif rc is None:
        res.update(status="timeout",
                   error=f"worker timed out after {args.timeout} s "
                         "(killed; figures measured before are kept)")
    elif rc != 0 or not any(r.get("done") for r in res["records"]):
        last = [ln for ln in log.strip().splitlines() if ln.strip()]
        res.update(status="failed",
                   error=f"worker exited with code {rc}: "
                         f"{last[-1] if last else '(no output)'}")
    return res


def collect(peer_res, figs, p):
    """Turn a peer's records into {key: cell} with value/samples/skip/error."""
    cells = {}
    for r in peer_res["records"]:
        if "key" in r and "error" in r:
            cells[r["key"]] = {"error": r["error"],
                               "traceback": r.get("traceback")}
        elif "key" in r:
            s = r["samples"]
            if s and isinstance(s[0], str):
                val = s[-1]
            else:
                val = _median(s)
            cells[r["key"]] = {"value": val, "samples": s}
        elif "group" in r:
            keys = GROUP_KEYS.get(r["group"], [r["group"]])
            for k in keys:
                if "skip" in r:
                    cells.setdefault(k, {"skip": r["skip"]})
                else:
                    cells.setdefault(k, {"error": r["error"],
                                         "traceback": r.get("traceback")})
    if peer_res["status"] != "ok":
        for f in figs:
            cells.setdefault(f["key"], {"error": peer_res["error"]})
    return cells


def fmt(v):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer()
                              and abs(v) < 1e6):
        return f"{int(v):,}"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def ratio(mine, other, better):
    if better is None:
        return None
    a, b = mine.get("value"), other.get("value")
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return None
    if a <= 0 or b <= 0:
        return None
    return a / b if better == "higher" else b / a


def cell_text(c):
    if c is None:
        return "—"
    if "value" in c:
        return fmt(c["value"])
    if "skip" in c:
        return "—"
    return "ERR"


def print_table(figs, peers, cells, out=sys.stdout):
    ratio_cols = [o for o in ("ray", "pool") if "mpray" in peers and o in peers]
    head = ["figure", "unit", "better"] + list(peers) + [f"mpray/{o}"
                                                         for o in ratio_cols]
    rows = []
    for f in figs:
        if all(f["key"] not in cells[pe] for pe in peers):
            continue  # not measured at all (--only)
        row = [f["label"], f["unit"], f["better"] or ""]
        row += [cell_text(cells[pe].get(f["key"])) for pe in peers]
        for o in ratio_cols:
            r = ratio(cells["mpray"].get(f["key"], {}),
                      cells[o].get(f["key"], {}), f["better"])
            row.append("—" if r is None else f"{r:.2f}x")
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]

    def line(r):
        cols = []
        for i, (x, w) in enumerate(zip(r, widths)):
            cols.append(str(x).ljust(w) if i < 3 else str(x).rjust(w))
        return "  ".join(cols).rstrip()

    print(line(head), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in rows:
        print(line(r), file=out)
    if ratio_cols:
        print("\nRatio columns: >1 means mpray is better (rates: mpray/peer; "
              "times and memory: peer/mpray).", file=out)


def parent_main(args):
    peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    bad = [x for x in peers if x not in ALL_PEERS]
    if bad:
        sys.exit(f"unknown peer(s): {', '.join(bad)}; choose from "
                 f"{', '.join(ALL_PEERS)}")
    p = params(args)
    figs = figures(p)
    import psutil

    print(f"# mpray comparison: repeat={p['repeat']} quick={p['quick']} "
          f"N={p['n']} wait_N={p['wait_n']} python={platform.python_version()} "
          f"cpus={os.cpu_count()} mem={psutil.virtual_memory().total / GiB:.0f}"
          f" GiB", file=sys.stderr)
    results, cells, meta = {}, {}, {}
    for peer in peers:
        print(f"# running peer {peer} ...", file=sys.stderr, flush=True)
        r = run_peer(peer, args, p)
        results[peer] = r
        cells[peer] = collect(r, figs, p)
        for rec in r["records"]:
            if "meta" in rec:
                meta[peer] = rec["meta"]
        status = r["status"]
        el = r.get("elapsed_s")
        print(f"# peer {peer}: {status}"
              + (f" in {el:.1f} s" if el is not None else "")
              + (f" — {r['error']}" if r["error"] else ""),
              file=sys.stderr, flush=True)
    print()
    vers = ", ".join(f"{pe} {meta[pe]['version']}" for pe in peers
                     if pe in meta)
    print(f"Medians of {p['repeat']} repeats{' (quick)' if p['quick'] else ''}"
          f"; {vers}; {os.cpu_count()} CPUs")
    print()
    print_table(figs, peers, cells)

    notes = []
    for pe in peers:
        r = results[pe]
        if r["status"] != "ok":
            notes.append(f"{pe}: {r['status'].upper()}: {r['error']}")
        by_err = {}
        for k, c in cells[pe].items():
            if "error" in c and c["error"] != r.get("error"):
                by_err.setdefault(c["error"], []).append(k)
        for err, keys in by_err.items():
            notes.append(f"{pe}: {', '.join(keys)}: ERROR: {err}")
    skips = sorted({f"{pe}: {k}: {c['skip']}" for pe in peers
                    for k, c in cells[pe].items() if "skip" in c})
    if notes:
        print("\nErrors:")
        for n in notes:
            print("  " + n)
    if args.verbose:
        print("\nSamples (in measurement order):")
        for pe in peers:
            for f in figs:
                c = cells[pe].get(f["key"], {})
                if "samples" in c and len(c["samples"]) > 1:
                    print(f"  {pe}: {f['key']}: "
                          + ", ".join(fmt(x) for x in c["samples"]))
    if skips and args.verbose:
        print("\nSkipped:")
        for s in skips:
            print("  " + s)

    if args.json:
        doc = {
            "params": p,
            "host": {"python": platform.python_version(),
                     "platform": platform.platform(),
                     "cpus": os.cpu_count(),
                     "mem_total": psutil.virtual_memory().total},
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "figures": figs,
            "peers": {pe: {"status": results[pe]["status"],
                           "error": results[pe]["error"],
                           "traceback": results[pe].get("traceback"),
                           "elapsed_s": results[pe].get("elapsed_s"),
                           "version": meta.get(pe, {}).get("version"),
                           "log_tail": results[pe].get("log_tail")
                           if results[pe]["status"] != "ok" else None,
                           "figures": cells[pe]}
                      for pe in peers},
        }
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1)
        print(f"\nwrote {args.json}")
    return 0 if all(results[pe]["status"] in ("ok", "skipped")
                    for pe in peers) else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", default=",".join(ALL_PEERS),
                    help="comma list of: mpray,pool,futures,ray")
    ap.add_argument("--repeat", type=int, default=5,
                    help="measurements per figure; the median is reported")
    ap.add_argument("--quick", action="store_true",
                    help="N=2000, shorter loops, no 1 GiB figures")
    ap.add_argument("--json", metavar="PATH", help="also write results here")
    ap.add_argument("--n", type=int, default=0,
                    help="override N (tasks / puts per measurement)")
    ap.add_argument("--wait-n", type=int, default=0,
                    help="override the wait loop's N (default N/5)")
    ap.add_argument("--no-big", action="store_true",
                    help="skip the 1 GiB figures")
    ap.add_argument("--timeout", type=int, default=1200,
                    help="seconds allowed for one peer's subprocess")
    ap.add_argument("--figure-timeout", type=int, default=240,
                    help="seconds allowed for one figure group")
    ap.add_argument("--only", metavar="GROUPS",
                    help="run only these figure groups (comma list of: "
                         + ", ".join(GROUPS) + ")")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="also list skipped figures and why")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_results", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    bad = [g for g in (args.only or "").split(",") if g and g not in GROUPS]
    if bad:
        ap.error(f"unknown group(s) for --only: {', '.join(bad)}")
    if args._worker:
        return worker_main(args._worker, params(args), args._results)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())

"""Task and actor bodies: what runs in the peers' workers.

Module level so Pool/Executor (fork) can pickle them by reference; the Ray-API
peers pickle them by value with cloudpickle (see ``backends.RayAPIBackend``), as
they did when these bodies lived in compare.py's ``__main__``.
"""

from __future__ import annotations

import sys


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


# What a backend's ``submitter(name)`` submits.
def _stream(n):
    """A streaming generator task: ``n`` small values, yielded one by one."""
    for i in range(n):
        yield i


TASKS = {"noop": _noop, "sum": _sum, "big": _big}

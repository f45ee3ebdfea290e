"""What every figure shares.

A figure takes a backend ``B`` and the parameters ``p`` and returns a list of
samples (one per repeat), a dict ``{key: samples}``, or raises ``Skip``.
"""

from __future__ import annotations

import statistics
import time
import traceback


class Skip(Exception):
    pass


class FigureTimeout(Exception):
    pass


class FigError:
    """A failed sub-figure inside a group whose other figures succeeded."""

    def __init__(self, exc):
        self.error = f"{type(exc).__name__}: {exc}"
        self.traceback = traceback.format_exc()


def median(xs):
    return statistics.median(xs)


def round_trips_us(call, get, p, warmup):
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
        samples.append(median(lat) * 1e6)
    return samples


def array(nbytes):
    import numpy as np

    return np.ones(nbytes // 8, dtype=np.float64)  # written: pages touched

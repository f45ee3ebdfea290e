"""Object-store figures (Ray-API peers): small put/get, 100 MiB and 1 GiB put/get."""

from __future__ import annotations

import gc
import time

from bench.measure import FigError, Skip, array
from bench.params import BIG_MEM_NEEDED, GiB


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


def _readonly_ok(x, nbytes):
    import numpy as np

    return (isinstance(x, np.ndarray) and x.nbytes == nbytes
            and not x.flags.writeable)


def _put_fresh(ray, arr, count, held):
    """Puts that each land in new store space (every ref is kept in ``held``): GB/s."""
    fresh = []
    for _ in range(count):
        t0 = time.perf_counter()
        held.append(ray.put(arr))
        fresh.append(arr.nbytes / 1e9 / (time.perf_counter() - t0))
    return fresh


def _gets(ray, ref, p, nbytes):
    """get of one ref, expected O(1) (a zero-copy view): (ms samples, read-only ok)."""
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
    return gets, ok


def _put_reused(ray, arr, p):
    """put, drop the ref, put again (the first put is warm-up): GB/s samples."""
    reuse = []
    for i in range(p["repeat"] + 1):
        t0 = time.perf_counter()
        ref = ray.put(arr)
        dt = time.perf_counter() - t0
        del ref
        gc.collect()
        if i:
            reuse.append(arr.nbytes / 1e9 / dt)
    return reuse


def _big_put_get(B, p, nbytes, tag, max_held):
    """put fresh / get / put reused for one array size.

    Returns ({key: samples or FigError}, readonly-ok or None)."""
    ray = B.ray
    arr = array(nbytes)
    ray.get(ray.put(b"warm-up"))
    out, ok, held = {}, None, []
    try:
        out[f"put_{tag}_first_gbs"] = _put_fresh(
            ray, arr, max(1, min(p["repeat"], max_held)), held)
    except Exception as e:  # noqa: BLE001
        out[f"put_{tag}_first_gbs"] = FigError(e)
    try:
        ref = held[0] if held else ray.put(arr)
        out[f"get_{tag}_ms"], ok = _gets(ray, ref, p, nbytes)
        del ref
    except Exception as e:  # noqa: BLE001
        out[f"get_{tag}_ms"] = FigError(e)
    del held
    gc.collect()
    try:
        out[f"put_{tag}_reuse_gbs"] = _put_reused(ray, arr, p)
    except Exception as e:  # noqa: BLE001
        out[f"put_{tag}_reuse_gbs"] = FigError(e)
    return out, ok


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

#!/usr/bin/env python
"""Compare ``mpray.util.multiprocessing.Pool`` with ``multiprocessing.Pool`` and Ray's
``ray.util.multiprocessing.Pool``.

Usage::

    python benchmarks/pool_compare.py [--peers mpray,mp,ray] [--repeat 5] [--json out.json]
                                      [--cpus N] [--small-n 100000] [--sleep-n 1000]

Each peer runs in a fresh subprocess (this file with the hidden ``--_worker PEER``), as
``compare.py`` does, so peers never share a process.  Every peer gets the same number of
pool processes: mpray's CPUs (``mpray.cluster_resources()["CPU"]``, measured by the mpray
peer, which runs first), else ``--cpus``; Ray is initialised with ``num_cpus`` equal to it.
``mpray.init()``/``ray.init()`` are outside every figure.  Per repeat a new pool is made:

* ``pool start``: ``Pool(n)`` plus a first ``map`` of n items (every process answered);
* ``map 100k small``: ``pool.map(double, range(100_000))`` (each pool's default chunks);
* ``map 1k x 10ms sleep``: ``pool.map(sleep_10ms, range(1000))`` — ``time.sleep``, not a
  busy loop, so the figure measures scheduling rather than how the peers share the
  machine's cores (ideal: 1000 × 10 ms / n).

Figures are medians over ``--repeat`` repeats, in seconds; the ratio columns are
``peer / mpray`` (above 1: mpray is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (REPO, HERE):  # (this checkout's mpray; compare.py's bench package)
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench.procs import kill_tree  # noqa: E402
from bench.report import fmt  # noqa: E402

PEERS = ("mpray", "mp", "ray")


def figures(args) -> tuple[str, str, str]:
    def k(n):
        return f"{n // 1000}k" if n % 1000 == 0 else str(n)

    return ("pool start", f"map {k(args.small_n)} small", f"map {k(args.sleep_n)} x 10ms sleep")


def double(x):
    return x * 2


def sleep_10ms(x):
    time.sleep(0.01)
    return x


# ---------------------------------------------------------------------- the worker
def _start(peer: str, cpus: int):
    """Initialise the peer's runtime (outside the figures); its Pool class and CPUs."""
    if peer == "mpray":
        import mpray
        from mpray.util.multiprocessing import Pool

        mpray.init()
        return Pool, int(mpray.cluster_resources()["CPU"]), mpray.shutdown
    if peer == "ray":
        import ray
        from ray.util.multiprocessing import Pool

        from bench.backends import RayAPIBackend  # (compare.py's way to start Ray)

        ray.init(**{**RayAPIBackend("ray").init_kwargs(), "num_cpus": cpus})
        return Pool, cpus, ray.shutdown
    import multiprocessing

    return multiprocessing.get_context("fork").Pool, cpus, lambda: None


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _one_repeat(Pool, n: int, args) -> dict:
    small, sleeps = range(args.small_n), range(args.sleep_n)
    t_start, pool = _timed(lambda: Pool(n))
    try:
        t_first, first = _timed(lambda: pool.map(double, range(n), 1))
        t_small, out_small = _timed(lambda: pool.map(double, small))
        t_sleep, out_sleep = _timed(lambda: pool.map(sleep_10ms, sleeps))
    finally:
        pool.terminate()
        pool.join()
    # (checked after the clocks: every peer must compute the same thing)
    assert first == [2 * x for x in range(n)]
    assert out_small == [2 * x for x in small] and out_sleep == list(sleeps)
    return dict(zip(figures(args), (t_start + t_first, t_small, t_sleep)))


def worker_main(peer: str, args) -> None:
    Pool, n, stop = _start(peer, args.cpus)
    samples: dict[str, list] = {f: [] for f in figures(args)}
    try:
        for _ in range(args.repeat):
            for k, v in _one_repeat(Pool, n, args).items():
                samples[k].append(v)
    finally:
        stop()
    with open(args._out, "w") as f:
        json.dump({"cpus": n, "samples": samples}, f)


# ---------------------------------------------------------------------- the parent
def run_peer(peer: str, args, cpus: int) -> dict:
    """Run one peer's worker subprocess; ``{"status", "cpus", "samples", "error"}``."""
    fd, out = tempfile.mkstemp(prefix=f"pool-compare-{peer}-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", peer, "--_out", out,
           "--repeat", str(args.repeat), "--cpus", str(cpus),
           "--small-n", str(args.small_n), "--sleep-n", str(args.sleep_n)]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            rc = None
        log.seek(0)
        tail = log.read()[-2000:]
    try:
        with open(out) as f:
            res = {"status": "ok", "error": None, **json.load(f)}
    except (OSError, ValueError):
        why = "timed out" if rc is None else f"exit code {rc}"
        lines = [ln for ln in tail.splitlines() if ln.strip()]
        res = {"status": "failed", "error": f"{why}: {lines[-1] if lines else '(no output)'}",
               "log_tail": tail, "samples": {}}
    finally:
        os.unlink(out)
    return res


def _medians(res: dict) -> dict:
    return {k: statistics.median(v) for k, v in res.get("samples", {}).items() if v}


def print_table(peers: list, results: dict, args) -> None:
    med = {p: _medians(results[p]) for p in peers}
    others = [p for p in peers if p != "mpray"] if "mpray" in peers else []
    head = ["figure (s)", *peers, *[f"{p}/mpray" for p in others]]
    rows = []
    for fig in figures(args):
        cells = [fmt(med[p].get(fig)) if fig in med[p] else "ERR" for p in peers]
        base = med.get("mpray", {}).get(fig)
        for p in others:
            v = med[p].get(fig)
            cells.append(f"{v / base:.2f}x" if v and base else "—")
        rows.append([fig, *cells])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                        for i, (c, w) in enumerate(zip(r, widths))))


def parent_main(args) -> int:
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [p for p in peers if p not in PEERS]
    if bad:
        sys.exit(f"unknown peer(s): {', '.join(bad)}; choose from {', '.join(PEERS)}")
    peers.sort(key=lambda p: p != "mpray")  # mpray first: it says how many CPUs
    cpus, results = args.cpus, {}
    for peer in peers:
        print(f"# running {peer} ...", file=sys.stderr, flush=True)
        results[peer] = r = run_peer(peer, args, cpus)
        if peer == "mpray" and r["status"] == "ok":
            cpus = r["cpus"]
        print(f"# {peer}: {r['status']}" + (f" — {r['error']}" if r["error"] else ""),
              file=sys.stderr, flush=True)
    print(f"\nMedians of {args.repeat} repeats, {cpus} pool processes each; "
          f"{os.cpu_count()} CPUs on this machine\n")
    print_table(peers, results, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"repeat": args.repeat, "pool_processes": cpus, "peers": peers,
                       "medians_s": {p: _medians(results[p]) for p in peers},
                       "results": results}, f, indent=2)
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", default=",".join(PEERS), help="comma list of mpray,mp,ray")
    ap.add_argument("--repeat", type=int, default=5, help="repeats; medians are reported")
    ap.add_argument("--json", metavar="PATH", help="also write the results here")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1,
                    help="pool processes when mpray is not among the peers")
    ap.add_argument("--small-n", type=int, default=100_000, help="items of the small map")
    ap.add_argument("--sleep-n", type=int, default=1000, help="items of the 10 ms map")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per peer")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        worker_main(args._worker, args)
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""What a long run costs with the control store on (issue 10's "bounded memory"):
N no-op tasks in batches, then the driver's and the node's RSS growth, the writer's RSS
and CPU, the store file's size and the rows it kept.

    python benchmarks/store_growth.py [--tasks 1000000] [--batch 10000] [--off]

``--off`` runs the same with ``control_store=False`` (the RSS baseline).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import mpray  # noqa: E402


@mpray.remote
def noop():
    return None


def rss(p: psutil.Process) -> float:
    return p.memory_info().rss / 2**20


def _is_writer(p: psutil.Process) -> bool:
    """The node's child at idle priority (SCHED_IDLE, or nice 19 where refused)."""
    try:
        return os.sched_getscheduler(p.pid) == os.SCHED_IDLE or p.nice() == 19
    except (OSError, psutil.Error):
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--off", action="store_true", help="the store off (baseline)")
    a = ap.parse_args()
    log_dir = tempfile.mkdtemp(prefix="mpray-store-growth-")
    ctx = mpray.init(num_cpus=2, log_dir=log_dir, control_store=not a.off)
    me = psutil.Process()
    node = psutil.Process(mpray._global.session.node_pid)
    mpray.get([noop.remote() for _ in range(a.batch)])  # (warm: workers, leases)
    time.sleep(1.0)
    base = (rss(me), rss(node))
    t0 = time.perf_counter()
    done = 0
    while done < a.tasks:
        n = min(a.batch, a.tasks - done)
        mpray.get([noop.remote() for _ in range(n)])
        done += n
    elapsed = time.perf_counter() - t0
    grown = (rss(me) - base[0], rss(node) - base[1])
    writer = [c for c in node.children() if _is_writer(c)]
    wcpu = sum(sum(w.cpu_times()[:2]) for w in writer)
    wrss = sum(rss(w) for w in writer)
    t1 = time.perf_counter()
    mpray.shutdown()
    shut = time.perf_counter() - t1
    path = os.path.join(ctx["session_dir"], "store.db")
    print(f"{done} no-op tasks in {elapsed:.1f} s ({done / elapsed:,.0f}/s), store "
          f"{'off' if a.off else 'on'}")
    print(f"RSS growth: driver {grown[0]:+.1f} MiB, node {grown[1]:+.1f} MiB")
    if not a.off:
        rows = sqlite3.connect(path).execute("SELECT count(*) FROM tasks").fetchone()[0]
        print(f"writer: {wrss:.0f} MiB RSS, {wcpu:.1f} s CPU while running "
              f"({wcpu / done * 1e6:.1f} µs/task); shutdown {shut:.1f} s (its last pass)")
        print(f"store file: {os.path.getsize(path) / 2**20:.1f} MiB, {rows} task rows kept "
              f"({os.path.getsize(path) / max(rows, 1):.0f} bytes/row)")
    import shutil

    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

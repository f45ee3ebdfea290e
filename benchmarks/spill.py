"""Spilling, measured: the spill thread's write and read bandwidth beside ``dd`` to the
same directory, and a workload three times the store's size beside Ray's, in one run.

    python benchmarks/spill.py --store-mib 256 --value-mib 16 --times 3 --repeat 3

Data flow::

    dd: if=/dev/zero of=<dir>/dd bs=<value> count=<n>, then of=/dev/null from it
        ─▶ MB/s (the page cache's and the disk's, as the spill files get)
    mpray: put n values (times × the store) ─▶ get each back, check it ─▶ wall time;
        the node's stats: bytes and seconds of its I/O thread's writes and reads
    ray:   the same program, object_store_memory the same, spilling to the same dir

Writes are not synced, by mpray, by Ray or by dd: a spill file lives as long as its
session, so the page cache may keep it.  Medians of ``--repeat`` runs are printed, and
the whole of each run goes to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

MB = 1 << 20


def dd(directory: str, value: int, n: int, tries: int = 3) -> tuple[float, float]:
    """(write, read) MB/s of dd moving n blocks of value bytes through a new file there,
    the best of ``tries`` (dd's own rate moves 4x between runs here: the best is the
    bar mpray is held to)."""
    w = r = 0.0
    for i in range(tries):
        path = os.path.join(directory, f"dd.bench.{i}")
        try:
            w = max(w, _dd_rate(["dd", "if=/dev/zero", f"of={path}", f"bs={value}",
                                 f"count={n}"]))
            r = max(r, _dd_rate(["dd", f"if={path}", "of=/dev/null", f"bs={value}"]))
        finally:
            if os.path.exists(path):
                os.unlink(path)
    return w, r


def _dd_rate(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    elapsed = time.perf_counter() - t0
    m = re.search(r"(\d+) bytes", out.stderr)
    return int(m.group(1)) / MB / elapsed


def workload(ray, n: int, value: int) -> float:
    """Put n values, then read each back and check it: seconds."""
    t0 = time.perf_counter()
    refs = [ray.put(np.full(value // 8, i, dtype=np.int64)) for i in range(n)]
    for i, r in enumerate(refs):
        a = ray.get(r)
        assert int(a[0]) == i and int(a[-1]) == i, f"value {i} changed"
        del a
    elapsed = time.perf_counter() - t0
    del refs
    return elapsed


def run_mpray(args, directory: str) -> dict:
    import mpray

    mpray.init(num_cpus=2, object_store_memory=args.store_mib * MB,
               object_spilling_directory=directory)
    try:
        n = args.times * args.store_mib // args.value_mib
        seconds = workload(mpray, n, args.value_mib * MB)
        st = mpray.api._node_stats()["spill"]
    finally:
        mpray.shutdown()
    return {"seconds": seconds, "spilled_bytes": st["write_bytes"],
            "write_mb_s": st["write_bytes"] / MB / max(st["write_s"], 1e-9),
            "read_mb_s": st["read_bytes"] / MB / max(st["read_s"], 1e-9)}


def run_ray(args, directory: str) -> dict:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    ray.init(num_cpus=2, object_store_memory=args.store_mib * MB, include_dashboard=False,
             _system_config={"object_spilling_config": json.dumps(
                 {"type": "filesystem", "params": {"directory_path": directory}})})
    try:
        n = args.times * args.store_mib // args.value_mib
        return {"seconds": workload(ray, n, args.value_mib * MB)}
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store-mib", type=int, default=256)
    ap.add_argument("--value-mib", type=int, default=16)
    ap.add_argument("--times", type=int, default=3, help="the data over the store's size")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="spill here (default: a new temp dir)")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    base = args.dir or tempfile.mkdtemp(prefix="mpray-spill-bench-")
    runs = []
    try:
        n = args.times * args.store_mib // args.value_mib
        for _ in range(args.repeat):
            run = {"dd": dict(zip(("write_mb_s", "read_mb_s"),
                                  dd(base, args.value_mib * MB, n)))}
            run["mpray"] = run_mpray(args, os.path.join(base, "mpray"))
            if not args.no_ray:
                run["ray"] = run_ray(args, os.path.join(base, "ray"))
            runs.append(run)
            print(json.dumps(run), flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    med = {(s, k): statistics.median(r[s][k] for r in runs)
           for s, k in (("dd", "write_mb_s"), ("dd", "read_mb_s"), ("mpray", "write_mb_s"),
                        ("mpray", "read_mb_s"), ("mpray", "seconds"))}
    print(f"\n{n} values of {args.value_mib} MiB through a {args.store_mib} MiB store "
          f"({args.times}x), medians of {len(runs)} runs:")
    print(f"  write: mpray {med[('mpray', 'write_mb_s')]:.0f} MB/s, dd "
          f"{med[('dd', 'write_mb_s')]:.0f} MB/s: "
          f"{med[('mpray', 'write_mb_s')] / med[('dd', 'write_mb_s')]:.2f} of dd")
    print(f"  read:  mpray {med[('mpray', 'read_mb_s')]:.0f} MB/s, dd "
          f"{med[('dd', 'read_mb_s')]:.0f} MB/s: "
          f"{med[('mpray', 'read_mb_s')] / med[('dd', 'read_mb_s')]:.2f} of dd")
    line = f"  workload: mpray {med[('mpray', 'seconds')]:.2f} s"
    if not args.no_ray:
        ray_s = statistics.median(r["ray"]["seconds"] for r in runs)
        line += f", Ray {ray_s:.2f} s: mpray {ray_s / med[('mpray', 'seconds')]:.1f}x faster"
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())

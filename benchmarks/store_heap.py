#!/usr/bin/env python
"""Submit-then-get in a driver holding a big heap (2 M live objects), the control store
on or off: what the store's records cost where full collections are expensive.

    python benchmarks/store_heap.py [--off] [--objects 2000000]

Records kept as one object per task until the flush would be promoted and set off full
collections that traverse the whole heap; the recorder's flat records create none.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mpray  # noqa: E402


@mpray.remote
def noop():
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--off", action="store_true", help="the store off (baseline)")
    ap.add_argument("--objects", type=int, default=2_000_000)
    ap.add_argument("--batches", type=int, default=50, help="of 2,000 tasks each")
    a = ap.parse_args()
    keep = [(i, str(i)) for i in range(a.objects)]  # (the driver's own data)
    mpray.init(num_cpus=2, control_store=not a.off)
    mpray.get([noop.remote() for _ in range(2000)])
    full0 = gc.get_stats()[2]["collections"]
    t = time.perf_counter()
    for _ in range(a.batches):
        mpray.get([noop.remote() for _ in range(2000)])
    dt = time.perf_counter() - t
    full = gc.get_stats()[2]["collections"] - full0
    mpray.shutdown()
    print(f"store {'off' if a.off else 'on'}: {a.batches * 2000 / dt:,.0f} tasks/s with "
          f"{len(keep):,} objects held, {full} full collections")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the control store's recording costs a hot path, measured in one session: the
recording of the driver and of every worker is turned on and off between samples, so
both halves share the processes, their memory and the machine's moment (two sessions,
one with the store and one without, differ by more than this on a shared machine).

    python benchmarks/store_toggle.py --figure submit_get --samples 60

It reports the median rate with recording on, with it off, and their ratio.  What it
leaves out is what a session with the store pays whether it records or not: the writer
process (idle while the session is busy) and the recorders' threads (idle when there is
nothing to flush); ``compare.py --peers mpray,mpray-nostore`` covers those.

Data flow::

    each sample: REC.on := on|off in the driver, and in each worker by a task (one
    each: they sleep a little) ─▶ 2,000 no-ops (submitted then got, or one at
    a time) ─▶ the rate, filed under on or off
"""

from __future__ import annotations

import argparse
import statistics
import time

import mpray as ray
from mpray.control.recorder import REC


@ray.remote
def _noop():
    return None


@ray.remote
def _record(on: bool) -> int:
    """Set this worker's recording (it sleeps a little, so that each worker takes one of
    these: a sleep lends no CPU, so no other worker is started for them)."""
    import os

    from mpray.control.recorder import REC as rec

    rec.on = on
    time.sleep(0.02)
    return os.getpid()


def _sample(figure: str) -> float:
    t = time.perf_counter()
    if figure == "submit_get":
        ray.get([_noop.remote() for _ in range(2000)])
    else:
        for _ in range(2000):
            ray.get(_noop.remote())
    return 2000 / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--figure", choices=("submit_get", "rtt"), default="submit_get")
    ap.add_argument("--samples", type=int, default=60)
    ap.add_argument("--cpus", type=int, default=2)
    a = ap.parse_args(argv)
    ray.init(num_cpus=a.cpus)
    if not REC.on:
        raise SystemExit("the control store is off (MPRAY_CONTROL_STORE=0): nothing to toggle")
    _sample(a.figure)
    got: dict[bool, list[float]] = {True: [], False: []}
    for i in range(a.samples):
        on = i % 2 == 0
        pids = ray.get([_record.remote(on) for _ in range(a.cpus)])
        if len(set(pids)) != a.cpus:
            raise SystemExit(f"the toggle reached {len(set(pids))} of {a.cpus} workers")
        REC.on = on
        got[on].append(_sample(a.figure))
    REC.on = True
    ray.get([_record.remote(True) for _ in range(a.cpus)])
    on, off = statistics.median(got[True]), statistics.median(got[False])
    print(f"{a.figure}: recording on {on:,.0f}/s, off {off:,.0f}/s, on/off {on / off:.3f} "
          f"({a.samples // 2} samples each, alternating)")
    ray.shutdown()


if __name__ == "__main__":
    main()

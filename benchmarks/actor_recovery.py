"""Actor recovery with and without checkpoints (the paper's Fig. 11b): an actor that
ran N calls is killed; the time until its next call returns, when it restarts from a
checkpoint taken every K calls (replaying at most K-1 calls), when it replays every
call since its creation (no ``__mpray_checkpoint__``), and when it starts afresh
(no ``checkpoint_interval``: Ray's behaviour, its state lost).

    python benchmarks/actor_recovery.py --calls 1050 --interval 100 --work-ms 1 --repeat 5

Data flow::

    per mode, per repeat: a fresh actor ─▶ N calls (each ~work-ms of CPU) ─▶ SIGKILL its
    process ─▶ time until one more call returns (and its answer checked) ─▶ medians
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time

import mpray


class Stateful:
    def __init__(self, work_ms: float):
        self.work = int(work_ms * 25_000)  # (loop steps: about a millisecond each 25k)
        self.total = 0

    def step(self, k):
        x = 0
        for i in range(self.work):  # the call's own work, as a replay redoes it
            x += i
        self.total += k
        return self.total

    def pid(self):
        return os.getpid()


class Checkpointed(Stateful):
    def __mpray_checkpoint__(self):
        return self.total

    def __mpray_restore__(self, state):
        self.total = state


def recovery(cls, interval, calls: int, work_ms: float) -> float:
    A = mpray.remote(max_restarts=-1, max_task_retries=-1)(cls)
    a = A.options(checkpoint_interval=interval).remote(work_ms)
    assert mpray.get([a.step.remote(1) for _ in range(calls)])[-1] == calls
    os.kill(mpray.get(a.pid.remote()), signal.SIGKILL)
    t = time.perf_counter()
    got = mpray.get(a.step.remote(1), timeout=600)
    took = time.perf_counter() - t
    assert got == (calls + 1 if interval else 1), got
    mpray.kill(a)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1050)  # (half an interval to replay)
    ap.add_argument("--interval", type=int, default=100)
    ap.add_argument("--work-ms", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    mpray.init(num_cpus=2)
    modes = {"checkpoints": (Checkpointed, args.interval),
             "full replay": (Stateful, args.interval),
             "fresh (state lost)": (Stateful, None)}
    out = {}
    for name, (cls, interval) in modes.items():
        runs = [recovery(cls, interval, args.calls, args.work_ms) for _ in range(args.repeat)]
        out[name] = runs
        print(f"{name:20s} median {statistics.median(runs) * 1000:8.1f} ms  "
              f"[{min(runs) * 1000:.1f} .. {max(runs) * 1000:.1f}]", flush=True)
    mpray.shutdown()
    ck, full = statistics.median(out["checkpoints"]), statistics.median(out["full replay"])
    print(f"\n{args.calls} calls of ~{args.work_ms} ms, a checkpoint every {args.interval}: "
          f"recovery {full / ck:.1f}x faster with checkpoints than a full replay")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": out}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())

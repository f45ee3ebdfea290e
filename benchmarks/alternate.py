"""Hot-path figures of several mpray checkouts (or settings), in fresh processes that
alternate, rotating their order every round: the way to see a few per cent on a shared,
noisy machine, where one run of each side can differ by more than that.

    python benchmarks/alternate.py --rounds 16 --figure submit_get \\
        new=. old=/path/to/old/checkout off=.:MPRAY_CONTROL_STORE=0

Each side is ``label=PATH[:VAR=VALUE,...]`` (PATH: a checkout whose ``mpray`` is
imported; the variables are set for that side only).  Every round runs each side once
(a fresh session measuring ``--repeat`` times, the median kept); the report gives each
side's median over the rounds and the median, over the rounds, of its ratio to the first
side in the same round (>1: better than the first).  Figures:

    rtt         2,000 no-op round trips, one at a time (tasks/s)
    submit_get  2,000 no-ops submitted, then got (tasks/s)
    actor_async 2,000 calls to one actor submitted, then got (calls/s)
    nn          2 caller actors x 2 target actors x 250 calls (calls/s)
    nested      a task submits 100 no-ops and gets them (tasks/s; --n to change)
    array_arg   1,000 tasks reading one 1 MiB array from the store (tasks/s)
    put_get_big 500 puts of a 1 MiB array, each got back (puts/s)

Data flow::

    rounds x sides ─▶ subprocess: python -c BODY (one session, --repeat samples)
        ─▶ its median ─▶ per side: median over rounds; per round: ratio to side 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

_SETUP = """
import statistics, sys, time
sys.path.insert(0, {path!r})
import mpray as ray
ray.init(num_cpus=2)
@ray.remote
def f():
    return None
@ray.remote
class A:
    def m(self):
        return None
@ray.remote
class Caller:
    def __init__(self, targets):
        self.t = targets
    def run(self, k):
        import mpray as r
        calls = [t.m.remote() for _ in range(k) for t in self.t]
        r.get(calls)
        return len(calls)
def _noop():
    return None
@ray.remote
def nested(n):
    import mpray as mod, time as t
    g = mod.remote(_noop)
    mod.get(g.remote())
    t0 = t.perf_counter()
    mod.get([g.remote() for _ in range(n)])
    return t.perf_counter() - t0
N = {n}
"""

_FIGURES = {
    "rtt": """
for _ in range(500): ray.get(f.remote())
def one():
    t = time.perf_counter()
    for _ in range(2000): ray.get(f.remote())
    return 2000 / (time.perf_counter() - t)
""",
    "submit_get": """
ray.get([f.remote() for _ in range(2000)])
def one():
    t = time.perf_counter(); ray.get([f.remote() for _ in range(2000)])
    return 2000 / (time.perf_counter() - t)
""",
    "actor_async": """
a = A.remote(); ray.get([a.m.remote() for _ in range(2000)])
def one():
    t = time.perf_counter(); ray.get([a.m.remote() for _ in range(2000)])
    return 2000 / (time.perf_counter() - t)
""",
    "nn": """
targets = [A.remote() for _ in range(2)]
callers = [Caller.remote(targets) for _ in range(2)]
ray.get([c.run.remote(50) for c in callers])
def one():
    t = time.perf_counter(); n = sum(ray.get([c.run.remote(250) for c in callers]))
    return n / (time.perf_counter() - t)
""",
    "array_arg": """
import numpy as np
@ray.remote
def first(a):
    return float(a[0])
arr = ray.put(np.ones(1 << 17))
ray.get([first.remote(arr) for _ in range(200)])
def one():
    t = time.perf_counter(); ray.get([first.remote(arr) for _ in range(1000)])
    return 1000 / (time.perf_counter() - t)
""",
    "put_get_big": """
import numpy as np
big = np.ones(1 << 17)
for _ in range(100): ray.get(ray.put(big))
def one():
    t = time.perf_counter()
    for _ in range(500): ray.get(ray.put(big))
    return 500 / (time.perf_counter() - t)
""",
    "nested": """
for _ in range(2): ray.get(nested.remote(N))
def one():
    return N / ray.get(nested.remote(N))
""",
}

_MEASURE = """
print(statistics.median(one() for _ in range({repeat})))
ray.shutdown()
"""


def _side(arg: str) -> tuple[str, str, dict]:
    label, sep, spec = arg.partition("=")
    if not sep or not label:
        raise SystemExit(f"a side is label=PATH[:VAR=VALUE,...], not {arg!r}")
    path, _, env = spec.partition(":")
    extra = {}
    for item in filter(None, env.split(",")):
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"{arg!r}: {item!r} is not VAR=VALUE")
        extra[k] = v
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "mpray", "__init__.py")):
        raise SystemExit(f"{arg!r}: no mpray package in {path}")
    return label, path, extra


def run_side(path: str, extra: dict, figure: str, repeat: int, n: int,
             timeout: float) -> float:
    body = _SETUP.format(path=path, n=n) + _FIGURES[figure] + _MEASURE.format(repeat=repeat)
    env = dict(os.environ, **extra)
    out = subprocess.run([sys.executable, "-c", body], env=env, capture_output=True,
                         text=True, timeout=timeout, cwd="/")
    if out.returncode != 0:
        raise SystemExit(f"{path} ({figure}) failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sides", nargs="+", help="label=PATH[:VAR=VALUE,...] (2 or more)")
    ap.add_argument("--figure", choices=sorted(_FIGURES), default="submit_get")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=15, help="samples per session")
    ap.add_argument("--n", type=int, default=100, help="the nested figure's tasks")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per session")
    a = ap.parse_args(argv)
    sides = [_side(s) for s in a.sides]
    if len(sides) < 2:
        ap.error("give two sides or more")
    got: dict[str, list[float]] = {label: [] for label, _p, _e in sides}
    for r in range(a.rounds):
        k = r % len(sides)
        for label, path, extra in sides[k:] + sides[:k]:
            got[label].append(run_side(path, extra, a.figure, a.repeat, a.n, a.timeout))
    first = sides[0][0]
    print(f"{a.figure}: {a.rounds} rounds, medians of {a.repeat} per session")
    for label, vals in got.items():
        ratio = statistics.median(x / y for x, y in zip(vals, got[first]))
        print(f"  {label:12s} {statistics.median(vals):10,.0f}/s   x{ratio:.3f} of {first}"
              f"   [{min(vals):,.0f} .. {max(vals):,.0f}]")


if __name__ == "__main__":
    main()

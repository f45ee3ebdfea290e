"""A small pipeline to look at afterwards: ``python examples/observe.py`` then
``mpray report -o report.html`` (and ``mpray list tasks --filter state=FAILED``,
``mpray timeline``, ``mpray logs``).

Tasks of three kinds and lengths, an actor that keeps results in the object store, and a
few failures, so that every part of the report has something to show."""

import random
import time

import numpy as np

import mpray as ray


@ray.remote
def load(i):
    time.sleep(random.uniform(0.002, 0.01))
    return np.random.default_rng(i).random(200_000)  # 1.6 MB: in the shared store


@ray.remote
def transform(x, i):
    time.sleep(random.uniform(0.01, 0.04))
    if i % 17 == 16:
        raise ValueError(f"chunk {i}: bad values")
    return float(x.mean())


@ray.remote
class Aggregator:
    def __init__(self):
        self.kept = []

    def add(self, x):
        self.kept.append(x)
        return len(self.kept)


if __name__ == "__main__":
    ctx = ray.init()
    agg = Aggregator.remote()
    chunks = [load.remote(i) for i in range(60)]
    ray.get([agg.add.remote(c) for c in chunks[:20]])
    results = [transform.remote(c, i) for i, c in enumerate(chunks)]
    ok = failed = 0
    for r in results:
        try:
            ray.get(r)
            ok += 1
        except ValueError:
            failed += 1
    print(f"{ok} chunks done, {failed} failed; session: {ctx['session_dir']}")
    ray.shutdown()
    print("now: mpray report -o report.html")

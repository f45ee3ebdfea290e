"""mpray quickstart: Ray Core's task, object and actor API on one machine.

Run:  python examples/quickstart.py
The same program runs under Ray by changing the import to ``import ray``.
"""

import time

import numpy as np

import mpray as ray


def main() -> None:
    t0 = time.perf_counter()
    ray.init()
    t_init = time.perf_counter() - t0
    print(f"init: {t_init * 1e3:.1f} ms, resources: {ray.cluster_resources()}")

    @ray.remote
    def square(x):
        return x * x

    # 1. tasks: submit many, get them all
    t = time.perf_counter()
    refs = [square.remote(i) for i in range(10_000)]
    total = sum(ray.get(refs))
    dt = time.perf_counter() - t
    print(f"10,000 tasks: sum of squares = {total} in {dt:.3f} s ({10_000 / dt:,.0f} tasks/s)")

    # 2. round trip latency of one task
    t = time.perf_counter()
    for i in range(1000):
        ray.get(square.remote(i))
    print(f"task round trip: {(time.perf_counter() - t) * 1e3:.0f} µs")

    # 3. nested tasks: a task that submits tasks (recursive Fibonacci)
    @ray.remote
    def fib(n):
        if n < 2:
            return n
        return sum(ray.get([fib.remote(n - 1), fib.remote(n - 2)]))

    t = time.perf_counter()
    print(f"fib(10) with nested tasks = {ray.get(fib.remote(10))} "
          f"in {time.perf_counter() - t:.3f} s")

    # 4. shared objects: put a 100 MB array once, read it zero-copy anywhere
    a = np.random.default_rng(0).random(100 * 2**20 // 8)
    t = time.perf_counter()
    ref = ray.put(a)
    t_put = time.perf_counter() - t
    t = time.perf_counter()
    view = ray.get(ref)
    t_get = time.perf_counter() - t
    print(f"put 100 MB: {t_put * 1e3:.1f} ms; get: {t_get * 1e6:.0f} µs "
          f"(zero-copy, read-only: {not view.flags.writeable})")

    @ray.remote
    def total_of(x):
        return float(x.sum())

    # the array argument is resolved from the store, not copied through a pipe
    sums = ray.get([total_of.remote(ref) for _ in range(4)])
    print(f"4 tasks summed the shared array: {sums[0]:.3f} (expected {a.sum():.3f})")

    # 5. wait: take results as they finish
    @ray.remote
    def sleepy(s):
        time.sleep(s)
        return s

    pending = [sleepy.remote(s) for s in (0.5, 0.1, 0.25)]
    order = []
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        order.append(ray.get(ready[0]))
    print(f"wait() returned results in finishing order: {order}")

    # 6. errors travel back with the remote traceback
    @ray.remote
    def boom():
        raise ValueError("bad input")

    try:
        ray.get(boom.remote())
    except ValueError as e:  # also a mpray.exceptions.RayTaskError
        print(f"remote error caught as {type(e).__name__}: {str(e).splitlines()[0]}")

    # 7. actors: a stateful worker process; calls from one caller run in order
    @ray.remote
    class Counter:
        def __init__(self, start):
            self.n = start

        def add(self, k):
            self.n += k
            return self.n

    counter = Counter.remote(100)
    t = time.perf_counter()
    for _ in range(1000):
        ray.get(counter.add.remote(1))
    rtt = (time.perf_counter() - t) * 1e3
    last = ray.get([counter.add.remote(1) for _ in range(10_000)])[-1]
    print(f"actor: state after 11,000 calls = {last}; call round trip: {rtt:.0f} µs")

    # handles travel: tasks (and other actors) call the same actor
    @ray.remote
    def bump(c):
        return ray.get(c.add.remote(1000))

    print(f"a task called the actor through its handle: {ray.get(bump.remote(counter))}")

    t = time.perf_counter()
    ray.shutdown()
    print(f"shutdown: {(time.perf_counter() - t) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()

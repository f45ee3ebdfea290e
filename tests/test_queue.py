"""``mpray.util.queue``: Ray's ``ray.util.queue`` semantics over one async actor."""

from __future__ import annotations

import asyncio
import pickle
import queue as std_queue
import time

import numpy as np
import psutil
import pytest

import mpray as ray
from mpray import exceptions as exc
from mpray.util.queue import Empty, Full, Queue


@ray.remote
def put_later(q, items, delay=0.3):
    time.sleep(delay)
    for x in items:
        q.put(x)
    return len(items)


@ray.remote
def get_from(q, n, timeout=30):
    return [q.get(timeout=timeout) for _ in range(n)]


@ray.remote
class Consumer:
    def __init__(self, q):
        self.q = q

    def drain(self, n):
        return [self.q.get(timeout=30) for _ in range(n)]

    def put(self, x):
        self.q.put(x)


@ray.remote
class AsyncUser:
    async def consume(self, q, n):
        return [await q.get_async(timeout=30) for _ in range(n)]

    async def produce(self, q, items):
        for x in items:
            await q.put_async(x)
        return len(items)

    async def misses(self, q):
        out = []
        try:
            await q.get_async(block=False)
        except Empty:
            out.append("empty")
        try:
            await q.get_async(timeout=0.2)
        except Empty:
            out.append("empty-timeout")
        await q.put_async("x")
        try:
            await q.put_async("y", block=False)
        except Full:
            out.append("full")
        try:
            await q.put_async("y", timeout=0.2)
        except Full:
            out.append("full-timeout")
        return out


def test_exceptions_are_the_standard_ones():
    assert issubclass(Empty, std_queue.Empty) and issubclass(Full, std_queue.Full)


def test_fifo_order_and_values(ray_module):
    q = Queue()
    big = np.arange(200_000, dtype=np.float64)  # (> inline_max: through the store)
    items = list(range(10)) + ["s", {"k": [1, 2]}, None, big]
    for x in items:
        q.put(x)
    assert q.qsize() == q.size() == len(q) == len(items)
    out = [q.get() for _ in items]
    assert out[:13] == items[:13]
    assert np.array_equal(out[13], big)
    assert q.empty() and not q.full() and len(q) == 0


def test_maxsize_full_nowait_and_timeout(ray_module):
    q = Queue(maxsize=2)
    assert q.maxsize == 2 and not q.full()
    q.put_nowait(1)
    q.put(2, block=False)
    assert q.full() and q.qsize() == 2
    with pytest.raises(Full):
        q.put_nowait(3)
    with pytest.raises(std_queue.Full):  # (Ray's Full is a queue.Full)
        q.put(3, block=False, timeout=10)  # (timeout means nothing without block)
    t0 = time.monotonic()
    with pytest.raises(Full):
        q.put(3, timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 5
    with pytest.raises(Full):
        q.put(3, timeout=0)
    assert [q.get(), q.get()] == [1, 2]  # the failed puts added nothing


def test_empty_nowait_and_timeout(ray_module):
    q = Queue()
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(std_queue.Empty):
        q.get(block=False)
    t0 = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 5
    q.put("a")
    assert q.get(timeout=0) == "a"  # (an item that is there comes even with timeout 0)
    with pytest.raises(Empty):
        q.get(timeout=0)


def test_bad_arguments(ray_module):
    q = Queue(maxsize=1)
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    with pytest.raises(ValueError):
        q.put(1, timeout=-1)
    with pytest.raises(TypeError):
        q.put_nowait_batch(5)
    with pytest.raises(TypeError):
        q.get_nowait_batch("2")
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)
    with pytest.raises(TypeError):
        Queue(maxsize=2.5)


def test_negative_maxsize_is_unbounded(ray_module):
    q = Queue(maxsize=-1)  # (as queue.Queue and asyncio.Queue)
    q.put_nowait_batch(range(10))
    q.put_nowait(10)
    assert not q.full() and q.get_nowait_batch(11) == list(range(11))


def test_blocking_get_woken_by_task_put_without_spinning(ray_module):
    q = Queue()
    ref = put_later.remote(q, ["hello"], delay=0.5)
    procs = [psutil.Process()] + psutil.Process().children(recursive=True)
    cpu0 = sum(_cpu(p) for p in procs)
    t0 = time.monotonic()
    assert q.get(timeout=30) == "hello"
    waited = time.monotonic() - t0
    used = sum(_cpu(p) for p in procs) - cpu0
    assert waited >= 0.3
    # the task sleeps and the getter waits: all processes together stay well under a
    # busy CPU for the wait (a spinning get would burn one whole core)
    assert used < 0.5 * waited + 0.3, (used, waited)
    assert ray.get(ref) == 1


def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def test_blocked_gets_do_not_block_puts(ray_module):
    q = Queue()
    consumers = [get_from.remote(q, 1) for _ in range(2)]
    time.sleep(0.3)  # (both consumers wait in the actor by now)
    q.put("a")
    q.put("b")
    got = sorted(x for r in consumers for x in ray.get(r, timeout=30))
    assert got == ["a", "b"]


def test_blocking_put_woken_by_task_get(ray_module):
    q = Queue(maxsize=1)
    q.put(0)
    ref = get_from.remote(q, 2)
    q.put(1, timeout=30)  # waits until the task took 0
    assert ray.get(ref, timeout=30) == [0, 1]


def test_producer_tasks_and_consumer_actor(ray_module):
    q = Queue()
    n = 4
    producers = [put_later.remote(q, [(i, k) for k in range(5)], 0.01) for i in range(n)]
    consumer = Consumer.remote(q)  # (the queue travels in the constructor's arguments)
    got = ray.get(consumer.drain.remote(5 * n), timeout=60)
    assert sorted(got) == [(i, k) for i in range(n) for k in range(5)]
    for i in range(n):  # each producer's items keep their order
        assert [x for x in got if x[0] == i] == [(i, k) for k in range(5)]
    assert ray.get(producers) == [5] * n
    ray.get(consumer.put.remote("from actor"))
    assert q.get(timeout=10) == "from actor"


def test_batches(ray_module):
    q = Queue(maxsize=5)
    q.put_nowait_batch(range(3))  # (any iterable)
    assert q.qsize() == 3
    with pytest.raises(Full):
        q.put_nowait_batch(["a", "b", "c"])  # 3 + 3 > 5: none of them is added
    assert q.qsize() == 3
    q.put_nowait_batch(x for x in "ab")
    assert q.full()
    with pytest.raises(Empty):
        q.get_nowait_batch(6)  # more than there are: none is taken
    assert q.qsize() == 5
    assert q.get_nowait_batch(2) == [0, 1]
    assert q.get_nowait_batch(0) == []
    assert q.get_nowait_batch(3) == [2, "a", "b"]
    assert q.empty()
    unbounded = Queue()
    unbounded.put_nowait_batch(range(1000))
    assert unbounded.get_nowait_batch(1000) == list(range(1000))


def test_async_actor_put_get(ray_module):
    q = Queue()
    user = AsyncUser.remote()
    consumed = user.consume.remote(q, 3)  # waits on the empty queue first
    time.sleep(0.2)
    other = AsyncUser.remote()
    assert ray.get(other.produce.remote(q, ["x", "y", "z"]), timeout=30) == 3
    assert ray.get(consumed, timeout=30) == ["x", "y", "z"]
    small = Queue(maxsize=1)
    assert ray.get(user.misses.remote(small), timeout=30) == [
        "empty", "empty-timeout", "full", "full-timeout"]


def test_async_from_driver_coroutine(ray_module):
    q = Queue()

    async def main():
        await q.put_async(1)
        await q.put_async(2, timeout=5)
        return [await q.get_async(), await q.get_async(timeout=5)]

    assert asyncio.run(main()) == [1, 2]


def test_pickled_queue_is_the_same_queue(ray_module):
    q = Queue(maxsize=3)
    copy = pickle.loads(pickle.dumps(q))
    copy.put("via copy")
    assert q.get(timeout=10) == "via copy" and copy.maxsize == 3


def test_actor_options(ray_module):
    q = Queue(actor_options={"name": "named-queue", "num_cpus": 0})
    q.put(5)
    handle = ray.get_actor("named-queue")
    assert ray.get(handle.qsize.remote()) == 1
    q.shutdown()


@pytest.mark.parametrize("force", [False, True])
def test_shutdown(ray_module, force):
    q = Queue()
    q.put(1)
    copy = pickle.loads(pickle.dumps(q))
    t0 = time.monotonic()
    q.shutdown(force=force, grace_period_s=5)
    assert time.monotonic() - t0 < 5
    with pytest.raises(RuntimeError, match="shut down"):
        q.get_nowait()
    q.shutdown()  # (twice is harmless)
    with pytest.raises(exc.RayActorError):
        copy.get(timeout=10)


def test_shutdown_with_a_blocked_getter(ray_module):
    q = Queue()
    ref = get_from.remote(q, 1, timeout=None)
    time.sleep(0.3)
    q.shutdown(grace_period_s=2)
    with pytest.raises(exc.RayActorError):
        ray.get(ref, timeout=30)

"""Concurrent actors (threads, asyncio), cancelling actor calls, and ActorPool.

Concurrency is shown without timing: calls that can only finish when another call runs
at the same moment (a barrier, an event set by a later call)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import mpray
from mpray import exceptions as exc
from mpray.util import ActorPool


@mpray.remote
class Threaded:
    def __init__(self, n):
        self.barrier = threading.Barrier(n, timeout=20)
        self.lock = threading.Lock()
        self.count = 0

    def meet(self, i):
        self.barrier.wait()  # returns only when n calls are inside at once
        with self.lock:
            self.count += 1
        return i

    def get_count(self):
        return self.count

    def nested_get(self, ref_list):
        return mpray.get(ref_list[0]) + 1


@mpray.remote
class AsyncActor:
    def __init__(self):
        self.event = asyncio.Event()
        self.log = []

    async def wait_for_signal(self):
        await self.event.wait()
        return "released"

    async def signal(self):
        self.event.set()
        return "set"

    async def sleep_then(self, x, t):
        await asyncio.sleep(t)
        self.log.append(x)
        return x

    async def await_ref(self, refs):
        return (await refs[0]) * 2

    def sync_method(self):
        return "sync in async actor"

    async def get_log(self):
        return list(self.log)


@mpray.remote
def slow_value(x):
    time.sleep(0.1)
    return x


@mpray.remote
class Serial:
    def __init__(self):
        self.ran = []

    def block(self, seconds):
        time.sleep(seconds)
        return "blocked"

    def record(self, x):
        self.ran.append(x)
        return x

    def get_ran(self):
        return list(self.ran)


def test_threaded_actor_runs_calls_at_once(ray_module):
    a = Threaded.options(max_concurrency=4).remote(4)
    assert sorted(mpray.get([a.meet.remote(i) for i in range(4)], timeout=30)) == [0, 1, 2, 3]
    assert mpray.get(a.get_count.remote()) == 4


def test_threaded_actor_can_get_inside_methods(ray_module):
    a = Threaded.options(max_concurrency=3).remote(1)
    refs = [a.nested_get.remote([slow_value.remote(i)]) for i in range(6)]
    assert mpray.get(refs, timeout=30) == [i + 1 for i in range(6)]


def test_async_actor_interleaves_calls(ray_module):
    a = AsyncActor.remote()
    waiting = a.wait_for_signal.remote()
    ready, _ = mpray.wait([waiting], timeout=0.2)
    assert ready == []  # waits for the event
    assert mpray.get(a.signal.remote()) == "set"
    assert mpray.get(waiting, timeout=10) == "released"
    assert mpray.get(a.sync_method.remote()) == "sync in async actor"


def test_async_actor_many_concurrent_sleeps(ray_module):
    a = AsyncActor.remote()
    # later-submitted, shorter sleeps finish first: they ran concurrently
    refs = [a.sleep_then.remote(i, 0.4 - 0.1 * i) for i in range(4)]
    assert mpray.get(refs, timeout=30) == [0, 1, 2, 3]
    assert mpray.get(a.get_log.remote()) == [3, 2, 1, 0]


def test_async_method_awaits_refs(ray_module):
    a = AsyncActor.remote()
    assert mpray.get(a.await_ref.remote([slow_value.remote(21)]), timeout=30) == 42


def test_async_concurrency_limit(ray_module):
    a = AsyncActor.options(max_concurrency=1).remote()
    refs = [a.sleep_then.remote(i, 0.2 - 0.05 * i) for i in range(4)]
    assert mpray.get(refs, timeout=30) == [0, 1, 2, 3]
    assert mpray.get(a.get_log.remote()) == [0, 1, 2, 3]  # one at a time: in order


def test_cancel_queued_call_never_runs(ray_module):
    a = Serial.remote()
    mpray.get(a.record.remote("warm"))
    blocker = a.block.remote(0.5)
    doomed = a.record.remote("doomed")
    after = a.record.remote("after")
    mpray.cancel(doomed)
    with pytest.raises(exc.TaskCancelledError):
        mpray.get(doomed, timeout=10)
    assert mpray.get([blocker, after], timeout=10) == ["blocked", "after"]
    assert mpray.get(a.get_ran.remote()) == ["warm", "after"]


def test_cancel_queued_call_sent_through_the_node(ray_module):
    a = Serial.remote()

    @mpray.remote
    def via_worker(h):
        blocker = h.block.remote(0.5)
        doomed = h.record.remote("doomed")
        mpray.cancel(doomed)
        try:
            mpray.get(doomed, timeout=10)
            out = "ran"
        except exc.TaskCancelledError:
            out = "cancelled"
        mpray.get(blocker)
        return out, mpray.get(h.get_ran.remote())

    assert mpray.get(via_worker.remote(a), timeout=30) == ("cancelled", [])


def test_cancel_queued_call_on_a_threaded_actor(ray_module):
    a = Serial.options(max_concurrency=2).remote()
    blockers = [a.block.remote(1.0), a.block.remote(1.0)]  # both threads busy
    queued = a.record.remote("doomed")
    mpray.cancel(queued)
    with pytest.raises(exc.TaskCancelledError):
        mpray.get(queued, timeout=10)
    assert mpray.get(blockers, timeout=10) == ["blocked", "blocked"]
    assert mpray.get(a.get_ran.remote()) == []


def test_cancel_running_async_call(ray_module):
    a = AsyncActor.remote()
    waiting = a.wait_for_signal.remote()
    assert mpray.wait([waiting], timeout=0.2)[0] == []
    mpray.cancel(waiting)
    with pytest.raises(exc.TaskCancelledError):
        mpray.get(waiting, timeout=10)
    assert mpray.get(a.signal.remote()) == "set"  # the actor is fine


def test_cancel_call_waiting_for_creation(ray_module):
    @mpray.remote
    class SlowInit:
        def __init__(self):
            time.sleep(0.3)

        def f(self):
            return "ran"

    a = SlowInit.remote()
    r = a.f.remote()
    mpray.cancel(r)
    with pytest.raises(exc.TaskCancelledError):
        mpray.get(r, timeout=10)
    assert mpray.get(a.f.remote(), timeout=10) == "ran"


# ----------------------------------------------------------------------------- ActorPool


@mpray.remote
class Doubler:
    def double(self, x):
        return 2 * x

    def slow_double(self, x):
        time.sleep(0.05 * (x % 3))
        return 2 * x


def test_actor_pool_map_keeps_order(ray_module):
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    assert list(pool.map(lambda a, v: a.slow_double.remote(v), range(10))) == \
        [2 * v for v in range(10)]


def test_actor_pool_map_unordered_gets_everything(ray_module):
    pool = ActorPool([Doubler.remote(), Doubler.remote(), Doubler.remote()])
    out = list(pool.map_unordered(lambda a, v: a.slow_double.remote(v), range(12)))
    assert sorted(out) == [2 * v for v in range(12)]


def test_actor_pool_submit_get_next(ray_module):
    actors = [Doubler.remote(), Doubler.remote()]
    pool = ActorPool(actors)
    assert not pool.has_next()
    for v in range(5):
        pool.submit(lambda a, x: a.double.remote(x), v)
    assert pool.has_next() and not pool.has_free()
    assert [pool.get_next() for _ in range(5)] == [0, 2, 4, 6, 8]
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    idle = pool.pop_idle()
    assert idle in actors
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(actors[0] if idle is actors[1] else actors[1])
    pool.push(idle)
    pool.submit(lambda a, x: a.double.remote(x), 21)
    assert pool.get_next_unordered() == 42


def test_actor_pool_get_next_timeout(ray_module):
    pool = ActorPool([Serial.remote()])
    pool.submit(lambda a, x: a.block.remote(x), 1.0)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.05)
    assert pool.get_next(timeout=10) == "blocked"

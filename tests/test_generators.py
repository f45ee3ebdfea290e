"""Generator tasks, written from Ray 2.x's documented behaviour: streaming (the default
for a generator function: an ``ObjectRefGenerator`` of refs as values are yielded),
``num_returns="dynamic"``, static ``num_returns=N``, errors at the failing item,
backpressure, cancel, ``async for``."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

import mpray
from mpray import exceptions as exc


@mpray.remote
def count(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"boom at {i}")
        yield i


@mpray.remote(num_returns=3)
def three(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise KeyError("boom")
        yield i


@mpray.remote(num_returns="dynamic")
def dyn(n):
    for i in range(n):
        yield i * 10


@mpray.remote
def slow(n, pause):
    for i in range(n):
        time.sleep(pause)
        yield i


@mpray.remote(_generator_backpressure_num_objects=2)
def stamped(n):
    for _ in range(n):
        yield time.monotonic()


@mpray.remote
def big_arrays(n):
    for i in range(n):
        yield np.full(200_000, i, dtype=np.int64)  # (1.6 MB each: in the arena)


def values(gen):
    out = []
    for ref in gen:
        try:
            out.append(mpray.get(ref, timeout=30))
        except exc.RayTaskError as e:
            out.append(e)
    return out


def test_a_generator_function_streams_refs_in_order(ray_module):
    gen = count.remote(5)
    assert isinstance(gen, mpray.ObjectRefGenerator)
    refs = list(gen)
    assert all(isinstance(r, mpray.ObjectRef) for r in refs)
    assert mpray.get(refs, timeout=30) == [0, 1, 2, 3, 4]
    assert gen.is_finished() and mpray.get(gen.completed(), timeout=30) is None
    with pytest.raises(StopIteration):
        next(gen)


def test_values_arrive_while_the_task_still_runs(ray_module):
    gen = slow.remote(3, 0.5)
    t0 = time.monotonic()
    assert mpray.get(next(gen), timeout=30) == 0
    assert time.monotonic() - t0 < 1.2  # the first value, not the whole task (1.5 s)
    assert not gen.is_finished()
    assert values(gen) == [1, 2]


def test_an_error_is_raised_at_its_place_and_ends_the_stream(ray_module):
    got = values(count.remote(5, fail_at=2))
    assert got[:2] == [0, 1] and len(got) == 3
    assert isinstance(got[2], ValueError) and "boom at 2" in str(got[2])


def test_an_error_before_the_first_value(ray_module):
    got = values(count.remote(3, fail_at=0))
    assert len(got) == 1 and isinstance(got[0], ValueError)


def test_a_task_that_fails_outside_its_generator_ends_with_its_error(ray_module):
    gen = count.remote("not a number")  # range("...") raises at the first next()
    (err,) = values(gen)
    assert isinstance(err, TypeError)


def test_big_values_stream_through_the_store(ray_module):
    arrays = [mpray.get(r, timeout=30) for r in big_arrays.remote(3)]
    assert [int(a[0]) for a in arrays] == [0, 1, 2] and arrays[2].shape == (200_000,)


def test_backpressure_holds_the_generator_until_values_are_taken(ray_module):
    gen = stamped.remote(6)
    time.sleep(1.0)  # with no backpressure all six would be yielded by now
    t0 = time.monotonic()
    stamps = [mpray.get(r, timeout=30) for r in gen]
    assert len(stamps) == 6
    assert sum(1 for t in stamps if t < t0) == 2  # the first two, then it waited


def test_cancel_ends_the_stream_with_task_cancelled(ray_module):
    gen = slow.remote(100, 0.05)
    assert mpray.get(next(gen), timeout=30) == 0
    mpray.cancel(gen)  # (as Ray: the generator's task)
    with pytest.raises(exc.TaskCancelledError):
        for ref in gen:
            mpray.get(ref, timeout=30)


def test_async_for(ray_module):
    async def main():
        return [await ref async for ref in count.remote(4)]

    assert asyncio.run(main()) == [0, 1, 2, 3]


def test_a_dropped_generator_lets_its_task_finish(ray_module):
    gen = stamped.remote(10)  # backpressure 2: it would wait for ever without a reader
    first = next(gen)
    done = gen.completed()
    del gen
    assert mpray.get(done, timeout=30) is None
    assert isinstance(mpray.get(first, timeout=30), float)


def test_dynamic_returns_one_ref_to_the_refs(ray_module):
    ref = dyn.remote(3)
    assert isinstance(ref, mpray.ObjectRef)
    gen = mpray.get(ref, timeout=30)
    assert isinstance(gen, mpray.DynamicObjectRefGenerator) and len(gen) == 3
    assert mpray.get(list(gen), timeout=30) == [0, 10, 20]


@pytest.mark.parametrize("n, fail_at, want", [
    (3, None, [0, 1, 2]),
    (4, None, [0, 1, 2]),  # more than num_returns: the first ones (and a warning)
    (2, None, [0, 1, ValueError]),  # fewer: the missing one fails
    (3, 1, [0, KeyError, KeyError]),  # an error after one: the values before it stay
])
def test_static_num_returns(ray_module, n, fail_at, want):
    got = []
    for ref in three.remote(n, fail_at):
        try:
            got.append(mpray.get(ref, timeout=30))
        except exc.RayTaskError as e:
            got.append(next(t for t in (ValueError, KeyError) if isinstance(e, t)))
    assert got == want


def test_streaming_and_dynamic_need_a_generator_function(ray_module):
    @mpray.remote
    def plain():
        return 1

    for kind in ("streaming", "dynamic"):
        with pytest.raises(ValueError, match="generator functions"):
            plain.options(num_returns=kind)
    with pytest.raises(ValueError, match="num_returns"):
        plain.options(num_returns="lots")


def test_a_generator_cannot_be_pickled(ray_module):
    gen = count.remote(1)
    with pytest.raises(TypeError, match="ObjectRefGenerator"):
        mpray.put(gen)
    list(gen)


@mpray.remote
def consume(n):
    return [mpray.get(r) for r in count.remote(n)], os.getpid()


def test_a_task_iterates_a_generator_it_started(ray_module):
    vals, pid = mpray.get(consume.remote(4), timeout=30)
    assert vals == [0, 1, 2, 3] and pid != os.getpid()


@mpray.remote
class Streamer:
    def count(self, n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"boom at {i}")
            yield i

    @mpray.method(num_returns="dynamic")
    def doubled(self, n):
        for i in range(n):
            yield 2 * i

    @mpray.method(num_returns=2)
    def pair(self):
        yield "a"
        yield "b"


@mpray.remote
class AsyncStreamer:
    async def count(self, n):
        for i in range(n):
            await asyncio.sleep(0.01)
            yield i

    def plain_gen(self, n):
        for i in range(n):
            yield -i

    async def other(self):
        return "still serving"


def test_actor_generator_methods_stream(ray_module):
    a = Streamer.remote()
    gen = a.count.remote(4)
    assert isinstance(gen, mpray.ObjectRefGenerator) and values(gen) == [0, 1, 2, 3]
    got = values(a.count.remote(5, fail_at=2))
    assert got[:2] == [0, 1] and isinstance(got[2], ValueError) and len(got) == 3
    assert mpray.get(list(mpray.get(a.doubled.remote(3), timeout=30)), timeout=30) == [0, 2, 4]
    assert mpray.get(a.pair.remote(), timeout=30) == ["a", "b"]
    assert values(a.count.options(num_returns="streaming").remote(2)) == [0, 1]


def test_async_actor_generator_methods_stream(ray_module):
    b = AsyncStreamer.remote()
    gen = b.count.remote(3)
    other = b.other.remote()  # (the event loop serves it while the stream runs)
    assert values(gen) == [0, 1, 2] and values(b.plain_gen.remote(3)) == [0, -1, -2]
    assert mpray.get(other, timeout=30) == "still serving"


@mpray.remote
def stream_from_actor(a, n):
    return [mpray.get(r) for r in a.count.remote(n)]


def test_a_task_streams_from_an_actor(ray_module):
    a = Streamer.remote()
    assert mpray.get(stream_from_actor.remote(a, 3), timeout=30) == [0, 1, 2]

"""How a worker returns a generator's values (Ray 2.x semantics).

Data flow::

    static num_returns=N ─▶ ``static_values``: the first N values are the returns; fewer:
        the missing ones fail (ValueError), an exception after k values fails the
        returns from k on, more than N: the first N are kept and it is said on stderr
    "streaming"          ─▶ ``stream``: each value stored (inline or in the arena) and
        sent at once ─Yield(owner, tid, i, oid)─▶ node ─▶ owner (a forwarded task's: to
        its home rank, with a lent hold); an exception becomes the value at its place;
        then the end (Yield with no oid); with backpressure N, waits while N values
        are not taken (Consumed from the owner, through the node(s))
    "dynamic"            ─▶ ``dynamic``: every value put here, the refs returned as one
        value (a DynamicObjectRefGenerator)
"""

from __future__ import annotations

import asyncio
import pickle
import sys

from .. import exceptions as exc
from .. import protocol as P
from ..generator import DynamicObjectRefGenerator
from ..object_ref import ObjectRef
from ..store.serialization import ERROR


class Failed:
    """A return that failed (in a generator's static values): its exception."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class StaticValues(list):
    """A generator's values for num_returns=N, a ``Failed`` where one is missing."""


def static_values(gen, nret: int, name: str, cancelled: type) -> StaticValues:
    out = StaticValues()
    try:
        for value in gen:
            if len(out) == nret:
                print(f"mpray: task {name} returned more than num_returns={nret} objects; "
                      "the first ones are its returns", file=sys.stderr, flush=True)
                break
            out.append(value)
    except cancelled:
        raise
    except Exception as e:  # noqa: BLE001 - the returns from here on fail with it
        out.extend([Failed(e)] * (nret - len(out)))
        return out
    if len(out) < nret:
        missing = ValueError(f"Task returned {len(out)} objects, but num_returns={nret}.")
        out.extend([Failed(missing)] * (nret - len(out)))
    return out


def stream(loop, tid: int, owner: int, gen, backpressure: int, name: str,
           cancelled: type) -> None:
    """Send each value as it is yielded; an exception is the last value."""
    client = loop.client
    taken = _begin(client, tid)
    i = 0
    try:
        while True:
            try:
                value = next(gen)
            except StopIteration:
                return _send_end(client, owner, tid)
            except cancelled:
                raise  # (no end: its owner gets the cancel's error as the last value)
            except Exception as e:  # noqa: BLE001 - the value at its place raises it
                _send_error(loop, owner, tid, i, e, name)
                return _send_end(client, owner, tid)
            _send_value(client, owner, tid, i, value)
            value = None
            i += 1
            if backpressure and i - taken.get(tid, 0) >= backpressure:
                client.wait_until(lambda: i - taken.get(tid, 0) < backpressure, None)
    finally:
        taken.pop(tid, None)


def _begin(client, tid: int) -> dict:
    """A stream starts: its values taken so far (0), and its end marked to go through
    the node, after its values (report())."""
    client.stream_taken[tid] = 0
    client.streamed.add(tid)
    return client.stream_taken


def _send_error(loop, owner: int, tid: int, i: int, e: Exception, name: str) -> None:
    err = loop.remote_error(e, name)
    loop.client.send([P.Yield(owner, tid, i, loop.client.new_ids(0), ERROR,
                              pickle.dumps(err, protocol=5), ())])


def _send_end(client, owner: int, tid: int) -> None:
    """The stream's end, in order behind its values and before the task's own end (a
    forwarded task's too: its RDone follows them home); the owner ends the stream at
    this."""
    client.send([P.Yield(owner, tid, -1, None, ERROR, None, ())])


def _send_value(client, owner: int, tid: int, i: int, value) -> None:
    kind, payload, contained = client.store_value(value)
    if contained:  # (refs it holds: known to the node before the value)
        client.publish_contained(contained)
    client.send([P.Yield(owner, tid, i, client.new_ids(0), kind, payload,
                         tuple(contained))])


async def astream(loop, tid: int, owner: int, agen, backpressure: int, name: str) -> None:
    """``stream`` for an async generator (an async actor's method): its backpressure
    waits without holding up the event loop."""
    client = loop.client
    taken = _begin(client, tid)
    i = 0
    try:
        while True:
            try:
                value = await agen.__anext__()
            except StopAsyncIteration:
                return _send_end(client, owner, tid)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the value at its place raises it
                _send_error(loop, owner, tid, i, e, name)
                return _send_end(client, owner, tid)
            _send_value(client, owner, tid, i, value)
            value = None
            i += 1
            while backpressure and i - taken.get(tid, 0) >= backpressure:
                await asyncio.sleep(0.001)  # (the pumping thread records what was taken)
    finally:
        taken.pop(tid, None)


async def collected(agen, limit: int | None):
    """An async generator's values (up to ``limit`` + nothing more), as a generator that
    yields them and then raises what it raised (for ``static_values``, ``dynamic``)."""
    out, err = [], None
    try:
        async for value in agen:
            out.append(value)
            if limit is not None and len(out) > limit:
                break
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - raised again where the values are read
        err = e

    def replay():
        yield from out
        if err is not None:
            raise err

    return replay()


async def as_async(gen):
    """A sync generator (a generator method of an async actor) as an async one."""
    for value in gen:
        yield value


def dynamic(client, gen) -> DynamicObjectRefGenerator:
    """Put every value here; the refs are the task's one value."""
    return DynamicObjectRefGenerator([ObjectRef(client.put(v), owned=True) for v in gen])


def failed_payload(loop, f: Failed, name: str) -> bytes:
    e = f.error
    err = e if isinstance(e, exc.RayError) else loop.remote_error(e, name)
    return pickle.dumps(err, protocol=5)

"""Generator tasks' results, as Ray 2.x returns them: ``ObjectRefGenerator`` (streaming:
a ref per value as it is yielded) and ``DynamicObjectRefGenerator`` (``num_returns=
"dynamic"``: the refs of every value, once the task is done).

Data flow of a streaming task (worker/generators.py runs the generator)::

    f.remote() ─▶ ObjectRefGenerator: client.streams[tid] made before the task is sent
    worker: value i ─Yield(owner, tid, i, oid, value)─▶ node: StreamItem(tid, i, oid)
            to the owner (it makes the ref), then the value (Obj), in this order
    owner:  StreamItem ─▶ client.streams[tid] (a deque of refs) ─▶ next(gen)
    worker: the generator ends ─Yield(no oid)─▶ the stream's end, after every value
            (a task forwarded to another rank sends each value home, StreamLent, in
            order, and before its RDone, which ends the task there: RStream and RDone
            share one MPI channel): next(gen) raises StopIteration at it.  The completion object (tid + 1) comes with the task's end: a task
            that failed before, outside or amid its stream (killed, cancelled) has no
            end; its error is the last ref
    backpressure N: next(gen) tells the node how many it took (StreamAck ─▶ Consumed to
            the worker), which waits while N values are not taken
"""

from __future__ import annotations

import asyncio
import collections
import time

from . import protocol as P
from .exceptions import GetTimeoutError
from .object_ref import ObjectRef
from .store.serialization import ERROR

__all__ = ["ObjectRefGenerator", "DynamicObjectRefGenerator"]

_ALL_TAKEN = 1 << 62  # a dropped generator: its task may run to its end


class ObjectRefGenerator:
    """The refs of a streaming generator task's values, in order, as they are yielded:
    iterate it (``for ref in gen``, ``async for ref in gen``) and ``get`` each ref.  An
    error raised by the generator is raised by the ``get`` of the ref at its place;
    ``mpray.cancel(gen)`` cancels the task."""

    def __init__(self, client, tid: int, completion: ObjectRef, backpressure: int) -> None:
        self._client = client
        self._tid = tid
        self._completion = completion
        self._backpressure = backpressure
        self._items: collections.deque = collections.deque()
        self._taken = 0
        self._done = False
        client.streams[tid] = self._items

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> "ObjectRefGenerator":
        return self

    def __next__(self) -> ObjectRef:
        ref = self._next(None)
        if ref is None:
            raise StopIteration
        return ref

    def __aiter__(self) -> "ObjectRefGenerator":
        return self

    async def __anext__(self) -> ObjectRef:
        if not self.next_ready():  # (waits in a thread: the event loop keeps running)
            await asyncio.get_running_loop().run_in_executor(None, self._wait, None)
        ref = self._next(0)
        if ref is None:
            raise StopAsyncIteration
        return ref

    def _wait(self, timeout: float | None) -> bool:
        return self._client._blocking_wait(self.next_ready, None if timeout is None else
                                           _deadline(timeout))

    def _next(self, timeout: float | None) -> ObjectRef | None:
        """The next value's ref; None at the end of the stream."""
        if self._done:
            return None
        if not self.next_ready() and not self._wait(timeout):
            raise GetTimeoutError(f"no value of the generator within {timeout} s")
        if self._items:
            ref = self._items.popleft()
            if ref is None:  # its end: every value was taken
                self._close()
                return None
            self._taken += 1
            if self._backpressure:
                self._client.send([P.StreamAck(self._tid, self._taken)])
            return ref
        self._close()  # the task failed before, outside or in the middle of its stream
        return self._completion  # (its get raises that error)

    # ------------------------------------------------------------------ state
    def next_ready(self) -> bool:
        """True when ``next`` would not wait."""
        return bool(self._items) or self._done or self._failed()

    def is_finished(self) -> bool:
        """True once the stream ended and every value was taken."""
        items = self._items
        return self._done or (items[0] is None if items else self._failed())

    def _failed(self) -> bool:
        """The task ended with an error (its stream's end may never come)."""
        value = self._client._values.get(self._completion.id)
        return value is not None and value[0] == ERROR

    def completed(self) -> ObjectRef:
        """A ref that resolves (to None, or the task's error) when the task has ended."""
        return self._completion

    def _close(self) -> None:
        if self._done:
            return
        self._done = True
        self._client.streams.pop(self._tid, None)
        if self._backpressure:  # (a worker waiting for its values to be taken goes on)
            self._client.send([P.StreamAck(self._tid, _ALL_TAKEN)])
        self._items.clear()

    def __del__(self) -> None:
        try:
            if not self._done and not self._client.closed:
                self._close()
        except Exception:  # noqa: BLE001 - at interpreter exit
            pass

    def __reduce__(self):
        raise TypeError("an ObjectRefGenerator cannot be passed to another process: pass "
                        "the refs it yields instead")

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({P.id_hex(self._tid)})"


def _deadline(timeout: float) -> float:
    return time.monotonic() + timeout


class DynamicObjectRefGenerator:
    """``num_returns="dynamic"``: the value of the task's one ref, once it is done: the
    refs of every value its generator yielded, in order."""

    def __init__(self, refs: list) -> None:
        self._refs = list(refs)

    def __iter__(self):
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"

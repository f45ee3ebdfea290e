"""``mpray.util.queue``: a FIFO queue shared by tasks and actors (Ray's ``ray.util.queue``).

The queue lives in one async actor (``_QueueActor``); a ``Queue`` is a thin, picklable
front over its handle, so passing a ``Queue`` to a task or an actor passes the handle and
every holder reaches the same items.  Data flow::

    q.put(x)  ─▶ actor.put.remote(x, timeout) ─▶ asyncio.Queue.put on the actor's loop
    q.get()   ─▶ actor.get.remote(timeout)     ─▶ asyncio.Queue.get (waits on the loop)
              ◀─ (True, item) | (False, why)   ◀─ the caller raises Empty / Full itself

Waiting happens in the actor's event loop, never in a polling loop: a blocked ``get``
is a pending coroutine there (so a ``put`` from anyone else still runs, up to the async
actor's 1000 concurrent calls), and the caller sleeps in ``mpray.get`` until the answer
comes.  ``timeout`` is applied by the actor (``asyncio.wait_for``).

The actor answers "empty"/"full" as a value rather than raising: the caller then raises
a plain ``Empty``/``Full`` (not a ``RayTaskError`` wrapping one), and a polling
``get_nowait`` loop costs no remote traceback per miss.
"""

from __future__ import annotations

import asyncio
import queue as _std_queue
from collections.abc import Iterable
from typing import Any

from .. import api

__all__ = ["Empty", "Full", "Queue"]


class Empty(_std_queue.Empty):
    """Raised by ``get`` when no item came (``block=False``, or ``timeout`` passed)."""


class Full(_std_queue.Full):
    """Raised by ``put`` when there was no room (``block=False``, or ``timeout`` passed)."""


# ---------------------------------------------------------------------- the actor
class _QueueActor:
    """The queue's state: one ``asyncio.Queue``, touched only from the actor's event loop
    (an async actor runs its sync methods on that loop too), so it needs no lock."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        # (asyncio.Queue binds to a loop at its first wait, not here: the constructor
        # runs on another thread than the loop that serves the calls)
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None) -> tuple:
        if not self.queue.full():
            self.queue.put_nowait(item)
            return (True, None)
        # (asyncio.wait_for with a zero timeout cancels even an operation that could
        # finish at once; the immediate case is handled above instead)
        if timeout is not None and timeout <= 0:
            return (False, f"the queue is full ({self.maxsize} items)")
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            return (False, f"the queue stayed full ({self.maxsize} items) for {timeout} s")
        return (True, None)

    async def get(self, timeout: float | None = None) -> tuple:
        if not self.queue.empty():
            return (True, self.queue.get_nowait())
        if timeout is not None and timeout <= 0:
            return (False, "the queue is empty")
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return (False, f"no item came within {timeout} s")
        return (True, item)

    def put_nowait(self, item: Any) -> tuple:
        if self.queue.full():
            return (False, f"the queue is full ({self.maxsize} items)")
        self.queue.put_nowait(item)
        return (True, None)

    def get_nowait(self) -> tuple:
        if self.queue.empty():
            return (False, "the queue is empty")
        return (True, self.queue.get_nowait())

    def put_nowait_batch(self, items: list) -> tuple:
        # all or nothing: a batch that does not fit leaves the queue as it was
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            return (False, f"cannot add {len(items)} items to a queue holding "
                           f"{self.queue.qsize()} of at most {self.maxsize}")
        for item in items:
            self.queue.put_nowait(item)
        return (True, None)

    def get_nowait_batch(self, num_items: int) -> tuple:
        if num_items > self.queue.qsize():
            return (False, f"cannot get {num_items} items from a queue holding "
                           f"{self.queue.qsize()}")
        return (True, [self.queue.get_nowait() for _ in range(num_items)])


_actor_class = None  # the ActorClass of _QueueActor: made once, registered once per session


def _queue_actor_class():
    global _actor_class
    if _actor_class is None:
        _actor_class = api.remote(_QueueActor)
    return _actor_class


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


def _unwrap(answer: tuple, error: type) -> Any:
    ok, value = answer
    if not ok:
        raise error(value)
    return value


# ---------------------------------------------------------------------- the front
class Queue:
    """A first-in, first-out queue shared by the driver, tasks and actors.

    ``maxsize`` bounds the number of items (0 or less: unbounded, as in ``queue.Queue``).  ``actor_options`` are passed
    to the queue actor's ``.options(...)`` (e.g. ``{"num_cpus": 1}`` or a
    ``scheduling_strategy``).  The queue is picklable: pass it to tasks and actors.
    With several consumers (or producers) waiting, which one is served first is not
    defined, as in Ray.
    """

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
        self.maxsize = maxsize
        cls = _queue_actor_class()
        if actor_options:
            cls = cls.options(**actor_options)
        self.actor = cls.remote(maxsize)

    def _actor(self):
        if self.actor is None:
            raise RuntimeError("this Queue was shut down (Queue.shutdown())")
        return self.actor

    # ------------------------------------------------------------------ size
    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue."""
        return api.get(self._actor().qsize.remote())

    def qsize(self) -> int:
        """The number of items in the queue (as ``size()``)."""
        return self.size()

    def empty(self) -> bool:
        """Whether the queue holds no item."""
        return api.get(self._actor().empty.remote())

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items (never, when unbounded)."""
        return api.get(self._actor().full.remote())

    # ------------------------------------------------------------------ put / get
    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item`` at the end.  When the queue is full: with ``block`` wait for room,
        up to ``timeout`` seconds (``None``: for ever), else raise ``Full`` at once.

        Raises ``Full`` when no room came, ``ValueError`` for a negative ``timeout``."""
        _unwrap(api.get(self._put_ref(item, block, timeout)), Full)

    async def put_async(self, item: Any, block: bool = True,
                        timeout: float | None = None) -> None:
        """``put`` for coroutines (async actors, ``asyncio`` code): awaits instead of
        blocking the event loop."""
        _unwrap(await self._put_ref(item, block, timeout), Full)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the first item.  When the queue is empty: with ``block`` wait
        for an item, up to ``timeout`` seconds (``None``: for ever), else raise ``Empty``.

        Raises ``Empty`` when no item came, ``ValueError`` for a negative ``timeout``."""
        return _unwrap(api.get(self._get_ref(block, timeout)), Empty)

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` for coroutines (async actors, ``asyncio`` code): awaits instead of
        blocking the event loop."""
        return _unwrap(await self._get_ref(block, timeout), Empty)

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``: raises ``Full`` when there is no room."""
        self.put(item, block=False)

    def get_nowait(self) -> Any:
        """``get(block=False)``: raises ``Empty`` when there is no item."""
        return self.get(block=False)

    def _put_ref(self, item: Any, block: bool, timeout: float | None):
        if not block:  # (``timeout`` means nothing without ``block``, as in queue.Queue)
            return self._actor().put_nowait.remote(item)
        _check_timeout(timeout)
        return self._actor().put.remote(item, timeout)

    def _get_ref(self, block: bool, timeout: float | None):
        if not block:
            return self._actor().get_nowait.remote()
        _check_timeout(timeout)
        return self._actor().get.remote(timeout)

    # ------------------------------------------------------------------ batches
    def put_nowait_batch(self, items: Iterable) -> None:
        """Add all ``items``, in order, in one call; raises ``Full`` (adding none of them)
        when they do not all fit."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        # (a list: generators and other one-shot iterables do not pickle)
        _unwrap(api.get(self._actor().put_nowait_batch.remote(list(items))), Full)

    def get_nowait_batch(self, num_items: int) -> list:
        """Remove and return the first ``num_items`` items, in order, in one call; raises
        ``Empty`` (removing none) when the queue holds fewer."""
        if isinstance(num_items, bool) or not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        return _unwrap(api.get(self._actor().get_nowait_batch.remote(num_items)), Empty)

    # ------------------------------------------------------------------ end
    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """End the queue's actor; its items are dropped and calls through other copies of
        this queue raise ``ActorDiedError``.  ``force`` kills it at once; otherwise it
        is asked to exit and killed if it has not within ``grace_period_s`` seconds."""
        actor, self.actor = self.actor, None
        if actor is None:
            return
        if force:
            api.kill(actor, no_restart=True)
            return
        # (__ray_terminate__ returns nothing by default; one return gives a ref to wait
        # on, which ends in ActorExit once the actor is gone)
        done = actor.__ray_terminate__.options(num_returns=1).remote()
        ready, _ = api.wait([done], timeout=grace_period_s)
        if not ready:
            api.kill(actor, no_restart=True)

    def __repr__(self) -> str:
        return f"Queue(maxsize={self.maxsize}, actor={self.actor!r})"

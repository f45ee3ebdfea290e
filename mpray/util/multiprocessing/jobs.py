"""The pool's jobs as its caller sees them (``AsyncResult``, ``IMapIterator``) and as its
handler thread feeds them (``pool.py``): one pool call's chunks, where their results go,
and the callbacks, events and iterators that wake the caller::

    Pool.map/apply/imap ─▶ a job (its chunks) ─▶ handler thread: next_chunk ─▶ actors
    handler: deliver(chunk, results) ─▶ callbacks, the ready event, the imap iterator
"""

from __future__ import annotations

import collections
import itertools
import sys
import threading
import time
import traceback
from multiprocessing import TimeoutError

from ._actor import MAP, _Failed

# ---------------------------------------------------------------------- jobs
class _Job:
    """One pool call as the handler thread sees it: its chunks, where results go.
    ``may_submit``, ``next_chunk``, ``deliver``, ``abort`` run in the handler thread."""

    def __init__(self, func_ref, mode: int, chunks) -> None:
        self.func_ref = func_ref  # the cloudpickled function, or its ref
        self.mode = mode
        self._chunks = chunks  # iterator of (index, items)
        self.exhausted = False  # every chunk handed out
        self.submitted = self.inflight = 0  # (counted by the handler)

    def may_submit(self) -> bool:
        return not self.exhausted

    def next_chunk(self):
        """The next ``(index, items)``, or None once every chunk was handed out."""
        chunk = next(self._chunks, None)
        if chunk is None:
            self.exhausted = True
            self._all_submitted()
        return chunk

    def _all_submitted(self) -> None:
        pass


class AsyncResult(_Job):
    """The result of ``apply_async``, ``map_async`` and ``starmap_async``."""

    def __init__(self, func_ref, mode, items, chunksize, callback, error_callback,
                 single=False) -> None:
        n = -(-len(items) // chunksize)
        super().__init__(func_ref, mode, ((i, items[i * chunksize:(i + 1) * chunksize])
                                          for i in range(n)))
        self._parts: list = [None] * n
        self._left = n
        self._single = single
        self._callbacks = (callback, error_callback)
        self._event = threading.Event()
        self._success, self._value = False, None

    def _all_submitted(self) -> None:
        if self._left == 0 and not self._event.is_set():  # (no chunks at all: map of [])
            self._finish()

    def deliver(self, index: int, results: list, failed: int) -> None:
        self._parts[index] = (results, failed)
        self._left -= 1
        if self._left == 0:
            self._finish()

    def _finish(self) -> None:
        # the first failing item in input order: what list(map(func, items)) raises
        error = next((next(r.exc for r in res if type(r) is _Failed)
                      for res, failed in self._parts if failed), None)
        if error is None:
            value = list(itertools.chain.from_iterable(r for r, _f in self._parts))
            self._success, self._value = True, value[0] if self._single else value
        else:
            self._value = error
        self._parts = []
        callback = self._callbacks[0 if self._success else 1]
        try:  # (before the result is ready, as in the stdlib)
            if callback is not None:
                callback(self._value)
        except Exception:  # noqa: BLE001 - printed, as a thread's error: the pool goes on
            print("Exception in a callback of mpray.util.multiprocessing.Pool:",
                  file=sys.stderr)
            traceback.print_exc()
        self._event.set()

    def abort(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._success, self._value = False, error
            self._event.set()

    def ready(self) -> bool:
        """Whether the call has completed."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call completed without raising; ``ValueError`` if not ready."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is available or ``timeout`` seconds have passed."""
        self._event.wait(timeout)

    def get(self, timeout: float | None = None):
        """The result, or the call's exception raised; ``multiprocessing.TimeoutError``
        if it is not ready within ``timeout`` seconds."""
        if not self._event.wait(timeout):
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value


class _IMapJob(_Job):
    """An ``imap``/``imap_unordered`` call: chunks read lazily, results kept for the
    consumer by index (in order) or in a queue (as they finish)."""

    def __init__(self, func_ref, iterable, chunksize, ordered, ahead, wake) -> None:
        it = iter(iterable)
        chunks = iter(lambda: list(itertools.islice(it, chunksize)), [])
        super().__init__(func_ref, MAP, enumerate(chunks))
        self._ordered, self._ahead, self._wake = ordered, ahead, wake
        self._cond = threading.Condition()
        self._done = {} if ordered else collections.deque()
        self._taken = 0  # chunks the consumer has taken
        self._total = None  # chunks, once the iterable is exhausted
        self._stalled = False  # the handler waits for the consumer (to be woken)
        self._items: collections.deque = collections.deque()
        self._error = None  # terminate(): raised once what was delivered is taken

    def may_submit(self) -> bool:
        with self._cond:
            self._stalled = self.submitted - self._taken >= self._ahead
            return not (self.exhausted or self._stalled)

    def _all_submitted(self) -> None:
        with self._cond:
            self._total = self.submitted
            self._cond.notify_all()

    def source_failed(self, error: BaseException) -> None:
        """The iterable raised: the error takes the next item's place and ends it."""
        self.exhausted = True
        index = self.submitted
        with self._cond:
            self._total = self.submitted = index + 1
        self.deliver(index, [_Failed(error)], 1)

    def deliver(self, index: int, results: list, failed: int) -> None:
        with self._cond:
            if self._ordered:
                self._done[index] = results
            else:
                self._done.append(results)
            self._cond.notify_all()

    def abort(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def _take(self, deadline: float | None) -> bool:
        """Move the next delivered chunk's items to ``_items``; False at the end."""
        while not (self._taken in self._done if self._ordered else self._done):
            if self._total is not None and self._taken >= self._total:
                return False
            if self._error is not None:
                raise self._error
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError
            self._cond.wait(left)
        self._items.extend(self._done.pop(self._taken) if self._ordered
                           else self._done.popleft())
        self._taken += 1
        if self._stalled:
            self._stalled = False
            self._wake()
        return True

    def next(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if not self._take(deadline):
                    raise StopIteration
            item = self._items.popleft()
        if type(item) is _Failed:
            raise item.exc
        return item


class IMapIterator:
    """What ``imap`` (results in order) and ``imap_unordered`` (as they finish) return.
    Dropping it stops the reading of the iterable (the handler holds the job only)."""

    def __init__(self, job: _IMapJob, drop) -> None:
        self._job, self._drop = job, drop

    def next(self, timeout: float | None = None):
        """The next result; ``multiprocessing.TimeoutError`` after ``timeout`` seconds."""
        return self._job.next(timeout)

    __next__ = next

    def __iter__(self) -> "IMapIterator":
        return self

    def __del__(self) -> None:
        self._drop(self._job)


# ---------------------------------------------------------------------- the handler

"""``mpray.util.ActorPool``: spread work over a fixed set of actors (Ray's semantics).

Pure Python over ``wait``/``get``: each actor runs one submitted item at a time; items
beyond the number of idle actors wait here and are sent as actors come free.  Results
come back in submission order (``map``, ``get_next``) or as they finish
(``map_unordered``, ``get_next_unordered``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from .. import api


def _key(future: Any) -> Any:
    return tuple(future) if isinstance(future, list) else future


def _first(future: Any) -> Any:
    return future[0] if isinstance(future, list) else future


class ActorPool:
    def __init__(self, actors: list) -> None:
        self._idle_actors = list(actors)
        self._future_to_actor: dict = {}  # future -> (submission index, actor)
        self._index_to_future: dict[int, Any] = {}
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending_submits: list[tuple[Callable, Any]] = []

    # ------------------------------------------------------------------ bulk
    def map(self, fn: Callable, values: Iterable) -> Iterator:
        """Apply ``fn(actor, value)`` to every value; yields results in order."""
        return self._map(fn, values, self.get_next)

    def map_unordered(self, fn: Callable, values: Iterable) -> Iterator:
        """Like ``map``, yielding results as they finish."""
        return self._map(fn, values, self.get_next_unordered)

    def _map(self, fn: Callable, values: Iterable, next_result: Callable) -> Iterator:
        self._drain_previous()
        for v in values:
            self.submit(fn, v)

        def results():
            while self.has_next():
                yield next_result()

        return results()

    def _drain_previous(self) -> None:
        # results of earlier submissions nobody fetched are dropped, as in Ray
        while self.has_next():
            try:
                self.get_next(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass

    # ------------------------------------------------------------------ one by one
    def submit(self, fn: Callable, value: Any) -> None:
        """Run ``fn(actor, value)`` (which returns a ref) on an idle actor, or queue it."""
        if self._idle_actors:
            actor = self._idle_actors.pop()
            future = fn(actor, value)
            self._future_to_actor[_key(future)] = (self._next_task_index, actor)
            self._index_to_future[self._next_task_index] = future
            self._next_task_index += 1
        else:
            self._pending_submits.append((fn, value))

    def has_next(self) -> bool:
        return bool(self._future_to_actor)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        future = self._index_to_future[self._next_return_index]
        timed_out = False
        if timeout is not None:
            ready, _ = api.wait([_first(future)], timeout=timeout)
            if not ready:
                if not ignore_if_timedout:
                    raise TimeoutError("Timed out waiting for result")
                timed_out = True
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _i, actor = self._future_to_actor.pop(_key(future))
        self._return_actor(actor)
        if timed_out:
            raise TimeoutError(f"Timed out waiting for result; the task {future} was ignored")
        return api.get(future)

    def get_next_unordered(self, timeout: float | None = None,
                           ignore_if_timedout: bool = False) -> Any:
        """Whichever pending result finishes first."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        firsts = {_first(f) if isinstance(f, tuple) else f: f for f in self._future_to_actor}
        ready, _ = api.wait(list(firsts), num_returns=1, timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                raise TimeoutError("Timed out waiting for result; nothing was ignored")
            raise TimeoutError("Timed out waiting for result")
        key = firsts[ready[0]]
        index, actor = self._future_to_actor.pop(key)
        self._return_actor(actor)
        future = self._index_to_future.pop(index)
        self._next_return_index = max(self._next_return_index, index + 1)
        return api.get(future)

    # ------------------------------------------------------------------ actors
    def _return_actor(self, actor: Any) -> None:
        self._idle_actors.append(actor)
        if self._pending_submits:
            self.submit(*self._pending_submits.pop(0))

    def has_free(self) -> bool:
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self) -> Any:
        """Take an idle actor out of the pool (None when none is idle)."""
        if self.has_free():
            return self._idle_actors.pop()
        return None

    def push(self, actor: Any) -> None:
        """Add an actor to the pool (it must not belong to it already)."""
        busy = [a for _i, a in self._future_to_actor.values()]
        if actor in self._idle_actors or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)

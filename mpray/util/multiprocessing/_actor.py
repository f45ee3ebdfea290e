"""The pool's processes (``PoolActor``, an mpray actor each) and what runs in them: the
chunk loop that keeps each item's exception as its result (``_Failed``), and the
rebinding that lets the script's functions share the globals their initializer set.
``pool.py`` is the driver's side."""

from __future__ import annotations

import os
import sys
import traceback
import types
from multiprocessing.pool import RemoteTraceback

import cloudpickle

from ...runtime_context import get_runtime_context

MAP, STAR, APPLY = 0, 1, 2  # how an actor calls func on an item: f(x), f(*x), f(*a, **k)


class _Failed:
    """An item whose call raised: the exception, with the worker's traceback as its
    ``__cause__`` (``multiprocessing.pool.RemoteTraceback``, as the stdlib's pool)."""

    __slots__ = ("exc", "tb")

    def __init__(self, error: BaseException, tb: str | None = None) -> None:
        if tb is not None:
            error.__cause__ = RemoteTraceback(tb)
        self.exc, self.tb = error, tb

    def __reduce__(self):
        return _Failed, (self.exc, self.tb)


def _capture(error: Exception) -> _Failed:
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    try:  # (on the error path only: an exception that cannot travel must not sink its chunk)
        cloudpickle.dumps(error)
    except Exception as why:  # noqa: BLE001 - whatever pickling raised
        error = RuntimeError(f"{type(error).__name__} raised in the pool cannot be "
                             f"pickled ({why!r}); its traceback follows")
    return _Failed(error, '\n"""\n%s"""' % tb)


def _run_items(call, chunk) -> tuple[list, int]:
    out, failed = [], 0
    append = out.append
    for item in chunk:
        try:
            append(call(item))
        except Exception as e:  # noqa: BLE001 - the item's result
            append(_capture(e))
            failed += 1
    return out, failed


def _in_main(func):
    """A function of the script (``__main__``), which cloudpickle sends by value with a
    namespace of its own, rebound (with the script's functions it uses) to this process's
    ``__main__``: so the globals an initializer sets are those the pool's functions read,
    as in the stdlib's workers.  Names new here are added, values already here (what the
    initializer set) are kept, functions are the newest definitions."""
    if type(func) is not types.FunctionType:  # (a bound method, a partial, a builtin)
        return func
    own, main = func.__globals__, sys.modules["__main__"].__dict__
    if own is main or own.get("__name__") != "__main__":
        return func  # (a function of a module: sent by reference)
    for name, value in own.items():
        if isinstance(value, types.FunctionType) and value.__globals__ is own:
            main[name] = _rebound(value, main)
        elif name not in main:
            main[name] = value
    return _rebound(func, main)


def _rebound(f, namespace: dict):
    new = types.FunctionType(f.__code__, namespace, f.__name__, f.__defaults__, f.__closure__)
    new.__kwdefaults__, new.__qualname__, new.__doc__ = f.__kwdefaults__, f.__qualname__, f.__doc__
    new.__dict__.update(f.__dict__)
    return new


class PoolActor:
    """One process of the pool: runs the initializer once, then chunks of items."""

    def __init__(self, init_blob: bytes) -> None:
        # An initializer's error is kept and raised by every call (ready() first: Pool()
        # raises it with its own type) rather than failing the constructor, which would
        # only tell that the actor died.
        self.init_error = None
        self._blob = self._func = None
        try:
            initializer, initargs = cloudpickle.loads(init_blob)
            if initializer is not None:
                _in_main(initializer)(*initargs)
        except Exception as e:  # noqa: BLE001 - raised by ready() and run()
            self.init_error = e

    def ready(self) -> tuple[str, int]:
        if self.init_error is not None:
            raise self.init_error
        return get_runtime_context().get_node_id(), os.getpid()

    def run(self, blob: bytes, chunk, mode: int) -> tuple[list, int]:
        if self.init_error is not None:
            raise self.init_error
        if blob != self._blob:  # (kept: a call's chunks come one after another)
            self._func, self._blob = _in_main(cloudpickle.loads(blob)), blob
        func = self._func
        if mode == MAP:
            return _run_items(func, chunk)
        if mode == STAR:
            return _run_items(lambda a: func(*a), chunk)
        return _run_items(lambda ak: func(*ak[0], **ak[1]), chunk)

"""What a worker must know about a function beyond its code, registered with it: its
runtime_env, for a generator function how its values are returned, how many calls a
worker may run (``max_calls``), and the resources its calls ask for.

Data flow::

    f.options(runtime_env=…, num_returns="streaming"|"dynamic", …)
        ─▶ remote_function: one registration per (function, these options): the
           function's blob inside an envelope (its own id; plain calls keep theirs)
        ─▶ worker: ``opened`` loads the function inside its runtime_env (its modules may
           come from py_modules) as a ``Registered``: the worker enters the environment
           before it reads a call's arguments, and streams or collects a generator's
           values as ``gen`` says (worker/generators.py)
"""

from __future__ import annotations

import pickle

from . import _global, runtime_env

ENVELOPE = "mpray-registered"


def envelope(blob: bytes, opts: dict) -> bytes:
    """A function's registration blob with these options around it."""
    return pickle.dumps((ENVELOPE, opts, blob), protocol=5)


def key(opts: dict | None) -> str | None:
    """A hashable key of a registration's options (None: a plain registration)."""
    return None if not opts else repr(sorted((k, repr(v)) for k, v in opts.items()))


class Registered:
    """A function registered with options (``opts``: ``runtime_env``, ``gen``,
    ``backpressure``, ``max_calls``, ``resources``)."""

    __slots__ = ("fn", "env", "gen", "backpressure", "max_calls", "calls", "resources",
                 "pg", "_saved", "__name__")

    def __init__(self, fn, opts: dict) -> None:
        self.fn = fn
        self.env = opts.get("runtime_env")
        self.gen = opts.get("gen")  # None, "streaming" or "dynamic"
        self.backpressure = opts.get("backpressure") or 0
        self.max_calls = opts.get("max_calls") or 0  # then this worker exits
        self.calls = 0
        self.resources = opts.get("resources")  # what its calls ask for (not 1 CPU)
        self.pg = opts.get("pg")  # the placement group strategy it runs in
        self._saved = None
        self.__name__ = getattr(fn, "__name__", "function")

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def enter(self) -> None:
        """Before a call reads its arguments: its runtime_env, until ``exit``."""
        if self.env:
            self._saved = runtime_env.save(self.env)
            runtime_env.apply(self.env)
        if self.pg is not None:
            in_group(self.pg)

    def exit(self) -> bool:
        """After a call: its runtime_env undone; True when this worker has run the
        function ``max_calls`` times and must exit."""
        if self._saved is not None:
            runtime_env.restore(self._saved)
            self._saved = None
        if self.pg is not None:
            in_group(None)
        self.calls += 1
        return 0 < self.max_calls <= self.calls


def in_group(strategy) -> None:
    """The running task's (or actor's, for its life) placement group; its child tasks
    and actors go there too when it captures them (as Ray's
    ``placement_group_capture_child_tasks``: into any bundle of the group)."""
    _global.current_pg = strategy
    capture = strategy is not None and strategy.placement_group_capture_child_tasks
    _global.captured = (type(strategy)(strategy.placement_group, -1, True)
                        if capture else None)


def opened(obj, load):
    """A loaded registration: an envelope's function (``load`` turns the inner blob into
    the function), unpickled inside its runtime_env, as a ``Registered``; None for a
    plain registration."""
    if type(obj) is tuple and len(obj) == 3 and type(obj[0]) is str and obj[0] == ENVELOPE:
        opts = obj[1]
        with runtime_env.applied(opts.get("runtime_env")):
            return Registered(load(obj[2]), opts)
    return None

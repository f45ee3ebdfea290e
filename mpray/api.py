"""The public API: remote, get/put/wait/cancel, actors and cluster queries.

Data flow::

    @remote ─▶ RemoteFunction / ActorClass (.remote() submits through the process's
    client); get/put/wait/cancel ─▶ the client (driver_client or worker_client)
    init/shutdown ─▶ session.py (re-exported here)

Nothing here is on the per-task hot path except thin argument checks.
"""

from __future__ import annotations

import inspect
import operator
import socket
import time
from typing import Any, Sequence

from . import _global
from . import protocol as P
from .generator import ObjectRefGenerator
from .control.recorder import CANCEL, NOTE, REC
from .object_ref import ObjectRef
from .remote_function import RemoteFunction
from .session import RayContext, auto_init, init, is_initialized, shutdown

_id_of = operator.attrgetter("id")

__all__ = ["RayContext", "available_resources", "cancel", "cluster_resources", "get",
           "get_actor", "init", "is_initialized", "kill", "method", "nodes", "put",
           "remote", "shutdown", "timeline", "wait"]


# ---------------------------------------------------------------------- remote
def remote(*args: Any, **kwargs: Any):
    """``@remote`` or ``@remote(num_cpus=…, …)`` on a function or a class (an actor)."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return _make_remote(args[0], {})
    if args or not kwargs:  # (also ``@remote()``: Ray refuses empty parentheses too)
        raise TypeError(
            "The @mpray.remote decorator must be applied either with no arguments and no "
            "parentheses, for example '@mpray.remote', or it must be applied using some of "
            "the arguments in the list ['num_returns', 'num_cpus', 'num_gpus', 'memory', "
            "'resources', 'max_retries', ...], for example '@mpray.remote(num_returns=2, "
            "resources={\"CustomResource\": 1})'."
        )
    return lambda fn: _make_remote(fn, kwargs)


def _make_remote(obj: Any, options: dict):
    if inspect.isclass(obj):
        from .actor import make_actor_class

        return make_actor_class(obj, options)
    if not callable(obj):
        raise TypeError(f"@mpray.remote needs a function or a class, not {type(obj).__name__}")
    if inspect.iscoroutinefunction(obj):  # (as Ray: its result would be a coroutine)
        raise ValueError(
            "'async def' should not be used for remote tasks. You can wrap the async "
            "function with `asyncio.run(f())`, or make it a method of an actor (async "
            "actors run async def methods on an event loop).")
    return RemoteFunction(obj, options)


# ---------------------------------------------------------------------- objects
def _check_timeout(timeout: float | None) -> None:
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
        if timeout < 0:
            raise ValueError(f"timeout must be non-negative, not {timeout!r}")


def get(object_refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
    """The value of ``object_refs`` (one ref), or the list of values (a list of refs, in
    its order), waiting for them.  A task's error is raised as a ``RayTaskError`` that
    is also an instance of the original exception's class; with several refs the first
    error raises as soon as it is known, while the others may still run.  ``timeout``
    (seconds) raises ``GetTimeoutError``.  Large numpy arrays come back as read-only
    zero-copy views of the object store."""
    if timeout is not None:
        _check_timeout(timeout)
    client = _global.client
    if client is None:
        client = _global.client_or_raise()
    if type(object_refs) is ObjectRef:
        return client.get_one(object_refs.id, timeout)
    if isinstance(object_refs, (list, tuple)):
        for r in object_refs:
            if type(r) is not ObjectRef:
                raise TypeError(
                    f"get() expects an ObjectRef or a list of ObjectRefs; the list holds a "
                    f"{type(r).__name__}"
                )
        return client.get([r.id for r in object_refs], timeout)
    raise ValueError(
        f"'object_refs' must either be an ObjectRef or a list of ObjectRefs, "
        f"not {type(object_refs).__name__}"
    )


def put(value: Any, *, _owner: Any = None) -> ObjectRef:
    """Store ``value`` in the object store; returns its ``ObjectRef``.  Small values stay
    in this process until a ref leaves it; large ones are written once to shared memory
    and read zero-copy by every task and actor on this host."""
    if _owner is not None:
        raise NotImplementedError("put(_owner=...) is not supported by mpray: the process "
                                  "that puts a value owns it")
    if type(value) is ObjectRef:
        raise TypeError(
            "Calling 'put' on an ObjectRef is not allowed. If you really want to do this, "
            "you can wrap the ObjectRef in a list and call 'put' on it."
        )
    client = _global.client
    if client is None:
        client = auto_init()
    return ObjectRef(client.put(value), owned=True)


def wait(object_refs: Sequence[ObjectRef], *, num_returns: int = 1,
         timeout: float | None = None, fetch_local: bool = True
         ) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Wait until ``num_returns`` of ``object_refs`` are ready or ``timeout`` seconds
    pass; returns ``(ready, not_ready)``, both in the input's order (``ready`` holds at
    most ``num_returns``).  ``wait([])`` is ``([], [])``."""
    if type(object_refs) is ObjectRef or not isinstance(object_refs, (list, tuple)):
        raise TypeError(f"wait() expects a list of ObjectRefs, not {type(object_refs).__name__}")
    # (the checks are passes in C: a loop of waits over a long list stays cheap)
    if object_refs and set(map(type, object_refs)) != {ObjectRef}:
        bad = next(r for r in object_refs if type(r) is not ObjectRef)
        raise TypeError(f"wait() expects a list of ObjectRefs; it holds a {type(bad).__name__}")
    if timeout is not None:
        _check_timeout(timeout)
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns <= 0:
        raise ValueError(f"num_returns must be a positive integer, not {num_returns!r}")
    if not object_refs:
        return [], []  # (as Ray: nothing to wait for)
    ids = list(map(_id_of, object_refs))
    if len(set(ids)) != len(ids):
        raise ValueError("wait() requires a list of unique ObjectRefs")
    if num_returns > len(object_refs):
        raise ValueError(
            f"num_returns ({num_returns}) cannot be greater than the number of ObjectRefs "
            f"({len(object_refs)})"
        )
    client = _global.client_or_raise()
    done = client.wait(ids, num_returns, timeout)  # (in list order)
    if len(done) == 1:  # (the usual loop of waits: slices, in C)
        i = ids.index(done[0])
        return [object_refs[i]], list(object_refs[:i]) + list(object_refs[i + 1:])
    done_set = set(done)
    ready, not_ready = [], []
    for r, oid in zip(object_refs, ids):
        (ready if oid in done_set else not_ready).append(r)
    return ready, not_ready


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task (or actor call) that makes ``ref``: a queued one is dropped, a
    running one is interrupted (``TaskCancelledError`` at its ``get``); ``force=True``
    kills the worker running a task, and raises ``ValueError`` for an actor call that
    has not ended (as in Ray: use ``kill`` on the actor).  ``recursive`` cancels the
    tasks it submitted."""
    if type(ref) is ObjectRefGenerator:  # (a generator task: cancel the task)
        ref = ref.completed()
    if type(ref) is not ObjectRef:
        raise TypeError(f"cancel() expects an ObjectRef, not {type(ref).__name__}")
    tid = ref._tid
    if tid is None:
        raise TypeError(f"{ref} was created by put(); only task results can be cancelled")
    client = _global.client_or_raise()
    if tid < 0:  # an actor call's ref (whichever process made the call: see ObjectRef)
        if force:
            raise ValueError("force=True is not supported for actor tasks; use "
                             "mpray.kill(actor) to end the actor")
        tid = ~tid
    if REC.on:
        NOTE((CANCEL, tid, time.monotonic()))
    client.cancel(tid, bool(force), bool(recursive))


# ---------------------------------------------------------------------- cluster
def _info() -> dict:
    if _global.client is None:
        raise RuntimeError("mpray is not initialized: call mpray.init() first")
    return _global.node_info


def cluster_resources() -> dict[str, float]:
    """Every resource of the session (all ranks' nodes under MPI): ``{"CPU": 8.0, ...}``."""
    info = _info()
    if _global.cluster:  # under MPI: every rank's node
        total: dict[str, float] = {}
        for _nid, res, _host in _global.cluster:
            for k, v in res.items():
                total[k] = total.get(k, 0.0) + v
        return total
    return dict(info["resources"])


def available_resources() -> dict[str, float]:
    """The resources not held by running tasks and actors right now (under MPI: every
    rank's node, summed, as ``cluster_resources`` sums their totals)."""
    _info()
    reply = _global.client.request(lambda req: P.Query(req, "available"))
    return {k: v for k, v in reply.data.items() if v > 0}


def nodes() -> list[dict]:
    """One dict per node (per MPI rank): ``NodeID``, ``Alive``, ``Resources``, address."""
    info = _info()
    ranks = _global.cluster or [(info["node_id"], info["resources"], socket.gethostname())]
    return [{
        "NodeID": nid, "Alive": True, "NodeManagerAddress": host,
        "NodeManagerHostname": host, "NodeName": host, "Resources": dict(res),
        "alive": True, "MPIRank": rank,
        "ObjectStoreSocketName": info["session_dir"] if rank == info.get("rank", 0) else "",
        "RayletSocketName": info["session_dir"] if rank == info.get("rank", 0) else "",
    } for rank, (nid, res, host) in enumerate(ranks)]


def _node_stats() -> dict:
    """Internal counters of the node (tests and benchmarks use them)."""
    _info()
    return _global.client.request(lambda req: P.Query(req, "stats")).data


def timeline(filename: str | None = None) -> list | None:
    """Ray's ``timeline``: the session's task executions as a Chrome trace (open it in
    Perfetto or chrome://tracing): one process row per node (rank), one thread row per
    worker.  Written to ``filename`` (then None is returned), else returned as a list.
    Reads this program's session, or, when none runs, the newest one kept."""
    from .control import timeline as T
    from .control.reader import open_reader

    events = T.trace(open_reader())
    if filename is None:
        return events
    T.write(events, filename)
    return None


def kill(actor: Any, *, no_restart: bool = True) -> None:
    """End an actor's process now; its pending calls fail with ``ActorDiedError``.
    ``no_restart=False`` lets it restart within its ``max_restarts``."""
    from .actor import kill_actor

    kill_actor(actor, no_restart=no_restart)


def get_actor(name: str, namespace: str | None = None) -> Any:
    """The handle of the named actor (in ``namespace``, else the job's); ``ValueError``
    when there is none."""
    from .actor import lookup_actor

    return lookup_actor(name, namespace)


def method(*args: Any, **kwargs: Any):
    """``@mpray.method(num_returns=...)`` on an actor method: its default call options."""
    from .actor import method as _method

    return _method(*args, **kwargs)

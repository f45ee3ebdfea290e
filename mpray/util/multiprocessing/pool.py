"""``mpray.util.multiprocessing.Pool``: the standard library's ``multiprocessing.Pool`` on
mpray actors (as ``ray.util.multiprocessing.Pool`` is on Ray's), so code written for the
stdlib's pool moves by changing an import, and spans the ranks under mpiexec/srun.

Data flow::

 caller thread               handler thread (one per pool)             PoolActor processes
 map/imap/apply ─▶ job ─▶ inbox ─▶ oldest job's next chunk ─▶ actor ──run(func, chunk)──▶ func on
   ▲  (func cloudpickled,   ▲      with the fewest chunks out (≤ DEPTH)                  each item
   │   put once per call)   │                                                                │
   │                        └── ("done", …) ◀── the chunk ref's future (mpray's pump) ◀──────┘
   └── AsyncResult.get / IMapIterator ◀── job.deliver(chunk): callbacks, event, iterator woken

* One ``PoolActor`` per process (``_actor.py``: what runs there) runs ``initializer(
  *initargs)`` once, then chunks (lists of items).  It returns ``(results, failed)``
  with an item's exception in its place (``_Failed``): ``imap`` raises at the failing
  item, ``map`` the first failing item's exception, with the remote traceback as its
  ``__cause__`` (as the stdlib's).
* Only the handler thread submits to and kills actors.  Results reach it through the
  futures of the chunk refs, so it sleeps on one queue for new work and results alike.
* ``imap``/``imap_unordered`` read their iterable lazily: at most ``AHEAD`` chunks per
  process beyond what the consumer has taken (an endless generator is fine).
* ``maxtasksperchild``: an actor that got that many chunks gets no more; once the last
  is back it is killed and a fresh one (initializer run again) takes its place.
"""

from __future__ import annotations

import collections
import functools
import queue
import threading
import time
import warnings
from multiprocessing import TimeoutError

import cloudpickle

from ... import api
from ... import exceptions as exc
from ...runtime_context import get_runtime_context
from ...session import auto_init, is_initialized
from ..scheduling_strategies import NodeAffinitySchedulingStrategy
from ._actor import APPLY, MAP, STAR, PoolActor, _Failed
from .jobs import AsyncResult, IMapIterator, _IMapJob, _Job

__all__ = ["Pool", "AsyncResult", "IMapIterator", "TimeoutError"]

# Chunks out per actor: one running and one queued behind it, so that an actor does not
# idle through the round trip to the handler between two chunks.
DEPTH = 2
# imap: chunks per process handed out beyond what the consumer has taken (bounds the
# memory results take and how far an endless iterable is read ahead).
AHEAD = 4
# How long join() waits for the killed processes to be gone.
EXIT_WAIT_S = 5.0

_PoolActor = api.remote(PoolActor)


class _Slot:
    """One process of the pool: its actor, and what the handler counts of it."""

    __slots__ = ("options", "actor", "inflight", "count", "pid_ref")

    def __init__(self, options: dict) -> None:
        self.options = options  # .options() of its actors (placement, ray_remote_args)
        self.actor = self.pid_ref = None  # (pid_ref: the actor's ready(), (node, pid))
        self.inflight = 0  # chunks out
        self.count = 0  # chunks given to this actor (maxtasksperchild)


class _Handler:
    """The thread that owns the actors: hands chunks out, takes results in, replaces
    actors.  It holds no reference to the Pool, so that an unclosed pool is collected
    (and its ``__del__`` ends this thread)."""

    def __init__(self, options: list[dict], init_blob: bytes, maxtasks: int | None) -> None:
        self.init_blob, self.maxtasks = init_blob, maxtasks
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.jobs: collections.deque = collections.deque()  # with chunks to hand out
        self.outstanding: set = set()  # jobs not done (chunks to hand out, or out)
        self.closing = False
        self.slots = [_Slot(o) for o in options]
        # killed actors' ready() refs, for join() to see their processes gone; bounded
        # (so that maxtasksperchild=1 does not grow it): the old ones have ended long ago
        self.retired: collections.deque = collections.deque(maxlen=4 * len(options) + 16)
        self.node_id = get_runtime_context().get_node_id()
        self.thread = threading.Thread(target=self._serve, name="mpray-pool", daemon=True)

    def start(self) -> None:
        """Start the actors and wait until each ran the initializer (whose error is
        raised here, with its own type); then the thread."""
        for slot in self.slots:
            self._new_actor(slot)
        try:
            api.get([slot.pid_ref for slot in self.slots])
        except BaseException:
            self._kill_all()
            self._wait_exited()
            raise
        self.thread.start()

    def post(self, *msg) -> None:
        """From the callers: ("job", job), ("wake",), ("drop", job), ("close",)."""
        self.inbox.put(msg)

    def terminate(self, wait: bool = True) -> None:
        self.inbox.put(("terminate",))
        if wait and self.thread is not threading.current_thread():  # (not from a callback)
            self.thread.join()

    def join(self) -> None:
        self.thread.join()
        self._wait_exited()

    # ------------------------------------------------------------------ the thread
    def _serve(self) -> None:
        running = True
        try:
            while running:
                running = self._handle(self.inbox.get())
                while running:  # take in all that arrived before refilling the actors
                    try:
                        running = self._handle(self.inbox.get_nowait())
                    except queue.Empty:
                        break
                if running:
                    self._fill()
                    running = not (self.closing and not self.outstanding)
        finally:
            for job in self.outstanding:
                job.abort(RuntimeError("the pool was terminated before the result was ready"))
            self._kill_all()

    def _handle(self, msg: tuple) -> bool:
        kind = msg[0]
        if kind == "done":
            self._done(*msg[1:])
        elif kind == "job":
            self.jobs.append(msg[1])
            self.outstanding.add(msg[1])
        elif kind == "drop":  # (its iterator is gone: read no more of its iterable)
            msg[1].exhausted = True
            if msg[1] in self.jobs:
                self.jobs.remove(msg[1])
            self._settle(msg[1])
        elif kind == "close":
            self.closing = True
        return kind != "terminate"  # ("wake": only refill)

    def _fill(self) -> None:
        """Hand chunks out, oldest job first, while an actor has room."""
        for job in list(self.jobs):
            while True:
                slot = self._free_slot()
                if slot is None:
                    return
                if not job.may_submit():
                    break
                try:
                    chunk = job.next_chunk()
                except Exception as e:  # noqa: BLE001 - the user's iterable raised
                    job.source_failed(e)
                    break
                if chunk is None:
                    break
                self._submit(slot, job, *chunk)
            if job.exhausted:
                self.jobs.remove(job)
                self._settle(job)

    def _free_slot(self) -> _Slot | None:
        best = None
        for slot in self.slots:
            if slot.inflight < DEPTH and (self.maxtasks is None or slot.count < self.maxtasks):
                if slot.inflight == 0:
                    return slot
                if best is None or slot.inflight < best.inflight:
                    best = slot
        return best

    def _submit(self, slot: _Slot, job: _Job, index: int, chunk) -> None:
        slot.inflight += 1
        slot.count += 1
        job.inflight += 1
        job.submitted += 1
        msg, put = ("done", slot, slot.actor, job, index, len(chunk)), self.inbox.put
        try:
            fut = slot.actor.run.remote(job.func_ref, chunk, job.mode).future()
        except Exception as e:  # noqa: BLE001 - e.g. an item that cannot be pickled
            self._done(*msg[1:], e)
            return
        # (runs in whichever thread takes the result in: it only posts the future)
        fut.add_done_callback(lambda f: put((*msg, f)))

    def _done(self, slot, actor, job, index, size, outcome) -> None:
        slot.inflight -= 1
        job.inflight -= 1
        error = outcome if isinstance(outcome, BaseException) else outcome.exception()
        if error is None:
            results, failed = outcome.result()
        else:  # the whole chunk failed: each of its items raises the chunk's error
            results, failed = [_Failed(error)] * size, size
            if isinstance(error, exc.RayActorError) and slot.actor is actor:
                self._replace(slot)  # (its process died: the pool keeps its size)
        job.deliver(index, results, failed)
        self._settle(job)
        if self.maxtasks and slot.count >= self.maxtasks and slot.inflight == 0:
            self._replace(slot)

    def _settle(self, job: _Job) -> None:
        if job.exhausted and job.inflight == 0:
            self.outstanding.discard(job)

    # ------------------------------------------------------------------ actors
    def _new_actor(self, slot: _Slot) -> None:
        cls = _PoolActor.options(**slot.options) if slot.options else _PoolActor
        slot.actor = cls.remote(self.init_blob)
        slot.count = 0
        slot.pid_ref = slot.actor.ready.remote()

    def _replace(self, slot: _Slot) -> None:
        self._retire(slot)
        self._new_actor(slot)

    def _retire(self, slot: _Slot) -> None:
        if slot.actor is not None:
            try:
                api.kill(slot.actor)
            except Exception:  # noqa: BLE001 - mpray was shut down: its processes are gone
                pass
            self.retired.append(slot.pid_ref)
            slot.actor = slot.pid_ref = None

    def _kill_all(self) -> None:
        for slot in self.slots:
            self._retire(slot)

    def _wait_exited(self) -> None:
        """Wait (up to ``EXIT_WAIT_S``) until the killed actors' processes on this node
        have ended, so that join() returns with them gone, as the stdlib's does."""
        pids = []
        for ref in self.retired:
            try:  # (not ready, or failed: killed before it started, or mpray shut down)
                node, pid = api.get(ref, timeout=0)
                pids += [pid] if node == self.node_id else []
            except Exception:  # noqa: BLE001
                pass
        deadline = time.monotonic() + EXIT_WAIT_S
        while any(map(_running, pids)) and time.monotonic() < deadline:
            time.sleep(0.01)


def _running(pid: int) -> bool:
    try:  # (a zombie has ended: its parent, the node, reaps it)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _placements(processes: int) -> list[dict]:
    """The actors' ``.options()``: under MPI they spread over the ranks in proportion to
    their CPUs, interleaved (so that a few actors still reach every rank)."""
    nodes = [n for n in api.nodes() if n["Alive"]]
    if len(nodes) <= 1:
        return [{} for _ in range(processes)]
    cpus = [max(1, int(n["Resources"].get("CPU", 1))) for n in nodes]
    seats = [n["NodeID"] for r in range(max(cpus)) for n, c in zip(nodes, cpus) if r < c]
    return [{"scheduling_strategy": NodeAffinitySchedulingStrategy(seats[i % len(seats)],
                                                                   soft=True)}
            for i in range(processes)]


# ---------------------------------------------------------------------- the pool
def _check_args(processes, initializer, maxtasksperchild, context, ray_address) -> None:
    if processes is not None and (not isinstance(processes, int) or processes < 1):
        raise ValueError("Number of processes must be at least 1")
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")
    if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int)
                                         or maxtasksperchild < 1):
        raise ValueError("maxtasksperchild must be a positive int or None")
    if ray_address not in (None, "auto", "local"):
        raise ValueError(f"Pool(ray_address={ray_address!r}): mpray has no cluster to "
                         "connect to; use None, 'auto' or 'local' (under mpiexec/srun the "
                         "pool spans the job's ranks)")
    if context is not None:
        warnings.warn("Pool(context=...) is ignored: mpray starts the pool's processes "
                      "itself (as actors)", UserWarning, stacklevel=3)


def _check_chunksize(chunksize) -> None:
    if not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")


def _dumps(obj) -> bytes:
    # cloudpickle, as Ray's pool: a function of the script (__main__) travels by value,
    # so processes that never ran its definition (forked before it, other ranks) have it
    return cloudpickle.dumps(obj)


class Pool:
    """A pool of worker processes (mpray actors) with ``multiprocessing.Pool``'s API.

    ``processes`` defaults to the session's CPUs (``mpray.cluster_resources()["CPU"]``,
    all ranks' under MPI); mpray is initialised if it is not yet.  ``initializer(
    *initargs)`` runs once in each process; ``maxtasksperchild`` replaces a process
    after that many chunks.  ``context`` is ignored with a warning (mpray makes the
    processes); ``ray_address`` may be None, ``"auto"`` or ``"local"``, else ValueError.
    ``ray_remote_args`` (as in Ray's pool) are ``.options()`` of the actors.
    """

    _state = "INIT"  # (class defaults, for __del__ of a pool whose __init__ raised)
    _handler: _Handler | None = None

    def __init__(self, processes: int | None = None, initializer=None, initargs=(),
                 maxtasksperchild: int | None = None, context=None,
                 ray_address: str | None = None, ray_remote_args: dict | None = None):
        _check_args(processes, initializer, maxtasksperchild, context, ray_address)
        if not is_initialized():
            auto_init()
        if processes is None:
            processes = max(1, int(api.cluster_resources().get("CPU", 1)))
        self._processes = processes
        options = [{**o, **(ray_remote_args or {})} for o in _placements(processes)]
        handler = _Handler(options, _dumps((initializer, tuple(initargs))), maxtasksperchild)
        handler.start()
        self._handler, self._state = handler, "RUN"

    def _check_running(self) -> None:
        if self._state != "RUN":
            raise ValueError("Pool not running")

    def _map_async(self, func, iterable, mode, chunksize, callback, error_callback):
        self._check_running()
        items = iterable if isinstance(iterable, (list, tuple, range)) else list(iterable)
        if chunksize is None:  # (the stdlib's choice: about 4 chunks per process)
            chunksize, extra = divmod(len(items), 4 * self._processes)
            chunksize = max(1, chunksize + bool(extra))
        _check_chunksize(chunksize)
        blob = _dumps(func)  # (sent once, its ref in every chunk; one chunk: itself)
        job = AsyncResult(api.put(blob) if len(items) > chunksize else blob, mode, items,
                          chunksize, callback, error_callback)
        self._handler.post("job", job)
        return job

    def apply(self, func, args=(), kwds={}):
        """``func(*args, **kwds)`` in one of the pool's processes; waits for the result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        """Like ``apply``, returning an ``AsyncResult``.  ``callback(result)`` or
        ``error_callback(exception)`` runs in the pool's handler thread."""
        self._check_running()
        job = AsyncResult(_dumps(func), APPLY, [(tuple(args), dict(kwds))], 1, callback,
                          error_callback, single=True)
        self._handler.post("job", job)
        return job

    def map(self, func, iterable, chunksize: int | None = None) -> list:
        """``list(map(func, iterable))``, computed by the pool in chunks."""
        return self._map_async(func, iterable, MAP, chunksize, None, None).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        """Like ``map``, returning an ``AsyncResult``: ``callback`` gets the list, or
        ``error_callback`` the first failing item's exception."""
        return self._map_async(func, iterable, MAP, chunksize, callback, error_callback)

    def starmap(self, func, iterable, chunksize: int | None = None) -> list:
        """Like ``map``, calling ``func(*args)`` for each ``args`` in ``iterable``."""
        return self._map_async(func, iterable, STAR, chunksize, None, None).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None,
                      error_callback=None):
        """Like ``starmap``, returning an ``AsyncResult``."""
        return self._map_async(func, iterable, STAR, chunksize, callback, error_callback)

    def imap(self, func, iterable, chunksize: int = 1) -> IMapIterator:
        """An iterator of ``func``'s results on ``iterable``, in order, ``chunksize``
        items per task; the iterable is read lazily (it may be endless)."""
        return self._imap(func, iterable, chunksize, True)

    def imap_unordered(self, func, iterable, chunksize: int = 1) -> IMapIterator:
        """Like ``imap``, yielding the results in the order they finish."""
        return self._imap(func, iterable, chunksize, False)

    def _imap(self, func, iterable, chunksize, ordered) -> IMapIterator:
        self._check_running()
        _check_chunksize(chunksize)
        handler = self._handler
        job = _IMapJob(api.put(_dumps(func)), iterable, chunksize, ordered,
                       AHEAD * self._processes, functools.partial(handler.post, "wake"))
        handler.post("job", job)
        return IMapIterator(job, functools.partial(handler.post, "drop"))

    def close(self) -> None:
        """Accept no more work; the processes end once the work submitted is done."""
        if self._state == "RUN":
            self._state = "CLOSE"
            self._handler.post("close")

    def terminate(self) -> None:
        """Stop now: the processes are killed, unfinished results raise RuntimeError."""
        if self._handler is not None and self._state != "TERMINATE":
            self._state = "TERMINATE"
            self._handler.terminate()

    def join(self) -> None:
        """Wait until the processes have ended (after ``close()`` or ``terminate()``)."""
        if self._state == "RUN":
            raise ValueError("Pool is still running")
        if self._handler is not None:
            self._handler.join()

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc_info) -> None:
        self.terminate()  # (as the stdlib's pool: terminate, not close)

    def __del__(self) -> None:
        if self._state == "RUN":
            warnings.warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning,
                          source=self)
            self._handler.terminate(wait=False)

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or "
                                  "pickled")

    def __repr__(self) -> str:
        return (f"<{type(self).__module__}.{type(self).__qualname__} state={self._state} "
                f"pool_size={getattr(self, '_processes', None)}>")

"""An actor's process: a worker that ran ACREATE and now serves method calls until killed.

Data flow::

    node ──ACreate──▶ construct the instance (as a task: errors go to the creator)
    node ──ACall (calls from workers) ─┐                              ┌─▶ Done to the node
                                       ├─▶ exec_queue ─▶ run method ─┤
    driver ──ACall (d2w mailbox ring) ─┘   (in order, or on threads  └─▶ ADoneD + values to
                                            / event loops)               the driver (w2d)

Three ways to run calls, chosen once from the class, ``max_concurrency`` and
``concurrency_groups``:

* sync (``max_concurrency=1``, no groups): this thread runs each call in arrival order;
* threaded (``max_concurrency>1`` or concurrency groups): each group (the default one:
  ``max_concurrency`` threads) has that many threads taking its calls in order; this
  thread pumps (and, with groups, routes each call to its group);
* async (any ``async def`` method): an event loop per group (the default one runs up to
  ``max_concurrency``, default 1000, calls at once), each on its own thread, as Ray
  runs them; this thread pumps.

A call runs in its method's group (``@mpray.method(concurrency_group=…)``), or the one
its caller chose (``.options(concurrency_group=…)``: the method's name then travels as
``name<GROUP_SEP>group``).  A call runs the method found on the class, bound to the
instance: an instance attribute of the same name does not shadow it.

A call's outcome always comes from here (even when it was cancelled), so the caller's
bookkeeping has one source.  App errors are retried here, on the same instance, when
``retry_exceptions`` and ``max_task_retries`` allow.

The actor ends gracefully (``exit_actor()``, ``__ray_terminate__``, or the node's
``Stop``): calls already running finish, queued ones never start, then the instance's
``__ray_shutdown__`` and the ``atexit`` handlers registered in this process run (those
the process inherited from the driver by fork are dropped at creation), as in Ray.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextvars
import inspect
import os
import pickle
import sys
import threading
import time
import traceback
from types import AsyncGeneratorType, GeneratorType

from .. import exceptions as exc
from .. import protocol as P
from .. import runtime_env
from ..store.serialization import ERROR
from ..exceptions import ActorExit
from ..envelope import in_group
from ..object_ref import ObjectRef
from .generators import as_async, astream, collected, dynamic, static_values

_GENERATORS = (GeneratorType, AsyncGeneratorType)

GROUP_SEP = "\x1f"  # "method<GROUP_SEP>group": a call that .options() puts in a group
ASYNC_SPIN = 4  # an async actor's ring thread polls this many times spin_us (see serve_async)
# set inside the call that runs exit_actor() (its thread's, or its asyncio task's, context)
_EXIT_CALL = contextvars.ContextVar("mpray_exit_call", default=False)


class ActorServer:
    def __init__(self, loop, msg: P.ACreate) -> None:
        self.wl = loop  # the WorkerLoop (runs calls, reports results)
        self.client = loop.client
        self.tid, self.fid, self.fblob, self.name = msg.tid, msg.fid, msg.fblob, msg.name
        self.args_blob, self.deps = msg.args, msg.deps
        self.aid, self.inc, self.opts, self.owner = msg.aid, msg.incarnation, msg.opts, \
            msg.owner
        gpus = self.gpus = tuple(msg.gpus or ())
        if gpus:  # the actor's GPUs, for its whole life
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        self.class_name = self.opts.get("class_name", "Actor")
        loop.actor_label = self.class_name
        self.instance = None
        self.exiting = False
        self.running: dict[int, object] = {}  # tid -> its asyncio task (async actor)
        self.names: dict[str, str] = {}  # method -> "Class.method" (for errors)
        self.bound: dict[str, object] = {}  # method -> what its calls run
        self.groups: dict[str, int] = dict(self.opts.get("concurrency_groups") or {})
        methods = (self.opts.get("meta") or {}).get("methods") or {}
        self.method_group = {m: o["concurrency_group"] for m, o in methods.items()
                             if o.get("concurrency_group") in self.groups}
        self.loops: dict = {}  # async: group (None: the default) -> _Loop
        # the exit_actor() call's report, sent last: its ref resolves once the actor is
        # gone, as in Ray (a shutdown that waits on it then knows the actor ended)
        self.exit_reports: list[tuple] = []
        # checkpoints (node/checkpoints.py): every `interval` calls that end well
        self.interval = self.opts.get("checkpoint_interval") or 0
        self.restore = msg.restore  # (state, calls to run again, calls ended so far)
        self.calls_done = 0

    # ------------------------------------------------------------------ creation
    def create(self) -> bool:
        client = self.client
        client.actor_id = self.aid
        client.actor_inc = self.inc
        runtime_env.apply(self.opts.get("runtime_env"))  # (this process is the actor's)
        in_group(self.opts.get("pg"))  # (its placement group, for its life)
        # this process's atexit handlers are the actor's own, as in a fresh process: the
        # ones inherited from the driver by fork would run the driver's cleanup here
        atexit._clear()

        def construct(*args, **kwargs):
            cls = self.wl.function(self.fid, self.fblob, self.name)
            self.instance = cls(*args, **kwargs)

        status, stored, _r = self.wl.execute(self.tid, _same, construct, self.args_blob,
                                             self.deps, 1, f"{self.class_name}.__init__",
                                             False)
        self.args_blob = self.deps = None
        if status == P.OK and self.restore is not None:
            status, stored = self._restored(status, stored)
        self.wl.report(self.tid, status, stored, False, -1, False)  # (-1: not to the owner)
        return status == P.OK

    def _restored(self, status: int, stored: list) -> tuple[int, list]:
        """A restart of a checkpointed actor: its last checkpoint restored, the calls
        that ended after it run again (their results are not wanted: errors are
        dropped), in the order they ran.  A restore that raises fails the restart."""
        state, replay, self.calls_done = self.restore
        self.restore = None
        client, inst = self.client, self.instance
        if state is not None:
            try:
                inst.__mpray_restore__(client.materialize(*state))
            except Exception as e:  # noqa: BLE001 - the restart's error, for the creator
                err = exc.RayTaskError.from_exception(
                    e, f"{self.class_name}.__mpray_restore__", os.getpid())
                payload = pickle.dumps(err, protocol=5)
                return P.APP_ERROR, [(oid, ERROR, payload, ()) for oid, *_r in stored]
        for method, args_blob, deps in replay:
            try:
                args, kwargs = self.wl.load_args(args_blob, deps)
                self.method(method)(*args, **kwargs)
            except Exception:  # noqa: BLE001 - it raised the first time too, or not
                pass
        return status, stored

    def _checkpoint(self) -> None:
        """Every ``interval`` calls: the state to the store, its id to the node."""
        fn = getattr(type(self.instance), "__mpray_checkpoint__", None)
        if fn is None:
            return  # (no checkpoints: a restart replays every call)
        ref = ObjectRef(self.client.put(fn(self.instance)), owned=True)
        self.client.send([P.Checkpoint(self.aid, self.inc, ref.id, self.calls_done)])
        del ref  # (its release goes after the message: the node holds it by then)

    def method(self, name: str):
        fn = self.bound.get(name)
        if fn is None:
            fn = self.bound[name] = self._lookup(name)
        return fn

    def _lookup(self, name: str):
        """What a call of ``name`` runs: the class's attribute bound to the instance (an
        instance attribute of that name does not shadow the method, as in Ray)."""
        if name == "__ray_ready__":
            return _ready
        if name == "__ray_terminate__":
            return exit_actor
        cls = type(self.instance)
        try:
            attr = inspect.getattr_static(cls, name)
        except AttributeError:
            return getattr(self.instance, name)  # (a class with __getattr__)
        get = getattr(type(attr), "__get__", None)
        return attr if get is None else get(attr, self.instance, cls)

    def assigned(self) -> tuple[dict, tuple]:
        """(resources, GPU ids) this actor holds for its life ({} by default, as Ray's;
        a placement group's names back to the resources they stand for)."""
        held: dict[str, float] = {}
        for name, amount in self.opts.get("held") or ():
            base, sep, rest = name.partition("_group_")
            # (a group's actor holds R_group_<i>_<pg> and R_group_<pg>: the latter says R)
            if amount and base != "bundle" and (not sep or "_" not in rest):
                held[base] = amount
        return held, self.gpus

    def route(self, msg: P.ACall) -> tuple:
        """(the call, its concurrency group: None for the default one)."""
        name, sep, group = msg.method.partition(GROUP_SEP)
        if sep:
            return msg._replace(method=name), (group if group in self.groups else None)
        return msg, self.method_group.get(name)

    # ------------------------------------------------------------------ one call
    def run_call(self, msg: P.ACall) -> None:
        tid, method, args_blob, deps, nret = msg.tid, msg.method, msg.args, msg.deps, msg.nret
        retry_exc, owner, retries, direct = msg.retry_exc, msg.owner, msg.retries, msg.direct
        wl = self.wl
        name = self.names.get(method)
        if name is None:
            name = self.names[method] = f"{self.class_name}.{method}"
        if tid in self.client.dropped_tasks:
            self.client.dropped_tasks.discard(tid)
            self.cancelled(tid, nret, owner, direct)
            return
        call = None if msg.stream is None else _call_gen(msg)  # (a generator method)
        while True:
            status, stored, retryable = wl.execute(
                tid, self.method, method, args_blob, deps, nret, name, retry_exc, call)
            if status == P.APP_ERROR and retryable and retries != 0 and not self.exiting:
                retries -= 1
                self.client.hold(-1)
                continue  # same instance, as Ray retries an actor task
            break
        self.client.dropped_tasks.discard(tid)
        if self.exiting and _EXIT_CALL.get():
            self.exit_reports.append((tid, status, stored, False, owner, direct))
            return
        wl.report(tid, status, stored, False, owner, direct, actor=True)
        if self.interval and status == P.OK:
            self.calls_done += 1
            if self.calls_done % self.interval == 0:
                self._checkpoint()

    def cancelled(self, tid: int, nret: int, owner: int, direct: bool) -> None:
        err = pickle.dumps(exc.TaskCancelledError(P.id_hex(tid)), protocol=5)
        self.client.hold(1)
        self.wl.report(tid, P.APP_ERROR,
                       [(oid, ERROR, err, ()) for oid in P.return_ids(tid, nret)],
                       False, owner, direct, actor=True)

    # ------------------------------------------------------------------ serving
    def done(self) -> bool:
        return self.client.stop_requested or self.exiting

    def begin_exit(self) -> None:
        """exit_actor(): no call starts from now on; wake the pumping thread to see it."""
        self.exiting = True
        try:
            self.client._bell.force()
        except OSError:
            pass

    def serve_sync(self) -> None:
        client = self.client
        q = client.exec_queue
        while not client.stop_requested and not self.exiting:
            if not q:
                client.pump_locked(None)
                continue
            client.pump_locked(0)  # a DROP for the next call may have come while one ran
            msg = q.popleft()
            if type(msg) is P.ACall:
                self.run_call(msg)

    def serve_threaded(self, n: int) -> None:
        """Up to ``n`` calls of the default group at once, and each concurrency group's
        limit of its own: a pool of threads per group takes its calls in order.  This
        thread pumps the rings (under the pump lock, so calls that wait in ``get`` are
        served too) and wakes idle threads when calls come; calls already running when
        the actor ends finish first (as in Ray).  A call cancelled while queued is
        dropped when a thread takes it (``run_call``); one that runs finishes."""
        client = self.client
        q = client.exec_queue
        done = self.done
        if not self.groups:  # (the threads take calls straight off the queue)
            pool = _Pool(self, "", n, q)
            pools = [pool]
            # (a thread that found the queue empty counted itself idle before this
            # thread appended a call and looked at ``idle``: no call waits unwoken)
            while not done():
                client.wait_until(lambda: (bool(q) and pool.idle > 0) or done(), None)
                pool.wake()
        else:
            by_group = {None: _Pool(self, "", n, collections.deque())}
            for g, k in self.groups.items():
                by_group[g] = _Pool(self, f"{g}-", k, collections.deque())
            pools = list(by_group.values())
            while not done():
                client.wait_until(lambda: bool(q) or done(), None)
                woken = set()
                while q:
                    msg = q.popleft()
                    if type(msg) is P.ACall:
                        msg, group = self.route(msg)
                        pool = by_group[group]
                        pool.q.append(msg)
                        woken.add(pool)
                for pool in woken:
                    pool.wake()
        for pool in pools:
            pool.stop()
        self.wait_for(lambda: not any(p.alive() for p in pools))

    def serve_async(self, limit: int) -> None:
        """An event loop per concurrency group (the default one: ``limit`` calls at
        once), each on its own thread; this thread pumps the rings and hands each loop
        what came, one wake-up of a loop per batch."""
        client = self.client
        # this thread's wait for the next call spans a handoff to the loop's thread and
        # back: it polls ASYNC_SPIN times as long before it sleeps (a sync loop of calls
        # to an async actor: 16k calls/s at 1x, 20k at 4x here)
        client.spin_max = client._spin = client.spin_max * ASYNC_SPIN
        q = client.exec_queue
        loops = self.loops
        loops[None] = _Loop("default", limit)
        for g, k in self.groups.items():
            loops[g] = _Loop(g, k)
        running = self.running  # tid -> asyncio task (only its loop's thread changes it)

        def drop(tid: int) -> None:
            # (a call not started yet sees the drop in dropped_tasks when it starts)
            task = running.get(tid)
            if task is not None:  # the coroutine sees CancelledError and reports it
                task.get_loop().call_soon_threadsafe(task.cancel)

        def start(lp: _Loop, msgs: list) -> None:  # (in that loop's thread)
            for msg in msgs:
                if type(msg) is P.ACall:
                    tid = msg.tid
                    task = running[tid] = lp.loop.create_task(
                        self._async_call(msg, lp.sem))
                    task.add_done_callback(lambda _t, tid=tid: running.pop(tid, None))

        client.drop_hook = drop
        default = loops[None]
        done = self.done
        while not done():
            client.wait_until(lambda: bool(q) or done(), None)
            if not q:
                continue
            if not self.groups:
                batch = []
                while q:
                    batch.append(q.popleft())
                default.loop.call_soon_threadsafe(start, default, batch)
                continue
            batches: dict = {}
            while q:
                msg = q.popleft()
                if type(msg) is P.ACall:
                    msg, group = self.route(msg)
                    batches.setdefault(group, []).append(msg)
            for group, batch in batches.items():
                lp = loops[group]
                lp.loop.call_soon_threadsafe(start, lp, batch)
        # (running calls finish; those still waiting for their group's semaphore see
        # the end and return: then no task is left)
        self.wait_for(lambda: not running)

    def wait_for(self, pred) -> None:
        """Pump until ``pred()`` (calls still running may wait for values meanwhile)."""
        client = self.client
        while not pred():
            client.wait_until(pred, time.monotonic() + 0.01)

    # ------------------------------------------------------------------ async calls
    async def _async_call(self, msg: P.ACall, sem) -> None:
        """One call on its group's event loop (at most the group's limit at once)."""
        tid, method, args_blob, deps, nret = msg.tid, msg.method, msg.args, msg.deps, msg.nret
        retry_exc, owner, retries, direct = msg.retry_exc, msg.owner, msg.retries, msg.direct
        wl = self.wl
        client = self.client
        name = f"{self.class_name}.{method}"
        try:
            async with sem:
                if self.exiting:
                    return  # the actor ends: a call that has not started never does
                t0 = time.monotonic()
                while True:
                    stored: list = []
                    try:
                        if tid in client.dropped_tasks:
                            raise asyncio.CancelledError()
                        fn = self.method(method)
                        args, kwargs = wl.load_args(args_blob, deps)
                        result = fn(*args, **kwargs)
                        if inspect.isawaitable(result):
                            result = await result
                        elif type(result) in _GENERATORS:  # (a generator method)
                            result = await self._async_generated(msg, result, name)
                        del args, kwargs
                    except asyncio.CancelledError:
                        raise
                    except BaseException as e:  # noqa: BLE001 - the call's error
                        client.hold(1)  # (report() releases it)
                        status, stored, retryable = wl.failed(tid, e, name, nret, retry_exc,
                                                              stored)
                    else:
                        client.hold(1)  # releases wait for the DONE (see WorkerLoop.execute)
                        try:
                            wl.store_results(tid, result, nret, name, stored)
                            status, retryable = P.OK, False
                        except BaseException as e:  # noqa: BLE001
                            status, stored, retryable = wl.failed(tid, e, name, nret,
                                                                  retry_exc, stored)
                        result = None
                    if status == P.APP_ERROR and retryable and retries != 0:
                        retries -= 1
                        client.hold(-1)
                        continue
                    break
                wl.note_run(tid, name, t0, status == P.OK)
        except asyncio.CancelledError:
            client.dropped_tasks.discard(tid)
            self.cancelled(tid, nret, owner, direct)
            return
        client.dropped_tasks.discard(tid)
        if self.exiting and _EXIT_CALL.get():
            self.exit_reports.append((tid, status, stored, False, owner, direct))
            return
        wl.report(tid, status, stored, False, owner, direct, actor=True)

    async def _async_generated(self, msg: P.ACall, gen, name: str):
        """A generator method's values, on the event loop: streamed, collected
        (dynamic), or as its static returns (worker/generators.py)."""
        agen = gen if type(gen) is AsyncGeneratorType else as_async(gen)
        s = msg.stream
        if s is None:
            return static_values(await collected(agen, msg.nret), msg.nret, name,
                                 asyncio.CancelledError)
        if s < 0:
            return dynamic(self.client, await collected(agen, None))
        await astream(self.wl, msg.tid, msg.owner, agen, s, name)
        return None

    # ------------------------------------------------------------------ the end
    def finish(self) -> None:
        """A graceful end: the instance's ``__ray_shutdown__``, then this process's
        atexit handlers (Ray's order), then the exit_actor() call's report; then the
        process exits."""
        try:
            if self.instance is not None and \
                    getattr(type(self.instance), "__ray_shutdown__", None) is not None:
                try:
                    result = self.method("__ray_shutdown__")()
                    if inspect.isawaitable(result):
                        self._run_awaitable(result)
                except BaseException:  # noqa: BLE001 - reported, the actor still ends
                    print(f"Error during actor {self.class_name}'s __ray_shutdown__ "
                          "method:", file=sys.stderr)
                    traceback.print_exc()
            atexit._run_exitfuncs()
        finally:
            try:
                for report in self.exit_reports:
                    self.wl.report(*report, actor=True)
            finally:
                for f in (sys.stdout, sys.stderr):
                    try:
                        f.flush()
                    except Exception:  # noqa: BLE001
                        pass
                os._exit(0)

    def _run_awaitable(self, aw) -> None:
        """An ``async def __ray_shutdown__``: on the default event loop of an async
        actor (pumping meanwhile: it may await refs), else on a loop of its own."""
        async def wrap():
            return await aw

        lp = self.loops.get(None)
        if lp is None:
            asyncio.new_event_loop().run_until_complete(wrap())
            return
        fut = asyncio.run_coroutine_threadsafe(wrap(), lp.loop)
        self.wait_for(fut.done)
        fut.result()


class _Pool:
    """``n`` threads that take one concurrency group's calls off ``q`` in order and run
    them back to back (no hand-off per call); the pumping thread wakes idle ones."""

    def __init__(self, server: ActorServer, name: str, n: int, q) -> None:
        self.server = server
        self.q = q
        self.ready = threading.Condition()
        self.idle = 0  # threads waiting for a call, not yet woken (changed under ``ready``)
        self.threads = [threading.Thread(target=self._work, name=f"mpray-actor-{name}{i}",
                                         daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _take(self):
        server = self.server
        done = server.done
        q = self.q
        with self.ready:
            while not q:
                if done():
                    return None
                self.idle += 1
                self.ready.wait()
            # (a queued call never starts once the actor ends, as in Ray)
            return None if server.exiting else q.popleft()

    def _work(self) -> None:
        run = self.server.run_call
        while True:
            msg = self._take()
            if msg is None:
                return
            if type(msg) is P.ACall:
                run(msg)

    def wake(self) -> None:
        with self.ready:
            k = min(len(self.q), self.idle)
            self.idle -= k
            self.ready.notify(k)

    def stop(self) -> None:
        with self.ready:
            self.ready.notify_all()  # (they see done() and end)

    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)


class _Loop:
    """An event loop on its own thread, with the semaphore that limits its calls."""

    def __init__(self, name: str, limit: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.sem = None
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.sem = asyncio.Semaphore(limit)
            started.set()
            self.loop.run_forever()

        threading.Thread(target=run, name=f"mpray-actor-loop-{name}", daemon=True).start()
        started.wait()


def _same(x):
    """``execute``'s lookup of a constructor it is handed (the key is the function)."""
    return x


def _ready() -> bool:
    return True


def exit_actor() -> None:
    """End the current actor from inside one of its methods (no restart): the call
    raises (its caller sees ``ActorDiedError``), calls already running finish, queued
    ones never start, then ``__ray_shutdown__`` and the actor's atexit handlers run."""
    from .. import _global

    client = _global.client
    if client is None or client.actor_id is None:
        raise TypeError("exit_actor() can only be called inside an actor's method")
    client.send([P.ActorExit(client.actor_id)])
    client.order_via_node = True  # this call's error must not overtake the exit
    _EXIT_CALL.set(True)
    _global.actor_server.begin_exit()
    raise ActorExit(f"The actor {P.id_hex(client.actor_id)} exited: it called exit_actor()")


def is_async_class(cls: type) -> bool:
    return any(inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m)
               for _n, m in inspect.getmembers(cls, inspect.isfunction))


def _call_gen(msg: P.ACall) -> tuple:
    """(kind, backpressure, owner) of a generator method's call (ACall.stream)."""
    if msg.stream < 0:
        return ("dynamic", 0, msg.owner)
    return ("streaming", msg.stream, msg.owner)


def serve_actor(loop, msg: P.ACreate) -> None:
    """Become the actor ACreate describes; returns only when the process should exit."""
    from .. import _global

    server = ActorServer(loop, msg)
    _global.actor_server = server
    if not server.create():
        return  # the node marks the actor dead; nothing more to run here
    opts = server.opts
    limit = opts.get("max_concurrency")
    client = server.client
    if opts.get("is_async"):
        client.actor_mode = "concurrent"
        server.serve_async(limit or 1000)
    elif (limit and limit > 1) or server.groups:
        client.actor_mode = "concurrent"
        server.serve_threaded(limit or 1)
    else:
        client.actor_mode = "sync"
        server.serve_sync()
    if server.exiting or client.stop_requested:
        # (the last report went out on the rings; the node sees this process exit)
        server.finish()

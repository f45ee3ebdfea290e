"""An actor's process: a worker that ran ACREATE and now serves method calls until killed.

Data flow::

    node ──ACreate──▶ construct the instance (as a task: errors go to the creator)
    node ──ACall (calls from workers) ─┐                              ┌─▶ Done to the node
                                       ├─▶ exec_queue ─▶ run method ─┤
    driver ──ACall (d2w mailbox ring) ─┘   (in order, or on threads  └─▶ ADoneD + values to
                                            / an event loop)             the driver (w2d)

Three ways to run calls, chosen once from the class and ``max_concurrency``:

* sync (``max_concurrency=1``): this thread runs each call in arrival order;
* threaded (``max_concurrency>1``): that many threads take calls off the queue in order;
  this thread pumps;
* async (any ``async def`` method): one event loop on its own thread runs up to
  ``max_concurrency`` (default 1000) calls at once; this thread pumps.

A call's outcome always comes from here (even when it was cancelled), so the caller's
bookkeeping has one source.  App errors are retried here, on the same instance, when
``retry_exceptions`` and ``max_task_retries`` allow.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import threading

from .. import exceptions as exc
from .. import protocol as P
from .. import runtime_env
from ..store.serialization import ERROR
from ..exceptions import ActorExit


class ActorServer:
    def __init__(self, loop, msg: P.ACreate) -> None:
        self.wl = loop  # the WorkerLoop (runs calls, reports results)
        self.client = loop.client
        self.tid, self.fid, self.fblob, self.name = msg.tid, msg.fid, msg.fblob, msg.name
        self.args_blob, self.deps = msg.args, msg.deps
        self.aid, self.inc, self.opts, self.owner = msg.aid, msg.incarnation, msg.opts, \
            msg.owner
        gpus = msg.gpus
        if gpus:  # the actor's GPUs, for its whole life
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        self.class_name = self.opts.get("class_name", "Actor")
        self.instance = None
        self.exiting = False
        self.running: dict[int, object] = {}  # tid -> its asyncio task (async actor)
        self.names: dict[str, str] = {}  # method -> "Class.method" (for errors)

    # ------------------------------------------------------------------ creation
    def create(self) -> bool:
        client = self.client
        client.actor_id = self.aid
        client.actor_inc = self.inc
        runtime_env.apply(self.opts.get("runtime_env"))  # (this process is the actor's)

        def construct(*args, **kwargs):
            cls = self.wl.function(self.fid, self.fblob, self.name)
            self.instance = cls(*args, **kwargs)

        status, stored, _r = self.wl.execute(self.tid, lambda: construct, self.args_blob,
                                             self.deps, 1, f"{self.class_name}.__init__",
                                             False)
        self.args_blob = self.deps = None
        self.wl.report(self.tid, status, stored, False, -1, False)  # (-1: not to the owner)
        return status == P.OK

    def method(self, name: str):
        if name == "__ray_ready__":
            return _ready
        if name == "__ray_terminate__":
            return exit_actor
        return getattr(self.instance, name)

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
        while True:
            status, stored, retryable = wl.execute(
                tid, lambda: self.method(method), args_blob, deps, nret, name, retry_exc)
            if status == P.APP_ERROR and retryable and retries != 0 and not self.exiting:
                retries -= 1
                self.client.hold(-1)
                continue  # same instance, as Ray retries an actor task
            break
        self.client.dropped_tasks.discard(tid)
        wl.report(tid, status, stored, False, owner, direct, actor=True)

    def cancelled(self, tid: int, nret: int, owner: int, direct: bool) -> None:
        err = pickle.dumps(exc.TaskCancelledError(P.id_hex(tid)), protocol=5)
        self.client.hold(1)
        self.wl.report(tid, P.APP_ERROR,
                       [(oid, ERROR, err, ()) for oid in P.return_ids(tid, nret)],
                       False, owner, direct, actor=True)

    # ------------------------------------------------------------------ serving
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
        """Up to ``n`` calls at once: ``n`` threads take calls off the queue in order and
        run them back to back (no hand-off per call); this thread pumps the rings (under
        the pump lock, so calls that wait in ``get`` are served too) and wakes idle
        threads when calls come.  A call cancelled while queued is dropped when a thread
        takes it (``run_call``), as in a sync actor; one that runs finishes (as in Ray)."""
        client = self.client
        q = client.exec_queue
        ready = threading.Condition()
        idle = [0]  # threads waiting for a call, not yet woken (changed under ``ready``)

        def done() -> bool:
            return client.stop_requested or self.exiting

        def take():
            with ready:
                while not q:
                    if done():
                        return None
                    idle[0] += 1
                    ready.wait()
                return q.popleft()

        def work() -> None:
            while True:
                msg = take()
                if msg is None:
                    return
                if type(msg) is P.ACall:
                    self.run_call(msg)

        for i in range(n):
            threading.Thread(target=work, name=f"mpray-actor-{i}", daemon=True).start()
        # (a thread that found the queue empty counted itself idle before this thread
        # appended a call and looked at ``idle``: no call waits for a thread unwoken)
        while not done():
            client.wait_until(lambda: (bool(q) and idle[0] > 0) or done(), None)
            with ready:
                k = min(len(q), idle[0])
                idle[0] -= k
                ready.notify(k)
        with ready:
            ready.notify_all()  # (they see done() and end)

    def serve_async(self, limit: int) -> None:
        """One event loop (its own thread) runs up to ``limit`` calls at once; this thread
        pumps the rings and hands it what came, one wake-up of the loop per batch."""
        client = self.client
        q = client.exec_queue
        loop = asyncio.new_event_loop()
        sem_box: list = []

        def run_loop() -> None:
            asyncio.set_event_loop(loop)
            sem_box.append(asyncio.Semaphore(limit))
            loop.run_forever()

        th = threading.Thread(target=run_loop, name="mpray-actor-loop", daemon=True)
        th.start()
        while not sem_box:
            th.join(0.001)
        sem = sem_box[0]
        running = self.running  # tid -> asyncio task (only the loop's thread changes it)

        def drop(tid: int) -> None:
            def cancel() -> None:
                task = running.get(tid)
                if task is not None:
                    task.cancel()  # the coroutine sees CancelledError and reports it
            loop.call_soon_threadsafe(cancel)

        def start(msgs: list) -> None:  # (in the loop's thread)
            for msg in msgs:
                if type(msg) is P.ACall:
                    tid = msg.tid
                    task = running[tid] = loop.create_task(self._async_call(msg, sem))
                    task.add_done_callback(lambda _t, tid=tid: running.pop(tid, None))

        client.drop_hook = drop
        while not client.stop_requested and not self.exiting:
            client.wait_until(lambda: bool(q) or client.stop_requested or self.exiting, None)
            if q:
                batch = []
                while q:
                    batch.append(q.popleft())
                loop.call_soon_threadsafe(start, batch)

    async def _async_call(self, msg: P.ACall, sem) -> None:
        tid, method, args_blob, deps, nret = msg.tid, msg.method, msg.args, msg.deps, msg.nret
        retry_exc, owner, retries, direct = msg.retry_exc, msg.owner, msg.retries, msg.direct
        wl = self.wl
        client = self.client
        name = f"{self.class_name}.{method}"
        try:
            async with sem:
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
        except asyncio.CancelledError:
            client.dropped_tasks.discard(tid)
            self.cancelled(tid, nret, owner, direct)
            return
        client.dropped_tasks.discard(tid)
        wl.report(tid, status, stored, False, owner, direct, actor=True)


def _ready() -> bool:
    return True


def exit_actor() -> None:
    """End the current actor from inside one of its methods (no restart)."""
    from .. import _global

    client = _global.client
    if client is None or client.actor_id is None:
        raise TypeError("exit_actor() can only be called inside an actor's method")
    client.send([P.ActorExit(client.actor_id)])
    client.order_via_node = True  # this call's error must not overtake the exit
    _global.actor_server.exiting = True
    raise ActorExit(f"The actor {P.id_hex(client.actor_id)} exited: it called exit_actor()")


def is_async_class(cls: type) -> bool:
    return any(inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m)
               for _n, m in inspect.getmembers(cls, inspect.isfunction))


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
    elif limit and limit > 1:
        client.actor_mode = "concurrent"
        server.serve_threaded(limit)
    else:
        client.actor_mode = "sync"
        server.serve_sync()
    if server.exiting:
        # the last report went out on the rings; the node sees this process exit
        os._exit(0)

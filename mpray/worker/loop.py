"""Worker processes: forked from the node, run one task at a time.

Data flow::

    node ──Exec (fid, [fblob], args, resolved deps)──▶ down ring ──▶ worker_main loop
    driver ──Exec (leased: epoch) ──▶ its mailbox slot's d2w ring ──▶ │ resolve args (zero-copy)
                                                                      │ fn(*args, **kwargs)
                                                                      ▼ serialise returns
    node ◀──────────────── Done (tid, status, results) ◀── up ring ◀──┘ (Alloc first if large)
    driver ◀── Obj… DoneD (leased) / ADoneD (direct actor call) ◀── w2d ring

A task that calls ``get``/``wait`` on unfinished objects reports BLOCKED so the node can
lend its CPU to another worker (nested tasks never deadlock), then UNBLOCKED.
Cancellation arrives as SIGUSR1 with the target task id in a shared slot; the handler
raises only while that very task runs user code, so a late signal is harmless.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import socket
import sys
import time
from types import GeneratorType

from .. import _global
from .. import exceptions as exc
from ..exceptions import ActorExit
from .. import protocol as P
from .. import runtime_env
from ..control import sessions
from ..control.logs import redirect_output
from ..control.recorder import REC as _REC, RUNS as _RUNS, error_fields
from ..envelope import Registered, opened
from .generators import Failed, StaticValues, dynamic, failed_payload, static_values, stream
from ..transport.mailbox import cancel_word
from ..procs import set_parent_death_signal, strip_mpi_environment
from ..owner.worker_client import WorkerClient
from ..store.serialization import ARENA, ERROR, INLINE, NONE as _NONE, NO_ARGS as _NO_ARGS

# (built from all their items, in FIELDS order, without a Python-level call: hot)
_done, _DONE = P.DoneD.from_items, P.DoneD.OP
_adone, _ADONE = P.ADoneD.from_items, P.ADoneD.OP
_node_done, _NODE_DONE = P.Done.from_items, P.Done.OP


class _Cancelled(KeyboardInterrupt):
    """Raised inside a running task that mpray.cancel() interrupted."""


def _load_function(blob: bytes):
    """A registered function, with its original source file name put back (one with
    options: a ``Registered``)."""
    obj = pickle.loads(blob)
    registered = opened(obj, _load_function)
    if registered is not None:
        return registered
    fn, filename = obj
    code = getattr(fn, "__code__", None)
    if code is not None and filename and code.co_filename != filename:
        try:
            fn.__code__ = code.replace(co_filename=filename)
        except (AttributeError, TypeError, ValueError):
            pass
    return fn


def _retryable(e: BaseException, retry_exc) -> bool:
    if retry_exc is True:
        return isinstance(e, Exception)
    if not retry_exc:
        return False
    try:
        classes = pickle.loads(retry_exc)
    except Exception:  # noqa: BLE001
        return False
    return isinstance(e, tuple(classes))


LEASE_IDLE = 0.02  # seconds a lease may sit without direct tasks before it is given back


class WorkerLoop:
    def __init__(self, client: WorkerClient, wid: int, cancel_slot, direct_cancel=None) -> None:
        self.client = client
        self.wid = wid
        self.funcs: dict[int, object] = {}
        # cancel words: written by the node, and by the driver (leased tasks)
        self._words = tuple(w.cast("q") for w in (cancel_slot, direct_cancel)
                            if w is not None)
        self.in_user = False
        self.signalled = False  # a cancel signal came while no task ran user code
        self.pid = os.getpid()
        self.current: P.Exec | None = None  # the task running (or last run) here
        self.retire = False  # exit after this task (its function's max_calls)
        self.host = socket.gethostname()
        self.base_cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.started = 0.0  # when the running task started
        self.last_error: tuple = (None, None)  # (the control store's: the last failure)
        self.actor_label: str | None = None  # an actor's class name (its output's label)

    def on_cancel_signal(self, signum, frame) -> None:
        cur = self.client.current_task
        if self.in_user and cur is not None and self.cancel_requested(cur):
            raise _Cancelled()
        self.signalled = True  # (maybe for a task not started yet: execute() looks)

    def cancel_requested(self, tid: int) -> bool:
        """Was ``tid`` cancelled (its id in a cancel word)?  Ids are never reused, so a
        word left from an earlier task never matches a later one."""
        tid &= 2**63 - 1
        for word in self._words:
            if word[0] == tid:
                return True
        return False

    def serve(self) -> None:
        client = self.client
        q = client.exec_queue
        while not client.stop_requested:
            if not q:
                if client.lease_epoch is None:
                    client.pump_locked(None)
                    continue
                idle = time.monotonic() - client.lease_active
                if client.reclaim and not client.pump_locked(0) and not q:
                    client.end_lease(self.wid)  # others wait for this CPU
                elif idle < LEASE_IDLE:
                    client.pump_locked(LEASE_IDLE - idle)
                elif not client.pump_locked(0) and not q:  # nothing came: give it back
                    client.end_lease(self.wid)
                continue
            msg = q.popleft()
            if type(msg) is P.ACreate:  # this worker becomes an actor, for good
                from .actor import serve_actor

                serve_actor(self, msg)
                return
            if type(msg) is not P.Exec:
                continue  # a call for an actor that lived in this mailbox slot before
            if msg.tid in client.dropped_tasks:  # cancelled while queued here
                client.dropped_tasks.discard(msg.tid)
                if msg.epoch is not None:
                    err = pickle.dumps(exc.TaskCancelledError(P.id_hex(msg.tid)), protocol=5)
                    client.send_owner([P.DoneD(
                        msg.tid, [(oid, ERROR, err) for oid in P.return_ids(msg.tid, msg.nret)],
                        None, False, 0.0)])
                continue
            self.run(msg)

    def run(self, msg: P.Exec) -> None:
        tid, name, nret, gpus = msg.tid, msg.name, msg.nret, msg.gpus
        self.current = msg  # (its owner gets a stream's values; the runtime context)
        self.started = time.monotonic()  # (a direct task's run time goes to the driver)
        if gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        try:
            status, stored, retryable = self.execute(
                tid, self._function_of, msg, msg.args, msg.deps, nret, name, msg.retry_exc)
        finally:
            if gpus:
                if self.base_cuda is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = self.base_cuda
        self.report(tid, status, stored, retryable, msg.owner, msg.epoch is not None)
        if self.retire:  # the function's max_calls: this worker exits (the node starts
            self.client.stop_requested = True  # another; queued tasks go back to it)

    def _function_of(self, msg: P.Exec):
        return self.function(msg.fid, msg.fblob, msg.name)

    def function(self, fid: int, fblob: bytes | None, name: str):
        fn = self.funcs.get(fid)
        if fn is None:
            # the blob may have come with an EXEC this worker handed back or dropped
            fblob = fblob or self.client.func_blobs.get(fid)
            if fblob is None:
                raise exc.RaySystemError(f"function {name} (id {fid}) was never registered")
            fn = self.funcs[fid] = _load_function(fblob)
        return fn

    def load_args(self, args_blob: bytes, deps) -> tuple[list, dict]:
        if args_blob == _NO_ARGS:  # (no arguments, so no deps either: nothing to unpickle)
            return [], {}
        args, kwargs = pickle.loads(args_blob)
        for pos, oid, kind, payload in deps:
            value = self.client.materialize(oid, kind, payload)
            if isinstance(pos, int):
                args[pos] = value
            else:
                kwargs[pos] = value
        return args, kwargs

    def execute(self, tid: int, get_fn, key, args_blob: bytes, deps, nret: int, name: str,
                retry_exc, call: tuple | None = None) -> tuple[int, list, bool]:
        """Run one call: (status, stored results, retryable); ``call``: an actor call's
        generator kind, backpressure and owner (a task's come with its function)."""
        client = self.client
        client.current_task = tid
        stored: list[tuple] = []
        held = False
        fn = None
        t0 = time.monotonic()
        try:
            fn = get_fn(key)  # (looked up in here: a failure is the call's error; a
            #                   function and its key, not a closure: no cells per call)
            if type(fn) is Registered:  # (its arguments may need its py_modules)
                fn.enter()
            args, kwargs = self.load_args(args_blob, deps)
            self.in_user = True
            try:
                if self.signalled:  # (a cancel whose signal came before the task got
                    self.signalled = False  # here: it never runs)
                    if self.cancel_requested(tid):
                        raise _Cancelled()
                result = fn(*args, **kwargs)
                if type(result) is GeneratorType:  # (its values run user code too)
                    result = self._generated(fn, tid, result, nret, name, call)
            finally:
                self.in_user = False
            del args, kwargs
            # from here until report() sent the DONE that registers what the results
            # hold, this process's releases wait (not while the function runs: a task
            # blocked in get must still hand back work and release what it dropped)
            client.hold(1)
            held = True
            self.store_results(tid, result, nret, name, stored)
            result = None  # drop the last return value now, before DONE goes out
            if _REC.on:
                _RUNS((tid, name, t0, time.monotonic(), True, client.actor_id, None, None))
            return P.OK, stored, False
        except BaseException as e:  # noqa: BLE001 - every failure becomes the task's error
            self.in_user = False
            if not held:
                client.hold(1)  # (report() releases it)
            out = self.failed(tid, e, name, nret, retry_exc, stored)
            e = None
            self.note_run(tid, name, t0, False)
            return out
        finally:
            client.current_task = None
            if type(fn) is Registered and fn.exit():
                self.retire = True  # (max_calls: once this task is reported)
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except Exception:  # noqa: BLE001
                pass

    def _generated(self, fn, tid: int, gen, nret: int, name: str, call: tuple | None):
        """A generator's values: streamed (the task's value is then None), collected
        (dynamic), or as its static returns (generators.py)."""
        if type(fn) is Registered:
            kind, bp, owner = fn.gen, fn.backpressure, self.current.owner
        else:
            kind, bp, owner = call or (None, 0, 0)
        if kind == "streaming":
            return stream(self, tid, owner, gen, bp, name, _Cancelled)
        if kind == "dynamic":
            return dynamic(self.client, gen)
        return static_values(gen, nret, name, _Cancelled)

    def assigned(self) -> tuple[dict, tuple]:
        """(resources, GPU ids) of the task running here (its function's registration
        says when it asked for more than one CPU)."""
        msg = self.current
        if msg is None or self.client.current_task != msg.tid:
            return {}, ()
        fn = self.funcs.get(msg.fid)
        res = fn.resources if type(fn) is Registered and fn.resources else {"CPU": 1.0}
        return dict(res), tuple(msg.gpus or ())

    def remote_error(self, e: BaseException, name: str) -> exc.RayTaskError:
        """The error a task's caller gets, its traceback starting at user code."""
        if e.__traceback__ is not None:
            e = e.with_traceback(e.__traceback__.tb_next)
        return exc.RayTaskError.from_exception(e, name, self.pid, self.host)

    def store_results(self, tid: int, result, nret: int, name: str, stored: list) -> None:
        if result is None and nret == 1:  # (a call that returns nothing: its value is
            stored.append((tid + 1, INLINE, _NONE, ()))  # known, no serializer needed)
            return
        if type(result) is StaticValues:
            outs = result
        elif nret == 1:
            outs = (result,)
        elif nret == 0:
            outs = ()
        else:
            outs = tuple(result)
            if len(outs) != nret:
                raise ValueError(
                    f"task {name} declared num_returns={nret} but returned {len(outs)} values"
                )
        del result
        oids = P.return_ids(tid, nret)
        for i, v in enumerate(outs):
            if type(v) is Failed:  # (a generator's return that is missing or raised)
                stored.append((oids[i], ERROR, failed_payload(self, v, name), ()))
                continue
            try:
                kind, payload, contained = self.client.store_value(v)
            except TypeError as e:
                raise TypeError(
                    f"could not serialize return value {i} of task {name} "
                    f"({type(v).__name__}): {e}"
                ) from e
            if contained:  # (objects this process owns: known to the node before they leave)
                self.client.publish_contained(contained)
            stored.append((oids[i], kind, payload, contained))

    def failed(self, tid: int, e: BaseException, name: str, nret: int, retry_exc,
               stored: list) -> tuple[int, list, bool]:
        """A call raised: its error as every return value (and any arena space freed)."""
        client = self.client
        for _oid, kind, payload, _c in stored:
            if kind == ARENA:
                client.send([P.FreeRange(payload[0])])
        retryable = False
        if isinstance(e, _Cancelled):
            err: BaseException = exc.TaskCancelledError(P.id_hex(tid))
            self.last_error = error_fields(err)
        elif isinstance(e, ActorExit):  # exit_actor(): the call ends with the actor
            err = e
            self.last_error = error_fields(err)
        else:
            self.last_error = error_fields(e, app=True)
            err = self.remote_error(e, name)
            retryable = _retryable(e, retry_exc)
        payload = pickle.dumps(err, protocol=5)
        e = err = None  # drop the traceback's frames (and the values they hold) now
        return P.APP_ERROR, [(oid, ERROR, payload, ()) for oid in P.return_ids(tid, nret)], \
            retryable

    def note_run(self, tid: int, name: str, t0: float, ok: bool) -> None:
        """The control store's record of a call that ran (a failure: ``failed()`` said
        why)."""
        if _REC.on:
            _RUNS((tid, name, t0, time.monotonic(), ok, self.client.actor_id,
                   *((None, None) if ok else self.last_error)))
        self.last_error = (None, None)

    def label(self) -> str:
        """What this worker's output is labelled with: its actor's class, else the task."""
        if self.actor_label is not None:
            return self.actor_label
        msg = self.current
        return msg.name if msg is not None else "worker"

    def running(self):
        """(tid, name, start) of the task running here, for the recorder (None: none)."""
        msg, tid = self.current, self.client.current_task
        if msg is None or tid is None or msg.tid != tid:
            return None
        return tid, msg.name, self.started

    def report(self, tid: int, status: int, stored: list, retryable: bool, owner: int,
               direct: bool, actor: bool = False) -> None:
        client = self.client
        streamed = bool(client.streamed) and tid in client.streamed
        if streamed:  # a stream's end goes through the node, after its values
            client.streamed.discard(tid)
        if direct:
            self._finish_direct(tid, stored, retryable, actor, streamed)
        else:
            delivered = False
            # Direct delivery skips the node's FIFO, so only for values that carry no
            # refs (a ref inside must reach the node, its PUT/SUBMIT, before anyone can
            # ask for it) and hold no arena space: the node hears of that with NodeDone,
            # after; if this worker died in between, the node would free the space and
            # run the task again while the driver read the first place, reused
            if (owner == 0 and client._to_driver is not None and not retryable
                    and not client.order_via_node and not streamed
                    and not any(r[3] or r[1] == ARENA for r in stored)):
                delivered = self._deliver(stored)
            client.order_via_node = False
            client.send([_node_done((_NODE_DONE, tid, status, stored, retryable, delivered))])
            if client.lease_epoch is not None and client._setup.spill_long:
                # (MPI) the task that made this worker a lease: its owner times it here
                client.send_owner([P.SeedTime(self.current.fid, time.monotonic() - self.started)])
            client.lease_active = time.monotonic()  # a lease idles from its last task's
            #                                         end (_finish_direct sets it too)
        client.hold(-1)
        if client._gone and client.owner is not None:
            client.run_owner()  # (its small values' releases: not left for an idle worker)
        client._flush_soon()

    def _finish_direct(self, tid: int, stored: list, retryable: bool, actor: bool,
                       by_node: bool = False) -> None:
        """A leased task or a direct actor call ended: results to the driver; the node
        hears only of objects it must hold (arena space, refs inside), and before the
        driver can ask for them."""
        client = self.client
        client.lease_active = time.monotonic()
        run_s = client.lease_active - self.started
        # (values the node must register first: arena space, refs inside; a stream's end)
        for _o, kind, _p, contained in stored:
            if kind == ARENA or contained:
                by_node = True
                break
        if retryable and not actor:  # the driver decides: retry through the node, or not
            client.send_owner([P.DoneD(tid, None, stored[0][2] if stored else None, False,
                                        run_s)])
        elif by_node:
            # (the values' owner: the driver for a direct actor call, else the lease's)
            owner = 0 if actor else client.lease_owner
            client.send([P.PutFor(owner, oid, kind, payload, contained)
                         for oid, kind, payload, contained in stored])
            if actor:
                client.send_driver([P.ADoneD(tid, None)])
            else:
                client.send_owner([P.DoneD(tid, None, None, True, run_s)])
        else:  # the values ride in the one message that ends the task or call
            values = [r[:3] for r in stored]
            if actor:
                client.send_driver([_adone((_ADONE, tid, values))])
            else:
                client.send_owner([_done((_DONE, tid, values, None, False, run_s))])

    def _deliver(self, stored: list) -> bool:
        """Hand a node task's results straight to the driver: saves it waiting for the
        node's hop.  Never blocks: if the driver is not reading and its slot is full,
        the node's ordinary path delivers instead.
        """
        return self.client.try_send_driver(
            [P.Obj(oid, kind, payload) for oid, kind, payload, _c in stored])


def worker_main(setup, wid: int, node_pid: int, up, down, bell, node_bell, mem,
                slot=None, mailbox_rings=None) -> None:

    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != node_pid:
        return
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    strip_mpi_environment()
    # what the worker inherited from the node is never garbage: not scanned (nor its
    # pages copied by a scan); the user's objects are collected as usual
    gc.freeze()
    os.environ["MPRAY_WORKER_ID"] = str(wid)
    # (Execs a dead predecessor in this slot left unread carry an old lease epoch: they
    # are bounced, and the driver, which already retried them, ignores that)
    client = WorkerClient(
        proc=wid, rank=setup.rank, up=up, down=down, my_bell=bell, node_bell=node_bell,
        arena=setup.arena, inline_max=setup.inline_max, node_pid=node_pid, node_pidfd=None,
        spin_us=setup.spin_us, setup=setup, slot=slot, mailbox_rings=mailbox_rings,
    )
    direct_cancel = None
    if mailbox_rings is not None:
        direct_cancel = cancel_word(setup.mailbox, slot, setup.mailbox_ring_bytes)
    _global.client = client
    _global.node_id = setup.node_id
    _global.node_info = setup.node_info
    runtime_env.apply(setup.node_info.get("runtime_env"))  # the job's, for good
    loop = _global.worker_loop = WorkerLoop(client, wid, memoryview(mem)[64:72],
                                            direct_cancel)
    signal.signal(signal.SIGUSR1, loop.on_cancel_signal)
    _observed(setup, loop)
    loop.serve()


def _observed(setup, loop: WorkerLoop) -> None:
    """The control store and the logs: this worker's output goes to its log files, its
    events to the spool (a SIGTERM at shutdown writes the last ones, then exits)."""
    sessions.release_inherited()
    if not setup.node_dir:
        return
    redirect_output(os.path.join(setup.node_dir, "logs"), loop)
    if setup.store:
        _REC.start(os.path.join(setup.node_dir, "spool"),
                   {"rank": setup.rank, "node_id": setup.node_id, "role": "worker"})
        _REC.running = loop.running
        signal.signal(signal.SIGTERM, _flush_and_exit)


def _flush_and_exit(signum, frame) -> None:
    _REC.stop()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        pass
    os._exit(0)

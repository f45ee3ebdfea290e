"""The core client's common I/O shell: one per process (the driver and every worker).

Data flow::

    user code ──submit/put/get/wait──▶ Client ──frames──▶ up ring ──▶ node
                                          ▲                             │
        zero-copy views ◀── arena ◀───────┴──── Obj/AllocOk/Reply ◀── down ring

The client counts this process's ``ObjectRef``s per object id and tells the node only
about 0→1 (``Refs`` increfs, for borrowed refs) and 1→0 (decrefs) transitions, batched
into the next frame it sends.  Values that arrive (results of this process's tasks,
objects it subscribed to) are cached as (kind, payload) until the last local ref goes.

Roles: ``driver_client.DriverClient`` adds the owner machine (leases, direct actor
calls, the mailbox); ``worker_client.WorkerClient`` adds running tasks (their queue,
leases from the driver's side, handing work back while a task waits).  How a client
waits (pumping its rings, blocking waits, futures, the background pump thread) is the
``waiting.Waiting`` mixin.  ``ObjectRef.__del__`` can run anywhere (GC), so what it
causes only goes into deques that are flushed with the next frame, or at once when the
send lock is free.
"""

from __future__ import annotations

import collections
import os
import pickle
import threading
import time
import weakref
from typing import Any, Iterable

import numpy as np

from .. import exceptions as exc
from .. import protocol as P
from ..object_ref import ObjectRef
from ..store import serialization as ser
from ..transport.rings import Doorbell, Ring, RingClosed
from .waiting import Evicted, Waiting


_put, _PUT = P.Put.from_items, P.Put.OP
_submit, _SUBMIT = P.Submit.from_items, P.Submit.OP
_loads, _new, _WRAP = pickle.loads, tuple.__new__, P._WRAP


STREAM_END = None  # in a stream's deque: its end (after its last value)
_MEMO_REFS = 256  # a value in the arena that is a list of this many refs: decoded once


class Client(Waiting):
    def __init__(self, proc: int, rank: int, up: Ring, down: Ring, my_bell: Doorbell,
                 node_bell: Doorbell, arena, inline_max: int, node_pid: int,
                 node_pidfd: int | None, id_start: int | None = None,
                 spin_us: int = 0) -> None:
        self.proc = proc
        self.token = (os.getpid(), proc, time.monotonic_ns())  # unique per client instance
        self.rank = rank
        self.is_worker = proc != 0
        self._up = up
        self._down = down
        self._bell = my_bell
        self._node_bell = node_bell
        self._arena = arena
        self._arena_mv = memoryview(arena) if arena is not None else None
        self.inline_max = inline_max
        self.node_pid = node_pid
        self._node_pidfd = node_pidfd
        base = P.id_base(rank, proc)
        self._own_key = base >> P.PROC_BITS  # oid >> PROC_BITS of the ids this process makes
        self._next_id = max(base + 1, id_start or 0)
        self._first_id = self._next_id  # own ids below this are from an earlier session
        self._id_lock = threading.Lock()
        self._refs: dict[int, int] = {}
        self._values: dict[int, tuple[int, Any]] = {}
        self._subscribed: set[int] = set()
        self._reborrowed: set[int] = set()
        self._mapped: dict[int, weakref.ref] = {}
        # places the node evicted (oid -> that descriptor): a get that read one before
        # the Evict came must not map it (node/spill.py); the lock orders the two
        self._evicted: dict[int, tuple] = {}
        self._map_lock = threading.Lock()
        self.pins_out = False  # a Pin was queued since the last frame to the node
        self._pending: collections.deque = collections.deque()  # rides the next frame
        self._incref: collections.deque = collections.deque()
        self._decref: collections.deque = collections.deque()
        self._unpin: collections.deque = collections.deque()
        self._send_lock = threading.Lock()
        self.func_blobs: dict[int, bytes] = {}
        self.streams: dict[int, collections.deque] = {}  # streaming task -> refs come
        self._decoded: dict[int, tuple] = {}  # oid -> (payload, its list of refs)
        # set while a worker holds serialised results that contain refs it is about to
        # drop: their releases must go out after the Done that registers the containment
        self.hold_releases = 0
        self.errors_in = 0  # errors stored so far: a get of several refs fails at the first
        self._urgent_sent = 0.0  # when the last release that could not wait went out
        self._release_due = False  # releases of a burst wait (see _last_ref_gone)
        self._init_waiting(spin_us)
        self.closed = False
        self.node_dead = False
        self.blocked = False
        self.current_task: int | None = None
        self.stop_requested = False
        self.actor_id: int | None = None  # (set in an actor's process)
        self.actor_inc = 0
        self.actor_mode: str | None = None
        self._on = self._handlers()

    def _handlers(self) -> dict:
        """Opcode -> handler(msg) of the messages this process receives."""
        def reply(m):
            self._replies[m.req] = m

        def stop(m):
            self.stop_requested = True

        return {P.Obj.OP: lambda m: self.store_obj(m.oid, m.kind, m.payload),
                P.AllocOk.OP: reply, P.Reply.OP: reply, P.Stop.OP: stop,
                P.StreamItem.OP: self._stream_item,
                P.Evict.OP: lambda m: self.evict_local(m.oids, ()),
                # (an owner with no machine ran no task of its own: its values are puts)
                P.LineageAsk.OP: lambda m: self.send([P.LineageIs(o, None, None)
                                                      for o in m.oids])}

    def evict_local(self, oids, busy) -> None:
        """The node is moving these values out of the arena: forget their places, but
        for those a live view maps (or a task of ours reads: ``busy``), and say which.
        A view's Pin went out when it was made, before this answer."""
        kept, dropped = [], []
        values, mapped, refs = self._values, self._mapped, self._refs
        with self._map_lock:
            for oid in oids:
                wr = mapped.get(oid)
                if oid in busy or (wr is not None and wr() is not None):
                    kept.append(oid)
                    continue
                v = values.get(oid)
                if v is not None and v[0] == ser.ARENA:
                    del values[oid]
                    self._evicted[oid] = v[1]
                    if oid in refs and not self._not_owner(oid):
                        self._reborrowed.add(oid)  # (its value is no longer pushed here)
                self._decoded.pop(oid, None)
                self._subscribed.discard(oid)
                dropped.append(oid)
        self.send([P.Evicted(kept, dropped)])

    def _stream_item(self, m) -> None:
        """A streaming task's value: its ref joins the generator's (made before its Obj
        comes, so that the value is kept); with no generator left, it goes at once."""
        ref = ObjectRef(m.oid, owned=True) if m.oid is not None else STREAM_END
        items = self.streams.get(m.tid)
        if items is not None:
            items.append(ref)

    # ------------------------------------------------------------------ ids
    def new_ids(self, n: int) -> int:
        """Reserve ``n + 1`` consecutive ids; returns the first (a task id)."""
        with self._id_lock:
            first = self._next_id
            self._next_id = first + n + 1
        return first

    # ------------------------------------------------------------------ sending
    # Small messages (lazy Puts, Pins, ref count changes, unpins) wait in deques: their
    # append and popleft are atomic, so a finalizer or another thread can add to them at
    # any moment without a lock, and the sender drains them in front of its own frame.
    def send(self, msgs: list) -> None:
        with self._send_lock:
            self._send_locked(msgs)
        if self._pending or self._incref or self._decref or self._unpin:
            self._flush_soon()  # a finalizer added something while we held the lock

    @staticmethod
    def _drain_deque(d: collections.deque) -> list:
        out = []
        pop = d.popleft
        try:
            while True:
                out.append(pop())
        except IndexError:
            return out

    def _send_locked(self, msgs: list) -> None:
        if self.closed:
            raise exc.RaySystemError("mpray is shut down")
        if self._pending or self._unpin or self._incref or self._decref:
            # Holds go before the frame's messages, releases after them: Put/Pin/incref
            # may register what the messages refer to, and a message may create a new
            # hold (a task's args, a result's contained refs) that must be in place
            # before this process's own hold on the same object is dropped.
            pre = self._drain_deque(self._pending)
            self.pins_out = False
            if self._incref:
                pre.append(P.Refs(self._drain_deque(self._incref), ()))
            msgs[:0] = pre
            if self._decref:
                msgs.append(P.Refs((), self._drain_deque(self._decref)))
            if self._unpin:
                msgs.append(P.Unpin(self._drain_deque(self._unpin)))
        frame = P.encode(msgs)
        try:
            self._up.push(frame, wake=self._node_bell.force, deadline=self._push_deadline())
        except RingClosed as e:
            raise exc.RaySystemError(f"the mpray node (pid {self.node_pid}) stopped reading") from e
        self._node_bell.ring()

    def _push_deadline(self) -> float:
        return time.monotonic() + 60.0

    def _flush_soon(self) -> None:
        """Called from __del__/finalizers: flush now unless a send is under way (then the
        sender flushes it when it is done)."""
        if self.closed or self.hold_releases:
            return
        if not (self._incref or self._decref or self._unpin or self._pending):
            return  # (nothing to flush: the common case, without taking the lock)
        if self._send_lock.acquire(False):
            try:
                if self._incref or self._decref or self._unpin or self._pending:
                    self._send_locked([])
            except Exception:  # noqa: BLE001 - never raise into a finalizer
                pass
            finally:
                self._send_lock.release()

    # ------------------------------------------------------------------ refs
    def add_ref(self, oid: int, borrowed: bool) -> None:
        refs = self._refs
        n = refs.get(oid, 0)
        refs[oid] = n + 1
        if borrowed and n == 0:
            self._incref.append(oid)
            if not self._not_owner(oid):
                self._reborrowed.add(oid)  # our own ref came back: values are not pushed

    def remove_ref(self, oid: int) -> None:
        refs = self._refs
        n = refs.get(oid)
        if n is None:
            return
        if n > 1:
            refs[oid] = n - 1
            return
        del refs[oid]
        value = self._values.pop(oid, None)
        if self._decoded:  # (a list of refs decoded once: its refs go now)
            self._decoded.pop(oid, None)
        if self._evicted:
            self._evicted.pop(oid, None)
        self._subscribed.discard(oid)
        self._reborrowed.discard(oid)
        # A value known to be small and inline only costs the node a little memory: its
        # release rides along with the next frame.  Anything else (arena space, or a value
        # never seen here, which may hold arena space or refs to it) is released now.
        self._last_ref_gone(oid, value is None or value[0] != ser.INLINE)

    def _last_ref_gone(self, oid: int, urgent: bool) -> None:
        self._decref.append(oid)
        if len(self._decref) >= 512:
            self._flush_soon()
        elif urgent:
            now = time.monotonic()
            if now - self._urgent_sent > 0.001:  # a lone release (or a burst's first)
                self._urgent_sent = now
                self._flush_soon()
            else:  # a burst (a list of refs dropped): sent together, by the next frame
                self._release_due = True  # or the pump thread, within a few ms
                self.ensure_background_pump()

    def _unpin_later(self, oid: int) -> None:
        self._mapped.pop(oid, None)
        self._unpin.append(oid)
        self._flush_soon()

    # ------------------------------------------------------------------ receiving
    def store_obj(self, oid: int, kind: int, payload) -> None:
        """Keep a value that arrived, if anything here still wants it."""
        futs = self._keep(oid, (kind, payload))
        if futs:
            self._futures_ready(oid, futs)

    def _keep(self, oid: int, value: tuple) -> list | None:
        """Cache the value (kind, payload) if a ref, a subscription or a future wants it;
        returns the futures that wait for it (the caller resolves them, now or later)."""
        if oid in self._refs or oid in self._subscribed or oid in self._futures:
            self._values[oid] = value
            if value[0] == ser.ERROR:
                self.errors_in += 1
            return self._futures.pop(oid, None)
        return None

    def _futures_ready(self, oid: int, futs: list) -> None:
        self._resolve_futures(oid, futs)

    def _drain_frames(self, frames: list) -> None:
        on = self._on
        for f in frames:
            for m in _loads(f):  # (P.decode, inlined: every message passes here)
                op = m[0]
                w = _WRAP[op]
                on[op](_new(w, m) if type(w) is type else w(m))

    def _drain(self) -> bool:
        frames = self._down.pop_all()
        if frames:
            self._drain_frames(frames)
            return True
        return False

    def _has_data(self) -> bool:
        return self._down.has_data()

    # ------------------------------------------------------------------ objects
    def _subscribe(self, oids: Iterable[int]) -> None:
        need = [o for o in oids if o not in self._values and o not in self._subscribed]
        if need:
            self._subscribed.update(need)
            self.send([P.Subscribe(need)])

    def store_value(self, value: Any) -> tuple[int, Any, list[int]]:
        """Serialise a value, writing it into the arena when large: (kind, payload, refs)."""
        kind, payload, contained, nbytes = ser.serialize(value, self.inline_max)
        if kind == ser.INLINE:
            return kind, payload, contained
        header, raws = payload
        total, places = ser.arena_layout(header, raws)
        reply = self.request(lambda req: P.Alloc(req, total), timeout=None, lend=False)
        if reply.offset is None:
            raise exc.ObjectStoreFullError(
                f"cannot store an object of {total} bytes in the object store: "
                f"{reply.error}. Free some references, or pass a larger "
                "object_store_memory to mpray.init()")
        off = reply.offset
        try:
            ser.write_arena(self._arena_mv, off, header, raws, places)
        except BaseException:
            self.send([P.FreeRange(off)])
            raise
        return ser.ARENA, (off, len(header), places, total), contained

    def put(self, value: Any) -> int:
        kind, payload, contained = self.store_value(value)
        oid = self.new_ids(0)  # the caller wraps it in an ObjectRef, which counts it
        self._values[oid] = (kind, payload)
        msg = _put((_PUT, oid, kind, payload, contained))  # (P.Put, from its items: hot)
        if contained:
            self._send_put_with_refs(msg)
        elif kind == ser.INLINE:
            # Lazy: the node needs a small object only once its ref leaves this process,
            # and every message that could carry the ref flushes _pending first (one FIFO
            # ring), so the Put rides along with the next frame instead of a frame of its own.
            self._pending.append(msg)
            if len(self._pending) >= 512:
                self.send([])
        else:
            self.send([msg])
        return oid

    def _send_put_with_refs(self, msg: P.Record) -> None:
        """A Put of a value holding refs (an owner makes those known to the node first)."""
        self.send([msg])

    def materialize(self, oid: int, kind: int, payload) -> Any:
        """Turn a cached (kind, payload) into the user's value; raise stored errors."""
        if kind == ser.INLINE:
            return pickle.loads(payload)
        if kind == ser.ARENA:  # (a list of many refs is this big: decoded once)
            return self._arena_loads(oid, payload)
        err = pickle.loads(payload)
        if isinstance(err, exc.RayTaskError):
            raise err.as_instanceof_cause()
        raise err

    def _arena_loads(self, oid: int, payload) -> Any:
        """A value in the arena; one that is a list of refs (a task's dynamic returns,
        refs gathered for later: some thousands make a value that big) is decoded once
        while it is held here: every get returns a new list of the same refs, instead of
        making (and later dropping) as many refs again.  (Small values keep the plain
        path: one check more there costs a small get 5 %; so would a closure in
        ``materialize``, whose cells every call makes.)"""
        memo = self._decoded.get(oid)
        if memo is not None and memo[0] is payload:
            return list(memo[1])
        value = ser.loads_arena(self._arena_base(oid, payload), payload)
        if (type(value) is list and len(value) >= _MEMO_REFS
                and all(type(x) is ObjectRef for x in value)):
            self._decoded[oid] = (payload, value)  # (dropped with the last ref to oid)
            return list(value)
        return value

    def _arena_base(self, oid: int, desc) -> np.ndarray:
        """A read-only view of the object's range; pinned while any view of it lives."""
        wr = self._mapped.get(oid)
        base = wr() if wr is not None else None
        if base is None:
            off, total = desc[0], desc[3]
            with self._map_lock:
                if self._evicted and self._evicted.get(oid) is desc:
                    raise Evicted(oid)  # (the get reads it again, from the node)
                # an ndarray whose base is a (read-only) memoryview, not another ndarray:
                # views numpy derives from it keep *this* object alive, so its finalizer
                # fires when the user dropped the last view (numpy collapses
                # ndarray->ndarray base chains)
                base = np.frombuffer(self._arena_mv[off : off + total].toreadonly(), np.uint8)
                self._mapped[oid] = weakref.ref(base)
                self._pending.append(P.Pin([oid]))
            weakref.finalize(base, self._unpin_later, oid)
            # (its Pin rides the next frame to the node: before this process answers an
            # Evict, and, a worker, before it reports to an owner over the mailbox: an
            # owner answers for the places it sent there: worker_client._send_on)
            self.pins_out = True
        return base

    def _check_session(self, oids) -> None:
        if not oids or min(oids) >= self._first_id:
            return  # (the usual case, decided in C)
        for o in oids:
            if o < self._first_id and not self._not_owner(o) and o not in self._values:
                raise exc.OwnerDiedError(
                    P.id_hex(o), "this ObjectRef comes from an earlier mpray session (its "
                    "owner shut down); its value is gone")

    def get_one(self, oid: int, timeout: float | None) -> Any:
        v = self._values.get(oid)
        if v is None:
            self._await([oid], 1, timeout)
            v = self._values.get(oid)
            if v is None:  # (evicted since it came: node/spill.py)
                return self.get_one(oid, timeout)
        try:
            return self.materialize(oid, *v)
        except Evicted:
            return self.get_one(oid, timeout)

    def get(self, oids: list[int], timeout: float | None) -> list[Any]:
        values = self._values
        missing = [o for o in oids if o not in values]
        if missing:
            self._await(missing, len(oids), timeout)
            for o in missing:  # (Ray: the first error fails the get, while others wait)
                v = values.get(o)
                if v is not None and v[0] == ser.ERROR:
                    self.materialize(o, *v)
        try:
            return [self.materialize(o, *values[o]) for o in oids]
        except (Evicted, KeyError) as e:
            if type(e) is KeyError and all(o in values for o in oids):
                raise  # (not an eviction: the value's own unpickling raised it)
            return self.get(oids, timeout)  # (evicted since they came: node/spill.py)

    def _await(self, missing: list[int], n_asked: int, timeout: float | None) -> None:
        """Wait until every id in ``missing`` has its value here (or GetTimeoutError)."""
        values = self._values
        self._check_session(missing)
        own_key = self._own_key
        self._subscribe([o for o in missing if o >> P.PROC_BITS != own_key
                         or o in self._reborrowed])  # (_needs_subscription, inlined)
        deadline = None if timeout is None else time.monotonic() + timeout
        evicted = self._evicted  # (a value that came meanwhile may be evicted again:
        #                            then it is asked for, as a borrower asks)
        if len(missing) == 1:  # (a round trip: the cheapest test)
            oid = missing[0]

            def arrived() -> bool:
                return oid in values or (evicted and self._ask_again(missing, 0))
        else:
            pos = [0]
            errors = [self.errors_in]

            def arrived() -> bool:  # resumes where the last call stopped: O(n) in total
                if self.errors_in != errors[0]:  # an error came: if it is one of these,
                    errors[0] = self.errors_in  # the get fails now (see get)
                    for o in missing:
                        v = values.get(o)
                        if v is not None and v[0] == ser.ERROR:
                            return True
                i = pos[0]
                while i < len(missing) and missing[i] in values:
                    i += 1
                pos[0] = i
                if evicted and i < len(missing):
                    self._ask_again(missing, i)
                return i == len(missing)

        if not self._blocking_wait(arrived, deadline):
            n = sum(1 for o in missing if o not in values)
            raise exc.GetTimeoutError(
                f"get timed out after {timeout} s: {n} of {n_asked} objects not ready")

    def _ask_again(self, missing: list, i: int) -> bool:
        """The next value a get waits for came and was evicted before the get saw it
        (its owner's push is spent): subscribe to it and to the others like it."""
        if missing[i] in self._evicted and missing[i] not in self._subscribed:
            self._subscribe([o for o in missing[i:] if o in self._evicted])
        return False

    def _not_owner(self, oid: int) -> bool:
        return oid >> P.PROC_BITS != self._own_key  # (its rank and process are not ours)

    def _needs_subscription(self, oid: int) -> bool:
        return self._not_owner(oid) or oid in self._reborrowed

    def wait(self, oids: list[int], num_returns: int, timeout: float | None) -> list[int]:
        """The first ``num_returns`` of ``oids`` (in their order) whose values are here,
        waiting up to ``timeout`` for that many (fewer when it runs out)."""
        values, evicted = self._values, self._evicted
        self._check_session(oids)

        def ready() -> list[int]:  # (stops at num_returns: a loop of waits stays linear)
            got = []
            for o in oids:
                # (a value that went to disk is still ready: it comes back on get)
                if o in values or (evicted and o in evicted):
                    got.append(o)
                    if len(got) == num_returns:
                        break
            return got

        if timeout is not None and timeout <= 0:
            self._drain()
        elif len(ready()) < num_returns:
            own_key, reborrowed = self._own_key, self._reborrowed
            self._subscribe([o for o in oids if o not in values and o not in evicted and (
                o >> P.PROC_BITS != own_key or o in reborrowed)])  # (_needs_subscription)
            deadline = None if timeout is None else time.monotonic() + timeout
            self._blocking_wait(lambda: len(ready()) == num_returns, deadline)
        return ready()

    # ------------------------------------------------------------------ tasks
    def register_function(self, fid: int, blob: bytes) -> None:
        self.send([P.Func(fid, blob)])

    def submit_task(self, spec: P.TaskSpec, direct_ok: bool, hold) -> None:
        """Send a task (its ObjectRefs exist already): by the node, here."""
        self.send([_submit((_SUBMIT, tuple(spec)))])  # (P.Submit from its items: hot)

    def submit_call(self, spec: P.TaskSpec, hold) -> None:
        self.send([_submit((_SUBMIT, tuple(spec)))])

    def cancel(self, tid: int, force: bool, recursive: bool) -> None:
        self.send([P.Cancel(tid, force, recursive)])

    def actor_killed(self, aid: int) -> None:
        pass

    # ------------------------------------------------------------------ misc
    def close(self) -> None:
        self.closed = True
        self._bg_wake.set()
        if self._bg_running:
            try:
                self._bell.force()  # the pump thread may sleep on it: let it see `closed`
            except OSError:
                pass

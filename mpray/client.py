"""The core client: one per process (the driver and every worker).

Data flow::

    user code ──submit/put/get/wait──▶ Client ──frames──▶ up ring ──▶ node
                                          ▲                             │
        zero-copy views ◀── arena ◀───────┴──── OBJ/ALLOC_OK/REPLY ◀── down ring

The client owns the refs it creates: it keeps a local count per object id and tells the
node only about 0→1 (INCREF, for borrowed refs) and 1→0 (DECREF) transitions, batched
into the next frame it sends.  Values the node pushes (results of this process's tasks,
objects it subscribed to) are cached as (kind, payload) until the last local ref goes.

How a client waits (pumping its rings, blocking waits, futures and the background pump
thread) is the ``waiting.Waiting`` mixin.  ``ObjectRef.__del__`` can run anywhere (GC),
so it only appends to a list that is flushed with the next frame, or at once when the
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

from . import exceptions as exc
from . import protocol as P
from . import serialization as ser
from .rings import Doorbell, Ring, RingClosed
from .waiting import Waiting

class Client(Waiting):
    def __init__(
        self,
        proc: int,
        rank: int,
        up: Ring,
        down: Ring,
        my_bell: Doorbell,
        node_bell: Doorbell,
        arena,
        inline_max: int,
        node_pid: int,
        node_pidfd: int | None,
        id_start: int | None = None,
        spin_us: int = 0,
    ) -> None:
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
        self._next_id = max(base + 1, id_start or 0)
        self._first_id = self._next_id  # own ids below this are from an earlier session
        self._id_lock = threading.Lock()
        self._refs: dict[int, int] = {}
        self._values: dict[int, tuple[int, Any]] = {}
        self._subscribed: set[int] = set()
        self._reborrowed: set[int] = set()
        self._mapped: dict[int, weakref.ref] = {}
        self._pending: collections.deque = collections.deque()  # rides the next frame
        self._incref: collections.deque = collections.deque()
        self._decref: collections.deque = collections.deque()
        self._unpin: collections.deque = collections.deque()
        self._send_lock = threading.Lock()
        self._pump_lock = threading.Lock()
        self._cond = threading.Condition()
        self._replies: dict[int, Any] = {}
        self._futures: dict[int, list] = {}
        self._future_thread: threading.Thread | None = None
        self._bg_running = False
        self._bg_wake = threading.Event()
        self._fg_pump = 0.0  # when a user thread last pumped (the background one waits)
        self.exec_queue: collections.deque[tuple] = collections.deque()
        self.dropped_tasks: set[int] = set()  # worker: cancelled before they started
        self.lease_active = 0.0  # worker: when its lease last had work
        self.reclaim = False  # worker: the node wants its lease back as soon as it idles
        # set while a worker holds serialised results that contain refs it is about to
        # drop: their releases must go out after the DONE that registers the containment
        self.hold_releases = 0
        self._hold_lock = threading.Lock()
        self._driver_lock = threading.Lock()  # worker: producers of the ring to the driver
        # worker: the actor this process is (id, incarnation, "sync" | "concurrent")
        self.actor_id: int | None = None
        self.actor_inc = 0
        self.actor_mode: str | None = None
        self.drop_hook = None  # concurrent actor: cancel a call that is queued or running
        self.order_via_node = False  # worker: this task's results go the node's way
        self.actors = None  # driver: DirectActors (calls to actors); None in workers
        self.func_blobs: dict[int, bytes] = {}
        self._mailbox = None  # (mmap, ring capacity): the driver's worker->driver slots
        self._w2d: dict[int, Ring] = {}  # driver: slot -> ring it polls (worker results)
        self.direct = None  # driver: DirectTasks (leases); None in workers
        # worker: its mailbox slot's rings to/from the driver, and its current lease
        self._d2w: Ring | None = None
        self._to_driver: Ring | None = None
        self._driver_bell: Doorbell | None = None
        self.lease_epoch: int | None = None
        # A foreground wait first polls its rings for up to spin_max seconds, yielding the
        # CPU between polls: a reply that comes within that time saves the sleep and the
        # wake-up (about 20 µs on each side here).  Adaptive: after a wait longer than
        # 4 × spin_max the next one sleeps at once, so long waits cost no polling.
        self.spin_max = spin_us * 1e-6
        self._spin = self.spin_max
        self.closed = False
        self.node_dead = False
        self.blocked = False
        self.current_task: int | None = None
        self.stop_requested = False

    # ------------------------------------------------------------------ ids
    def new_ids(self, n: int) -> int:
        """Reserve ``n + 1`` consecutive ids; returns the first (a task id)."""
        with self._id_lock:
            first = self._next_id
            self._next_id = first + n + 1
        return first

    # ------------------------------------------------------------------ sending
    # Small messages (lazy PUTs, PINs, ref count changes, unpins) wait in deques: their
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
            # Holds go before the frame's messages, releases after them: PUT/PIN/INCREF
            # may register what the messages refer to, and a message may create a new
            # hold (a task's args, a result's contained refs) that must be in place
            # before this process's own hold on the same object is dropped.
            pre = self._drain_deque(self._pending)
            if self._incref:
                pre.append((P.REFS, self._drain_deque(self._incref), ()))
            msgs[:0] = pre
            if self._decref:
                msgs.append((P.REFS, (), self._drain_deque(self._decref)))
            if self._unpin:
                msgs.append((P.UNPIN, self._drain_deque(self._unpin)))
        frame = pickle.dumps(msgs, protocol=5)
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
        if self._send_lock.acquire(False):
            try:
                if self._incref or self._decref or self._unpin or self._pending:
                    self._send_locked([])
            except Exception:  # noqa: BLE001 - never raise into a finalizer
                pass
            finally:
                self._send_lock.release()

    def hold(self, delta: int) -> None:
        """Hold back releases while results holding refs are on their way (counted: the
        threads of a concurrent actor report at the same time)."""
        if self.actor_mode == "concurrent":
            with self._hold_lock:
                self.hold_releases += delta
        else:
            self.hold_releases += delta

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
        d = self.direct
        if d is not None and d.forget(oid):
            return  # the node never knew it, or will be told once its value arrives
        self._subscribed.discard(oid)
        self._reborrowed.discard(oid)
        self._decref.append(oid)
        # A value known to be small and inline only costs the node a little memory: its
        # release rides along with the next frame.  Anything else (arena space, or a value
        # never seen here, which may hold arena space or refs to it) is released now.
        if value is None or value[0] != ser.INLINE or len(self._decref) >= 512:
            self._flush_soon()

    def _unpin_later(self, oid: int) -> None:
        self._mapped.pop(oid, None)
        self._unpin.append(oid)
        self._flush_soon()

    # ------------------------------------------------------------------ receiving
    def _handle(self, msg: tuple) -> None:
        op = msg[0]
        if op == P.OBJ:
            oid = msg[1]
            self.store_obj(oid, msg[2], msg[3])
            d = self.direct
            if d is not None and (d.pending or d.flagged or d.seeding or d.dropped) \
                    and d.on_node_value(oid):
                self._decref.append(oid)  # its ref died while the task ran
        elif op == P.EXEC:
            if msg[3] is not None:  # keep the function even if this EXEC is bounced
                self.func_blobs[msg[2]] = msg[3]
            direct = len(msg) > 11
            if direct and msg[11] != self.lease_epoch and not self.blocked:
                # the node's LEASE for it may be in our down ring, not read yet
                self._drain_frames(self._down.pop_all())
            if direct and (self.blocked or msg[11] != self.lease_epoch):
                self.send_driver([(P.RETURN_D, [msg[1]], self.blocked)])
            elif self.blocked:  # never queue work behind a task that waits: hand it back
                self._pending.append((P.RETURN, [msg[1]]))
                self._flush_soon()
            else:
                self.exec_queue.append(msg)
        elif op == P.ACALL:
            if msg[9] == self.actor_id and msg[10] == self.actor_inc:
                self.exec_queue.append(msg)  # (else meant for an earlier process in this slot)
        elif op == P.ADONE_D:
            self.actors.on_done(msg[1], msg[2])
        elif op == P.ACTOR:
            self.actors.on_update(*msg[1:])
        elif op == P.ANODE_DONE:
            self.actors.on_node_done(msg[1], msg[2])
        elif op == P.ACREATE:
            self.exec_queue.append(msg)
        elif op == P.DROP:
            self.dropped_tasks.add(msg[1])
            if self.drop_hook is not None:
                self.drop_hook(msg[1])
        elif op == P.LEASE:
            if self.is_worker:
                self.lease_epoch = msg[1]
                self.lease_active = time.monotonic()
                self.reclaim = False
            else:
                self.direct.on_lease(msg[1], msg[2], msg[3], msg[4], msg[5])
        elif op == P.RECLAIM:
            self.reclaim = True
        elif op == P.NO_LEASE:
            self.direct.on_no_lease(msg[1])
        elif op == P.DONE_D:
            self.direct.on_done(msg[1], msg[2], msg[3], msg[4], msg[5])
        elif op == P.RETURN_D:
            self.direct.on_returned(msg[1], msg[2])
        elif op == P.EXPIRED:
            self.direct.on_expired(msg[1], msg[2])
        elif op == P.RESUMED:
            self.direct.on_resumed(msg[1], msg[2])
        elif op == P.LEASE_LOST:
            self.direct.on_lost(msg[1], msg[2], msg[3])
        elif op == P.ALLOC_OK or op == P.REPLY:
            self._replies[msg[1]] = msg
        elif op == P.SLOT:
            from .direct import slot_rings

            mem, cap = self._mailbox
            w2d, d2w = slot_rings(mem, msg[1], cap)
            d2w.release()
            self._w2d[msg[1]] = w2d
        elif op == P.SLOT_FREE:
            ring = self._w2d.pop(msg[1], None)
            if ring is not None:
                self._drain_frames(ring.pop_all(), True)
                ring.release()
        elif op == P.STOP:
            self.stop_requested = True

    def store_obj(self, oid: int, kind: int, payload) -> None:
        """Keep a value that arrived, if anything here still wants it."""
        if oid in self._refs or oid in self._subscribed or oid in self._futures:
            self._values[oid] = (kind, payload)
            futs = self._futures.pop(oid, None)
            if futs:
                self._resolve_futures(oid, futs)

    def _drain_frames(self, frames: list, from_worker: bool = False) -> None:
        handle = self._handle
        d = self.direct
        for f in frames:
            for m in pickle.loads(f):
                if from_worker and m[0] == P.OBJ and d is not None and m[1] in d.pending:
                    d.flagged.discard(m[1])
                    # a leased task's value, straight from its worker: the node never saw
                    # it (results of the node's tasks come this way too, registered)
                    d.on_direct_value(m[1], m[2], m[3], deliver=True)
                else:
                    handle(m)

    def _drain(self) -> bool:
        got = False
        if self._w2d:
            for ring in list(self._w2d.values()):
                frames = ring.pop_all()
                if frames:
                    got = True
                    self._drain_frames(frames, True)
        frames = self._down.pop_all()  # first: a LEASE must be seen before its EXECs
        if frames:
            got = True
            self._drain_frames(frames)
        if self._d2w is not None:
            frames = self._d2w.pop_all()
            if frames:
                got = True
                self._drain_frames(frames)
        return got

    def _has_data(self) -> bool:
        if self._down.has_data():
            return True
        if self._d2w is not None and self._d2w.has_data():
            return True
        for ring in self._w2d.values():
            if ring.has_data():
                return True
        return False

    def send_driver(self, msgs: list) -> None:
        """Worker: a frame on this worker's mailbox ring to the driver (never full for
        long: the driver drains it whenever it waits, and holds few tasks per lease)."""
        frame = pickle.dumps(msgs, protocol=5)
        ring = self._to_driver
        with self._driver_lock:
            k = ring.try_push(frame)
            if k != len(frame):  # full: wait for room for the rest (fragments continue)
                ring.push(memoryview(frame)[max(k, 0):], wake=self._driver_bell.force,
                          deadline=self._push_deadline())
        self._driver_bell.ring()

    def publish(self, oids) -> None:
        """Driver: make objects only this process knows of known to the node, before a
        message that refers to them goes out (PUT for values here, PROMISE for results of
        direct tasks still running)."""
        d = self.direct
        if d is None:
            return
        for oid in oids:
            if oid in d.local_only:
                d.local_only.discard(oid)
                v = self._values.get(oid)
                if v is not None:
                    self._pending.append((P.PUT, oid, v[0], v[1], ()))
            elif oid in d.pending and oid not in d.promised:
                d.promised.add(oid)
                self._pending.append((P.PROMISE, oid))

    # ------------------------------------------------------------------ objects
    def _subscribe(self, oids: Iterable[int]) -> None:
        need = [o for o in oids if o not in self._values and o not in self._subscribed]
        if need:
            self._subscribed.update(need)
            self.send([(P.SUBSCRIBE, need)])

    def store_value(self, value: Any) -> tuple[int, Any, list[int]]:
        """Serialise a value, writing it into the arena when large: (kind, payload, refs)."""
        kind, payload, contained, nbytes = ser.serialize(value, self.inline_max)
        if kind == ser.INLINE:
            return kind, payload, contained
        header, raws = payload
        total, places = ser.arena_layout(header, raws)
        reply = self.request(lambda req: (P.ALLOC, req, total), timeout=None)
        off, err = reply[2], reply[3]
        if off is None:
            raise exc.ObjectStoreFullError(
                f"cannot store an object of {total} bytes in the object store: {err}. "
                "Free some references, or pass a larger object_store_memory to mpray.init()"
            )
        try:
            ser.write_arena(self._arena_mv, off, header, raws, places)
        except BaseException:
            self.send([(P.FREE_RANGE, off)])
            raise
        return ser.ARENA, (off, len(header), places, total), contained

    def put(self, value: Any) -> int:
        kind, payload, contained = self.store_value(value)
        oid = self.new_ids(0)  # the caller wraps it in an ObjectRef, which counts it
        self._values[oid] = (kind, payload)
        msg = (P.PUT, oid, kind, payload, contained)
        if contained and self.direct is not None:
            self.publish(contained)
        if kind == ser.INLINE:
            # Lazy: the node needs a small object only once its ref leaves this process,
            # and every message that could carry the ref flushes _pending first (one FIFO
            # ring), so the PUT rides along with the next frame instead of a frame of its own.
            self._pending.append(msg)
            if len(self._pending) >= 512:
                self.send([])
        else:
            self.send([msg])
        return oid

    def materialize(self, oid: int, kind: int, payload) -> Any:
        """Turn a cached (kind, payload) into the user's value; raise stored errors."""
        if kind == ser.INLINE:
            return pickle.loads(payload)
        if kind == ser.ARENA:
            return ser.loads_arena(self._arena_base(oid, payload), payload)
        err = pickle.loads(payload)
        if isinstance(err, exc.RayTaskError):
            raise err.as_instanceof_cause()
        raise err

    def _arena_base(self, oid: int, desc) -> np.ndarray:
        """A read-only view of the object's range; pinned while any view of it lives."""
        wr = self._mapped.get(oid)
        base = wr() if wr is not None else None
        if base is None:
            off, total = desc[0], desc[3]
            # an ndarray whose base is a (read-only) memoryview, not another ndarray: views
            # numpy derives from it keep *this* object alive, so its finalizer fires when
            # the user dropped the last view (numpy collapses ndarray->ndarray base chains)
            base = np.frombuffer(self._arena_mv[off : off + total].toreadonly(), np.uint8)
            self._mapped[oid] = weakref.ref(base)
            self._pending.append((P.PIN, [oid]))
            weakref.finalize(base, self._unpin_later, oid)
        return base

    def _check_session(self, oids) -> None:
        for o in oids:
            if o < self._first_id and not self._not_owner(o) and o not in self._values:
                raise exc.OwnerDiedError(
                    P.id_hex(o), "this ObjectRef comes from an earlier mpray session (its "
                    "owner shut down); its value is gone")

    def get(self, oids: list[int], timeout: float | None) -> list[Any]:
        values = self._values
        missing = [o for o in oids if o not in values]
        if missing:
            self._check_session(missing)
            self._subscribe([o for o in missing if self._needs_subscription(o)])
            deadline = None if timeout is None else time.monotonic() + timeout
            pos = [0]

            def arrived() -> bool:  # resumes where the last call stopped: O(n) in total
                i = pos[0]
                while i < len(missing) and missing[i] in values:
                    i += 1
                pos[0] = i
                return i == len(missing)

            if not self._blocking_wait(arrived, deadline):
                n = sum(1 for o in missing if o not in values)
                raise exc.GetTimeoutError(
                    f"get timed out after {timeout} s: {n} of {len(oids)} objects not ready"
                )
        return [self.materialize(o, *values[o]) for o in oids]

    def _not_owner(self, oid: int) -> bool:
        return P.id_proc(oid) != self.proc or P.id_rank(oid) != self.rank

    def _needs_subscription(self, oid: int) -> bool:
        return self._not_owner(oid) or oid in self._reborrowed

    def wait(self, oids: list[int], num_returns: int, timeout: float | None) -> set[int]:
        values = self._values
        self._check_session(oids)
        self._subscribe([o for o in oids if o not in values and self._needs_subscription(o)])
        deadline = None if timeout is None else time.monotonic() + timeout

        def enough() -> bool:
            return sum(1 for o in oids if o in values) >= num_returns

        if timeout is None or timeout > 0:
            self._blocking_wait(enough, deadline)
        else:
            self._drain()
        return {o for o in oids if o in values}

    # ------------------------------------------------------------------ misc
    def close(self) -> None:
        self.closed = True
        self._bg_wake.set()
        if self._bg_running:
            try:
                self._bell.force()  # the pump thread may sleep on it: let it see `closed`
            except OSError:
                pass

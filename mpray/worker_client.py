"""A worker's I/O shell: the client of a process that runs tasks (and maybe is an actor).

Data flow::

    node   ── down ring: Exec, ACreate, ACall, Drop, Leased, Reclaim, Obj… ─┐
    driver ── d2w ring (its mailbox slot): Exec (leased), ACall, Drop ─────┴─▶ exec_queue
    worker ── up ring: Done, Blocked, Return, LeaseEnd, PutFor… ─▶ node
           ── w2d ring: Obj, DoneD, ADoneD, ReturnD, Expired, Resumed ─▶ driver

A task that waits in ``get``/``wait`` tells the node (``Blocked``: its CPU is lent) and
hands back the tasks queued behind it: the node's (``Blocked.returned``) and the
driver's (``ReturnD``, which pauses that lease until ``Resumed``).  An actor's calls
stay queued while one waits (order), and a sync actor lends its CPU.
"""

from __future__ import annotations

import collections
import threading
import time

from . import protocol as P
from .client import Client


class WorkerClient(Client):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.exec_queue: collections.deque = collections.deque()
        self.dropped_tasks: set[int] = set()  # cancelled before they started
        self.lease_active = 0.0  # when its lease last had work
        self.reclaim = False  # the node wants its lease back as soon as it idles
        self.lease_epoch: int | None = None
        self._hold_lock = threading.Lock()
        self._driver_lock = threading.Lock()  # producers of the ring to the driver
        self.drop_hook = None  # concurrent actor: cancel a call that is queued or running
        self.order_via_node = False  # this task's results go the node's way
        # its mailbox slot's rings to/from the driver (None: no slot)
        self._d2w = None
        self._to_driver = None
        self._driver_bell = None

    def _handlers(self) -> dict:
        on = super()._handlers()
        queue = self.exec_queue_append
        on[P.Exec.OP] = self._on_exec
        on[P.ACall.OP] = self._on_acall
        on[P.ACreate.OP] = queue
        on[P.Drop.OP] = self._on_drop
        on[P.Leased.OP] = self._on_leased
        on[P.Reclaim.OP] = self._on_reclaim
        return on

    def exec_queue_append(self, m) -> None:
        self.exec_queue.append(m)

    def _on_exec(self, m) -> None:
        if m.fblob is not None:  # keep the function even if this Exec is bounced
            self.func_blobs[m.fid] = m.fblob
        leased = m.epoch is not None
        if leased and m.epoch != self.lease_epoch and not self.blocked:
            # the node's Leased for it may be in our down ring, not read yet
            self._drain_frames(self._down.pop_all())
        if leased and (self.blocked or m.epoch != self.lease_epoch):
            self.send_driver([P.ReturnD(self.proc, [m.tid], self.blocked)])
        elif self.blocked:  # never queue work behind a task that waits: hand it back
            self._pending.append(P.Return([m.tid]))
            self._flush_soon()
        else:
            self.exec_queue.append(m)

    def _on_acall(self, m) -> None:
        if m.aid == self.actor_id and m.incarnation == self.actor_inc:
            self.exec_queue.append(m)  # (else meant for an earlier process in this slot)

    def _on_drop(self, m) -> None:
        self.dropped_tasks.add(m.tid)
        if self.drop_hook is not None:
            self.drop_hook(m.tid)

    def _on_leased(self, m) -> None:
        self.lease_epoch = m.epoch
        self.lease_active = time.monotonic()
        self.reclaim = False

    def _on_reclaim(self, m) -> None:
        self.reclaim = True

    def hold(self, delta: int) -> None:
        """Hold back releases while results holding refs are on their way (counted: the
        threads of a concurrent actor report at the same time)."""
        if self.actor_mode == "concurrent":
            with self._hold_lock:
                self.hold_releases += delta
        else:
            self.hold_releases += delta

    # ------------------------------------------------------------------ the driver's ring
    def send_driver(self, msgs: list) -> None:
        """A frame on this worker's mailbox ring to the driver (never full for long: the
        driver drains it whenever it waits, and holds few tasks per lease)."""
        frame = P.encode(msgs)
        ring = self._to_driver
        with self._driver_lock:
            k = ring.try_push(frame)
            if k != len(frame):  # full: wait for room for the rest (fragments continue)
                ring.push(memoryview(frame)[max(k, 0):], wake=self._driver_bell.force,
                          deadline=self._push_deadline())
        self._driver_bell.ring()

    def try_send_driver(self, msgs: list) -> bool:
        """The same, if the whole frame fits now (never blocks)."""
        frame = P.encode(msgs)
        ring = self._to_driver
        with self._driver_lock:
            if ring.free_bytes() < len(frame) + 64 or len(frame) > ring._max_frag:
                return False
            if ring.try_push(frame) != len(frame):
                return False
        self._driver_bell.ring()
        return True

    def _drain(self) -> bool:
        got = False
        frames = self._down.pop_all()  # first: a Leased must be seen before its Execs
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
        return self._down.has_data() or (self._d2w is not None and self._d2w.has_data())

    # ------------------------------------------------------------------ waiting
    def _blocking_wait(self, pred, deadline) -> bool:
        if pred():
            return True
        if self.actor_mode is not None:
            return self._actor_blocking_wait(pred, deadline)
        if self.blocked or self.current_task is None:
            return self.wait_until(pred, deadline)
        self.blocked = True
        self._drain()
        # queued tasks must not wait behind one that waits: hand them all back
        mine = [m.tid for m in self.exec_queue if m.epoch is None]
        leased = [m.tid for m in self.exec_queue if m.epoch is not None]
        self.exec_queue.clear()
        epoch = self.lease_epoch
        if epoch is not None:  # the driver holds back our lease's work meanwhile
            self.send_driver([P.ReturnD(self.proc, leased, True)])
        self.send([P.Blocked(mine)])
        try:
            return self.wait_until(pred, deadline)
        finally:
            self.blocked = False
            self.send([P.Unblocked()])
            if epoch is not None and epoch == self.lease_epoch:
                self.send_driver([P.Resumed(self.proc, epoch)])

    def _actor_blocking_wait(self, pred, deadline) -> bool:
        """An actor waits: its calls stay queued (order), a sync actor lends its CPU."""
        if self.actor_mode != "sync" or self.blocked or self.current_task is None:
            return self.wait_until(pred, deadline)
        self.blocked = True
        self.send([P.Blocked([])])
        try:
            return self.wait_until(pred, deadline)
        finally:
            self.blocked = False
            self.send([P.Unblocked()])

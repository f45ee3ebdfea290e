"""A worker's client: the process that runs tasks, may be leased, and owns what it submits.

Data flow::

    node   ── down ring: Exec, ACreate, ACall, Drop, Leased, Reclaim, Obj… ─┐
    driver ── d2w ring (its mailbox slot): Exec (leased), ACall, Drop ─────┤─▶ exec_queue
    owner  ── o2w ring of a lease channel: Exec, Drop (leased by a worker) ┘
    worker ── up ring: Done, Blocked, Return, LeaseEnd, PutFor… ─▶ node
           ── the lease's answer ring (w2d to the driver, w2o of a channel to a worker):
              DoneD, ReturnD, Expired, Resumed ─▶ its owner; ADoneD ─▶ the driver
    as an owner (nested tasks): its leases' w2o rings ─▶ owner machine (owner_shell)

A task that waits in ``get``/``wait`` tells the node (``Blocked``: its CPU is lent) and
hands back the tasks queued behind it: the node's (``Blocked.returned``) and its lease
owner's (``ReturnD``, which pauses that lease until ``Resumed``).  An actor's calls
stay queued while one waits (order), and a sync actor lends its CPU.

A worker with a mailbox slot is an owner too (Ray's ownership: every process owns what
it submits), from its first submitted task on: its nested tasks go to workers it leases,
through lease channels the node lends (``mailbox.channel_rings``), exactly as the
driver's go to its leases.
"""

from __future__ import annotations

import collections
import pickle
import threading
import time

from .. import protocol as P
from .client import Client
from ..transport.mailbox import channel_rings, slot_bell
from .machine import Owner
from .shell import OwnerShell

_dumps = pickle.dumps
_LENT, _RUNNING = P.Lending(True), P.Lending(False)


class WorkerClient(OwnerShell, Client):
    def __init__(self, *args, setup=None, slot=None, mailbox_rings=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.exec_queue: collections.deque = collections.deque()
        self.dropped_tasks: set[int] = set()  # cancelled before they started
        self.lease_active = 0.0  # when its lease last had work
        self.reclaim_epoch: int | None = None  # the lease the node wants back when idle
        self.lease_epoch: int | None = None
        self._hold_lock = threading.Lock()
        self._driver_lock = threading.Lock()  # this process's producers of its rings to owners
        self.drop_hook = None  # concurrent actor: cancel a call that is queued or running
        self.order_via_node = False  # this task's results go the node's way
        self.stream_taken: dict[int, int] = {}  # streaming task -> values its owner took
        self.streamed: set[int] = set()  # calls that streamed: their ends go by the node
        self._setup = setup
        # its mailbox slot's rings to/from the driver (None: no slot)
        self._to_driver, self._d2w = mailbox_rings or (None, None)
        self._driver_bell = setup.driver_bell if setup is not None else None
        self._driver_out = (self._to_driver, self._driver_bell)  # (ring, bell) to the driver
        # the lease it serves: where its Execs come from, where its answers go
        self._lease_in = None
        self._lease_out: tuple | None = None  # (ring, bell)
        self._lease_rings: tuple = ()  # a channel's rings, released when the lease ends
        self.lease_owner = 0
        self._reply_to: tuple | None = None  # (ring, bell) of the ring being drained
        # its own leases (as an owner): channel -> w2o ring (and in _out: (o2w ring, bell))
        self._w2o: dict[int, object] = {}
        # with a mailbox slot it becomes an owner when it first submits a task (most
        # workers never do: their start does not pay for the machine)
        self._counts_cpu = False  # (its owner counts the CPU it holds: _become_owner)
        self._may_own = bool(setup is not None and slot is not None and setup.channel_count
                             and setup.lease_depth)
        self._init_owner(None, setup.mailbox if setup is not None else None,
                         setup.mailbox_ring_bytes if setup is not None else 0)

    def _handlers(self) -> dict:
        on = super()._handlers()
        on[P.Exec.OP] = self._on_exec
        on[P.ACall.OP] = self._on_acall
        on[P.ACreate.OP] = self.exec_queue_append
        on[P.Drop.OP] = self._on_drop
        on[P.Leased.OP] = self._on_leased
        on[P.LeaseRevoked.OP] = self._on_revoked
        on[P.Reclaim.OP] = self._on_reclaim
        on[P.Consumed.OP] = self._on_consumed
        return on

    def _on_consumed(self, m) -> None:
        """The owner of the streaming task running here took that many of its values."""
        if m.tid in self.stream_taken:
            self.stream_taken[m.tid] = m.consumed

    def submit_task(self, spec: P.TaskSpec, direct_ok: bool, hold) -> None:
        if self.owner is None and self._may_own:
            self._become_owner()
        super().submit_task(spec, direct_ok, hold)

    def _become_owner(self) -> None:
        with self._owner_lock:  # (the threads of a concurrent actor may race here)
            if self.owner is not None:
                return
            st = self._setup
            self.owner = Owner(self.proc, self.rank, self._values, max_leases=st.max_leases,
                               depth=st.lease_depth, ring_cap=st.mailbox_ring_bytes,
                               mailbox=True, spill_long=st.spill_long, direct_calls=False,
                               first_spread=st.first_spread,
                               max_lineage_bytes=st.max_lineage_bytes)
            self.owner.blobs = self.func_blobs  # (functions registered before: see
            #                                      OwnerShell.register_function)
            # (a task's worker holds a CPU while it runs; an actor's, none to count on;
            # under MPI a task flagged the node's way may run on another rank's CPU)
            self._counts_cpu = (self.actor_mode is None and not self.blocked
                                and st.agent_rings is None)
            self.owner.own_cpu = self._counts_cpu
            # (then its messages' handlers: the pumping thread may read them at once)
            self._owner_handlers(self._on)
            self._on[P.LeaseGrant.OP] = self._on_lease_grant

    def exec_queue_append(self, m) -> None:
        self.exec_queue.append(m)

    # ------------------------------------------------------------------ being leased
    def _on_exec(self, m) -> None:
        if m.fblob is not None:  # keep the function even if this Exec is bounced
            self.func_blobs[m.fid] = m.fblob
        leased = m.epoch is not None
        if leased and m.epoch != self.lease_epoch and not self.blocked:
            # the node's Leased for it may be in our down ring, not read yet
            self._drain_frames(self._down.pop_all())
        if leased and (self.blocked or m.epoch != self.lease_epoch):
            # (back to whoever sent it: the ring it came on)
            self._send_on(self._reply_to,
                          [P.ReturnD(self.proc, m.epoch, [m.tid], self.blocked)])
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
        self._close_lease()
        self.lease_epoch = m.epoch
        self.lease_active = time.monotonic()
        self.lease_owner = m.owner
        if m.channel is None:  # the driver's: its slot's rings
            self._lease_in = self._d2w
            self._lease_out = self._driver_out
        else:  # a worker's: a lease channel, waking the owner through its slot's bell
            st = self._setup
            o2w, w2o = channel_rings(st.channels, m.channel, st.mailbox_ring_bytes)
            self._lease_rings = (o2w, w2o)
            self._lease_in = o2w
            self._lease_out = (w2o, slot_bell(st.mailbox, m.owner_slot,
                                              st.mailbox_ring_bytes,
                                              st.slot_efds[m.owner_slot]))

    def _on_revoked(self, m) -> None:
        """The owner died: its queued tasks never run, and the lease ends now."""
        if m.epoch != self.lease_epoch:
            return
        keep = [x for x in self.exec_queue if getattr(x, "epoch", None) != m.epoch]
        self.exec_queue.clear()  # (in place: the serving loop holds this deque)
        self.exec_queue.extend(keep)
        self.lease_epoch = None
        self._close_lease()
        self.send([P.LeaseEnd(m.epoch)])

    def end_lease(self, wid: int) -> None:
        """Give an idle lease back: to the node (its CPU) and to its owner."""
        epoch, self.lease_epoch = self.lease_epoch, None
        self.send([P.LeaseEnd(epoch)])
        self.send_owner([P.Expired(wid, epoch)])
        self._close_lease()

    def _close_lease(self) -> None:
        for ring in self._lease_rings:
            ring.release()
        self._lease_rings = ()
        self._lease_in = None
        self._lease_out = None

    def _on_reclaim(self, m) -> None:
        self.reclaim_epoch = m.epoch  # (compared with the lease's: see ``reclaim``)

    @property
    def reclaim(self) -> bool:
        """The node wants the current lease back as soon as it idles."""
        return self.reclaim_epoch is not None and self.reclaim_epoch == self.lease_epoch

    def hold(self, delta: int) -> None:
        """Hold back releases while results holding refs are on their way (counted: the
        threads of a concurrent actor report at the same time)."""
        if self.actor_mode == "concurrent":
            with self._hold_lock:
                self.hold_releases += delta
        else:
            self.hold_releases += delta

    def publish_contained(self, oids) -> None:
        """Refs in a result are about to leave: objects this process owns are made known
        to the node first (now, while the refs are alive here)."""
        if self.owner is not None and oids:
            self.post_now(P.Publish(tuple(oids)))

    # ------------------------------------------------------------------ answers
    def send_owner(self, msgs: list) -> None:
        """A frame to the owner of the current lease (dropped if it has none: its owner
        died and the lease was revoked)."""
        if self._lease_out is not None:
            self._send_on(self._lease_out, msgs)

    def send_driver(self, msgs: list) -> None:
        """A frame on this worker's mailbox ring to the driver (direct actor calls)."""
        self._send_on(self._driver_out, msgs)

    def _send_on(self, out: tuple | None, msgs: list) -> None:
        """Never full for long: owners drain their rings whenever they wait, and hold
        few tasks per lease."""
        if out is None:
            return
        if self.pins_out:  # views this task mapped: the node knows before the owner does
            self.pins_out = False
            self.send([])
        ring, bell = out
        frame = _dumps([tuple(m) for m in msgs], 5)  # (P.encode, inlined: once a task)
        with self._driver_lock:
            k = ring.try_push(frame)
            if k != len(frame):  # full: wait for room for the rest (fragments continue)
                ring.push(memoryview(frame)[max(k, 0):], wake=bell.force,
                          deadline=self._push_deadline())
        bell.ring()

    def try_send_driver(self, msgs: list) -> bool:
        """A frame to the driver, if the whole frame fits now (never blocks)."""
        frame = P.encode(msgs)
        ring = self._to_driver
        with self._driver_lock:
            if ring.free_bytes() < len(frame) + 64 or len(frame) > ring._max_frag:
                return False
            if ring.try_push(frame) != len(frame):
                return False
        self._driver_bell.ring()
        return True

    # ------------------------------------------------------------------ as an owner
    def _on_lease_grant(self, m) -> None:
        """One of its nested tasks' workers is its lease now: poll that channel."""
        if m.channel is not None:
            st = self._setup
            o2w, w2o = channel_rings(st.channels, m.channel, st.mailbox_ring_bytes)
            self._w2o[m.channel] = w2o
            self._out[m.channel] = (o2w, slot_bell(st.mailbox, m.slot, st.mailbox_ring_bytes,
                                                   st.slot_efds[m.slot]))
        self._events.append(m)

    def _ring_out(self, channel: int) -> tuple:
        return self._out[channel]

    def _channel_done(self, channel: int) -> None:
        """This owner is done with one of its leases' channels: stop using its rings."""
        w2o = self._w2o.pop(channel, None)
        o2w = self._out.pop(channel, None)
        if w2o is not None:
            w2o.release()
        if o2w is not None:
            o2w[0].release()

    # ------------------------------------------------------------------ rings
    def _drain(self) -> bool:
        got = False
        frames = self._down.pop_all()  # first: a Leased must be seen before its Execs
        if frames:
            got = True
            self._drain_frames(frames)
        if self._d2w is not None:  # (always: a stale Exec of an old lease is bounced)
            frames = self._d2w.pop_all()
            if frames:
                got = True
                self._reply_to = self._driver_out
                self._drain_frames(frames)
        lease_in = self._lease_in
        if lease_in is not None and lease_in is not self._d2w:
            frames = lease_in.pop_all()
            if frames:
                got = True
                self._reply_to = self._lease_out
                self._drain_frames(frames)
        if self._w2o:
            for ring in list(self._w2o.values()):
                frames = ring.pop_all()
                if frames:
                    got = True
                    self._drain_frames(frames)
        if (self._events or self._gone) and self.owner is not None:
            self.run_owner()
        return got

    def _has_data(self) -> bool:
        if self._down.has_data() or (self._d2w is not None and self._d2w.has_data()):
            return True
        lease_in = self._lease_in
        if lease_in is not None and lease_in.has_data():
            return True
        for ring in self._w2o.values():
            if ring.has_data():
                return True
        return False

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
        if epoch is not None:  # its owner holds back the lease's work meanwhile
            self.send_owner([P.ReturnD(self.proc, epoch, leased, True)])
        self.send([P.Blocked(mine)])
        counts = self.owner is not None and self._counts_cpu
        if counts:  # (after Blocked: the CPU is lent when its task comes)
            self.post(_LENT)
        try:
            return self.wait_until(pred, deadline)
        finally:
            self.blocked = False
            self.send([P.Unblocked()])
            if counts:
                self.post(_RUNNING)
            if epoch is not None and epoch == self.lease_epoch:
                self.send_owner([P.Resumed(self.proc, epoch)])

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

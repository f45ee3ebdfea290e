"""The driver's I/O shell around its owner machine (``owner.Owner``).

Data flow::

    user threads ─ submit / cancel / ref gone ─┐
    pump (rings: node, every mailbox slot) ────┴─▶ events ─▶ Owner.handle ─▶ instructions
                                                                        │
        ToNode ─▶ up ring  ToSlot ─▶ a slot's d2w ring + bell  Deliver ─▶ value cache,
        Release ─▶ decref  Signal / CancelWord ─▶ a leased worker       futures

One thread at a time runs the machine, whichever holds ``_owner_lock``; other threads
(and finalizers on the same thread) only append their events to a deque, and the thread
that holds the lock handles them before it lets go (then looks once more, so none is
left behind).  This is the rule of CPython's ``concurrent/futures/process.py`` (one
thread owns the state, others post to it) without a thread switch on the hot path:
an uncontended submit runs the machine on the submitting thread.  Futures are resolved
after the lock is released, since their callbacks may call into mpray again.
"""

from __future__ import annotations

import collections
import os
import pickle
import threading

from . import protocol as P
from .client import Client
from .mailbox import cancel_word, slot_bell, slot_rings
from .owner import Owner
from .owner_actors import resolve

# messages the owner machine decides on (from the node, or from a worker's ring)
_ToSlot, _ToNode, _RefGone = P.ToSlot, P.ToNode, P.RefGone
_submit_task = P.SubmitTask.from_items
_new = tuple.__new__
_dumps = pickle.dumps
_OWNER_OPS = (P.LeaseGrant, P.NoLease, P.LeaseLost, P.ActorUpdate, P.ANodeDone, P.DoneD,
              P.ReturnD, P.Expired, P.Resumed, P.ADoneD)


class DriverClient(Client):
    def __init__(self, *args, mailbox=None, mailbox_cap: int = 0, slot_efds=(),
                 max_leases: int = 1, lease_depth: int = 0, spill_long: float = 0.0,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._mailbox = mailbox
        self._cap = mailbox_cap
        self._slot_efds = list(slot_efds)
        self._w2d: dict[int, object] = {}  # slot -> ring it polls (worker -> driver)
        self._d2w: dict[int, tuple] = {}  # slot -> (ring, bell) to the worker there
        self.owner = Owner(self.proc, self.rank, self._values, max_leases=max_leases,
                           depth=lease_depth or 1, ring_cap=mailbox_cap or (1 << 18),
                           mailbox=bool(mailbox is not None and lease_depth),
                           spill_long=spill_long)
        self._events: collections.deque = collections.deque()
        self._owner_lock = threading.Lock()
        self._to_resolve: list = []  # (oid, futures) whose values came meanwhile
        self._apply_on = {
            P.ToNode: None, P.ToSlot: self._to_slot, P.Deliver: self._deliver,
            P.Release: self._release, P.Signal: self._signal, P.CancelWord: self._word,
        }

    def _handlers(self) -> dict:
        on = super()._handlers()
        post = self._post_msg
        for cls in _OWNER_OPS:
            on[cls.OP] = post
        on[P.Obj.OP] = post
        on[P.Slot.OP] = self._on_slot
        on[P.SlotFree.OP] = self._on_slot_free
        return on

    # ------------------------------------------------------------------ the machine
    def _post_msg(self, m) -> None:
        self._events.append(m)

    def post(self, ev) -> None:
        """Hand an event to the owner machine: run it now, or, when another thread runs
        the machine, leave it to that thread."""
        lock = self._owner_lock
        if lock.acquire(False):
            try:
                if self._events:  # (earlier ones first: deferred RefGones, say)
                    self._run_events()
                self._apply(self.owner.handle(ev))
                if self._events:
                    self._run_events()
            finally:
                lock.release()
            if self._events or self._to_resolve:
                self.run_owner()  # (appended while we held the lock; futures to resolve)
        else:
            self._events.append(ev)
            self.run_owner()

    def run_owner(self) -> None:
        events = self._events
        while True:
            if events:
                if not self._owner_lock.acquire(False):
                    return  # the thread that holds it handles what we appended
                try:
                    self._run_events()
                finally:
                    self._owner_lock.release()
            if self._to_resolve:
                self._resolve_later()
            if not events:
                return

    def _run_events(self) -> None:
        events = self._events
        handle = self.owner.handle
        apply = self._apply
        while events:
            apply(handle(events.popleft()))

    def _apply(self, instrs: list) -> None:
        node_msgs = None
        for ins in instrs:
            kind = type(ins)
            if kind is _ToSlot:
                self._to_slot(ins)
            elif kind is _ToNode:
                if node_msgs is None:
                    node_msgs = [ins.msg]
                else:
                    node_msgs.append(ins.msg)
            else:
                self._apply_on[kind](ins)
        if node_msgs is not None:
            self.send(node_msgs)

    def _to_slot(self, ins) -> None:
        got = self._d2w.get(ins.slot)
        ring, bell = got if got is not None else self._slot_out(ins.slot)
        frame = _dumps([tuple(ins.msg)], 5)
        if ring.try_push(frame) != len(frame):  # (rare: the budget keeps room for it)
            ring.push(frame, wake=bell.force, deadline=self._push_deadline())
        bell.ring()

    def _slot_out(self, slot: int) -> tuple:
        got = self._d2w.get(slot)
        if got is None:
            w2d, d2w = slot_rings(self._mailbox, slot, self._cap)
            w2d.release()  # (the slot's w2d ring is polled since its Slot message)
            got = self._d2w[slot] = (d2w, slot_bell(self._mailbox, slot, self._cap,
                                                    self._slot_efds[slot]))
        return got

    def _deliver(self, ins) -> None:
        self.store_obj(ins.oid, ins.kind, ins.payload)

    def _futures_ready(self, oid: int, futs: list) -> None:
        self._to_resolve.append((oid, futs))  # (under the owner lock: resolved after it)

    def _resolve_later(self) -> None:
        while self._to_resolve:
            oid, futs = self._to_resolve.pop()
            self._resolve_futures(oid, futs)

    def _release(self, ins) -> None:
        if ins.oid in self._refs:
            return  # a ref to it came back meanwhile (its incref went out): still held
        self._decref.append(ins.oid)
        if ins.urgent or len(self._decref) >= 512:
            self._flush_soon()

    def _signal(self, ins) -> None:
        try:
            os.kill(ins.pid, ins.signum)
        except ProcessLookupError:
            pass

    def _word(self, ins) -> None:
        cancel_word(self._mailbox, ins.slot, self._cap)[:] = \
            (ins.tid & (2**63 - 1)).to_bytes(8, "little")

    # ------------------------------------------------------------------ what users call
    def submit_task(self, spec: P.TaskSpec, direct_ok: bool, hold) -> None:
        deps = None
        if direct_ok and not spec.contained and spec.nret:
            deps = resolve(self._values, spec.deps)
        self.post(_submit_task((spec, deps, hold)))
        if self.owner.queue:
            # leases full: take in finished results (and refill) without waiting, and
            # keep doing so in the background while this thread does something else
            self.poll_nowait()
            self.ensure_background_pump()

    def submit_call(self, spec: P.TaskSpec, hold) -> None:
        self.post(P.SubmitCall(spec, hold))
        if self.owner.actors.backlog:
            self.ensure_background_pump()

    def cancel(self, tid: int, force: bool, recursive: bool) -> None:
        self.post(P.CancelTask(tid, force))
        super().cancel(tid, force, recursive)

    def actor_killed(self, aid: int) -> None:
        self.post(P.ActorKilled(aid))

    def publish_then(self, oids, msg) -> None:
        """Send ``msg``, which carries refs to ``oids``, once the node knows them."""
        self.post(P.Publish(tuple(oids), msg))

    def _send_put(self, msg) -> None:
        if msg.contained:  # the refs inside must be known to the node first
            self.publish_then(msg.contained, msg)
        else:
            super()._send_put(msg)

    def _last_ref_gone(self, oid: int, urgent: bool) -> None:
        if urgent or len(self._events) >= 256:
            self.post(P.RefGone(oid, urgent))
        else:  # a small value: decided with the next event (a release may wait a little)
            self._events.append(_new(_RefGone, (oid, False)))

    def register_function(self, fid: int, blob: bytes) -> None:
        self.owner.blobs[fid] = blob  # (a dict write: safe beside the machine's reads)
        self.send([P.Func(fid, blob)])

    def _background_needed(self) -> bool:
        return (self.owner.backlog() or bool(self._futures)) and not self.closed

    # ------------------------------------------------------------------ rings
    def _on_slot(self, m) -> None:
        """A worker now writes to the driver through mailbox slot ``m.slot``."""
        w2d, d2w = slot_rings(self._mailbox, m.slot, self._cap)
        d2w.release()
        old = self._w2d.pop(m.slot, None)
        if old is not None:
            old.release()
        self._w2d[m.slot] = w2d

    def _on_slot_free(self, m) -> None:
        """That worker is gone: take what it wrote, stop polling the slot."""
        ring = self._w2d.pop(m.slot, None)
        if ring is not None:
            self._drain_worker(ring.pop_all())
            ring.release()

    def _drain_worker(self, frames: list) -> None:
        """Frames a worker wrote to the driver (an Obj there is a node task's value the
        worker handed here itself; a leased task's values come in its DoneD)."""
        on = self._on
        for f in frames:
            for m in P.decode(f):
                on[m[0]](m)

    def _drain(self) -> bool:
        got = False
        if self._w2d:
            for ring in list(self._w2d.values()):
                frames = ring.pop_all()
                if frames:
                    got = True
                    self._drain_worker(frames)
        frames = self._down.pop_all()
        if frames:
            got = True
            self._drain_frames(frames)
        if self._events:
            self.run_owner()
        return got

    def _has_data(self) -> bool:
        if self._down.has_data():
            return True
        for ring in self._w2d.values():
            if ring.has_data():
                return True
        return False

    def close_rings(self) -> None:
        for r in self._w2d.values():
            r.release()
        self._w2d.clear()
        for ring, _bell in self._d2w.values():
            ring.release()
        self._d2w.clear()


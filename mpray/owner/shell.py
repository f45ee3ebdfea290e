"""The I/O shell of an owner machine (``owner.Owner``): what every owning process shares.

Data flow::

    user threads ─ submit / cancel / ref gone ─┐
    pump (the process's rings) ────────────────┴─▶ events ─▶ Owner.handle ─▶ instructions
                                                                        │
        ToNode ─▶ up ring   ToSlot ─▶ a lease's ring + its worker's bell   Deliver ─▶ the
        Release ─▶ decref   Signal / CancelWord ─▶ a leased worker         value cache

The driver (``driver_client``) and every worker with a mailbox slot (``worker_client``:
nested tasks) are owners; what differs is where a lease's messages go (``_ring_out``: a
mailbox slot's ring for the driver, a lease channel for a worker) and which rings bring
the answers.

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
import time

from .. import protocol as P
from ..control.recorder import LINEAGE as _LINEAGE, NOTE as _NOTE, REC as _REC, \
    TASK_LOST as _TASK_LOST, error_fields
from ..transport.mailbox import cancel_word
from .machine import Owner
from .actors import resolve

_ToSlot, _ToNode, _RefGone, _ChannelFree = P.ToSlot, P.ToNode, P.RefGone, P.ChannelFree
_Release = P.Release
_Deliver = P.Deliver
_submit_task, _submit_call = P.SubmitTask.from_items, P.SubmitCall.from_items
_new = tuple.__new__
_dumps = pickle.dumps
# messages an owner machine decides on (from the node, or from a leased worker's ring)
OWNER_OPS = (P.LeaseGrant, P.NoLease, P.LeaseLost, P.ActorUpdate, P.ANodeDone, P.DoneD,
             P.ReturnD, P.Expired, P.Resumed, P.ADoneD, P.Evict, P.LineageAsk, P.SeedTime)


class OwnerShell:
    """Mixin of a ``client.Client`` that owns what it submits (sets ``self.owner``)."""

    owner: Owner | None = None

    def _init_owner(self, owner: Owner | None, mailbox, mailbox_cap: int) -> None:
        self.owner = owner
        if owner is not None:
            owner.blobs = self.func_blobs  # (see register_function)
        self._mailbox = mailbox
        self._cap = mailbox_cap
        self._events = self._event_queue()
        # last refs gone of small values, decided together with the next event (any
        # thread appends, the thread running the machine takes them: deque ops are atomic)
        self._gone: collections.deque = collections.deque()
        self._owner_lock = threading.Lock()
        self._to_resolve: list = []  # (oid, futures) whose values came meanwhile
        self._out: dict = {}  # a lease's ring key -> (ring, bell) (see _ring_out)
        self._apply_on = {P.Signal: self._signal,
                          P.CancelWord: self._word, P.TaskFailed: self._task_failed,
                          P.EvictLocal: lambda ins: self.evict_local(ins.oids, ins.busy),
                          P.StoreLineage: self._store_lineage}

    def _event_queue(self) -> collections.deque:
        """The machine's event deque (made by whichever comes first: the handlers,
        which hold its bound append, or ``_init_owner``)."""
        q = self.__dict__.get("_events")
        if q is None:
            q = self._events = collections.deque()
        return q

    def _owner_handlers(self, on: dict) -> dict:
        post = self._event_queue().append  # (the machine's thread handles them: _drain)
        for cls in OWNER_OPS:
            on[cls.OP] = post
        on[P.Obj.OP] = self._on_value
        return on

    def _on_value(self, m) -> None:
        """A value for this process: to the machine if it has a stake in it (its own
        result, a task that seeds a lease), else straight into the cache (the machine
        would only Deliver it)."""
        if self.owner.has_stake(m.oid):
            self._events.append(m)
        else:
            self.store_obj(m.oid, m.kind, m.payload)

    # ------------------------------------------------------------------ the machine
    def post(self, ev) -> None:
        """Hand an event to the owner machine: run it now, or, when another thread runs
        the machine, leave it to that thread."""
        lock = self._owner_lock
        if lock.acquire(False):
            try:
                # this thread's event first: what waits in the deque (a deferred RefGone,
                # another thread's message) cannot concern it (a ref that is gone is in no
                # task), and handling it after the Exec is out keeps it off the critical path
                self._apply(self.owner.handle(ev))
                if self._events or self._gone:
                    self._run_events()
            finally:
                lock.release()
            if self._events or self._gone or self._to_resolve:
                self.run_owner()  # (appended while we held the lock; futures to resolve)
        else:
            self._events.append(ev)
            self.run_owner()

    def post_now(self, ev) -> None:
        """The same, but handled before this returns (waiting for the lock if another
        thread runs the machine): a worker's Done must be out before its releases."""
        with self._owner_lock:
            if self._events or self._gone:
                self._run_events()
            self._apply(self.owner.handle(ev))
        if self._events or self._gone or self._to_resolve:
            self.run_owner()

    def run_owner(self) -> None:
        events, gone = self._events, self._gone
        while True:
            if events or gone:
                if not self._owner_lock.acquire(False):
                    return  # the thread that holds it handles what we appended
                try:
                    self._run_events()
                finally:
                    self._owner_lock.release()
            if self._to_resolve:
                self._resolve_later()
            if not (events or gone):
                return

    def _run_events(self) -> None:
        events = self._events
        handle = self.owner.handle
        apply = self._apply
        gone = self._gone
        if gone:  # (one event for all of them)
            apply(handle(_new(_RefGone, (self._drain_deque(gone), False))))
        while events:
            apply(handle(events.popleft()))

    def _apply(self, instrs: list) -> None:
        node_msgs = None
        flush = False
        for ins in instrs:
            kind = type(ins)
            if kind is _ToSlot:
                self._to_slot(ins)
            elif kind is _Deliver:
                futs = self._keep(ins.oid, ins.value)
                if futs:  # resolved once the machine is let go (callbacks re-enter)
                    self._to_resolve.append((ins.oid, futs))
            elif kind is _ToNode:
                if node_msgs is None:
                    node_msgs = [ins.msg]
                else:
                    node_msgs.append(ins.msg)
                if type(ins.msg) is _ChannelFree:  # (a worker owner's lease channel)
                    self._channel_done(ins.msg.channel)
            elif kind is _Release:
                flush = self._release(ins) or flush
            else:
                self._apply_on[kind](ins)
        if node_msgs is not None:
            self.send(node_msgs)  # (releases go after them, in the same frame)
        elif flush:
            self._flush_soon()

    def _store_lineage(self, ins) -> None:
        if _REC.on:  # (off: the spec is gone, a lost value's error will say so)
            _NOTE((_LINEAGE, ins.tid, self.proc, ins.blob))

    @staticmethod
    def _task_failed(ins) -> None:
        if _REC.on:
            _NOTE((_TASK_LOST, ins.tid, False, *error_fields(ins.error), time.monotonic()))

    def _to_slot(self, ins) -> None:
        ring, bell = self._out.get(ins.slot) or self._ring_out(ins.slot)
        frame = _dumps([tuple(ins.msg)], 5)
        if ring.try_push(frame) != len(frame):  # (rare: the budget keeps room for it)
            ring.push(frame, wake=bell.force, deadline=self._push_deadline())
        bell.ring()

    def _ring_out(self, key: int) -> tuple:
        raise NotImplementedError  # (ring, bell) of a lease's ring key (cached in _out)

    def _channel_done(self, channel: int) -> None:
        """The machine let go of a lease channel (only worker owners have them)."""

    def _resolve_later(self) -> None:
        while self._to_resolve:
            oid, futs = self._to_resolve.pop()
            self._resolve_futures(oid, futs)

    def _release(self, ins) -> bool:
        """Queue the decrefs; True if they should go now.  (Not sent from here: this
        event's messages to the node go first, and a release that overtook the Submit of
        a call returning the object let the node count the owner's hold again: a leak.)"""
        refs, decref = self._refs, self._decref
        for oid in ins.oids:
            if oid not in refs:  # (else a ref came back meanwhile; its incref went out)
                decref.append(oid)
        return ins.urgent or len(decref) >= 512

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
        if self.owner is None or (not direct_ok and not spec.deps and not spec.contained
                                  and not self._owner_lock.locked()):
            # (a task for the node's path that reads nothing of ours: the machine would
            # only pass its Submit on; not while it runs, to keep this process's order)
            return super().submit_task(spec, direct_ok, hold)
        deps = None
        if direct_ok and not spec.contained and spec.nret:
            deps = resolve(self._values.get, spec.deps) if spec.deps else ()
        self.post(_submit_task((spec, deps, hold)))
        if self.owner.queue:
            # leases full: take in finished results (and refill) without waiting, and
            # keep doing so in the background while this thread does something else
            self.poll_nowait()
            self.ensure_background_pump()

    def submit_call(self, spec: P.TaskSpec, hold) -> None:
        if self.owner is None or not (self.owner.direct_calls or spec.deps
                                      or spec.contained):
            # (a worker's call carrying no ref: the owner would only pass it to the node)
            return super().submit_call(spec, hold)
        self.post(_submit_call((spec, hold)))
        if self.owner.actors.backlog:  # (as submit_task does when its leases are full)
            self.poll_nowait()
            self.ensure_background_pump()

    def cancel(self, tid: int, force: bool, recursive: bool) -> None:
        if self.owner is not None:
            self.post(P.CancelTask(tid, force))
        super().cancel(tid, force, recursive)

    def actor_killed(self, aid: int) -> None:
        if self.owner is not None:
            self.post(P.ActorKilled(aid))

    def publish_then(self, oids, msg, now: bool = False) -> None:
        """Send ``msg``, which carries refs to ``oids``, once the node knows them."""
        if self.owner is None:
            self.send([msg])
        elif now:
            self.post_now(P.Publish(tuple(oids), msg))
        else:
            self.post(P.Publish(tuple(oids), msg))

    def _send_put_with_refs(self, msg) -> None:
        self.publish_then(msg.contained, msg)  # (the refs inside: known to the node first)

    def _last_ref_gone(self, oid: int, urgent: bool) -> None:
        if self.owner is None or (oid not in self.owner.owned
                                  and not self._owner_lock.locked()):
            # Nothing for the machine to decide: it would only Release it (a pure query,
            # safe from any thread: an oid is owned from before its first ref exists).
            # Not while the machine runs, though: its event may be dropping the last
            # hold of an argument whose Submit is not sent yet, and a release sent now
            # would overtake it; the machine releases it after that event's messages.
            super()._last_ref_gone(oid, urgent)
        elif urgent:
            self.post(_new(_RefGone, ((oid,), True)))
        else:  # a small value: decided with the next event (a release may wait a little)
            self._gone.append(oid)
            if len(self._gone) >= 256:
                self.run_owner()

    def register_function(self, fid: int, blob: bytes) -> None:
        # (kept whether or not this process owns anything yet: a worker becomes an owner
        # at its first nested task, after registering that task's function, and the Execs
        # its leases carry must ship the function: the node's copy may come later. One
        # dict, the machine's too: a write is safe beside its reads)
        self.func_blobs[fid] = blob
        self.send([P.Func(fid, blob)])

    def _background_needed(self) -> bool:
        return ((self.owner is not None and self.owner.backlog()) or bool(self._futures)
                or self._release_due) and not self.closed

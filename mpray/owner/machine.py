"""The owner: what a submitting process decides about the tasks it runs itself (pure).

Ray's ownership model in small: the driver leases workers from its node and sends its
plain tasks straight to them; it owns their results (the node never hears of them
unless a ref leaves this process); it calls actors straight through their mailbox ring.
This module holds those decisions as a synchronous state machine with no I/O, no
threads and no processes: ``handle(event)`` returns a list of instructions, which the
I/O shell (``driver_client.DriverClient``) carries out.  Calls to actors are a composed
part (``owner_actors.ActorChannels``).

Data flow::

    events (protocol records)                       instructions (protocol records)
    ─────────────────────────                       ──────────────────────────────
    SubmitTask / SubmitCall / CancelTask       ─▶   ToNode(msg)        to the node
    RefGone / Publish / ActorKilled            ─▶   ToSlot(slot, msg)  into a leased worker's
    LeaseGrant / NoLease / LeaseLost / Obj      ─▶                      or an actor's ring
      / ActorUpdate / ANodeDone  (node)             Deliver(oid, value)  a value is here
    DoneD / ADoneD / ReturnD / Expired /       ─▶   Release(oid, urgent)  drop our hold
      Resumed / Obj  (a worker's ring)              Signal(pid, sig), CancelWord(slot, tid)

Leases: the node owns resource accounting; a lease is one worker plus one CPU.  It is
born from a task sent the node's way flagged ``lease`` (the worker that ran it stays
with this owner, still holding that task's CPU), and given back by the worker after
``LEASE_IDLE`` without work (``Expired``).  Only tasks the node need not know about go
direct: resources exactly one CPU, default strategy, no ref pickled inside the
arguments, every top-level ref argument's value here and not an error.  Under MPI
(``spill_long``) a function whose tasks run long enough to be worth moving to another
rank goes by the node, which may move it; so do the first tasks of a function not timed
yet that find no free lease here (``first_spread`` of them: the other ranks' CPUs).

Owned objects (``OwnedState``): a direct task's return is PENDING until its value
comes; a ref that leaves this process first makes the node wait for it (PROMISED, then
``Put`` when it comes); a value that came straight here is LOCAL until a ref leaves (a
``Put``) or the last ref here dies.  The last ref dying while PENDING/PROMISED defers
the node's release until the value comes (``dropped``).

The value cache lives in the shell (``values``: oid -> (kind, payload)); the machine
only reads it, to send an actor call's arguments with it.
"""

from __future__ import annotations

import collections
import pickle
import signal

from .. import exceptions as exc
from .. import protocol as P
from ..placement import running_mean
from .actors import FRAME_SLACK, ActorChannels, message_cost
from .entities import DirectTask, Lease
from .lease_ends import LeaseEnds
from .invariants import check_owner
from .lineage import OwnerLineage
from ..store.serialization import ERROR
from ..states import LEASE_TRANSITIONS, OWNED_TRANSITIONS, D, L, OW, TransitionError, _move

# (module-level names for what the hot paths use on every task)
_PENDING, _LOCAL, _ACTIVE, _PAUSED = OW.PENDING, OW.LOCAL, L.ACTIVE, L.PAUSED
_SENT, _ENDED = D.SENT, D.ENDED
_slot_msg, _exec, _deliver = P.ToSlot.from_items, P.Exec.from_items, P.Deliver.from_items
_EXEC = P.Exec.OP
RUN_WEIGHT = 0.25  # weight of the newest run time in a function's moving mean
LONG_AT_ONCE = 10  # a single run this many times the spill threshold marks it long
SEED_LONG_S = 0.1  # a lease's first task this long marks its function long


class Owner(LeaseEnds):
    """One process's owner machine (the driver's; see the module docstring)."""

    def __init__(self, proc: int, rank: int, values: dict, *, max_leases: int = 1,
                 depth: int = 2, ring_cap: int = 1 << 18, mailbox: bool = True,
                 spill_long: float = 0.0, direct_calls: bool | None = None,
                 first_spread: int = 0, max_lineage_bytes: int = 1 << 30) -> None:
        self.proc = proc
        self.rank = rank
        self.values = values  # the shell's value cache (read only here)
        self.max_leases = max(1, max_leases)
        # a worker owner runs on one of its node's CPUs: while it holds it, one lease
        # fewer can run beside it (a task flagged for another would only wait at the
        # node, and its trip there costs the submitter); lent in get, it is one more.
        # (Not under MPI: there the node may pass a flagged task to another rank.)
        self.own_cpu = False
        self.depth = max(1, depth)
        self.max_frame = ring_cap // 4  # bigger messages go by the node (its rings fragment)
        # message bytes in flight per ring (estimated from above, so a push never waits;
        # the rest of the ring is for Drop messages and a predecessor's leftovers)
        self.budget = ring_cap * 7 // 8
        self.mailbox = mailbox  # False: no leases, no direct actor calls (all by the node)
        # calls straight into actors' rings: the driver's only (an actor's ring has one
        # producer; a worker's calls go by the node, which keeps each caller's order)
        self.direct_calls = mailbox if direct_calls is None else direct_calls
        self.leases: dict[int, Lease] = {}  # epoch -> lease
        self.last_grant = 0  # the newest grant's epoch (grants come in order)
        self.queue: collections.deque[DirectTask] = collections.deque()
        self.tasks: dict[int, DirectTask] = {}  # queued or sent, not ended
        self.owned: dict[int, OW] = {}  # return id -> state (see OwnedState)
        self.dropped: set[int] = set()  # owned, pending, and its last ref here died
        self.awaiting: set[int] = set()  # owned, task ended: the value comes by the node
        # LOCAL values (the shell caches them too, but only once this event's Deliver is
        # carried out: a decision later in the same event must find them here)
        self.local: dict[int, tuple] = {}
        self.flagged: set[int] = set()  # first return ids of tasks sent to become leases
        self.seeding: dict[int, int] = {}  # first return id -> epoch: it runs on the
        #                                    lease it created (counts as its work)
        self.expired: set[int] = set()  # epochs that ended before their grant was read
        # slot leases that ended (Expired) with tasks in flight: they come back bounced
        # or done, or fail over if the worker dies first (SlotFree)
        self.ending: dict[int, Lease] = {}
        self.blobs: dict[int, bytes] = {}  # fid -> cloudpickled function
        self.spill_long = spill_long
        self.run_s: dict[int, tuple[int, float]] = {}  # fid -> (runs, mean run time)
        self.long_fids: set[int] = set()
        # tasks of a function not timed yet that found no free lease here: this many go
        # the node's way, which gives them to idle ranks (the paper's local scheduler
        # forwards when overloaded); once timed, short ones stay direct, long ones move
        self.first_spread = first_spread
        self.spread: dict[int, int] = {}  # fid -> its untimed tasks sent the node's way
        self.out: list = []
        # Evict answers; leased tasks' specs (to make lost values again)
        self.lineage = OwnerLineage(max_lineage_bytes)
        self.actors = ActorChannels(self)
        self._on = self._handlers()

    def _handlers(self) -> dict:
        """Event type -> its handler."""
        return {
            P.SubmitTask: self._submit, P.SubmitCall: self.actors.submit,
            P.CancelTask: self._cancel, P.RefGone: self._ref_gone,
            P.Publish: self._publish_event,
            P.ActorKilled: self.actors.killed, P.Lending: self._on_lending,
            P.Obj: self._node_value, P.LeaseGrant: self._on_lease,
            P.NoLease: lambda ev: self._unflag(ev.first_oid),
            P.SeedTime: self._seed_time,
            P.LeaseLost: self._on_lost, P.DoneD: self._on_done,
            P.ReturnD: self._on_returned, P.Expired: self._on_expired,
            P.Resumed: self._on_resumed, P.ADoneD: self.actors.on_done,
            P.SlotFree: self._on_slot_free,
            P.ANodeDone: self.actors.on_node_done, P.ActorUpdate: self.actors.on_update,
            # (the node's spilling: node/spill.py, node/lineage.py; owner/lineage.py)
            P.Evict: lambda m: self.out.append(self.lineage.evict(
                m.oids, self.tasks.values(), self.actors.calls.values())),
            P.LineageAsk: lambda m: self.out.extend(
                P.ToNode(msg) for msg in self.lineage.answer(m.oids)),
        }

    def handle(self, ev) -> list:
        """One event in, the instructions it causes out (in the order to carry out)."""
        self.out = out = []
        self._on[type(ev)](ev)
        return out

    def has_stake(self, oid: int) -> bool:
        """Would a value of ``oid`` from the node change anything here (an owned
        object, a task sent to become a lease or seeding one)?  A pure query: what it
        reads for this oid is only changed by events about this oid, which come before
        its value (callers in other threads may ask without the machine's lock)."""
        return oid in self.owned or oid in self.flagged or oid in self.seeding

    def backlog(self) -> bool:
        """Work waits here for room (the shell keeps pumping while it does)."""
        return bool(self.queue) or self.actors.backlog > 0

    # ------------------------------------------------------------------ owned objects
    def _set(self, oid: int, new: OW) -> None:
        old = self.owned[oid]
        if new not in OWNED_TRANSITIONS[old]:
            raise TransitionError(f"owned object {P.id_hex(oid)}: {old.value} -> "
                                  f"{new.value} is not allowed")
        self.owned[oid] = new

    def _disown(self, oid: int) -> None:
        """The node holds it from now on (or it is gone): no longer tracked here."""
        if self.owned.pop(oid, None) is _LOCAL:
            del self.local[oid]
        self.awaiting.discard(oid)

    def value_of(self, oid: int):
        """(kind, payload) of a value here, or None."""
        v = self.local.get(oid)
        return v if v is not None else self.values.get(oid)

    def publish(self, oids) -> None:
        """Refs to these are about to leave this process: make them known to the node
        first (Put of a value only this process has, Promise of one still to come)."""
        owned = self.owned
        for oid in oids:
            st = owned.get(oid)
            if st is OW.LOCAL:
                kind, payload = self.local[oid]
                self._disown(oid)
                self.out.append(P.ToNode(P.Put(oid, kind, payload, ())))
            elif st is OW.PENDING:
                self._set(oid, OW.PROMISED)
                self.out.append(P.ToNode(P.Promise(oid)))

    def _publish_event(self, ev) -> None:
        self.publish(ev.oids)
        if ev.msg is not None:
            self.out.append(P.ToNode(ev.msg))

    def _ref_gone(self, ev) -> None:
        if self.lineage.of:
            self.lineage.gone(ev.oids)
        owned, released = self.owned, None
        for oid in ev.oids:
            st = owned.get(oid)
            if st is None:  # the node's object (or a borrowed one): release it there
                if released is None:
                    released = [oid]
                else:
                    released.append(oid)
            elif st is _LOCAL:  # the node never knew it
                del owned[oid]
                del self.local[oid]
            else:  # released (if the node knows it) once its value comes
                self.dropped.add(oid)
        if released is not None:
            self.out.append(P.Release(released, ev.urgent))

    def direct_value(self, oid: int, kind: int, payload) -> None:
        """A value of an owned object arrived straight from a worker (or was decided
        here): keep it LOCAL, or seal a promise."""
        st = self.owned.get(oid)
        out = self.out
        if st is _PENDING:
            if oid in self.dropped:  # nobody here wants it, and the node never knew it
                self.dropped.discard(oid)
                del self.owned[oid]
            else:  # (PENDING -> LOCAL, as OWNED_TRANSITIONS allows)
                self.owned[oid] = _LOCAL
                self.local[oid] = value = (kind, payload)
                out.append(_deliver((oid, value)))  # (one tuple, the shell's cache's too)
                return
        elif st is OW.PROMISED:
            self._disown(oid)
            out.append(P.ToNode(P.Put(oid, kind, payload, ())))  # seal the promise
            if oid in self.dropped:
                self.dropped.discard(oid)
                out.append(P.Release((oid,), True))
        out.append(_deliver((oid, (kind, payload))))

    def direct_values(self, values) -> None:
        """``direct_value`` of each (oid, kind, payload), the usual case inlined (once
        per task or call)."""
        owned, dropped, local, out = self.owned, self.dropped, self.local, self.out
        for oid, kind, payload in values:
            if owned.get(oid) is _PENDING and oid not in dropped:  # (PENDING -> LOCAL)
                owned[oid] = _LOCAL
                # (one tuple here and in the shell's cache: a tracked object per result
                # fewer, and so fewer collections while results wait for their get)
                local[oid] = value = (kind, payload)
                out.append(_deliver((oid, value)))
            else:
                self.direct_value(oid, kind, payload)

    def _node_value(self, m) -> None:
        """A value from the node, or a node task's value its worker handed here."""
        oid = m.oid
        if self.flagged:
            self._unflag(oid)  # that task ended; its worker may not become a lease
        if self.seeding:
            epoch = self.seeding.pop(oid, None)
            if epoch is not None:  # the lease it created is free for our tasks now
                lease = self.leases.get(epoch)
                if lease is not None:
                    lease.inflight.pop(oid - 1, None)
                    self._refill()
        if oid in self.owned:  # (a direct result the node registered: PutFor)
            self._disown(oid)
            if oid in self.dropped:
                self.dropped.discard(oid)
                self.out.append(P.Release((oid,), True))  # its ref died while the task ran
        self.out.append(_deliver((oid, (m.kind, m.payload))))

    def values_by_node(self, tid: int, nret: int) -> None:
        """A direct task or call ended well, its values by the node (it registered them
        first: PutFor): wait for them there."""
        for oid in P.return_ids(tid, nret):
            if oid in self.owned:
                self.awaiting.add(oid)

    def fail_returns(self, tid: int, nret: int, err: BaseException) -> None:
        self.out.append(P.TaskFailed(tid, err))  # (no worker or node records this end)
        payload = pickle.dumps(err, protocol=5)
        for oid in P.return_ids(tid, nret):
            if oid in self.owned:
                self.direct_value(oid, ERROR, payload)

    # ------------------------------------------------------------------ submit
    def _submit(self, ev) -> None:
        spec = ev.spec
        deps = ev.deps  # (None from the shell: not for a lease, see SubmitTask)
        if deps is None or not self.mailbox or spec.fid in self.long_fids or (
                self.lineage.evictions and deps and self.lineage.stale(self.values, deps)):
            self.to_node(spec)  # (long functions: worth moving to another rank)
            return
        rec = DirectTask(spec, deps, ev.hold)
        tid = rec.key
        self.tasks[tid] = rec
        owned = self.owned
        for oid in range(tid + 1, tid + 1 + spec.nret):  # (its returns: PENDING)
            owned[oid] = _PENDING
        if self.queue or not self._place(rec):
            if self._lease_room() or not (self.flagged or self._usable()):
                # no room: the node runs it, and (room for one more lease) leases us the
                # worker it starts on
                self._to_node(rec, flag=True)
                return
            fid = spec.fid
            if self.first_spread and fid not in self.run_s and \
                    self.spread.get(fid, 0) < self.first_spread:
                self.spread[fid] = self.spread.get(fid, 0) + 1
                self._to_node(rec)
                return
            self.queue.append(rec)  # leases (or grants on their way) will take it

    def _lease_room(self) -> bool:
        """May one more lease be asked for (leases, grants on their way, and the CPU this
        owner holds itself, against the node's CPUs)?"""
        return len(self.leases) + len(self.flagged) + self.own_cpu < self.max_leases

    def _on_lending(self, ev) -> None:
        """A worker owner blocks (its CPU is lent: one task of the queue goes the node's
        way to become the lease that uses it) or runs again."""
        self.own_cpu = not ev.lent
        if ev.lent and self.queue and self._lease_room():
            self._to_node(self.queue.popleft(), flag=True)

    def _usable(self) -> bool:
        """Does some lease take tasks (not paused while its task waits)?"""
        for lease in self.leases.values():
            if lease.state is _ACTIVE:
                return True
        return False

    def to_node(self, spec, deps=None) -> None:
        """Send a task the node's way; its arguments may be values only this process
        has seen (direct results): they are made known first."""
        self.publish([oid for _pos, oid in spec.deps])
        if spec.contained:
            self.publish(spec.contained)
        self.out.append(P.ToNode(P.Submit(spec)))

    def _to_node(self, rec: DirectTask, flag: bool = False) -> None:
        """Hand a direct task to the node's path (no room, a retry, no leases left)."""
        spec = rec.spec
        self.tasks.pop(rec.key, None)
        if rec.state is not D.ENDED:
            rec.step(D.ENDED)
        if flag and self._lease_room():
            self.flagged.add(rec.key + 1)
            spec = spec._replace(lease=True)
        self.to_node(spec)
        # Submit registers the returns at the node: they are the node's objects from
        # here on (its worker may hand their values straight here; they are not direct
        # values); one whose ref died here already is released now, after the Submit.
        for oid in P.return_ids(rec.key, spec.nret):
            self._disown(oid)
            if oid in self.dropped:
                self.dropped.discard(oid)
                self.out.append(P.Release((oid,), True))
        rec.hold = None

    def _place(self, rec: DirectTask) -> bool:
        best = None
        n_best = self.depth
        for lease in self.leases.values():
            n = len(lease.inflight)
            if n < n_best and lease.state is _ACTIVE:
                best, n_best = lease, n
                if n == 0:
                    break
        if best is None:
            return False
        if n_best and len(self.queue) < len(self.leases) + len(self.flagged):
            # queue behind a running task only with a real backlog: a short queue waits
            # for a free lease (or one still being granted) instead of for a long task
            return False
        spec = rec.spec
        fid = spec.fid
        if n_best and self.spill_long and fid not in self.run_s:
            return False  # (under MPI, not before it is timed: a long one would wait
            #                behind the running task instead of moving to an idle rank)
        fblob = None if fid in best.fids else self.blobs.get(fid)
        deps = rec.deps
        cost = message_cost(spec.args, spec.name, fblob, deps) if fblob or deps else \
            len(spec.args) + len(spec.name) + FRAME_SLACK
        if type(spec.retry_exc) is bytes:  # (pickled exception classes ride along)
            cost += len(spec.retry_exc)
        if cost > self.max_frame:  # a big function or arguments: the node's rings
            self._to_node(rec)     # fragment and queue without limit
            return True
        if best.bytes + cost > self.budget:
            return False
        if fblob is not None:
            best.fids.add(fid)
        best.bytes += cost
        rec.cost = cost
        rec.lease = best.key
        rec.state = _SENT  # (QUEUED -> SENT, as DIRECT_TRANSITIONS allows: hot, no check)
        best.inflight[rec.key] = rec
        self.out.append(_slot_msg((best.ring, _exec((
            _EXEC, rec.key, fid, fblob, spec.name, spec.args, deps, spec.nret, (),
            spec.retry_exc, self.proc, best.epoch)))))
        return True

    def _refill(self) -> None:
        q = self.queue
        while q:
            if not self._place(q[0]):
                break
            q.popleft()  # (_place never touches the queue itself)
        if q and not self.flagged and not self._usable():
            # no lease to run them (none left, or all wait in get, maybe for these very
            # tasks) and none coming: the node takes over (it starts workers as needed)
            while q:
                self._to_node(q.popleft())

    # ------------------------------------------------------------------ lease events
    def _on_lease(self, m) -> None:
        # still flagged = the task that created the lease is running there; if its value
        # came first (rings are read in no fixed order), the lease is free already
        seeding = m.first_oid in self.flagged
        self.flagged.discard(m.first_oid)
        if m.epoch in self.expired:  # it ended (idle) before we even read the grant
            self.expired.discard(m.epoch)
            return
        self.last_grant = max(self.last_grant, m.epoch)
        lease = self.leases[m.epoch] = Lease(m.wid, m.epoch, m.slot, m.pid, m.channel)
        if seeding:
            lease.inflight[m.first_oid - 1] = None  # busy with the task that created it
            self.seeding[m.first_oid] = m.epoch
        self._refill()

    def _end(self, rec: DirectTask) -> None:
        self.tasks.pop(rec.key, None)
        rec.step(D.ENDED)
        rec.hold = None

    def _on_done(self, m) -> None:
        """A direct task ended after ``run_s`` seconds.  Its values come with it, or
        from the node (``via_node``: arena values and values holding refs, which the
        node must register first), or not at all (a retryable ``error``: retry or give
        up here)."""
        rec = self.tasks.pop(m.tid, None)
        if rec is None:
            return
        if rec.state is not _SENT:
            self.tasks[m.tid] = rec
            return
        lease = self.leases.get(rec.lease)
        spec = rec.spec
        if lease is not None:
            del lease.inflight[m.tid]
            lease.bytes -= rec.cost
            if lease.state is _PAUSED:
                _move(lease, L.ACTIVE, LEASE_TRANSITIONS, "lease")
        elif self.ending:
            self._off_ending(rec)
        if self.spill_long and m.run_s:
            self._timed(spec.fid, m.run_s)
        if m.error is not None and spec.retries > 0 and not rec.cancelled:
            self.tasks[m.tid] = rec
            rec.spec = spec._replace(retries=spec.retries - 1)
            self._to_node(rec)
        else:
            rec.state = _ENDED  # (SENT -> ENDED)
            rec.hold = None
            if m.values:
                self.direct_values(m.values)
            elif m.error is not None:  # retries used up: the error stands
                for oid in P.return_ids(m.tid, spec.nret):
                    self.direct_value(oid, ERROR, m.error)
            elif m.via_node:
                self.values_by_node(m.tid, spec.nret)
                self.lineage.keep(spec, self.out)  # (its values may be spilled, and lost)
        if self.queue:
            self._refill()

    def _unflag(self, first_oid: int) -> None:
        """A task sent to become a lease ended, or runs without one (NoLease)."""
        if first_oid in self.flagged:
            self.flagged.discard(first_oid)
            if self.queue:  # what waited for that lease may have to go by the node
                self._refill()

    def _seed_time(self, ev) -> None:
        """How long the task that made a lease ran (its value came without a time).  A
        first run in a new worker carries the function's unpickling and the worker's
        start, so it counts only when clearly short or clearly long (``SEED_LONG_S``: a
        first batch of long tasks waiting for this lease moves at once)."""
        if self.spill_long and (ev.run_s < self.spill_long or ev.run_s >= SEED_LONG_S):
            self._timed(ev.fid, ev.run_s)

    def _timed(self, fid: int, took: float) -> None:
        """Learn how long ``fid``'s tasks run; when that reaches the spill threshold, its
        tasks (the ones queued here too) go by the node from now on."""
        n, mean = self.run_s.get(fid, (0, 0.0))
        mean = running_mean(n + 1, mean, took, RUN_WEIGHT)
        self.run_s[fid] = (n + 1, mean)
        # (one run decides only when it is clearly long: a short function's first run
        # carries the function's unpickling, and on a loaded machine a few ms more)
        if mean >= self.spill_long and fid not in self.long_fids and (
                n or took >= LONG_AT_ONCE * self.spill_long):
            self.long_fids.add(fid)
            keep = collections.deque()
            for queued in self.queue:
                if queued.spec.fid == fid:
                    self._to_node(queued)
                else:
                    keep.append(queued)
            self.queue = keep

    # ------------------------------------------------------------------ cancel
    def _cancel(self, ev) -> None:
        rec = self.tasks.get(ev.tid)
        if rec is None:
            self.actors.cancel(ev.tid)
            return
        if rec.state is D.QUEUED:
            self.queue.remove(rec)
            self._end(rec)
            self.fail_returns(rec.key, rec.spec.nret, exc.TaskCancelledError(P.id_hex(rec.key)))
            return
        lease = self.leases.get(rec.lease)
        rec.cancelled = True
        if lease is None:
            return  # its lease is ending: the task comes back (and fails then) or ends
        if ev.force:
            self.out.append(P.Signal(lease.pid, signal.SIGKILL))
            return
        self.out.append(P.CancelWord(lease.slot, rec.key))
        self.out.append(P.ToSlot(lease.ring, P.Drop(rec.key)))
        self.out.append(P.Signal(lease.pid, signal.SIGUSR1))

    # ------------------------------------------------------------------ invariants
    def check_invariants(self) -> None:
        """What must hold between events (the pure tests call this after each one)."""
        check_owner(self)

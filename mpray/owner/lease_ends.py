"""How an owner's leases end, and what was in flight on them (a mixin of
``machine.Owner``: pure; it uses the machine's ``leases``, ``ending``, ``expired``,
``last_grant``, ``tasks``, ``queue``, ``seeding``, ``out`` and its ``_refill``,
``_to_node``, ``_end``, ``fail_returns``).

Data flow::

    Expired (idle)      ─▶ ENDED; a channel's unread tasks requeued; a slot's in flight
                           wait in ``ending`` (they come back bounced or done)
    LeaseLost (died)    ─▶ ENDED; in-flight tasks retried by the node, or failed
    SlotFree            ─▶ an ``ending`` lease's worker died: its in-flight tasks too
    ReturnD (bounced)   ─▶ requeued here; blocked: the lease PAUSED until Resumed
"""

from __future__ import annotations

from .. import exceptions as exc
from .. import protocol as P
from .entities import DirectTask, Lease
from ..states import LEASE_TRANSITIONS, D, L, _move


class LeaseEnds:
    """The lease-ending half of the owner machine (one ``self`` with it)."""

    def _end_lease(self, lease: Lease) -> None:
        del self.leases[lease.key]
        _move(lease, L.ENDED, LEASE_TRANSITIONS, "lease")
        if lease.channel is not None:  # this end is done with it (the node lends it again)
            self.out.append(P.ToNode(P.ChannelFree(lease.channel)))

    def _on_expired(self, m) -> None:
        lease = self.leases.get(m.epoch)
        if lease is not None:
            self._end_lease(lease)
            if lease.channel is not None:
                # its worker reads the channel no more: what is in it never runs
                self._requeue_all(lease)
            elif any(rec is not None for rec in lease.inflight.values()):
                # a slot's: what is in flight comes back, bounced (ReturnD) or done
                # (DoneD); unless its worker dies first (SlotFree)
                self.ending[lease.key] = lease
        elif m.epoch > self.last_grant:
            self.expired.add(m.epoch)  # its grant is still on the way
        self._refill()

    def _on_resumed(self, m) -> None:
        lease = self.leases.get(m.epoch)
        if lease is not None and lease.state is L.PAUSED:
            _move(lease, L.ACTIVE, LEASE_TRANSITIONS, "lease")
            self._refill()

    def _on_lost(self, m) -> None:
        lease = self.leases.get(m.epoch)
        if lease is None:
            return
        self._end_lease(lease)
        self._lost_inflight(lease, m.reason)
        self._refill()

    def _on_slot_free(self, m) -> None:
        """A worker with a mailbox slot died (the shell read what it wrote first): tasks
        still in flight on its leases that ended before (``ending``) never run."""
        for epoch, lease in list(self.ending.items()):
            if lease.slot == m.slot:
                del self.ending[epoch]
                self._lost_inflight(lease, "it died after giving its lease back")
        self._refill()

    def _lost_inflight(self, lease: Lease, reason: str) -> None:
        """The worker of ``lease`` died with these tasks sent: retry or fail them."""
        for tid, rec in list(lease.inflight.items()):
            if rec is None:  # the node's own task that created the lease: node retries
                self.seeding.pop(tid + 1, None)
                continue
            spec = rec.spec
            if rec.cancelled:
                self._end(rec)
                self.fail_returns(tid, spec.nret, exc.TaskCancelledError(P.id_hex(tid)))
            elif spec.retries > 0:
                rec.spec = spec._replace(retries=spec.retries - 1)
                self._to_node(rec)
            else:
                self._end(rec)
                self.fail_returns(tid, spec.nret, exc.WorkerCrashedError(
                    f"the worker running task {spec.name} died: {reason}; "
                    f"retries exhausted (max_retries=0)"))
        lease.inflight.clear()

    def _on_returned(self, m) -> None:
        """Tasks a worker handed back unstarted: it blocks in get (pause its lease until
        its running task ends), or their lease had already ended."""
        for tid in reversed(list(m.tids)):
            rec = self.tasks.get(tid)
            if rec is None or rec.state is not D.SENT:
                continue
            lease = self.leases.get(rec.lease)
            if lease is not None:
                lease.inflight.pop(tid, None)
                lease.bytes -= rec.cost
                if m.blocked:
                    if lease.state is L.ACTIVE:
                        _move(lease, L.PAUSED, LEASE_TRANSITIONS, "lease")
                else:  # bounced for a stale epoch: that lease is over
                    self._end_lease(lease)
                    self._requeue_all(lease)
            elif self.ending:
                self._off_ending(rec)
            if rec.cancelled:  # (cancelled while its lease was ending: it never ran)
                self._end(rec)
                self.fail_returns(tid, rec.spec.nret, exc.TaskCancelledError(P.id_hex(tid)))
                continue
            self._requeue(rec)
        lease = self.leases.get(m.epoch)
        if m.blocked and lease is not None and lease.state is L.ACTIVE:
            _move(lease, L.PAUSED, LEASE_TRANSITIONS, "lease")  # (also with nothing queued)
        self._refill()

    def _off_ending(self, rec: DirectTask) -> None:
        """A task of a lease that ended with it in flight came back (bounced or done)."""
        lease = self.ending.get(rec.lease)
        if lease is not None:
            lease.inflight.pop(rec.key, None)
            if not any(r is not None for r in lease.inflight.values()):
                del self.ending[rec.lease]

    def _requeue(self, rec: DirectTask) -> None:
        rec.lease = None
        rec.step(D.QUEUED)
        self.queue.appendleft(rec)

    def _requeue_all(self, lease: Lease) -> None:
        for rec in reversed(lease.inflight.values()):  # (the oldest ends up first)
            if rec is not None and rec.state is D.SENT:
                self._requeue(rec)
        lease.inflight.clear()

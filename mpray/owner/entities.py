"""The owner machine's entities: a direct task and a lease (records with their state;
the decisions about them are ``machine.Owner``'s).

Data flow::

    Owner._submit ─▶ DirectTask (QUEUED) ─ _place ─▶ on a Lease's inflight (SENT)
        ─ DoneD ─▶ ENDED (out of the tables)
    LeaseGrant ─▶ Lease (ACTIVE ⇄ PAUSED) ─ Expired / LeaseLost ─▶ ENDED
"""

from __future__ import annotations

from .. import protocol as P
from ..states import DIRECT_TRANSITIONS, D, L, TransitionError


class DirectTask:
    """A task this owner runs on one of its leases.  (No history list, unlike the
    node's tasks: one per task on the hot path costs more than it tells.)"""

    __slots__ = ("key", "spec", "deps", "hold", "lease", "cancelled", "cost", "state")

    def __init__(self, spec, deps: tuple, hold) -> None:
        self.key = spec.tid
        self.spec = spec
        self.deps = deps
        self.hold = hold  # what the task reads, kept alive here until it is done
        self.lease: int | None = None  # the epoch of the lease it was sent to
        self.cancelled = False
        self.cost = 0
        self.state = D.QUEUED

    def step(self, new: D) -> None:
        """Move to ``new`` as DIRECT_TRANSITIONS allows (else TransitionError)."""
        if new not in DIRECT_TRANSITIONS[self.state]:
            raise TransitionError(f"direct task {P.id_hex(self.key)}: {self.state.value} "
                                  f"-> {new.value} is not allowed")
        self.state = new


class Lease:
    """One lease, known by its epoch (a worker leased again is a new lease: the two may
    overlap here, as the old one's end can be read after the new one's grant)."""

    __slots__ = ("key", "wid", "epoch", "slot", "pid", "channel", "ring", "inflight",
                 "fids", "bytes", "state", "history")

    def __init__(self, wid: int, epoch: int, slot: int, pid: int, channel=None) -> None:
        self.key = epoch
        self.wid = wid
        self.epoch = epoch
        self.slot = slot  # the worker's mailbox slot: its doorbell and cancel word
        self.pid = pid
        self.channel = channel  # a worker owner's lease channel (None: the driver's slot)
        self.ring = slot if channel is None else channel  # where its Execs go (ToSlot)
        self.inflight: dict[int, DirectTask | None] = {}  # None: the task that created it
        self.fids: set[int] = set()
        self.bytes = 0  # message bytes in flight (the ring holds at least twice this)
        self.state = L.ACTIVE
        self.history = [L.ACTIVE]


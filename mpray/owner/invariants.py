"""What must hold in an owner machine between events (``Owner.check_invariants``).

The pure tests (``tests/test_owner.py``) call it after every event, in the spirit of
dask distributed's ``validate_state()``: every queued task is in the queue once, every
sent task on exactly one lease, the leases' byte books add up and stay in budget, every
owned object is LOCAL exactly when its value is kept, a pending one has a live task or
call, and the actor channels' own books hold (``ActorChannels.check_invariants``).
"""

from __future__ import annotations

from .. import protocol as P
from ..states import D, L, OW


def check_owner(o) -> None:
    queued = {id(r) for r in o.queue}
    assert len(queued) == len(o.queue), "a task is queued twice"
    sent: dict[int, int] = {}
    for epoch, lease in o.leases.items():
        assert lease.key == epoch and lease.state is not L.ENDED, lease.state
        assert len(lease.inflight) <= o.depth, (epoch, len(lease.inflight))
        assert lease.bytes == sum(r.cost for r in lease.inflight.values() if r), epoch
        assert lease.bytes <= o.budget, (epoch, lease.bytes)
        for tid, rec in lease.inflight.items():
            if rec is None:
                assert tid + 1 in o.seeding, f"seed {tid} not seeding"
                continue
            assert rec.state is D.SENT and rec.lease == epoch, (tid, rec.state)
            assert tid not in sent, f"task {tid} on two leases"
            sent[tid] = epoch
    for tid, rec in o.tasks.items():
        assert rec.key == tid and rec.state is not D.ENDED, (tid, rec.state)
        if rec.state is D.QUEUED:
            assert id(rec) in queued, f"task {tid} QUEUED but not in the queue"
        else:
            assert sent.get(tid) == rec.lease or rec.lease not in o.leases, tid
    for epoch, lease in o.ending.items():  # (ended with tasks in flight: see SlotFree)
        assert lease.state is L.ENDED and epoch not in o.leases, epoch
        assert any(r is not None for r in lease.inflight.values()), f"ending {epoch} empty"
        for tid, rec in lease.inflight.items():
            assert rec is None or (o.tasks.get(tid) is rec and rec.lease == epoch), tid
    for rec in o.queue:
        assert o.tasks.get(rec.key) is rec and rec.state is D.QUEUED, rec.key
    # (a worker's new lease may be granted before its old one's end is read here)
    assert len({lease.wid for lease in o.leases.values()}) + len(o.flagged) \
        <= o.max_leases + len(o.seeding)
    live = {oid for tid, rec in o.tasks.items()
            for oid in P.return_ids(tid, rec.spec.nret)}
    live |= o.actors.live_returns()
    for oid, st in o.owned.items():
        assert (st is OW.LOCAL) == (oid in o.local), (oid, st)
        if st is OW.LOCAL:
            assert oid not in o.dropped and oid not in o.awaiting, oid
        elif oid not in o.awaiting:
            assert oid in live, f"pending object {oid} has no live task or call"
    assert o.awaiting <= set(o.owned), "awaiting an object not owned"
    assert o.dropped <= set(o.owned), "a dropped object is not owned"
    o.actors.check_invariants()

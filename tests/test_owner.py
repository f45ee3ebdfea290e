"""Tests for mpray.owner.machine: the driver's owner machine, driven event by event.

No engine and no processes: each test feeds events (typed protocol records) into an
``Owner`` and checks the instructions that come out, with ``check_invariants()`` after
every event (``Harness.ev``).  A small fake shell applies the instructions the way
``driver_client.DriverClient`` does: values go into the cache the machine reads, node
messages and slot messages are collected.
"""

from __future__ import annotations

import collections
import pickle
import signal

import pytest

from mpray import exceptions as exc
from mpray import protocol as P
from mpray.owner.machine import Owner
from mpray.store.serialization import ARENA, ERROR, INLINE
from mpray.states import (CHANNEL_TRANSITIONS, DIRECT_TRANSITIONS, LEASE_TRANSITIONS,
                          OWNED_TRANSITIONS, C, D, L, OW, TransitionError)

FID = 7
CPU1 = (("CPU", 1.0),)


def spec(tid, *, nret=1, deps=(), contained=(), retries=0, fid=FID, args=b"args"):
    return P.TaskSpec(tid, fid, "f", args, tuple(deps), nret, CPU1, retries, False,
                      tuple(contained), None)


def call(tid, aid, *, nret=1, deps=(), contained=(), retries=0):
    return P.TaskSpec(tid, None, "A.m", b"args", tuple(deps), nret, (), retries, False,
                      tuple(contained), None, actor=aid, method="m")


class Harness:
    def __init__(self, **kw):
        self.values: dict = {}
        opts = dict(max_leases=2, depth=2, ring_cap=1 << 18, mailbox=True)
        opts.update(kw)
        self.o = Owner(0, 0, self.values, **opts)
        self.o.blobs[FID] = b"<function>"
        self.node: list = []
        self.slots: dict[int, list] = collections.defaultdict(list)
        self.released: list = []
        self.signals: list = []
        self.words: dict[int, int] = {}
        self.delivered: list = []
        self.failed: list = []  # (tid, error class) the control store hears of
        self.evicted: list = []  # EvictLocal: (oids, busy)

    def ev(self, e):
        out = self.o.handle(e)
        for ins in out:
            kind = type(ins)
            if kind is P.ToNode:  # (as the receiver sees it: through encode/decode)
                self.node.extend(P.decode(P.encode([ins.msg])))
            elif kind is P.ToSlot:
                self.slots[ins.slot].extend(P.decode(P.encode([ins.msg])))
            elif kind is P.Deliver:
                self.values[ins.oid] = ins.value
                self.delivered.append(ins.oid)
            elif kind is P.Release:
                self.released.extend(ins.oids)
            elif kind is P.Signal:
                self.signals.append((ins.pid, ins.signum))
            elif kind is P.CancelWord:
                self.words[ins.slot] = ins.tid
            elif kind is P.TaskFailed:
                self.failed.append((ins.tid, type(ins.error).__name__))
            elif kind is P.StoreLineage:
                pass  # (the shell's recorder: the control store)
            elif kind is P.EvictLocal:  # (the shell forgets the places not busy)
                self.evicted.append((list(ins.oids), list(ins.busy)))
                for oid in ins.oids:
                    if oid not in ins.busy:
                        self.values.pop(oid, None)
            else:
                raise AssertionError(f"unknown instruction {ins!r}")
        self.o.check_invariants()  # (between events: after the shell carried them out)
        return out

    def take_node(self):
        out, self.node = self.node, []
        return out

    def take_slot(self, slot):
        return self.slots.pop(slot, [])

    def submit(self, tid, **kw):
        return self.ev(P.SubmitTask(spec(tid, **kw), (), None))

    def grant(self, wid, epoch, slot, first_oid, pid=1000):
        return self.ev(P.LeaseGrant(wid, epoch, slot, pid + wid, first_oid))

    def finish(self, tid, value=b"v", nret=1, run_s=0.001):
        """A leased task's worker reports: DoneD with its values."""
        values = [(oid, INLINE, value) for oid in P.return_ids(tid, nret)]
        self.ev(P.DoneD(tid, values, None, False, run_s))


def leased(h: Harness, slot=0, wid=1, epoch=1, first=10):
    """A harness whose owner holds one lease (born from task ``first``)."""
    h.submit(first)
    (sub,) = h.take_node()
    assert type(sub) is P.Submit and sub.spec.lease  # flagged: lease me its worker
    h.grant(wid, epoch, slot, first + 1)
    h.ev(P.Obj(first + 1, INLINE, b"seed"))  # its own value comes from the node
    return h


# ------------------------------------------------------------------------ state tables


@pytest.mark.parametrize("table,states", [
    (OWNED_TRANSITIONS, OW), (DIRECT_TRANSITIONS, D), (LEASE_TRANSITIONS, L),
    (CHANNEL_TRANSITIONS, C),
], ids=["owned", "direct", "lease", "channel"])
def test_owner_tables_are_closed(table, states):
    assert set(table) == set(states)
    for src, targets in table.items():
        assert all(t in states and t is not src for t in targets), src


# ------------------------------------------------------------------------ leases


def test_first_task_goes_by_the_node_flagged_and_its_worker_becomes_a_lease():
    h = Harness()
    h.submit(10)
    (sub,) = h.take_node()
    assert sub.spec.tid == 10 and sub.spec.lease is True
    assert h.o.flagged == {11} and 11 not in h.o.owned  # the node owns its returns
    h.grant(1, 1, 0, 11)
    lease = h.o.leases[1]
    assert lease.inflight == {10: None} and h.o.seeding == {11: 1}  # still running it
    h.ev(P.Obj(11, INLINE, b"x"))  # its value: the lease is free now
    assert lease.inflight == {} and h.o.seeding == {} and h.values[11] == (INLINE, b"x")


def test_direct_tasks_run_on_the_lease_and_their_values_stay_local():
    h = leased(Harness())
    h.submit(20)
    (m,) = h.take_slot(0)
    assert type(m) is P.Exec and m.tid == 20 and m.epoch == 1 and m.fblob == b"<function>"
    assert h.take_node() == []  # the node never hears of it
    assert h.o.owned[21] is OW.PENDING
    h.finish(20)
    assert h.values[21] == (INLINE, b"v") and h.o.owned[21] is OW.LOCAL
    h.submit(30)
    (m,) = h.take_slot(0)
    assert m.fblob is None  # the worker has the function already
    h.ev(P.RefGone((21,), False))  # the node never knew it: nothing to release
    assert 21 not in h.o.owned and h.released == [] and h.take_node() == []


def test_a_value_that_comes_at_once_is_kept():
    """The ordering race of remote_function (a value that arrives before anything else
    happens here) cannot lose it: returns are owned from the submit on."""
    h = leased(Harness())
    h.submit(20)
    h.ev(P.DoneD(20, [(21, INLINE, b"fast")], None, False, 0.0))
    assert h.delivered[-1] == 21 and h.o.owned[21] is OW.LOCAL
    assert h.values[21] == (INLINE, b"fast")


def test_a_node_tasks_value_handed_over_by_its_worker_frees_the_lease_it_seeded():
    h = Harness()
    h.submit(10)
    h.take_node()
    h.grant(1, 1, 0, 11)
    h.ev(P.Obj(11, INLINE, b"x"))  # (read from the worker's ring, not the node's)
    assert h.o.leases[1].inflight == {} and h.values[11] == (INLINE, b"x")


def test_leases_full_queue_here_and_refill_as_tasks_end():
    h = leased(Harness(max_leases=1, depth=2))
    for tid in (20, 30, 40, 50):
        h.submit(tid)
    # a short queue waits for the lease to be free; with a backlog a second task goes
    # in behind the running one (lease_depth)
    assert [m.tid for m in h.take_slot(0)] == [20]
    assert [r.key for r in h.o.queue] == [30, 40, 50]
    h.finish(20)
    assert [m.tid for m in h.take_slot(0)] == [30, 40]
    h.finish(30)
    assert [m.tid for m in h.take_slot(0)] == [50]
    h.finish(40)
    h.finish(50)
    assert not h.o.queue and not h.o.tasks and h.o.leases[1].inflight == {}


def test_short_queue_waits_for_a_free_lease_rather_than_behind_a_running_task():
    h = leased(Harness(max_leases=2, depth=2))
    h.submit(20)
    h.take_slot(0)
    h.submit(30)  # one lease busy, room for another: the node runs it, leasing us one
    (sub,) = h.take_node()
    assert sub.spec.tid == 30 and sub.spec.lease and h.take_slot(0) == []


def test_a_worker_owner_counts_its_own_cpu_until_it_lends_it_in_get():
    """A worker owner holds one of the node's CPUs while it runs: with 2 CPUs and one
    lease busy, its next task waits here (at the node it would only wait for a CPU);
    when it blocks in get, one queued task goes the node's way to lease the lent CPU."""
    h = leased(Harness(max_leases=2, depth=2))
    h.o.own_cpu = True
    h.submit(20)
    assert [m.tid for m in h.take_slot(0)] == [20]
    h.submit(30)
    h.submit(40)
    assert h.take_node() == [] and [r.key for r in h.o.queue] == [30, 40]
    h.ev(P.Lending(True))  # blocks in get: its CPU is lent
    (sub,) = h.take_node()
    assert sub.spec.tid == 30 and sub.spec.lease and h.o.flagged == {31}
    assert [r.key for r in h.o.queue] == [40] and h.o.own_cpu is False
    h.grant(2, 2, 1, 31)
    h.ev(P.Obj(31, INLINE, b"x"))  # the seeding task ended: the new lease takes 40
    assert [m.tid for m in h.take_slot(1)] == [40]
    h.ev(P.Lending(False))  # runs again: two leases stay, none more is asked for
    h.submit(50)
    h.submit(60)
    assert h.take_node() == [] and h.o.own_cpu is True


def test_a_task_in_flight_when_its_slot_lease_expires_comes_back_bounced():
    h = leased(Harness(max_leases=1))
    h.submit(20)
    h.take_slot(0)  # sent, but the worker gave the lease back before reading it
    h.ev(P.Expired(1, 1))
    assert h.o.leases == {} and list(h.o.ending) == [1]
    h.ev(P.ReturnD(1, 1, [20], False))  # it reads it later: stale epoch, bounced
    (sub,) = h.take_node()  # (no lease left: the node runs it)
    assert h.o.ending == {} and sub.spec.tid == 20


def test_a_task_in_flight_on_an_expired_lease_is_retried_when_its_worker_dies():
    """The worker gave the lease back, then died before reading the task (a force
    cancel of another task it ran meanwhile): the task must not wait for ever."""
    h = leased(Harness(max_leases=1))
    h.submit(20, retries=1)
    h.take_slot(0)
    h.ev(P.Expired(1, 1))
    h.ev(P.SlotFree(0))  # (the slot of worker 1, which died)
    (sub,) = h.take_node()
    assert sub.spec.tid == 20 and sub.spec.retries == 0  # retried by the node
    assert h.o.ending == {} and 20 not in h.o.tasks and 21 not in h.o.owned


def test_an_expired_leases_task_fails_when_its_worker_dies_without_retries():
    h = leased(Harness(max_leases=1))
    h.submit(20)
    h.take_slot(0)
    h.ev(P.Expired(1, 1))
    h.ev(P.SlotFree(0))
    assert isinstance(pickle.loads(h.values[21][1]), exc.WorkerCrashedError)
    assert h.o.ending == {} and not h.o.tasks


def test_a_task_cancelled_while_its_lease_ends_fails_when_it_comes_back():
    h = leased(Harness(max_leases=1))
    h.submit(20)
    h.take_slot(0)
    h.ev(P.Expired(1, 1))
    h.ev(P.CancelTask(20, False))
    h.ev(P.ReturnD(1, 1, [20], False))
    assert isinstance(pickle.loads(h.values[21][1]), exc.TaskCancelledError)
    assert not h.o.queue and not h.o.tasks


def test_expired_lease_before_its_grant_is_ignored():
    h = Harness()
    h.submit(10)
    h.take_node()
    h.ev(P.Expired(1, 1))  # the worker's own ring is read before the node's grant
    h.grant(1, 1, 0, 11)
    assert h.o.leases == {} and h.o.expired == set()


def test_returned_blocked_pauses_the_lease_until_resumed():
    h = leased(Harness(max_leases=1, depth=2))
    for tid in (20, 25, 30):
        h.submit(tid)
    h.finish(20)
    assert [m.tid for m in h.take_slot(0)] == [20, 25, 30]
    h.ev(P.ReturnD(1, 1, [30], True))  # 25 waits in get: 30 comes back unstarted
    assert h.o.leases[1].state is L.PAUSED and h.take_slot(0) == []
    # no other lease to run it (and none coming): the node takes it (and may start a
    # worker for it: the waiting task lent its CPU)
    assert [m.spec.tid for m in h.take_node()] == [30] and not h.o.queue
    h.finish(25)  # (a paused lease's task ended: it is active again)
    assert h.o.leases[1].state is L.ACTIVE
    h.ev(P.ReturnD(1, 1, [], True))
    h.ev(P.Resumed(1, 1))
    h.submit(40)
    assert [m.tid for m in h.take_slot(0)] == [40] and h.o.leases[1].state is L.ACTIVE


def test_every_lease_paused_sends_the_queue_to_the_node():
    h = leased(Harness(max_leases=1, depth=1))
    h.submit(20)
    h.take_slot(0)
    h.submit(30)
    assert [r.key for r in h.o.queue] == [30]
    h.ev(P.ReturnD(1, 1, [], True))  # its task blocks (nothing queued behind it)
    (sub,) = h.take_node()
    assert sub.spec.tid == 30 and not h.o.queue and 31 not in h.o.owned


def test_bounced_task_of_an_ended_lease_is_sent_again():
    h = leased(Harness(max_leases=1, depth=2))
    h.submit(20)
    h.take_slot(0)
    h.ev(P.ReturnD(1, 1, [20], False))  # a stale epoch: that lease is over
    assert h.o.leases == {}
    (sub,) = h.take_node()  # no lease left and none coming: the node runs it
    assert sub.spec.tid == 20


def test_lease_lost_retries_through_the_node_or_fails():
    h = leased(Harness(max_leases=1, depth=2))
    h.submit(20)
    h.submit(30, retries=2)
    h.submit(40, retries=0)
    h.finish(20)
    assert [m.tid for m in h.take_slot(0)] == [20, 30, 40]
    h.ev(P.LeaseLost(1, 1, "killed by SIGKILL"))
    (sub,) = h.take_node()
    assert sub.spec.tid == 30 and sub.spec.retries == 1
    err = pickle.loads(h.values[41][1])
    assert h.values[41][0] == ERROR and isinstance(err, exc.WorkerCrashedError)
    assert "SIGKILL" in str(err)
    assert h.failed == [(40, "WorkerCrashedError")]  # (the retried one is not failed)


def test_retryable_error_goes_to_the_node_with_one_retry_less():
    h = leased(Harness())
    h.submit(20, retries=1)
    h.take_slot(0)
    boom = pickle.dumps(exc.RayTaskError("f", "tb", ValueError("x")))
    h.ev(P.DoneD(20, None, boom, False, 0.0))
    (sub,) = h.take_node()
    assert sub.spec.retries == 0 and 21 not in h.o.owned
    h.submit(30, retries=0)
    h.take_slot(0)
    h.ev(P.DoneD(30, None, boom, False, 0.0))  # no retry left: the error stands
    assert h.values[31] == (ERROR, boom)


def test_results_by_the_node_wait_and_a_dropped_ref_is_released_then():
    h = leased(Harness())
    h.submit(20)
    h.take_slot(0)
    h.ev(P.DoneD(20, None, None, True, 0.0))  # arena values: PutFor went to the node
    assert 21 in h.o.awaiting
    h.ev(P.RefGone((21,), True))  # the node holds it for us: release once it comes
    assert h.released == [] and 21 in h.o.dropped
    h.ev(P.Obj(21, ARENA, (0, 10, (), 64)))
    assert h.released == [21] and 21 not in h.o.owned


# ------------------------------------------------------------------------ refs leaving


def test_ref_leaving_promises_a_pending_value_and_puts_it_when_it_comes():
    h = leased(Harness())
    h.submit(20)
    h.take_slot(0)
    h.ev(P.Publish((21,)))
    assert h.take_node() == [P.Promise(21)] and h.o.owned[21] is OW.PROMISED
    h.ev(P.RefGone((21,), False))
    h.finish(20, b"late")
    assert h.take_node() == [P.Put(21, INLINE, b"late", ())]
    assert h.released == [21] and 21 not in h.o.owned  # released after the Put


def test_ref_leaving_a_local_value_puts_it_first():
    h = leased(Harness())
    h.submit(20)
    h.take_slot(0)
    h.finish(20, b"v20")
    # a task by the node reads it: the Put goes before the Submit, in one frame
    h.ev(P.SubmitTask(spec(40, deps=[(0, 21)]), None, None))
    assert h.take_node()[:2] == [P.Put(21, INLINE, b"v20", ()), P.Submit(spec(40, deps=[(0, 21)]))]
    assert 21 not in h.o.owned
    h.ev(P.RefGone((21,), False))
    assert h.released == [21]  # the node knows it now


def test_ref_dropped_while_pending_is_never_released_to_the_node():
    h = leased(Harness())
    h.submit(20)
    h.take_slot(0)
    h.ev(P.RefGone((21,), False))
    h.finish(20)
    assert h.released == [] and 21 not in h.o.owned and h.take_node() == []


def test_dropped_direct_task_moved_to_the_node_releases_after_its_submit():
    h = leased(Harness(max_leases=1, depth=1))
    h.submit(20, retries=1)
    h.take_slot(0)
    h.ev(P.RefGone((21,), False))
    h.ev(P.LeaseLost(1, 1, "gone"))
    (sub,) = h.take_node()
    assert sub.spec.tid == 20 and h.released == [21]


# ------------------------------------------------------------------------ cancel


def test_cancel_queued_task_fails_it_here():
    h = leased(Harness(max_leases=1, depth=1))
    h.submit(20)
    h.submit(30)
    h.take_slot(0)
    h.ev(P.CancelTask(30, False))
    assert not h.o.queue and isinstance(pickle.loads(h.values[31][1]), exc.TaskCancelledError)


def test_cancel_sent_task_interrupts_its_worker():
    h = leased(Harness())
    h.submit(20)
    h.take_slot(0)
    h.ev(P.CancelTask(20, False))
    assert h.words == {0: 20} and h.take_slot(0) == [P.Drop(20)]
    assert h.signals == [(1001, signal.SIGUSR1)]
    h.ev(P.CancelTask(20, True))
    assert h.signals[-1] == (1001, signal.SIGKILL)
    h.ev(P.LeaseLost(1, 1, "SIGKILL"))
    assert isinstance(pickle.loads(h.values[21][1]), exc.TaskCancelledError)


# ------------------------------------------------------------------------ long tasks (MPI)


def test_long_functions_go_by_the_node_queued_ones_too():
    h = leased(Harness(max_leases=1, depth=1, spill_long=0.002))
    h.submit(20)
    h.submit(30)
    h.submit(40, fid=8)
    h.o.blobs[8] = b"<g>"
    h.take_slot(0)
    h.finish(20, run_s=0.05)  # f is long: 30 (queued) goes to the node; g stays
    subs = [m.spec.tid for m in h.take_node() if type(m) is P.Submit]
    assert subs == [30] and [m.tid for m in h.take_slot(0)] == [40]
    h.submit(50)
    assert [m.spec.tid for m in h.take_node()] == [50]


def test_an_untimed_functions_first_tasks_past_the_leases_go_by_the_node():
    """Under MPI, a function not timed yet: tasks that find no lease free here go the
    node's way (which gives them to idle ranks), up to ``first_spread``; the rest wait
    for the lease.  Once timed short, its tasks stay direct."""
    h = Harness(max_leases=1, depth=1, spill_long=0.002, first_spread=3)
    h.submit(10)
    (sub,) = h.take_node()
    assert sub.spec.lease  # this rank's CPU: the lease
    for tid in (20, 30, 40, 50, 60):
        h.submit(tid)
    subs = h.take_node()
    assert [(m.spec.tid, m.spec.lease) for m in subs] == [(20, False), (30, False),
                                                           (40, False)]
    h.grant(1, 1, 0, 11)
    h.ev(P.Obj(11, INLINE, b"seed"))
    assert [m.tid for m in h.take_slot(0)] == [50] and h.take_node() == []
    h.ev(P.SeedTime(FID, 0.0001))  # the lease's first task was short: 60 waits here
    assert h.take_node() == []
    h.finish(50, run_s=0.0001)
    assert [m.tid for m in h.take_slot(0)] == [60]
    h.submit(70)
    h.submit(80)
    assert h.take_node() == []  # (timed: no more spreading)


def test_an_untimed_function_does_not_queue_behind_a_running_task_under_mpi():
    """Under MPI a task of a function not timed yet waits for a free lease rather than
    queueing behind a running task (a long one would wait there while ranks idle);
    once timed short, they queue behind each other as usual."""
    def run(h):
        h.o.blobs[8] = b"<g>"
        h.submit(15, fid=8)
        assert [m.tid for m in h.take_slot(0)] == [15]
        for tid in (20, 30, 40):
            h.submit(tid)
        h.finish(15, run_s=0.0001)  # (g is timed, f is not)
        return [m.tid for m in h.take_slot(0)]

    mpi = leased(Harness(max_leases=1, depth=2, spill_long=0.002))
    assert run(mpi) == [20]
    mpi.finish(20, run_s=0.0001)
    assert [m.tid for m in mpi.take_slot(0)] == [30, 40]  # (timed short: two in flight)
    assert run(leased(Harness(max_leases=1, depth=2))) == [20, 30]  # (one host)


def test_a_long_first_task_sends_what_waits_for_its_lease_by_the_node():
    """The task that made the lease ran long (its lease says, ``SeedTime``: its value
    came without a time): what waits here for that lease goes the node's way at once,
    not after the next task on the lease ends."""
    h = Harness(max_leases=1, depth=1, spill_long=0.002, first_spread=1)
    h.submit(10)
    h.take_node()
    for tid in (20, 30, 40):
        h.submit(tid)
    assert [m.spec.tid for m in h.take_node()] == [20]  # (first_spread: 1)
    h.grant(1, 1, 0, 11)
    h.ev(P.Obj(11, INLINE, b"seed"))
    assert [m.tid for m in h.take_slot(0)] == [30]
    h.ev(P.SeedTime(FID, 0.5))
    assert [m.spec.tid for m in h.take_node()] == [40]


# ------------------------------------------------------------------------ actors


def alive(h, aid=100, slot=3, inc=0):
    h.ev(P.ActorUpdate(aid, "ALIVE", inc, 5, slot, 2000, None))


def test_calls_wait_for_the_actor_then_go_straight_to_its_ring_in_order():
    h = Harness()
    h.ev(P.SubmitCall(call(110, 100), None))
    h.ev(P.SubmitCall(call(120, 100), None))
    assert h.take_slot(3) == [] and h.o.actors.backlog == 2
    alive(h)
    assert [m.tid for m in h.take_slot(3)] == [110, 120] and h.o.actors.backlog == 0
    h.ev(P.ADoneD(110, [(111, INLINE, b"r")]))
    assert h.values[111] == (INLINE, b"r") and h.o.owned[111] is OW.LOCAL


def test_call_with_a_ref_inside_takes_the_node_and_fences_the_direct_path():
    h = Harness()
    alive(h)
    h.ev(P.SubmitCall(call(110, 100, contained=[55]), None))
    h.ev(P.SubmitCall(call(120, 100), None))
    assert [m.spec.tid for m in h.take_node() if type(m) is P.Submit] == [110]
    assert h.take_slot(3) == []  # 120 waits until the node's call has ended
    h.ev(P.ANodeDone(100, 110))
    assert [m.tid for m in h.take_slot(3)] == [120]


def test_call_whose_argument_is_not_here_goes_by_the_node():
    h = Harness()
    alive(h)
    h.ev(P.SubmitCall(call(110, 100, deps=[(0, 77)]), None))
    assert [type(m) for m in h.take_node()] == [P.Submit]
    h.values[88] = (INLINE, b"x")
    h.ev(P.ANodeDone(100, 110))
    h.ev(P.SubmitCall(call(120, 100, deps=[(0, 88)]), None))
    (m,) = h.take_slot(3)
    assert m.deps == ((0, 88, INLINE, b"x"),)


def test_actor_restart_retries_calls_in_flight_or_fails_them():
    h = Harness()
    alive(h)
    h.ev(P.SubmitCall(call(110, 100, retries=1), None))
    h.ev(P.SubmitCall(call(120, 100, retries=0), None))
    h.take_slot(3)
    h.ev(P.ActorUpdate(100, "RESTARTING", 1, None, None, 0, None))
    err = pickle.loads(h.values[121][1])
    assert isinstance(err, exc.ActorUnavailableError)
    assert h.take_slot(3) == [] and h.o.actors.backlog == 1
    alive(h, slot=4, inc=1)
    (m,) = h.take_slot(4)
    assert m.tid == 110 and m.incarnation == 1 and m.retries == 0


def test_dead_actor_fails_calls_through_the_node():
    h = Harness()
    alive(h)
    death = pickle.dumps(exc.ActorDiedError("boom"))
    h.ev(P.ActorUpdate(100, "DEAD", 0, None, None, 0, death))
    h.ev(P.SubmitCall(call(110, 100), None))
    assert [m.spec.tid for m in h.take_node()] == [110]  # the node fails it
    assert 111 not in h.o.owned


def test_cancel_queued_call_fails_it_and_the_next_one_goes():
    h = Harness()
    h.ev(P.SubmitCall(call(110, 100), None))
    h.ev(P.SubmitCall(call(120, 100), None))
    h.ev(P.CancelTask(110, False))
    assert isinstance(pickle.loads(h.values[111][1]), exc.TaskCancelledError)
    alive(h)
    assert [m.tid for m in h.take_slot(3)] == [120]
    h.ev(P.CancelTask(120, False))
    assert h.take_slot(3) == [P.Drop(120)]  # the actor decides, and reports


def test_a_full_ring_holds_calls_here_until_room_comes_back():
    h = Harness(ring_cap=1 << 14)  # budget 12 KiB in flight, calls up to 4 KiB
    alive(h)
    big = b"x" * 3900
    for tid in (110, 120, 130, 140):
        h.ev(P.SubmitCall(call(tid, 100)._replace(args=big), None))
    assert [m.tid for m in h.take_slot(3)] == [110, 120, 130] and h.o.actors.backlog == 1
    h.ev(P.ADoneD(110, [(111, INLINE, b"r")]))
    assert [m.tid for m in h.take_slot(3)] == [140]
    h.ev(P.SubmitCall(call(150, 100)._replace(args=b"x" * 5000), None))  # over 4 KiB:
    assert h.take_node() == []  # by the node, once the calls in flight have ended (fence)
    for tid in (120, 130, 140):
        h.ev(P.ADoneD(tid, [(tid + 1, INLINE, b"r")]))
    assert [m.spec.tid for m in h.take_node()] == [150]


def test_killed_actor_calls_go_by_the_node():
    h = Harness()
    alive(h)
    h.ev(P.ActorKilled(100))
    h.ev(P.SubmitCall(call(110, 100), None))
    assert [m.spec.tid for m in h.take_node()] == [110] and h.take_slot(3) == []


# ------------------------------------------------------------------------ invariants


def test_invariant_check_catches_a_task_in_two_places():
    h = leased(Harness())
    h.submit(20)
    rec = h.o.tasks[20]
    h.o.queue.append(rec)  # corrupt: queued and sent
    with pytest.raises(AssertionError):
        h.o.check_invariants()


def test_impossible_transition_raises():
    h = leased(Harness())
    h.submit(20)
    h.finish(20)
    with pytest.raises(TransitionError):
        h.o._set(21, OW.PROMISED)  # LOCAL -> PROMISED is not in the table


# ------------------------------------------------------------------------ the API layer


class _RecordingClient:
    """Stands in for the process's client: records, at each submit, whether the
    ObjectRefs of the task's returns already existed (they must: a result may come
    back before submit_task returns, and a value nobody holds a ref to is dropped)."""

    token = ("recording",)
    inline_max = 1 << 20
    proc = 0

    def __init__(self):
        self._refs: dict[int, int] = {}
        self._next = 1000
        self.seen: list[bool] = []

    def new_ids(self, n):
        first, self._next = self._next, self._next + n + 1
        return first

    def add_ref(self, oid, borrowed):
        self._refs[oid] = self._refs.get(oid, 0) + 1

    def remove_ref(self, oid):
        self._refs[oid] -= 1

    def register_function(self, fid, blob):
        pass

    def _record(self, spec):
        self.seen.append(all(self._refs.get(o) for o in P.spec_returns(spec)))

    def submit_task(self, spec, direct_ok, hold):
        self._record(spec)

    def submit_call(self, spec, hold):
        self._record(spec)


def test_refs_exist_before_a_task_or_call_is_submitted(monkeypatch):
    import mpray
    from mpray import _global
    from mpray.actor import ActorHandle
    from mpray.object_ref import ObjectRef

    fake = _RecordingClient()
    monkeypatch.setattr(_global, "client", fake)

    @mpray.remote
    def f():
        return 1

    @mpray.remote(num_returns=2)
    def g():
        return 1, 2

    f.remote()
    g.remote()
    handle = ActorHandle(500, ObjectRef(501, owned=True), {"methods": {"m": {}},
                                                          "class_name": "A"})
    handle.m.remote()
    assert fake.seen == [True, True, True]


def test_call_reading_the_previous_calls_result_goes_direct_once_that_comes():
    """The value decided in the same event (the first call's ADoneD) is found at once,
    before the shell has cached it."""
    h = Harness()
    alive(h)
    h.ev(P.SubmitCall(call(110, 100), None))
    h.ev(P.SubmitCall(call(120, 100, deps=[(0, 111)]), None))
    assert [m.tid for m in h.take_slot(3)] == [110]  # 120 waits (fence: 110 in flight)
    h.ev(P.ADoneD(110, [(111, INLINE, b"r")]))
    (m,) = h.take_slot(3)
    assert m.tid == 120 and m.deps == ((0, 111, INLINE, b"r"),) and h.take_node() == []


def test_a_workers_new_lease_may_come_before_its_old_leases_end():
    """The node grants a worker anew once its old lease ended; the old lease's Expired
    (on the old channel) can be read after the new grant (on the node's ring)."""
    h = Harness(max_leases=1, depth=1)
    h.submit(10)
    h.take_node()
    h.ev(P.LeaseGrant(1, 1, 0, 1001, 11, 5))  # a worker owner's lease: channel 5
    h.ev(P.Obj(11, INLINE, b"seed"))
    h.submit(20)
    assert [m.tid for m in h.take_slot(5)] == [20]
    h.submit(30)  # queued behind 20
    h.ev(P.LeaseGrant(1, 2, 0, 1001, 41, 6))  # new lease of worker 1 (channel 6) ...
    h.ev(P.DoneD(20, [(21, INLINE, b"v")], None, False, 0.0))  # ... and the old one's end
    h.ev(P.Expired(1, 1))
    assert h.take_node() == [P.ChannelFree(5)] and set(h.o.leases) == {2}
    assert [m.tid for m in h.take_slot(6)] == [30] and h.values[21] == (INLINE, b"v")


def test_a_channel_lease_that_expires_requeues_what_it_never_read():
    h = Harness(max_leases=1, depth=2)
    h.submit(10)
    h.take_node()
    h.ev(P.LeaseGrant(1, 1, 0, 1001, 11, 5))
    h.ev(P.Obj(11, INLINE, b"seed"))
    for tid in (20, 30, 40):
        h.submit(tid)
    h.ev(P.DoneD(20, [(21, INLINE, b"v")], None, False, 0.0))
    assert [m.tid for m in h.take_slot(5)] == [20, 30, 40]
    h.ev(P.Expired(1, 1))  # (it idled out before reading 30 and 40)
    assert [m.spec.tid for m in h.take_node() if type(m) is P.Submit] == [30, 40]
    assert h.o.leases == {} and not h.o.queue


# ------------------------------------------------------------------------ spilling


def test_an_evict_keeps_the_places_that_tasks_in_flight_read():
    h = leased(Harness())
    place = (4096, 16, ((64, 1000),), 1088)
    h.values[500], h.values[600] = (ARENA, place), (ARENA, (8192,) + place[1:])
    h.ev(P.SubmitTask(spec(20, deps=[(0, 500)]), ((0, 500, ARENA, h.values[500][1]),), None))
    (ex,) = h.take_slot(0)
    assert ex.deps == ((0, 500, ARENA, place),)  # its place went to the leased worker
    h.ev(P.Evict([500, 600]))
    assert h.evicted == [([500, 600], [500])]  # 500 is read by task 20: it stays
    assert 500 in h.values and 600 not in h.values
    h.finish(20)
    h.ev(P.Evict([500]))
    assert h.evicted[-1] == ([500], [])


def test_a_task_whose_argument_was_evicted_after_the_shell_read_it_goes_by_the_node():
    h = leased(Harness())
    place = (4096, 16, ((64, 1000),), 1088)
    h.values[500] = (ARENA, place)
    deps = ((0, 500, ARENA, place),)  # (read by the shell before the Evict was handled)
    h.ev(P.Evict([500]))
    assert 500 not in h.values
    h.ev(P.SubmitTask(spec(20, deps=[(0, 500)]), deps, None))
    (sub,) = h.take_node()
    assert type(sub) is P.Submit and sub.spec.tid == 20  # the node reads it back first
    assert h.take_slot(0) == []


def test_an_owner_keeps_the_lineage_of_leased_tasks_whose_values_went_by_the_node():
    h = leased(Harness())
    h.submit(20, nret=2, retries=2)
    h.take_slot(0)
    h.ev(P.DoneD(20, None, None, True, 0.001))  # arena values: they come by the node
    h.ev(P.LineageAsk([21, 99]))
    ans = h.take_node()
    assert [type(m) for m in ans] == [P.LineageIs, P.LineageIs]
    assert ans[0].oid == 21 and ans[0].spec.tid == 20 and ans[0].reason is None
    assert ans[1] == P.LineageIs(99, None, None)  # not a task of ours: a put
    h.ev(P.RefGone([21], True))
    assert 20 in h.o.lineage.specs  # its other value is still held here
    h.ev(P.RefGone([22], True))
    assert h.o.lineage.specs == {} and h.o.lineage.of == {}
    h.submit(30, retries=0)
    h.take_slot(0)
    h.ev(P.DoneD(30, None, None, True, 0.001))
    h.take_node()
    h.ev(P.LineageAsk([31]))
    (ans,) = h.take_node()
    assert ans.spec is None and "max_retries=0" in ans.reason


def test_an_owners_lineage_past_its_bound_goes_to_the_control_store():
    h = leased(Harness())
    h.o.lineage.max_bytes = 1
    h.submit(20, retries=2)
    h.take_slot(0)
    out = h.o.handle(P.DoneD(20, None, None, True, 0.001))
    (st,) = [i for i in out if type(i) is P.StoreLineage]
    assert st.tid == 20 and pickle.loads(st.blob)[0] == 20
    h.ev(P.LineageAsk([21]))
    (ans,) = h.take_node()
    assert ans == P.LineageIs(21, None, None, 20)  # the node reads it from the store

"""The MPI backend's pure parts: launcher detection, and the node's cluster view
(placement, forwarding, remote objects) driven event by event without processes."""

from __future__ import annotations

import pickle

import pytest

from mpray import exceptions as exc
from mpray import protocol as P
from mpray.node.cluster import AGENT, LENT_HOLDER
from mpray.node.scheduler import OWN_WAIT_S, Scheduler, TaskState
from mpray.store.serialization import ARENA, ERROR, INLINE
from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity
from mpray_mpi.launch import detect

pytestmark = pytest.mark.usefixtures("node_invariants")  # checked after every event

T = TaskState
FID = 7
NONE = pickle.dumps(None)
RANK1 = P.id_base(1, 3)  # ids made by process 3 of rank 1


# ----------------------------------------------------------------------------- launch


@pytest.mark.parametrize("env, want", [
    ({}, None),
    ({"PMI_RANK": "1", "PMI_SIZE": "4", "MPI_LOCALNRANKS": "2"}, (1, 4, 2, "PMI_RANK")),
    ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}, (0, 2, 1,
                                                                  "OMPI_COMM_WORLD_RANK")),
    ({"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_TASKS_PER_NODE": "4(x2)"},
     (3, 8, 4, "SLURM_PROCID")),
    ({"PMI_RANK": "0", "PMI_SIZE": "1"}, None),  # one rank: plain single host
    ({"PMI_RANK": "0", "PMI_SIZE": "1", "MPRAY_BACKEND": "mpi"}, (0, 1, 1, "PMI_RANK")),
    ({"PMI_RANK": "1", "PMI_SIZE": "4", "MPRAY_BACKEND": "local"}, None),
    ({"MPRAY_BACKEND": "mpi"}, (0, 1, 1, "MPRAY_BACKEND")),
    ({"SLURM_JOB_ID": "12", "SLURM_NTASKS": "4"}, None),  # a batch script, not a step
])
def test_launch_detection(env, want):
    got = detect(env)
    assert (None if got is None else (got.rank, got.size, got.local_size, got.via)) == want


def test_bad_backend_is_named():
    with pytest.raises(ValueError, match="MPRAY_BACKEND"):
        detect({"MPRAY_BACKEND": "yes"})


# ----------------------------------------------------------------------------- placement


def sched(rank=0, nranks=3, cpus=1.0, workers=1, gpu_rank=None) -> Scheduler:
    s = Scheduler({"CPU": cpus}, node_id=f"n{rank}")
    s.register_function(FID, b"<f>")
    for wid in range(1, workers + 1):
        s.worker_started(wid)
    ranks = [(f"n{r}", {"CPU": cpus, **({"GPU": 1.0} if r == gpu_rank else {})})
             for r in range(nranks)]
    s.attach_cluster(rank, ranks)
    return s


def spec(tid, res=None, strategy=None, deps=()) -> P.TaskSpec:
    """A task spec record; ``res`` may be a dict (the spec holds it as sorted pairs)."""
    res = tuple(sorted((res or {"CPU": 1.0}).items()))
    return P.TaskSpec(tid, FID, "f", b"args", tuple(deps), 1, res, 0, False, (), strategy)


def fwds(s: Scheduler) -> list[P.Fwd]:
    """Take the Fwd messages queued for the agent, typed as the agent reads them (the
    constructor strips the nested TaskSpec to a plain tuple; decode types it again)."""
    got = [P.wrap_any(m) for m in s.out.get(AGENT, []) if type(m) is P.Fwd]
    s.out[AGENT] = [m for m in s.out.get(AGENT, []) if type(m) is not P.Fwd]
    assert all(type(m.spec) is P.TaskSpec for m in got)
    return got


def to_rank(s: Scheduler, kind: type) -> list[P.ToRank]:
    """The ToRank messages queued for the agent whose inner message is a ``kind``
    (typed as the agent reads them; they stay queued)."""
    got = [P.wrap_any(m) for m in s.out.get(AGENT, []) if type(m) is P.ToRank]
    return [m for m in got if type(m.msg) is kind]


def test_spread_goes_round_robin_over_the_ranks():
    s = sched()
    for i in range(6):
        s.submit(0, spec(100 + 10 * i, strategy="SPREAD"))
    sent = fwds(s)
    assert sorted(m.rank for m in sent) == [1, 1, 2, 2]  # two of six stay here (rank 0)
    assert sent[0].blob == b"<f>" and all(m.blob is None for m in sent[1:]
                                          if m.rank == sent[0].rank)
    assert all(s.tasks[m.spec.tid].worker == AGENT for m in sent)


def test_node_affinity_forwards_and_a_missing_hard_node_fails():
    s = sched()
    s.submit(0, spec(100, strategy=Affinity("n2", soft=False)))
    assert [m.rank for m in fwds(s)] == [2]
    s.submit(0, spec(110, strategy=Affinity("nX", soft=False)))
    assert isinstance(pickle.loads(s.objs[111].payload), exc.TaskUnschedulableError)
    s.submit(0, spec(120, strategy=Affinity("nX", soft=True)))
    s.schedule()
    assert fwds(s) == [] and s.tasks[120].worker == 1  # runs here


def test_infeasible_here_goes_where_it_fits_without_a_warning():
    s = sched(gpu_rank=1)
    s.submit(0, spec(100, res={"CPU": 1.0, "GPU": 1.0}))
    assert [m.rank for m in fwds(s)] == [1]
    assert not [a for a in s.actions if type(a) is P.Warn]


def test_a_backlog_spills_to_the_least_loaded_rank():
    s = sched(workers=1)
    s.update_load([(10, 0.0), (0, 1.0), (5, 0.0)])
    s.task_time[FID] = (5, 0.05)  # its tasks take 50 ms here: worth moving
    for i in range(6):
        s.submit(0, spec(100 + 10 * i))
    s.schedule()
    assert {m.rank for m in fwds(s)} == {1}


def test_tasks_shorter_than_a_move_stay():
    s = sched(workers=1)
    s.update_load([(10, 0.0), (0, 1.0), (0, 1.0)])
    s.task_time[FID] = (5, 0.0001)
    for i in range(6):
        s.submit(0, spec(100 + 10 * i))
    assert fwds(s) == []


def test_the_mean_task_time_is_learned_from_finished_tasks():
    s = sched(workers=1)
    s.now = 10.0
    s.submit(0, spec(100))
    s.schedule()
    s.now = 10.2
    s.task_done(1, 100, P.OK, [(101, INLINE, NONE, ())], False)
    assert s.task_time[FID] == (1, pytest.approx(0.2))


def test_a_task_stays_with_large_arguments_unless_the_wait_here_outweighs_them():
    s = sched(workers=1)
    s.update_load([(10, 0.0), (0, 1.0), (0, 1.0)])
    s.task_time[FID] = (5, 0.05)
    big = 900
    s.put(0, big, ARENA, (0, 64, (), 2_000_000_000))  # 2 GB here: 0.4 s to move
    for i in range(6):  # 0.3 s of work waits here: cheaper than moving 2 GB
        s.submit(0, spec(100 + 10 * i, deps=[(0, big)]))
    s.schedule()
    assert fwds(s) == []
    for i in range(6, 20):  # 1 s of work waits here now: some go, with their argument
        s.submit(0, spec(100 + 10 * i, deps=[(0, big)]))
    s.schedule()
    assert fwds(s)


def test_a_rank_that_holds_the_arguments_is_preferred():
    s = sched(workers=1)
    s.update_load([(10, 0.0), (0, 1.0), (0, 1.0)])
    s.task_time[FID] = (5, 0.05)
    there = P.id_base(2, 3) + 5  # rank 2's object, fetched here before
    s.refs(0, [there], ())  # (the driver holds it)
    s.put_fetched(there, ARENA, (0, 64, (), 2_000_000_000))  # 0.4 s to move to rank 1
    for i in range(6):
        s.submit(0, spec(100 + 10 * i, deps=[(0, there)]))
    s.schedule()
    assert {m.rank for m in fwds(s)} == {2}


def test_one_long_function_does_not_make_short_ones_move():
    s = sched(workers=1)
    s.update_load([(10, 0.0), (0, 1.0), (0, 1.0)])
    s.task_time[FID] = (5, 0.0001)
    s.task_time["long"] = (5, 0.5)
    for i in range(6):
        s.submit(0, spec(100 + 10 * i))
    s.schedule()
    assert fwds(s) == []


def test_forwarded_tasks_run_where_they_arrive():
    s = sched(rank=1)
    s.submit(AGENT, spec(RANK1 + 100, strategy="SPREAD"))
    s.schedule()
    assert fwds(s) == [] and s.tasks[RANK1 + 100].worker == 1


def test_remote_done_seals_the_results_for_their_owner():
    s = sched()
    s.submit(0, spec(100, strategy=Affinity("n1", soft=False)))
    fwds(s)
    s.remote_done(100, [(101, INLINE, NONE, (), ())], 1)
    assert s.objs[101].kind == INLINE and P.Obj(101, INLINE, NONE) in s.out[0]
    assert 100 not in s.tasks
    s.submit(0, spec(110, strategy=Affinity("n1", soft=False)))
    s.remote_done(110, [(111, ERROR, b"err", (), ())], 1)
    assert s.objs[111].kind == ERROR and s.stats["failed"] == 1


def test_holds_lent_by_the_rank_that_ran_a_task_go_back_when_their_refs_go():
    s = sched()
    inner, other = RANK1 + 7, RANK1 + 8
    s.submit(0, spec(100, strategy=Affinity("n1", soft=False)))
    s.submit(0, spec(110, strategy=Affinity("n1", soft=False)))
    fwds(s)
    # rank 1 ran it: its result refers to one of rank 1's objects, with a hold lent
    s.remote_done(100, [(101, INLINE, NONE, (inner,), (inner,))], 1)
    assert s.objs[inner].lent == 1 and s.objs[inner].contained_in == 1
    s.out[AGENT].clear()
    # a second result lending a hold on the same object: one is enough, it goes back
    s.remote_done(110, [(111, INLINE, NONE, (inner, other), (inner, other))], 1)
    assert s.out[AGENT] == [P.Unlend(inner, 1)] and s.objs[other].lent == 1
    s.out[AGENT].clear()
    s.refs(0, (), [101])  # the owner drops the first result: inner is still in the second
    assert inner in s.objs and s.out[AGENT] == []
    s.refs(0, (), [111])
    assert inner not in s.objs and other not in s.objs
    assert sorted(s.out[AGENT]) == [P.Unlend(inner, 1), P.Unlend(other, 1)]


def test_a_lent_hold_keeps_the_object_at_its_home():
    s = sched()
    s.put(2, 500, INLINE, NONE)  # a worker's object, then the agent lends a hold on it
    s.refs(LENT_HOLDER, [500], ())
    s.refs(2, (), [500])
    assert 500 in s.objs and LENT_HOLDER in s.objs[500].procs
    s.refs(LENT_HOLDER, (), [500])
    assert 500 not in s.objs


def test_another_ranks_object_is_fetched_once_and_freed_with_its_holders():
    s = sched()
    remote = RANK1 + 5
    s.submit(0, spec(100, deps=[(0, remote)]))
    s.submit(0, spec(110, deps=[(0, remote)]))
    assert [m for m in s.out[AGENT] if type(m) is P.Fetch] == [P.Fetch(remote)]
    assert s.tasks[100].state is T.PENDING_ARGS
    s.put_fetched(remote, INLINE, NONE)
    assert s.tasks[100].state is not T.PENDING_ARGS
    # a borrowed ref only tracks holders (no fetch) and goes with them
    other = RANK1 + 9
    s.refs(2, [other], ())
    assert other in s.objs and P.Fetch(other) not in s.out[AGENT]
    s.refs(2, (), [other])
    assert other not in s.objs


def test_moves_count_on_top_of_load_reports_for_a_while():
    """A report may predate the tasks this node moved there: they count on top of it
    until reports have had time to include them (so a burst does not all go to one
    rank)."""
    s = sched(workers=1)
    s.task_time[FID] = (1, 0.05)
    for i in range(6):
        s.submit(0, spec(100 + 10 * i))
    s.schedule()
    moved = [m.rank for m in fwds(s)]
    assert set(moved) == {1, 2}
    s.update_load([(4, 0.0), (0, 1.0), (0, 1.0)])  # (a report from before they came)
    assert s.load[1][0] == moved.count(1) and s.load[2][0] == moved.count(2)
    s.now += 1.0
    s.update_load([(4, 0.0), (0, 1.0), (0, 1.0)])
    assert s.load[1] == (0, 1.0) and s.load[2] == (0, 1.0)


def test_a_first_batch_of_untimed_tasks_goes_to_idle_ranks_only():
    """The paper's local scheduler forwards when overloaded: tasks of a function not timed
    yet that wait past this node's CPUs go to ranks with an idle CPU, one per idle CPU
    (each counted there until its next load report), and no further."""
    s = sched(workers=1)
    for i in range(6):
        s.submit(0, spec(100 + 10 * i))
    s.schedule()
    moved = fwds(s)
    assert sorted(m.rank for m in moved) == [1, 2]  # one per idle CPU there
    assert all(m.spec.tid > 100 for m in moved)  # (the first waits for the CPU here)
    s.schedule()
    assert fwds(s) == []  # (counted busy until they report)
    s.update_load([(4, 0.0), (0, 1.0), (0, 1.0)])  # (a report from before they came)
    s.schedule()
    assert fwds(s) == []  # (what it moved lately counts on top)
    s.now += 1.0
    s.update_load([(4, 0.0), (1, 0.0), (0, 1.0)])  # rank 1 busy, rank 2 idle again
    s.schedule()
    assert [m.rank for m in fwds(s)] == [2]


def test_untimed_tasks_stay_while_this_node_has_free_cpus():
    s = sched(cpus=2.0, workers=0)  # (workers still starting: the CPUs are free)
    for i in range(2):
        s.submit(0, spec(100 + 10 * i))
    s.schedule()
    assert fwds(s) == []


def test_a_rank_not_reported_yet_counts_as_idle_not_busy():
    """Rank 0's load window starts as NaN (the agent reads None): a rank that has not
    reported yet keeps its total CPUs as free, so a first batch can go there (zeros read
    as "no free CPU", and it stayed here)."""
    s = sched(workers=1)
    s.update_load([(0, 1.0), None, (0, 0.0)])  # rank 1 silent so far, rank 2 busy
    assert s.load == [(0, 1.0), (0, 1.0), (0, 0.0)]
    for i in range(3):
        s.submit(0, spec(100 + 10 * i))
    s.schedule()
    assert [m.rank for m in fwds(s)] == [1]


def _driver_leased():
    """Rank 0 of 2, its one CPU the driver's lease; rank 1 busy (nothing moves)."""
    s = sched(workers=2, nranks=2)
    s.leasable.update({1, 2})
    s.submit(0, spec(10)._replace(lease=True))
    s.schedule()
    (grant,) = [a for a in s.actions if type(a) is P.GrantLease]
    s.update_load([(0, 0.0), (1, 0.0)])
    return s, grant


def test_an_owners_own_waiting_task_takes_its_lease_back_only_after_a_while():
    """Under MPI an owner's plain one-CPU task that waits here (sent this way to move:
    untimed or long, and no rank idle) is its own work, as its leases' are: its lease
    stays for ``OWN_WAIT_S`` (taken back at once, its owner sent all it queued this way:
    a task's 300 nested tasks), then goes (an owner keeping its leases busy must not
    keep its own task waiting for ever).  The owner's task of another shape takes the
    lease back at once."""
    s, grant = _driver_leased()

    def reclaims():
        return [m for m in s.out.get(grant.wid, []) if type(m) is P.Reclaim]

    s.submit(0, spec(20))  # its own untimed task: waits for a CPU here
    s.schedule()
    assert s.tasks[20].state is TaskState.READY and fwds(s) == [] and reclaims() == []
    s.now += OWN_WAIT_S / 2
    s.schedule()
    assert reclaims() == []
    s.now += OWN_WAIT_S
    s.schedule()
    assert reclaims() == [P.Reclaim(grant.epoch)]


def test_an_owners_own_task_of_another_shape_takes_its_lease_back_at_once():
    s, grant = _driver_leased()
    s.submit(0, spec(30, res={"CPU": 0.5}))
    s.schedule()
    assert s.tasks[30].state is TaskState.READY
    assert [m for m in s.out.get(grant.wid, []) if type(m) is P.Reclaim] == \
        [P.Reclaim(grant.epoch)]


def test_another_owners_waiting_task_takes_a_lease_back_under_mpi_too():
    s, grant = _driver_leased()
    s.submit(2, spec(20))  # a task's nested one (worker 2 owns it): the lease goes
    s.schedule()
    assert [m for m in s.out.get(grant.wid, []) if type(m) is P.Reclaim] == \
        [P.Reclaim(grant.epoch)]


def test_a_task_forwarded_after_failing_here_carries_the_retries_it_has_left():
    s = sched(workers=1)
    s.update_load([(0, 0.0), (2, 0.0), (2, 0.0)])  # (nowhere to go at first)
    s.submit(0, spec(100)._replace(retries=2, retry_exc=True))
    s.schedule()
    s.submit(0, spec(110))  # (it takes this node's CPU next)
    s.task_done(1, 100, P.APP_ERROR, [(101, ERROR, b"e", ())], True)  # retried: queued
    s.schedule()
    s.update_load([(0, 0.0), (0, 1.0), (0, 1.0)])
    s.task_time[FID] = (1, 0.05)
    s.schedule()
    (fwd,) = [m for m in fwds(s) if m.spec.tid == 100]
    assert fwd.spec.retries == 1


def test_queued_work_spills_once_tasks_are_known_to_be_long():
    s = sched(workers=1)
    s.update_load([(0, 0.0), (2, 0.0), (2, 0.0)])  # every other rank busy
    for i in range(6):
        s.submit(0, spec(100 + 10 * i))
    s.schedule()
    assert fwds(s) == []  # not timed yet, and no rank is idle: all wait here
    s.update_load([(5, 0.0), (0, 1.0), (0, 1.0)])
    s.task_time[FID] = (1, 0.05)
    s.schedule()
    moved = fwds(s)
    assert {m.rank for m in moved} == {1, 2} and 2 <= len(moved) <= 4
    tids = sorted(m.spec.tid for m in moved)  # from the tail of the queue
    assert tids == list(range(160 - 10 * len(tids), 160, 10))


def test_short_tasks_stay_once_timed():
    s = sched(workers=1)
    s.task_time[FID] = (5, 0.0001)
    for i in range(6):
        s.submit(0, spec(100 + 10 * i))
    s.schedule()
    assert fwds(s) == []  # idle ranks, but moving would cost more than running here


def create_spec(aid, strategy=None) -> P.TaskSpec:
    copts = {"class_name": "K", "meta": {}, "name": None, "namespace": "", "held": (),
             "req": None}
    return P.TaskSpec(aid, FID, "K.__init__", b"args", (), 1, (("CPU", 1.0),), 0, False, (),
                      strategy, lease=False, actor=aid, create=copts)


def call_spec(aid, tid) -> P.TaskSpec:
    return P.TaskSpec(tid, None, "K.m", b"args", (), 1, (), 0, False, (), None, lease=False,
                      actor=aid, method="m")


def test_an_actor_placed_on_another_rank_gets_its_calls_there():
    s = sched()
    s.submit(0, create_spec(100, strategy=Affinity("n2", soft=False)))
    (fwd,) = fwds(s)
    assert fwd.rank == 2 and s.actors[100].remote_rank == 2
    s.submit(0, call_spec(100, 110))
    s.submit(0, call_spec(100, 120))
    assert [(m.rank, m.spec.tid) for m in fwds(s)] == [(2, 110), (2, 120)]
    # its creation ended there: alive here too (for the driver), calls still go there
    s.remote_done(100, [(101, INLINE, NONE, (), ())], 1)
    assert s.actors[100].state.value == "ALIVE"
    # its calls end; then the last handle here goes: the actor is ended on its rank
    s.remote_done(110, [(111, INLINE, NONE, (), ())], 1)
    s.remote_done(120, [(121, INLINE, NONE, (), ())], 1)
    assert not to_rank(s, P.KillActor)  # (calls held it)
    s.refs(0, (), [101])
    assert P.ToRank(2, P.KillActor(100, True)) in to_rank(s, P.KillActor)
    assert s.actors.get(100) is None or s.actors[100].state.value == "DEAD"


def test_actors_stay_where_they_are_created_by_default():
    s = sched()
    s.submit(0, create_spec(100))
    assert fwds(s) == [] and s.actors[100].remote_rank is None


def test_the_rank_an_actor_is_placed_on_ships_its_creation_home():
    s = sched(rank=2)
    aid = RANK1 + 100
    s.submit(AGENT, create_spec(aid))
    s.schedule()
    wid = s.actors[aid].worker
    s.task_done(wid, aid, P.OK, [(aid + 1, INLINE, NONE, ())], False)
    assert [m for m in s.out[AGENT] if type(m) is P.Obj and m.oid == aid + 1]  # to the agent
    assert s.actors[aid].state.value == "ALIVE"


def test_a_streaming_task_moves_by_placement_and_sends_its_values_home():
    """A stream goes where SPREAD or an affinity puts it, never by a spill; there each
    value is held for its home rank (a lent hold) and sent there in order, the end
    too; at home its owner holds the values and its acks go to the stream's rank."""
    from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Aff

    home = sched(rank=0)
    home.submit(0, spec(100, strategy=Aff("n2", soft=False))._replace(stream=0))
    (fwd,) = fwds(home)
    assert fwd.rank == 2 and fwd.spec.stream == 0
    there = sched(rank=2)
    there.submit(AGENT, fwd.spec)  # (the agent submits what came)
    there.schedule()
    wid = there.tasks[100].worker
    oid = (2 << P.RANK_SHIFT) | (wid << P.PROC_BITS) | 7  # (an id of that worker's)
    there.stream_yield(wid, AGENT, 100, 0, oid, INLINE, b"v0", ())
    there.stream_yield(wid, AGENT, 100, -1, None, ERROR, None, ())
    assert LENT_HOLDER in there.objs[oid].procs  # (held there for rank 0)
    sent = to_rank(there, P.StreamLent)
    assert [(m.rank, m.msg.index, m.msg.oid, m.lent) for m in sent] == [
        (0, 0, oid, (oid,)), (0, -1, None, ())]
    for m in sent:
        home.stream_lent(m.msg.tid, m.msg.index, m.msg.oid, m.msg.rank)
    assert [(m.index, m.oid) for m in home.out[0] if type(m) is P.StreamItem] == [
        (0, oid), (-1, None)]
    assert 0 in home.objs[oid].procs and home.objs[oid].lent == 2
    home.stream_ack(100, 1)
    assert [m.rank for m in to_rank(home, P.StreamAck)] == [2]
    spill = sched(rank=0)
    spill.submit(0, spec(200, strategy="SPREAD")._replace(stream=0))
    spill.submit(0, spec(210, strategy="SPREAD")._replace(stream=0))
    assert sorted(m.rank for m in fwds(spill)) == [1, 2]  # (SPREAD moves streams too)

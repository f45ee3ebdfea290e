"""The node's actor state machine (actor_table.py inside the Scheduler), event by event,
without processes: PENDING_CREATION → ALIVE → RESTARTING → ALIVE | DEAD, call order,
restarts and retries, names, anchors (handle lifetimes), kill and resources."""

from __future__ import annotations

import pickle

import pytest

from mpray import exceptions as exc
from mpray import protocol as P
from mpray.node.actor_table import ACTOR_TRANSITIONS, NODE_HOLDER
from mpray.node.scheduler import Scheduler, TaskState, WorkerState
from mpray.store.serialization import ERROR, INLINE
from mpray.states import ActorState, TransitionError, _move

pytestmark = pytest.mark.usefixtures("node_invariants")  # checked after every event

A, T, W = ActorState, TaskState, WorkerState
CLS = 9
NONE = pickle.dumps(None)


def sched(cpus=2.0, workers=2, **kw) -> Scheduler:
    s = Scheduler({"CPU": cpus, "GPU": 1.0}, gpu_ids=["0"], **kw)
    s.register_function(CLS, b"<class>")
    for wid in range(1, workers + 1):
        s.worker_started(wid)
    return s


def create(s: Scheduler, aid: int, owner: int = 0, *, place=(("CPU", 1.0),), held=(),
           name=None, req=None, deps=(), **opts) -> None:
    copts = {"class_name": "K", "meta": {"m": 1}, "name": name, "namespace": "ns",
             "held": held, "req": req, **opts}
    s.submit(owner, P.TaskSpec(aid, CLS, "K.__init__", b"args", tuple(deps), 1, place, 0,
                               False, (), None, lease=False, actor=aid, create=copts))


def call(s: Scheduler, aid: int, tid: int, owner: int = 0, *, deps=(), retries=0,
         nret=1) -> None:
    s.submit(owner, P.TaskSpec(tid, None, "K.m", b"args", tuple(deps), nret, (), retries,
                               False, (), None, lease=False, actor=aid, method="m"))


def task(s: Scheduler, tid: int, owner: int = 0) -> None:
    """A plain task (its return tid+1 stays pending until sealed)."""
    s.submit(owner, P.TaskSpec(tid, CLS, "f", b"", (), 1, (("CPU", 1.0),), 0, False, (), None))


def msgs(s: Scheduler, proc: int, kind: type) -> list[P.Record]:
    """Take the messages of record type ``kind`` queued for ``proc``."""
    got = [m for m in s.out.get(proc, []) if type(m) is kind]
    s.out[proc] = [m for m in s.out.get(proc, []) if type(m) is not kind]
    return got


def acts(s: Scheduler, kind: type) -> list[P.Record]:
    """Take the actions of record type ``kind``."""
    got = [a for a in s.actions if type(a) is kind]
    s.actions = [a for a in s.actions if type(a) is not kind]
    return got


def kills(s: Scheduler) -> list[int]:
    """The workers a Kill action is queued for (the actions stay)."""
    return [a.wid for a in s.actions if type(a) is P.Kill]


def queued(a) -> dict[int, list[int]]:
    """The calls an actor holds back, per caller."""
    return {caller: list(q) for caller, q in a.queue.items()}


def constructed(s: Scheduler, aid: int) -> int:
    """Place the constructor and report it done; returns the actor's worker."""
    s.schedule()
    (m,) = [m for p in list(s.out) for m in msgs(s, p, P.ACreate)]
    wid = s.actors[aid].worker
    assert m.tid == aid and m.aid == aid
    s.task_done(wid, aid, P.OK, [(aid + 1, INLINE, NONE, ())], False)
    return wid


def error_of(s: Scheduler, oid: int) -> BaseException:
    o = s.objs[oid]
    assert o.kind == ERROR
    return pickle.loads(o.payload)


def test_creation_places_then_frees_the_cpu_and_dispatches_calls_in_order():
    s = sched()
    create(s, 100)
    call(s, 100, 110)
    call(s, 100, 120)
    a = s.actors[100]
    assert a.state is A.PENDING_CREATION and queued(a) == {0: [110, 120]}
    s.schedule()
    assert s.avail["CPU"] == 1.0  # placement needs one CPU
    wid = a.worker
    (m,) = msgs(s, wid, P.ACreate)
    assert m.incarnation == 0 and m.opts["class_name"] == "K"
    s.task_done(wid, 100, P.OK, [(101, INLINE, NONE, ())], False)
    assert a.state is A.ALIVE and s.avail["CPU"] == 2.0  # ...and holds none while alive
    assert [x.state for x in acts(s, P.AnnounceActor)] == ["ALIVE"]
    sent = msgs(s, wid, P.ACall)
    assert [x.tid for x in sent] == [110, 120] and sent[0].method == "m"
    s.task_done(wid, 110, P.OK, [(111, INLINE, NONE, ())], False)
    assert s.objs[111].state.value == "INLINE"
    assert msgs(s, 0, P.ANodeDone) == [P.ANodeDone(100, 110)]
    assert s.workers[wid].state is W.BUSY  # an actor's worker never goes idle


def test_a_call_waiting_for_its_argument_holds_back_later_calls():
    s = sched()
    create(s, 100)
    wid = constructed(s, 100)
    task(s, 200)
    call(s, 100, 110, deps=[(0, 201)])
    call(s, 100, 120)
    assert msgs(s, wid, P.ACall) == []  # 120 waits behind 110
    s.seal(0, 201, INLINE, NONE)
    assert [x.tid for x in msgs(s, wid, P.ACall)] == [110, 120]


def test_a_pending_call_holds_back_only_its_own_callers_later_calls():
    """Calls are ordered per caller (as in Ray): one caller's call that waits for its
    argument does not hold back another caller's ready calls, but does hold back its
    own caller's later ones."""
    s = sched()
    create(s, 100)
    wid = constructed(s, 100)
    task(s, 200)
    s.schedule()
    other = s.tasks[200].worker  # the worker running task 200 is the second caller
    assert other != wid and [x.tid for x in msgs(s, other, P.Exec)] == [200]
    call(s, 100, 110, deps=[(0, 201)])  # the driver's call waits for 200's result ...
    call(s, 100, 120)  # ... and so does the driver's next call, ready as it is
    call(s, 100, 130, owner=other)  # the second caller's ready call goes at once
    sent = msgs(s, wid, P.ACall)
    assert [(x.tid, x.owner) for x in sent] == [(130, other)]
    assert s.tasks[110].state is T.PENDING_ARGS and s.tasks[120].state is T.READY
    assert queued(s.actors[100]) == {0: [110, 120]}
    call(s, 100, 140, owner=other)  # and so does its next one
    assert [x.tid for x in msgs(s, wid, P.ACall)] == [140]
    assert queued(s.actors[100]) == {0: [110, 120]}
    # the argument arrives: the driver's calls go, in its order
    s.task_done(other, 200, P.OK, [(201, INLINE, b"arg", ())], False)
    sent = msgs(s, wid, P.ACall)
    assert [(x.tid, x.owner) for x in sent] == [(110, 0), (120, 0)]
    assert sent[0].deps == [(0, 201, INLINE, b"arg")]
    assert queued(s.actors[100]) == {}


def test_restart_retries_calls_with_task_retries_and_fails_the_others():
    s = sched()
    create(s, 100, max_restarts=1)
    wid = constructed(s, 100)
    call(s, 100, 110, retries=1)
    call(s, 100, 120, retries=0)
    msgs(s, wid, P.ACall)
    s.worker_died(wid, "killed by SIGKILL")
    a = s.actors[100]
    assert a.state is A.RESTARTING and a.incarnation == 1 and a.restarts_left == 0
    assert isinstance(error_of(s, 121), exc.ActorUnavailableError)
    assert s.tasks[110].state is T.READY and queued(a) == {0: [110]}
    assert [x.state for x in acts(s, P.AnnounceActor)][-1] == "RESTARTING"
    wid2 = constructed(s, 100)
    assert wid2 != wid and a.state is A.ALIVE
    (m,) = msgs(s, wid2, P.ACall)
    assert m.tid == 110 and m.incarnation == 1  # resent to the new incarnation
    # a second death is the last one
    s.worker_died(wid2, "exit 1")
    assert a.state is A.DEAD
    assert isinstance(error_of(s, 111), exc.ActorDiedError)
    call(s, 100, 130)
    assert "no restarts left" in str(error_of(s, 131))


def test_constructor_error_makes_it_dead_with_the_cause():
    s = sched()
    create(s, 100, name="k")
    call(s, 100, 110)
    s.schedule()
    wid = s.actors[100].worker
    err = exc.RayTaskError("K.__init__", "Traceback: KeyError('bad')", KeyError("bad"))
    s.task_done(wid, 100, P.APP_ERROR, [(101, ERROR, pickle.dumps(err), ())], False)
    a = s.actors[100]
    assert a.state is A.DEAD
    assert wid in kills(s)
    e = error_of(s, 111)
    assert isinstance(e, exc.ActorDiedError) and "KeyError" in str(e) and "__init__" in str(e)
    assert ("ns", "k") not in s.names  # its name is free again


def test_names_duplicate_get_if_exists_and_lookup():
    s = sched()
    create(s, 100, name="k", req=5)
    assert msgs(s, 0, P.Reply) == [P.Reply(5, ("ok",))]
    create(s, 200, name="k", req=6)
    (m,) = msgs(s, 0, P.Reply)
    reply = m.data
    assert reply[0] == "error" and "already exists" in reply[1]
    assert 200 not in s.actors and 200 not in s.tasks  # nothing registered for it
    create(s, 300, owner=2, name="k", req=7, get_if_exists=True)
    assert msgs(s, 2, P.Reply) == [P.Reply(7, ("exists", 100, {"m": 1}))]
    assert 2 in s.objs[101].procs  # the asker holds the anchor now
    assert s.lookup_actor(1, "ns", "k") == (100, {"m": 1}) and 1 in s.objs[101].procs
    assert s.lookup_actor(1, "other", "k") is None


def test_last_handle_gone_terminates_and_forgets_the_actor():
    s = sched()
    create(s, 100, name="k")
    wid = constructed(s, 100)
    s.refs(0, (), [101])  # the owner's last handle
    assert P.Stop() in s.out[wid] and wid not in kills(s)  # asked to end
    s.tick(s.now + 31.0)  # (it did not within the grace period)
    assert wid in kills(s)
    s.worker_died(wid, "killed by SIGKILL")
    assert 100 not in s.actors and ("ns", "k") not in s.names


def test_a_pending_call_keeps_the_actor_until_it_is_done():
    s = sched()
    create(s, 100)
    wid = constructed(s, 100)
    call(s, 100, 110)
    s.refs(0, (), [101])  # handle dropped while the call runs
    assert P.Stop() not in s.out[wid]
    s.task_done(wid, 110, P.OK, [(111, INLINE, NONE, ())], False)
    assert P.Stop() in s.out[wid]  # asked to end, once its last call is done


def test_detached_actor_outlives_handles_until_killed():
    s = sched()
    create(s, 100, name="d", detached=True)
    wid = constructed(s, 100)
    assert NODE_HOLDER in s.objs[101].procs
    s.refs(0, (), [101])
    assert acts(s, P.Kill) == [] and s.actors[100].state is A.ALIVE
    s.kill_actor(100, True)
    assert ("ns", "d") not in s.names  # freed at once
    assert acts(s, P.Kill) == [P.Kill(wid)]
    call(s, 100, 110)  # after kill: fails at once
    assert isinstance(error_of(s, 111), exc.ActorDiedError)
    s.worker_died(wid, "killed by SIGKILL")
    assert 100 not in s.actors  # dead, and no handle anywhere


def test_kill_before_placement_never_runs_the_constructor():
    s = sched(cpus=1.0, workers=1)
    task(s, 200)
    s.schedule()
    create(s, 100)
    s.schedule()
    assert s.actors[100].worker is None  # no CPU for its placement yet
    s.kill_actor(100, True)
    assert s.actors[100].state is A.DEAD
    assert s.tasks.get(100) is None


def test_explicit_resources_are_held_for_life_and_released_at_death():
    s = sched()
    create(s, 100, place=(("CPU", 1.0), ("GPU", 1.0)), held=(("CPU", 1.0), ("GPU", 1.0)))
    wid = constructed(s, 100)
    assert s.avail["CPU"] == 1.0 and s.avail["GPU"] == 0.0
    assert s.workers[wid].gpus == (("0", 1.0),)
    s.worker_died(wid, "exit 0")
    assert s.avail["CPU"] == 2.0 and s.avail["GPU"] == 1.0


def test_actor_workers_do_not_count_against_the_worker_cap():
    s = sched(workers=0, max_workers=4)
    for i in range(6):
        create(s, 100 * (i + 1))
    for _ in range(6):
        s.schedule()
        n = len(acts(s, P.StartWorker))
        for _ in range(n):
            s.worker_started(max(s.workers, default=0) + 1)
        s.schedule()
        for wid, w in list(s.workers.items()):
            if w.actor is not None and w.task == w.actor:
                s.task_done(wid, w.actor, P.OK, [(w.actor + 1, INLINE, NONE, ())], False)
    assert sum(1 for a in s.actors.values() if a.state is A.ALIVE) == 6


def test_cancel_of_a_dispatched_call_is_left_to_the_actor():
    s = sched()
    create(s, 100)
    wid = constructed(s, 100)
    task(s, 200)
    call(s, 100, 110)
    call(s, 100, 120, deps=[(0, 201)])  # its argument is not ready: queued here
    msgs(s, wid, P.ACall)
    assert s.tasks[120].state is T.PENDING_ARGS
    s.cancel(110, False, False)
    assert msgs(s, wid, P.Drop) == [P.Drop(110)]
    assert s.tasks[110].state is T.DISPATCHED  # the actor reports what happened
    s.cancel(120, False, False)
    assert 120 not in s.tasks and isinstance(error_of(s, 121), exc.TaskCancelledError)


def test_impossible_actor_transition_raises():
    s = sched()
    create(s, 100)
    a = s.actors[100]
    _move(a, A.DEAD, ACTOR_TRANSITIONS, "actor")
    with pytest.raises(TransitionError, match="DEAD -> ALIVE"):
        _move(a, A.ALIVE, ACTOR_TRANSITIONS, "actor")


# ----------------------------------------------------------------------- checkpoints


def test_a_checkpointed_actor_restarts_from_its_checkpoint_with_the_calls_after_it():
    from mpray.node.checkpoints import CKPT

    s = sched()
    s.put(0, 50, INLINE, b"arg")  # an argument of a logged call: held for the replay
    create(s, 100, max_restarts=1, checkpoint_interval=2)
    wid = constructed(s, 100)
    for i, tid in enumerate((110, 120, 130)):
        call(s, 100, tid, retries=-1, deps=[(0, 50)] if tid == 130 else ())
        s.schedule()
        s.task_done(wid, tid, P.OK, [(tid + 1, INLINE, NONE, ())], False)
        assert s.actors[100].ncalls == i + 1
    a = s.actors[100]
    assert [n for n, _spec in a.log] == [1, 2, 3] and s.objs[50].pins == {CKPT: 1}
    s.put(wid, 90, INLINE, b"state")  # its state after call 2
    s.actor_checkpoint(wid, 100, a.incarnation, 90, 2)
    assert a.checkpoint == (90, 2) and s.objs[90].pins == {CKPT: 1}
    assert [spec.tid for _n, spec in a.log] == [130]  # only the call after it is kept
    s.refs(wid, [], [90])
    assert 90 in s.objs  # (the node holds it now)
    s.worker_died(wid, "killed by SIGKILL")
    s.schedule()
    (m,) = [m for p in list(s.out) for m in msgs(s, p, P.ACreate)]
    state, replay, calls = m.restore
    assert state == (90, INLINE, b"state") and calls == 3
    assert replay == [("m", b"args", [(0, 50, INLINE, b"arg")])]
    w2 = a.worker
    s.kill_actor(100, no_restart=True)
    s.worker_died(w2, "killed by SIGKILL")
    assert a.state is ActorState.DEAD and a.log == [] and a.checkpoint is None
    assert 90 not in s.objs and s.objs[50].pins == {}


def test_a_checkpoint_from_an_earlier_process_is_ignored():
    s = sched()
    create(s, 100, max_restarts=1, checkpoint_interval=1)
    wid = constructed(s, 100)
    s.put(wid, 90, INLINE, b"state")
    s.actor_checkpoint(wid, 100, s.actors[100].incarnation + 1, 90, 1)
    assert s.actors[100].checkpoint is None and s.objs[90].pins == {}

"""Tests for mpray.node.scheduler: the node's pure state machine, driven event by event.

No engine and no processes: each test feeds method calls (submit, put, task_done,
worker_died, ...) into a Scheduler and checks what comes out (``out`` messages,
``actions``), the resource books (``avail``, ``gpu_free``, ``alloc.used``), the state of
tasks, objects and workers, and ``stats``.
"""

from __future__ import annotations

import itertools
import pickle

import pytest

from mpray import exceptions as exc
from mpray import protocol as P
from mpray.node.scheduler import (OBJ_TRANSITIONS, TASK_TRANSITIONS, WORKER_TRANSITIONS,
                             ObjState, Scheduler, Task, TaskState, TransitionError,
                             WorkerState, _move)
from mpray.store.serialization import ARENA, ERROR, INLINE

pytestmark = pytest.mark.usefixtures("node_invariants")  # checked after every event

T, O, W = TaskState, ObjState, WorkerState
FID = 7
FBLOB = b"<pickled function>"


# ----------------------------------------------------------------------------- helpers


def spec(tid, *, fid=FID, name="f", args=b"args", deps=(), nret=1, res=None, retries=0,
         retry_exc=False, contained=(), strategy=None) -> P.TaskSpec:
    """A task spec record (returns are tid+1 .. tid+nret); ``res`` may be given as a
    dict for brevity: the spec carries it as a sorted tuple of (name, amount) pairs."""
    res = {"CPU": 1.0} if res is None else res
    if isinstance(res, dict):
        res = tuple(sorted(res.items()))
    s = P.TaskSpec(tid, fid, name, args, tuple(deps), nret, res, retries, retry_exc,
                   tuple(contained), strategy)
    assert (s.tid, s.fid, s.name, s.args, s.deps, s.nret, s.res, s.retries, s.retry_exc,
            s.contained, s.strategy, s.lease, s.actor, s.method, s.create) == (
        tid, fid, name, args, tuple(deps), nret, res, retries, retry_exc, tuple(contained),
        strategy, False, None, None, None)
    return s


def make(resources=None, *, workers=0, now=0.0, **kw) -> Scheduler:
    s = Scheduler({"CPU": 2.0} if resources is None else resources, **kw)
    s.register_function(FID, FBLOB)
    for wid in range(1, workers + 1):
        s.worker_started(wid, now)
    return s


def drain(s: Scheduler, proc: int, kind: type | None = None) -> list[P.Record]:
    """Take the messages queued for ``proc`` (optionally only those of record type
    ``kind``; the others stay queued)."""
    msgs = s.out.pop(proc, [])
    rest = [m for m in msgs if kind is not None and type(m) is not kind]
    if rest:
        s.out[proc] = rest
    return [m for m in msgs if kind is None or type(m) is kind]


def execs(s: Scheduler) -> dict[int, list[P.Exec]]:
    """Take every queued Exec message, per worker."""
    got = {}
    for proc in list(s.out):
        if proc == 0:
            continue
        ex = [m for m in s.out[proc] if type(m) is P.Exec]
        rest = [m for m in s.out[proc] if type(m) is not P.Exec]
        if ex:
            got[proc] = ex
        if rest:
            s.out[proc] = rest
        else:
            del s.out[proc]
    return got


def take_actions(s: Scheduler) -> list[P.Record]:
    acts, s.actions = s.actions, []
    return acts


def typed(records) -> list[tuple]:
    """Records with their types (action records have no opcode: ``P.Kill(1)`` equals
    any one-item tuple ``(1,)``, so comparisons of actions must include the type)."""
    return [(type(r).__name__, *r) for r in records]


def objs_sent(s: Scheduler, proc: int) -> dict[int, tuple[int, object]]:
    """Take the Obj messages queued for ``proc``: oid -> (kind, payload)."""
    got = {}
    for m in drain(s, proc):
        assert type(m) is P.Obj, m
        assert m.oid not in got, f"Obj {m.oid} sent twice to {proc}"
        got[m.oid] = (m.kind, m.payload)
    return got


def error_of(kind_payload) -> BaseException:
    kind, payload = kind_payload
    assert kind == ERROR
    e = pickle.loads(payload)
    assert isinstance(e, BaseException)
    return e


def ok(oid, value=b"v", contained=()):
    """One Done result entry."""
    return (oid, INLINE, value, tuple(contained))


def app_error(t: Task | P.TaskSpec, payload: bytes):
    sp = t.spec if isinstance(t, Task) else t
    return [(sp.tid + 1 + i, ERROR, payload, ()) for i in range(sp.nret)]


APP_ERR = pickle.dumps(ValueError("boom"), protocol=5)


def running_on(s: Scheduler, tid: int) -> int:
    t = s.tasks[tid]
    assert t.state is T.DISPATCHED
    w = s.workers[t.worker]
    assert w.state in (W.BUSY, W.BLOCKED) and w.task == tid
    return t.worker


# ------------------------------------------------------------------------- state tables


@pytest.mark.parametrize("table,states,initial,terminal", [
    (TASK_TRANSITIONS, TaskState, T.PENDING_ARGS, {T.FINISHED, T.FAILED, T.CANCELLED}),
    (OBJ_TRANSITIONS, ObjState, O.PENDING, {O.FREED}),
    (WORKER_TRANSITIONS, WorkerState, W.STARTING, {W.DEAD}),
], ids=["task", "object", "worker"])
def test_transition_tables_are_closed_and_reachable(table, states, initial, terminal):
    assert set(table) == set(states), "every state must be a key"
    for src, targets in table.items():
        assert isinstance(targets, frozenset)
        for dst in targets:
            assert dst in states, f"{src} -> {dst!r} is not a valid state"
            assert dst is not src, f"{src} has a self loop"
    # every state is reachable from the initial one, and terminal states have no exits
    seen, todo = {initial}, [initial]
    while todo:
        for nxt in table[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(states)
    assert {s for s, targets in table.items() if not targets} == terminal
    # and every terminal state is reachable from every live one (nothing gets stuck)
    for src in set(states) - terminal:
        seen, todo = {src}, [src]
        while todo:
            for nxt in table[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen & terminal, f"{src} can never end"


def test_entities_start_in_the_initial_state():
    s = make(workers=1)
    s.submit(0, spec(100))
    t = s.tasks[100]
    assert t.state is T.READY and t.history == [T.PENDING_ARGS, T.READY]
    assert s.objs[101].state is O.PENDING and s.objs[101].history == [O.PENDING]
    assert s.workers[1].history == [W.STARTING, W.IDLE]


def test_impossible_transition_raises_with_history():
    s = make(workers=1)
    s.submit(0, spec(100))
    s.schedule()
    s.task_done(1, 100, P.OK, [ok(101)], False)
    assert s.workers[1].state is W.IDLE
    # a duplicate DONE is a protocol bug: the worker cannot go IDLE -> IDLE
    with pytest.raises(TransitionError) as ei:
        s.task_done(1, 100, P.OK, [ok(101)], False)
    msg = str(ei.value)
    assert "worker 1: IDLE -> IDLE is not allowed" in msg
    assert "history: STARTING -> IDLE -> BUSY -> IDLE" in msg


def test_move_refuses_transitions_outside_the_table():
    t = Task(5, spec(5), 0, None, (("CPU", 1.0),), 0)
    with pytest.raises(TransitionError, match=r"task 5: PENDING_ARGS -> FINISHED .*"
                                              r"history: PENDING_ARGS$"):
        _move(t, T.FINISHED, TASK_TRANSITIONS, "task")
    assert t.state is T.PENDING_ARGS  # unchanged
    _move(t, T.READY, TASK_TRANSITIONS, "task")
    _move(t, T.DISPATCHED, TASK_TRANSITIONS, "task")
    _move(t, T.FINISHED, TASK_TRANSITIONS, "task")
    with pytest.raises(TransitionError, match="FINISHED -> READY.*"
                                              "PENDING_ARGS -> READY -> DISPATCHED -> FINISHED"):
        _move(t, T.READY, TASK_TRANSITIONS, "task")


# ---------------------------------------------------------------------------- dispatch


def test_dispatch_to_idle_worker_sends_exec_with_resolved_deps():
    s = make({"CPU": 2.0}, workers=1)
    s.put(0, 50, INLINE, b"x-value")
    assert objs_sent(s, 0) == {}  # the putter has the value: it is not sent back
    s.submit(0, spec(100, args=b"A", deps=[(1, 50)], nret=2, retry_exc=True))
    assert s.tasks[100].state is T.READY
    assert s.ready_count() == 1
    s.schedule()
    assert execs(s) == {1: [P.Exec(100, FID, FBLOB, "f", b"A", [(1, 50, INLINE, b"x-value")],
                                   2, (), True, 0)]}  # owner: the driver, for direct results
    # (epoch None: a task from the node, not one the owner sends its leased worker)
    assert s.actions == []
    assert s.avail == {"CPU": 1.0}
    assert running_on(s, 100) == 1
    assert s.idle == [] and s.ready_count() == 0
    # the worker reports both returns; the owner (driver) gets them
    s.task_done(1, 100, P.OK, [ok(101, b"r1"), ok(102, b"r2")], False)
    assert objs_sent(s, 0) == {101: (INLINE, b"r1"), 102: (INLINE, b"r2")}
    assert 100 not in s.tasks
    assert s.objs[101].state is O.INLINE and s.objs[101].payload == b"r1"
    assert s.objs[50].task_refs == 0
    assert s.workers[1].state is W.IDLE and s.idle == [1]
    assert s.avail == {"CPU": 2.0}
    assert s.stats == {"submitted": 1, "finished": 1, "failed": 0, "retried": 0}
    # the function blob travels once per worker
    s.submit(0, spec(200))
    s.schedule()
    assert execs(s)[1][0].fblob is None


def test_task_waits_for_pending_dep_then_runs():
    s = make({"CPU": 2.0}, workers=2)
    s.submit(0, spec(100))  # produces 101
    s.submit(0, spec(200, deps=[(0, 101), (2, 101)]))  # the same ref twice
    s.submit(0, spec(300, deps=[(0, 101), (1, 201)]))
    assert s.tasks[200].state is T.PENDING_ARGS and s.tasks[200].missing == 2
    assert s.tasks[300].state is T.PENDING_ARGS and s.tasks[300].missing == 2
    s.schedule()
    ex = execs(s)
    assert [m.tid for ms in ex.values() for m in ms] == [100]
    w = running_on(s, 100)
    s.task_done(w, 100, P.OK, [ok(101, b"one")], False)
    assert s.tasks[200].state is T.READY
    assert s.tasks[300].state is T.PENDING_ARGS and s.tasks[300].missing == 1
    s.schedule()
    (m,) = [m for ms in execs(s).values() for m in ms]
    assert m.tid == 200 and m.deps == [(0, 101, INLINE, b"one"), (2, 101, INLINE, b"one")]
    s.task_done(running_on(s, 200), 200, P.OK, [ok(201, b"two")], False)
    s.schedule()
    (m,) = [m for ms in execs(s).values() for m in ms]
    assert m.tid == 300 and m.deps == [(0, 101, INLINE, b"one"), (1, 201, INLINE, b"two")]
    assert s.tasks[300].history == [T.PENDING_ARGS, T.READY, T.DISPATCHED]


def test_failed_dep_fails_dependents_with_the_same_payload():
    s = make({"CPU": 1.0}, workers=1)
    s.submit(0, spec(100))
    s.submit(0, spec(200, deps=[(0, 101)], nret=2))
    s.submit(0, spec(300, deps=[(0, 202)]))  # transitively dependent
    s.schedule()
    execs(s)
    b, c = s.tasks[200], s.tasks[300]
    s.task_done(1, 100, P.APP_ERROR, app_error(spec(100), APP_ERR), False)
    sent = objs_sent(s, 0)
    assert set(sent) == {101, 201, 202, 301}
    for oid in sent:
        assert sent[oid] == (ERROR, APP_ERR)  # byte-identical payload everywhere
    assert b.state is T.FAILED and c.state is T.FAILED
    assert b.history == [T.PENDING_ARGS, T.FAILED]
    assert not s.tasks
    s.schedule()
    assert execs(s) == {}  # the dependents never ran
    assert s.stats["failed"] == 3 and s.stats["finished"] == 0
    # a task submitted later on the ERROR object fails at once, same payload
    s.submit(0, spec(400, deps=[(0, 101)]))
    assert objs_sent(s, 0) == {401: (ERROR, APP_ERR)}
    assert 400 not in s.tasks


def test_failed_dep_whose_ref_the_owner_already_dropped():
    """``f.remote(g.remote())`` where g raises: the driver drops the intermediate ref right
    after submitting f, so only f's task hold keeps 101 alive.  Sealing 101 as ERROR fails
    f, which releases that hold and frees 101 inside seal(); seal()'s own final
    _maybe_free(101) must then not try FREED -> FREED (regression: it raised
    TransitionError)."""
    s = make({"CPU": 1.0}, workers=1)
    s.submit(0, spec(100))
    s.submit(0, spec(200, deps=[(0, 101)]))
    s.refs(0, [], [101])
    assert 101 in s.objs  # pending: kept
    s.schedule()
    execs(s)
    s.task_done(1, 100, P.APP_ERROR, app_error(spec(100), APP_ERR), False)
    assert objs_sent(s, 0) == {201: (ERROR, APP_ERR)}
    assert 101 not in s.objs and 200 not in s.tasks
    assert s.stats["failed"] == 2


def test_succeeded_dep_whose_ref_the_owner_dropped_lives_until_the_task_ends():
    s = make({"CPU": 1.0}, workers=1)
    s.submit(0, spec(100))
    s.submit(0, spec(200, deps=[(0, 101)]))
    s.refs(0, [], [101])
    s.schedule()
    execs(s)
    s.task_done(1, 100, P.OK, [ok(101)], False)
    assert objs_sent(s, 0) == {}  # nobody holds 101 any more: nothing to send
    assert s.objs[101].task_refs == 1
    s.schedule()
    assert execs(s)[1][0].deps == [(0, 101, INLINE, b"v")]
    s.task_done(1, 200, P.OK, [ok(201)], False)
    assert 101 not in s.objs
    assert objs_sent(s, 0) == {201: (INLINE, b"v")}


def test_dep_already_freed_fails_the_task():
    s = make(workers=1)
    s.submit(0, spec(100, deps=[(0, 999)]))
    e = error_of(objs_sent(s, 0)[101])
    assert isinstance(e, exc.ObjectFreedError)
    assert P.id_hex(999) in str(e.args)
    assert 100 not in s.tasks


# --------------------------------------------------------------------------- resources


def test_task_needing_two_cpus_waits_for_two_free_cpus():
    s = make({"CPU": 2.0}, workers=2)
    s.submit(0, spec(100))
    s.schedule()
    w1 = running_on(s, 100)
    execs(s)
    s.submit(0, spec(200, res={"CPU": 2.0}))
    s.schedule()
    assert execs(s) == {} and s.actions == []  # an idle worker exists, but 1 CPU is free
    assert s.tasks[200].state is T.READY and s.avail["CPU"] == 1.0
    s.task_done(w1, 100, P.OK, [ok(101)], False)
    s.schedule()
    assert list(execs(s)) in ([1], [2])
    running_on(s, 200)
    assert s.avail["CPU"] == 0.0
    s.task_done(s.tasks[200].worker, 200, P.OK, [ok(201)], False)
    assert s.avail["CPU"] == 2.0


def test_custom_resources_are_accounted():
    s = make({"CPU": 4.0, "accel": 1.0}, workers=3)
    for tid in (100, 200):
        s.submit(0, spec(tid, res={"CPU": 1.0, "accel": 1.0}))
    s.submit(0, spec(300, res={"CPU": 1.0}))
    s.schedule()
    started = {m.tid for ms in execs(s).values() for m in ms}
    assert started == {100, 300}  # 200 waits for "accel"; 300 is not blocked behind it
    assert s.avail == {"CPU": 2.0, "accel": 0.0}
    assert s.tasks[200].state is T.READY
    s.task_done(running_on(s, 100), 100, P.OK, [ok(101)], False)
    assert s.avail == {"CPU": 3.0, "accel": 1.0}
    s.schedule()
    assert [m.tid for ms in execs(s).values() for m in ms] == [200]
    assert s.avail == {"CPU": 2.0, "accel": 0.0}
    assert s.available() == s.avail and s.available() is not s.avail


def test_zero_cpu_task_runs_without_cpu():
    s = make({"CPU": 1.0}, workers=2)
    s.submit(0, spec(100))
    s.submit(0, spec(200, res={"CPU": 0}))
    s.schedule()
    assert {m.tid for ms in execs(s).values() for m in ms} == {100, 200}
    assert s.avail["CPU"] == 0.0


def test_gpu_ids_are_assigned_and_released():
    s = make({"CPU": 4.0, "GPU": 2.0}, gpu_ids=["0", "1"], workers=5)
    for tid in (100, 200, 300):
        s.submit(0, spec(tid, res={"CPU": 1.0, "GPU": 1.0}))
    s.schedule()
    ex = {m.tid: m for ms in execs(s).values() for m in ms}
    assert set(ex) == {100, 200}
    assert {ex[100].gpus, ex[200].gpus} == {("0",), ("1",)}  # distinct whole GPUs
    assert s.avail["GPU"] == 0.0 and s.gpu_free == {"0": 0.0, "1": 0.0}
    assert s.tasks[300].state is T.READY
    freed = ex[200].gpus
    s.task_done(running_on(s, 200), 200, P.OK, [ok(201)], False)
    assert s.gpu_free[freed[0]] == 1.0 and s.avail["GPU"] == 1.0
    s.schedule()
    (m,) = [m for ms in execs(s).values() for m in ms]
    assert m.tid == 300 and m.gpus == freed
    for tid in (100, 300):
        s.task_done(running_on(s, tid), tid, P.OK, [ok(tid + 1)], False)
    assert s.gpu_free == {"0": 1.0, "1": 1.0} and s.avail == s.total
    # a 2-GPU task gets both ids
    s.submit(0, spec(400, res={"CPU": 1.0, "GPU": 2.0}))
    s.schedule()
    (m,) = [m for ms in execs(s).values() for m in ms]
    assert sorted(m.gpus) == ["0", "1"]


def test_fractional_gpus_share_a_device():
    s = make({"CPU": 8.0, "GPU": 2.0}, gpu_ids=["0", "1"], workers=8)
    for tid in (100, 200, 300, 400, 500):
        s.submit(0, spec(tid, res={"CPU": 1.0, "GPU": 0.5}))
    s.schedule()
    ex = {m.tid: m.gpus for ms in execs(s).values() for m in ms}
    assert len(ex) == 4 and s.tasks[500].state is T.READY
    assert sorted(ex.values()) == [("0",), ("0",), ("1",), ("1",)]
    assert s.avail["GPU"] == 0.0 and s.gpu_free == {"0": 0.0, "1": 0.0}
    tid = next(t for t, g in ex.items() if g == ("1",))
    s.task_done(running_on(s, tid), tid, P.OK, [ok(tid + 1)], False)
    assert s.gpu_free == {"0": 0.0, "1": 0.5}
    s.schedule()
    assert [m.gpus for ms in execs(s).values() for m in ms] == [("1",)]


def test_fractional_gpu_request_waits_when_no_single_gpu_has_room():
    """0.6 + 0.6 + 0.6 on two GPUs: the pool has 0.8 GPU left after two tasks, but no
    device has 0.6 free, so the third task must wait (regression: _fits() checked only the
    pooled ``avail["GPU"]`` and the task ran with no GPU id while being charged for one)."""
    s = make({"CPU": 8.0, "GPU": 2.0}, gpu_ids=["0", "1"], workers=6)
    for tid in (100, 200, 300):
        s.submit(0, spec(tid, res={"CPU": 1.0, "GPU": 0.6}))
    s.schedule()
    ex = {m.tid: m.gpus for ms in execs(s).values() for m in ms}
    assert all(ex.values()), f"a GPU task was dispatched without a GPU: {ex}"
    assert len(ex) == 2 and s.tasks[300].state is T.READY


# --------------------------------------------------------------------- worker starting


def test_start_worker_bounded_by_free_resources():
    s = make({"CPU": 2.0}, max_workers=10)
    for tid in range(100, 600, 100):
        s.submit(0, spec(tid))
    s.schedule()
    assert typed(take_actions(s)) == typed([P.StartWorker()] * 2)
    assert s.starting == 2
    s.worker_started(1)
    s.worker_started(2)
    assert s.starting == 0
    s.schedule()
    assert len(execs(s)) == 2
    assert take_actions(s) == []  # no CPU left for a third worker


def test_start_worker_bounded_by_max_workers():
    s = make({"CPU": 8.0}, max_workers=3)
    for tid in range(100, 1100, 100):
        s.submit(0, spec(tid))
    s.schedule()
    assert typed(take_actions(s)) == typed([P.StartWorker()] * 3)
    for wid in (1, 2, 3):
        s.worker_started(wid)
    s.schedule()
    assert len(execs(s)) == 3
    assert take_actions(s) == []  # at max_workers, although 5 CPUs are free


def test_start_worker_counts_existing_workers():
    s = make({"CPU": 4.0}, max_workers=3, workers=2)
    for tid in range(100, 600, 100):
        s.submit(0, spec(tid))
    s.schedule()
    assert len(execs(s)) == 2
    assert typed(take_actions(s)) == typed([P.StartWorker()])  # 2 busy + 1 = max_workers


def test_default_max_workers():
    assert Scheduler({"CPU": 1.0}).max_workers == 4
    assert Scheduler({"CPU": 6.0}).max_workers == 12
    assert Scheduler({"CPU": 6.0}).idle_keep == 6


def test_schedule_again_before_workers_start_does_not_overstart():
    """Workers requested but not started yet (``starting``) will take the free CPUs, so a
    second pass must not ask for the same CPUs again (regression: the resource-derived
    count did not subtract ``starting``; latent with a node that starts workers
    synchronously)."""
    s = make({"CPU": 2.0}, max_workers=10)
    for tid in range(100, 600, 100):
        s.submit(0, spec(tid))
    s.schedule()
    assert typed(take_actions(s)) == typed([P.StartWorker()] * 2)
    s.schedule()
    assert take_actions(s) == []


def test_nothing_started_for_work_that_does_not_fit():
    s = make({"CPU": 1.0}, workers=1)
    s.submit(0, spec(100))
    s.schedule()
    execs(s)
    s.submit(0, spec(200))
    s.schedule()
    assert take_actions(s) == [] and execs(s) == {}


# ---------------------------------------------------------------------- blocked workers


def test_blocked_worker_releases_cpu_and_unblocked_takes_it_back():
    s = make({"CPU": 1.0}, workers=1, max_workers=4)
    s.submit(0, spec(100))
    s.submit(0, spec(200))
    s.schedule()
    assert list(execs(s)) == [1]
    assert take_actions(s) == []  # no CPU for a second worker
    s.worker_blocked(1)  # e.g. ray.get inside the task
    assert s.workers[1].state is W.BLOCKED and s.avail["CPU"] == 1.0
    s.schedule()
    assert typed(take_actions(s)) == typed([P.StartWorker()])  # the blocked one does not count
    s.worker_started(2)
    s.schedule()
    assert [m.tid for m in execs(s)[2]] == [200]
    assert running_on(s, 200) == 2
    assert s.avail["CPU"] == 0.0
    s.worker_unblocked(1)
    assert s.workers[1].state is W.BUSY
    assert s.avail["CPU"] == -1.0  # briefly oversubscribed, as Ray does
    s.task_done(2, 200, P.OK, [ok(201)], False)
    s.task_done(1, 100, P.OK, [ok(101)], False)
    assert s.avail["CPU"] == 1.0
    # repeated or out-of-place block/unblock events are ignored
    s.worker_unblocked(1)
    s.worker_blocked(1)  # idle: ignored
    assert s.workers[1].state is W.IDLE and s.avail["CPU"] == 1.0


def test_blocked_worker_dispatches_to_an_existing_idle_worker():
    s = make({"CPU": 1.0}, workers=2)
    s.submit(0, spec(100))
    s.schedule()
    w = running_on(s, 100)
    execs(s)
    s.submit(0, spec(200))
    s.schedule()
    assert execs(s) == {}
    s.worker_blocked(w)
    s.worker_blocked(w)  # twice: the CPU is released once
    assert s.avail["CPU"] == 1.0
    s.schedule()
    assert list(execs(s)) == [3 - w]


def test_blocked_worker_finishing_or_dying_returns_cpu_once():
    s = make({"CPU": 2.0}, workers=2)
    s.submit(0, spec(100))
    s.submit(0, spec(200))
    s.schedule()
    execs(s)
    s.worker_blocked(1)
    s.worker_blocked(2)
    assert s.avail["CPU"] == 2.0
    tid = s.workers[1].task
    s.task_done(1, tid, P.OK, [ok(tid + 1)], False)
    assert s.workers[1].state is W.IDLE
    assert s.workers[1].history[-3:] == [W.BLOCKED, W.BUSY, W.IDLE]
    assert s.avail["CPU"] == 2.0
    s.worker_died(2, "killed")
    assert s.avail["CPU"] == 2.0


# ----------------------------------------------------------------------- worker deaths


def test_worker_death_retries_on_another_worker_then_fails():
    s = make({"CPU": 2.0}, workers=2)
    s.submit(0, spec(100, retries=1, name="crashy"))
    s.schedule()
    w1 = running_on(s, 100)
    assert execs(s)[w1][0].fblob == FBLOB
    s.submit(0, spec(900))  # lands behind the crashed task in the queue ...
    s.worker_died(w1, "SIGSEGV")
    assert w1 not in s.workers and w1 not in s.out and w1 not in s.idle
    t = s.tasks[100]
    assert t.state is T.READY and t.retries_left == 0
    assert t.history == [T.PENDING_ARGS, T.READY, T.DISPATCHED, T.RETRYING, T.READY]
    assert s.stats["retried"] == 1
    assert s.avail["CPU"] == 2.0
    assert objs_sent(s, 0) == {}  # nothing reported yet
    s.schedule()
    w2 = running_on(s, 100)  # ... but the retry goes first, on the surviving worker
    assert w2 != w1
    assert typed(take_actions(s)) == typed([P.StartWorker()])  # for task 900: one CPU is free
    (m,) = execs(s)[w2]
    assert m.tid == 100 and m.fblob == FBLOB  # a fresh worker gets the function too
    s.worker_died(w2, "killed by signal SIGKILL")
    e = error_of(objs_sent(s, 0)[101])
    assert isinstance(e, exc.WorkerCrashedError)
    assert "crashy" in str(e) and "SIGKILL" in str(e) and "max_retries=1" in str(e)
    assert t.state is T.FAILED and 100 not in s.tasks
    assert s.stats == {"submitted": 2, "finished": 0, "failed": 1, "retried": 1}
    assert s.avail["CPU"] == 2.0
    s.schedule()
    assert execs(s) == {} and s.tasks[900].state is T.READY  # no worker left for it


def test_worker_death_without_retries_fails_at_once():
    s = make(workers=1)
    s.submit(0, spec(100, retries=0))
    s.schedule()
    s.worker_died(1, "oom")
    assert isinstance(error_of(objs_sent(s, 0)[101]), exc.WorkerCrashedError)
    s.worker_died(1, "again")  # a second report for the same worker is ignored
    assert s.stats["failed"] == 1


def test_idle_worker_death_is_bookkeeping_only():
    s = make(workers=2)
    s.worker_died(2, "exit")
    assert s.idle == [1] and set(s.workers) == {1}
    s.submit(0, spec(100))
    s.schedule()
    assert list(execs(s)) == [1]
    assert s.avail["CPU"] == 1.0


def test_app_error_retried_only_when_retryable():
    s = make(workers=1)
    s.submit(0, spec(100, retries=2, retry_exc=True))
    s.submit(0, spec(200, retries=2))
    s.schedule()
    assert running_on(s, 100) == 1
    execs(s)
    # retryable: back to the queue (behind 200), nothing reported
    s.task_done(1, 100, P.APP_ERROR, app_error(spec(100), APP_ERR), True)
    t = s.tasks[100]
    assert t.state is T.READY and t.retries_left == 1 and t.history[-2:] == [T.RETRYING,
                                                                              T.READY]
    assert objs_sent(s, 0) == {} and s.stats["retried"] == 1
    s.schedule()
    assert running_on(s, 200) == 1
    execs(s)
    # not retryable (the exception is not in retry_exceptions): fails despite retries left
    s.task_done(1, 200, P.APP_ERROR, app_error(spec(200), APP_ERR), False)
    assert objs_sent(s, 0) == {201: (ERROR, APP_ERR)}
    assert s.stats["failed"] == 1
    # 100 retries until its retries run out, then its own error payload is stored
    for left in (0, None):
        s.schedule()
        assert running_on(s, 100) == 1
        execs(s)
        s.task_done(1, 100, P.APP_ERROR, app_error(spec(100), APP_ERR), True)
        if left is not None:
            assert s.tasks[100].retries_left == left
    assert objs_sent(s, 0) == {101: (ERROR, APP_ERR)}
    assert s.stats == {"submitted": 2, "finished": 0, "failed": 2, "retried": 2}
    assert s.avail["CPU"] == 2.0


# ------------------------------------------------------------------------------ cancel


def test_cancel_queued_task_never_dispatches():
    s = make()
    s.submit(0, spec(100))
    t = s.tasks[100]
    s.cancel(100, force=False, recursive=False)
    e = error_of(objs_sent(s, 0)[101])
    assert isinstance(e, exc.TaskCancelledError)
    assert P.id_hex(100) in str(e)
    assert t.state is T.CANCELLED and 100 not in s.tasks
    s.worker_started(1)
    s.schedule()
    assert execs(s) == {} and take_actions(s) == []
    s.cancel(100, force=True, recursive=True)  # unknown/finished task: no-op
    assert take_actions(s) == [] and objs_sent(s, 0) == {}


def test_cancel_task_waiting_for_args():
    s = make()
    s.submit(0, spec(100))
    s.submit(0, spec(200, deps=[(0, 101)]))
    s.cancel(200, force=False, recursive=False)
    assert isinstance(error_of(objs_sent(s, 0)[201]), exc.TaskCancelledError)
    assert s.objs[101].waiting_tasks == [] and s.objs[101].task_refs == 0
    s.worker_started(1)
    s.schedule()
    w = running_on(s, 100)
    execs(s)
    s.task_done(w, 100, P.OK, [ok(101)], False)
    s.schedule()
    assert execs(s) == {}  # 200 stays cancelled


def test_cancel_dispatched_task_interrupts_and_is_not_retried():
    s = make(workers=1)
    s.submit(0, spec(100, retries=3, retry_exc=True))
    s.schedule()
    execs(s)
    s.cancel(100, force=False, recursive=False)
    assert typed(take_actions(s)) == typed([P.Interrupt(1, 100)])
    s.cancel(100, force=False, recursive=False)  # already being cancelled
    assert take_actions(s) == []
    assert s.tasks[100].state is T.DISPATCHED  # until the worker reports
    cancelled = pickle.dumps(exc.TaskCancelledError(P.id_hex(100)))
    s.task_done(1, 100, P.APP_ERROR, app_error(spec(100), cancelled), True)
    assert objs_sent(s, 0) == {101: (ERROR, cancelled)}  # retryable, but cancelled
    assert 100 not in s.tasks and s.stats["retried"] == 0


def test_force_cancel_kills_worker_and_stores_cancelled_error():
    s = make(workers=1)
    s.submit(0, spec(100, retries=3))
    s.schedule()
    execs(s)
    t = s.tasks[100]
    s.cancel(100, force=True, recursive=False)
    assert typed(take_actions(s)) == typed([P.Kill(1)])
    s.worker_died(1, "killed by signal SIGKILL")
    e = error_of(objs_sent(s, 0)[101])
    assert isinstance(e, exc.TaskCancelledError) and not isinstance(e, exc.WorkerCrashedError)
    assert t.state is T.CANCELLED and s.stats["retried"] == 0
    assert t.history == [T.PENDING_ARGS, T.READY, T.DISPATCHED, T.CANCELLED]


def test_recursive_cancel_reaches_child_tasks_submitted_from_workers():
    s = make({"CPU": 3.0}, workers=2, max_workers=2)
    s.submit(0, spec(100))  # parent, owned by the driver
    s.schedule()
    wp = running_on(s, 100)
    execs(s)
    s.submit(wp, spec(200))  # child submitted by the parent's worker
    s.submit(wp, spec(300))  # a second child
    s.schedule()
    wc = running_on(s, 200)
    execs(s)
    assert s.tasks[200].parent == 100 and s.tasks[300].parent == 100
    assert s.tasks[300].state is T.READY  # no worker left for it
    s.submit(wc, spec(400))  # grandchild, queued
    assert s.tasks[400].parent == 200
    s.submit(0, spec(500))  # unrelated
    s.cancel(100, force=False, recursive=True)
    acts = take_actions(s)
    assert sorted(typed(acts)) == sorted(typed([P.Interrupt(wp, 100), P.Interrupt(wc, 200)]))
    # queued descendants are cancelled right away; their owners (workers) are told
    assert isinstance(error_of(objs_sent(s, wp)[301]), exc.TaskCancelledError)
    assert isinstance(error_of(objs_sent(s, wc)[401]), exc.TaskCancelledError)
    assert 300 not in s.tasks and 400 not in s.tasks
    assert s.tasks[500].state is T.READY
    assert objs_sent(s, 0) == {}


def test_non_recursive_cancel_leaves_children_alone():
    s = make({"CPU": 2.0}, workers=1)
    s.submit(0, spec(100))
    s.schedule()
    execs(s)
    s.submit(1, spec(200))
    s.cancel(100, force=True, recursive=False)
    assert typed(take_actions(s)) == typed([P.Kill(1)])
    assert s.tasks[200].state is T.READY


# -------------------------------------------------------------------- reference counts


def arena_put(s: Scheduler, proc: int, oid: int, nbytes: int = 1000, contained=()) -> int:
    s.allocate(proc, 77, nbytes)
    (m,) = drain(s, proc, P.AllocOk)
    req, off, err = m.req, m.offset, m.error
    assert req == 77 and err is None and off is not None
    assert off in s.reserved[proc]
    s.put(proc, oid, ARENA, (off, 16, ((64, nbytes - 64),), nbytes), contained)
    assert off not in s.reserved[proc]  # sealed: no longer a loose reservation
    return off


def test_put_and_owner_decref_frees_inline_and_arena_objects():
    s = make(arena_size=1 << 20)
    s.put(0, 10, INLINE, b"small")
    arena_put(s, 0, 11)
    assert s.alloc.used == 1024
    assert s.objs[10].state is O.INLINE and s.objs[11].state is O.IN_ARENA
    # the owner put them: it has the values, they are not sent back to it
    assert objs_sent(s, 0) == {}
    s.refs(0, [], [10, 11])
    assert 10 not in s.objs and 11 not in s.objs
    assert s.alloc.used == 0


def test_refs_from_several_processes():
    s = make(workers=1)
    s.put(0, 10, INLINE, b"x")
    s.refs(1, [10], [])  # the driver passed the ref to a worker
    s.refs(0, [], [10])
    assert 10 in s.objs
    s.refs(1, [], [10])
    assert 10 not in s.objs
    s.refs(1, [10], [10])  # unknown ids are ignored
    assert 10 not in s.objs


RELEASES = ["owner", "task", "container", "pin"]


@pytest.mark.parametrize("order", list(itertools.permutations(RELEASES)),
                         ids=lambda o: ">".join(o))
def test_object_freed_only_when_every_holder_is_gone(order):
    s = make(arena_size=1 << 20, workers=1)
    off = arena_put(s, 0, 10)
    s.put(0, 20, INLINE, b"[ref 10]", contained=(10,))  # a container holding ref 10
    s.submit(0, spec(100, deps=[(0, 10)], res={"CPU": 99.0}))  # waits forever: holds 10
    s.pin(1, [10])  # a worker maps the value zero-copy
    o = s.objs[10]
    assert (o.procs, o.task_refs, o.contained_in, o.pins) == ({0}, 1, 1, {1: 1})
    release = {
        "owner": lambda: s.refs(0, [], [10]),
        "task": lambda: s.cancel(100, force=False, recursive=False),
        "container": lambda: s.refs(0, [], [20]),
        "pin": lambda: s.unpin(1, [10]),
    }
    for what in order:
        assert 10 in s.objs and s.alloc.used == 1024, f"freed before releasing {what}"
        release[what]()
    assert 10 not in s.objs
    assert o.state is O.FREED and o.history == [O.PENDING, O.IN_ARENA, O.FREED]
    assert s.alloc.used == 0 and off not in s.alloc.live_ranges()
    assert s.alloc.alloc(1000) == off  # the range is reusable


def test_pins_are_counted_per_process():
    s = make(arena_size=1 << 16, workers=2)
    arena_put(s, 0, 10)
    s.pin(1, [10])
    s.pin(1, [10])
    s.pin(2, [10])
    s.refs(0, [], [10])
    s.unpin(1, [10])
    s.unpin(2, [10])
    assert 10 in s.objs and s.objs[10].pins == {1: 1}
    s.unpin(2, [10])  # not pinned by 2 any more: ignored
    assert 10 in s.objs
    s.unpin(1, [10])
    assert 10 not in s.objs and s.alloc.used == 0


def test_containment_chain_frees_inner_objects():
    s = make(arena_size=1 << 16)
    arena_put(s, 0, 10)
    s.put(0, 20, INLINE, b"[10]", contained=(10,))
    s.put(0, 30, INLINE, b"[20]", contained=(20,))
    s.refs(0, [], [10, 20])
    assert set(s.objs) == {10, 20, 30}
    assert s.objs[10].contained_in == 1 and s.objs[20].contained_in == 1
    s.refs(0, [], [30])
    assert s.objs == {} and s.alloc.used == 0


def test_refs_contained_in_task_args_are_held_until_the_task_ends():
    s = make(workers=1)
    s.put(0, 10, INLINE, b"x")
    s.submit(0, spec(100, contained=(10,)))  # ref 10 pickled inside the arguments
    s.refs(0, [], [10])
    assert 10 in s.objs and s.objs[10].task_refs == 1
    s.schedule()
    assert execs(s)[1][0].deps == []  # not a top-level dependency
    s.task_done(1, 100, P.OK, [ok(101)], False)
    assert 10 not in s.objs


def test_task_result_containing_refs_keeps_them_alive():
    s = make(workers=1)
    s.submit(0, spec(100))
    s.schedule()
    s.put(1, 50, INLINE, b"made inside", ())  # the worker puts an object ...
    s.task_done(1, 100, P.OK, [ok(101, b"[ref 50]", contained=(50,))], False)
    s.refs(1, [], [50])  # ... returns a ref to it, and drops its own ref
    assert 50 in s.objs and s.objs[50].contained_in == 1
    s.refs(0, [], [101])
    assert 50 not in s.objs and 101 not in s.objs


def test_dead_worker_holds_pins_reservations_and_subscriptions_are_dropped():
    s = make(arena_size=1 << 20, workers=2)
    arena_put(s, 0, 10)
    s.put(0, 11, INLINE, b"y")
    s.submit(0, spec(100))  # 101 stays pending
    s.refs(1, [10, 11], [])
    s.refs(0, [], [10, 11])
    s.pin(1, [10])
    s.subscribe(1, [101])
    s.allocate(1, 5, 4000)  # a reservation the worker never sealed
    m = drain(s, 1)[0]
    assert type(m) is P.AllocOk and m.req == 5
    assert s.alloc.used == 1024 + 4032
    s.worker_died(1, "exit")
    assert 10 not in s.objs and 11 not in s.objs
    assert s.alloc.used == 0
    assert 1 not in s.reserved and 1 not in s.out
    assert s.objs[101].subscribers == set()
    s.schedule()
    assert [m.tid for m in execs(s)[2]] == [100]  # only the live worker gets work
    s.task_done(2, 100, P.OK, [ok(101)], False)
    assert 1 not in s.out  # nothing is sent to the dead worker


def test_allocate_full_and_free_range():
    s = make(arena_size=4096, workers=1)
    s.allocate(1, 1, 3000)
    (m,) = drain(s, 1)
    assert type(m) is P.AllocOk and m == P.AllocOk(1, 0, None)
    s.allocate(1, 2, 3000)
    (m,) = drain(s, 1)
    assert type(m) is P.AllocOk and (m.req, m.offset) == (2, None)
    assert "no free range of 3008 bytes" in m.error
    s.free_range(0, 0)  # not the driver's reservation: ignored
    assert s.alloc.used == 3008
    s.free_range(1, 0)
    assert s.alloc.used == 0 and s.reserved[1] == set()
    s.free_range(1, 0)  # twice: ignored
    assert s.alloc.used == 0


def test_worker_puts_arena_task_result():
    s = make(arena_size=1 << 16, workers=1)
    s.submit(0, spec(100))
    s.schedule()
    s.allocate(1, 9, 5000)
    (m,) = [m for m in drain(s, 1) if type(m) is P.AllocOk]
    off = m.offset
    desc = (off, 32, ((64, 4900),), 5000)
    s.task_done(1, 100, P.OK, [(101, ARENA, desc, ())], False)
    assert s.reserved[1] == set()  # sealed, so the worker's death would not free it
    assert objs_sent(s, 0) == {101: (ARENA, desc)}
    s.worker_died(1, "exit")
    assert s.alloc.used == 5056
    s.refs(0, [], [101])
    assert s.alloc.used == 0


# ---------------------------------------------------------------------------- subscribe


def test_subscribe_pending_object_gets_value_when_sealed():
    s = make(workers=2)
    s.submit(0, spec(100))
    s.subscribe(2, [101])
    s.subscribe(0, [101])  # the owner too: it must get the value only once
    assert drain(s, 2) == [] and drain(s, 0) == []
    s.schedule()
    w = running_on(s, 100)
    execs(s)
    s.task_done(w, 100, P.OK, [ok(101, b"val")], False)
    assert objs_sent(s, 0) == {101: (INLINE, b"val")}
    assert objs_sent(s, 2) == {101: (INLINE, b"val")}
    assert s.objs[101].subscribers == set()
    # already sealed: answered at once
    s.subscribe(2, [101])
    assert objs_sent(s, 2) == {101: (INLINE, b"val")}


def test_subscriber_gets_value_even_when_owner_dropped_its_ref():
    s = make(workers=2)
    s.submit(0, spec(100))
    s.refs(2, [101], [])
    s.subscribe(2, [101])
    s.refs(0, [], [101])
    s.schedule()
    w = running_on(s, 100)
    execs(s)
    s.task_done(w, 100, P.OK, [ok(101, b"val")], False)
    assert objs_sent(s, 2) == {101: (INLINE, b"val")}
    assert objs_sent(s, 0) == {}


@pytest.mark.parametrize("freed", [True, False], ids=["freed", "unknown"])
def test_subscribe_to_freed_or_unknown_object_sends_error(freed):
    s = make()
    oid = P.id_base(0, 3) | 42
    if freed:
        s.put(0, oid, INLINE, b"gone")
        drain(s, 0)
        s.refs(0, [], [oid])
        assert oid not in s.objs
    s.subscribe(0, [oid])
    e = error_of(objs_sent(s, 0)[oid])
    assert isinstance(e, exc.ObjectFreedError) and isinstance(e, exc.ObjectLostError)
    assert e.object_ref_hex == P.id_hex(oid) == "000000300000002a"
    assert "freed" in str(e)


# -------------------------------------------------------------------------- infeasible


def test_infeasible_request_warns_once_and_never_runs():
    s = make({"CPU": 4.0}, workers=1)
    s.submit(0, spec(100, name="needs_gpu", res={"CPU": 1.0, "GPU": 1.0}))
    acts = take_actions(s)
    assert len(acts) == 1 and type(acts[0]) is P.Warn
    text = acts[0].text
    assert "needs_gpu" in text and "'GPU': 1.0" in text and "0 in total" in text
    s.submit(0, spec(200, name="needs_gpu", res={"CPU": 1.0, "GPU": 1.0}))
    assert take_actions(s) == []  # same request: no second warning
    s.submit(0, spec(300, name="big", res={"CPU": 8.0}))
    (act,) = take_actions(s)
    assert type(act) is P.Warn and "'CPU': 8.0" in act.text and "4.0 in total" in act.text
    s.schedule()
    assert execs(s) == {} and take_actions(s) == []  # waits; no worker started for it
    assert {s.tasks[t].state for t in (100, 200, 300)} == {T.READY}
    s.submit(0, spec(400))  # feasible work still runs
    s.schedule()
    assert [m.tid for ms in execs(s).values() for m in ms] == [400]
    assert take_actions(s) == []


# ------------------------------------------------------------------------- idle workers


def test_tick_retires_extra_idle_workers_but_keeps_warm_pool():
    s = make({"CPU": 2.0}, workers=4, now=100.0, idle_keep=2, idle_timeout=10.0,
             max_workers=8)
    s.tick(105.0)
    assert take_actions(s) == []
    s.tick(111.0)
    kills = take_actions(s)
    assert sorted(typed(kills)) == typed([P.Kill(1), P.Kill(2)])
    assert sorted(s.idle) == [3, 4]  # being retired: never dispatched to again
    for k in kills:
        s.worker_died(k.wid, "retired")
    s.tick(1000.0)
    assert take_actions(s) == []
    assert sorted(s.workers) == [3, 4]


def test_tick_never_retires_busy_workers_and_restarts_idle_clock():
    s = make({"CPU": 4.0}, workers=3, now=0.0, idle_keep=1, idle_timeout=10.0)
    s.submit(0, spec(100))
    s.schedule()
    busy = running_on(s, 100)
    s.tick(50.0)  # idle_since 0.0 means "not known yet": the clock starts now
    assert take_actions(s) == []
    s.tick(55.0)
    assert take_actions(s) == []
    s.tick(61.0)
    kills = take_actions(s)
    assert len(kills) == 2 and all(type(k) is P.Kill for k in kills)
    assert busy not in [k.wid for k in kills]
    for k in kills:
        s.worker_died(k.wid, "retired")
    # the busy worker finishes: it is the warm pool now
    s.task_done(busy, 100, P.OK, [ok(101)], False)
    s.tick(100.0)
    s.tick(200.0)
    assert take_actions(s) == []


def test_tick_before_retired_workers_are_reaped_keeps_warm_pool():
    """A ``P.Kill(wid)`` worker stays in ``workers`` until worker_died() arrives; a second
    tick in between must not count it and retire the warm pool too (regression; latent in
    the node, where SIGCHLD is reaped well within the 1 s tick period)."""
    s = make({"CPU": 2.0}, workers=4, now=100.0, idle_keep=2, idle_timeout=10.0,
             max_workers=8)
    s.tick(111.0)
    assert len(take_actions(s)) == 2
    s.tick(112.0)
    assert take_actions(s) == []


def test_invariants_are_checked_after_events_and_catch_broken_books(node_invariants):
    s = make(workers=1)
    s.submit(0, spec(100))
    s.schedule()
    assert node_invariants["events"] >= 3  # worker_started, submit, schedule
    s.avail["CPU"] += 1.0  # corrupt the resource books
    with pytest.raises(AssertionError, match="resource CPU"):
        s.check_invariants()
    s.avail["CPU"] -= 1.0
    s.objs[101].task_refs += 1  # a holder count nothing accounts for
    with pytest.raises(AssertionError, match="task_refs"):
        s.check_invariants()


# ----------------------------------------------------------------------------- reclaim


def _leased_setup():
    """A driver's task runs on one worker and owns nested tasks; the other worker is its
    lease (through a lease channel); no CPU is left."""
    s = make({"CPU": 2.0}, workers=2, channels=2)
    s.leasable.update({1, 2})
    s.submit(0, spec(10))
    s.schedule()
    ((owner, _),) = execs(s).items()
    other = 3 - owner
    s.submit(owner, spec(20)._replace(lease=True))  # its first lease request
    s.schedule()
    assert list(execs(s)) == [other]
    (grant,) = [a for a in take_actions(s) if type(a) is P.GrantLease]
    assert (grant.wid, grant.owner) == (other, owner) and grant.channel is not None
    return s, owner, other, grant.epoch


def test_an_owners_own_lease_request_does_not_take_its_lease_back():
    s, owner, other, epoch = _leased_setup()
    s.submit(owner, spec(30)._replace(lease=True))  # a second request: no CPU for it
    s.schedule()
    assert s.tasks[30].state is T.READY
    assert drain(s, other, P.Reclaim) == []  # its lease runs its queued tasks meanwhile


def test_another_owners_waiting_task_takes_the_lease_back_when_idle():
    s, owner, other, epoch = _leased_setup()
    s.submit(owner, spec(30)._replace(lease=True))
    s.submit(0, spec(40))  # the driver's plain task waits for a CPU too
    s.schedule()
    assert s.tasks[40].state is T.READY
    assert drain(s, other, P.Reclaim) == [P.Reclaim(epoch)]  # (names its lease)
    s.submit(0, spec(42))
    s.schedule()
    assert drain(s, other, P.Reclaim) == []  # asked once per lease


def test_an_owners_own_plain_task_takes_its_lease_back_on_one_host():
    """(Under MPI it may wait a while first: tests/test_cluster.py.)  On one host an
    owner sends a plain task this way only when it cannot run it on its leases (refs
    inside, big arguments, a retry): it must not wait for them to idle."""
    s, owner, other, epoch = _leased_setup()
    s.submit(owner, spec(40))
    s.schedule()
    assert s.tasks[40].state is T.READY
    assert drain(s, other, P.Reclaim) == [P.Reclaim(epoch)]


def test_a_gpu_task_runs_in_a_worker_that_never_ran_a_task():
    """As Ray keeps GPU and CPU work in different worker processes: a GPU task does not
    inherit a CPU task's worker (its imports, its CUDA state)."""
    s = make({"CPU": 4.0, "GPU": 1.0}, gpu_ids=["0"], workers=2, max_workers=2)
    s.submit(0, spec(100))
    s.schedule()
    (used,) = execs(s)
    s.task_done(used, 100, P.OK, [ok(101)], False)
    s.submit(0, spec(200, res={"CPU": 1.0, "GPU": 1.0}))
    s.schedule()
    (fresh,) = execs(s)
    assert fresh != used  # the idle worker that never ran anything
    s.task_done(fresh, 200, P.OK, [ok(201)], False)
    take_actions(s)
    s.submit(0, spec(300, res={"CPU": 1.0, "GPU": 1.0}))
    s.schedule()
    assert not execs(s)  # both idle workers ran tasks: one retires to make room
    acts = typed(take_actions(s))
    assert [a for a in acts if a[0] == "Kill"] and ("StartWorker",) not in acts
    (killed,) = [a[1] for a in acts if a[0] == "Kill"]
    s.worker_died(killed, "retired")
    s.schedule()
    assert ("StartWorker",) in typed(take_actions(s))
    s.worker_started(3)
    s.schedule()
    assert list(execs(s)) == [3]

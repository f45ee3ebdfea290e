"""The node's spilling as a pure machine (node/spill.py): no processes, no files; the
I/O thread's work is played by calling spill_written / spill_read, and every event is
followed by the scheduler's invariants (spilling's books among them)."""

from __future__ import annotations

import pickle

import pytest

from mpray import exceptions as exc
from mpray import protocol as P
from mpray.node.scheduler import Scheduler
from mpray.node.spill import SPILLER
from mpray.states import ObjState as O, TaskState as T
from mpray.store.serialization import ARENA, ERROR

pytestmark = pytest.mark.usefixtures("node_invariants")

FID = 7
N = 4096  # each value's bytes: the arena below holds four


def make(workers: int = 1, arena: int = 4 * N) -> Scheduler:
    s = Scheduler({"CPU": 2.0}, arena_size=arena, spill_dir="/spill")
    s.register_function(FID, b"blob")
    for wid in range(1, workers + 1):
        s.worker_started(wid, 0.0)
    return s


def take(s: Scheduler, proc: int, kind: type) -> list:
    msgs = s.out.pop(proc, [])
    rest = [m for m in msgs if type(m) is not kind]
    if rest:
        s.out[proc] = rest
    return [m for m in msgs if type(m) is kind]


def actions(s: Scheduler, kind: type) -> list:
    got = [a for a in s.actions if type(a) is kind]
    s.actions = [a for a in s.actions if type(a) is not kind]
    return got


def put(s: Scheduler, oid: int, proc: int = 0) -> int:
    s.allocate(proc, oid, N)
    (m,) = take(s, proc, P.AllocOk)
    assert m.error is None
    s.put(proc, oid, ARENA, (m.offset, 16, ((64, N - 64),), N))
    return m.offset


def fill(s: Scheduler, oids=(10, 20, 30, 40)) -> None:
    for oid in oids:
        put(s, oid)
    assert s.alloc.used == 4 * N  # (full)


def evict_round(s: Scheduler, answers: dict[int, tuple]) -> P.SpillWrite:
    """The write ends, each process answers, two passes over the rings go by."""
    (w,) = actions(s, P.SpillWrite)
    s.spill_written(w.batch, None)
    for proc, (kept, dropped) in answers.items():
        s.evicted(proc, kept, dropped)
    s.end_pass()
    s.end_pass()
    return w


def spec(tid: int, deps=()) -> P.TaskSpec:
    return P.TaskSpec(tid, FID, "f", b"args", tuple(deps), 1, (("CPU", 1.0),), 0, False,
                      (), None)


def test_a_full_arena_spills_the_oldest_value_once_its_holder_answers():
    s = make()
    fill(s)
    s.allocate(0, 99, N)
    assert take(s, 0, P.AllocOk) == []  # it waits for room
    (w,) = actions(s, P.SpillWrite)
    assert [item[0] for item in w.items] == [10]  # the least recently used
    assert s.objs[10].state is O.EVICTING and s.objs[10].pins == {SPILLER: 1}
    s.spill_written(w.batch, None)
    (ev,) = take(s, 0, P.Evict)  # the driver holds its ref: it must answer first
    assert ev.oids == [10]
    s.evicted(0, [], [10])
    s.end_pass()
    assert take(s, 0, P.AllocOk) == []  # one more pass over the rings first
    s.end_pass()
    assert s.objs[10].state is O.SPILLED
    (m,) = take(s, 0, P.AllocOk)
    assert m.req == 99 and m.error is None and m.offset == 0  # the value's old place


def test_a_spilled_value_comes_back_on_subscribe_and_leaves_again_without_a_write():
    s = make()
    fill(s)
    s.allocate(0, 99, N)
    evict_round(s, {0: ([], [10])})
    take(s, 0, P.AllocOk)
    s.free_range(0, 0)  # (that put never happened: its room is free again)
    s.subscribe(0, [10])
    (r,) = actions(s, P.SpillRead)
    assert (r.oid, r.file_off, r.nbytes) == (10, 0, N)
    assert s.objs[10].state is O.RESTORING
    s.spill_read(10, None)
    (obj,) = take(s, 0, P.Obj)
    assert obj.oid == 10 and obj.kind == ARENA and obj.payload[0] == r.offset
    assert s.objs[10].state is O.IN_ARENA and s.spill_stats["restored"] == 1
    # full again: 20 is now the oldest; 10 (just used) goes last, and its copy stays
    s.allocate(0, 98, 2 * N)
    (w,) = actions(s, P.SpillWrite)
    assert [item[0] for item in w.items] == [20, 30]
    assert s.objs[10].state is O.IN_ARENA


def test_a_value_that_a_process_still_maps_stays():
    s = make()
    fill(s)
    s.allocate(0, 99, N)
    evict_round(s, {0: ([10], [])})  # the driver has a view of it
    assert s.objs[10].state is O.IN_ARENA
    assert take(s, 0, P.AllocOk) == []  # still waiting: the next round takes another
    s.tick(2.0)
    (w,) = actions(s, P.SpillWrite)
    assert [item[0] for item in w.items] == [20]


def test_pinned_values_and_those_running_tasks_read_are_never_chosen():
    s = make(workers=1)
    fill(s)
    s.pin(0, [10])
    s.submit(0, spec(100, deps=[(0, 20)]))
    s.schedule()
    assert s.tasks[100].state is T.DISPATCHED
    s.allocate(0, 99, N)
    (w,) = actions(s, P.SpillWrite)
    assert [item[0] for item in w.items] == [30]


def test_nothing_to_spill_fails_the_alloc_with_the_sizes():
    s = make()
    fill(s)
    s.pin(0, [10, 20, 30, 40])
    s.allocate(0, 99, N)
    (m,) = take(s, 0, P.AllocOk)
    assert m.offset is None and f"no free range of {N} bytes" in m.error
    assert "mapped by a live view" in m.error
    assert actions(s, P.SpillWrite) == []


def test_a_subscribe_while_evicting_calls_the_eviction_off():
    s = make()
    fill(s)
    s.refs(1, [10], [])  # a worker borrowed it too
    s.allocate(0, 99, N)
    (w,) = actions(s, P.SpillWrite)
    s.spill_written(w.batch, None)
    assert [m.oids for m in take(s, 1, P.Evict)] == [[10]]
    take(s, 0, P.Evict)
    s.subscribe(1, [10])  # it wants the value now: it stays, and its place goes out
    (obj,) = take(s, 1, P.Obj)
    assert obj.payload[0] == 0 and s.objs[10].state is O.IN_ARENA
    s.evicted(0, [], [10])
    s.evicted(1, [], [10])
    s.end_pass()
    s.end_pass()
    assert s.objs[10].state is O.IN_ARENA


def test_a_task_whose_argument_is_on_disk_waits_for_it():
    s = make(workers=1)
    fill(s)
    s.allocate(0, 99, N)
    evict_round(s, {0: ([], [10])})
    (m,) = take(s, 0, P.AllocOk)
    s.put(0, 50, ARENA, (m.offset, 16, ((64, N - 64),), N))
    s.submit(0, spec(100, deps=[(0, 10)]))
    assert s.tasks[100].state is T.PENDING_ARGS
    (w,) = actions(s, P.SpillWrite)  # room for it: the oldest in memory goes
    assert [item[0] for item in w.items] == [20]
    s.spill_written(w.batch, None)
    s.evicted(0, [], [20])
    s.end_pass()
    s.end_pass()
    (r,) = actions(s, P.SpillRead)
    assert r.oid == 10
    s.spill_read(10, None)
    s.schedule()
    assert s.tasks[100].state is T.DISPATCHED
    (ex,) = take(s, 1, P.Exec)
    assert ex.deps[0][:3] == (0, 10, ARENA) and ex.deps[0][3][0] == r.offset


def test_a_put_whose_spill_file_is_lost_is_an_object_lost_error():
    s = make()
    fill(s)
    s.allocate(0, 99, N)
    evict_round(s, {0: ([], [10])})
    take(s, 0, P.AllocOk)
    s.free_range(0, 0)
    s.subscribe(0, [10])
    (r,) = actions(s, P.SpillRead)
    s.spill_read(10, "No such file or directory")
    assert s.objs[10].state is O.PENDING  # lost: its owner is asked how it was made
    (ask,) = take(s, 0, P.LineageAsk)
    assert ask.oids == [10]
    s.lineage_is(0, 10, None, None)  # a put: no task made it
    (obj,) = take(s, 0, P.Obj)
    assert obj.kind == ERROR
    err = pickle.loads(obj.payload)
    assert isinstance(err, exc.ObjectLostError) and "No such file" in str(err)
    assert "put" in str(err) and r.path in str(err)
    s.refs(0, [], [10])
    assert 10 not in s.objs and s.spill_files == {}
    assert actions(s, P.SpillDelete) == [P.SpillDelete(r.path)]


def lose(s: Scheduler, oid: int) -> None:
    """``oid`` is evicted to disk, then its file is found missing as it is read back."""
    s.allocate(0, 99, N)
    evict_round(s, {0: ([], [oid])})
    (m,) = take(s, 0, P.AllocOk)
    s.free_range(0, m.offset)
    s.subscribe(0, [oid])
    (r,) = actions(s, P.SpillRead)
    assert r.oid == oid
    s.spill_read(oid, "No such file or directory")


def task_result(s: Scheduler, tid: int, deps=(), retries=2) -> int:
    """A node task with one ARENA result, run on worker 1; returns the result's id."""
    sp = spec(tid, deps=deps)._replace(retries=retries)
    s.submit(0, sp)
    s.schedule()
    (ex,) = take(s, 1, P.Exec)
    s.allocate(1, 5, N)
    (m,) = take(s, 1, P.AllocOk)
    s.task_done(1, tid, P.OK, [(tid + 1, ARENA, (m.offset, 16, ((64, N - 64),), N), ())],
                False)
    take(s, 0, P.Obj)
    return tid + 1


def test_a_lost_task_result_is_made_again_by_its_task():
    s = make(workers=1)
    oid = task_result(s, 100)  # (the oldest value: the first to go)
    fill(s, (20, 30, 40))
    assert s.lineage_of[oid] == 100
    lose(s, oid)
    assert s.objs[oid].state is O.PENDING and s.tasks[100].state is T.READY
    s.schedule()
    (ex,) = take(s, 1, P.Exec)
    assert ex.tid == 100
    s.allocate(1, 6, N)
    (m,) = take(s, 1, P.AllocOk)
    s.task_done(1, 100, P.OK, [(oid, ARENA, (m.offset, 16, ((64, N - 64),), N), ())], False)
    (obj,) = [o for o in take(s, 0, P.Obj) if o.oid == oid]
    assert obj.kind == ARENA and obj.payload[0] == m.offset  # the subscriber has it again
    assert s.objs[oid].state is O.IN_ARENA and s.reruns == {100: 1}
    s.refs(0, [], [oid])
    assert s.lineage == {} and s.lineage_of == {}


def test_a_task_with_no_retries_left_or_none_gives_reconstruction_failed():
    s = make(workers=1)
    oid = task_result(s, 100, retries=0)
    fill(s, (20, 30, 40))
    lose(s, oid)
    (obj,) = [o for o in take(s, 0, P.Obj) if o.oid == oid]
    err = pickle.loads(obj.payload)
    assert type(err) is exc.ObjectReconstructionFailedError
    assert "max_retries=0" in str(err)


def test_a_failed_write_keeps_the_values_and_names_the_directory():
    s = make()
    fill(s)
    s.allocate(0, 99, N)
    (w,) = actions(s, P.SpillWrite)
    s.spill_written(w.batch, "No space left on device (OSError, errno 28)")
    (m,) = take(s, 0, P.AllocOk)
    assert m.offset is None and "/spill" in m.error and "No space left" in m.error
    assert all(s.objs[o].state is O.IN_ARENA for o in (10, 20, 30, 40))
    assert actions(s, P.SpillDelete) == [P.SpillDelete(w.path)]


def test_freeing_spilled_values_deletes_their_file_and_a_dead_holder_answers_no_more():
    s = make(workers=1)
    fill(s)
    s.refs(1, [10, 20], [])
    s.allocate(0, 99, 2 * N)
    (w,) = actions(s, P.SpillWrite)
    s.spill_written(w.batch, None)
    s.evicted(0, [], [10, 20])
    s.worker_died(1, "killed")  # it never answers: its death does
    s.end_pass()
    s.end_pass()
    assert s.objs[10].state is O.SPILLED and s.objs[20].state is O.SPILLED
    s.refs(0, [], [10])
    assert actions(s, P.SpillDelete) == []  # 20 is still on it
    s.refs(0, [], [20])
    assert actions(s, P.SpillDelete) == [P.SpillDelete(w.path)]
    assert s.spill_copy == {} and s.spill_files == {}


def test_a_queued_task_lets_its_argument_go_and_reads_it_back_before_it_runs():
    s = make(workers=1)
    fill(s)
    s.submit(0, spec(100))  # takes the only worker
    s.submit(0, spec(200, deps=[(0, 10)]))
    s.schedule()
    assert s.tasks[200].state is T.READY  # waits for a CPU, its argument evictable
    s.allocate(0, 99, N)
    (w,) = actions(s, P.SpillWrite)
    assert [item[0] for item in w.items] == [10]
    s.spill_written(w.batch, None)
    s.evicted(0, [], [10])
    s.end_pass()
    s.end_pass()
    assert s.objs[10].state is O.SPILLED
    take(s, 0, P.AllocOk)
    s.free_range(0, 0)
    s.task_done(1, 100, P.OK, [(101, 0, b"v", ())], False)  # its CPU is free
    s.schedule()
    assert s.tasks[200].state is T.PENDING_ARGS  # its argument first
    (r,) = actions(s, P.SpillRead)
    s.spill_read(10, None)
    s.schedule()
    assert s.tasks[200].state is T.DISPATCHED


def test_values_freed_while_being_written_free_their_file_at_the_end_of_the_write():
    s = make()
    fill(s)
    s.allocate(0, 99, 2 * N)
    (w,) = actions(s, P.SpillWrite)
    assert [item[0] for item in w.items] == [10, 20]
    s.refs(0, [], [10, 20])  # the driver drops both while the I/O thread copies them
    assert 10 in s.objs and 20 in s.objs  # (their ranges are being read)
    s.spill_written(w.batch, None)
    assert 10 not in s.objs and 20 not in s.objs
    assert actions(s, P.SpillDelete) == [P.SpillDelete(w.path)]
    (m,) = take(s, 0, P.AllocOk)
    assert m.error is None


def test_a_waiter_holding_a_reservation_of_its_own_fails_rather_than_waits_for_it():
    s = make(workers=1)
    s.allocate(1, 1, 2 * N)  # a worker's first result: written, not sealed yet
    take(s, 1, P.AllocOk)
    fill(s, (20, 30))
    s.pin(0, [20, 30])
    s.allocate(1, 2, N)  # its second: nothing can leave, and its own first stays
    (m,) = take(s, 1, P.AllocOk)
    assert m.offset is None and "no value left in it can be spilled" in m.error


def test_lineage_past_its_bound_goes_to_the_control_store_and_comes_back_from_it():
    from mpray.control.recorder import LINEAGE
    from mpray.node.lineage import STORED

    s = make(workers=1)
    s.lineage_store, s.max_lineage_bytes = True, 1
    oid = task_result(s, 100)
    fill(s, (20, 30, 40))
    (rec,) = [r for r in s.records if r[0] == LINEAGE]
    assert rec[1] == 100 and pickle.loads(rec[3])[0] == 100  # (tid, owner, its spec)
    assert s.lineage[100][0] is STORED
    lose(s, oid)
    (load,) = actions(s, P.LineageLoad)
    assert (load.tid, load.oid) == (100, oid) and s.objs[oid].state is O.PENDING
    s.lineage_loaded(oid, tuple.__new__(P.TaskSpec, pickle.loads(rec[3])))
    assert s.tasks[100].state is T.READY  # it runs again

"""Placement groups: the placement rule, the node's registry and bundles as a pure
machine (no processes, invariants after every event), and then the API in a session,
written from Ray's documented behaviour (``ray.util.placement_group``)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

import pytest

import mpray
from mpray import exceptions as exc
from mpray import protocol as P
from mpray.node.cluster import AGENT
from mpray.node.scheduler import Scheduler
from mpray.placement import place_bundles, pg_resources
from mpray.states import TaskState as T
from mpray.store.serialization import ERROR, INLINE
from mpray.util import (get_placement_group, placement_group, placement_group_table,
                        remove_placement_group)
from mpray.util.placement_group import PlacementGroup, PlacementGroupID
from mpray.util.scheduling_strategies import PlacementGroupSchedulingStrategy as PGS

FID = 7
PG = "00000000000000aa"


# ----------------------------------------------------------------------------- the rule
@pytest.mark.parametrize("bundles, strategy, caps, want", [
    ([{"CPU": 1}] * 2, "PACK", [{"CPU": 2}, {"CPU": 2}], [0, 0]),
    ([{"CPU": 1}] * 3, "PACK", [{"CPU": 2}, {"CPU": 2}], [0, 0, 1]),  # bends
    ([{"CPU": 1}] * 3, "STRICT_PACK", [{"CPU": 2}, {"CPU": 2}], None),  # does not
    ([{"CPU": 1}] * 2, "SPREAD", [{"CPU": 2}, {"CPU": 2}], [0, 1]),
    ([{"CPU": 1}] * 3, "SPREAD", [{"CPU": 2}, {"CPU": 2}], [0, 1, 0]),  # bends
    ([{"CPU": 1}] * 3, "STRICT_SPREAD", [{"CPU": 2}, {"CPU": 2}], None),  # does not
    ([{"CPU": 1}] * 2, "STRICT_SPREAD", [{"CPU": 2}, {"CPU": 2}], [0, 1]),
    ([{"GPU": 1}], "PACK", [{"CPU": 2}, {"CPU": 2, "GPU": 1}], [1]),
    ([{"CPU": 3}], "PACK", [{"CPU": 2}, {"CPU": 2}], None),
])
def test_bundles_are_placed_by_strategy(bundles, strategy, caps, want):
    assert place_bundles(bundles, strategy, caps) == want


def test_pack_starts_at_the_creators_rank():
    assert place_bundles([{"CPU": 1}], "PACK", [{"CPU": 2}] * 3, first=2) == [2]


def _pg(nbundles=2, key=PG) -> PlacementGroup:
    return PlacementGroup(PlacementGroupID(key), [{"CPU": 1.0}] * nbundles)


def test_a_group_task_asks_for_its_bundles_resources():
    pg = _pg()
    assert set(pg_resources((("CPU", 1.0),), PGS(pg, 1))) == {
        (f"CPU_group_1_{PG}", 1.0), (f"CPU_group_{PG}", 1.0),
        (f"bundle_group_1_{PG}", 0.001), (f"bundle_group_{PG}", 0.001)}
    assert pg_resources((), PGS(pg)) == ((f"bundle_group_{PG}", 0.001),)
    assert pg_resources((("CPU", 1.0),), "SPREAD") == (("CPU", 1.0),)


# ----------------------------------------------------------------------------- one node
pure = pytest.mark.usefixtures("node_invariants")  # invariants after every event


def make(resources=None, workers=2, gpu_ids=()) -> Scheduler:
    s = Scheduler(resources or {"CPU": 2.0}, gpu_ids=gpu_ids, node_id="n0")
    s.register_function(FID, b"<f>")
    for wid in range(1, workers + 1):
        s.worker_started(wid)
    return s


def spec(tid, strategy=None, res=None) -> P.TaskSpec:
    res = tuple(sorted((res if res is not None else {"CPU": 1.0}).items()))
    if strategy is not None:
        res = pg_resources(res, strategy)
    return P.TaskSpec(tid, FID, "f", b"args", (), 1, res, 0, False, (), strategy)


def create(s, pg_key=PG, bundles=None, strategy="PACK", name="", req=1, proc=0):
    bundles = bundles or [{"CPU": 1.0}, {"CPU": 1.0}]
    s.pg_op(proc, req, ("create", pg_key, bundles, strategy, name, ""))
    return [m for m in s.out.pop(proc, []) if type(m) is P.Reply]


def execs(s) -> dict[int, int]:
    """tid -> worker of every queued Exec (taken)."""
    got = {}
    for proc in [p for p in s.out if p != 0]:
        for m in s.out.pop(proc):
            if type(m) is P.Exec:
                got[m.tid] = proc
    return got


def error_sent(s, oid) -> BaseException:
    (m,) = [m for m in s.out.get(0, []) if type(m) is P.Obj and m.oid == oid]
    assert m.kind == ERROR
    return pickle.loads(m.payload)


@pure
def test_a_group_reserves_its_bundles_and_its_tasks_run_in_them():
    s = make({"CPU": 3.0})
    assert create(s) == [P.Reply(1, ("ok",))]
    assert s.pg_table[PG].state.value == "CREATED" and s.pg_where[PG] == (0, 0)
    assert s.avail["CPU"] == 1.0  # two of three reserved
    assert s.total[f"CPU_group_0_{PG}"] == 1.0 and s.total[f"CPU_group_{PG}"] == 2.0
    pg = _pg()
    s.submit(0, spec(100, PGS(pg, 0)))
    s.submit(0, spec(200, PGS(pg, 0)))  # waits for bundle 0
    s.submit(0, spec(300, PGS(pg, -1)))  # any bundle: bundle 1's CPU is free
    s.submit(0, spec(400))  # outside the group: the third CPU
    s.schedule()
    assert set(execs(s)) == {100, 300}  # (two workers)
    assert s.tasks[200].state is T.READY and s.tasks[400].state is T.READY
    s.task_done(s.tasks[100].worker, 100, P.OK, [(101, INLINE, b"v", ())], False)
    s.schedule()
    assert set(execs(s)) == {200}


@pure
def test_tasks_wait_for_a_group_that_is_not_created_yet():
    s = make({"CPU": 2.0})
    pg = _pg()
    s.submit(0, spec(100, PGS(pg, 1)))
    s.schedule()
    assert s.pg_waiting[PG] == [100] and not execs(s)
    assert not [a for a in s.actions if type(a) is P.Warn]  # not "infeasible": it waits
    create(s)
    s.schedule()
    assert set(execs(s)) == {100}


@pure
def test_a_reservation_waits_for_running_tasks_to_end():
    s = make({"CPU": 2.0})
    s.submit(0, spec(100))
    s.submit(0, spec(200))
    s.schedule()
    execs(s)
    assert create(s) == [P.Reply(1, ("ok",))]  # answered at once; placed, not reserved
    assert s.pg_table[PG].state.value == "PREPARED" and PG not in s.pg_local
    s.task_done(s.tasks[100].worker, 100, P.OK, [(101, INLINE, b"v", ())], False)
    s.schedule()
    assert s.pg_table[PG].state.value == "PREPARED"  # one CPU free: not enough yet
    s.task_done(s.tasks[200].worker, 200, P.OK, [(201, INLINE, b"v", ())], False)
    s.schedule()
    assert s.pg_table[PG].state.value == "CREATED" and s.avail["CPU"] == 0.0


@pure
def test_removal_frees_the_bundles_and_ends_what_runs_in_them():
    s = make({"CPU": 2.0}, workers=3)
    create(s)
    pg = _pg()
    s.submit(0, spec(100, PGS(pg, 0)))
    s.submit(0, spec(200, PGS(pg, 0)))  # queued behind 100
    s.schedule()
    assert set(execs(s)) == {100}
    wid = s.tasks[100].worker
    s.pg_op(0, 2, ("remove", PG))
    assert P.Reply(2, ("ok",)) in s.out[0]
    assert P.Kill(wid) in s.actions and s.avail["CPU"] == 2.0
    assert not any("_group_" in n for n in s.total)
    assert isinstance(error_sent(s, 201), exc.TaskPlacementGroupRemoved)
    s.worker_died(wid, "killed")
    assert isinstance(error_sent(s, 101), exc.TaskPlacementGroupRemoved)
    s.submit(0, spec(300, PGS(pg, 1)))  # after removal: fails at once
    assert isinstance(error_sent(s, 301), exc.TaskPlacementGroupRemoved)
    assert placement_table_state(s) == "REMOVED"


def placement_table_state(s) -> str:
    return s._pg_table(PG)[PG]["state"]


@pure
def test_ready_is_sealed_when_the_group_exists_or_fails_when_it_is_removed():
    s = make({"CPU": 2.0})
    s.pg_op(0, None, ("ready", PG, 501, b"the group"))  # before the group is known
    s.pg_op(0, None, ("create", PG, [{"CPU": 1.0}], "PACK", "", ""))  # (it is: resolved)
    assert [(m.oid, m.kind, m.payload) for m in s.out.pop(0) if type(m) is P.Obj] == [
        (501, INLINE, b"the group")]
    s.pg_op(0, None, ("ready", PG, 502, b"the group"))  # after: at once
    assert [m.oid for m in s.out.pop(0) if type(m) is P.Obj] == [502]
    s.pg_op(0, None, ("ready", "00000000000000bb", 503, b"other"))
    s.pg_op(0, None, ("create", "00000000000000bb", [{"CPU": 5.0}], "PACK", "", ""))
    s.pg_op(0, None, ("remove", "00000000000000bb"))  # (no answers: req None)
    assert isinstance(error_sent(s, 503), exc.TaskPlacementGroupRemoved)
    assert not [m for m in s.out.get(0, []) if type(m) is P.Reply]


@pure
def test_names_are_unique_and_looked_up():
    s = make({"CPU": 4.0})
    assert create(s, name="g") == [P.Reply(1, ("ok",))]
    (r,) = create(s, pg_key="00000000000000bb", name="g", req=2)
    assert r.data[0] == "error" and "already exists" in r.data[1]
    s.pg_op(0, 3, ("named", "", "g"))
    assert s.out.pop(0)[-1] == P.Reply(3, (PG, [{"CPU": 1.0}, {"CPU": 1.0}], "PACK", "g"))
    s.pg_op(0, 4, ("remove", PG))
    s.pg_op(0, 5, ("named", "", "g"))
    assert s.out.pop(0)[-1] == P.Reply(5, None)


@pure
def test_an_infeasible_group_warns_and_stays_pending_until_room_is_made():
    s = make({"CPU": 2.0})
    create(s, bundles=[{"CPU": 1.0}] * 3, strategy="STRICT_SPREAD")
    (w,) = [a for a in s.actions if type(a) is P.Warn]
    assert "cannot be placed" in w.text and placement_table_state(s) == "PENDING"
    create(s, pg_key="00000000000000bb", bundles=[{"CPU": 2.0}], req=2)
    create(s, pg_key="00000000000000cc", bundles=[{"CPU": 1.0}], req=3)
    assert s.pg_table["00000000000000cc"].state.value == "PENDING"  # no warning: it waits
    assert len([a for a in s.actions if type(a) is P.Warn]) == 1
    s.pg_op(0, 4, ("remove", "00000000000000bb"))
    assert s.pg_table["00000000000000cc"].state.value == "CREATED"


@pure
def test_a_bundles_gpus_go_to_its_tasks_only():
    s = make({"CPU": 4.0, "GPU": 2.0}, workers=3, gpu_ids=["0", "1"])
    create(s, bundles=[{"CPU": 1.0, "GPU": 1.0}])
    (owned,) = s.gpu_owner
    pg = PlacementGroup(PlacementGroupID(PG), [{"CPU": 1.0, "GPU": 1.0}])
    s.submit(0, spec(100, res={"GPU": 1.0}))  # outside: the other device
    s.submit(0, spec(200, PGS(pg, 0), res={"CPU": 1.0, "GPU": 1.0}))
    s.schedule()
    gpus = {m.tid: m.gpus for ms in list(s.out.values()) for m in ms if type(m) is P.Exec}
    assert gpus[200] == (owned,) and gpus[100] != (owned,) and len(gpus[100]) == 1


# ----------------------------------------------------------------------------- ranks
def cluster(rank=0, nranks=3) -> Scheduler:
    s = make({"CPU": 2.0}, workers=1)
    s.node_id = f"n{rank}"
    s.attach_cluster(rank, [(f"n{r}", {"CPU": 2.0}) for r in range(nranks)])
    return s


def to_ranks(s, kind) -> list:
    got = [P.wrap_any(m) for m in s.out.get(AGENT, []) if type(m) is P.ToRank]
    return [(m.rank, m.msg) for m in got if type(m.msg) is kind]


@pure
def test_strict_spread_puts_one_bundle_on_each_rank():
    s = cluster()
    create(s, bundles=[{"CPU": 1.0}] * 3, strategy="STRICT_SPREAD")
    assert s.pg_table[PG].ranks == (0, 1, 2)
    assert sorted(r for r, _m in to_ranks(s, P.PgReserve)) == [1, 2]
    assert PG in s.pg_local  # rank 0's own bundle: reserved at once
    s.pg_reserved(PG, 1)
    assert not to_ranks(s, P.PgPlaced)
    s.pg_reserved(PG, 2)
    assert sorted(r for r, _m in to_ranks(s, P.PgPlaced)) == [1, 2]
    assert s.pg_where[PG] == (0, 1, 2)
    pg = _pg(3)
    s.submit(0, spec(100, PGS(pg, 2)))
    (fwd,) = [P.wrap_any(m) for m in s.out[AGENT] if type(m) is P.Fwd]
    assert fwd.rank == 2 and fwd.spec.tid == 100


@pure
def test_another_rank_asks_rank_0_and_parks_tasks_until_the_group_is_placed():
    s = cluster(rank=1)
    s.pg_op(1, 9, ("create", PG, [{"CPU": 1.0}], "PACK", "", ""))
    ((r, ask),) = to_ranks(s, P.PgAsk)
    assert r == 0 and (ask.rank, ask.proc, ask.req) == (1, 1, 9)
    s.pg_answered(1, 9, ("ok",))
    assert s.out.pop(1) == [P.Reply(9, ("ok",))]
    pg = _pg(1)
    s.submit(0, spec(100, PGS(pg, 0)))
    assert s.pg_waiting[PG] == [100]
    s.pg_reserve(PG, [(0, {"CPU": 1.0})])  # rank 0 chose this rank
    assert to_ranks(s, P.PgReserved) == [(0, P.PgReserved(PG, 1))]
    s.pg_placed(PG, (1,))
    s.schedule()
    assert 100 in execs(s)


# ----------------------------------------------------------------------------- a session
@mpray.remote
def where():
    return os.getpid()


@mpray.remote
class Holder:
    def pid(self):
        return os.getpid()


def test_ready_wait_table_and_tasks_in_bundles(ray_factory):
    ray_factory(num_cpus=3)
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK", name="pair")
    assert mpray.get(pg.ready(), timeout=30) == pg and pg.wait(10)
    row = placement_group_table(pg)
    assert row["state"] == "CREATED" and row["strategy"] == "STRICT_PACK"
    assert row["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 1.0}} and row["name"] == "pair"
    assert mpray.available_resources()["CPU"] == 1.0
    refs = [where.options(scheduling_strategy=PGS(pg, i)).remote() for i in (0, 1, -1)]
    assert all(isinstance(p, int) for p in mpray.get(refs, timeout=30))
    a = Holder.options(scheduling_strategy=PGS(pg, 0)).remote()
    assert isinstance(mpray.get(a.pid.remote(), timeout=30), int)
    assert get_placement_group("pair") == pg
    with pytest.raises(ValueError, match="already exists"):
        placement_group([{"CPU": 1}], name="pair")
    remove_placement_group(pg)
    assert placement_group_table(pg)["state"] == "REMOVED"
    with pytest.raises(exc.ActorDiedError, match="placement group"):
        mpray.get(a.pid.remote(), timeout=30)
    with pytest.raises(exc.TaskPlacementGroupRemoved):
        mpray.get(where.options(scheduling_strategy=PGS(pg, 0)).remote(), timeout=30)
    with pytest.raises(ValueError, match="look up"):
        get_placement_group("pair")
    deadline = time.monotonic() + 10
    while mpray.available_resources().get("CPU") != 3.0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mpray.available_resources()["CPU"] == 3.0


@mpray.remote
def sleeper(s):
    time.sleep(s)
    return s


def test_removal_fails_a_running_task_with_the_groups_error(ray_start):
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(30)
    ref = sleeper.options(scheduling_strategy=PGS(pg, 0), max_retries=3).remote(30)
    time.sleep(0.5)
    remove_placement_group(pg)
    with pytest.raises(exc.TaskPlacementGroupRemoved):
        mpray.get(ref, timeout=30)


INFEASIBLE = """
import mpray
from mpray.util import placement_group, placement_group_table
mpray.init(num_cpus=2)
pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
print(pg.wait(1), placement_group_table(pg)["state"])
mpray.shutdown()
"""


def test_an_infeasible_group_stays_pending_and_warns(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
         os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", INFEASIBLE], capture_output=True, text=True,
                       timeout=60, env=env, cwd=str(tmp_path))
    assert r.returncode == 0 and r.stdout.split() == ["False", "PENDING"], r.stderr
    assert "cannot be placed" in r.stderr and "STRICT_SPREAD" in r.stderr, r.stderr


@pytest.mark.parametrize("bad, match", [
    (dict(bundles=[]), "non-empty"),
    (dict(bundles=[{}]), "non-empty"),
    (dict(bundles=[{"CPU": 0}]), "only 0"),
    (dict(bundles=[{"CPU": -1}]), ">= 0"),
    (dict(bundles=[{"GPU": 0.5}]), "whole GPUs"),
    (dict(bundles=[{"CPU": 1}], strategy="PACKED"), "strategy"),
    (dict(bundles=[{"CPU": 1}], lifetime="forever"), "lifetime"),
])
def test_bad_groups_are_refused_with_the_reason(ray_module, bad, match):
    with pytest.raises(ValueError, match=match):
        placement_group(**bad)


def test_a_bundle_index_out_of_range_is_refused(ray_module):
    pg = PlacementGroup(PlacementGroupID(PG), [{"CPU": 1.0}])
    with pytest.raises(ValueError, match="out of range"):
        where.options(scheduling_strategy=PGS(pg, 1))


@mpray.remote
def current_group_and_child():
    from mpray.util import get_current_placement_group

    child = where_group.remote()
    return get_current_placement_group(), mpray.get(child)


@mpray.remote
def where_group():
    from mpray.util import get_current_placement_group

    return get_current_placement_group()


def test_child_tasks_run_in_the_group_when_captured(ray_module):
    from mpray.util import get_current_placement_group

    pg = placement_group([{"CPU": 1}])  # (the parent lends it to its child while it waits)
    assert pg.wait(30) and get_current_placement_group() is None  # (the driver: none)
    captured = PGS(pg, 0, placement_group_capture_child_tasks=True)
    mine, childs = mpray.get(current_group_and_child.options(
        scheduling_strategy=captured).remote(), timeout=30)
    assert mine == pg and childs == pg  # the child went into the group too
    mine, childs = mpray.get(current_group_and_child.options(
        scheduling_strategy=PGS(pg, 0)).remote(), timeout=30)
    assert mine == pg and childs is None  # (not captured: the child runs outside)
    remove_placement_group(pg)

"""What must hold in the node's machine between any two events (``Scheduler``).

The pure tests call ``check_scheduler`` after every event (in the spirit of dask
distributed's ``validate_state()``); it is never called on the hot path.  Each check
names what broke, so a failing test points at the bookkeeping that went wrong:

* the resource books add up: what is not available is held by a worker (a worker that
  waits in ``get`` lends its CPU) or reserved by a placement group's bundle, and every
  GPU's share is free or held;
* every task is in exactly one place: a ready queue (once) or its placement group's
  waiting list, its actor's caller queue, a worker's queue, another rank (``AGENT``),
  or waiting for its arguments;
* placement groups: rank 0's capacity left per rank is its totals less the placed
  groups' bundles;
* workers: the idle list holds exactly the idle workers, a worker's running task is the
  head of its queue;
* objects: their holder counts match what refers to them (``task_refs`` from live tasks
  and actors, ``contained_in`` from live objects), and no freed object is kept.
"""

from __future__ import annotations

import collections

from .actor_table import ACTOR_MARK
from .cluster import AGENT
from .checkpoints import CKPT
from .spill import SPILLER
from .worker_table import lends
from ..states import A, G, O, T, W

EPS = 1e-6


def check_scheduler(s) -> None:
    _check_resources(s)
    _check_groups(s)
    _check_tasks(s)
    _check_workers(s)
    _check_objects(s)
    _check_spill(s)
    _check_checkpoints(s)


def _check_checkpoints(s) -> None:
    """An actor's checkpoint and its logged calls' arguments are pinned once each
    (node/checkpoints.py), and only checkpointed actors have them."""
    want: collections.Counter = collections.Counter()
    for aid, a in s.actors.items():
        if a.log or a.checkpoint is not None:
            assert aid in s.ckpt_actors, f"actor {aid} has a log without the option"
        if a.checkpoint is not None:
            want[a.checkpoint[0]] += 1
        for _n, spec in a.log:
            for _pos, oid in spec.deps:
                want[oid] += 1
    for oid, o in s.objs.items():
        assert o.pins.get(CKPT, 0) == want[oid], (
            f"object {oid}: {o.pins.get(CKPT, 0)} checkpoint pins, {want[oid]} wanted")


def _check_spill(s) -> None:
    """Spilling's books (node/spill.py): every value in the arena is in its LRU table,
    bytes on their way out add up, every value on disk has its copy, files count the
    values on them, and every range of the arena is a value's or a reservation's."""
    in_arena, evicting, restoring = 0, 0, 0
    copies: collections.Counter = collections.Counter()
    ranges = set()
    for oid, o in s.objs.items():
        st = o.state
        if st is O.IN_ARENA or st is O.EVICTING:
            assert s.in_arena.get(oid) is o, f"object {oid} ({st}) not in the LRU table"
            in_arena += 1
            ranges.add(o.payload[0])
            evicting += o.payload[3] if st is O.EVICTING else 0
        elif st is O.RESTORING:
            restoring += 1
            ranges.add(o.payload[0])
            assert o.pins.get(SPILLER), f"object {oid} restoring without its copy's pin"
        if st is O.SPILLED or st is O.RESTORING:
            assert oid in s.spill_copy, f"object {oid} ({st}) has no copy on disk"
    assert in_arena == len(s.in_arena), "the LRU table holds objects not in the arena"
    assert evicting == s.evicting_bytes, f"evicting {evicting} bytes, {s.evicting_bytes} counted"
    assert restoring == s.restoring, f"{restoring} restoring, {s.restoring} counted"
    for oid, (n, _pos, _sum) in s.spill_copy.items():
        assert oid in s.objs, f"a copy of freed object {oid} kept"
        copies[n] += 1
    for n, (_path, live) in s.spill_files.items():
        assert live == copies[n], f"spill file {n}: {live} values counted, {copies[n]} on it"
    for oid in s.evict_acks:
        assert s.objs[oid].state is O.EVICTING, f"answers awaited for {oid}, not evicting"
    per_task: collections.Counter = collections.Counter()
    for oid, tid in s.lineage_of.items():
        assert oid in s.objs, f"lineage kept for freed object {oid}"
        per_task[tid] += 1
    for tid, e in s.lineage.items():
        assert e[2] == per_task[tid] > 0, f"lineage of {tid}: {e[2]} results, {per_task[tid]}"
    assert s.lineage_bytes == sum(e[3] for e in s.lineage.values()), "lineage bytes"
    for offs in s.reserved.values():
        ranges.update(offs)
    leaked = set(s.alloc.live_ranges()) - ranges  # ((pure tests may make up places)
    assert not leaked, f"arena ranges {sorted(leaked)} held by no value or reservation"


def _check_resources(s) -> None:
    used: dict[str, float] = collections.defaultdict(float)
    for w in s.workers.values():
        if w.state is W.IDLE or w.state is W.STARTING:
            assert not w.held and not w.gpus, f"idle worker {w.key} holds {w.held}"
            continue
        for name, amount in w.held:
            if (name, amount) == ACTOR_MARK or (w.state is W.BLOCKED and lends(name)):
                continue
            used[name] += amount
    for bundles in s.pg_local.values():  # what placement groups reserved here
        for _i, b in bundles:
            for name, amount in b.items():
                used[name] += amount
    for name, total in s.total.items():
        free = s.avail.get(name, 0.0)
        assert abs(total - free - used.get(name, 0.0)) < EPS, (
            f"resource {name}: total {total}, available {free}, held or reserved "
            f"{used.get(name, 0.0)}")
    for g, (key, _i) in s.gpu_owner.items():
        assert g in s.gpu_free and key in s.pg_local, f"GPU {g} reserved by gone group {key}"
    gpu_held: dict[str, float] = collections.defaultdict(float)
    for w in s.workers.values():
        for g, amount in w.gpus:
            gpu_held[g] += amount
    for g, free in s.gpu_free.items():
        assert abs(free + gpu_held[g] - 1.0) < EPS, f"GPU {g}: free {free}, held {gpu_held[g]}"


def _check_groups(s) -> None:
    """Rank 0's capacity left per rank is its totals less the placed groups' bundles."""
    if s._pg_free is None:
        return
    want = s._pg_totals()
    for g in s.pg_table.values():
        if g.ranks is not None and g.state is not G.REMOVED:
            for b, r in zip(g.bundles, g.ranks):
                for name, amount in b.items():
                    want[r][name] = want[r].get(name, 0.0) - amount
    for r, (have, need) in enumerate(zip(s._pg_free, want)):
        for name in set(have) | set(need):
            assert abs(have.get(name, 0.0) - need.get(name, 0.0)) < EPS, (
                f"rank {r}'s capacity for groups: {name} {have.get(name)} != {need.get(name)}")
    for key in s.pg_pending:
        g = s.pg_table.get(key)
        assert g is None or g.state in (G.PENDING, G.REMOVED), f"group {key} listed pending"


def _check_tasks(s) -> None:
    in_ready: collections.Counter = collections.Counter()
    for key, q in s.ready.items():
        for tid in q:
            t = s.tasks.get(tid)
            if t is not None and t.state is T.READY:
                assert t.resources == key, f"task {tid} queued under {key}"
                in_ready[tid] += 1
    in_actor: collections.Counter = collections.Counter()
    for a in s.actors.values():
        for caller, q in a.queue.items():
            for tid in q:
                t = s.tasks.get(tid)
                if t is not None and t.state in (T.READY, T.PENDING_ARGS):
                    assert t.actor == a.key and t.owner == caller, (tid, a.key, caller)
                    in_actor[tid] += 1
    for tids in s.pg_waiting.values():  # waiting for their placement group
        for tid in tids:
            t = s.tasks.get(tid)
            if t is not None and t.state is T.READY:
                in_ready[tid] += 1
    on_worker: collections.Counter = collections.Counter()
    for w in s.workers.values():
        for tid in w.queue:
            on_worker[tid] += 1
    for tid, t in s.tasks.items():
        assert t.key == tid
        assert t.state not in (T.FINISHED, T.FAILED, T.CANCELLED), f"ended task {tid} kept"
        places = in_ready[tid] + in_actor[tid] + on_worker[tid]
        if t.state is T.READY:
            where = in_actor[tid] if t.actor is not None else in_ready[tid]
            assert where == 1 and places == 1, f"READY task {tid} in {places} places"
        elif t.state is T.DISPATCHED:
            if t.worker == AGENT:
                assert places == 0, f"forwarded task {tid} also queued here"
            else:
                w = s.workers.get(t.worker)
                assert w is not None and tid in w.queue, f"task {tid} lost its worker"
                assert places == 1, f"DISPATCHED task {tid} in {places} places"
        elif t.state is T.PENDING_ARGS:
            assert t.missing > 0 or t.creating, f"task {tid} waits for no argument"
            assert in_ready[tid] == 0 and on_worker[tid] == 0, f"task {tid} queued early"


def _check_workers(s) -> None:
    assert len(set(s.idle)) == len(s.idle), "a worker is idle twice"
    for wid in s.idle:
        w = s.workers.get(wid)
        assert w is not None and w.state is W.IDLE, f"idle list holds worker {wid}"
    for w in s.workers.values():
        assert w.state is not W.DEAD, f"dead worker {w.key} kept"
        if w.state is W.IDLE:
            assert w.key in s.idle or w.key in s.retiring, f"idle worker {w.key} unlisted"
            assert not w.queue and w.task is None, f"idle worker {w.key} has tasks"
        if w.queue and w.actor is None:
            assert w.task == w.queue[0], f"worker {w.key} runs {w.task}, not its head"


def _spec_refs(refs: collections.Counter, spec) -> None:
    """Count the objects a task's spec holds (its arguments, refs inside them)."""
    refs.update(oid for _pos, oid in spec.deps)
    refs.update(spec.contained)


def _check_objects(s) -> None:
    refs: collections.Counter = collections.Counter()
    for t in s.tasks.values():
        if t.creating:
            continue  # (its actor keeps the constructor's arguments, counted below)
        _spec_refs(refs, t.spec)
        if t.actor is not None:
            refs[t.actor + 1] += 1  # a pending call holds its actor's anchor
    for a in s.actors.values():
        if a.state is not A.DEAD:
            _spec_refs(refs, a.spec)
    contained: collections.Counter = collections.Counter()
    for o in s.objs.values():
        for c in o.contains:
            contained[c] += 1
    for oid, o in s.objs.items():
        assert o.key == oid and o.state is not O.FREED, f"freed object {oid} kept"
        assert o.task_refs == refs[oid], (
            f"object {oid}: task_refs {o.task_refs}, live tasks refer {refs[oid]} times")
        assert o.contained_in == contained[oid], (
            f"object {oid}: contained_in {o.contained_in}, held by {contained[oid]}")
        assert not any(n <= 0 for n in o.pins.values()), f"object {oid}: pins {o.pins}"

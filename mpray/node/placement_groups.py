"""Placement groups (pure): rank 0's registry, the bundles each node reserved, and the
tasks bound to a group.  A mixin of ``scheduler.Scheduler``; on one host the node is
rank 0 and every message below is a method call.  Data flow::

    PgOp(create) ─▶ rank 0: registry entry PENDING ─▶ place_bundles over the ranks'
                    capacity (totals less other groups) ─▶ PREPARED
                 ─▶ PgReserve(its bundles) to each rank chosen
    rank r:      reserve once its free resources allow: avail -= the bundles, and the
                 bundles' own names (R_group_<i>_<pg>, R_group_<pg>, bundle_group_…)
                 appear in total/avail ─▶ PgReserved ─▶ rank 0
    rank 0:      every rank reserved ─▶ CREATED ─▶ PgPlaced(bundle ranks) to every rank
    a task bound to a group (its shape asks for those names, placement.pg_resources)
                 ─▶ parked in pg_waiting until its node knows where the group is
                 ─▶ queued here (its bundle is here) or forwarded to the bundle's rank
    PgOp(ready, oid) ─▶ this node seals oid (the group) when PgPlaced comes: no task
    PgOp(remove) ─▶ rank 0: REMOVED ─▶ PgGone to every rank: bundles given back, tasks
                 of the group fail (TaskPlacementGroupRemoved), its actors are killed

A group that fits no rank's totals waits with a warning, as in Ray; one that waits for
other groups is placed when one is removed; a reservation that waits for running tasks
is retried at every scheduling pass (queued tasks are not held back for it: a task that
waits for its children would then wait for ever, so, as in Ray, a busy node may keep a
group waiting).
"""

from __future__ import annotations

import collections

from .. import exceptions as exc
from .. import protocol as P
from ..placement import pg_of, place_bundles
from ..states import G, PG_TRANSITIONS, A, T, _move
from .cluster import AGENT
from ..store.serialization import ERROR, INLINE
from .worker_table import _amount

MARK_TOTAL = 1000.0  # each bundle's marker resource (a task asks 0.001 of it)
KEEP_REMOVED = 1000  # removed groups the table still shows (Ray keeps some too)
PARKED = object()  # _pg_target: the task waits until its group is placed (or removed)


class PlacementGroup:
    """Rank 0's entry for one group."""

    __slots__ = ("key", "bundles", "strategy", "name_key", "creator", "state", "ranks",
                 "unconfirmed", "history")

    def __init__(self, key: str, bundles: list, strategy: str, name_key, creator: int):
        self.key = key
        self.bundles = bundles
        self.strategy = strategy
        self.name_key = name_key  # (namespace, name) or None
        self.creator = creator  # the rank it was made on (PACK starts there)
        self.state = G.PENDING
        self.ranks: tuple | None = None  # rank of each bundle, once placed
        self.unconfirmed: set = set()
        self.history = [G.PENDING]


class PlacementGroups:
    """Groups of the Scheduler (uses total, avail, gpu_free, tasks, actors, workers,
    rank, ranks, agent, out, actions, _warned, _to_rank, _fail, _fail_unstarted,
    _enqueue, _take_gpus, kill_actor)."""

    def _init_pgs(self) -> None:
        self.pg_base = dict(self.total)  # this node's resources before any group
        self.pg_table: dict[str, PlacementGroup] = {}  # rank 0: every group
        self.pg_names: dict[tuple, str] = {}  # rank 0: (namespace, name) -> group
        self.pg_where: dict[str, tuple] = {}  # created groups: the rank of each bundle
        self.pg_gone: set[str] = set()
        self.pg_waiting: dict[str, list[int]] = {}  # tasks of groups not placed yet
        self.pg_local: dict[str, list] = {}  # [(index, bundle)] reserved here
        self.pg_names_here: dict[str, set] = {}  # the resource names they made here
        self.pg_reserving: list[tuple[str, list]] = []  # waiting for free resources
        self.gpu_owner: dict[str, tuple[str, int]] = {}  # GPU id -> (group, bundle)
        self.pg_ready: dict[str, list] = {}  # [(proc, oid, value)] sealed once created
        self._pg_free: list[dict] | None = None  # rank 0: capacity left per rank
        self.pg_pending: list[str] = []  # rank 0: groups that wait for room, in order
        self.pg_removed_keys: collections.deque = collections.deque()
        self._pg_rr = 0

    # ------------------------------------------------------------------ requests
    def _pg_nranks(self) -> int:
        return len(self.ranks) if self.agent is not None and len(self.ranks) > 1 else 1

    def pg_op(self, proc: int, req: int | None, op: tuple) -> None:
        """A process's request (PgOp): rank 0 answers it (another rank asks rank 0);
        ``req`` None: nothing to answer.  ``ready`` is this node's: it learns of every
        group's creation."""
        if op[0] == "ready":
            self._pg_ready(proc, *op[1:])
        elif self._pg_nranks() > 1 and self.rank != 0:
            self._to_rank(0, P.PgAsk(self.rank, proc, req, op))
        else:
            answer = self._pg_answer(self.rank, op)
            if req is not None:
                self._send(proc, P.Reply(req, answer))

    def pg_ask(self, rank: int, proc: int, req: int | None, op: tuple) -> None:
        answer = self._pg_answer(rank, op)
        if req is not None:
            self._to_rank(rank, P.PgAnswer(proc, req, answer))

    def pg_answered(self, proc: int, req: int, data) -> None:
        self._send(proc, P.Reply(req, data))

    def _pg_answer(self, rank: int, op: tuple):
        kind = op[0]
        if kind == "create":
            return self._pg_create(rank, *op[1:])
        if kind == "remove":
            return self._pg_remove(op[1])
        if kind == "table":
            return self._pg_table(op[1])
        if kind == "named":
            g = self.pg_table.get(self.pg_names.get((op[1], op[2])))
            return None if g is None else (g.key, g.bundles, g.strategy, op[2])
        return ("error", f"unknown placement group request {kind!r}")

    def _pg_to(self, rank: int, msg: P.Record) -> None:
        """A message between the registry and a node: a call when it is this node."""
        if rank != self.rank:
            self._to_rank(rank, msg)
        elif msg.OP == P.PgReserve.OP:
            self.pg_reserve(msg.pg, msg.bundles)
        elif msg.OP == P.PgReserved.OP:
            self.pg_reserved(msg.pg, msg.rank)
        elif msg.OP == P.PgPlaced.OP:
            self.pg_placed(msg.pg, msg.ranks)
        else:
            self.pg_removed(msg.pg)

    # ------------------------------------------------------------------ rank 0
    def _pg_create(self, rank: int, key: str, bundles: list, strategy: str, name: str,
                   namespace: str):
        name_key = (namespace, name) if name else None
        if name_key in self.pg_names:
            return ("error", f"Failed to create placement group '{name}' because name "
                             f"already exists in namespace {namespace or '(default)'}")
        g = self.pg_table[key] = PlacementGroup(key, bundles, strategy, name_key, rank)
        if name_key is not None:
            self.pg_names[name_key] = key
        self._pg_place(g)
        return ("ok",)

    def _pg_totals(self) -> list[dict]:
        """Per rank: its resources (the capacity groups are placed in)."""
        if self._pg_nranks() > 1:
            return [dict(res) for _nid, res in self.ranks]
        return [dict(self.pg_base)]

    def _pg_book(self, g: PlacementGroup, sign: float) -> None:
        """Count a placed group's bundles out of (-1) or back into (+1) the capacity
        left per rank (kept up to date: placing a group costs O(bundles × ranks))."""
        if self._pg_free is None:
            self._pg_free = self._pg_totals()
        for b, r in zip(g.bundles, g.ranks):
            cap = self._pg_free[r]
            for name, amount in b.items():
                cap[name] = cap.get(name, 0.0) + sign * amount

    def _pg_place(self, g: PlacementGroup) -> bool:
        if self._pg_free is None:
            self._pg_free = self._pg_totals()
        ranks = place_bundles(g.bundles, g.strategy, self._pg_free, g.creator)
        if ranks is None:
            totals = self._pg_totals()
            if (place_bundles(g.bundles, g.strategy, totals, g.creator) is None
                    and ("pg", g.key) not in self._warned):
                self._warned.add(("pg", g.key))
                self.actions.append(P.Warn(
                    f"mpray: placement group {g.name_key[1] if g.name_key else g.key} "
                    f"({g.strategy} of {g.bundles}) cannot be placed: the nodes have "
                    f"{totals}; it stays pending (infeasible)"))
            self.pg_pending.append(g.key)
            return False
        _move(g, G.PREPARED, PG_TRANSITIONS, "placement group")
        g.ranks = tuple(ranks)
        self._pg_book(g, -1.0)
        g.unconfirmed = set(ranks)
        per_rank: dict[int, list] = {}
        for i, r in enumerate(ranks):
            per_rank.setdefault(r, []).append((i, g.bundles[i]))
        for r, bundles in per_rank.items():
            self._pg_to(r, P.PgReserve(g.key, bundles))
        return True

    def pg_reserved(self, key: str, rank: int) -> None:
        g = self.pg_table.get(key)
        if g is None or g.state is not G.PREPARED:
            return  # (removed meanwhile: PgGone frees what that rank reserved)
        g.unconfirmed.discard(rank)
        if not g.unconfirmed:
            _move(g, G.CREATED, PG_TRANSITIONS, "placement group")
            for r in range(self._pg_nranks()):
                self._pg_to(r, P.PgPlaced(key, g.ranks))

    def _pg_remove(self, key: str):
        g = self.pg_table.get(key)
        if g is None or g.state is G.REMOVED:
            return ("ok",)
        placed = g.state is not G.PENDING
        _move(g, G.REMOVED, PG_TRANSITIONS, "placement group")
        if g.name_key is not None:
            self.pg_names.pop(g.name_key, None)
        for r in range(self._pg_nranks()):
            self._pg_to(r, P.PgGone(key))
        self.pg_removed_keys.append(key)  # (the table shows the last ones removed)
        if len(self.pg_removed_keys) > KEEP_REMOVED:
            self.pg_table.pop(self.pg_removed_keys.popleft(), None)
        if placed:  # room for the groups that wait, in order
            self._pg_book(g, +1.0)
            waiting, self.pg_pending = self.pg_pending, []
            for k in waiting:
                other = self.pg_table.get(k)
                if other is not None and other.state is G.PENDING:
                    self._pg_place(other)
        return ("ok",)

    def _pg_table(self, key: str | None) -> dict:
        nodes = ([nid for nid, _res in self.ranks] if self._pg_nranks() > 1
                 else [self.node_id])
        out = {}
        for g in self.pg_table.values():
            if key is not None and g.key != key:
                continue
            out[g.key] = {
                "placement_group_id": g.key,
                "name": g.name_key[1] if g.name_key else "",
                "bundles": dict(enumerate(g.bundles)),
                "bundles_to_node_id": ({i: nodes[r] for i, r in enumerate(g.ranks)}
                                       if g.ranks is not None else {}),
                "strategy": g.strategy,
                "state": g.state.value,
            }
        return out

    # ------------------------------------------------------------------ every node
    def pg_reserve(self, key: str, bundles: list) -> None:
        if key not in self.pg_gone:
            self.pg_reserving.append((key, bundles))
            self._pg_try_reserve()

    def _pg_try_reserve(self) -> None:
        """Reserve the waiting groups' bundles, in order, while free resources allow."""
        while self.pg_reserving:
            key, bundles = self.pg_reserving[0]
            need: dict[str, float] = {}
            for _i, b in bundles:
                for name, amount in b.items():
                    need[name] = need.get(name, 0.0) + amount
            if any(self.avail.get(n, 0.0) < a - 1e-9 for n, a in need.items() if a):
                return
            gpus = [g for g, free in self.gpu_free.items()
                    if free >= 1 - 1e-9 and g not in self.gpu_owner]
            if self.gpu_free and len(gpus) < need.get("GPU", 0):
                return
            self.pg_reserving.pop(0)
            self._pg_hold(key, bundles, gpus)
            self._pg_to(0, P.PgReserved(key, self.rank))

    def _pg_hold(self, key: str, bundles: list, gpus: list) -> None:
        names = set()
        for i, b in bundles:
            for name, amount in b.items():
                self.avail[name] -= amount
            for name, amount in [*b.items(), ("bundle", MARK_TOTAL)]:
                if amount:
                    for res in (f"{name}_group_{i}_{key}", f"{name}_group_{key}"):
                        self.total[res] = self.total.get(res, 0.0) + amount
                        self.avail[res] = self.avail.get(res, 0.0) + amount
                        names.add(res)
            for _ in range(int(b.get("GPU", 0)) if self.gpu_free else 0):
                self.gpu_owner[gpus.pop(0)] = (key, i)
        self.pg_local[key] = bundles
        self.pg_names_here[key] = names

    def _pg_unhold(self, key: str, bundles: list) -> None:
        for _i, b in bundles:
            for name, amount in b.items():
                self.avail[name] += amount
        suffix = f"_{key}"
        for res in self.pg_names_here.pop(key):
            del self.total[res]
            self.avail.pop(res, None)
        for w in self.workers.values():  # (being killed: they give back nothing more)
            if any(n.endswith(suffix) for n, _a in w.held):
                w.held = tuple(r for r in w.held if not r[0].endswith(suffix))
        for g in [g for g, (k, _i) in self.gpu_owner.items() if k == key]:
            del self.gpu_owner[g]

    def pg_placed(self, key: str, ranks: tuple) -> None:
        if key in self.pg_gone:
            return
        self.pg_where[key] = tuple(ranks)
        for proc, oid, value in self.pg_ready.pop(key, ()):
            self.seal(proc, oid, INLINE, value)
        for tid in self.pg_waiting.pop(key, ()):
            t = self.tasks.get(tid)
            if t is not None and t.state is T.READY:
                self._enqueue(t)

    def pg_removed(self, key: str) -> None:
        """PgGone: the group's bundles here are given back; what runs in them ends."""
        self.pg_gone.add(key)
        self.pg_where.pop(key, None)
        self.pg_reserving = [x for x in self.pg_reserving if x[0] != key]
        err = self._pg_removed_error(key)
        self.pg_waiting.pop(key, None)  # (those tasks fail below)
        for proc, oid, _value in self.pg_ready.pop(key, ()):
            self.seal(proc, oid, ERROR, err)
        for a in list(self.actors.values()):
            if (a.remote_rank is None and a.state is not A.DEAD
                    and pg_of(a.spec.strategy) == key):
                self.kill_actor(a.key, True, f"its placement group {key} was removed")
        for t in list(self.tasks.values()):
            if t.creating or t.actor is not None or pg_of(t.spec.strategy) != key:
                continue
            if t.state in (T.PENDING_ARGS, T.READY):
                self._fail_unstarted(t, err)
            elif t.state is T.DISPATCHED and t.worker in self.workers and not t.cancel:
                t.cancel = err  # (worker_died fails it with this error)
                self.actions.append(P.Kill(t.worker))
        bundles = self.pg_local.pop(key, None)
        if bundles is not None:
            self._pg_unhold(key, bundles)

    def _pg_ready(self, proc: int, key: str, oid: int, value: bytes) -> None:
        """``pg.ready()``: an object ``proc`` owns, sealed with ``value`` (the group,
        pickled) once this node learns the group exists (an error if it is removed)."""
        self.promise(proc, oid)
        if key in self.pg_where:
            self.seal(proc, oid, INLINE, value)
        elif key in self.pg_gone:
            self.seal(proc, oid, ERROR, self._pg_removed_error(key))
        else:
            self.pg_ready.setdefault(key, []).append((proc, oid, value))

    def _pg_removed_error(self, key: str) -> bytes:
        return self._error_payload(exc.TaskPlacementGroupRemoved(
            f"the placement group {key} that the task was scheduled in was removed"))

    # ------------------------------------------------------------------ tasks
    def _pg_target(self, t):
        """Where a task bound to a group goes: PARKED (the group is not placed yet; or
        it was removed and the task failed), None (its bundle is here) or a rank."""
        strategy = t.spec.strategy
        key = strategy.placement_group.id.hex()
        ranks = self.pg_where.get(key)
        if ranks is None:
            if key in self.pg_gone:
                self._fail(t, self._pg_removed_error(key))
            else:
                self.pg_waiting.setdefault(key, []).append(t.key)
            return PARKED
        i = strategy.placement_group_bundle_index
        if self._pg_nranks() == 1 or t.owner == AGENT:
            return None  # (a task forwarded here runs here)
        if i >= 0:
            target = None if ranks[i] == self.rank else ranks[i]
        elif self.rank in ranks:
            target = None
        else:
            self._pg_rr += 1  # any bundle, none here: the group's ranks in turn
            target = ranks[self._pg_rr % len(ranks)]
        return target

    def _pg_take_gpus(self, t) -> tuple:
        """GPU ids for a task with a strategy: from the devices its bundle reserved when
        it runs in a group, else as any task's."""
        strategy = t.spec.strategy
        key = pg_of(strategy)
        if key is None:
            return self._take_gpus(_amount(t.resources, "GPU"))
        amount = next((a for n, a in t.resources if n.startswith("GPU_group_")), 0.0)
        i = strategy.placement_group_bundle_index
        pool = [g for g, (k, b) in self.gpu_owner.items() if k == key and (i < 0 or b == i)]
        return self._take_gpus(amount, pool)

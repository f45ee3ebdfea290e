"""The node's object directory: what each object is, where its value is, who holds it.

A mixin of ``scheduler.Scheduler`` (pure, no I/O).  Data flow::

    put / put_for / promise / seal  ─▶  Obj(state, kind, payload)  ─▶  OBJ to owner and
    refs / pin / unpin / subscribe  ─▶  holders                        subscribers; ready
    allocate / free_range           ─▶  arena ranges (Allocator)       dependent tasks
                                        (no room: node/spill.py evicts the oldest values)

Objects live while any process holds an ObjectRef (``procs``), any pending task needs
them (``task_refs``), another live object contains a ref to them (``contained_in``) or a
process has a zero-copy view mapped (``pins``).  Arena space returns to the allocator
when the last of these goes away.
"""

from __future__ import annotations

from typing import Any

from .. import exceptions as exc
from .. import protocol as P
from ..control.recorder import OBJ, OBJ_FREE
from ..store.allocator import ArenaFull
from ..store.serialization import ARENA, ERROR, INLINE
from ..states import O, OBJ_TRANSITIONS, TASK_TRANSITIONS, T, _move

_EMPTY: frozenset = frozenset()
_obj, _OBJ = P.Obj.from_items, P.Obj.OP


class Obj:
    """One object's directory entry.  Rarely used containers start as shared empties and
    are created on first write (most objects never get pins, subscribers or waiters)."""

    __slots__ = ("key", "owner", "state", "kind", "payload", "procs", "task_refs",
                 "contained_in", "contains", "pins", "subscribers", "waiting_tasks", "history",
                 "remote", "lent")

    def __init__(self, key: int, owner: int) -> None:
        self.key = key
        self.owner = owner
        self.state = O.PENDING
        self.kind = INLINE
        self.payload: Any = None
        self.procs: set = set()
        self.task_refs = 0
        self.contained_in = 0
        self.contains: tuple = ()
        self.pins: dict = {}
        self.subscribers: set = _EMPTY  # type: ignore[assignment]
        self.waiting_tasks: list = []
        self.history = [O.PENDING]
        self.remote = False  # a copy (or placeholder) of another rank's object
        self.lent: int | None = None  # the rank that lent us a hold on it (back when freed)


class ObjectDirectory:
    """Object bookkeeping of the Scheduler (uses its objs, alloc, reserved, tasks)."""

    def _obj(self, oid: int, owner: int) -> Obj:
        o = self.objs.get(oid)
        if o is None:
            o = self.objs[oid] = Obj(oid, owner)
        return o

    def _maybe_free(self, o: Obj) -> None:
        if o.state is O.FREED:
            return  # already released further down this same event
        if o.procs or o.task_refs or o.contained_in or o.pins:
            return
        if o.state is O.PENDING and not o.remote:  # (its value is still to come here)
            return
        if o.state is O.IN_ARENA:
            self.alloc.free(o.payload[0])
            del self.in_arena[o.key]
            if self.spill_copy:
                self._drop_copy(o.key)
            if self.lineage_of:
                self._lineage_gone(o.key)
            self.records.append((OBJ_FREE, o.key, self.now))  # (the control store's)
        elif o.state is not O.INLINE and o.state is not O.PENDING:
            self._free_spilled(o)  # (EVICTING, SPILLED: node/spill.py)
            self.records.append((OBJ_FREE, o.key, self.now))
        _move(o, O.FREED, OBJ_TRANSITIONS, "object")
        del self.objs[o.key]
        if o.lent is not None:
            self._unlend(o.key, o.lent)
        if o.key in self.anchors:  # the last handle to an actor is gone
            self._anchor_freed(o.key)
        for c in o.contains:
            co = self.objs.get(c)
            if co is not None:
                co.contained_in -= 1
                self._maybe_free(co)

    def seal(self, proc: int, oid: int, kind: int, payload, contained=(),
             owner_has_it: bool = False) -> None:
        """An object's value became available (put, or a task result).

        ``owner_has_it``: the worker already handed the value to its owner directly.
        """
        o = self._obj(oid, proc)
        if o.state is not O.PENDING:
            return  # a retried task re-reporting, or a duplicate: first value wins
        if kind == ARENA:
            self.reserved[proc].discard(payload[0])
            self.in_arena[oid] = o
            self.records.append((OBJ, oid, payload[3], o.owner, self.now))
        o.kind, o.payload = kind, payload
        o.contains = tuple(contained)
        for c in o.contains:
            # (another rank's object gets its placeholder now, so that the count this
            # containment adds is the one its release takes away)
            co = self.objs.get(c) or self._remote_placeholder(c, fetch=False)
            if co is not None:
                co.contained_in += 1
        _move(o, O.IN_ARENA if kind == ARENA else O.INLINE, OBJ_TRANSITIONS, "object")
        # (with what it holds refs to: the rank's agent ships a forwarded task's results
        # home, or serves a value to another rank, with a hold on each)
        msg = _obj((_OBJ, oid, kind, payload, o.contains))  # (P.Obj: once per value)
        if o.owner in o.procs and not owner_has_it:
            self._send(o.owner, msg)
        if o.subscribers:
            for p in o.subscribers:
                if p != o.owner or o.owner not in o.procs:
                    self._send(p, msg)
            o.subscribers = _EMPTY
        if o.waiting_tasks:
            self._wake_tasks(o, kind, payload)
        self._maybe_free(o)

    def _wake_tasks(self, o: Obj, kind: int, payload) -> None:
        """Tasks waiting for ``o``'s value: one fewer missing (failed by an error)."""
        waiting, o.waiting_tasks = o.waiting_tasks, []
        for tid in waiting:
            t = self.tasks.get(tid)
            if t is None or t.state is not T.PENDING_ARGS:
                continue
            t.missing -= 1
            if kind == ERROR:
                self._fail(t, payload)
            elif t.missing == 0:
                _move(t, T.READY, TASK_TRANSITIONS, "task")
                self._enqueue(t)

    def put_for(self, proc: int, owner: int, oid: int, kind: int, payload,
                contained=()) -> None:
        """A leased worker's result for ``owner`` (who holds the ref)."""
        o = self._obj(oid, owner)
        o.procs.add(owner)
        self.seal(proc, oid, kind, payload, contained)

    def stream_yield(self, proc: int, owner: int, tid: int, index: int, oid: int, kind: int,
                     payload, contained=()) -> None:
        """A streaming task's value: the owner hears of it (StreamItem) before the value
        comes (Obj), so that it holds a ref to it by then; it holds it from now on.  A
        task forwarded here (its owner: the agent) sends it home with a hold lent."""
        if owner == self.agent:
            self._stream_home(proc, tid, index, oid, kind, payload, contained)
            return
        self._send(owner, P.StreamItem(tid, index, oid))
        if oid is not None:
            self.put_for(proc, owner, oid, kind, payload, contained)

    def stream_ack(self, tid: int, consumed: int) -> None:
        """The owner took ``consumed`` values of a streaming task: to its worker."""
        t = self.tasks.get(tid)
        if t is not None and t.worker in self.workers:
            self._send(t.worker, P.Consumed(tid, consumed))
        elif t is not None and t.worker == self.agent:  # it runs on another rank
            self._stream_ack_there(tid, consumed)

    def promise(self, proc: int, oid: int) -> None:
        """``proc`` will seal ``oid`` later (a direct task's result); others may wait."""
        o = self._obj(oid, proc)
        o.procs.add(proc)

    def put(self, proc: int, oid: int, kind: int, payload, contained=()) -> None:
        o = self._obj(oid, proc)
        o.procs.add(proc)
        # (a Put comes from the value's owner, which has it: not echoed back to it)
        self.seal(proc, oid, kind, payload, contained, owner_has_it=o.owner == proc)

    def refs(self, proc: int, increfs, decrefs) -> None:
        for oid in increfs:
            o = self.objs.get(oid)
            if o is None:  # another rank's object: track who holds it here
                o = self._remote_placeholder(oid, fetch=False)
            if o is not None:
                o.procs.add(proc)
        for oid in decrefs:
            o = self.objs.get(oid)
            if o is not None:
                o.procs.discard(proc)
                self._maybe_free(o)

    def subscribe(self, proc: int, oids) -> None:
        for oid in oids:
            o = self.objs.get(oid)
            if o is None:
                o = self._remote_placeholder(oid)
            if o is None:
                err = exc.ObjectFreedError(
                    P.id_hex(oid), "the object was freed (no reference to it was left)"
                )
                self._send(proc, P.Obj(oid, ERROR, self._error_payload(err)))
            elif o.state is O.PENDING:
                if o.remote and oid not in self.fetching:  # a placeholder: fetch it now
                    self._remote_placeholder(oid)
                if o.subscribers is _EMPTY:
                    o.subscribers = set()
                o.subscribers.add(proc)
            elif o.kind != ARENA:
                self._send(proc, P.Obj(oid, o.kind, o.payload, o.contains))
            elif o.state is O.IN_ARENA:
                ia = self.in_arena  # (used now: the last to be spilled)
                del ia[oid]
                ia[oid] = o
                self._send(proc, P.Obj(oid, o.kind, o.payload, o.contains))
            else:
                self._subscribe_spilled(proc, o)

    def pin(self, proc: int, oids) -> None:
        for oid in oids:
            o = self.objs.get(oid)
            if o is not None:
                o.pins[proc] = o.pins.get(proc, 0) + 1

    def unpin(self, proc: int, oids) -> None:
        for oid in oids:
            o = self.objs.get(oid)
            if o is not None and proc in o.pins:
                o.pins[proc] -= 1
                if not o.pins[proc]:
                    del o.pins[proc]
                self._maybe_free(o)

    def allocate(self, proc: int, req: int, nbytes: int) -> None:
        try:
            off = self.alloc.alloc(nbytes)
        except ArenaFull as e:
            self._no_room(proc, req, nbytes, e)  # (node/spill.py: it may wait)
            return
        self.reserved[proc].add(off)
        self._send(proc, P.AllocOk(req, off, None))

    def free_range(self, proc: int, offset: int) -> None:
        if offset in self.reserved[proc]:
            self.reserved[proc].discard(offset)
            self.alloc.free(offset)

    # ------------------------------------------------------------------ tasks

"""Spilling: when the arena cannot fit a value, the least recently used values go to
files and come back when they are wanted (pure: a mixin of ``scheduler.Scheduler``;
the files are written and read by the loop's I/O thread, ``node/spill_io.py``).

Data flow::

    Alloc / restore: no room ─▶ space_waiters ─▶ _make_room: the oldest values no view
      pins and no task reads ─▶ EVICTING ─ SpillWrite (a batch: one file) ─▶ spill_written
      ─▶ Evict to each process holding a ref ─▶ Evicted (kept: stays; dropped) ─▶ all
      answered ─ one more pass over every ring ─▶ its range freed: SPILLED ─▶ waiters served
    Subscribe / a task about to run / another rank's fetch of a SPILLED value ─▶ room
      ─▶ RESTORING ─ SpillRead ─▶ spill_read ─▶ IN_ARENA (a new place): Obj to its
      subscribers, waiting tasks ready (its copy on disk stays: evicting it again is free)
    the last hold goes ─▶ FREED; a file none of whose values is left ─▶ SpillDelete

Why the answers: every process caches an ARENA value's place and maps it only when it
reads it (its Pin goes out at once then), so a range is reused only once every process
that could hold its place has said it does not read it.  A process's Pins precede its
answer on its ring; one more pass over all rings after the last answer also takes in a
Pin a leased worker sent on its own ring before its owner answered.  Values that
ready or running tasks read stay in memory (their places go out in Execs).
"""

from __future__ import annotations

import collections
import os

from .. import exceptions as exc
from .. import protocol as P
from ..control.recorder import OBJ_SPILL
from ..store.allocator import ArenaFull, align_up
from ..store.serialization import ARENA, ERROR
from ..states import O, OBJ_TRANSITIONS, T, TASK_TRANSITIONS, _move
from .objects import _EMPTY

SPILLER = -3  # the pseudo-process whose pin keeps a range while the I/O thread copies it
BATCH_MAX = 64 << 20  # a round evicts at least min(this, an eighth of the arena)


class Spiller:
    """Spilling of the Scheduler (uses its objs, alloc, reserved, workers, actions)."""

    def _init_spill(self, spill_dir: str | None) -> None:
        self.spill_dir = spill_dir  # None: a full arena fails the Alloc at once
        self.in_arena: dict[int, object] = {}  # IN_ARENA/EVICTING objects, oldest use first
        # (proc, req, nbytes) Allocs, (None, oid, nbytes) restores, waiting for room
        self.space_waiters: collections.deque = collections.deque()
        self.restore_wait: set[int] = set()
        self.restoring = 0  # values being read back
        self.spill_files: dict[int, list] = {}  # file number -> [path, values on it]
        self.spill_copy: dict[int, tuple] = {}  # oid -> (file number, offset in it)
        self.spill_writing: dict[int, list] = {}  # file number -> objects being written
        self.evict_acks: dict[int, set] = {}  # oid -> processes yet to answer Evict
        self.evict_acked: list[int] = []  # answered during this pass over the rings
        self.evict_confirm: list[int] = []  # answered during the last pass
        self.evicting_bytes = 0
        self._spill_ticks = -1  # (spill_tick's view of progress)
        self.spill_error: str | None = None  # the last write's failure (disk full…)
        self.spill_stats = {"spilled": 0, "spilled_bytes": 0, "evicted": 0, "restored": 0,
                            "restored_bytes": 0, "files": 0, "lost": 0, "remade": 0,
                            "lineage_read_back": 0}

    # ------------------------------------------------------------------ room
    def _no_room(self, proc: int, req: int, nbytes: int, err: ArenaFull) -> None:
        """An Alloc that does not fit: it waits while values can be spilled."""
        if self.spill_dir is None or align_up(max(nbytes, 1)) > self.alloc.size:
            self._send(proc, P.AllocOk(req, None, str(err)))
            return
        self.space_waiters.append((proc, req, nbytes))
        self._make_room()

    def _serve_space(self) -> None:
        """Give waiters their room, in order, while it lasts; then make more."""
        q = self.space_waiters
        while q:
            proc, key, nbytes = q[0]
            if proc is not None and proc != 0 and proc not in self.workers \
                    and proc != self.agent:
                q.popleft()  # (it died waiting)
                continue
            try:
                off = self.alloc.alloc(nbytes)
            except ArenaFull:
                self._make_room()
                return
            q.popleft()
            if proc is None:
                self.restore_wait.discard(key)
                self._restore_into(key, off)
            else:
                self.reserved[proc].add(off)
                self._send(proc, P.AllocOk(key, off, None))

    def _make_room(self, stalled: bool = False) -> None:
        """Start evicting the least recently used values until what is on its way out
        covers the first waiter (a round takes at least an eighth of the arena, so a
        burst of puts does not evict one value at a time).  ``stalled``: answers are
        overdue (a process busy in user code reads no messages): evict others too."""
        if not self.space_waiters:
            return
        need = align_up(max(self.space_waiters[0][2], 1))
        if self.evicting_bytes >= need and not stalled:
            return  # (enough is on its way out; its end serves the waiters)
        target = max(need, min(self.alloc.size // 8, BATCH_MAX))
        batch, got = [], 0 if stalled else self.evicting_bytes
        busy = self._busy_deps()
        agent = self.agent
        for o in self.in_arena.values():
            if (o.state is O.IN_ARENA and not o.pins and o.key not in busy
                    and (self.spill_error is None or o.key in self.spill_copy)
                    and (agent is None or agent not in o.procs)):
                batch.append(o)
                got += o.payload[3]
                if got >= target:
                    break
        if batch:
            self._evict(batch)
        elif not self._room_may_come(busy):
            self._fail_waiters()

    def _room_may_come(self, busy: set) -> bool:
        """Is anything leaving or coming, or will a holder let go of its own accord (a
        running task, another rank reading a result of a task that ran here)?"""
        if self.evicting_bytes or self.spill_writing or self.restoring:
            return True
        # (a process waiting for room keeps its reservations till then; not the agent,
        # whose imports land one after another whatever else it waits for)
        waiting = {w[0] for w in self.space_waiters if w[0] != self.agent}
        if any(offs for p, offs in self.reserved.items() if p not in waiting):
            return True
        agent = self.agent
        return any(oid in busy or (agent is not None and agent in o.procs)
                   for oid, o in self.in_arena.items())

    # (A value the rank's agent holds is a forwarded task's result whose place went home
    # in its RDone: the home rank reads it there until it lets go; it is never chosen.)

    def _busy_deps(self) -> set:
        """Values that running tasks read (their places went out in Execs): they stay.
        A task that waits (for a CPU, or for another argument) may see its values
        evicted; they are read back when it is about to go (``args_on_disk``)."""
        busy = set()
        dispatched = T.DISPATCHED
        for t in self.tasks.values():
            if t.spec.deps and t.state is dispatched:
                busy.update(oid for _pos, oid in t.spec.deps)
        return busy

    def args_on_disk(self, t) -> bool:
        """A ready task about to be dispatched: if some of its arguments are on disk, it
        waits for them (PENDING_ARGS) while they are read back."""
        n = 0
        objs = self.objs
        for _pos, oid in t.spec.deps:
            o = objs.get(oid)
            if o is not None and (o.state is O.SPILLED or o.state is O.RESTORING):
                o.waiting_tasks.append(t.key)
                self._want(o)
                n += 1
        if n:
            _move(t, T.PENDING_ARGS, TASK_TRANSITIONS, "task")
            t.missing = n
        return bool(n)

    def _fail_waiters(self) -> None:
        """Nothing more can leave the arena: the first waiter fails (and so on while the
        next does not fit either)."""
        q = self.space_waiters
        while q:
            proc, key, nbytes = q[0]
            try:
                off = self.alloc.alloc(nbytes)
            except ArenaFull as e:
                q.popleft()
                why = self._full_reason(nbytes, e)
                if proc is None:
                    self.restore_wait.discard(key)
                    self._no_room_to_restore(key, why)
                else:  # (_send drops it for a process that died waiting)
                    self._send(proc, P.AllocOk(key, None, why))
                continue
            self.alloc.free(off)
            self._serve_space()
            return

    def _full_reason(self, nbytes: int, err: ArenaFull) -> str:
        if self.spill_error is not None:
            return (f"{err}; spilling to {self.spill_dir} failed: {self.spill_error} "
                    f"({self.spill_stats['spilled_bytes']} bytes spilled so far)")
        return (f"{err}; no value left in it can be spilled (each is read by a running "
                "task or another rank, or mapped by a live view)")

    # ------------------------------------------------------------------ evicting
    def _evict(self, batch: list) -> None:
        writes = []
        for o in batch:
            _move(o, O.EVICTING, OBJ_TRANSITIONS, "object")
            self.evicting_bytes += o.payload[3]
            if o.key in self.spill_copy:
                continue  # (restored before: its copy on disk is still good)
            o.pins[SPILLER] = 1  # (the I/O thread reads its range)
            writes.append(o)
        if writes:
            n = self.spill_stats["files"] = self.spill_stats["files"] + 1
            path = os.path.join(self.spill_dir, f"{n}.spill")
            items, pos = [], 0
            for o in writes:
                items.append((o.key, o.payload[0], o.payload[3], pos))
                pos += o.payload[3]
            self.spill_files[n] = [path, 0]
            self.spill_writing[n] = writes
            self.actions.append(P.SpillWrite(n, path, items))
        self._ask_evict([o for o in batch if o.key in self.spill_copy])

    def spill_written(self, n: int, error: str | None, sums=None) -> None:
        """The I/O thread wrote batch ``n`` (or failed: ``error``); ``sums``: each
        value's checksum (checked when it is read back)."""
        writes = self.spill_writing[n]  # (popped below: until then the file stays)
        f = self.spill_files[n]
        self.spill_error = error
        ready = []
        pos = 0
        for i, o in enumerate(writes):
            if error is None:
                self.spill_copy[o.key] = (n, pos, sums[i] if sums else None)
                f[1] += 1
                self.spill_stats["spilled"] += 1
                self.spill_stats["spilled_bytes"] += o.payload[3]
            pos += o.payload[3]
            del o.pins[SPILLER]
            if o.state is O.EVICTING:
                if error is None:
                    ready.append(o)
                else:
                    self._keep(o)
            self._maybe_free(o)
        del self.spill_writing[n]
        if not f[1]:
            self._drop_file(n, space_back=error is None)
        self._ask_evict([o for o in ready if o.state is O.EVICTING])
        if self.space_waiters:  # (values freed meanwhile left room; a failure: the error)
            self._serve_space()

    def _ask_evict(self, objs: list) -> None:
        """Evict to every process that may hold these values' places."""
        asks: dict[int, list] = {}
        workers = self.workers
        for o in objs:
            procs = {p for p in o.procs if p == 0 or p in workers}
            if procs:
                self.evict_acks[o.key] = procs
                for p in procs:
                    asks.setdefault(p, []).append(o.key)
            else:
                self.evict_acked.append(o.key)
        for p, oids in asks.items():
            self._send(p, P.Evict(oids))

    def evicted(self, proc: int, kept, dropped) -> None:
        """A process's answer to Evict."""
        objs = self.objs
        for oid in kept:
            o = objs.get(oid)
            if o is not None and o.state is O.EVICTING:
                self._keep(o)
        for oid in dropped:
            self._answered(oid, proc)

    def _answered(self, oid: int, proc: int) -> None:
        acks = self.evict_acks.get(oid)
        if acks is not None:
            acks.discard(proc)
            if not acks:
                del self.evict_acks[oid]
                self.evict_acked.append(oid)

    def _keep(self, o) -> None:
        """An eviction is called off: the value stays in the arena (used just now)."""
        _move(o, O.IN_ARENA, OBJ_TRANSITIONS, "object")
        self.evicting_bytes -= o.payload[3]
        self.evict_acks.pop(o.key, None)
        self.in_arena.pop(o.key, None)
        self.in_arena[o.key] = o

    def spill_pending(self) -> bool:
        """Answers wait for one more pass over the rings."""
        return bool(self.evict_acked or self.evict_confirm)

    def end_pass(self) -> None:
        """The loop read every ring once more: evictions answered before that pass end."""
        confirm, self.evict_confirm = self.evict_confirm, self.evict_acked
        self.evict_acked = []
        objs = self.objs
        busy = self._busy_deps() if confirm else ()
        for oid in confirm:
            o = objs.get(oid)
            if o is None or o.state is not O.EVICTING or oid in self.evict_acks:
                continue
            if o.pins or oid in busy:  # a reader came meanwhile
                self._keep(o)
                continue
            self.alloc.free(o.payload[0])
            self.evicting_bytes -= o.payload[3]
            del self.in_arena[oid]
            _move(o, O.SPILLED, OBJ_TRANSITIONS, "object")
            self.spill_stats["evicted"] += 1
            self.records.append((OBJ_SPILL, oid, self.spill_files[self.spill_copy[oid][0]][0]))
        if self.space_waiters:
            self._serve_space()

    def spill_tick(self) -> None:
        """Each second: waiters that saw no eviction end since the last tick make more
        room around the processes that have not answered."""
        if self.space_waiters and self.evict_acks:
            if self._spill_ticks == self.spill_stats["evicted"]:
                self._make_room(stalled=True)
            self._spill_ticks = self.spill_stats["evicted"]
        if self.space_waiters and not self.evict_acks:
            self._serve_space()  # (tasks that read values may have ended)

    def _spill_proc_gone(self, proc: int) -> None:
        """A process died: it will not answer."""
        for oid in [k for k, acks in self.evict_acks.items() if proc in acks]:
            self._answered(oid, proc)

    # ------------------------------------------------------------------ restoring
    def _want(self, o) -> None:
        """Somebody needs a SPILLED value here: read it back."""
        if o.state is not O.SPILLED or o.key in self.restore_wait:
            return
        nbytes = o.payload[3]
        try:
            off = self.alloc.alloc(nbytes)
        except ArenaFull:
            self.restore_wait.add(o.key)
            self.space_waiters.append((None, o.key, nbytes))
            self._make_room()
            return
        self._restore_into(o.key, off)

    def _restore_into(self, oid: int, off: int) -> None:
        o = self.objs.get(oid)
        if o is None or o.state is not O.SPILLED:
            self.alloc.free(off)
            return
        o.payload = (off,) + tuple(o.payload[1:])
        o.pins[SPILLER] = 1
        _move(o, O.RESTORING, OBJ_TRANSITIONS, "object")
        self.restoring += 1
        n, pos, csum = self.spill_copy[oid]
        self.actions.append(P.SpillRead(oid, self.spill_files[n][0], pos, off, o.payload[3],
                                        csum))

    def spill_read(self, oid: int, error: str | None) -> None:
        """The I/O thread copied ``oid`` back (or could not: its value is lost)."""
        o = self.objs[oid]
        self.restoring -= 1
        if error is None:
            _move(o, O.IN_ARENA, OBJ_TRANSITIONS, "object")
            self.in_arena[oid] = o
            self.spill_stats["restored"] += 1
            self.spill_stats["restored_bytes"] += o.payload[3]
            self.records.append((OBJ_SPILL, oid, None))  # (the control store's)
            self._deliver(o, ARENA, o.payload)
        else:
            self._restore_failed(oid, error)
        del o.pins[SPILLER]
        self._maybe_free(o)

    def _restore_failed(self, oid: int, why: str) -> None:
        """Its spill file is gone or short: the value is lost (node/lineage.py makes it
        again, or makes its error the value)."""
        o = self.objs[oid]
        self.alloc.free(o.payload[0])
        where = self.spill_copy.get(oid)
        path = self.spill_files[where[0]][0] if where is not None else self.spill_dir
        self._drop_copy(oid)
        self._lost(o, f"was spilled to {path} and cannot be read back ({why})")

    def _no_room_to_restore(self, oid: int, why: str) -> None:
        """A spilled value cannot come back (the arena is full of values in use): its
        readers get the error; it stays on disk for a later try."""
        o = self.objs.get(oid)
        if o is not None and o.state is O.SPILLED:
            err = exc.ObjectStoreFullError(f"cannot read object {P.id_hex(oid)} back from "
                                           f"disk into the object store: {why}")
            self._deliver(o, ERROR, self._error_payload(err))

    def _deliver(self, o, kind: int, payload) -> None:
        """A value is here again: to its subscribers and waiting tasks (seal's way)."""
        if o.subscribers:
            msg = P.Obj(o.key, kind, payload, o.contains if kind == ARENA else ())
            for p in o.subscribers:
                self._send(p, msg)
            o.subscribers = _EMPTY
        self._wake_tasks(o, kind, payload)

    # ------------------------------------------------------------------ freeing
    def _subscribe_spilled(self, proc: int, o) -> None:
        """A Subscribe to a value that is leaving the arena or has left it."""
        if o.state is O.EVICTING:  # wanted now: it stays (its place goes out below)
            self._keep(o)
            self._send(proc, P.Obj(o.key, o.kind, o.payload, o.contains))
            return
        if o.subscribers is _EMPTY:
            o.subscribers = set()
        o.subscribers.add(proc)
        self._want(o)

    def _free_spilled(self, o) -> None:
        """The last hold on an EVICTING or SPILLED value went."""
        st = o.state
        if st is O.EVICTING:
            self.alloc.free(o.payload[0])
            self.evicting_bytes -= o.payload[3]
            self.evict_acks.pop(o.key, None)
            del self.in_arena[o.key]
        self._drop_copy(o.key)
        if self.lineage_of:
            self._lineage_gone(o.key)

    def _drop_copy(self, oid: int) -> None:
        where = self.spill_copy.pop(oid, None)
        if where is not None:
            f = self.spill_files[where[0]]
            f[1] -= 1
            if not f[1] and where[0] not in self.spill_writing:
                self._drop_file(where[0])

    def _drop_file(self, n: int, space_back: bool = True) -> None:
        path = self.spill_files.pop(n)[0]
        self.actions.append(P.SpillDelete(path))
        if space_back:
            self.spill_error = None  # (disk space comes back: writing may work again)

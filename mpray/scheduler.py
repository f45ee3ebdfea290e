"""The node's decisions as a pure, synchronous state machine (no I/O, no processes).

Data flow::

    events (method calls)                         instructions (read by the I/O loop)
    ─────────────────────                         ──────────────────────────────────
    submit / put / refs / subscribe / pin    ─▶   out[proc]  : messages to send to a process
    alloc / task_done / worker_blocked       ─▶   actions    : ("start_worker",),
    worker_started / worker_died / cancel    ─▶                ("kill", wid), ("interrupt", wid, tid),
    tick(now)                                ─▶                ("warn", text)

Processes are small ints: 0 is the driver, workers are 1, 2, … (never reused).  Tasks,
objects and workers move through the state tables below; an impossible transition
raises with the entity's recent history, so protocol bugs surface loudly in tests.

Objects live while any process holds an ObjectRef (``procs``), any pending task needs
them (``task_refs``), another live object contains a ref to them (``contained_in``) or a
process has a zero-copy view mapped (``pins``).  Arena space returns to the allocator
when the last of these goes away.
"""

from __future__ import annotations

import collections
import enum
import pickle
from dataclasses import dataclass, field
from typing import Any

from . import exceptions as exc
from . import protocol as P
from .allocator import Allocator, ArenaFull
from .serialization import ARENA, ERROR, INLINE


class TaskState(enum.Enum):
    PENDING_ARGS = "PENDING_ARGS"
    READY = "READY"
    DISPATCHED = "DISPATCHED"
    RETRYING = "RETRYING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class ObjState(enum.Enum):
    PENDING = "PENDING"
    INLINE = "INLINE"
    IN_ARENA = "IN_ARENA"
    FREED = "FREED"


class WorkerState(enum.Enum):
    STARTING = "STARTING"
    IDLE = "IDLE"
    BUSY = "BUSY"
    BLOCKED = "BLOCKED"
    DEAD = "DEAD"


T, O, W = TaskState, ObjState, WorkerState
TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    T.PENDING_ARGS: frozenset({T.READY, T.FAILED, T.CANCELLED}),
    T.READY: frozenset({T.DISPATCHED, T.FAILED, T.CANCELLED}),
    T.DISPATCHED: frozenset({T.FINISHED, T.FAILED, T.RETRYING, T.CANCELLED}),
    T.RETRYING: frozenset({T.READY, T.CANCELLED}),
    T.FINISHED: frozenset(),
    T.FAILED: frozenset(),
    T.CANCELLED: frozenset(),
}
OBJ_TRANSITIONS: dict[ObjState, frozenset[ObjState]] = {
    O.PENDING: frozenset({O.INLINE, O.IN_ARENA, O.FREED}),
    O.INLINE: frozenset({O.FREED}),
    O.IN_ARENA: frozenset({O.FREED}),
    O.FREED: frozenset(),
}
WORKER_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    W.STARTING: frozenset({W.IDLE, W.DEAD}),
    W.IDLE: frozenset({W.BUSY, W.DEAD}),
    W.BUSY: frozenset({W.IDLE, W.BLOCKED, W.DEAD}),
    W.BLOCKED: frozenset({W.BUSY, W.DEAD}),
    W.DEAD: frozenset(),
}


class TransitionError(RuntimeError):
    """An event asked for a transition the state table does not allow (a bug)."""


def _move(entity, new, table, what: str) -> None:
    old = entity.state
    if new not in table[old]:
        raise TransitionError(
            f"{what} {entity.key}: {old.value} -> {new.value} is not allowed; "
            f"history: {' -> '.join(s.value for s in entity.history[-8:])}"
        )
    entity.state = new
    entity.history.append(new)


@dataclass(eq=False)
class Task:
    key: int
    spec: tuple
    owner: int
    parent: int | None
    resources: dict[str, float]
    retries_left: int
    state: TaskState = T.PENDING_ARGS
    missing: int = 0
    worker: int | None = None
    cancel: bool = False
    history: list = field(default_factory=lambda: [T.PENDING_ARGS])

    @property
    def shape(self) -> tuple:
        return tuple(sorted(self.resources.items()))

    @property
    def returns(self) -> range:
        return range(self.key + 1, self.key + 1 + self.spec[P.S_NRET])


@dataclass(eq=False)
class Obj:
    key: int
    owner: int
    state: ObjState = O.PENDING
    kind: int = INLINE
    payload: Any = None
    procs: set = field(default_factory=set)
    task_refs: int = 0
    contained_in: int = 0
    contains: tuple = ()
    pins: dict = field(default_factory=dict)
    subscribers: set = field(default_factory=set)
    waiting_tasks: list = field(default_factory=list)
    history: list = field(default_factory=lambda: [O.PENDING])


@dataclass(eq=False)
class Worker:
    key: int
    state: WorkerState = W.STARTING
    task: int | None = None
    held: dict = field(default_factory=dict)
    gpus: tuple = ()
    fids: set = field(default_factory=set)
    idle_since: float = 0.0
    history: list = field(default_factory=lambda: [W.STARTING])


class Scheduler:
    """Local scheduler + object directory of one node."""

    def __init__(
        self,
        resources: dict[str, float],
        gpu_ids: list[str] | tuple = (),
        arena_size: int = 0,
        max_workers: int = 0,
        idle_keep: int | None = None,
        idle_timeout: float = 10.0,
    ) -> None:
        self.total = dict(resources)
        self.avail = dict(resources)
        self.gpu_free = {g: 1.0 for g in gpu_ids}
        self.alloc = Allocator(arena_size)
        ncpu = max(1, int(resources.get("CPU", 1)))
        self.max_workers = max_workers or max(2 * ncpu, 4)
        self.idle_keep = ncpu if idle_keep is None else idle_keep
        self.idle_timeout = idle_timeout
        self.tasks: dict[int, Task] = {}
        self.objs: dict[int, Obj] = {}
        self.workers: dict[int, Worker] = {}
        self.funcs: dict[int, bytes] = {}
        self.children: dict[int, set[int]] = collections.defaultdict(set)
        # ready tasks queued per resource shape: one fit check serves a whole queue, so a
        # long backlog of same-shaped tasks costs O(1) per scheduling pass, not O(backlog)
        self.ready: dict[tuple, collections.deque[int]] = {}
        self.idle: list[int] = []
        self.reserved: dict[int, set[int]] = collections.defaultdict(set)
        self.out: dict[int, list] = collections.defaultdict(list)
        self.actions: list[tuple] = []
        self.starting = 0
        self._warned: set = set()
        self.stats = {"submitted": 0, "finished": 0, "failed": 0, "retried": 0}

    # ------------------------------------------------------------------ helpers
    def _send(self, proc: int, msg: tuple) -> None:
        if proc in self.workers or proc == 0:
            self.out[proc].append(msg)

    def _error_payload(self, e: BaseException) -> bytes:
        return pickle.dumps(e, protocol=5)

    def _obj(self, oid: int, owner: int) -> Obj:
        o = self.objs.get(oid)
        if o is None:
            o = self.objs[oid] = Obj(oid, owner)
        return o

    def _maybe_free(self, o: Obj) -> None:
        if o.procs or o.task_refs or o.contained_in or o.pins or o.state is O.PENDING:
            return
        if o.state is O.IN_ARENA:
            self.alloc.free(o.payload[0])
        _move(o, O.FREED, OBJ_TRANSITIONS, "object")
        del self.objs[o.key]
        for c in o.contains:
            co = self.objs.get(c)
            if co is not None:
                co.contained_in -= 1
                self._maybe_free(co)

    def _release_task_refs(self, t: Task) -> None:
        for oid in t.spec[P.S_CONTAINED]:
            o = self.objs.get(oid)
            if o is not None:
                o.task_refs -= 1
                self._maybe_free(o)
        for _, oid in t.spec[P.S_DEPS]:
            o = self.objs.get(oid)
            if o is not None:
                o.task_refs -= 1
                self._maybe_free(o)

    # ------------------------------------------------------------------ objects
    def seal(self, proc: int, oid: int, kind: int, payload, contained=()) -> None:
        """An object's value became available (put, or a task result)."""
        o = self._obj(oid, proc)
        if o.state is not O.PENDING:
            return  # a retried task re-reporting, or a duplicate: first value wins
        if kind == ARENA:
            self.reserved[proc].discard(payload[0])
        o.kind, o.payload = kind, payload
        o.contains = tuple(contained)
        for c in o.contains:
            co = self.objs.get(c)
            if co is not None:
                co.contained_in += 1
        _move(o, O.IN_ARENA if kind == ARENA else O.INLINE, OBJ_TRANSITIONS, "object")
        msg = (P.OBJ, oid, kind, payload)
        if o.owner in o.procs:
            self._send(o.owner, msg)
        for p in o.subscribers:
            if p != o.owner or o.owner not in o.procs:
                self._send(p, msg)
        o.subscribers.clear()
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
        self._maybe_free(o)

    def put(self, proc: int, oid: int, kind: int, payload, contained=()) -> None:
        o = self._obj(oid, proc)
        o.procs.add(proc)
        self.seal(proc, oid, kind, payload, contained)

    def refs(self, proc: int, increfs, decrefs) -> None:
        for oid in increfs:
            o = self.objs.get(oid)
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
                err = exc.ObjectFreedError(
                    P.id_hex(oid), "the object was freed (no reference to it was left)"
                )
                self._send(proc, (P.OBJ, oid, ERROR, self._error_payload(err)))
            elif o.state is O.PENDING:
                o.subscribers.add(proc)
            else:
                self._send(proc, (P.OBJ, oid, o.kind, o.payload))

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
            self._send(proc, (P.ALLOC_OK, req, None, str(e)))
            return
        self.reserved[proc].add(off)
        self._send(proc, (P.ALLOC_OK, req, off, None))

    def free_range(self, proc: int, offset: int) -> None:
        if offset in self.reserved[proc]:
            self.reserved[proc].discard(offset)
            self.alloc.free(offset)

    # ------------------------------------------------------------------ tasks
    def register_function(self, fid: int, blob: bytes) -> None:
        self.funcs[fid] = blob

    def submit(self, proc: int, spec: tuple) -> None:
        tid = spec[P.S_TID]
        res = spec[P.S_RES]
        parent = None
        if proc != 0:
            w = self.workers.get(proc)
            parent = w.task if w else None
        t = Task(tid, spec, proc, parent, res, spec[P.S_RETRIES])
        self.tasks[tid] = t
        self.stats["submitted"] += 1
        if parent is not None:
            self.children[parent].add(tid)
        for oid in t.returns:
            o = self._obj(oid, proc)
            o.procs.add(proc)
        for oid in spec[P.S_CONTAINED]:
            o = self.objs.get(oid)
            if o is not None:
                o.task_refs += 1
        missing = 0
        error = None
        for _, oid in spec[P.S_DEPS]:
            o = self.objs.get(oid)
            if o is None:
                error = self._error_payload(
                    exc.ObjectFreedError(P.id_hex(oid), "argument object was already freed")
                )
                continue
            o.task_refs += 1
            if o.state is O.PENDING:
                o.waiting_tasks.append(tid)
                missing += 1
            elif o.kind == ERROR and error is None:
                error = o.payload
        t.missing = missing
        if error is not None:
            self._fail(t, error)
        elif missing == 0:
            _move(t, T.READY, TASK_TRANSITIONS, "task")
            self._enqueue(t)
        self._check_feasible(t)

    def _check_feasible(self, t: Task) -> None:
        for name, amount in t.resources.items():
            if amount > self.total.get(name, 0) + 1e-9:
                key = (name, amount)
                if key not in self._warned:
                    self._warned.add(key)
                    self.actions.append((
                        "warn",
                        f"mpray: task {t.spec[P.S_NAME]} needs {{{name!r}: {amount}}} but this "
                        f"node has {self.total.get(name, 0)} in total; it will wait until a node "
                        f"with these resources joins (resources: {self.total})",
                    ))
                return

    def _fits(self, res: dict) -> bool:
        avail = self.avail
        for name, amount in res.items():
            if amount and avail.get(name, 0) < amount - 1e-9:
                return False
        return True

    def _take_gpus(self, amount: float) -> tuple:
        if amount <= 0 or not self.gpu_free:
            return ()
        if amount < 1:
            for g, free in self.gpu_free.items():
                if free >= amount - 1e-9:
                    self.gpu_free[g] = free - amount
                    return ((g, amount),)
            return ()
        got = [g for g, free in self.gpu_free.items() if free >= 1 - 1e-9][: int(amount)]
        for g in got:
            self.gpu_free[g] -= 1.0
        return tuple((g, 1.0) for g in got)

    def _enqueue(self, t: Task, front: bool = False) -> None:
        key = t.shape
        q = self.ready.get(key)
        if q is None:
            q = self.ready[key] = collections.deque()
        if front:
            q.appendleft(t.key)
        else:
            q.append(t.key)

    def ready_count(self) -> int:
        return sum(len(q) for q in self.ready.values())

    def schedule(self) -> None:
        """Dispatch ready tasks to idle workers while resources allow."""
        want = 0
        for key, q in list(self.ready.items()):
            while q:
                t = self.tasks.get(q[0])
                if t is None or t.state is not T.READY:
                    q.popleft()
                    continue
                if not self._fits(t.resources):
                    break
                if not self.idle:
                    want += self._could_run(t.resources, len(q))
                    break
                q.popleft()
                self._dispatch(t, self.workers[self.idle.pop()])
            if not q:
                del self.ready[key]
        if want:
            active = sum(1 for w in self.workers.values() if w.state is not W.BLOCKED)
            want = min(want, self.max_workers - active - self.starting)
            for _ in range(max(0, want)):
                self.starting += 1
                self.actions.append(("start_worker",))

    def _could_run(self, res: dict, queued: int) -> int:
        """How many tasks of this shape the free resources admit (bounded by the queue)."""
        n = queued
        for name, amount in res.items():
            if amount:
                n = min(n, int((self.avail.get(name, 0) + 1e-9) // amount))
        return n

    def _dispatch(self, t: Task, w: Worker) -> None:  # noqa: C901 - one message build
        spec = t.spec
        for name, amount in t.resources.items():
            if amount:
                self.avail[name] = self.avail.get(name, 0) - amount
        w.held = t.resources
        w.gpus = self._take_gpus(t.resources.get("GPU", 0))
        deps = []
        for pos, oid in spec[P.S_DEPS]:
            o = self.objs[oid]
            deps.append((pos, oid, o.kind, o.payload))
        fid = spec[P.S_FID]
        fblob = None
        if fid not in w.fids:
            fblob = self.funcs.get(fid)
            w.fids.add(fid)
        _move(w, W.BUSY, WORKER_TRANSITIONS, "worker")
        w.idle_since = 0.0
        w.task = t.key
        t.worker = w.key
        _move(t, T.DISPATCHED, TASK_TRANSITIONS, "task")
        self._send(w.key, (
            P.EXEC, t.key, fid, fblob, spec[P.S_NAME], spec[P.S_ARGS], deps,
            spec[P.S_NRET], tuple(g for g, _ in w.gpus), spec[P.S_RETRY_EXC],
        ))

    def _release_worker_resources(self, w: Worker) -> None:
        for name, amount in w.held.items():
            if amount and not (name == "CPU" and w.state is W.BLOCKED):
                self.avail[name] = self.avail.get(name, 0) + amount
        for g, amount in w.gpus:
            self.gpu_free[g] = self.gpu_free.get(g, 0) + amount
        w.held = {}
        w.gpus = ()

    def _store_results(self, t: Task, proc: int, results) -> None:
        for oid, kind, payload, contained in results:
            self.seal(proc, oid, kind, payload, contained)

    def _fail(self, t: Task, payload: bytes, state: TaskState = T.FAILED) -> None:
        # a READY task may still sit in its queue: schedule() skips non-READY entries
        _move(t, state, TASK_TRANSITIONS, "task")
        self.stats["failed"] += 1
        self._finish(t, [(oid, ERROR, payload, ()) for oid in t.returns])

    def _finish(self, t: Task, results) -> None:
        self._store_results(t, t.worker or t.owner, results)
        self._release_task_refs(t)
        self.children.pop(t.key, None)
        del self.tasks[t.key]

    def task_done(self, wid: int, tid: int, status: int, results, retryable: bool) -> None:
        w = self.workers[wid]
        t = self.tasks.get(tid)
        self._release_worker_resources(w)
        w.task = None
        if w.state is W.BLOCKED:
            _move(w, W.BUSY, WORKER_TRANSITIONS, "worker")
        _move(w, W.IDLE, WORKER_TRANSITIONS, "worker")
        self.idle.append(wid)
        if t is None or t.state is not T.DISPATCHED:
            return
        t.worker = None
        if status == P.APP_ERROR and retryable and t.retries_left > 0 and not t.cancel:
            t.retries_left -= 1
            self.stats["retried"] += 1
            _move(t, T.RETRYING, TASK_TRANSITIONS, "task")
            _move(t, T.READY, TASK_TRANSITIONS, "task")
            self._enqueue(t)
            return
        if status == P.APP_ERROR:
            _move(t, T.FAILED, TASK_TRANSITIONS, "task")
            self.stats["failed"] += 1
        else:
            _move(t, T.FINISHED, TASK_TRANSITIONS, "task")
            self.stats["finished"] += 1
        t.worker = wid
        self._finish(t, results)

    # ------------------------------------------------------------------ workers
    def worker_started(self, wid: int, now: float = 0.0) -> None:
        w = self.workers[wid] = Worker(wid)
        self.starting = max(0, self.starting - 1)
        _move(w, W.IDLE, WORKER_TRANSITIONS, "worker")
        w.idle_since = now
        self.idle.append(wid)

    def worker_blocked(self, wid: int) -> None:
        w = self.workers[wid]
        if w.state is not W.BUSY:
            return
        _move(w, W.BLOCKED, WORKER_TRANSITIONS, "worker")
        cpu = w.held.get("CPU", 0)
        if cpu:
            self.avail["CPU"] = self.avail.get("CPU", 0) + cpu

    def worker_unblocked(self, wid: int) -> None:
        w = self.workers[wid]
        if w.state is not W.BLOCKED:
            return
        _move(w, W.BUSY, WORKER_TRANSITIONS, "worker")
        cpu = w.held.get("CPU", 0)
        if cpu:  # may briefly oversubscribe, as Ray does
            self.avail["CPU"] = self.avail.get("CPU", 0) - cpu

    def worker_died(self, wid: int, reason: str) -> None:
        w = self.workers.get(wid)
        if w is None or w.state is W.DEAD:
            return
        self._release_worker_resources(w)
        if wid in self.idle:
            self.idle.remove(wid)
        _move(w, W.DEAD, WORKER_TRANSITIONS, "worker")
        del self.workers[wid]
        self.out.pop(wid, None)
        t = self.tasks.get(w.task) if w.task is not None else None
        if t is not None and t.state is T.DISPATCHED:
            t.worker = None
            if t.cancel:
                self._fail(t, self._error_payload(exc.TaskCancelledError(
                    P.id_hex(t.key))), T.CANCELLED)
            elif t.retries_left > 0:
                t.retries_left -= 1
                self.stats["retried"] += 1
                _move(t, T.RETRYING, TASK_TRANSITIONS, "task")
                _move(t, T.READY, TASK_TRANSITIONS, "task")
                self._enqueue(t, front=True)
            else:
                self._fail(t, self._error_payload(exc.WorkerCrashedError(
                    f"the worker running task {t.spec[P.S_NAME]} died: {reason}; "
                    f"retries exhausted (max_retries={t.spec[P.S_RETRIES]})")))
        # everything the dead process held goes away with it
        for off in self.reserved.pop(wid, ()):
            self.alloc.free(off)
        for o in list(self.objs.values()):
            if wid in o.procs or wid in o.pins or wid in o.subscribers:
                o.procs.discard(wid)
                o.pins.pop(wid, None)
                o.subscribers.discard(wid)
                self._maybe_free(o)

    def tick(self, now: float) -> None:
        """Retire workers idle for longer than idle_timeout beyond the warm pool."""
        extra = len(self.workers) - self.idle_keep
        for wid in list(self.idle):
            w = self.workers[wid]
            if not w.idle_since:
                w.idle_since = now
            elif extra > 0 and now - w.idle_since > self.idle_timeout:
                self.idle.remove(wid)  # never dispatch to a worker being retired
                self.actions.append(("kill", wid))
                extra -= 1

    # ------------------------------------------------------------------ cancel
    def cancel(self, tid: int, force: bool, recursive: bool) -> None:
        t = self.tasks.get(tid)
        if t is None:
            return
        if recursive:
            for child in list(self.children.get(tid, ())):
                self.cancel(child, force, recursive)
        err = self._error_payload(exc.TaskCancelledError(P.id_hex(tid)))
        if t.state in (T.PENDING_ARGS, T.READY):
            for _, oid in t.spec[P.S_DEPS]:
                o = self.objs.get(oid)
                if o is not None and tid in o.waiting_tasks:
                    o.waiting_tasks.remove(tid)
            self._fail(t, err, T.CANCELLED)
        elif t.state is T.DISPATCHED and not t.cancel:
            t.cancel = True
            if force:
                self.actions.append(("kill", t.worker))
            else:
                self.actions.append(("interrupt", t.worker, tid))

    # ------------------------------------------------------------------ queries
    def available(self) -> dict[str, float]:
        return {k: v for k, v in self.avail.items()}

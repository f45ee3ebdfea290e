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

Mixins hold the parts: the object directory (holders, values, arena ranges) in
``node/objects.py``, workers (start, block, die, retire) in ``node/worker_table.py``, actors in
``node/actor_table.py``, other ranks (placement, remote objects) in ``node/cluster.py``; the state
tables are in ``states.py``.
"""

from __future__ import annotations

import collections
import itertools
import pickle

from .. import exceptions as exc
from .. import protocol as P
from ..control.recorder import TASK_LOST
from .actor_names import ActorNames
from .placement_groups import PARKED, PlacementGroups
from .actor_table import ACTOR_MARK, ActorTable
from ..store.allocator import Allocator
from .cluster import AGENT, ClusterView
from ..placement import PlacementGroupSchedulingStrategy as _PGS
from .invariants import check_scheduler
from .objects import Obj, ObjectDirectory
from .checkpoints import ActorCheckpoints
from .lineage import LineageBook
from .spill import Spiller
from ..store.serialization import ARENA, ERROR
from ..states import (
    OBJ_TRANSITIONS,
    TASK_TRANSITIONS,
    WORKER_TRANSITIONS,
    O,
    ObjState,
    T,
    TaskState,
    TransitionError,
    W,
    WorkerState,
    _move,
)
from .task import Task
from .worker_table import Worker, WorkerTable, _amount, _wants_gpu

_exec, _EXEC = P.Exec.from_items, P.Exec.OP
_ONE_CPU, _DEFAULT = (("CPU", 1.0),), (None, "DEFAULT")  # what an owner's leases may run
OWN_WAIT_S = 1.0  # (MPI) an owner's own task waits this long, not more, for its leases


__all__ = ["OBJ_TRANSITIONS", "TASK_TRANSITIONS", "WORKER_TRANSITIONS", "Obj", "ObjState",
           "Scheduler", "Task", "TaskState", "TransitionError", "Worker", "WorkerState",
           "_move"]


class Scheduler(ObjectDirectory, Spiller, LineageBook, ActorTable, ActorCheckpoints,
                ActorNames, ClusterView, PlacementGroups, WorkerTable):
    """Local scheduler + object directory of one node."""

    def __init__(
        self,
        resources: dict[str, float],
        gpu_ids: list[str] | tuple = (),
        arena_size: int = 0,
        max_workers: int = 0,
        idle_keep: int | None = None,
        idle_timeout: float = 10.0,
        pipeline_depth: int = 2,
        node_id: str = "",
        channels: int = 0,
        spill_dir: str | None = None,
        max_lineage_bytes: int = 1 << 30,
    ) -> None:
        self.total = dict(resources)
        self.avail = dict(resources)
        self.gpu_free = {g: 1.0 for g in gpu_ids}
        self.alloc = Allocator(arena_size)
        ncpu = max(1, int(resources.get("CPU", 1)))
        self.max_workers = max_workers or max(2 * ncpu, 4)
        self.idle_keep = ncpu if idle_keep is None else idle_keep
        self.idle_timeout = idle_timeout
        self.node_id = node_id
        # tasks a busy worker may have queued behind its running one: hides the node's
        # round trip between consecutive tasks at the cost of at most depth-1 waiting
        self.depth = max(1, pipeline_depth)
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
        # what the control store records (control/recorder.py's records; the loop moves
        # them on: a task's pids and errors are filled in there)
        self.records: list[tuple] = []
        self.starting = 0
        self.retiring: set[int] = set()
        self.leasable: set[int] = set()  # workers with a mailbox slot (set by the node)
        # lease channels (a worker leasing a worker): free ones, and for each lent one the
        # ends (owner, leased worker) not done with it yet
        self.free_channels: list[int] = list(range(channels - 1, -1, -1))
        self.channel_holds: dict[int, int] = {}
        self._epoch = 0
        self._warned: set = set()
        self.stats = {"submitted": 0, "finished": 0, "failed": 0, "retried": 0}
        self._init_actors()
        self._init_names()
        self._init_cluster()
        self._init_pgs()
        self._init_spill(spill_dir)
        self._init_lineage(max_lineage_bytes)
        self.now = 0.0  # set by the node's loop before each batch of events

    # ------------------------------------------------------------------ helpers
    def _send(self, proc: int, msg: P.Record) -> None:
        if proc in self.workers or proc == 0 or proc == self.agent:
            self.out[proc].append(msg)

    def _error_payload(self, e: BaseException) -> bytes:
        return pickle.dumps(e, protocol=5)

    def _release_task_refs(self, t: Task) -> None:
        for oid in t.spec.contained:
            o = self.objs.get(oid)
            if o is not None:
                o.task_refs -= 1
                self._maybe_free(o)
        for _, oid in t.spec.deps:
            o = self.objs.get(oid)
            if o is not None:
                o.task_refs -= 1
                self._maybe_free(o)

    # ------------------------------------------------------------------ objects
    def register_function(self, fid: int, blob: bytes) -> None:
        self.funcs[fid] = blob

    @staticmethod
    def _shape_of(spec: P.TaskSpec) -> tuple:
        res = spec.res
        if spec.create is not None:  # a constructor: its own queue, never pipelined
            res = tuple(sorted(res + (ACTOR_MARK,)))
        return res

    def submit(self, proc: int, spec: P.TaskSpec, rerun: bool = False) -> None:
        """A task to run (``rerun``: made again, node/lineage.py: its returns keep
        their holders, and no process is its parent)."""
        tid = spec.tid
        res = spec.res
        actor = None
        if spec.create is not None:
            if not self._actor_admit(proc, spec):
                return  # a duplicate name: refused (the creator got the answer)
            res = self._shape_of(spec)
        elif spec.actor is not None:
            actor = spec.actor
        parent = None
        if proc != 0 and not rerun:
            w = self.workers.get(proc)
            parent = w.task if w else None
        t = Task(tid, spec, proc, parent, res, spec.retries)
        self.tasks[tid] = t
        self.stats["submitted"] += 1
        if parent is not None:
            self.children[parent].add(tid)
        objs = self.objs
        for oid in P.return_ids(tid, spec.nret):
            o = objs.get(oid) or self._obj(oid, proc)
            if not rerun:
                o.procs.add(proc)
        if spec.create is not None:
            t.creating = True
            self._actor_created_anchor(self.actors[tid])
        for oid in spec.contained:
            # (another rank's object gets its placeholder, so that a hold lent with a
            # task forwarded here lasts at least as long as the task)
            o = self.objs.get(oid) or self._remote_placeholder(oid, fetch=False)
            if o is not None:
                o.task_refs += 1
        missing, error = self._hold_deps(t) if spec.deps else (0, None)
        t.missing = missing
        if actor is not None:
            t.actor = actor
            if not self._actor_call(t):
                return  # the actor is gone: the call failed at once
        if error is None and spec.strategy is not None:
            error = self._affinity_error(spec)
        if error is not None:
            self._fail(t, error)
        elif missing == 0:
            _move(t, T.READY, TASK_TRANSITIONS, "task")
            self._enqueue(t)
        if res:  # (an actor call needs nothing: it runs on its actor's)
            self._check_feasible(t)

    def _retry(self, t: Task) -> None:
        """One of the task's retries is used: it is READY again (the caller queues it)."""
        t.retries_left -= 1
        self.stats["retried"] += 1
        self.records.append((TASK_LOST, t.key, True, None, self.now))
        _move(t, T.RETRYING, TASK_TRANSITIONS, "task")
        _move(t, T.READY, TASK_TRANSITIONS, "task")

    def _hold_deps(self, t: Task) -> tuple[int, bytes | None]:
        """The task holds its arguments until it ends: (how many are still pending, the
        error payload of one that failed or is gone)."""
        missing = 0
        error = None
        for _, oid in t.spec.deps:
            o = self.objs.get(oid)
            if o is None:  # another rank's object: fetched from its home
                o = self._remote_placeholder(oid)
            if o is None:
                error = self._error_payload(
                    exc.ObjectFreedError(P.id_hex(oid), "argument object was already freed")
                )
                continue
            o.task_refs += 1
            if o.state is O.PENDING:
                o.waiting_tasks.append(t.key)
                missing += 1
            elif o.kind == ERROR:
                if error is None:
                    error = o.payload
            elif o.state is O.SPILLED or o.state is O.RESTORING:  # read back first
                o.waiting_tasks.append(t.key)
                missing += 1
                self._want(o)
        return missing, error

    def _affinity_error(self, spec: P.TaskSpec) -> bytes | None:
        """The error of a hard node affinity to a node that does not exist (else None)."""
        strategy = spec.strategy
        if (not isinstance(strategy, str) and not getattr(strategy, "soft", True)
                and not self._node_exists(getattr(strategy, "node_id", self.node_id))):
            return self._error_payload(exc.TaskUnschedulableError(
                f"task {spec.name} has a hard NodeAffinitySchedulingStrategy for node "
                f"{strategy.node_id}, which does not exist (this node is {self.node_id})"))
        return None

    def _check_feasible(self, t: Task) -> None:
        if t.state is T.DISPATCHED or (self.agent is not None and self._placement_possible(t)):
            return  # forwarded, or another rank can run it
        if type(t.spec.strategy) is _PGS:
            return  # (its group's resources: it waits for the group, which warns)
        for name, amount in t.resources:
            if amount > self.total.get(name, 0) + 1e-9:
                key = (name, amount)
                if key not in self._warned:
                    self._warned.add(key)
                    self.actions.append(P.Warn(
                        f"mpray: task {t.spec.name} needs {{{name!r}: {amount}}} but this "
                        f"node has {self.total.get(name, 0)} in total; it will wait until a node "
                        f"with these resources joins (resources: {self.total})"))
                return

    def _fits(self, res: tuple) -> bool:
        avail = self.avail
        for name, amount in res:
            if amount and avail.get(name, 0) < amount - 1e-9:
                return False
            if name == "GPU" and amount and self.gpu_free and not self._gpus_fit(amount):
                return False  # enough GPU in total, but split across devices
        return True

    def _enqueue(self, t: Task, front: bool = False) -> None:
        if t.actor is not None:  # a method call waits in its actor's own FIFO
            a = self.actors.get(t.actor)
            if a is not None:
                self._actor_pump(a, t.owner)
            return
        strategy = t.spec.strategy
        if strategy is not None and type(strategy) is _PGS:
            target = self._pg_target(t)
            if target is not None:
                if target is not PARKED:
                    self._forward(t, target)
                return
        elif self.agent is not None:
            target = self._placement(t)
            if target is not None:
                self._forward(t, target)
                return
            t.waits_since = self.now
        key = t.resources
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
        if self.pg_reserving:  # (placement groups first: they wait for free resources)
            self._pg_try_reserve()
        want = 0
        for key, q in list(self.ready.items()):
            while q:
                t = self.tasks.get(q[0])
                if t is None or t.state is not T.READY:
                    q.popleft()
                    continue
                if self.spill_copy and t.spec.deps and self.args_on_disk(t):
                    q.popleft()  # (back when its arguments are read back from disk)
                    continue
                if not self._fits(t.resources):
                    break
                if not self.idle:
                    want += self._could_run(t.resources, len(q))
                    break
                if self.gpu_free and _wants_gpu(t.resources):
                    w = self._fresh_worker()
                    if w is None:
                        want += 1
                        break
                else:
                    w = self.workers[self.idle.pop()]
                q.popleft()
                self._dispatch(t, w)
            if q and self.agent is not None:
                self._spill_queue(q)  # work waits here: some may go to idle ranks
            if q and self.depth > 1 and len(q) >= 2 * len(self.workers):
                # a backlog: queue behind running tasks.  Not for a short queue, where a
                # task parked behind a long one would wait while another worker idles.
                self._pipeline(key, q)
            if not q:
                del self.ready[key]
        want -= self.starting  # workers already being started will take some of them
        if want > 0:
            active = sum(1 for w in self.workers.values()
                         if w.state is not W.BLOCKED and w.actor is None)
            want = min(want, self.max_workers - active - self.starting)
            for _ in range(max(0, want)):
                self.starting += 1
                self.actions.append(P.StartWorker())
        if self.ready:
            self._reclaim_leases()

    def _reclaim_leases(self) -> None:
        """Work waits here while owners hold leases: ask leased workers to give theirs back
        as soon as they have nothing of their owner's to do.  Not for an owner's own lease
        requests: its queued tasks run on the leases it has, and taking one back only to
        lease a worker to it again churns (an owner has at most ``cpus`` requests out, so
        the first ``cpus + 1`` waiting tasks of a queue tell whether another's wait too).
        Under MPI, nor for ``OWN_WAIT_S`` for an owner's own plain one-CPU tasks, sent
        this way to move to another rank (taken back, a lease left its owner sending its
        whole queue this way: a task's 300 nested tasks)."""
        leased = [w for w in self.workers.values() if w.lease is not None and not w.reclaim]
        if not leased:
            return
        limit = int(self.total.get("CPU", 1)) + 1
        waiting = set()  # (owner, a lease request or its own work that may wait) waiting
        patient = self.now - OWN_WAIT_S if self.agent is not None else None
        for q in self.ready.values():
            for tid in itertools.islice(q, limit):
                t = self.tasks.get(tid)
                if t is not None and t.state is T.READY:
                    waiting.add((t.owner, bool(t.spec.lease) or (
                        patient is not None and t.waits_since > patient
                        and t.resources == _ONE_CPU and t.spec.strategy in _DEFAULT)))
        for w in leased:
            if waiting - {(w.lease[0], True)}:  # someone else's task (or another kind)
                w.reclaim = True
                self._send(w.key, P.Reclaim(w.lease[1]))

    def _pipeline(self, key: tuple, q: collections.deque) -> None:
        """Queue ready tasks behind running ones of the same shape (bounded depth)."""
        for w in self.workers.values():
            if not q:
                return
            if (w.state is not W.BUSY or len(w.queue) >= self.depth or w.gpus or w.lease
                    or w.actor is not None):
                continue
            if w.held != key:
                continue
            while q and len(w.queue) < self.depth:
                t = self.tasks.get(q[0])
                if t is not None and self.agent is not None and not self._short(t):
                    return  # (under MPI a long or untimed task waits to move instead)
                q.popleft()
                if t is not None and t.state is T.READY and not (
                        self.spill_copy and t.spec.deps and self.args_on_disk(t)):
                    self._dispatch(t, w)

    def _could_run(self, res: tuple, queued: int) -> int:
        """How many tasks of this shape the free resources admit (bounded by the queue)."""
        n = queued
        for name, amount in res:
            if amount:
                n = min(n, int((self.avail.get(name, 0) + 1e-9) // amount))
        return n

    def _dispatch(self, t: Task, w: Worker) -> None:  # noqa: C901 - one message build
        spec = t.spec
        wants_lease = spec.lease
        if w.state is W.IDLE:  # take a lease on the task's resources
            for name, amount in t.resources:
                if amount:
                    self.avail[name] = self.avail.get(name, 0) - amount
            w.held = t.resources
            w.gpus = (self._take_gpus(_amount(t.resources, "GPU")) if spec.strategy is None
                      else self._pg_take_gpus(t))
            _move(w, W.BUSY, WORKER_TRANSITIONS, "worker")
            w.idle_since = 0.0
            w.task = t.key
            if wants_lease and w.key in self.leasable and self._lease_to(w, t):
                wants_lease = False
        if wants_lease:  # the owner must not wait for a lease that is not coming
            self._send(t.owner, P.NoLease(t.key + 1))
        w.queue.append(t.key)
        deps = []
        for pos, oid in spec.deps:
            o = self.objs[oid]
            deps.append((pos, oid, o.kind, o.payload))
        fid = spec.fid
        fblob = None
        if fid not in w.fids:
            fblob = self.funcs.get(fid)
            w.fids.add(fid)
        t.worker = w.key
        t.started = self.now
        _move(t, T.DISPATCHED, TASK_TRANSITIONS, "task")
        if t.creating:  # the worker becomes this actor for the rest of its life
            a = self.actors[t.key]
            self._actor_placed(a, w)
            self._send(w.key, P.ACreate(t.key, fid, fblob, spec.name, spec.args, deps,
                                        tuple(g for g, _ in w.gpus), a.key, a.incarnation,
                                        spec.create, t.owner, self._ckpt_restore(a)))
            return
        # (P.Exec from all its items: once per task)
        self._send(w.key, _exec((_EXEC, t.key, fid, fblob, spec.name, spec.args, deps,
                                 spec.nret, tuple(g for g, _ in w.gpus), spec.retry_exc,
                                 t.owner, None)))

    def _lease_to(self, w: Worker, t: Task) -> bool:
        """The owner asked: from now on the worker is its lease, running this task first
        and then what the owner sends it directly, on this task's CPU.  A worker owner
        (nested tasks) talks to it through a lease channel (False: none free, or the
        owner has no mailbox slot to be woken by)."""
        owner = t.owner
        channel = None
        if owner != 0:
            if owner not in self.leasable or not self.free_channels:
                return False
            channel = self.free_channels.pop()
            self.channel_holds[channel] = 2  # freed once both ends are done with it
        self._epoch += 1
        w.lease = (owner, self._epoch, channel)
        self.actions.append(P.GrantLease(w.key, self._epoch, owner, t.key + 1, channel))
        return True

    def _store_results(self, t: Task, proc: int, results, delivered: bool = False) -> None:
        for oid, kind, payload, contained in results:
            self.seal(proc, oid, kind, payload, contained, delivered)
            if kind == ARENA and self.spill_dir is not None:
                self._keep_lineage(t, oid)  # (node/lineage.py: made again if lost)

    def _fail(self, t: Task, payload: bytes, state: TaskState = T.FAILED) -> None:
        # a READY task may still sit in its queue: schedule() skips non-READY entries
        _move(t, state, TASK_TRANSITIONS, "task")
        self.stats["failed"] += 1
        self.records.append((TASK_LOST, t.key, False, payload, self.now))
        self._finish(t, [(oid, ERROR, payload, ()) for oid in t.returns])

    def _fail_unstarted(self, t: Task, payload: bytes, state: TaskState = T.FAILED) -> None:
        """End a task that waits for its arguments or in a ready queue."""
        for _, oid in t.spec.deps:
            o = self.objs.get(oid)
            if o is not None and t.key in o.waiting_tasks:
                o.waiting_tasks.remove(t.key)
        self._fail(t, payload, state)

    def _finish(self, t: Task, results, delivered: bool = False) -> None:
        if t.creating:
            ok = t.state is T.FINISHED
            self._creation_finished(t, ok, None if ok else results[0][2])
            # nobody reads an anchor (so its owner's release is prompt), but an agent
            # that placed the actor here ships it home: the creator learns it is alive
            delivered = t.owner != self.agent
        self._store_results(t, t.worker or t.owner, results, delivered)
        if self.ckpt_actors and t.actor in self.ckpt_actors and t.state is T.FINISHED \
                and not t.creating:
            self._ckpt_call_ended(self.actors[t.actor], t)  # (before its holds go)
        if not t.creating:  # an actor keeps its constructor's arguments for restarts
            self._release_task_refs(t)
        if t.actor is not None:
            self._actor_call_finished(t)
        self.children.pop(t.key, None)
        del self.tasks[t.key]

    def task_done(self, wid: int, tid: int, status: int, results, retryable: bool,
                  delivered: bool = False) -> None:
        """A worker finished a task; ``delivered``: it sent the results to the owner itself."""
        w = self.workers[wid]
        t = self.tasks.get(tid)
        if tid in w.queue:
            w.queue.remove(tid)
        if w.actor is not None:  # an actor's constructor or method call
            if t is None or t.state is not T.DISPATCHED:
                return
            if t.creating:
                w.task = None
                if status == P.OK:
                    self._actor_constructed(w)
            self._ended(t, wid, status, results, delivered)
            return
        if w.queue:  # the next pipelined task inherits the lease
            w.task = w.queue[0]
        elif w.lease is not None:
            w.task = None  # stays busy: leased to its owner, who sends tasks directly
        else:
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
            self._retry(t)
            self._enqueue(t)
            return
        self._ended(t, wid, status, results, delivered)

    def _ended(self, t: Task, wid: int, status: int, results, delivered: bool) -> None:
        if t.started and wid != AGENT and t.actor is None and not t.creating:
            self._learn_time(t.spec.fid, self.now - t.started)
        if status == P.APP_ERROR:
            _move(t, T.FAILED, TASK_TRANSITIONS, "task")
            self.stats["failed"] += 1
        else:
            _move(t, T.FINISHED, TASK_TRANSITIONS, "task")
            self.stats["finished"] += 1
        t.worker = wid
        self._finish(t, results, delivered)

    # ------------------------------------------------------------------ cancel
    def cancel(self, tid: int, force: bool, recursive: bool) -> None:
        t = self.tasks.get(tid)
        if recursive:  # also for a task the node never ran (a direct one): its children
            for child in list(self.children.get(tid, ())):
                self.cancel(child, force, recursive)
        if t is None:
            return
        if t.state is T.DISPATCHED and t.worker == AGENT:  # it runs on another rank
            self.out[AGENT].append(P.Cancel(tid, force, recursive))
            return
        err = self._error_payload(exc.TaskCancelledError(P.id_hex(tid)))
        if t.state in (T.PENDING_ARGS, T.READY):
            self._fail_unstarted(t, err, T.CANCELLED)
        elif t.state is T.DISPATCHED and not t.cancel and t.actor is not None:
            # the actor decides: a queued call is dropped, a running async one cancelled,
            # a running sync one finishes (as in Ray); it reports the outcome itself
            t.cancel = True
            self._send(t.worker, P.Drop(tid))
        elif t.state is T.DISPATCHED and not t.cancel:
            w = self.workers.get(t.worker)
            if w is not None and t.key != w.task:  # queued at the worker, not started
                w.queue.remove(t.key)
                self._send(w.key, P.Drop(t.key))
                self._fail(t, err, T.CANCELLED)
                return
            t.cancel = True
            if force:
                self.actions.append(P.Kill(t.worker))
            else:
                self.actions.append(P.Interrupt(t.worker, tid))

    # ------------------------------------------------------------------ queries
    def check_invariants(self) -> None:
        """Raise AssertionError naming what broke (the pure tests call this after every
        event; see invariants.py)."""
        check_scheduler(self)

    def available(self) -> dict[str, float]:
        return {k: v for k, v in self.avail.items()}

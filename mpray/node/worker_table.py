"""The node's workers as a pure state machine: start, block, die, retire, lease end.

A mixin of ``scheduler.Scheduler`` (uses its tasks, objs, idle list, resources, out and
actions).  Data flow::

    worker_started(wid) ─▶ IDLE, in the idle list      worker_blocked ─▶ its CPU is lent
    worker_died(wid)    ─▶ its tasks retried or failed, its holds, pins and arena
                           reservations dropped; an actor's worker: actor_table decides
    tick(now)           ─▶ ("kill", wid) for extra workers idle beyond idle_timeout
    lease_end(wid)      ─▶ the lease's CPU back, IDLE again
    a GPU task          ─▶ GPU ids from the free ones (a placement group's from its
                           bundle's), on a worker that never ran a task (_fresh_worker)
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from .. import exceptions as exc
from .. import protocol as P
from ..states import TASK_TRANSITIONS, WORKER_TRANSITIONS, T, W, WorkerState, _move


def lends(name: str) -> bool:
    """A worker whose task waits in ``get`` lends its CPUs (a placement group's too)."""
    return name == "CPU" or name.startswith("CPU_group_")


def _wants_gpu(res: tuple) -> bool:
    return any(amount and (name == "GPU" or name.startswith("GPU_group_"))
               for name, amount in res)


def _amount(shape: tuple, name: str) -> float:
    for k, v in shape:
        if k == name:
            return v
    return 0.0


@dataclass(eq=False)
class Worker:
    key: int
    state: WorkerState = W.STARTING
    task: int | None = None  # the task running now: queue[0]
    queue: collections.deque = field(default_factory=collections.deque)
    held: tuple = ()  # the lease: resource shape of the running task
    gpus: tuple = ()
    fids: set = field(default_factory=set)
    idle_since: float = 0.0
    lease: tuple | None = None  # (holder proc, epoch) while leased to an owner
    reclaim: bool = False  # asked to give the lease back when idle
    actor: int | None = None  # the actor this worker is (for the rest of its life)
    history: list = field(default_factory=lambda: [W.STARTING])


class WorkerTable:
    """Worker bookkeeping of the Scheduler."""

    def _release_worker_resources(self, w: Worker) -> None:
        for name, amount in w.held:
            if amount and not (w.state is W.BLOCKED and lends(name)):
                self.avail[name] = self.avail.get(name, 0) + amount
        for g, amount in w.gpus:
            self.gpu_free[g] = self.gpu_free.get(g, 0) + amount
        w.held = ()
        w.gpus = ()

    # ------------------------------------------------------------------ GPUs
    def _gpu_pool(self) -> list:
        """The GPUs a task outside placement groups may use (not a bundle's)."""
        owned = self.gpu_owner
        return [g for g in self.gpu_free if g not in owned] if owned else list(self.gpu_free)

    def _gpus_fit(self, amount: float) -> bool:
        free = [self.gpu_free[g] for g in self._gpu_pool()]
        if amount < 1:
            return any(f >= amount - 1e-9 for f in free)
        return sum(1 for f in free if f >= 1 - 1e-9) >= amount

    def _take_gpus(self, amount: float, pool: list | None = None) -> tuple:
        if amount <= 0 or not self.gpu_free:
            return ()
        if pool is None:
            pool = self._gpu_pool()
        gpu_free = self.gpu_free
        if amount < 1:
            for g in pool:
                if gpu_free[g] >= amount - 1e-9:
                    gpu_free[g] -= amount
                    return ((g, amount),)
            return ()
        got = [g for g in pool if gpu_free[g] >= 1 - 1e-9][: int(amount)]
        for g in got:
            gpu_free[g] -= 1.0
        return tuple((g, 1.0) for g in got)

    def _fresh_worker(self) -> Worker | None:
        """An idle worker that never ran a task, for a GPU task: as Ray keeps GPU and
        CPU work in different worker processes, a GPU task must not inherit a CPU task's
        state (a library that set up CUDA before CUDA_VISIBLE_DEVICES was the task's).
        None: one is to be started (an idle used one retires to make room for it)."""
        idle = self.idle
        for i in range(len(idle) - 1, -1, -1):
            w = self.workers[idle[i]]
            if not w.fids:
                del idle[i]
                return w
        if idle and not self.retiring:
            wid = idle.pop(0)
            self.retiring.add(wid)
            self.actions.append(P.Kill(wid))
        return None

    # ------------------------------------------------------------------ workers
    def worker_started(self, wid: int, now: float = 0.0) -> None:
        w = self.workers[wid] = Worker(wid)
        self.starting = max(0, self.starting - 1)
        _move(w, W.IDLE, WORKER_TRANSITIONS, "worker")
        w.idle_since = now
        self.idle.append(wid)

    def _hand_back(self, w: Worker, tids) -> None:
        """Pipelined tasks a worker returns unstarted go back to the front of the queue."""
        for tid in reversed(list(tids)):
            if tid in w.queue and tid != w.task:
                w.queue.remove(tid)
                t = self.tasks.get(tid)
                if t is not None and t.state is T.DISPATCHED:
                    t.worker = None
                    _move(t, T.READY, TASK_TRANSITIONS, "task")
                    self._enqueue(t, front=True)

    def tasks_returned(self, wid: int, tids) -> None:
        w = self.workers.get(wid)
        if w is not None:
            self._hand_back(w, tids)

    def worker_blocked(self, wid: int, returned=()) -> None:
        w = self.workers[wid]
        self._hand_back(w, returned)
        if w.state is not W.BUSY:
            return
        _move(w, W.BLOCKED, WORKER_TRANSITIONS, "worker")
        for name, amount in w.held:
            if amount and lends(name):
                self.avail[name] = self.avail.get(name, 0) + amount

    def worker_unblocked(self, wid: int) -> None:
        w = self.workers[wid]
        if w.state is not W.BLOCKED:
            return
        _move(w, W.BUSY, WORKER_TRANSITIONS, "worker")
        for name, amount in w.held:  # (may briefly oversubscribe, as Ray does)
            if amount and lends(name):
                self.avail[name] = self.avail.get(name, 0) - amount

    def worker_died(self, wid: int, reason: str) -> None:
        w = self.workers.get(wid)
        self.retiring.discard(wid)
        if w is None or w.state is W.DEAD:
            return
        if w.actor is not None:
            self._actor_worker_died(w, reason)
        else:
            self._release_worker_resources(w)
        if wid in self.idle:
            self.idle.remove(wid)
        self.leasable.discard(wid)
        if w.lease is not None:
            owner, epoch, channel = w.lease
            self.actions.append(P.LoseLease(wid, epoch, owner, reason))
            self._channel_done(channel)
        self._revoke_leases_of(wid)
        _move(w, W.DEAD, WORKER_TRANSITIONS, "worker")
        del self.workers[wid]
        self.out.pop(wid, None)
        for tid in list(w.queue)[1:]:  # queued behind the running task: never started
            q = self.tasks.get(tid)
            if q is not None and q.state is T.DISPATCHED:
                q.worker = None
                _move(q, T.READY, TASK_TRANSITIONS, "task")
                self._enqueue(q, front=True)
        t = self.tasks.get(w.task) if w.task is not None else None
        if t is not None and t.state is T.DISPATCHED:
            t.worker = None
            if type(t.cancel) is bytes:  # ended on purpose, with this error
                self._fail(t, t.cancel)
            elif t.cancel:
                self._fail(t, self._error_payload(exc.TaskCancelledError(
                    P.id_hex(t.key))), T.CANCELLED)
            elif t.retries_left > 0:
                self._retry(t)
                self._enqueue(t, front=True)
            else:
                self._fail(t, self._error_payload(exc.WorkerCrashedError(
                    f"the worker running task {t.spec.name} died: {reason}; "
                    f"retries exhausted (max_retries={t.spec.retries})")))
        # everything the dead process held goes away with it
        if self.evict_acks:
            self._spill_proc_gone(wid)
        for off in self.reserved.pop(wid, ()):
            self.alloc.free(off)
        for o in list(self.objs.values()):
            if wid in o.procs or wid in o.pins or wid in o.subscribers:
                o.procs.discard(wid)
                o.pins.pop(wid, None)
                if wid in o.subscribers:
                    o.subscribers = o.subscribers - {wid}
                self._maybe_free(o)

    def tick(self, now: float) -> None:
        """Retire workers idle for longer than idle_timeout beyond the warm pool (and
        kill actors that were told to end and have not: ActorTable)."""
        if self.ending:
            self._actor_tick(now)
        if self.space_waiters:
            self.spill_tick()
        actors = sum(1 for w in self.workers.values() if w.actor is not None)
        extra = len(self.workers) - actors - len(self.retiring) - self.idle_keep
        for wid in list(self.idle):
            w = self.workers[wid]
            if not w.idle_since:
                w.idle_since = now
            elif extra > 0 and now - w.idle_since > self.idle_timeout:
                self.idle.remove(wid)  # never dispatch to a worker being retired
                self.retiring.add(wid)
                self.actions.append(P.Kill(wid))
                extra -= 1

    # ------------------------------------------------------------------ leases
    def lease_end(self, wid: int, epoch: int) -> None:
        w = self.workers.get(wid)
        if w is None or w.lease is None or w.lease[1] != epoch or w.task is not None:
            return
        self._channel_done(w.lease[2])
        w.lease = None
        w.reclaim = False
        if w.state is W.BLOCKED:
            _move(w, W.BUSY, WORKER_TRANSITIONS, "worker")
        self._release_worker_resources(w)
        _move(w, W.IDLE, WORKER_TRANSITIONS, "worker")
        self.idle.append(wid)

    def channel_free(self, proc: int, channel: int) -> None:
        """A lease's owner is done with its channel (it read the lease's end)."""
        if channel in self.channel_holds:
            self._channel_done(channel)

    def _channel_done(self, channel: int | None) -> None:
        """One end of a lease channel is done with it; both: it can be lent again."""
        if channel is None or channel not in self.channel_holds:
            return
        self.channel_holds[channel] -= 1
        if self.channel_holds[channel] <= 0:
            del self.channel_holds[channel]
            self.free_channels.append(channel)

    def _revoke_leases_of(self, owner: int) -> None:
        """A worker that held leases died: its leased workers end them (the owner's end
        of each channel is done)."""
        for w in self.workers.values():
            if w.lease is not None and w.lease[0] == owner:
                self._send(w.key, P.LeaseRevoked(w.lease[1]))
                self._channel_done(w.lease[2])

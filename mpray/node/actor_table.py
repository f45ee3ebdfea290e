"""The node's actor table: creation, placement, call routing, restarts and death (pure).

A mixin of ``scheduler.Scheduler``, like ``objects.ObjectDirectory``.  Data flow::

    submit(creation spec) ─▶ Actor(PENDING_CREATION) + creation Task ─▶ shape queue ─▶ idle
                             worker gets ACREATE and becomes the actor's process for life
    task_done(creation)   ─▶ ALIVE: resources switch to the actor's lifetime shape;
                             ("actor_update", aid) tells the driver (slot for direct calls)
    submit(call spec)     ─▶ Task in its caller's FIFO at the actor ─▶ ACall to the actor's
                             worker, in each caller's order, once its arguments are ready
                             (a call waiting for its arguments holds back only its own
                             caller's later calls, as Ray orders calls per caller)
    worker_died(actor's)  ─▶ RESTARTING (new creation Task) | DEAD; calls in flight are
                             retried (max_task_retries) or fail with a specific error
    kill / anchor freed   ─▶ the process is killed; DEAD once it is gone (the name at once)

An actor's lifetime is its *anchor*: the creation task's return object, which every
``ActorHandle`` holds a ref to (pickled handles count as contained refs), and which each
pending call holds as a task ref.  When the object directory frees it, no handle and no
pending call is left, and a non-detached actor is terminated.  A detached actor's anchor
is also held by the node itself (``NODE_HOLDER``) until it is killed.
"""

from __future__ import annotations

import collections
import pickle

from .. import exceptions as exc
from .. import protocol as P
from .actor_names import name_taken
from .cluster import AGENT
from ..states import ACTOR_TRANSITIONS, TASK_TRANSITIONS, A, ActorState, T, W, _move
from .task import Task

_acall, _ACALL = P.ACall.from_items, P.ACall.OP
NODE_HOLDER = -1  # pseudo process that holds a detached actor's anchor
ACTOR_MARK = ("~actor", 0.0)  # in a creation task's shape: its own ready queue, never pipelined


class Actor:
    __slots__ = ("remote_rank", "key", "anchor", "state", "spec", "owner", "opts", "restarts_left",
                 "worker", "queue", "incarnation", "death", "killed", "terminating",
                 "history", "name_key", "ncalls", "log", "checkpoint")

    def __init__(self, key: int, spec: tuple, owner: int) -> None:
        self.key = key
        self.anchor = key + 1
        self.spec = spec
        self.owner = owner
        self.opts: dict = spec.create
        r = self.opts.get("max_restarts", 0)
        self.restarts_left = -1 if r == -1 else int(r or 0)
        self.state = A.PENDING_CREATION
        self.worker: int | None = None
        # calls not yet sent, per caller (the process that submitted them)
        self.queue: dict[int, collections.deque[int]] = {}
        self.incarnation = 0
        self.death: bytes | None = None  # pickled ActorDiedError once DEAD
        self.killed: str | None = None  # why it must not restart (kill, exit_actor, ...)
        self.terminating = False
        self.name_key: tuple | None = None
        self.remote_rank: int | None = None  # (MPI) placed on that rank: calls go there
        self.history = [A.PENDING_CREATION]
        # (node/checkpoints.py, with checkpoint_interval: calls ended well, those logged
        # since the last checkpoint, and that checkpoint's (oid, calls))
        self.ncalls = 0
        self.log: list = []
        self.checkpoint: tuple | None = None

    @property
    def class_name(self) -> str:
        return self.opts.get("class_name", "Actor")

    def queue_call(self, t, front: bool = False) -> None:
        q = self.queue.get(t.owner)
        if q is None:
            q = self.queue[t.owner] = collections.deque()
        if front:
            q.appendleft(t.key)
        else:
            q.append(t.key)

    def take_queued(self) -> list[int]:
        """Every call not sent yet (each caller's in order), and forget them."""
        out = [tid for q in self.queue.values() for tid in q]
        self.queue = {}
        return out


ACTOR_GRACE_S = 30.0  # an actor told to end (Stop) is killed after this long (as Ray's
#                       actor_graceful_shutdown_timeout_ms)


class ActorTable:
    """Actor bookkeeping of the Scheduler (uses its tasks, workers, objs, out, actions)."""

    def _init_actors(self) -> None:
        self.actors: dict[int, Actor] = {}
        self.anchors: dict[int, int] = {}  # anchor oid -> actor id
        self.names: dict[tuple, int] = {}  # (namespace, name) -> actor id
        self.ending: dict[int, float] = {}  # worker of an actor told to end -> kill time
        self.ckpt_actors: set[int] = set()  # actors with checkpoint_interval (checkpoints.py)

    # ------------------------------------------------------------------ creation
    def _actor_admit(self, proc: int, spec: tuple) -> bool:
        """A creation arrives: register the actor (False: refused, already answered)."""
        opts = spec.create
        aid = spec.tid
        name = opts.get("name")
        req = opts.get("req")
        # (one placed here by another rank has its name there, at its creator's node)
        key = (opts.get("namespace") or "", name) if name and proc != AGENT else None
        if key is not None and self._names_at_rank0() and self._claim_elsewhere(proc, spec, key):
            return False  # (rank 0 answers first: submit() comes again if the name is ours)
        if key is not None and (key in self.names or key in self.remote_names):
            other = self.actors.get(self.names.get(key))
            if not opts.get("get_if_exists"):
                self._send(proc, P.Reply(req, ("error", name_taken(key))))
            elif other is not None:
                self._hold_anchor(other, proc)
                self._send(proc, P.Reply(req, ("exists", other.key, other.opts.get("meta"))))
            else:  # (rank 0: an actor of another rank has it)
                aid2, meta, _rank = self.remote_names[key]
                self._send(proc, P.Reply(req, ("exists", aid2, meta)))
            return False
        a = self.actors[aid] = Actor(aid, spec, proc)
        if self.checkpointed(a):
            self.ckpt_actors.add(aid)
        self.anchors[a.anchor] = aid
        if key is not None:
            self.names[key] = aid
            a.name_key = key
        if req is not None:
            self._send(proc, P.Reply(req, ("ok",)))
        return True

    def _actor_created_anchor(self, a: Actor) -> None:
        if a.opts.get("detached"):
            self.objs[a.anchor].procs.add(NODE_HOLDER)

    def _hold_anchor(self, a: Actor, proc: int) -> None:
        o = self.objs.get(a.anchor)
        if o is not None:
            o.procs.add(proc)

    def lookup_actor(self, proc: int, namespace: str, name: str):
        """get_actor(): (aid, meta) and ``proc`` now holds a ref to its anchor; or None."""
        a = self._live_named((namespace or "", name))
        if a is None:  # (maybe another rank's: see actor_names.ask_name)
            return None
        self._hold_anchor(a, proc)
        return (a.key, a.opts.get("meta"))

    def list_actors(self) -> list:
        return [(a.key, a.class_name, a.state.value, a.name_key, a.worker)
                for a in self.actors.values()]

    def _creation_finished(self, t, ok: bool, payload) -> None:
        """The creation task ended (ran, failed before running, or was cancelled)."""
        a = self.actors.get(t.key)
        if a is None:
            return
        if ok:
            _move(a, A.ALIVE, ACTOR_TRANSITIONS, "actor")
            self._announce(a)
            self._actor_pump(a)
            return
        err = pickle.loads(payload) if payload is not None else None
        if isinstance(err, exc.RayTaskError):
            cause = (f"The actor died because of an error raised in its creation task, "
                     f"{a.class_name}.__init__():\n{err}")
        else:
            cause = f"The actor {a.class_name} could not be created: {err}"
        self._actor_dead(a, cause)

    # ------------------------------------------------------------------ calls
    def _actor_call(self, t) -> bool:
        """A call was submitted; False when it failed at once (actor gone)."""
        o = self.objs.get(t.actor + 1)
        if o is not None:  # a pending call keeps its actor alive (its anchor)
            o.task_refs += 1
        a = self.actors.get(t.actor)
        if (a is None or a.remote_rank is not None) and self._forward_actor_call(t, a):
            return False  # it lives on another rank: forwarded there
        if a is None or a.state is A.DEAD or a.killed:
            self._fail(t, self._death_payload(a, t.actor))
            return False
        a.queue_call(t)
        return True

    def _death_payload(self, a: Actor | None, aid: int) -> bytes:
        if a is not None and a.death is not None:
            return a.death
        why = a.killed if a is not None and a.killed else "the actor is dead"
        return pickle.dumps(exc.ActorDiedError(
            f"{why} (actor {P.id_hex(aid)}); this call cannot run", actor_id=P.id_hex(aid)),
            protocol=5)

    def _actor_pump(self, a: Actor, caller: int | None = None) -> None:
        """Send the actor its ready calls, in each caller's submission order (only
        ``caller``'s: one of its calls became ready, which moves no other queue)."""
        if a.state is not A.ALIVE:
            return
        w = self.workers.get(a.worker)
        if w is None:
            return
        queues = a.queue
        # (a caller's queue goes once it is empty)
        for c in tuple(queues) if caller is None else (caller,):
            q = queues.get(c)
            if q is None:
                continue
            while q:
                t = self.tasks.get(q[0])
                if t is None or t.state is not T.READY and t.state is not T.PENDING_ARGS:
                    q.popleft()  # ended already (cancelled, failed)
                    continue
                if t.state is T.PENDING_ARGS or (
                        self.spill_copy and t.spec.deps and self.args_on_disk(t)):
                    break  # this caller's later calls must wait for it (others need not)
                q.popleft()
                self._send_call(a, w, t)
            if not q:
                del queues[c]

    def _send_call(self, a: Actor, w, t) -> None:
        spec = t.spec
        deps = []
        for pos, oid in spec.deps:
            o = self.objs[oid]
            deps.append((pos, oid, o.kind, o.payload))
        w.queue.append(t.key)
        t.worker = w.key
        _move(t, T.DISPATCHED, TASK_TRANSITIONS, "task")
        # (P.ACall from all its items: once per call)
        self._send(w.key, _acall((_ACALL, t.key, spec.method, spec.args, deps, spec.nret,
                                  spec.retry_exc, t.owner, spec.retries, a.key,
                                  a.incarnation, False, spec.stream)))

    def _actor_call_finished(self, t) -> None:
        o = self.objs.get(t.actor + 1)
        if t.owner == 0:
            self._send(0, P.ANodeDone(t.actor, t.key))
        if o is not None:
            o.task_refs -= 1
            self._maybe_free(o)

    # ------------------------------------------------------------------ worker events
    def _actor_placed(self, a: Actor, w) -> None:
        a.worker = w.key
        w.actor = a.key

    def _actor_constructed(self, w) -> None:
        """The constructor returned: the actor keeps only its lifetime resources."""
        a = self.actors.get(w.actor)
        held = tuple(a.opts.get("held", ())) if a is not None else ()
        if held != tuple(r for r in w.held if r != ACTOR_MARK):
            self._release_worker_resources(w)  # placement needed 1 CPU; the actor holds 0
        w.held = held

    def _actor_worker_died(self, w, reason: str) -> None:
        self.ending.pop(w.key, None)
        a = self.actors.get(w.actor)
        self._release_worker_resources(w)
        w.task = None
        if a is None or a.worker != w.key:
            return
        a.worker = None
        restart = (a.state is not A.DEAD and not a.killed and not a.terminating
                   and a.restarts_left != 0)
        creating = None
        inflight = []
        for tid in w.queue:
            t = self.tasks.get(tid)
            if t is None or t.state is not T.DISPATCHED:
                continue
            if t.creating:
                creating = t
            else:
                inflight.append(t)
        w.queue.clear()
        for t in reversed(inflight):
            t.worker = None
            if restart and t.retries_left != 0 and not t.cancel:
                self._retry(t)
                a.queue_call(t, front=True)
            else:
                cls = exc.ActorUnavailableError if restart else exc.ActorDiedError
                self._fail(t, pickle.dumps(cls(
                    f"The actor {a.class_name} ({P.id_hex(a.key)}) died while running "
                    f"{t.spec.name}: {a.killed or reason}"
                    + ("; it is being restarted" if restart else "")
                    + (f" (max_task_retries={t.spec.retries})" if restart else ""),
                    actor_id=P.id_hex(a.key)), protocol=5))
        if a.state is A.DEAD:
            return
        if restart:
            if a.restarts_left > 0:
                a.restarts_left -= 1
            a.incarnation += 1
            if a.state is not A.RESTARTING:
                _move(a, A.RESTARTING, ACTOR_TRANSITIONS, "actor")
            self._announce(a)
            self._recreate(a, creating)
            return
        if creating is not None:
            creating.worker = None
            why = f"{a.killed} while its constructor ran" if a.killed else \
                f"its process died in the constructor: {reason}"
            self._fail(creating, pickle.dumps(exc.ActorDiedError(why), protocol=5))
            return  # _creation_finished made it DEAD
        why = a.killed or ("all references to the actor were removed" if a.terminating
                           else f"its process died: {reason}; no restarts left "
                                f"(max_restarts={a.opts.get('max_restarts', 0)})")
        self._actor_dead(a, f"The actor {a.class_name} ({P.id_hex(a.key)}) is dead: {why}")

    def _recreate(self, a: Actor, creating) -> None:
        """Queue the constructor again, for a fresh worker (restart)."""
        if creating is not None:
            creating.worker = None
            _move(creating, T.RETRYING, TASK_TRANSITIONS, "task")
            _move(creating, T.READY, TASK_TRANSITIONS, "task")
            self._enqueue(creating, front=True)
            return
        spec = a.spec
        t = Task(a.key, spec, a.owner, None, self._shape_of(spec), 0)
        t.creating = True
        self.tasks[t.key] = t
        _move(t, T.READY, TASK_TRANSITIONS, "task")
        self._enqueue(t, front=True)

    def _actor_dead(self, a: Actor, cause: str) -> None:
        if a.state is A.DEAD:
            return
        _move(a, A.DEAD, ACTOR_TRANSITIONS, "actor")
        a.death = pickle.dumps(exc.ActorDiedError(cause, actor_id=P.id_hex(a.key)), protocol=5)
        self._free_name(a)
        for tid in a.take_queued():
            t = self.tasks.get(tid)
            if t is not None and t.state in (T.PENDING_ARGS, T.READY):
                self._fail(t, a.death)
        t = self.tasks.get(a.key)
        if t is not None and t.creating and t.state in (T.PENDING_ARGS, T.READY):
            self._fail(t, a.death, T.CANCELLED)  # waiting to be placed: never runs now
        # the constructor's arguments were kept for restarts
        for oid in list(a.spec.contained) + [oid for _p, oid in a.spec.deps]:
            o = self.objs.get(oid)
            if o is not None:
                o.task_refs -= 1
                self._maybe_free(o)
        o = self.objs.get(a.anchor)
        if o is not None and NODE_HOLDER in o.procs:
            o.procs.discard(NODE_HOLDER)
            self._maybe_free(o)
        if a.key in self.ckpt_actors:
            self.ckpt_actors.discard(a.key)
            self._ckpt_dead(a)
        self._announce(a)
        if a.worker is not None:
            self.actions.append(P.Kill(a.worker))
        if a.anchor not in self.anchors:  # no handle left: nothing can reach it any more
            self.actors.pop(a.key, None)

    def _announce(self, a: Actor) -> None:
        """Tell the driver (it sends direct calls, and fails or retries its own)."""
        self.actions.append(P.AnnounceActor(a.key, a.state.value, a.incarnation, a.worker,
                                            a.death))

    def _free_name(self, a: Actor) -> None:
        if a.name_key is not None and self.names.get(a.name_key) == a.key:
            del self.names[a.name_key]
            self._name_freed(a.name_key, a.key)
        a.name_key = None

    # ------------------------------------------------------------------ kill / exit
    def kill_actor(self, aid: int, no_restart: bool, why: str = "") -> None:
        a = self.actors.get(aid)
        if self.agent is not None and (a is None and P.id_rank(aid) != self.rank
                                       or a is not None and a.remote_rank is not None):
            # (MPI) it lives on another rank: the kill goes there
            rank = a.remote_rank if a is not None else P.id_rank(aid)
            self.out[self.agent].append(P.ToRank(rank, P.KillActor(aid, no_restart)))
            if a is not None and no_restart:
                a.killed = why or "it was killed with mpray.kill()"
                self._free_name(a)
            return
        if a is None or a.state is A.DEAD:
            return
        if no_restart:
            a.killed = why or "it was killed with mpray.kill()"
            self._free_name(a)  # at once, as in Ray: the name can be taken again
            # the driver sends later calls the node's way (which fails them) from now on
            self.actions.append(P.AnnounceActor(a.key, "KILLED", a.incarnation, None, None))
        if a.worker is not None:
            self.actions.append(P.Kill(a.worker))
        elif no_restart:  # not placed yet: it never runs
            self._actor_dead(a, f"The actor {a.class_name} ({P.id_hex(aid)}) is dead: "
                                f"{a.killed}")

    def actor_exit(self, proc: int, aid: int) -> None:
        a = self.actors.get(aid)
        if a is not None and a.worker == proc:
            a.killed = "it called exit_actor()"
            self._free_name(a)

    def _anchor_freed(self, oid: int) -> None:
        """No handle and no pending call is left: terminate the (non-detached) actor."""
        a = self.actors.get(self.anchors.pop(oid))
        if a is None:
            return
        if a.state is A.DEAD:
            del self.actors[a.key]  # nothing can reach it any more
            return
        a.terminating = True
        if a.remote_rank is not None:  # (MPI) it lives there: end it there
            self.out[self.agent].append(P.ToRank(a.remote_rank, P.KillActor(a.key, True)))
            self._actor_dead(a, f"The actor {a.class_name} ({P.id_hex(a.key)}) is dead: "
                                "all references to the actor were removed")
        elif a.worker is not None:
            # a graceful end, as in Ray: the actor runs __ray_shutdown__ and its atexit
            # handlers, then exits (killed if it has not within ACTOR_GRACE_S)
            self._send(a.worker, P.Stop())
            self.ending[a.worker] = self.now + ACTOR_GRACE_S
        else:  # waiting to be (re)placed: it never runs again
            self._actor_dead(a, f"The actor {a.class_name} ({P.id_hex(a.key)}) is dead: "
                                "all references to the actor were removed")

    def _actor_tick(self, now: float) -> None:
        """Kill the actors told to end that have not within ACTOR_GRACE_S."""
        for wid, deadline in list(self.ending.items()):
            if now >= deadline:
                del self.ending[wid]
                self.actions.append(P.Kill(wid))


__all__ = ["ACTOR_MARK", "Actor", "ActorState", "ActorTable", "NODE_HOLDER", "W"]

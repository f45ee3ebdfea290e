"""Actor checkpoints (the paper's section 4.2.3, which Ray dropped): an actor created with
``checkpoint_interval=N`` is restarted from its last checkpoint, replaying only the
calls that ended after it (pure: a mixin of ``scheduler.Scheduler``; the actor's side
is ``worker/actor.py``).

Data flow::

    a call of such an actor ends well ─▶ counted; logged when retryable (its spec, its
      arguments pinned here: CKPT) for a replay
    its class defines __mpray_checkpoint__: every N calls the actor puts its state and
      sends Checkpoint(aid, incarnation, oid, calls) ─▶ that object pinned (the last one
      let go), the log up to that call dropped
    its process dies and it restarts ─▶ ACreate.restore = (the state's (oid, kind,
      payload) or None, the logged calls with their arguments' values, calls so far)
      ─▶ the new process: constructor, __mpray_restore__(state), the replay, then calls
    no __mpray_checkpoint__: nothing is dropped, a restart replays every call (the
      paper's baseline); the actor DEAD ─▶ log and checkpoint let go

Calls of such an actor go through the node (its ActorUpdate names no mailbox slot), so
that every call it ran is seen here, in the order it ran them (one at a time: the
option is refused with concurrency).
"""

from __future__ import annotations

CKPT = -4  # the pseudo-process whose pins keep a checkpoint and the logged arguments


class ActorCheckpoints:
    """Checkpoints of the Scheduler's actors (uses its actors, objs, _maybe_free)."""

    @staticmethod
    def checkpointed(a) -> bool:
        return bool(a.opts.get("checkpoint_interval"))

    def _ckpt_pin(self, oids, delta: int) -> None:
        objs = self.objs
        for oid in oids:
            o = objs.get(oid)
            if o is None:
                continue
            n = o.pins.get(CKPT, 0) + delta
            if n:
                o.pins[CKPT] = n
            else:
                del o.pins[CKPT]
                self._maybe_free(o)

    def _ckpt_call_ended(self, a, t) -> None:
        """A call ended well (its arguments still held by it): count and log it."""
        a.ncalls += 1
        if t.spec.retries != 0:  # (only retryable calls are run again)
            a.log.append((a.ncalls, t.spec))
            self._ckpt_pin([oid for _pos, oid in t.spec.deps], 1)

    def actor_checkpoint(self, proc: int, aid: int, inc: int, oid: int, calls: int) -> None:
        """The actor's state after its ``calls``-th call is object ``oid``."""
        a = self.actors.get(aid)
        if a is None or a.worker != proc or a.incarnation != inc or oid not in self.objs:
            return  # (an earlier process's, or a dead actor's)
        self._ckpt_pin([oid], 1)
        if a.checkpoint is not None:
            self._ckpt_pin([a.checkpoint[0]], -1)
        a.checkpoint = (oid, calls)
        keep = []
        for n, spec in a.log:
            if n <= calls:
                self._ckpt_pin([o for _pos, o in spec.deps], -1)
            else:
                keep.append((n, spec))
        a.log = keep

    def _ckpt_restore(self, a):
        """What a restarted actor's process restores and replays (None: nothing)."""
        if a.checkpoint is None and not a.log:
            return None
        objs = self.objs
        state = None
        if a.checkpoint is not None:
            o = objs[a.checkpoint[0]]
            state = (o.key, o.kind, o.payload)
        replay = [(spec.method, spec.args,
                   [(pos, oid, objs[oid].kind, objs[oid].payload) for pos, oid in spec.deps])
                  for _n, spec in a.log]
        return (state, replay, a.ncalls)

    def _ckpt_dead(self, a) -> None:
        if a.checkpoint is not None:
            self._ckpt_pin([a.checkpoint[0]], -1)
            a.checkpoint = None
        for _n, spec in a.log:
            self._ckpt_pin([oid for _pos, oid in spec.deps], -1)
        a.log = []

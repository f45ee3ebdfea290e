"""Driver-side actor calls: straight into the actor's mailbox ring when possible.

Data flow::

    handle.f.remote() ─▶ DirectActors.submit ─▶ the actor's queue here (submission order)
        head call, actor ALIVE, its args resolved here, no refs pickled inside
            ─▶ ACALL on the actor's d2w ring ─▶ actor ─▶ ADONE_D (+ values) on its w2d ring
        anything else (refs inside the args, args not here yet, actor without a mailbox)
            ─▶ SUBMIT through the node ─▶ node's actor FIFO ─▶ … ─▶ ANODE_DONE
    node ─▶ ACTOR (ALIVE / RESTARTING / DEAD, with the mailbox slot) ─▶ on_update

Calls from one caller must run in submission order, and two paths would race, so a call
takes a path only when no call of this actor is in flight on the other one (a fence;
rare in practice: refs inside arguments, or a constructor still running).  Return ids
of direct calls live in ``DirectTasks.pending`` like those of leased tasks, so the
object bookkeeping (values that came direct, refs that leave, promises) is shared.

When the actor's process dies, calls in flight here are re-sent after the restart while
``max_task_retries`` allows, and fail with ``ActorUnavailableError`` (restarting) or
``ActorDiedError`` (dead) otherwise.
"""

from __future__ import annotations

import collections
import pickle
import threading

from . import exceptions as exc
from . import protocol as P
from .direct import slot_bytes, slot_rings
from .remote_function import _resolve_locally
from .rings import Doorbell
from .serialization import ERROR


class _Chan:
    """What the driver knows of one actor."""

    __slots__ = ("aid", "state", "inc", "ring", "bell", "queue", "inflight", "node_calls",
                 "killed", "death")

    def __init__(self, aid: int) -> None:
        self.aid = aid
        self.state: str | None = None  # None until the node's first ACTOR message
        self.inc = -1
        self.ring = None  # d2w ring of its mailbox slot (None: calls go through the node)
        self.bell: Doorbell | None = None
        self.queue: collections.deque[list] = collections.deque()  # not sent yet
        self.inflight: dict[int, list] = {}  # sent direct, not done
        self.node_calls: set[int] = set()  # sent through the node, not done
        self.killed = False
        self.death: bytes | None = None


class DirectActors:
    """Every actor as the driver sees it, and the calls it sends them."""

    def __init__(self, client, direct) -> None:
        self.client = client
        self.d = direct  # DirectTasks (pending-value bookkeeping, mailbox) or None
        self.lock = direct.lock if direct is not None else threading.RLock()
        self.chans: dict[int, _Chan] = {}
        self.calls: dict[int, tuple] = {}  # tid -> (chan, rec) while queued or direct
        self.backlog = 0  # calls queued here: the background pump keeps them moving

    def _chan(self, aid: int) -> _Chan:
        ch = self.chans.get(aid)
        if ch is None:
            ch = self.chans[aid] = _Chan(aid)
        return ch

    # ------------------------------------------------------------------ submit
    def submit(self, aid: int, spec: tuple, keep) -> None:
        """Queue a call (its ObjectRefs exist already) and send what can go."""
        with self.lock:
            ch = self.chans.get(aid) or self._chan(aid)
            rec = [spec, keep, spec[P.S_RETRIES]]
            tid = spec[P.S_TID]
            d = self.d
            if d is None or P.id_rank(aid) != self.client.rank:
                # no mailboxes, or (MPI) an actor of another rank: the node routes it
                self._via_node(ch, rec)
                return
            pending = d.pending
            for i in range(spec[P.S_NRET]):
                pending[tid + 1 + i] = tid
            self.calls[tid] = (ch, rec)
            if (not ch.queue and ch.ring is not None and not ch.node_calls and not ch.killed
                    and not spec[P.S_DEPS] and not spec[P.S_CONTAINED]
                    and self._push(ch, rec, ())):
                return  # the common case: straight into the actor's ring
            ch.queue.append(rec)
            self.backlog += 1
            self._pump(ch)
            waiting = bool(ch.queue)
        if waiting:
            self.client.ensure_background_pump()

    def _pump(self, ch: _Chan) -> None:
        q = ch.queue
        client = self.client
        while q:
            if ch.state is None or ch.state == "RESTARTING":
                return  # sent once it is alive (in order)
            rec = q[0]
            spec = rec[0]
            if ch.state == "DEAD" or ch.killed or ch.ring is None or spec[P.S_CONTAINED]:
                deps = None
            else:
                deps = _resolve_locally(client, spec[P.S_DEPS])
            if deps is not None:
                if ch.node_calls:
                    return  # fence: the node's calls before it must end first
                sent = self._push(ch, rec, deps)
                if sent is None:
                    return  # ring full: resent as results come back
                if not sent:  # too large for the mailbox: the node's rings fragment
                    if ch.inflight:
                        return
                    self._via_node(ch, rec)
            else:
                if ch.inflight:
                    return  # fence: the direct calls before it must end first
                self._via_node(ch, rec)
            q.popleft()
            self.backlog -= 1

    def _push(self, ch: _Chan, rec: list, deps: tuple) -> bool | None:
        spec = rec[0]
        tid = spec[P.S_TID]
        frame = pickle.dumps([(P.ACALL, tid, spec[P.S_FID], spec[P.S_ARGS], deps,
                               spec[P.S_NRET], spec[P.S_RETRY_EXC], 0, rec[2], ch.aid, ch.inc,
                               True)], protocol=5)
        ring = ch.ring
        if len(frame) > ring._max_frag:
            return False
        if ring.free_bytes() < len(frame) + 64 or ring.try_push(frame) != len(frame):
            return None
        ch.bell.ring()
        ch.inflight[tid] = rec
        return True

    def _via_node(self, ch: _Chan, rec: list) -> None:
        spec = rec[0]
        tid = spec[P.S_TID]
        self.calls.pop(tid, None)
        client = self.client
        d = self.d
        if d is not None:
            for i in range(spec[P.S_NRET]):
                d.promised.discard(tid + 1 + i)  # SUBMIT registers them now
            # their returns stay pending until the node's values come (see DirectTasks)
            client.publish([oid for _p, oid in spec[P.S_DEPS]])
            client.publish(spec[P.S_CONTAINED])
        ch.node_calls.add(tid)
        client.send([(P.SUBMIT, spec)])

    # ------------------------------------------------------------------ events
    def on_done(self, tid: int, values) -> None:
        """A direct call ended; its values came with it (or come from the node: None)."""
        with self.lock:
            if values:
                direct_value = self.d._direct_value
                for oid, kind, payload in values:
                    direct_value(oid, kind, payload, True)
            ch, _rec = self.calls.pop(tid, (None, None))
            if ch is not None:
                ch.inflight.pop(tid, None)
                if ch.queue:
                    self._pump(ch)

    def on_node_done(self, aid: int, tid: int) -> None:
        with self.lock:
            ch = self.chans.get(aid)
            if ch is not None:
                ch.node_calls.discard(tid)
                self._pump(ch)

    def on_update(self, aid: int, state: str, inc: int, wid, slot, pid: int, death) -> None:
        with self.lock:
            ch = self._chan(aid)
            if state == "KILLED":
                ch.killed = True
            elif state == "ALIVE":
                ch.state = "ALIVE"
                ch.inc = inc
                d = self.d
                if slot is not None and d is not None:
                    _w2d, ch.ring = slot_rings(d.mailbox, slot, d.cap)
                    _w2d.release()  # the client polls the slot's w2d ring already
                    ch.bell = Doorbell(d.slot_efds[slot], d.mailbox, slot * slot_bytes(d.cap))
                else:
                    ch.ring = None
            elif state in ("RESTARTING", "DEAD"):
                self._drop_ring(ch)
                ch.state = state
                ch.death = death
                self._lost(ch, state == "RESTARTING")
            self._pump(ch)

    def _drop_ring(self, ch: _Chan) -> None:
        if ch.ring is not None:
            ch.ring.release()
        ch.ring = None
        ch.bell = None

    def _lost(self, ch: _Chan, restarting: bool) -> None:
        """Its process died: retry (in order, at the front) or fail what was in flight."""
        retry = []
        for tid, rec in sorted(ch.inflight.items()):
            if not self._undelivered(rec):
                continue  # its values came before the process died
            if restarting and rec[2] != 0:
                rec[2] -= 1
                retry.append(rec)
                continue
            self.calls.pop(tid, None)
            cls = exc.ActorUnavailableError if restarting else exc.ActorDiedError
            name = rec[0][P.S_NAME]
            msg = (f"The actor ({P.id_hex(ch.aid)}) died while running {name}; "
                   + ("it is being restarted (max_task_retries allowed no retry)"
                      if restarting else "it is dead"))
            if ch.death is not None and not restarting:
                msg += f": {pickle.loads(ch.death)}"
            self._fail(rec, pickle.dumps(cls(msg, actor_id=P.id_hex(ch.aid)), protocol=5))
        ch.inflight.clear()
        for rec in reversed(retry):
            ch.queue.appendleft(rec)
            self.backlog += 1

    def _undelivered(self, rec: list) -> bool:
        d = self.d
        spec = rec[0]
        tid = spec[P.S_TID]
        return d is None or any(tid + 1 + i in d.pending for i in range(spec[P.S_NRET])) \
            or not spec[P.S_NRET]

    def _fail(self, rec: list, payload: bytes) -> None:
        d = self.d
        spec = rec[0]
        tid = spec[P.S_TID]
        for i in range(spec[P.S_NRET]):
            oid = tid + 1 + i
            if d is not None and oid in d.pending:
                d._direct_value(oid, ERROR, payload, deliver=True)

    # ------------------------------------------------------------------ kill / cancel
    def killed(self, aid: int) -> None:
        """kill(no_restart=True) was sent: later calls go the node's way, which fails them."""
        with self.lock:
            ch = self._chan(aid)
            ch.killed = True
            self._pump(ch)

    def cancel(self, tid: int) -> None:
        with self.lock:
            ch, rec = self.calls.get(tid, (None, None))
            if ch is None:
                return
            if tid in ch.inflight:  # the actor drops it if queued there, and reports
                if ch.ring is not None:  # (never blocks: with a full ring it just runs)
                    ch.ring.try_push(pickle.dumps([(P.DROP, tid)], protocol=5))
                    ch.bell.ring()
                return
            try:
                ch.queue.remove(rec)
            except ValueError:
                return
            self.backlog -= 1
            self.calls.pop(tid, None)
            self._fail(rec, pickle.dumps(exc.TaskCancelledError(P.id_hex(tid)), protocol=5))
            self._pump(ch)

    def close(self) -> None:
        for ch in self.chans.values():
            self._drop_ring(ch)
        self.chans.clear()

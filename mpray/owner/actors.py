"""The owner's calls to actors: straight into an actor's mailbox ring when possible (pure).

A composed part of ``owner.Owner`` (it uses the owner's declared interface: ``out``,
``owned``, ``direct_values``, ``values_by_node``, ``fail_returns``, ``publish``,
``to_node``, ``values``, ``proc``, ``rank``, ``mailbox``, ``budget``, ``max_frame``).
Data flow::

    SubmitCall ─▶ the actor's channel here (submission order)
        head call, actor ALIVE with a slot, its args' values here, no refs inside
            ─▶ ToSlot(ACall) ─▶ actor ─▶ ADoneD (+ values) on its ring
        anything else (refs inside the args, args not here, no mailbox, killed, dead)
            ─▶ ToNode(Submit) ─▶ the node's per-caller FIFO ─▶ … ─▶ ANodeDone
    node ─▶ ActorUpdate (ALIVE / RESTARTING / DEAD / KILLED) ─▶ on_update

Calls from one caller must run in submission order, and the two paths would race, so a
call takes a path only when no call of this actor is in flight on the other one (a
fence; rare in practice: refs inside arguments, or a constructor still running).  An
actor that runs calls concurrently (threads, asyncio, concurrency groups) keeps no
order between them, as in Ray: its calls (their holds carry ``Unordered``) skip the
fence, so one that waits for its arguments at the node never waits for a direct call
that may itself wait for a later one (an ``asyncio.Event`` that a later call sets).  When
the actor's process dies, calls in flight are sent again after the restart while
``max_task_retries`` allows, and fail with ``ActorUnavailableError`` (restarting) or
``ActorDiedError`` (dead) otherwise.
"""

from __future__ import annotations

import collections
import pickle

from .. import exceptions as exc
from .. import protocol as P
from ..store.serialization import ERROR
from ..states import CHANNEL_TRANSITIONS, OW, C, _move


# (built from all their items, in FIELDS order, without a Python-level call: hot)
_slot_msg, _acall, _ACALL = P.ToSlot.from_items, P.ACall.from_items, P.ACall.OP
_PENDING = OW.PENDING


class Unordered:
    """The actor's anchor, as the calls to an actor that runs them concurrently hold it
    (the handle makes one per method; the anchor stays alive while a call holds it)."""

    __slots__ = ("anchor",)

    def __init__(self, anchor) -> None:
        self.anchor = anchor


class Call:
    __slots__ = ("spec", "hold", "retries", "cost")

    def __init__(self, spec, hold) -> None:
        self.spec = spec
        # (what the call reads, the actor's anchor or Unordered(anchor), and maybe its
        # arguments: alive until done)
        self.hold = hold
        self.retries = spec.retries
        self.cost = 0


class Channel:
    """What the owner knows of one actor."""

    __slots__ = ("key", "state", "history", "inc", "slot", "queue", "inflight",
                 "node_calls", "killed", "death", "bytes", "elsewhere", "unordered")

    def __init__(self, aid: int, elsewhere: bool) -> None:
        self.key = aid
        self.elsewhere = elsewhere  # (MPI) it lives on another rank: calls go by the node
        self.state = C.UNKNOWN
        self.history = [C.UNKNOWN]
        self.inc = -1
        self.slot: int | None = None  # its mailbox slot (None: calls go through the node)
        self.queue: collections.deque[Call] = collections.deque()  # not sent yet
        self.inflight: dict[int, Call] = {}  # sent direct, not done
        self.node_calls: set[int] = set()  # sent through the node, not done
        self.killed = False
        self.death: bytes | None = None
        self.bytes = 0  # message bytes in flight in its ring
        self.unordered = False  # it runs calls concurrently: no fence between the paths


def resolve(value_of, deps: tuple):
    """Deps as (pos, oid, kind, payload) when every value is here and not an error
    (``value_of``: oid -> (kind, payload) or None)."""
    if not deps:
        return ()
    out = []
    for pos, oid in deps:
        v = value_of(oid)
        if v is None or v[0] == ERROR:
            return None
        out.append((pos, oid, v[0], v[1]))
    return tuple(out)


class ActorChannels:
    """Every actor as the owner sees it, and the calls it sends them."""

    def __init__(self, owner) -> None:
        self.o = owner
        self.chans: dict[int, Channel] = {}
        self.calls: dict[int, tuple[Channel, Call]] = {}  # tid -> queued or sent direct
        self.backlog = 0  # calls queued here: the shell keeps pumping while there are

    def _chan(self, aid: int) -> Channel:
        ch = self.chans.get(aid)
        if ch is None:
            ch = self.chans[aid] = Channel(aid, P.id_rank(aid) != self.o.rank)
        return ch

    def live_returns(self) -> set[int]:
        """Return ids of the calls queued or in flight here (for the invariants)."""
        return {oid for tid, (_ch, call) in self.calls.items()
                for oid in P.return_ids(tid, call.spec.nret)}

    # ------------------------------------------------------------------ submit
    def submit(self, ev) -> None:
        """Queue a call (its ObjectRefs exist already) and send what can go."""
        spec = ev.spec
        o = self.o
        if not o.direct_calls:  # (a worker's calls: the node orders them per caller)
            o.to_node(spec)
            return
        ch = self.chans.get(spec.actor) or self._chan(spec.actor)
        call = Call(spec, ev.hold)
        if ch.elsewhere:  # (MPI) an actor of another rank: the node routes it
            self._via_node(ch, call)
            return
        tid = spec.tid
        owned = o.owned
        for oid in range(tid + 1, tid + 1 + spec.nret):  # (its returns: PENDING)
            owned[oid] = _PENDING
        self.calls[tid] = (ch, call)
        if (not ch.queue and ch.slot is not None and not ch.node_calls and not ch.killed
                and not spec.deps and not spec.contained and self._push(ch, call, ())):
            return  # the common case: straight into the actor's ring
        hold = ev.hold
        if not ch.unordered and hold and len(hold) > 1 and type(hold[1]) is Unordered:
            ch.unordered = True
        ch.queue.append(call)
        self.backlog += 1
        self._pump(ch)

    def _pump(self, ch: Channel) -> None:
        q = ch.queue
        while q:
            if ch.state is C.UNKNOWN or ch.state is C.RESTARTING:
                return  # sent once it is alive (in order)
            call = q[0]
            spec = call.spec
            if ch.state is C.DEAD or ch.killed or ch.slot is None or spec.contained:
                deps = None
            else:
                deps = resolve(self.o.value_of, spec.deps)
            if deps is not None:
                if ch.node_calls and not ch.unordered:
                    return  # fence: the node's calls before it must end first
                sent = self._push(ch, call, deps)
                if sent is None:
                    return  # its ring is full: sent again as results come back
                if not sent:  # too large for the mailbox: the node's rings fragment
                    if ch.inflight and not ch.unordered:
                        return
                    self._via_node(ch, call)
            else:
                if ch.inflight and not ch.unordered:
                    return  # fence: the direct calls before it must end first
                self._via_node(ch, call)
            q.popleft()
            self.backlog -= 1

    def _push(self, ch: Channel, call: Call, deps: tuple) -> bool | None:
        spec = call.spec
        o = self.o
        cost = message_cost(spec.args, spec.name, None, deps) if deps else \
            len(spec.args) + len(spec.name) + FRAME_SLACK
        if type(spec.retry_exc) is bytes:  # (pickled exception classes ride along)
            cost += len(spec.retry_exc)
        if cost > o.max_frame:
            return False
        if ch.bytes + cost > o.budget:
            return None
        ch.bytes += cost
        call.cost = cost
        ch.inflight[spec.tid] = call
        o.out.append(_slot_msg((ch.slot, _acall((
            _ACALL, spec.tid, spec.method, spec.args, deps, spec.nret, spec.retry_exc,
            o.proc, call.retries, ch.key, ch.inc, True, spec.stream)))))
        return True

    def _via_node(self, ch: Channel, call: Call) -> None:
        spec = call.spec
        o = self.o
        self.calls.pop(spec.tid, None)
        if call.retries != spec.retries:
            spec = spec._replace(retries=call.retries)
        ch.node_calls.add(spec.tid)
        o.to_node(spec)
        # the node registers the returns now: they are its objects from here on
        for oid in P.return_ids(spec.tid, spec.nret):
            if oid in o.owned:
                o._disown(oid)
                if oid in o.dropped:
                    o.dropped.discard(oid)
                    o.out.append(P.Release((oid,), True))
        call.hold = None

    # ------------------------------------------------------------------ events
    def on_done(self, m) -> None:
        """A direct call ended; its values came with it (or come from the node: None)."""
        ch, call = self.calls.pop(m.tid, (None, None))
        o = self.o
        if call is not None and m.tid not in ch.inflight and call in ch.queue:
            ch.queue.remove(call)  # (a late report of a call queued again: it did run)
            self.backlog -= 1
        if m.values:
            o.direct_values(m.values)
        if call is not None:
            if m.values is None:
                o.values_by_node(m.tid, call.spec.nret)
            call.hold = None
            if ch.inflight.pop(m.tid, None) is not None:
                ch.bytes -= call.cost
            if ch.queue:
                self._pump(ch)

    def on_node_done(self, m) -> None:
        ch = self.chans.get(m.aid)
        if ch is not None:
            ch.node_calls.discard(m.tid)
            self._pump(ch)

    def on_update(self, m) -> None:
        ch = self._chan(m.aid)
        state = m.state
        if state == "KILLED":
            ch.killed = True
        elif state == "ALIVE":
            self._move(ch, C.ALIVE)
            ch.inc = m.incarnation
            ch.slot = m.slot if self.o.mailbox else None
        else:  # RESTARTING / DEAD
            ch.slot = None
            self._move(ch, C.RESTARTING if state == "RESTARTING" else C.DEAD)
            ch.death = m.death
            self._lost(ch, state == "RESTARTING")
        self._pump(ch)

    @staticmethod
    def _move(ch: Channel, new: C) -> None:
        if ch.state is not new:  # (the node may announce a restart more than once)
            _move(ch, new, CHANNEL_TRANSITIONS, "actor channel")

    def _lost(self, ch: Channel, restarting: bool) -> None:
        """Its process died: retry (in order, at the front) or fail what was in flight."""
        retry = []
        o = self.o
        for tid, call in sorted(ch.inflight.items()):
            nret = call.spec.nret
            if restarting and call.retries != 0:
                call.retries -= 1
                retry.append(call)
                continue
            self.calls.pop(tid, None)
            cls = exc.ActorUnavailableError if restarting else exc.ActorDiedError
            msg = (f"The actor ({P.id_hex(ch.key)}) died while running {call.spec.name}; "
                   + ("it is being restarted (max_task_retries allowed no retry)"
                      if restarting else "it is dead"))
            if ch.death is not None and not restarting:
                msg += f": {pickle.loads(ch.death)}"
            o.fail_returns(tid, nret, cls(msg, actor_id=P.id_hex(ch.key)))
            call.hold = None
        ch.inflight.clear()
        ch.bytes = 0
        for call in reversed(retry):
            ch.queue.appendleft(call)
            self.backlog += 1

    # ------------------------------------------------------------------ kill / cancel
    def pending_call(self, tid: int) -> bool:
        """Is ``tid`` a call of this owner's that has not ended (queued, in flight, or
        at the node)?  A query other threads may make (``cancel``): reads only."""
        if tid in self.calls:
            return True
        return any(tid in ch.node_calls for ch in list(self.chans.values()))

    def killed(self, ev) -> None:
        ch = self._chan(ev.aid)
        ch.killed = True
        self._pump(ch)

    def cancel(self, tid: int) -> None:
        ch, call = self.calls.get(tid, (None, None))
        if ch is None:
            return
        o = self.o
        if tid in ch.inflight:  # the actor drops it if queued there, and reports
            if ch.slot is not None:
                o.out.append(P.ToSlot(ch.slot, P.Drop(tid)))
            return
        ch.queue.remove(call)
        self.backlog -= 1
        self.calls.pop(tid, None)
        o.fail_returns(tid, call.spec.nret, exc.TaskCancelledError(P.id_hex(tid)))
        call.hold = None
        self._pump(ch)

    # ------------------------------------------------------------------ invariants
    def check_invariants(self) -> None:
        queued = 0
        for aid, ch in self.chans.items():
            assert ch.key == aid
            queued += len(ch.queue)
            assert ch.bytes == sum(c.cost for c in ch.inflight.values()), aid
            assert ch.bytes <= self.o.budget, (aid, ch.bytes)
            if ch.inflight and not ch.unordered:
                assert not ch.node_calls, f"actor {aid}: calls in flight on both paths"
            for call in ch.queue:
                assert self.calls.get(call.spec.tid, (None, None))[1] is call, call.spec.tid
                assert call.spec.tid not in ch.inflight
            for tid, call in ch.inflight.items():
                assert self.calls.get(tid, (None, None))[1] is call, tid
        assert queued == self.backlog, (queued, self.backlog)
        assert len(self.calls) == queued + sum(len(ch.inflight) for ch in self.chans.values())


FRAME_SLACK = 96  # bytes a message adds to its arguments and name in a ring (pickled
#                  ints, ids and flags, the frame header and alignment: about 60)


def message_cost(args: bytes, name: str, fblob, deps) -> int:
    """Bytes a task's or call's message takes in a ring (an estimate from above)."""
    n = len(args) + len(name) + FRAME_SLACK + (len(fblob) if fblob else 0)
    for d in deps:
        payload = d[3]
        n += 48 + (len(payload) if type(payload) is bytes else 64)
    return n

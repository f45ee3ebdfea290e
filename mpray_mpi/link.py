"""A rank's link to the other ranks: what its MPI agent decides, as a pure state machine.

No MPI, no threads, no I/O: ``RankLink.handle(event, src)`` takes one message (from this
rank's node, or from the agent of rank ``src``) or one of the agent loop's own events and
returns the instructions it causes, in the order the loop (``agent.Agent``) must carry
them out.  The loop owns the windows, the rings and the clock; this machine owns the
bookkeeping: holds lent away, tasks forwarded each way, values being served and brought
in, allocations waited for, the export window's free space, and stop.

Data flow::

    events                                          instructions (carried out in order)
    ──────                                          ───────────────────────────────────
    node:  Fwd Cancel Unlend ToRank Fetch      ─▶   ToNodeMsg(msg)          to the node
           Obj AllocOk Reply                        ToRankMsg(rank, msg)    to that agent
    ranks: RTask RFetch RValue RDone RNode     ─▶   CopyToExport(off, woff, total)
           RUnlend RFreeExp RRelease                ReadBytes(off, total, buf)
           RStop RStopped          (with src)       RmaGet(window, src, soff, off, total)
    loop:  LinkHello LoadDue StopRanks         ─▶   WriteBytes(off, data)
           RankStopped                              ShareLoad(load)

A value another rank reads (``RFetch``, or a forwarded task's result going home) is
shipped as its payload (INLINE/ERROR), or for an ARENA value as a descriptor: where the
reader ``Get``s it (``ArenaDesc``: this rank's arena window; ``WinDesc``: a copy in the
export window) or the bytes themselves (``BytesDesc``, when the export window is full).
The hold that keeps the value here (``PinToken``/``RefToken``) goes once the bytes are
safe: at once when they were copied, else on the reader's ``RRelease``.

A value coming here (``RValue``, ``RDone``) that needs arena space is an ``Import``
waiting for the node's ``AllocOk``; then its bytes land (``RmaGet``/``WriteBytes``) before
the node hears of it (``Put``, or ``RemoteDone`` once all of a task's results are in),
and the home rank hears it may let go (``RRelease``/``RFreeExp``).
"""

from __future__ import annotations

import collections
import pickle

from mpray import exceptions as exc
from mpray import protocol as P
from mpray.store.allocator import Allocator, ArenaFull
from mpray.store.serialization import ARENA, ERROR

# (module-level names for what every message's handling uses; the hot handlers build
# instructions with tuple.__new__, which skips the records' generated constructors)
_ToNode, _ToRank = P.ToNodeMsg, P.ToRankMsg
_new = tuple.__new__


class Import:
    """A value coming into this rank's arena, waiting for the node's ``AllocOk``: a
    fetched value (``tid`` None) or result ``index`` of task ``tid`` forwarded from here."""

    __slots__ = ("oid", "desc", "contained", "lent", "src", "tid", "index")

    def __init__(self, oid: int, desc, contained, lent, src: int, tid=None, index=0) -> None:
        self.oid = oid
        self.desc = desc
        self.contained = contained
        self.lent = lent
        self.src = src
        self.tid = tid
        self.index = index


class Collect:
    """The results of a task this rank forwarded, coming home one by one."""

    __slots__ = ("src", "got", "missing")

    def __init__(self, src: int, n: int) -> None:
        self.src = src
        self.got: list = [None] * n  # (oid, kind, payload, contained, lent) as they land
        self.missing = n


class RankLink:
    """One rank's agent machine (see the module docstring)."""

    def __init__(self, rank: int, size: int, *, arena_window: bool,
                 export_bytes: int = 0) -> None:
        self.rank = rank
        self.size = size
        # where other ranks read this rank's values: its arena (an MPI window), else
        # copies in an export window of export_bytes
        self.arena_window = arena_window
        self.export_alloc = Allocator(0 if arena_window else export_bytes)
        self.exported: dict[int, int] = {}  # export window offset -> the reader's rank
        # forwarded from here: tid -> the rank it runs on (until its RDone)
        self.where: dict[int, int] = {}
        # forwarded here: tid -> [origin, nret, results so far]; return oid -> tid
        self.inbound: dict[int, list] = {}
        self.result_of: dict[int, int] = {}
        self.keep: set[int] = set()  # anchors of actors placed here by other ranks
        self.lent: collections.Counter = collections.Counter()  # oid -> holds lent away
        self.serving: dict[int, list] = collections.defaultdict(list)  # oid -> askers
        self.pins: collections.Counter = collections.Counter()  # oid -> pins for readers
        # holds out with readers that Get straight from the arena (until their RRelease):
        # oid -> readers holding a pin; a forwarded task's result oid -> 1 (its ref)
        self.reading_pins: collections.Counter = collections.Counter()
        self.reading_refs: collections.Counter = collections.Counter()
        self.waiting_alloc: dict[int, Import] = {}  # Alloc req -> what it is for
        self.collecting: dict[int, Collect] = {}  # tid -> its results coming home
        self._req = 0
        self.hello_req: int | None = None
        self.load_reqs: set[int] = set()
        self.stopped: set[int] = set()  # ranks that answered RStop
        self.stop_requested = False
        self.out: list = []
        self._on = {
            P.Fwd: self._fwd, P.Cancel: self._cancel, P.Unlend: self._unlend,
            P.ToRank: self._to_rank, P.Fetch: self._fetch, P.Obj: self._obj,
            P.AllocOk: self._alloc_ok, P.Reply: self._reply,
            P.RTask: self._rtask, P.RFetch: self._rfetch, P.RValue: self._rvalue,
            P.RDone: self._rdone, P.RNode: self._rnode, P.RStream: self._rnode,
            P.RLogs: self._rlogs,
            P.RUnlend: self._runlend,
            P.RFreeExp: self._rfreeexp, P.RRelease: self._rrelease,
            P.RStop: self._rstop, P.RStopped: self._rstopped,
            P.LinkHello: self._hello, P.LoadDue: self._load_due,
            P.StopRanks: self._stop_ranks, P.RankStopped: self._rank_stopped,
        }

    def handle(self, ev, src: int = -1) -> list:
        """One event in (``src``: the rank a rank message came from), the instructions
        it causes out, in the order to carry them out."""
        self.out = out = []
        self._on[type(ev)](ev, src)
        return out

    def _new_req(self) -> int:
        self._req += 1
        return self._req

    # ------------------------------------------------------------------ from the node
    def _fwd(self, m, _src) -> None:
        spec = m.spec
        self.where[spec.tid] = m.rank
        # the refs inside its arguments go with a hold each, lent by this rank (the task
        # there may keep them: in an actor's state, say)
        lent = tuple(spec.contained)
        if lent:
            self._lend(lent)
        self.out.append(_new(_ToRank, (m.rank, P.RTask(spec, m.blob, lent))))

    def _cancel(self, m, _src) -> None:
        """A task this rank forwarded: cancel it where it runs."""
        rank = self.where.get(m.tid)
        if rank is not None:
            self.out.append(_ToRank(rank, P.RNode(m)))

    def _unlend(self, m, _src) -> None:
        """A hold another rank lent this one: give it back."""
        self.out.append(_ToRank(m.rank, P.RUnlend(m.oid)))

    def _to_rank(self, m, _src) -> None:
        """A message for another rank's node (kills, actor names, a stream's values)."""
        for c in m.lent:
            self.lent[c] += 1  # (the node took the hold itself: no Lend)
        # a stream's values and end must reach its home before the task's RDone (which
        # ends the task there, after which they would find no task): they take RDone's
        # channel, MPI keeps a channel's messages in order; the rest keep the inbox's
        # order with the tasks (a kill after its actor's creation)
        wrap = P.RStream if type(m.msg) is P.StreamLent else P.RNode
        self.out.append(_ToRank(m.rank, wrap(m.msg)))

    def _fetch(self, m, _src) -> None:
        self.out.append(_ToRank(P.id_rank(m.oid), P.RFetch(m.oid)))

    def _reply(self, m, _src) -> None:
        """The node's load (other replies, e.g. to a forwarded named creation: none)."""
        if m.req == self.hello_req:
            self.hello_req = None
        if m.req in self.load_reqs:
            self.load_reqs.discard(m.req)
            self.out.append(P.ShareLoad(m.data))

    # ------------------------------------------------------------------ values going out
    def _obj(self, m, _src) -> None:
        """A value this rank waited for: a forwarded task's result, or one to serve."""
        tid = self.result_of.pop(m.oid, None)
        if tid is not None:
            rec = self.inbound.get(tid)
            if rec is not None:
                self._result(rec, tid, m)
        if m.oid in self.serving:
            self._serve(m)

    def _result(self, rec: list, tid: int, m) -> None:
        """A result of a task forwarded here: it goes home with the others (RDone)."""
        # this rank's hold on the result goes when its reader has it; the refs it holds
        # go home with a hold each, lent by this rank (the home rank gives them back as
        # its refs go).  An actor's anchor stays held here (its creator sends the kill).
        oid, kind, desc, contains = m.oid, m.kind, m.payload, tuple(m.contains)
        if oid in self.keep:
            lent = ()
            if kind == ARENA:
                desc = self._ship(desc, None, rec[0])
        else:
            if contains:
                self._lend(contains)
            lent = contains
            if kind == ARENA:
                desc = self._ship(desc, P.RefToken(oid), rec[0])
            else:  # (the value is in the message: the hold can go now)
                self.out.append(_new(_ToNode, (P.Refs((), [oid]),)))
        results = rec[2]
        results.append((oid, kind, desc, contains, lent))
        if len(results) == rec[1]:
            del self.inbound[tid]
            self.out.append(_new(_ToRank, (rec[0], P.RDone(tid, results))))

    def _serve(self, m) -> None:
        """Each rank that asked for this value gets it, with a hold on each ref inside
        (as results do); the pin taken for that reader goes once it has the bytes."""
        oid, kind, contains = m.oid, m.kind, tuple(m.contains)
        for r in self.serving.pop(oid):
            self._lend(contains)
            token = P.PinToken(oid)
            if kind == ARENA:
                desc = self._ship(m.payload, token, r)
            else:
                desc = m.payload
                self._release(token)
            self.out.append(_ToRank(r, P.RValue(oid, kind, desc, contains, contains)))

    def _ship(self, payload, release, reader: int):
        """Where ``reader`` finds an ARENA value's bytes (``release``: the hold to drop
        here once they are safe: now if they are copied, else on the reader's
        RRelease)."""
        if self.arena_window:  # read straight from this rank's arena
            if type(release) is P.PinToken:
                self.reading_pins[release.oid] += 1
            elif release is not None:
                self.reading_refs[release.oid] += 1
            return P.ArenaDesc(self.rank, payload, release)
        off, hlen, places, total = payload
        try:
            if total > self.export_alloc.size:
                raise ArenaFull("larger than the export window")
            woff = self.export_alloc.alloc(total)
        except ArenaFull:  # the window is busy or too small: the bytes in the message
            buf = bytearray()
            self.out.append(P.ReadBytes(off, total, buf))
            self._release(release)
            return P.BytesDesc(buf, payload)
        self.exported[woff] = reader
        self.out.append(P.CopyToExport(off, woff, total))
        self._release(release)  # (after the copy: the node may reuse the space then)
        return P.WinDesc(self.rank, woff, (0, hlen, places, total))

    def _lend(self, oids) -> None:
        lent = self.lent
        new = [c for c in oids if not lent[c]]
        for c in oids:
            lent[c] += 1
        if new:  # (before the release of what refers to them: one FIFO to the node)
            self.out.append(_ToNode(P.Lend(new, ())))

    def _release(self, token) -> None:
        """Drop a hold taken for a reader on another rank."""
        if token is None:
            return
        if type(token) is P.PinToken:
            self.pins[token.oid] -= 1
            if not self.pins[token.oid]:
                del self.pins[token.oid]
            self.out.append(_ToNode(P.Unpin([token.oid])))
        else:
            self.out.append(_ToNode(P.Refs((), [token.oid])))

    # ------------------------------------------------------------------ from other ranks
    def _rtask(self, msg, src: int) -> None:
        spec = msg.spec
        tid = spec.tid
        self.inbound[tid] = [src, spec.nret, []]
        if spec.create is not None:  # an actor placed here: its anchor stays held
            self.keep.add(tid + 1)  # (its creator's rank sends the kill)
        for oid in P.spec_returns(spec):
            self.result_of[oid] = tid
        out = self.out
        if msg.lent:
            out.append(_ToNode(P.Borrowed(msg.lent, src)))
        if msg.blob is not None:
            out.append(_ToNode(P.Func(spec.fid, msg.blob)))
        out.append(_new(_ToNode, (P.Submit(spec),)))

    def _rfetch(self, msg, src: int) -> None:
        oid = msg.oid
        self.serving[oid].append(src)
        self.pins[oid] += 1
        # pin first (one per asker): the value must stay until that reader has it
        self.out.append(_ToNode(P.Pin([oid])))
        self.out.append(_ToNode(P.Subscribe([oid])))

    def _rnode(self, msg, _src) -> None:
        """A message for this rank's node (cancel, kill, names)."""
        self.out.append(_ToNode(msg.msg))

    def _rlogs(self, msg, _src) -> None:
        self.out.append(P.PrintLogs(msg.lines))

    def _runlend(self, msg, _src) -> None:
        oid = msg.oid
        self.lent[oid] -= 1
        if self.lent[oid] <= 0:
            del self.lent[oid]
            self.out.append(_ToNode(P.Lend((), [oid])))

    def _rfreeexp(self, msg, _src) -> None:
        del self.exported[msg.woff]
        self.export_alloc.free(msg.woff)

    def _rrelease(self, msg, _src) -> None:
        token = msg.token
        reading = self.reading_pins if type(token) is P.PinToken else self.reading_refs
        reading[token.oid] -= 1
        if not reading[token.oid]:
            del reading[token.oid]
        self._release(token)

    def _rstop(self, _msg, _src) -> None:
        self.stop_requested = True

    def _rstopped(self, _msg, src: int) -> None:
        self.stopped.add(src)

    # ------------------------------------------------------------------ values coming in
    def _rvalue(self, msg, src: int) -> None:
        imp = Import(msg.oid, msg.desc, msg.contained, msg.lent, src)
        if msg.kind != ARENA:
            self._landed(imp, msg.kind, msg.desc)
        else:
            self._want_space(imp)

    def _rdone(self, msg, src: int) -> None:
        """A task this rank forwarded ended on ``src``: bring its values home."""
        tid, results = msg.tid, msg.results
        self.where.pop(tid, None)
        if all(r[1] != ARENA for r in results):  # all in the message: home at once
            self.out.append(_new(_ToNode, (P.RemoteDone(tid, results, src),)))
            return
        self.collecting[tid] = Collect(src, len(results))
        for i, (oid, kind, desc, contained, lent) in enumerate(results):
            imp = Import(oid, desc, contained, lent, src, tid, i)
            if kind != ARENA:
                self._landed(imp, kind, desc)
            else:
                self._want_space(imp)

    def _want_space(self, imp: Import) -> None:
        req = self._new_req()
        self.waiting_alloc[req] = imp
        self.out.append(_ToNode(P.Alloc(req, imp.desc.payload[3])))

    def _alloc_ok(self, m, _src) -> None:
        """Space for an import (or none): its bytes land, then the node hears of it,
        then the home rank may let go (even with no space: it must not hold forever)."""
        imp = self.waiting_alloc.pop(m.req)
        desc = imp.desc
        hlen, places, total = desc.payload[1:]
        kind = type(desc)
        if m.offset is None:
            self._landed(imp, ERROR, _store_full(total, m.error))
        else:
            if kind is P.ArenaDesc:  # straight from the home rank's arena window
                self.out.append(P.RmaGet("arena", desc.rank, desc.payload[0], m.offset,
                                         total))
            elif kind is P.WinDesc:  # from the home rank's export window
                self.out.append(P.RmaGet("export", desc.rank, desc.woff, m.offset, total))
            else:  # the bytes came in the message
                self.out.append(P.WriteBytes(m.offset, desc.data))
            self._landed(imp, ARENA, (m.offset, hlen, places, total))
        if kind is P.ArenaDesc:
            if desc.release is not None:
                self.out.append(_ToRank(imp.src, P.RRelease(desc.release)))
        elif kind is P.WinDesc:
            self.out.append(_ToRank(imp.src, P.RFreeExp(desc.woff)))

    def _landed(self, imp: Import, kind: int, payload) -> None:
        """An imported value is here (in the arena, or its payload): tell the node."""
        if imp.tid is None:
            if imp.lent:
                self.out.append(_ToNode(P.Borrowed(imp.lent, imp.src)))
            self.out.append(_ToNode(P.Put(imp.oid, kind, payload, imp.contained)))
            return
        c = self.collecting[imp.tid]
        c.got[imp.index] = (imp.oid, kind, payload, imp.contained, imp.lent)
        c.missing -= 1
        if not c.missing:
            del self.collecting[imp.tid]
            self.out.append(_ToNode(P.RemoteDone(imp.tid, c.got, c.src)))

    # ------------------------------------------------------------------ the loop's events
    def _hello(self, ev, _src) -> None:
        """Give the node the ranks and ask its load: once it answers, it has them."""
        req = self._new_req()
        self.hello_req = req
        self.load_reqs.add(req)
        self.out.append(_ToNode(P.ClusterInfo(self.rank, list(ev.ranks))))
        self.out.append(_ToNode(P.Query(req, "load")))

    def _load_due(self, _ev, _src) -> None:
        req = self._new_req()
        self.load_reqs.add(req)
        self.out.append(_ToNode(P.Query(req, "load")))

    def _stop_ranks(self, _ev, _src) -> None:
        for r in range(1, self.size):
            self.out.append(_ToRank(r, P.RStop()))

    def _rank_stopped(self, _ev, _src) -> None:
        self.out.append(_ToRank(0, P.RStopped()))

    # ------------------------------------------------------------------ checks
    def check_invariants(self) -> None:
        """What must hold between events (the pure tests call this after each one)."""
        assert all(n > 0 for n in self.lent.values()), "a lent hold count went to 0 or below"
        for tid, (origin, nret, results) in self.inbound.items():
            waiting = sum(1 for t in self.result_of.values() if t == tid)
            assert waiting + len(results) == nret, f"task {tid}: results lost or doubled"
            # (a call with no returns never ends here: as before, nothing goes home)
            assert len(results) < nret or nret == 0, tid
            assert 0 <= origin < self.size, tid
        assert set(self.result_of.values()) <= set(self.inbound), "a result of no task"
        # each reader of a value holds one pin until it is shipped or, read straight
        # from the arena, until its RRelease: no value is served twice, none forgotten
        for oid, n in self.pins.items():
            out = self.reading_pins.get(oid, 0)
            assert n == len(self.serving.get(oid, ())) + out > 0, f"pins of {oid}"
        assert all(not v or oid in self.pins for oid, v in self.serving.items())
        assert set(self.reading_pins) <= set(self.pins), "a pin read but not held"
        for oid, n in self.reading_refs.items():
            assert n == 1, f"result {oid} shipped twice"
            assert oid not in self.result_of, f"result {oid} shipped before it came"
        assert set(self.exported) == set(self.export_alloc.live_ranges()), "export slots"
        self._check_imports()
        assert self.hello_req is None or self.hello_req in self.load_reqs
        assert self.stopped <= set(range(1, self.size)), self.stopped

    def _check_imports(self) -> None:
        pending = collections.Counter()
        for req, imp in self.waiting_alloc.items():
            assert 0 < req <= self._req, req
            assert type(imp.desc) in (P.ArenaDesc, P.WinDesc, P.BytesDesc), imp.desc
            if imp.tid is not None:
                c = self.collecting.get(imp.tid)
                assert c is not None and c.got[imp.index] is None, (imp.tid, imp.index)
                pending[imp.tid] += 1
        for tid, c in self.collecting.items():
            assert c.missing == pending[tid] > 0, f"task {tid}: a result not waited for"
            assert tid not in self.where, f"task {tid} ended but still forwarded"


def _store_full(total: int, err) -> bytes:
    return pickle.dumps(exc.ObjectStoreFullError(
        f"cannot bring an object of {total} bytes from another rank into this rank's "
        f"object store: {err}"), protocol=5)

"""Tests for mpray_mpi.link: a rank's agent machine, driven event by event.

No MPI and no processes: each rank is a ``RankLink`` in a small ``World`` that plays the
agent loops (it carries out the instructions on plain bytearrays standing for the arena
and export windows, and routes rank messages through real frames, so descriptors must
arrive typed); the tests play the nodes.  ``check_invariants()`` runs after every event,
and the harness checks from outside that the holds a link counts as lent are exactly
those that left in messages and have not come back, and that every import waiting for
space has its ``Alloc`` at the node.
"""

from __future__ import annotations

import collections
import pickle

import pytest

from mpray import exceptions as exc
from mpray import protocol as P
from mpray.store.serialization import ARENA, ERROR, INLINE
from mpray_mpi.agent import INBOX_KINDS
from mpray_mpi.link import RankLink

CPU1 = (("CPU", 1.0),)
ARENA_BYTES = 1 << 16


def oid_of(rank: int, n: int) -> int:
    return P.id_base(rank, 1) + n


def spec(tid, *, nret=1, contained=(), create=None):
    return P.TaskSpec(tid, 7, "f", b"args", (), nret, CPU1, 0, False, tuple(contained), None,
                      create=create)


def payload(off, total, hlen=16):
    """An ARENA payload: (offset, header length, ((rel offset, nbytes),), total)."""
    return (off, hlen, ((hlen, total - hlen),), total)


def through_a_frame(msg):
    """As the receiver sees it (the loop encodes batches; nested frames in RBatch)."""
    (batch,) = P.decode(P.encode([P.RBatch(P.encode([msg]))]))
    (back,) = P.decode(batch.msgs)
    return back


class Rank:
    """One rank's link, its fake loop, and what its node got."""

    def __init__(self, world, rank, arena_window, export_bytes):
        self.world = world
        self.rank = rank
        self.l = RankLink(rank, world.size, arena_window=arena_window,
                          export_bytes=export_bytes)
        self.arena = bytearray(ARENA_BYTES)
        self.export = bytearray(export_bytes)
        self.node: list = []  # messages to this rank's node, in order
        self.log: list = []  # every instruction, in order
        self.loads: list = []
        self.allocs: dict[int, int] = {}  # Alloc req -> nbytes, as the node got them
        self.lent_out: collections.Counter = collections.Counter()  # seen leave, not back
        self.forwarded: dict[int, int] = {}  # tid -> rank, from its Fwd to its RDone
        self.node_lent: set = set()  # what the node counts a LENT_HOLDER on

    def ev(self, e, src=-1):
        if e.OP is not None and src == -1:  # a node message: as the loop reads it
            (e,) = P.decode(P.encode([e]))
        if type(e) is P.ToRank:
            self.lent_out.update(e.lent)  # (the node took these holds itself)
            self.node_lent.update(e.lent)
        elif type(e) is P.RUnlend:
            self.lent_out[e.oid] -= 1
        elif type(e) is P.Fwd:
            self.forwarded[e.spec.tid] = e.rank
        elif type(e) is P.RDone:
            self.forwarded.pop(e.tid, None)
        out = self.l.handle(e, src)
        self.l.check_invariants()
        for ins in out:
            self.log.append(ins)
            self._carry_out(ins)
        self._check_holds()
        return out

    def _carry_out(self, ins):
        kind = type(ins)
        if kind is P.ToNodeMsg:
            (m,) = P.decode(P.encode([ins.msg]))
            self.node.append(m)
            if type(m) is P.Alloc:
                self.allocs[m.req] = m.nbytes
            elif type(m) is P.Lend:
                self.node_lent.update(m.adds)
                self.node_lent.difference_update(m.removes)
        elif kind is P.ToRankMsg:
            self.lent_out.update(lent_in(ins.msg))
            self.world.wire.append((self.rank, ins.rank, through_a_frame(ins.msg)))
        elif kind is P.CopyToExport:
            self.export[ins.woff: ins.woff + ins.total] = self.arena[ins.off: ins.off + ins.total]
        elif kind is P.ReadBytes:
            ins.buf[:] = self.arena[ins.off: ins.off + ins.total]
        elif kind is P.RmaGet:
            home = self.world.ranks[ins.src]
            win = home.arena if ins.window == "arena" else home.export
            self.arena[ins.off: ins.off + ins.total] = win[ins.soff: ins.soff + ins.total]
        elif kind is P.WriteBytes:
            self.arena[ins.off: ins.off + len(ins.data)] = ins.data
        elif kind is P.ShareLoad:
            self.loads.append(ins.load)
        else:
            raise AssertionError(f"unknown instruction {ins!r}")

    def _check_holds(self):
        """Holds lent add up: as counted, as sent, and as the node sees them; every
        forwarded task is known where it went until its RDone; every import waiting for
        space has its Alloc at the node."""
        assert self.l.where == self.forwarded, (self.l.where, self.forwarded)
        sent = +self.lent_out
        for _origin, _n, results in self.l.inbound.values():  # (taken, leaving with RDone)
            sent.update(c for r in results for c in r[4])
        assert dict(self.l.lent) == dict(sent), (self.l.lent, sent)
        assert self.node_lent == set(self.l.lent), (self.node_lent, self.l.lent)
        for req, imp in self.l.waiting_alloc.items():
            assert self.allocs.get(req) == imp.desc.payload[3], (req, self.allocs)

    def take_node(self):
        out, self.node = self.node, []
        return out

    def kinds(self):
        return [type(m) for m in self.node]


def lent_in(msg) -> list:
    kind = type(msg)
    if kind in (P.RTask, P.RValue):
        return list(msg.lent)
    if kind is P.RDone:
        return [c for r in msg.results for c in r[4]]
    return []


class World:
    def __init__(self, size=3, *, arena_window=True, export_bytes=0):
        self.size = size
        self.wire: list = []  # (from, to, msg) in send order
        self.ranks = [Rank(self, r, arena_window, export_bytes) for r in range(size)]

    def __getitem__(self, r) -> Rank:
        return self.ranks[r]

    def deliver(self, only=None) -> list:
        """Hand every message in flight to its rank (in order, following replies)."""
        got = []
        while self.wire:
            src, dst, msg = self.wire.pop(0)
            if only is not None and type(msg) is not only:
                raise AssertionError(f"{type(msg).__name__} in flight, expected {only}")
            got.append((src, dst, msg))
            self.ranks[dst].ev(msg, src)
        return got

    def in_flight(self) -> list:
        return [(s, d, type(m)) for s, d, m in self.wire]


def fill(rank: Rank, off, total, byte):
    rank.arena[off: off + total] = bytes([byte]) * total


def alloc_answer(rank: Rank, offset, error=None):
    """Play the node: answer the one Alloc waiting at this rank."""
    (req,) = list(rank.l.waiting_alloc)
    rank.ev(P.AllocOk(req, offset, error))


# ------------------------------------------------------------------------ forwarded tasks


def test_forwarded_task_runs_there_and_its_results_come_home_with_lent_holds():
    w = World()
    home, there = w[0], w[1]
    c, d = oid_of(0, 50), oid_of(1, 60)  # a ref in its arguments, a ref in its result
    tid = oid_of(0, 10)
    home.ev(P.Fwd(1, spec(tid, nret=2, contained=(c,)), b"<fn>"))
    assert home.take_node() == [P.Lend([c], ())]  # the hold goes with the task
    assert home.l.where == {tid: 1} and home.l.lent == {c: 1}
    w.deliver(only=P.RTask)
    assert there.kinds() == [P.Borrowed, P.Func, P.Submit]
    assert there.node[0] == P.Borrowed((c,), 0) and there.node[2].spec.tid == tid
    there.take_node()
    # the results, one inline, one in the arena (read straight from there: arena window)
    fill(there, 1024, 300, 0xAB)
    there.ev(P.Obj(tid + 1, INLINE, b"small", (d,)))
    assert there.take_node() == [P.Lend([d], ()), P.Refs((), [tid + 1])]
    assert w.wire == []  # RDone waits for every result
    there.ev(P.Obj(tid + 2, ARENA, payload(1024, 300), ()))
    assert there.take_node() == []  # its ref stays until home has read it
    assert there.l.reading_refs == {tid + 2: 1}
    ((_, _, done),) = w.deliver(only=P.RDone)
    r1, r2 = done.results
    assert r1 == (tid + 1, INLINE, b"small", (d,), (d,))
    assert type(r2[2]) is P.ArenaDesc and r2[2].release == P.RefToken(tid + 2)
    assert type(r2[2].release) is P.RefToken  # typed across the frame
    # home: the inline one is here, the arena one needs space first
    assert home.l.where == {} and home.kinds() == [P.Alloc]
    home.take_node()
    alloc_answer(home, 4096)
    kinds = [type(i) for i in home.log[-3:]]
    assert kinds == [P.RmaGet, P.ToNodeMsg, P.ToRankMsg]  # bytes, then the node, then home
    assert home.arena[4096: 4096 + 300] == bytes([0xAB]) * 300
    (rd,) = home.take_node()
    assert rd == P.RemoteDone(tid, [(tid + 1, INLINE, b"small", (d,), (d,)),
                                    (tid + 2, ARENA, payload(4096, 300), (), ())], 1)
    w.deliver(only=P.RRelease)
    assert there.take_node() == [P.Refs((), [tid + 2])] and not there.l.reading_refs
    # the holds come back: home's node frees d (lent by rank 1), there frees c
    home.ev(P.Unlend(d, 1))
    there.ev(P.Unlend(c, 0))
    w.deliver(only=P.RUnlend)
    assert home.take_node() == [P.Lend((), [c])] and there.take_node() == [P.Lend((), [d])]
    assert not home.l.lent and not there.l.lent
    assert not there.l.inbound and not there.l.result_of and not home.l.collecting


def test_a_task_with_no_results_and_results_all_inline_need_no_space():
    w = World(2)
    tid = oid_of(0, 10)
    w[0].ev(P.Fwd(1, spec(tid, nret=1), None))
    w.deliver()
    assert w[1].kinds() == [P.Submit]  # no holds, no function blob
    w[1].take_node()
    w[1].ev(P.Obj(tid + 1, ERROR, b"boom", ()))
    w.deliver()
    assert w[0].take_node() == [P.RemoteDone(tid, [(tid + 1, ERROR, b"boom", (), ())], 1)]
    w[0].ev(P.RDone(oid_of(0, 20), []), 1)  # (an empty RDone ends at once)
    assert w[0].take_node() == [P.RemoteDone(oid_of(0, 20), [], 1)]


def test_an_actor_placed_here_keeps_its_anchor_and_lends_nothing_for_it():
    w = World(2)
    tid = oid_of(0, 30)
    w[0].ev(P.Fwd(1, spec(tid, nret=1, create={"name": None}), b"<cls>"))
    w.deliver()
    assert w[1].l.keep == {tid + 1}
    w[1].take_node()
    w[1].ev(P.Obj(tid + 1, INLINE, b"anchor", (oid_of(1, 3),)))
    assert w[1].take_node() == []  # no ref dropped, no hold lent
    ((_, _, done),) = w.deliver()
    assert done.results == [(tid + 1, INLINE, b"anchor", (oid_of(1, 3),), ())]


def test_results_in_copy_mode_come_home_once_all_have_landed_in_any_order():
    w = World(2, arena_window=False, export_bytes=4096)
    home, there = w[0], w[1]
    tid = oid_of(0, 10)
    home.ev(P.Fwd(1, spec(tid, nret=3), None))
    w.deliver()
    there.take_node()
    fill(there, 0, 3000, 3)
    fill(there, 4096, 2000, 4)
    there.ev(P.Obj(tid + 1, ARENA, payload(0, 3000), ()))  # into the export window
    there.ev(P.Obj(tid + 2, ARENA, payload(4096, 2000), ()))  # window busy: bytes
    assert there.take_node() == [P.Refs((), [tid + 1]), P.Refs((), [tid + 2])]
    there.ev(P.Obj(tid + 3, INLINE, b"s", ()))
    ((_, _, done),) = w.deliver(only=P.RDone)
    assert [type(r[2]) for r in done.results] == [P.WinDesc, P.BytesDesc, bytes]
    req1, req2 = list(home.l.waiting_alloc)
    assert home.take_node() == [P.Alloc(req1, 3000), P.Alloc(req2, 2000)]
    home.ev(P.AllocOk(req2, 64 * 100, None))  # the second one lands first
    assert home.take_node() == [] and w.wire == []  # (no RFreeExp for bytes)
    home.ev(P.AllocOk(req1, 64 * 200, None))
    (rd,) = home.take_node()
    assert [r[:3] for r in rd.results] == [(tid + 1, ARENA, payload(12800, 3000)),
                                           (tid + 2, ARENA, payload(6400, 2000)),
                                           (tid + 3, INLINE, b"s")]
    assert home.arena[12800: 15800] == bytes([3]) * 3000
    assert home.arena[6400: 8400] == bytes([4]) * 2000
    w.deliver(only=P.RFreeExp)
    assert there.l.exported == {} and not home.l.collecting


def test_results_that_find_no_space_come_home_as_errors_and_release_the_home():
    w = World(2)
    tid = oid_of(0, 10)
    w[0].ev(P.Fwd(1, spec(tid), None))
    w.deliver()
    w[1].ev(P.Obj(tid + 1, ARENA, payload(0, 500), ()))
    w.deliver()
    w[0].take_node()
    alloc_answer(w[0], None, "arena full")
    (rd,) = w[0].take_node()
    ((oid, kind, err, _c, _l),) = rd.results
    assert kind == ERROR and isinstance(pickle.loads(err), exc.ObjectStoreFullError)
    assert not any(type(i) is P.RmaGet for i in w[0].log)
    w.deliver(only=P.RRelease)  # the home's hold must not stay forever
    assert w[1].take_node()[-1] == P.Refs((), [tid + 1])


# ------------------------------------------------------------------------ fetches


def fetch(w: World, reader: int, oid: int) -> None:
    w[reader].ev(P.Fetch(oid))
    w.deliver(only=P.RFetch)
    home = w[P.id_rank(oid)]
    assert home.take_node() == [P.Pin([oid]), P.Subscribe([oid])]


def test_a_fetch_served_from_the_arena_window():
    w = World(2)
    oid = oid_of(1, 5)
    contained = oid_of(1, 6)
    fetch(w, 0, oid)
    assert w[1].l.pins == {oid: 1} and w[1].l.serving == {oid: [0]}
    fill(w[1], 2048, 1000, 7)
    w[1].ev(P.Obj(oid, ARENA, payload(2048, 1000), (contained,)))
    assert w[1].take_node() == [P.Lend([contained], ())]  # the pin stays: read in place
    ((_, _, val),) = w.deliver(only=P.RValue)
    assert val.desc == P.ArenaDesc(1, payload(2048, 1000), P.PinToken(oid))
    assert type(val.desc) is P.ArenaDesc and val.lent == (contained,)
    assert w[0].kinds() == [P.Alloc] and w[0].node[0].nbytes == 1000
    w[0].take_node()
    alloc_answer(w[0], 8192)
    assert w[0].arena[8192: 9192] == bytes([7]) * 1000
    assert w[0].take_node() == [P.Borrowed((contained,), 1),
                                P.Put(oid, ARENA, payload(8192, 1000), (contained,))]
    w.deliver(only=P.RRelease)
    assert w[1].take_node() == [P.Unpin([oid])]
    assert not w[1].l.pins and not w[1].l.reading_pins


def test_a_fetch_of_an_inline_value_drops_the_pin_at_once():
    w = World(2)
    oid = oid_of(1, 5)
    fetch(w, 0, oid)
    w[1].ev(P.Obj(oid, INLINE, b"tiny", ()))
    assert w[1].take_node() == [P.Unpin([oid])]
    w.deliver()
    assert w[0].take_node() == [P.Put(oid, INLINE, b"tiny", ())]


def test_two_readers_of_one_value_are_each_served_once():
    w = World(3)
    oid = oid_of(2, 5)
    fetch(w, 0, oid)
    fetch(w, 1, oid)
    assert w[2].l.pins == {oid: 2}
    w[2].ev(P.Obj(oid, ARENA, payload(0, 200), ()))
    got = w.deliver(only=P.RValue)
    assert sorted(d for _s, d, _m in got) == [0, 1] and w[2].l.reading_pins == {oid: 2}
    w[2].ev(P.Obj(oid, ARENA, payload(0, 200), ()))  # (a second Obj: nobody asks now)
    assert w.wire == []
    for r in (0, 1):
        alloc_answer(w[r], 64)
    w.deliver(only=P.RRelease)
    assert w[2].take_node() == [P.Unpin([oid]), P.Unpin([oid])] and not w[2].l.pins


def test_a_fetch_served_from_the_export_window_then_as_bytes_when_it_is_full():
    w = World(3, arena_window=False, export_bytes=4096)
    home = w[2]
    a, b = oid_of(2, 1), oid_of(2, 2)
    fill(home, 0, 3000, 1)
    fill(home, 8192, 3000, 2)
    fetch(w, 0, a)
    fetch(w, 1, b)
    home.ev(P.Obj(a, ARENA, payload(0, 3000), ()))
    # copied into the export window first, then the pin goes (the node may reuse it)
    assert [type(i) for i in home.log[-3:]] == [P.CopyToExport, P.ToNodeMsg, P.ToRankMsg]
    assert home.take_node() == [P.Unpin([a])] and home.l.exported == {0: 0}
    home.ev(P.Obj(b, ARENA, payload(8192, 3000), ()))  # the window is busy: bytes
    assert [type(i) for i in home.log[-3:]] == [P.ReadBytes, P.ToNodeMsg, P.ToRankMsg]
    assert home.take_node() == [P.Unpin([b])]
    got = {d: m for _s, d, m in w.deliver(only=P.RValue)}
    assert got[0].desc == P.WinDesc(2, 0, payload(0, 3000))
    assert type(got[1].desc) is P.BytesDesc and bytes(got[1].desc.data) == bytes([2]) * 3000
    alloc_answer(w[0], 100 * 64)
    alloc_answer(w[1], 200 * 64)
    assert [type(i) for i in w[1].log[-2:]] == [P.WriteBytes, P.ToNodeMsg]  # no RFreeExp
    assert w[0].arena[6400: 9400] == bytes([1]) * 3000
    assert w[1].arena[12800: 15800] == bytes([2]) * 3000
    assert w[0].take_node()[-1] == P.Put(a, ARENA, payload(6400, 3000), ())
    w.deliver(only=P.RFreeExp)
    assert home.l.exported == {} and home.l.export_alloc.used == 0


def test_a_value_larger_than_the_export_window_goes_as_bytes():
    w = World(2, arena_window=False, export_bytes=1024)
    oid = oid_of(1, 1)
    fill(w[1], 0, 2000, 9)
    fetch(w, 0, oid)
    w[1].ev(P.Obj(oid, ARENA, payload(0, 2000), ()))
    ((_, _, val),) = w.deliver()
    assert type(val.desc) is P.BytesDesc and len(val.desc.data) == 2000


# ------------------------------------------------------------------------ holds, names, cancel


def test_an_unlend_goes_back_to_the_lender_and_the_last_one_ends_the_lent_holder():
    w = World(2)
    tid, c = oid_of(0, 10), oid_of(0, 50)
    for t in (tid, tid + 10):  # two tasks lend the same ref: one Lend, two holds
        w[0].ev(P.Fwd(1, spec(t, contained=(c,)), None))
    assert w[0].take_node() == [P.Lend([c], ())] and w[0].l.lent == {c: 2}
    w.deliver()
    w[1].ev(P.Unlend(c, 0))
    w.deliver(only=P.RUnlend)
    assert w[0].take_node() == [] and w[0].l.lent == {c: 1}
    w[1].ev(P.Unlend(c, 0))
    w.deliver(only=P.RUnlend)
    assert w[0].take_node() == [P.Lend((), [c])] and not w[0].l.lent


def test_a_named_actor_lookup_is_relayed_and_the_found_handle_holds_the_actor():
    w = World(3)
    anchor = oid_of(2, 1)
    # rank 1 asks rank 0, which knows the name is rank 2's, which answers rank 1
    w[0].ev(P.ToRank(2, P.NameLookup(1, 9, 4, ("ns", "x"))))
    w.deliver(only=P.RNode)
    (look,) = w[2].take_node()
    assert type(look) is P.NameLookup and look.key == ("ns", "x")
    found = P.NameFound(9, 4, (anchor, None), (anchor,), 2)
    w[2].ev(P.ToRank(1, found, (anchor,)))
    assert w[2].take_node() == [] and w[2].l.lent == {anchor: 1}  # (the node took it)
    w.deliver(only=P.RNode)
    (got,) = w[1].take_node()
    assert type(got) is P.NameFound and got.lent == (anchor,) and got.lender == 2
    w[1].ev(P.Unlend(anchor, 2))  # the handle on rank 1 went
    w.deliver(only=P.RUnlend)
    assert w[2].take_node() == [P.Lend((), [anchor])] and not w[2].l.lent


def test_a_cancel_follows_the_task_to_the_rank_it_was_forwarded_to():
    w = World(3)
    tid = oid_of(0, 10)
    w[0].ev(P.Fwd(2, spec(tid), None))
    w.deliver()
    w[0].ev(P.Cancel(tid, False, False))
    assert w.in_flight() == [(0, 2, P.RNode)]
    w.deliver()
    assert w[2].take_node()[-1] == P.Cancel(tid, False, False)
    w[0].ev(P.Cancel(oid_of(0, 99), True, False))  # never forwarded: not ours to send
    assert w.wire == []
    w[2].ev(P.Obj(tid + 1, INLINE, b"v", ()))
    w.deliver()
    w[0].ev(P.Cancel(tid, False, False))  # ended: nothing to cancel there
    assert w.wire == []


def test_a_streams_values_and_end_go_home_in_order_with_its_rdone():
    """They share RDone's channel (a plain send, ordered), not the inbox (another
    channel: RDone could overtake the stream's end, which then found no task)."""
    w = World(2)
    tid = oid_of(0, 10)
    w[0].ev(P.Fwd(1, spec(tid), None))
    w.deliver()
    w[1].take_node()
    v = oid_of(1, 5)
    w[1].ev(P.ToRank(0, P.StreamLent(tid, 0, v, 1), (v,)))  # a value (held: lent home)
    w[1].ev(P.ToRank(0, P.StreamLent(tid, -1, None, 1)))  # the end
    w[1].ev(P.Obj(tid + 1, INLINE, b"done", ()))  # the completion object
    assert w.in_flight() == [(1, 0, P.RStream), (1, 0, P.RStream), (1, 0, P.RDone)]
    assert not {P.RStream, P.RDone} & set(INBOX_KINDS)  # one channel: the plain send
    w.deliver()
    assert w[0].kinds() == [P.StreamLent, P.StreamLent, P.RemoteDone]
    assert [m.index for m in w[0].node[:2]] == [0, -1]


def test_kills_and_names_from_another_rank_reach_the_node():
    w = World(2)
    w[1].ev(P.ToRank(0, P.KillActor(oid_of(0, 1), True)))
    w.deliver()
    assert w[0].take_node() == [P.KillActor(oid_of(0, 1), True)]


# ------------------------------------------------------------------------ loop events


def test_hello_and_the_load_table():
    w = World(2)
    r = w[0]
    r.ev(P.LinkHello([(11, {"CPU": 2.0}), (12, {"CPU": 2.0})]))
    info, query = r.take_node()
    assert info == P.ClusterInfo(0, [(11, {"CPU": 2.0}), (12, {"CPU": 2.0})])
    assert r.l.hello_req == query.req and query.what == "load"
    r.ev(P.Reply(query.req, (3, 1.0)))
    assert r.l.hello_req is None and r.loads == [(3, 1.0)]
    r.ev(P.LoadDue())
    (q,) = r.take_node()
    r.ev(P.Reply(q.req + 100, "other"))  # (not a load reply: nothing)
    r.ev(P.Reply(q.req, (0, 2.0)))
    assert r.loads == [(3, 1.0), (0, 2.0)] and not r.l.load_reqs


def test_stop_and_stopped():
    w = World(3)
    w[0].ev(P.StopRanks())
    assert w.in_flight() == [(0, 1, P.RStop), (0, 2, P.RStop)]
    w.deliver()
    assert w[1].l.stop_requested and w[2].l.stop_requested and not w[0].l.stop_requested
    w[2].ev(P.RankStopped())
    w[1].ev(P.RankStopped())
    w.deliver(only=P.RStopped)
    assert w[0].l.stopped == {1, 2}


# ------------------------------------------------------------------------ the schema


@pytest.mark.parametrize("desc", [
    P.ArenaDesc(1, payload(0, 10), P.PinToken(5)),
    P.ArenaDesc(1, payload(0, 10), None),
    P.WinDesc(2, 64, payload(0, 10)),
    P.BytesDesc(bytearray(b"xyz"), payload(0, 3)),
], ids=["arena", "arena-kept", "win", "bytes"])
def test_descriptors_arrive_typed_in_values_results_and_releases(desc):
    (v, d) = P.decode(P.encode([P.RValue(5, ARENA, desc, (), ()),
                                P.RDone(4, [(5, ARENA, desc, (), ())])]))
    assert type(v.desc) is type(desc) and v.desc == desc
    assert type(d.results[0][2]) is type(desc) and d.results[0][2] == desc
    if type(desc) is P.ArenaDesc and desc.release is not None:
        assert type(v.desc.release) is P.PinToken
    (rel,) = P.decode(P.encode([P.RRelease(P.RefToken(5))]))
    assert type(rel.token) is P.RefToken


def test_the_invariants_catch_a_value_served_twice_and_a_lost_result():
    w = World(2)
    oid = oid_of(1, 5)
    fetch(w, 0, oid)
    w[1].l.pins[oid] += 1  # a pin nobody will drop
    with pytest.raises(AssertionError, match="pins"):
        w[1].l.check_invariants()
    w2 = World(2)
    tid = oid_of(0, 10)
    w2[0].ev(P.Fwd(1, spec(tid, nret=2), None))
    w2.deliver()
    del w2[1].l.result_of[tid + 2]
    with pytest.raises(AssertionError, match="results lost"):
        w2[1].l.check_invariants()

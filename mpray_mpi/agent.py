"""A rank's agent: the one thread of a rank that talks MPI, bridging it to the rank's node.

Data flow::

    node ──Fwd/Fetch/Obj/AllocOk──▶ down ring ─┐                 ┌─▶ inbox / isend (RTask,
                                               ├─ Agent.step() ──┤     RFetch, RValue, RDone…)
    node ◀──Submit/Put/RemoteDone── up ring  ◀─┘      ▲          └─◀ inbox poll / Iprobe+recv
                                                       │
                          export window (Win.Allocate): values other ranks read with Get

The node sees the agent as one more process (``cluster.AGENT``): tasks forwarded to this
rank are submitted by it (so their results are pushed to it), and objects of other ranks
are PUT by it.  Object bytes move by RMA: the home rank copies a value from its arena into
its export window, the reader allocates space in its own arena and ``Get``s the bytes
straight there (no copy on the reading side), then tells the home rank to free the slot.
Small values travel inside the messages.

MPICH only progresses passive-target RMA while the target calls MPI, so the agent loop
keeps calling ``Iprobe`` (polling every 50 µs – 1 ms, up to 4 ms when idle).
"""

from __future__ import annotations

import collections
import os
import pickle
import sys
import time

from mpray import protocol as P
from mpray.allocator import Allocator, ArenaFull
from mpray.rings import Ring
from mpray.serialization import ARENA, ERROR

from .inbox import MAX_FRAME, Inbox

TAG = 71
LOAD_INTERVAL = 0.02  # seconds between load reports (global scheduling)
HOT_S = 0.1  # after work, poll at the shortest pause for this long
IDLE_LOAD_INTERVAL = 1.0  # seconds between load reports of a rank with nothing to do
INBOX_KINDS = (P.RTask, P.RNode)  # what goes through the inbox (in order, one-sided)
IDLE_PAUSE = 4e-3  # longest pause between polls of a rank idle for a second (CPU it costs)


class Agent:
    def __init__(self, MPI, comm, rank: int, size: int, ranks: list, arena, up: Ring,
                 down: Ring, node_bell, export_bytes: int, node_pid: int,
                 arena_win=None) -> None:
        self.MPI = MPI
        self.comm = comm
        self.rank = rank
        self.size = size
        self.ranks = ranks
        self.arena = memoryview(arena)
        self.up = up  # agent -> node
        self.down = down  # node -> agent
        self.node_bell = node_bell
        self.node_pid = node_pid
        # Where other ranks read this rank's objects from: the arena itself when it is an
        # MPI window (zero copies), else an export window values are copied into.
        # Collective: every rank makes the same windows in the same order.
        self.arena_win = arena_win
        self.win = None
        self.expmem = None
        self.export_alloc = Allocator(0)
        if arena_win is None:
            self.win = MPI.Win.Allocate(export_bytes, 1, comm=comm)
            self.expmem = memoryview(self.win.tomemory()).cast("B") if export_bytes else None
            self.export_alloc = Allocator(export_bytes)
        self.loadwin = MPI.Win.Allocate(16 * size if rank == 0 else 0, 8, comm=comm)
        import numpy as np

        self.inbox = Inbox(MPI, comm, np)  # (tasks and node messages come this way)
        # One passive epoch for the whole run, without locks (MODE_NOCHECK: messages
        # already order who reads what): a Get or Put then completes with Flush, and on
        # shared-memory windows needs nothing from the target (no waiting for it to poll)
        for w in self._windows():
            w.Lock_all(MPI.MODE_NOCHECK)
        self._np = np
        self.load_table = np.zeros(2 * size, dtype=np.float64)
        self.reqs: list = []
        self.status = MPI.Status()
        self.inbound: dict[int, list] = {}  # forwarded here: tid -> [origin, nret, results]
        self.result_of: dict[int, int] = {}  # return oid -> tid (forwarded here)
        self.serving: dict[int, list] = collections.defaultdict(list)  # oid -> ranks asking
        self.waiting_alloc: dict[int, object] = {}  # req -> continuation(off, err)
        self._req = 0
        self.node_out: list = []
        self.hello_req: int | None = None
        self.where: dict[int, int] = {}  # tid -> the rank this rank forwarded it to
        self.keep: set[int] = set()  # anchors of actors placed here by other ranks
        self.lent: collections.Counter = collections.Counter()  # oid -> holds lent away
        self.load_reqs: set[int] = set()
        self.outbox: dict[int, list] = collections.defaultdict(list)
        self.inq: collections.deque = collections.deque()  # (src, msg) read from the inbox
        self.big: dict[tuple, list] = {}  # (src, token) -> messages too big for the inbox
        self._token = 0
        self.stopped: set[int] = set()
        self.stop_requested = False
        self.last_load = 0.0
        self.last_busy = time.monotonic()

    # ------------------------------------------------------------------ plumbing
    # Messages are batched per step: one frame to the node, one MPI message per rank
    # (a burst of forwarded tasks or results costs one pickle and one send, not many).
    def to_node(self, msgs: list) -> None:
        self.node_out.extend(msgs)

    def send(self, rank: int, msg: tuple) -> None:
        self.outbox[rank].append(msg)

    def flush(self) -> None:
        if self.node_out:
            msgs, self.node_out = self.node_out, []
            self.up.push(P.encode(msgs), wake=self.node_bell.force)
            self.node_bell.ring()
        if self.outbox:
            out, self.outbox = self.outbox, collections.defaultdict(list)
            for rank, msgs in out.items():
                ordered = [m for m in msgs if type(m) in INBOX_KINDS]
                rest = [m for m in msgs if type(m) not in INBOX_KINDS] if ordered else msgs
                if ordered:
                    self._post(rank, ordered)
                if rest:
                    self.reqs.append(self.comm.isend(P.encode([P.RBatch(P.encode(rest))]),
                                                     dest=rank, tag=TAG))
        if self.inbox.pending:
            self.inbox.flush()

    def _post(self, rank: int, msgs: list) -> None:
        """Tasks and node messages go through ``rank``'s inbox (one-sided, in order); a
        frame too big for it goes as a message whose place an inbox frame keeps."""
        frame = pickle.dumps((self.rank, P.encode(msgs)), protocol=5)
        if len(frame) <= MAX_FRAME:
            self.inbox.post(rank, frame)
        elif len(msgs) > 1:
            half = len(msgs) // 2
            self._post(rank, msgs[:half])
            self._post(rank, msgs[half:])
        else:
            self._token += 1
            self.reqs.append(self.comm.isend(P.encode([P.RBig(self._token, P.encode(msgs))]),
                                             dest=rank, tag=TAG))
            self.inbox.post(rank, pickle.dumps((self.rank, P.encode([P.RAwait(self._token)]))))

    def _new_req(self) -> int:
        self._req += 1
        return self._req

    def hello(self, timeout: float = 30.0) -> None:
        """Give the node the ranks, and wait until it has them: the driver's first task
        (say, pinned to another rank's node) must not reach the node before they do."""
        req = self._new_req()
        self.to_node([P.ClusterInfo(self.rank, [(nid, res) for nid, res, _h in self.ranks]),
                      P.Query(req, "load")])
        self.hello_req = req
        self.load_reqs.add(req)
        deadline = time.monotonic() + timeout
        self.run(lambda: self.hello_req is None or time.monotonic() > deadline)
        if self.hello_req is not None:
            abort(self.comm, f"this rank's node did not answer within {timeout} s")

    # ------------------------------------------------------------------ loop
    def step(self) -> bool:
        """One pass: MPI messages, the node's messages, sends completed.  True if busy."""
        busy = False
        comm, st = self.comm, self.status
        while comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=TAG, status=st):
            src = st.Get_source()
            (got,) = P.decode(comm.recv(source=src, tag=TAG))
            if type(got) is P.RBig:  # its place in the order is in the inbox
                self.big[(src, got.token)] = P.decode(got.msgs)
            else:
                for msg in P.decode(got.msgs):
                    self.from_rank(src, msg)
            busy = True
        for f in self.inbox.poll():
            src, frame = pickle.loads(f)
            self.inq.extend((src, m) for m in P.decode(frame))
        inq = self.inq
        while inq:
            src, msg = inq[0]
            if type(msg) is P.RAwait:  # a big frame's place: wait for its message
                msgs = self.big.pop((src, msg.token), None)
                if msgs is None:
                    break
                inq.popleft()
                for m in msgs:
                    self.from_rank(src, m)
            else:
                inq.popleft()
                self.from_rank(src, msg)
            busy = True
        frames = self.down.pop_all()
        for f in frames:
            for m in P.decode(f):
                if type(m) is not P.Reply:  # (load reports are not work: they must not
                    busy = True             # keep an idle rank polling at the shortest pause)
                self.from_node(m)
        if self.reqs:
            self.reqs = [r for r in self.reqs if not r.Test()]
        now = time.monotonic()
        if busy:
            self.last_busy = now
        # the load table matters while there is work; RMA on rank 0's window makes the
        # caller spin until rank 0 polls, so an idle rank refreshes it only now and then
        interval = LOAD_INTERVAL if now - self.last_busy < 1.0 else IDLE_LOAD_INTERVAL
        if now - self.last_load > interval:
            self.last_load = now
            self._check_node()
            if self.size > 1:
                self._req_load()
        self.flush()
        return busy

    def _check_node(self) -> None:
        """This rank's node must be alive, or the job ends (never a silent hang)."""
        try:
            pid, status = os.waitpid(self.node_pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.node_pid, 0
        if pid:
            abort(self.comm, f"the mpray node process (pid {self.node_pid}) of this rank died "
                             f"(wait status {status}); ending the job")

    def run(self, until) -> None:
        """Serve until ``until()`` is true: poll, pausing 50 µs while there was work in
        the last 0.1 s (an exchange of several hops stays fast), then longer, up to 1 ms,
        and up to 4 ms once idle for a second (an idle rank costs little CPU: about 1 %
        here; it matters where ranks share cores).  MPICH offers no descriptor to sleep
        on."""
        pause = 50e-6
        clock = time.monotonic
        while not until():
            if self.step():
                pause = 50e-6
            else:
                time.sleep(pause)
                idle = clock() - self.last_busy
                if idle > HOT_S:
                    pause = min(pause * 2, 1e-3 if idle < 1.0 else IDLE_PAUSE)

    # ------------------------------------------------------------------ from the node
    def from_node(self, m) -> None:
        kind = type(m)
        if kind is P.Fwd:
            spec = m.spec
            self.where[spec.tid] = m.rank
            # the refs inside its arguments go with a hold each, lent by this rank (the
            # task there may keep them: in an actor's state, say)
            lent = tuple(spec.contained)
            self._lend(lent)
            self.send(m.rank, P.RTask(spec, m.blob, lent))
        elif kind is P.Cancel:  # a task this rank forwarded: cancel it where it runs
            rank = self.where.get(m.tid)
            if rank is not None:
                self.send(rank, P.RNode(m))
        elif kind is P.Unlend:  # a hold another rank lent this one: give it back
            self.send(m.rank, P.RUnlend(m.oid))
        elif kind is P.ToRank:  # a message for another rank's node (kills, actor names)
            for c in m.lent:
                self.lent[c] += 1  # (the node took the hold itself)
            self.send(m.rank, P.RNode(m.msg))
        elif kind is P.Fetch:
            self.send(P.id_rank(m.oid), P.RFetch(m.oid))
        elif kind is P.Obj:
            self.on_value(m.oid, m.kind, m.payload, m.contains)
        elif kind is P.AllocOk:
            cont = self.waiting_alloc.pop(m.req)
            if m.offset is None:
                cont(None, m.error)
            else:
                cont(m.offset, None)
        elif kind is P.Reply:  # (other replies, e.g. to a forwarded named creation: none)
            if m.req == self.hello_req:
                self.hello_req = None
            if m.req in self.load_reqs:
                self.load_reqs.discard(m.req)
                self._on_load(m.data)

    def on_value(self, oid: int, kind: int, payload, contains) -> None:
        """A value this agent waited for: a forwarded task's result, or one to serve."""
        tid = self.result_of.pop(oid, None)
        if tid is not None:
            rec = self.inbound.get(tid)
            if rec is not None:
                # the agent's hold on the result goes when its reader has it; the refs
                # it holds go home with a hold each, lent by this rank (the home rank
                # gives them back as its refs go)
                release, lent = None, ()
                if oid not in self.keep:
                    self._lend(contains)
                    release, lent = ("ref", oid), tuple(contains)
                rec[2].append((oid, kind, self._ship(kind, payload, release), tuple(contains),
                               lent))
                if len(rec[2]) == rec[1]:
                    del self.inbound[tid]
                    self.send(rec[0], P.RDone(tid, rec[2]))
        asking = self.serving.pop(oid, None)
        for r in asking or ():  # (each asker's PIN goes when it has the value)
            lent = tuple(contains)  # (a hold on each ref inside, as with results)
            self._lend(lent)
            self.send(r, P.RValue(oid, kind, self._ship(kind, payload, ("pin", oid)),
                                  tuple(contains), lent))

    def _ship(self, kind: int, payload, release):
        """How a reader on another rank gets this value (``release`` is the hold to drop
        here once it has)."""
        if kind != ARENA:
            self.release(release)
            return payload
        if self.arena_win is not None:  # read straight from this rank's arena
            return ("arena", self.rank, payload, release)
        off, hlen, places, total = payload
        try:
            if self.expmem is None or total > self.export_alloc.size:
                raise ArenaFull("larger than the export window")
            woff = self.export_alloc.alloc(total)
        except ArenaFull:  # the window is busy or too small: the bytes in the message
            data = bytes(self.arena[off: off + total])
            self.release(release)
            return ("bytes", data, payload)
        self.expmem[woff: woff + total] = self.arena[off: off + total]
        self.win.Sync()  # (our stores into the window, visible to RMA before we answer)
        self.release(release)
        return ("win", self.rank, woff, (0, hlen, places, total))

    def _lend(self, oids) -> None:
        new = [c for c in oids if not self.lent[c]]
        for c in oids:
            self.lent[c] += 1
        if new:  # (before the release of what refers to them: one FIFO to the node)
            self.to_node([P.Lend(new, ())])

    def release(self, token) -> None:
        """Drop a hold taken for a reader on another rank."""
        if token is None:
            return
        what, oid = token
        if what == "pin":
            self.to_node([P.Unpin([oid])])
        else:
            self.to_node([P.Refs((), [oid])])

    # ------------------------------------------------------------------ from other ranks
    def from_rank(self, src: int, msg) -> None:
        kind = type(msg)
        if kind is P.RTask:
            spec = msg.spec
            tid = spec.tid
            self.inbound[tid] = [src, spec.nret, []]
            if spec.create is not None:  # an actor placed here: its anchor stays held
                self.keep.add(tid + 1)  # (its creator's rank sends the kill)
            for oid in P.spec_returns(spec):
                self.result_of[oid] = tid
            self.to_node(([P.Borrowed(msg.lent, src)] if msg.lent else [])
                         + ([P.Func(spec.fid, msg.blob)] if msg.blob is not None else [])
                         + [P.Submit(spec)])
        elif kind is P.RFetch:
            oid = msg.oid
            self.serving[oid].append(src)
            # Pin first (one per asker): the value must stay until that reader has it
            self.to_node([P.Pin([oid]), P.Subscribe([oid])])
        elif kind is P.RValue:
            lent, oid, contained = msg.lent, msg.oid, msg.contained
            self.import_value(msg.desc, msg.kind, lambda k, p: self.to_node(
                ([P.Borrowed(lent, src)] if lent else []) + [P.Put(oid, k, p, contained)]))
        elif kind is P.RDone:
            self._import_results(src, msg.tid, msg.results)
        elif kind is P.RNode:  # a message for this rank's node (cancel, kill, names)
            self.to_node([msg.msg])
        elif kind is P.RUnlend:
            oid = msg.oid
            self.lent[oid] -= 1
            if self.lent[oid] <= 0:
                del self.lent[oid]
                self.to_node([P.Lend((), [oid])])
        elif kind is P.RFreeExp:
            self.export_alloc.free(msg.woff)
        elif kind is P.RRelease:
            self.release(msg.token)
        elif kind is P.RStop:
            self.stop_requested = True
        elif kind is P.RStopped:
            self.stopped.add(src)

    def _import_results(self, src: int, tid: int, results: list) -> None:
        """A task this rank forwarded ended on ``src``: bring its values home."""
        self.where.pop(tid, None)
        got: list = [None] * len(results)
        missing = [len(results)]

        def finish() -> None:
            self.to_node([P.RemoteDone(tid, got, src)])

        if not results:
            finish()
        for i, (oid, vkind, desc, contained, lent) in enumerate(results):
            def put(k, p, i=i, oid=oid, contained=contained, lent=lent):
                got[i] = (oid, k, p, contained, lent)
                missing[0] -= 1
                if missing[0] == 0:
                    finish()
            self.import_value(desc, vkind, put)

    def import_value(self, desc, kind: int, done) -> None:
        """Bring a shipped value into this rank's arena; ``done(kind, payload)``."""
        if kind != ARENA:
            done(kind, desc)
            return
        how = desc[0]
        after = None  # what the home rank must hear once the bytes are here
        if how == "arena":  # straight from the home rank's arena (an MPI window)
            _a, src, (soff, hlen, places, total), release = desc

            def fill(off):
                self._get(self.arena_win, src, soff, off, total)

            if release is not None:
                after = P.RRelease(release)
        elif how == "bytes":  # they came in the message
            data, (_o, hlen, places, total) = desc[1], desc[2]

            def fill(off):
                self.arena[off: off + total] = data
        else:  # from the home rank's export window
            _w, src, woff, (_z, hlen, places, total) = desc

            def fill(off):
                self._get(self.win, src, woff, off, total)

            after = P.RFreeExp(woff)

        def landed(off, err):
            if off is None:
                done(ERROR, _store_full(total, err))
            else:
                fill(off)
                done(ARENA, (off, hlen, places, total))
            if after is not None:
                self.send(src, after)

        self._alloc(total, landed)

    def _windows(self) -> list:
        return [w for w in (self.arena_win, self.win, self.loadwin, self.inbox.win)
                if w is not None]

    def _get(self, win, src: int, soff: int, off: int, total: int) -> None:
        """RMA Get of ``total`` bytes at ``soff`` in ``src``'s window into our arena."""
        MPI = self.MPI
        win.Get([self.arena[off: off + total], MPI.BYTE], src, target=(soff, total, MPI.BYTE))
        win.Flush(src)

    def _alloc(self, nbytes: int, cont) -> None:
        req = self._new_req()
        self.waiting_alloc[req] = cont
        self.to_node([P.Alloc(req, nbytes)])

    # ------------------------------------------------------------------ load (global scheduling)
    def _req_load(self) -> None:
        req = self._new_req()
        self.load_reqs.add(req)
        self.to_node([P.Query(req, "load")])

    def _on_load(self, mine) -> None:
        """Publish this rank's (queued, free CPUs) in rank 0's window; read everyone's."""
        MPI, np = self.MPI, self._np
        own = np.array(mine, dtype=np.float64)
        w = self.loadwin
        w.Put([own, MPI.DOUBLE], 0, target=(2 * self.rank, 2, MPI.DOUBLE))
        w.Flush(0)
        w.Get([self.load_table, MPI.DOUBLE], 0, target=(0, 2 * self.size, MPI.DOUBLE))
        w.Flush(0)
        t = self.load_table
        self.to_node([P.Load([(int(t[2 * r]), float(t[2 * r + 1])) for r in range(self.size)])])

    # ------------------------------------------------------------------ shutdown
    def stop_all(self, timeout: float = 10.0) -> bool:
        """Rank 0: stop every other rank and wait for them (True if all answered)."""
        for r in range(1, self.size):
            self.send(r, P.RStop())
        deadline = time.monotonic() + timeout
        self.run(lambda: len(self.stopped) >= self.size - 1 or time.monotonic() > deadline)
        return len(self.stopped) >= self.size - 1

    def close(self) -> None:
        """Collective: every rank frees the windows."""
        self.flush()
        for r in self.reqs:
            r.Wait()
        self.reqs = []
        for w in self._windows():
            w.Unlock_all()
        if self.expmem is not None:
            self.expmem.release()
        self.expmem = None
        if self.win is not None:
            self.win.Free()
        self.loadwin.Free()
        self.inbox.free()
        # (an arena window stays until MPI_Finalize at exit: arrays the user got from
        # get() may still point into it)


def _store_full(total: int, err) -> bytes:
    from mpray import exceptions as exc

    return pickle.dumps(exc.ObjectStoreFullError(
        f"cannot bring an object of {total} bytes from another rank into this rank's "
        f"object store: {err}"), protocol=5)


def abort(comm, message: str, code: int = 1) -> None:
    """End the whole job now (a rank failed): the message once, then MPI_Abort."""
    print(f"mpray (rank {comm.Get_rank()}, pid {os.getpid()}): {message}", file=sys.stderr,
          flush=True)
    comm.Abort(code)
